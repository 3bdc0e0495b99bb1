//! Attributes: the server's SFTP attributes as the kernel's (owners mapped, the size of writes
//! still in flight counted), stat through the metadata cache, getattr and setattr.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::cache::Known;
use super::handle::ordering_channel;
use super::inode::{ContentsSeen, now_secs};
use super::open_files::{Announced, OpenFile};
use super::write::InodeWrites;
use super::{Core, Entry, FsResult, KeepCache, errno, is_symlink};
use crate::sftp::client::Reply;
use crate::sftp::proto::Attrs;
use crate::sftp::{Session, SftpError, StatusCode};

/// How remote owners and modes are shown locally.
#[derive(Debug, Clone, Default)]
pub struct IdMapping {
    /// Show every file as owned by this uid / gid.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// (remote, local) pairs: idmap=user's login ids as the local user's, idmap=file's
    /// names' ids as the local ids of the same names.
    pub uids: Vec<(u32, u32)>,
    pub gids: Vec<(u32, u32)>,
    /// idmap=file with nomap=error: what an id without a mapping is shown as.
    pub unmapped: Option<(u32, u32)>,
    pub umask: u32,
}

impl IdMapping {
    fn local(&self, uid: u32, gid: u32) -> (u32, u32) {
        let map = |pairs: &[(u32, u32)], id: u32, unmapped: Option<u32>| match pairs
            .iter()
            .find(|(remote, _)| *remote == id)
        {
            Some(&(_, local)) => local,
            None => unmapped.unwrap_or(id),
        };
        let uid = map(&self.uids, uid, self.unmapped.map(|u| u.0));
        let gid = map(&self.gids, gid, self.unmapped.map(|u| u.1));
        (self.uid.unwrap_or(uid), self.gid.unwrap_or(gid))
    }

    /// Local ids as the server knows them.
    pub(super) fn remote(&self, uid: u32, gid: u32) -> (u32, u32) {
        let map = |pairs: &[(u32, u32)], id: u32| match pairs.iter().find(|(_, l)| *l == id) {
            Some(&(remote, _)) => remote,
            None => id,
        };
        (map(&self.uids, uid), map(&self.gids, gid))
    }
}

