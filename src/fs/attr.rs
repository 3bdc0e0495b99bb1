//! Attributes: the server's SFTP attributes as the kernel's (owners mapped, the size of writes
//! still in flight counted), stat through the metadata cache, getattr and setattr.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::cache::Known;
use super::handle::ordering_channel;
use super::{Core, Entry, FsResult, errno, is_symlink};
use crate::sftp::proto::Attrs;

/// How remote owners and modes are shown locally.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdMapping {
    /// Show every file as owned by this uid / gid.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// idmap=user: the remote user's uid/gid shown as the local user's.
    pub remote_to_local: Option<((u32, u32), (u32, u32))>,
    pub umask: u32,
}

impl IdMapping {
    fn local(&self, uid: u32, gid: u32) -> (u32, u32) {
        let (mut uid, mut gid) = (uid, gid);
        if let Some(((ruid, rgid), (luid, lgid))) = self.remote_to_local {
            if uid == ruid {
                uid = luid;
            }
            if gid == rgid {
                gid = lgid;
            }
        }
        (self.uid.unwrap_or(uid), self.gid.unwrap_or(gid))
    }

    fn remote(&self, uid: u32, gid: u32) -> (u32, u32) {
        let (mut uid, mut gid) = (uid, gid);
        if let Some(((ruid, rgid), (luid, lgid))) = self.remote_to_local {
            if uid == luid {
                uid = ruid;
            }
            if gid == lgid {
                gid = rgid;
            }
        }
        (uid, gid)
    }
}

/// Changes asked of setattr; `None` leaves a field alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

impl Core {
    pub(super) fn to_attr(&self, ino: u64, a: &Attrs) -> FileAttr {
        let mode = a.permissions.unwrap_or(0o100644);
        let kind = match mode & libc::S_IFMT {
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::NamedPipe,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            _ => FileType::RegularFile,
        };
        let (uid, gid) = a.uid_gid.unwrap_or((0, 0));
        let (uid, gid) = self.config.ids.local(uid, gid);
        let (atime, mtime) = a.atime_mtime.unwrap_or((0, 0));
        let time = |s: u32| UNIX_EPOCH + Duration::from_secs(s as u64);
        let size = a.size.unwrap_or(0);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(atime),
            mtime: time(mtime),
            // SFTP v3 carries no ctime; mtime is the closest the server tells.
            ctime: time(mtime),
            crtime: time(mtime),
            kind,
            perm: (mode & 0o7777 & !self.config.ids.umask) as u16,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    /// The attributes the kernel is told for `ino`: the server's, with the size of writes it
    /// has not acked yet. Their times are remembered (see [`Core::setattr`]).
    pub(super) fn shown(&self, ino: u64, attrs: &Attrs) -> FileAttr {
        if let Some(times) = attrs.atime_mtime {
            self.inodes.lock().unwrap().show_times(ino, times);
        }
        self.with_pending_size(ino, self.to_attr(ino, attrs))
    }

    /// Attributes with the size of writes the server has not acked yet.
    fn with_pending_size(&self, ino: u64, mut attr: FileAttr) -> FileAttr {
        if let Some(w) = self.inode_writes(ino) {
            let floor = w.size_floor();
            if floor > attr.size {
                attr.size = floor;
                attr.blocks = floor.div_ceil(512);
            }
        }
        attr
    }

    /// True while writes through the mount to `ino` are in flight: the server's attributes
    /// for it are about to change, so they are neither cached nor served from cache.
    fn writes_pending(&self, ino: Option<u64>) -> bool {
        ino.and_then(|ino| self.inode_writes(ino))
            .is_some_and(|w| w.pending())
    }

    /// lstat of `path` (the inode `ino`, if the kernel holds one), through the cache.
    pub(super) async fn stat_cached(&self, ino: Option<u64>, path: &[u8]) -> FsResult<Attrs> {
        let cacheable = !self.writes_pending(ino);
        if cacheable {
            match self.cache.name(path) {
                Some(Known::Attrs(attrs)) => return Ok(attrs),
                Some(Known::Missing) => return Err(libc::ENOENT),
                None => {}
            }
        }
        let ticket = self.cache.ticket();
        let result = self
            .idempotent(|s| async move { s.lstat(path).await })
            .await;
        if cacheable && !self.writes_pending(ino) {
            let known = match &result {
                Ok(attrs) => Some(Known::Attrs(attrs.clone())),
                Err(libc::ENOENT) => Some(Known::Missing),
                Err(_) => None,
            };
            if let Some(known) = known {
                self.cache.put_name(ticket, path.to_vec(), known);
            }
        }
        result
    }

    /// Stats `parent/name` and records the kernel's new reference to it.
    pub(super) async fn entry(&self, parent: u64, name: &[u8], path: &[u8]) -> FsResult<Entry> {
        let known = self.inodes.lock().unwrap().child(parent, name);
        let attrs = self.stat_cached(known, path).await?;
        Ok(self.remember_entry(parent, name, &attrs))
    }

    /// Records the kernel's new reference to `parent/name`, whose attributes are `attrs`.
    pub(super) fn remember_entry(&self, parent: u64, name: &[u8], attrs: &Attrs) -> Entry {
        let ino = self
            .inodes
            .lock()
            .unwrap()
            .remember(parent, name, is_symlink(attrs));
        Entry {
            attr: self.shown(ino, attrs),
        }
    }

    pub async fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        let open = fh.and_then(|fh| self.file(fh).ok());
        let attrs = match (self.linked_path(ino), open) {
            (Some(path), _) => self.stat_cached(Some(ino), &path).await?,
            // An unlinked open file: only its handle still reaches it.
            (None, Some(file)) => {
                let own = file.handle.now()?;
                own.session.fstat(own.handle).await.map_err(errno)?
            }
            (None, None) => {
                let path = &self.path(ino)?;
                self.idempotent(|s| async move { s.lstat(path).await })
                    .await?
            }
        };
        Ok(self.shown(ino, &attrs))
    }

