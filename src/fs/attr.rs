//! Attributes: the server's SFTP attributes as the kernel's (owners mapped, the size of writes
//! still in flight counted), stat through the metadata cache, getattr and setattr.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::cache::Known;
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

    /// Attributes with the size of writes the server has not acked yet.
    pub(super) fn with_pending_size(&self, ino: u64, mut attr: FileAttr) -> FileAttr {
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
        let ino = self
            .inodes
            .lock()
            .unwrap()
            .remember(parent, name, is_symlink(&attrs));
        let attr = self.with_pending_size(ino, self.to_attr(ino, &attrs));
        Ok(Entry { attr })
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
        Ok(self.with_pending_size(ino, self.to_attr(ino, &attrs)))
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
        let needs_current = (set.uid.is_some() != set.gid.is_some())
            || (set.atime.is_some() != set.mtime.is_some());
        let current = if needs_current {
            Some(self.meta().await?.lstat(&path).await.map_err(errno)?)
        } else {
            None
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
        let result = match &open {
            Some(file) => {
                let own = file.handle.live().await?;
                own.session.fsetstat(own.handle, attrs).await
            }
            None if symlink => self.meta().await?.lsetstat(&path, attrs).await,
            None => self.meta().await?.setstat(&path, attrs).await,
        };
        self.changed_attrs(ino);
        result.map_err(errno)?;
        self.getattr(ino, fh).await
    }
}