/// The attributes the mount shows for `path`: its own (LSTAT), or with `follow`
/// (`follow_symlinks`) those of what it points to, a dangling symlink's own.
pub(super) async fn attrs_of(
    session: Arc<Session>,
    path: &[u8],
    follow: bool,
) -> Result<Attrs, SftpError> {
    if !follow {
        return session.lstat(path).await;
    }
    match session.stat(path).await {
        Err(e) if e.status() == Some(StatusCode::NO_SUCH_FILE) => session.lstat(path).await,
        other => other,
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

/// A truncate on its way to the server (see [`InodeWrites::truncating`]): confirmed with
/// [`Truncating::done`]; dropped otherwise (failed, or never sent), the size stays as it was.
struct Truncating {
    writes: Arc<InodeWrites>,
    size: u64,
    done: bool,
}

impl Truncating {
    fn start(writes: Arc<InodeWrites>, size: u64) -> Truncating {
        writes.truncating(size);
        Truncating {
            writes,
            size,
            done: false,
        }
    }

    fn done(mut self) {
        self.done = true;
        self.writes.truncated_to(self.size);
    }
}

impl Drop for Truncating {
    fn drop(&mut self) {
        if !self.done {
            self.writes.truncate_failed();
        }
    }
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
        let (names, own_ctime, listed) = {
            let inodes = self.inodes.table();
            (
                inodes.names(ino),
                inodes.ctime(ino),
                a.nlink.or(inodes.listed_nlink(ino)),
            )
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(atime),
            mtime: time(mtime),
            // SFTP v3 carries no ctime: the server's mtime, or the last change of the inode's
            // status through the mount, whichever is later.
            ctime: own_ctime.map_or(time(mtime), |c| c.max(time(mtime))),
            crtime: time(mtime),
            kind,
            perm: (mode & 0o7777 & !self.config.ids.umask) as u16,
            // The names the mount knows: 0 once unlinked (or renamed over) through it, more
            // for hard links made through it; links made elsewhere as the last listing's long
            // name counted them (SFTP v3 carries no link count).
            nlink: if names == 0 {
                0
            } else {
                names.max(listed.unwrap_or(1))
            },
            uid,
            gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    /// The attributes the kernel is told for `ino`: the server's, with the size of writes it
    /// has not acked yet. Their times are remembered (see [`Core::setattr`]).
    /// While attribute changes are on their way, the server's attributes are older than what
    /// the kernel was told: it keeps being told that.
    pub(super) fn shown(&self, ino: u64, attrs: &Attrs) -> FileAttr {
        let provisional = self.provisional(ino);
        let attrs = {
            let mut inodes = self.inodes.table();
            match inodes.shown(ino) {
                Some(ahead) if provisional => ahead,
                _ => {
                    inodes.show(ino, attrs);
                    attrs.clone()
                }
            }
        };
        self.with_pending_size(ino, self.to_attr(ino, &attrs))
    }

    /// Whether what the kernel is told of `ino` now is ahead of the server (attribute changes
    /// still on their way): it must not keep it, but ask again.
    pub fn provisional(&self, ino: u64) -> bool {
        self.inodes.writes(ino).is_some_and(|w| w.attrs_changing())
    }

    /// Attributes with the size of writes the server has not acked yet.
    fn with_pending_size(&self, ino: u64, mut attr: FileAttr) -> FileAttr {
        if let Some(w) = self.inodes.writes(ino) {
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
        ino.and_then(|ino| self.inodes.writes(ino))
            .is_some_and(|w| w.pending())
    }

    /// The size `ino`'s writes in flight make, for attributes asked from now on: those writes
    /// may land before or after the request (they travel on other channels), and their acks may
    /// come before its reply, so only what was in flight when it was sent can be counted.
    fn size_floor(&self, ino: u64) -> u64 {
        self.inodes.writes(ino).map_or(0, |w| w.size_floor())
    }

    /// lstat of `path` (the inode `ino`, if the kernel holds one), through the cache.
    pub(super) async fn stat_cached(&self, ino: Option<u64>, path: &[u8]) -> FsResult<Attrs> {
        self.stat_through_cache(ino, path, false).await
    }

    /// Whether the kernel may keep the pages it cached for `ino`, opened with `attrs`: its
    /// size and mtime unchanged since the last open, and that mtime already old then (see
    /// [`ContentsSeen`]).
    pub(super) fn keep_cache(&self, ino: u64, attrs: Option<&Attrs>) -> bool {
        let now = now_secs();
        let seen = attrs.and_then(|a| Some(ContentsSeen::at(a.size?, a.atime_mtime?.1, now)));
        let before = self.inodes.table().swap_contents_seen(ino, seen);
        match self.config.keep_cache {
            KeepCache::Never => false,
            KeepCache::WhileUnchanged => before
                .zip(seen)
                .is_some_and(|(before, seen)| before.still(&seen)),
            KeepCache::Always => true,
        }
    }

    /// Whether the kernel was shown another size or mtime for `ino` than `now`.
    pub(super) fn shown_stale(&self, ino: u64, now: &Attrs) -> bool {
        self.inodes
            .table()
            .shown(ino)
            .is_some_and(|shown| shown.size_and_mtime() != now.size_and_mtime())
    }

    /// The attributes of `ino` at `path` for an open: cached ones only if they are at most
    /// [`super::cache::COHERENCE`] old (close-to-open coherence: a change made on the server is
    /// seen by the next open after about a second).
    pub(super) async fn stat_for_open(&self, ino: u64, path: &[u8]) -> FsResult<Attrs> {
        self.stat_through_cache(Some(ino), path, true).await
    }

    async fn stat_through_cache(
        &self,
        ino: Option<u64>,
        path: &[u8],
        for_open: bool,
    ) -> FsResult<Attrs> {
        // Changes on their way: the server does not show them yet, the kernel was told them.
        if let Some(ino) = ino
            && self.provisional(ino)
            && let Some(shown) = self.inodes.table().shown(ino)
        {
            return Ok(shown);
        }
        let cacheable = !self.writes_pending(ino);
        let mut own_check = None;
        if cacheable {
            let known = match for_open {
                true => self.cache.name_for_open(path),
                false => self.cache.name(path),
            };
            match known {
                Some(Known::Attrs(attrs)) => return Ok(attrs),
                // Only a name taken as missing depends on the directory being as the mount
                // left it: when that is due to be checked, the name is asked too, at once.
                Some(Known::Missing) => match self.cache.listing_to_check(path) {
                    Some(check) => own_check = Some(check),
                    None => return Err(libc::ENOENT),
                },
                None => {
                    own_check = self.cache.listing_to_check(path);
                    if own_check.is_none() {
                        match self.burst_listing(path, for_open).await {
                            Some(Known::Attrs(attrs)) => return Ok(attrs),
                            Some(Known::Missing) => return Err(libc::ENOENT),
                            None => {}
                        }
                    }
                }
            }
        }
        let ticket = self.cache.ticket();
        let floor = ino.map_or(0, |ino| self.size_floor(ino));
        let follow = self.config.symlinks.follow;
        let asked = self.idempotent(|s| attrs_of(s, path, follow));
        let result = match own_check {
            Some(check) => {
                let dir = check.dir.clone();
                let (result, due, ()) = tokio::join!(
                    asked,
                    self.check_listing(check),
                    self.check_listings_due(&dir)
                );
                if let Some(due) = due {
                    self.relist_later(due);
                }
                result
            }
            None => asked.await,
        };
        let result = result.map(|attrs| at_least(attrs, floor));
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
        let known = self.inodes.table().child(parent, name);
        let attrs = self.stat_cached(known, path).await?;
        Ok(self.remember_entry(parent, name, &attrs))
    }

    /// Records the kernel's new reference to `parent/name`, whose attributes are `attrs`.
    pub(super) fn remember_entry(&self, parent: u64, name: &[u8], attrs: &Attrs) -> Entry {
        let ino = self
            .inodes
            .table()
            .remember(parent, name, is_symlink(attrs));
        Entry {
            attr: self.shown(ino, attrs),
        }
    }

    pub async fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        // An unlinked file is reached through any of its open descriptors: stat of
        // /proc/PID/fd/N passes none (the tmpfile pattern: open, unlink, keep using it).
        let open = fh
            .and_then(|fh| self.file(fh).ok())
            .or_else(|| self.files.of_inode(ino).pop());
        let attrs = match (self.inodes.linked_path(ino), open) {
            (Some(path), _) => self.stat_cached(Some(ino), &path).await?,
            // An unlinked open file: only its handle still reaches it.
            (None, Some(file)) => {
                // A change of its attributes in flight, or acked meanwhile on another channel:
                // the server's answer may be older than what the kernel was told.
                let before = file.inode_writes.generation();
                let shown = self.inodes.table().shown(ino);
                if self.provisional(ino)
                    && let Some(shown) = shown.clone()
                {
                    return Ok(self.shown(ino, &shown));
                }
                let floor = self.size_floor(ino);
                let attrs = file
                    .handle
                    .idempotent(|own| own.session.fstat(own.handle.clone()))
                    .await?;
                match shown {
                    // Its size the server's (writes only make it grow here; a truncate settles
                    // them first and is asked again).
                    Some(mut shown) if file.inode_writes.generation() != before => {
                        shown.size = shown.size.max(attrs.size);
                        at_least(shown, floor)
                    }
                    _ => at_least(attrs, floor),
                }
            }
            (None, None) => {
                let path = &self.inodes.path(ino)?;
                let follow = self.config.symlinks.follow;
                self.idempotent(|s| attrs_of(s, path, follow)).await?
            }
        };
        Ok(self.shown(ino, &attrs))
    }

    /// Sends the change `attrs` through `file`, open for writing, right behind its writes, and
    /// lets it complete in the background: its failure is reported by the file's next barrier
    /// (close at the latest), as a write's is. The caller makes sure the change comes from the
    /// process that opened the file (the error must reach the program that caused it). Not
    /// once the file was closed after its last write (the program may be done with it: nothing
    /// would report the failure), and only where the order is sure (a server that keeps a
    /// channel's order, every write of the inode queued on that channel). Returns the
    /// attributes it will give the file (from `shown`, what the kernel knows), or `None` when
    /// the change must be waited for.
    fn change_in_background(
        &self,
        file: &Arc<OpenFile>,
        attrs: &Attrs,
        shown: Attrs,
    ) -> Option<Attrs> {
        let writer = file.writer.as_ref()?;
        if file.flushed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let own = file.handle.now().ok()?;
        if !self.features.in_order
            || own.session.is_closed()
            || !file.inode_writes.all_queued_on(own.ordering_channel())
        {
            return None;
        }
        let announced = Announced::new(self.files.of_inode(file.ino), attrs);
        let change = own.session.fsetstat(own.handle.clone(), attrs.clone());
        let handle = file.handle.clone();
        let resend = attrs.clone();
        let (writes, horizon) = (file.inode_writes.clone(), file.inode_writes.generation());
        let resized = attrs.size.is_some();
        let accepted = writer.track_attr_change(Box::pin(async move {
            // Setting attributes twice does no harm: one lost with its connection is sent
            // again on the file's reopened handle, once the writes before it landed again (a
            // WRITE after a change of times would move the mtime `cp -p` or `tar` set).
            let mut result = change.await;
            let mut on = own;
            while matches!(result, Err(SftpError::ConnectionLost)) {
                writes.settle_before(horizon).await;
                on = handle.after(on.generation).await?;
                result = on.session.fsetstat(on.handle.clone(), resend.clone()).await;
            }
            if result.is_ok() {
                announced.confirm(&resend);
            }
            result.map_err(errno)
        }));
        if !accepted {
            // The pipeline failed or closed meanwhile: the change was sent, its reply is not
            // awaited; the caller sends it again and waits (setting attributes is idempotent).
            return None;
        }
        if !resized {
            file.contents_unchanged_since(horizon);
        }
        let mut predicted = shown;
        // What the kernel was last shown may predate writes through the mount since (another
        // descriptor's truncate and rewrite): the size they leave, or the kernel would take
        // the file for shorter than it is.
        predicted.size = Some(file.inode_writes.size_at_least(predicted.size.unwrap_or(0)));
        if let Some(mode) = attrs.permissions {
            let kind = predicted.permissions.unwrap_or(0) & libc::S_IFMT;
            predicted.permissions = Some(kind | mode);
        }
        if let Some(owner) = attrs.uid_gid {
            if predicted.uid_gid != Some(owner) && attrs.permissions.is_none() {
                // A new owner takes the set-id bits away (Linux, for root too).
                let mut mode = predicted.permissions.unwrap_or(0);
                mode &= !libc::S_ISUID;
                if mode & libc::S_IXGRP != 0 {
                    mode &= !libc::S_ISGID;
                }
                predicted.permissions = Some(mode);
            }
            predicted.uid_gid = Some(owner);
        }
        if let Some(times) = attrs.atime_mtime {
            predicted.atime_mtime = Some(times);
        }
        Some(predicted)
    }

    /// Waits until a request about to be queued on `channel` will reach the server after every
    /// write of `ino` accepted so far (a WRITE landing after a change of times would move the
    /// modification time again): at once when they are all queued on that channel of a server
    /// that keeps a channel's order, else once they are acked.
    async fn after_writes(&self, ino: u64, channel: usize) {
        if let Some(w) = self.inodes.writes(ino)
            && !(self.features.in_order && w.all_queued_on(channel))
        {
            w.settle().await;
        }
    }

    /// A change of `ino`'s attributes by its path on the connection now (behind the inode's
    /// writes when it sets times), with its attributes asked right behind it on a server that
    /// keeps a channel's order. The names lock comes back with it: the path names the inode's
    /// file until the change is answered.
    async fn setstat_by_path(
        &self,
        ino: u64,
        attrs: Attrs,
        symlink: bool,
        times: bool,
    ) -> FsResult<(
        tokio::sync::RwLockReadGuard<'_, ()>,
        Reply<()>,
        Option<Reply<Attrs>>,
    )> {
        let generation = self.remote.current().await.map_err(|_| libc::EIO)?;
        if times {
            self.after_writes(ino, ordering_channel(generation.id, 0))
                .await;
        }
        let session = generation.meta();
        let names = self.inodes.names_kept().await;
        let path = self.inodes.path(ino)?;
        let change = match symlink {
            true => session.lsetstat(&path, attrs),
            false => session.setstat(&path, attrs),
        };
        let after = self.features.in_order.then(|| session.lstat(&path));
        Ok((names, change, after))
    }

    /// `caller`: the process asking.
    pub async fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
        caller: u32,
    ) -> FsResult<FileAttr> {
        let attr = self.setattr_on_server(ino, fh, set, caller).await?;
        Ok(self.status_changed(ino, attr))
    }

    /// The inode's status changed through the mount now (chmod, chown, utimes, truncate,
    /// write, link, rename): its ctime, which SFTP v3 does not carry, is the mount's from now
    /// on. `attr` is what the kernel is told, with that ctime.
    pub(super) fn status_changed(&self, ino: u64, mut attr: FileAttr) -> FileAttr {
        let now = std::time::SystemTime::now();
        self.inodes.table().set_ctime(ino, now);
        self.changed_other_names(ino);
        attr.ctime = attr.ctime.max(now);
        attr
    }

    async fn setattr_on_server(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
        caller: u32,
    ) -> FsResult<FileAttr> {
        // The kernel rarely says which descriptor (futimens, fchown and fchmod come without
        // one): a file open for writing carries the change on its own handle, behind its writes.
        let open = fh
            .and_then(|fh| self.file(fh).ok())
            .or_else(|| self.files.writing(ino));
        let mut attrs = Attrs::default();
        // Writes already accepted must land before the size changes under them. Until the
        // server confirms the new size, a reopen after a reconnection takes either size for
        // the file's (the change may wait for that reopen, or be lost and sent again).
        let truncating = match set.size {
            Some(size) => {
                attrs.size = Some(size);
                match self.inodes.writes_or_new(ino) {
                    Some(w) => {
                        w.settle().await;
                        Some(Truncating::start(w, size))
                    }
                    None => None,
                }
            }
            None => None,
        };
        if let Some(mode) = set.mode {
            attrs.permissions = Some(mode & 0o7777);
        }
        // SFTP v3 sets owner and group, and both times, together: a change of one keeps the
        // other as it is. A time the kernel was shown will do (an access time read elsewhere
        // meanwhile may be put back: the price of not asking), an owner must be current.
        let owner_partial = set.uid.is_some() != set.gid.is_some();
        let times_partial = set.atime.is_some() != set.mtime.is_some();
        let shown = self.inodes.table().shown(ino);
        let provisional = self.provisional(ino);
        let current = if owner_partial && !provisional || (times_partial && shown.is_none()) {
            Some(self.stat_cached(Some(ino), &self.inodes.path(ino)?).await?)
        } else {
            shown.clone()
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
        if set.size.is_none()
            && let (Some(file), Some(shown)) = (&open, shown)
            && file.opener == caller
            && let Some(predicted) = self.change_in_background(file, &attrs, shown)
        {
            self.changed_attrs(ino);
            self.inodes.table().show(ino, &predicted);
            return Ok(self.with_pending_size(ino, self.to_attr(ino, &predicted)));
        }
        // A change sent in the background before this one must land first, or the older
        // value would win (they may travel on different channels).
        if let Some(w) = self.inodes.writes(ino)
            && w.attrs_changing()
        {
            w.settle().await;
        }
        let symlink = self.inodes.table().is_symlink(ino);
        let asked = attrs.clone();
        let announced = Announced::new(self.files.of_inode(ino), &asked);
        // The attributes after the change are asked right behind it on its channel: a server
        // that runs a channel in order answers both in one round trip.
        let times = attrs.atime_mtime.is_some();
        let floor = self.size_floor(ino);
        // A change by path is sent and answered before any rename or unlink through the mount:
        // the path names this inode's file until then.
        let mut _names = None;
        let (change, after) = match &open {
            Some(file) => {
                if times {
                    let channel = file.handle.live().await?.ordering_channel();
                    self.after_writes(ino, channel).await;
                }
                // Taken after the writes landed: they may have gone on a new connection.
                let own = file.handle.live().await?;
                let change = own.session.fsetstat(own.handle.clone(), attrs);
                let after = self
                    .features
                    .in_order
                    .then(|| own.session.fstat(own.handle));
                (change, after)
            }
            None => {
                let (names, change, after) =
                    self.setstat_by_path(ino, attrs, symlink, times).await?;
                _names = Some(names);
                (change, after)
            }
        };
        let mut after = after;
        let result = match (change.await, &open) {
            // Setting attributes twice does no harm: a change lost with its connection is
            // sent again on the file's reopened handle (the attributes are then asked anew).
            (Err(SftpError::ConnectionLost), Some(file)) => {
                after = None;
                let again = asked.clone();
                file.handle
                    .idempotent(|own| own.session.fsetstat(own.handle.clone(), again.clone()))
                    .await
            }
            // So is a change by path; sent again as the first was sent, on the new connection.
            (Err(SftpError::ConnectionLost), None) => {
                _names = None;
                match self
                    .setstat_by_path(ino, asked.clone(), symlink, times)
                    .await
                {
                    Ok((names, change, again_after)) => {
                        _names = Some(names);
                        after = again_after;
                        change.await.map_err(errno)
                    }
                    Err(e) => {
                        after = None;
                        Err(e)
                    }
                }
            }
            (result, _) => result.map_err(|e| match e.status() {
                // OpenSSH says FAILURE for EFBIG (and for little else a truncate meets).
                Some(StatusCode::FAILURE) if set.size.is_some() => libc::EFBIG,
                _ => errno(e),
            }),
        };
        drop(_names);
        if let (Some(truncating), Ok(())) = (truncating, &result) {
            truncating.done();
        }
        if result.is_ok() {
            announced.confirm(&asked);
        }
        self.changed_attrs(ino);
        let ticket = self.cache.ticket();
        result?;
        match after {
            Some(after) => {
                let attrs = at_least(after.await.map_err(errno)?, floor);
                // What the server made of it (a chown clears set-id bits).
                super::open_files::known_changed(&self.files.of_inode(ino), &attrs);
                // The kernel asks again at once when it must clear setuid bits.
                if let Some(path) = self.inodes.linked_path(ino)
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

/// `attrs` with a size of at least `floor` (see [`Core::size_floor`]).
fn at_least(mut attrs: Attrs, floor: u64) -> Attrs {
    if attrs.size.is_some_and(|size| size < floor) {
        attrs.size = Some(floor);
    }
    attrs
}