    /// Waits until a request about to be queued on `channel` will reach the server after every
    /// write of `ino` accepted so far (a WRITE landing after a change of times would move the
    /// modification time again): at once when they are all queued on that channel of a server
    /// that keeps a channel's order, else once they are acked.
    async fn after_writes(&self, ino: u64, channel: usize) {
        if let Some(w) = self.inode_writes(ino)
            && !(self.features.in_order && w.all_queued_on(channel))
        {
            w.settle().await;
        }
    }

    pub async fn setattr(&self, ino: u64, fh: Option<u64>, set: SetAttr) -> FsResult<FileAttr> {
        let path = self.path(ino)?;
        let open = fh.and_then(|fh| self.file(fh).ok());
        let mut attrs = Attrs::default();
        if let Some(size) = set.size {
            // Writes already accepted must land before the size changes under them.
            if let Some(w) = self.inode_writes(ino) {
                w.settle().await;
                // Read-ahead past the new end would be stale.
                w.touch();
            }
            attrs.size = Some(size);
        }
        if let Some(mode) = set.mode {
            attrs.permissions = Some(mode & 0o7777);
        }
        // SFTP v3 sets owner and group, and both times, together: a change of one keeps the
        // other as it is. A time the kernel was shown will do (an access time read elsewhere
        // meanwhile may be put back: the price of not asking), an owner must be current.
        let owner_partial = set.uid.is_some() != set.gid.is_some();
        let times_partial = set.atime.is_some() != set.mtime.is_some();
        let shown_times = self.inodes.lock().unwrap().times_shown(ino);
        let current = if owner_partial || (times_partial && shown_times.is_none()) {
            Some(self.stat_cached(Some(ino), &path).await?)
        } else {
            shown_times.map(|times| Attrs {
                atime_mtime: Some(times),
                ..Default::default()
            })
        };
        if set.uid.is_some() || set.gid.is_some() {
            let (cur_uid, cur_gid) = current
                .as_ref()
                .and_then(|c| c.uid_gid)
                .map(|(u, g)| self.config.ids.local(u, g))
                .unwrap_or((0, 0));
            let (uid, gid) = (set.uid.unwrap_or(cur_uid), set.gid.unwrap_or(cur_gid));
            attrs.uid_gid = Some(self.config.ids.remote(uid, gid));
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let (cur_a, cur_m) = current
                .as_ref()
                .and_then(|c| c.atime_mtime)
                .unwrap_or((0, 0));
            let secs = |t: SystemTime| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
                    .unwrap_or(0)
            };
            attrs.atime_mtime = Some((
                set.atime.map(secs).unwrap_or(cur_a),
                set.mtime.map(secs).unwrap_or(cur_m),
            ));
        }
        let symlink = self.inodes.lock().unwrap().is_symlink(ino);
        // The attributes after the change are asked right behind it on its channel: a server
        // that runs a channel in order answers both in one round trip.
        let times = attrs.atime_mtime.is_some();
        let (change, after) = match &open {
            Some(file) => {
                let own = file.handle.live().await?;
                if times {
                    self.after_writes(ino, own.ordering_channel()).await;
                }
                let change = own.session.fsetstat(own.handle.clone(), attrs);
                let after = self
                    .features
                    .in_order
                    .then(|| own.session.fstat(own.handle));
                (change, after)
            }
            None => {
                let generation = self.remote.current().await.map_err(|_| libc::EIO)?;
                if times {
                    self.after_writes(ino, ordering_channel(generation.id, 0))
                        .await;
                }
                let session = generation.meta();
                let change = if symlink {
                    session.lsetstat(&path, attrs)
                } else {
                    session.setstat(&path, attrs)
                };
                (change, self.features.in_order.then(|| session.lstat(&path)))
            }
        };
        let result = change.await;
        self.changed_attrs(ino);
        let ticket = self.cache.ticket();
        result.map_err(errno)?;
        match after {
            Some(after) => {
                let attrs = after.await.map_err(errno)?;
                // The kernel asks again at once when it must clear setuid bits.
                if let Some(path) = self.linked_path(ino)
                    && !self.writes_pending(Some(ino))
                {
                    self.cache
                        .put_name(ticket, path, Known::Attrs(attrs.clone()));
                }
                Ok(self.shown(ino, &attrs))
            }
            None => self.getattr(ino, fh).await,
        }
    }
}
