//! The filesystem core: POSIX operations on inodes and open files, carried out with SFTP
//! requests. It knows nothing of the kernel protocol (the `fuse` adapter does that); it owns the
//! inode table, the open-file and directory handles, attribute conversion and errno mapping.

pub mod cache;
pub mod inode;
pub mod read;
pub mod write;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{FileAttr, FileType, INodeNo};
use tracing::{debug, error, warn};

use crate::sftp::proto::{Attrs, open_flags};
use crate::sftp::{Session, SftpError, StatVfs, StatusCode};
use cache::{CacheConfig, Known, MetaCache};
use inode::{InodeTable, ROOT, join};
use read::{Prefetcher, ReadFuture, ReadSource};
use write::{AckFuture, InodeWrites, WriteLane, WriteLimits, WritePipeline};

/// Errors are plain errno values: that is all the kernel can carry.
pub type Errno = i32;
pub type FsResult<T> = Result<T, Errno>;

/// Bytes several open files may hold together (unacked writes, or read-ahead): a semaphore of
/// bytes shared by every pipeline of a mount.
#[derive(Debug, Clone)]
pub struct ByteBudget(Arc<tokio::sync::Semaphore>);

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        ByteBudget(Arc::new(tokio::sync::Semaphore::new(bytes)))
    }

    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

fn errno(e: SftpError) -> Errno {
    e.errno()
}

fn is_symlink(attrs: &Attrs) -> bool {
    attrs.permissions.unwrap_or(0) & libc::S_IFMT == libc::S_IFLNK
}

fn is_dir(attrs: &Attrs) -> bool {
    attrs.permissions.unwrap_or(0) & libc::S_IFMT == libc::S_IFDIR
}

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

pub struct CoreConfig {
    pub ids: IdMapping,
    /// Unacked bytes per open file.
    pub write_buffer: usize,
    /// Unacked bytes of all files together.
    pub write_buffer_total: usize,
    /// Answer a WRITE that only partly fits with a short count.
    pub short_writes: bool,
    pub cache: CacheConfig,
    /// When the kernel may keep a file's cached pages at an open.
    pub keep_cache: KeepCache,
    /// Fetch the listings of subdirectories of a directory being read, into the cache.
    pub dir_prefetch: bool,
}

/// When the kernel may keep the pages it cached of a file across a close and an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepCache {
    /// `noauto_cache`: never; every open reads afresh.
    Never,
    /// `auto_cache` (the default): while the file's size and mtime are unchanged.
    #[default]
    WhileUnchanged,
    /// `kernel_cache`: always (for files only this mount changes).
    Always,
}

/// An open file, as the kernel is told about it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the pages it cached for this file: it did not change.
    pub keep_cache: bool,
}

/// A file gets lanes on the other channels once this much was written to it: a small file is
/// done before a second handle would pay for its open and close.
const SPREAD_AFTER_BYTES: u64 = 2 * 1024 * 1024;

/// OpenSSH's sshd grants each session channel a 2 MiB window (CHAN_SES_WINDOW_DEFAULT).
const LANE_TARGET: usize = 2 * 1024 * 1024;

/// Open files whose handles stay on the metadata channel; past this many, a file opens on the
/// channel holding the fewest. Servers cap the handles of one session (Green End's at 128;
/// OpenSSH's sftp-server at its descriptor limit), and one channel's window is shared by all.
const FILES_ON_FIRST_CHANNEL: usize = 64;

/// READDIRs in flight at most for one listing.
const MAX_READDIRS_IN_FLIGHT: usize = 16;
/// Listings fetched ahead at once for a tree walk; see [`Core::prefetch_listings`].
const DIR_PREFETCH_CONCURRENCY: usize = 16;
/// Directories waiting to be fetched ahead, at most.
const DIR_PREFETCH_STACK: usize = 256;
/// How far below a directory being read its subdirectories are fetched ahead.
const DIR_PREFETCH_DEPTH: u32 = 3;

/// Read-ahead per open file, at most (a far link needs rate x round trip: 250 MB/s x 40 ms).
const MAX_PREFETCH: usize = 16 * 1024 * 1024;
/// Read-ahead of all open files together, at most.
const MAX_PREFETCH_TOTAL: usize = 64 * 1024 * 1024;

/// An open handle as the prefetcher's source of bytes.
struct SftpSource {
    session: Arc<Session>,
    handle: Bytes,
}

impl ReadSource for SftpSource {
    fn read(&self, offset: u64, len: u32) -> ReadFuture {
        let reply = self.session.submit_read(self.handle.clone(), offset, len);
        Box::pin(async move { reply.await.map_err(errno) })
    }
}

/// One handle on one SFTP channel, as a write pipeline lane.
struct SftpLane {
    session: Arc<Session>,
    /// Index of `session` in [`Core::channels`].
    channel: usize,
    handle: Bytes,
    /// Where the server's free space can be asked, to tell ENOSPC from other failures.
    statvfs_path: Bytes,
}

impl WriteLane for SftpLane {
    fn submit(&self, offset: u64, data: Bytes) -> AckFuture {
        let pending = self.session.write(self.handle.clone(), offset, data);
        let session = self.session.clone();
        let statvfs_path = self.statvfs_path.clone();
        Box::pin(async move {
            match crate::sftp::client::expect_ok(pending.response().await, "write") {
                Ok(()) => Ok(()),
                Err(e) => Err(write_failure_errno(&session, &statvfs_path, e).await),
            }
        })
    }

    fn channel(&self) -> usize {
        self.channel
    }
}

/// OpenSSH reports a full disk as a bare FAILURE; the server's free space tells them apart.
async fn write_failure_errno(session: &Session, statvfs_path: &[u8], e: SftpError) -> Errno {
    if e.status() != Some(StatusCode::FAILURE) {
        return e.errno();
    }
    match session.statvfs(statvfs_path).await {
        Ok(vfs) if vfs.bavail.saturating_mul(vfs.frsize.max(1)) < 2 * 1024 * 1024 => libc::ENOSPC,
        _ => libc::EIO,
    }
}

/// The longest name the kernel takes (NAME_MAX).
const NAME_MAX: usize = 255;

/// Whether a READDIR entry belongs in a listing: `Ok(false)` for the `.` and `..` every
/// listing has (the kernel gets its own), `Err` for what a server must not send. A name is
/// joined into paths and cache keys: one with a `/` would reach another file, one with a NUL
/// cannot be a name at all.
fn listed_name(name: &[u8], attrs: &Attrs) -> Result<bool, &'static str> {
    match name {
        b"." | b".." => Ok(false),
        b"" => Err("an empty name"),
        _ if name.contains(&b'/') => Err("a name with a '/'"),
        _ if name.contains(&0) => Err("a name with a NUL byte"),
        _ if name.len() > NAME_MAX => Err("a name longer than 255 bytes"),
        _ => attrs.check().map(|()| true),
    }
}

/// An entry the kernel is told about: the inode and its attributes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: FileAttr,
}

/// A directory entry for readdir(plus). For readdirplus, `attr` is set and the kernel's lookup
/// count of `ino` has been raised: an entry the adapter cannot send must be forgotten again.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    pub kind: FileType,
    pub name: Bytes,
    pub attr: Option<FileAttr>,
}

/// Directories whose listings are to be fetched ahead (top = next), and the workers doing it.
#[derive(Default)]
struct DirPrefetch {
    stack: std::collections::VecDeque<(Vec<u8>, u32)>,
    workers: usize,
}

/// A listing being fetched, for others who want it too.
type ListingWatch = tokio::sync::watch::Receiver<Option<FsResult<Vec<(Bytes, Attrs)>>>>;

/// A handle on another channel: which channel, and the handle.
type LaneHandle = (Arc<Session>, Bytes);

struct OpenFile {
    ino: u64,
    /// Index in [`Core::channels`] of the channel `handle` lives on.
    channel: usize,
    handle: Bytes,
    writer: Option<Arc<WritePipeline>>,
    /// Read-ahead for sequential readers; none for write-only opens.
    prefetch: Option<Prefetcher>,
    inode_writes: Arc<InodeWrites>,
    /// Handles on the other channels, opened once the file proved large: closed on release,
    /// which leaves `None` so that a handle opened after it is closed at once, not leaked.
    lane_handles: Mutex<Option<Vec<LaneHandle>>>,
    spreading: std::sync::atomic::AtomicBool,
    /// The inode's write failures this descriptor has reported (fsync reports each once).
    failures_seen: AtomicU64,
}

struct DirHandle {
    ino: u64,
    entries: Vec<(Bytes, Attrs)>,
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

/// Attributes of a new file or directory, as the kernel asked for them.
#[derive(Debug, Clone, Copy)]
pub struct CreateMode {
    pub mode: u32,
    pub umask: u32,
}

pub struct Core {
    /// The metadata channel; every file's first handle lives here too.
    session: Arc<Session>,
    /// Every channel, `session` first: a large file's writes spread over all of them.
    channels: Vec<Arc<Session>>,
    /// Open files whose first handle is on each channel.
    files_on: Vec<AtomicUsize>,
    budget: ByteBudget,
    read_budget: ByteBudget,
    root: Bytes,
    inodes: Mutex<InodeTable>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_handle: AtomicU64,
    cache: MetaCache,
    dir_prefetch: Mutex<DirPrefetch>,
    listings_in_flight: Mutex<HashMap<Vec<u8>, ListingWatch>>,
    /// Held (shared) while a file is opened again by its path for more lanes, and exclusively
    /// while a name is removed or replaced: a reopen must reach the same file, never one that
    /// took its name.
    namespace: tokio::sync::RwLock<()>,
    /// The mount is going down: writes are refused from now on.
    shutting_down: std::sync::atomic::AtomicBool,
    config: CoreConfig,
}

impl Core {
    pub fn new(channels: Vec<Arc<Session>>, root: Bytes, config: CoreConfig) -> Self {
        Core {
            session: channels[0].clone(),
            files_on: channels.iter().map(|_| AtomicUsize::new(0)).collect(),
            channels,
            budget: ByteBudget::new(config.write_buffer_total),
            read_budget: ByteBudget::new(MAX_PREFETCH_TOTAL),
            inodes: Mutex::new(InodeTable::new(root.clone())),
            root,
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_handle: AtomicU64::new(1),
            cache: MetaCache::new(config.cache),
            dir_prefetch: Mutex::default(),
            listings_in_flight: Mutex::default(),
            namespace: tokio::sync::RwLock::new(()),
            shutting_down: Default::default(),
            config,
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn path(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.inodes.lock().unwrap().path(ino).ok_or(libc::ESTALE)
    }

    fn child_path(&self, parent: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if name.contains(&b'/') {
            return Err(libc::EINVAL);
        }
        self.inodes
            .lock()
            .unwrap()
            .child_path(parent, name)
            .ok_or(libc::ESTALE)
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    fn inode_writes(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.inodes.lock().unwrap().writes(ino)
    }

    fn to_attr(&self, ino: u64, a: &Attrs) -> FileAttr {
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

    /// Paths of the files with writes in flight (only open files can have them).
    fn pending_paths(&self) -> HashSet<Vec<u8>> {
        let files: Vec<Arc<OpenFile>> = self.files.lock().unwrap().values().cloned().collect();
        let inodes = self.inodes.lock().unwrap();
        files
            .iter()
            .filter(|f| f.inode_writes.pending())
            .filter_map(|f| inodes.linked_path(f.ino))
            .collect()
    }

    /// The path of `ino` while a name still reaches it (it was not unlinked): the cache's key.
    fn linked_path(&self, ino: u64) -> Option<Vec<u8>> {
        self.inodes.lock().unwrap().linked_path(ino)
    }

    /// The path of `ino`, and whether it may be cached under it (see [`Core::linked_path`]).
    fn path_and_linked(&self, ino: u64) -> FsResult<(Vec<u8>, bool)> {
        self.inodes
            .lock()
            .unwrap()
            .path_and_linked(ino)
            .ok_or(libc::ESTALE)
    }

    /// `path` was created, changed, renamed or removed through the mount: what the cache knew
    /// of it and of its directory is gone. Called once the server has answered, so that no
    /// listing or stat fetched before the change is stored after it.
    fn changed_path(&self, path: &[u8]) {
        self.cache.invalidate(path);
    }

    /// `path` was removed through the mount: a lookup of it needs no round trip.
    fn gone_path(&self, path: &[u8]) {
        let ticket = self.cache.ticket();
        self.cache.put_name(ticket, path.to_vec(), Known::Missing);
    }

    /// The contents or attributes of `ino` changed through the mount.
    fn changed_attrs(&self, ino: u64) {
        if let Some(path) = self.linked_path(ino) {
            self.cache.invalidate_attrs(&path);
        }
    }

    /// lstat of `path` (the inode `ino`, if the kernel holds one), through the cache.
    async fn stat_cached(&self, ino: Option<u64>, path: &[u8]) -> FsResult<Attrs> {
        let cacheable = !self.writes_pending(ino);
        if cacheable {
            match self.cache.name(path) {
                Some(Known::Attrs(attrs)) => return Ok(attrs),
                Some(Known::Missing) => return Err(libc::ENOENT),
                None => {}
            }
        }
        let ticket = self.cache.ticket();
        let result = self.session.lstat(path).await.map_err(errno);
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
    async fn entry(&self, parent: u64, name: &[u8], path: &[u8]) -> FsResult<Entry> {
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

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Entry> {
        let path = self.child_path(parent, name)?;
        self.entry(parent, name, &path).await
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.lock().unwrap().forget(ino, count);
    }

    pub async fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        let open = fh.and_then(|fh| self.file(fh).ok());
        let attrs = match (self.linked_path(ino), open) {
            (Some(path), _) => self.stat_cached(Some(ino), &path).await?,
            // An unlinked open file: only its handle still reaches it.
            (None, Some(file)) => self.channels[file.channel]
                .fstat(file.handle.clone())
                .await
                .map_err(errno)?,
            (None, None) => self.session.lstat(&self.path(ino)?).await.map_err(errno)?,
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
            Some(self.session.lstat(&path).await.map_err(errno)?)
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
                self.channels[file.channel]
                    .fsetstat(file.handle.clone(), attrs)
                    .await
            }
            None if symlink => self.session.lsetstat(&path, attrs).await,
            None => self.session.setstat(&path, attrs).await,
        };
        self.changed_attrs(ino);
        result.map_err(errno)?;
        self.getattr(ino, fh).await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let (path, linked) = self.path_and_linked(ino)?;
        if linked && let Some(target) = self.cache.link(&path) {
            return Ok(target);
        }
        let ticket = self.cache.ticket();
        let target = self.session.readlink(&path).await.map_err(errno)?;
        if linked {
            self.cache.put_link(ticket, path, target.clone());
        }
        Ok(target)
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: CreateMode) -> FsResult<Entry> {
        let path = self.child_path(parent, name)?;
        let attrs = Attrs {
            permissions: Some(mode.mode & !mode.umask & 0o7777),
            ..Default::default()
        };
        let made = self.session.mkdir(&path, attrs).await;
        self.changed_path(&path);
        if let Err(e) = made {
            return Err(self.refine_exists(e, &path).await);
        }
        self.entry(parent, name, &path).await
    }

    /// OpenSSH turns EEXIST into a bare FAILURE; a stat of the target says whether that was it.
    async fn refine_exists(&self, e: SftpError, path: &[u8]) -> Errno {
        if e.status() == Some(StatusCode::FAILURE) && self.session.lstat(path).await.is_ok() {
            return libc::EEXIST;
        }
        errno(e)
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let _names = self.namespace.write().await;
        let removed = self.session.remove(&path).await;
        self.changed_path(&path);
        if let Err(e) = removed {
            if e.status() == Some(StatusCode::FAILURE)
                && let Ok(a) = self.session.lstat(&path).await
                && a.permissions.unwrap_or(0) & libc::S_IFMT == libc::S_IFDIR
            {
                return Err(libc::EISDIR);
            }
            return Err(errno(e));
        }
        self.inodes.lock().unwrap().unlink(parent, name);
        self.gone_path(&path);
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let _names = self.namespace.write().await;
        let removed = self.session.rmdir(&path).await;
        self.cache.invalidate_tree(&path);
        if let Err(e) = removed {
            // The common FAILURE of rmdir is a directory that is not empty.
            if e.status() == Some(StatusCode::FAILURE) && self.session.lstat(&path).await.is_ok() {
                return Err(libc::ENOTEMPTY);
            }
            return Err(errno(e));
        }
        self.inodes.lock().unwrap().unlink(parent, name);
        self.gone_path(&path);
        Ok(())
    }

    pub async fn symlink(&self, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Entry> {
        let path = self.child_path(parent, name)?;
        let made = self.session.symlink(&path, target).await;
        self.changed_path(&path);
        if let Err(e) = made {
            return Err(self.refine_exists(e, &path).await);
        }
        self.entry(parent, name, &path).await
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
    ) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        let _names = self.namespace.write().await;
        let result = if no_replace {
            // The plain v3 RENAME never replaces (OpenSSH does link + unlink), which is
            // exactly RENAME_NOREPLACE.
            if self.session.lstat(&to).await.is_ok() {
                return Err(libc::EEXIST);
            }
            let req = crate::sftp::proto::Request::Rename {
                from: Bytes::copy_from_slice(&from),
                to: Bytes::copy_from_slice(&to),
            };
            crate::sftp::client::expect_ok(self.session.call(&req).await, "rename")
                .map_err(RenameError::Sftp)
        } else {
            self.rename_replacing(&from, &to).await
        };
        // A directory takes everything cached below it along; a file (known as one) only
        // its own entries, which spares a scan of the cache for each of rsync's renames.
        let known_file = matches!(self.cache.name(&from), Some(Known::Attrs(a)) if !is_dir(&a));
        for path in [&from, &to] {
            if known_file {
                self.changed_path(path);
            } else {
                self.cache.invalidate_tree(path);
            }
        }
        if let Err(e) = result {
            return Err(match e {
                RenameError::Sftp(e) if no_replace => self.refine_exists(e, &to).await,
                RenameError::Sftp(e) => errno(e),
                RenameError::Errno(e) => e,
            });
        }
        self.inodes
            .lock()
            .unwrap()
            .rename(parent, name, new_parent, new_name);
        self.gone_path(&from);
        Ok(())
    }

    /// rename(2), which replaces `to`: with posix-rename@openssh.com, one atomic request. The
    /// plain v3 RENAME refuses an existing target (OpenSSH and Green End's server link, then
    /// unlink); without the extension the target is then moved aside first and removed after,
    /// as sshfs's `workaround=rename` does. Not atomic (for a moment `to` is missing), but
    /// nothing is lost: when the rename fails, the target is moved back.
    async fn rename_replacing(&self, from: &[u8], to: &[u8]) -> Result<(), RenameError> {
        let e = match self.session.rename(from, to).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if self.session.features().posix_rename || e.status() != Some(StatusCode::FAILURE) {
            return Err(RenameError::Sftp(e));
        }
        let (Ok(source), Ok(target)) =
            (self.session.lstat(from).await, self.session.lstat(to).await)
        else {
            return Err(RenameError::Sftp(e));
        };
        let sftp = |e: SftpError| RenameError::Errno(errno(e));
        match (is_dir(&source), is_dir(&target)) {
            (false, true) => return Err(RenameError::Errno(libc::EISDIR)),
            (true, false) => return Err(RenameError::Errno(libc::ENOTDIR)),
            (true, true) => {
                // Only over an empty directory, which rmdir checks.
                self.session.rmdir(to).await.map_err(|e| match e.status() {
                    Some(StatusCode::FAILURE) => RenameError::Errno(libc::ENOTEMPTY),
                    _ => sftp(e),
                })?;
                let renamed = self.session.rename(from, to).await;
                if renamed.is_err() {
                    let mode = Attrs {
                        permissions: target.permissions.map(|m| m & 0o7777),
                        ..Default::default()
                    };
                    let _ = self.session.mkdir(to, mode).await;
                }
                return renamed.map_err(sftp);
            }
            (false, false) => {}
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut aside = to.to_vec();
        aside.extend_from_slice(format!(".sftpmount-{}-{nanos}", std::process::id()).as_bytes());
        self.session.rename(to, &aside).await.map_err(sftp)?;
        match self.session.rename(from, to).await {
            Ok(()) => {
                if let Err(e) = self.session.remove(&aside).await {
                    warn!(
                        "renamed over {}, but its old file stays as {}: {e}",
                        String::from_utf8_lossy(to),
                        String::from_utf8_lossy(&aside)
                    );
                }
                Ok(())
            }
            Err(e) => {
                if let Err(back) = self.session.rename(&aside, to).await {
                    error!(
                        "{} was moved aside to {} and could not be moved back: {back}",
                        String::from_utf8_lossy(to),
                        String::from_utf8_lossy(&aside)
                    );
                }
                Err(sftp(e))
            }
        }
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Entry> {
        let existing = self.path(ino)?;
        let path = self.child_path(new_parent, new_name)?;
        let linked = self.session.hardlink(&existing, &path).await;
        self.changed_path(&path);
        if let Err(e) = linked {
            return Err(self.refine_exists(e, &path).await);
        }
        // Each name gets its own inode: our inodes are names, and either may be unlinked.
        self.entry(new_parent, new_name, &path).await
    }

    pub async fn statfs(&self) -> FsResult<StatVfs> {
        match self.session.statvfs(&self.root).await {
            Ok(s) => Ok(s),
            Err(e) if e.status() == Some(StatusCode::OP_UNSUPPORTED) => Ok(StatVfs {
                bsize: 4096,
                frsize: 4096,
                blocks: 1 << 30,
                bfree: 1 << 30,
                bavail: 1 << 30,
                files: 1 << 20,
                ffree: 1 << 20,
                favail: 1 << 20,
                namemax: 255,
                ..Default::default()
            }),
            Err(e) => Err(errno(e)),
        }
    }

    fn sftp_open_flags(flags: i32) -> u32 {
        let mut pflags = match flags & libc::O_ACCMODE {
            libc::O_WRONLY => open_flags::WRITE,
            libc::O_RDWR => open_flags::READ | open_flags::WRITE,
            _ => open_flags::READ,
        };
        if flags & libc::O_APPEND != 0 {
            pflags |= open_flags::APPEND;
        }
        if flags & libc::O_TRUNC != 0 {
            pflags |= open_flags::TRUNC;
        }
        if flags & libc::O_CREAT != 0 {
            pflags |= open_flags::CREAT;
        }
        if flags & libc::O_EXCL != 0 {
            pflags |= open_flags::EXCL;
        }
        pflags
    }

    /// `path`: where the file was opened; its own filesystem is the one that may be full (it
    /// may be a mount of its own), so a failed write asks there for the free space.
    fn register_open(
        &self,
        ino: u64,
        (channel, handle): (usize, Bytes),
        flags: i32,
        path: &[u8],
    ) -> FsResult<u64> {
        let Some(inode_writes) = self.inode_writes(ino) else {
            self.channels[channel].close_unawaited(handle);
            self.files_on[channel].fetch_sub(1, Ordering::Relaxed);
            return Err(libc::ESTALE);
        };
        let session = &self.channels[channel];
        let statvfs_path = Bytes::copy_from_slice(path);
        let writer = (flags & libc::O_ACCMODE != libc::O_RDONLY).then(|| {
            WritePipeline::new(
                Arc::new(SftpLane {
                    session: session.clone(),
                    channel,
                    handle: handle.clone(),
                    statvfs_path,
                }),
                WriteLimits {
                    per_file: self.config.write_buffer,
                    max_write: self.session.features().max_write as usize,
                    short_writes: self.config.short_writes,
                    lane_target: LANE_TARGET,
                    in_order: self.session.features().in_order,
                },
                self.budget.clone(),
                inode_writes.clone(),
                flags & libc::O_APPEND != 0,
            )
        });
        let prefetch = (flags & libc::O_ACCMODE != libc::O_WRONLY).then(|| {
            Prefetcher::new(
                Arc::new(SftpSource {
                    session: session.clone(),
                    handle: handle.clone(),
                }),
                self.read_budget.clone(),
                self.session.features().max_read,
                MAX_PREFETCH,
            )
        });
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let failures_seen = AtomicU64::new(inode_writes.failures());
        self.files.lock().unwrap().insert(
            fh,
            Arc::new(OpenFile {
                ino,
                channel,
                handle,
                writer,
                prefetch,
                inode_writes,
                lane_handles: Mutex::new(Some(Vec::new())),
                spreading: Default::default(),
                failures_seen,
            }),
        );
        Ok(fh)
    }

    /// Opens the file on every other channel at once, so its writes are not held to one
    /// channel's window. Best effort: a channel that cannot open it is simply not used.
    async fn spread(self: Arc<Self>, file: Arc<OpenFile>, writer: Arc<WritePipeline>) {
        writer.expect_lanes(true);
        self.open_lanes(&file, &writer).await;
        writer.expect_lanes(false);
        debug!(
            ino = file.ino,
            lanes = writer.lane_count(),
            "writes spread over channels"
        );
    }

    /// SFTP has no open by handle: a lane is opened by the file's path, which must still name
    /// this file. Names change through the mount only under the namespace lock, held here until
    /// the lanes are registered, and a file unlinked or renamed over is never reopened. A name
    /// replaced on the server by someone else is caught by the new handle's attributes: same
    /// type, owner and mode, and at least the size ours had just before.
    async fn open_lanes(&self, file: &Arc<OpenFile>, writer: &Arc<WritePipeline>) {
        let _names = self.namespace.read().await;
        let Some(path) = self.linked_path(file.ino) else {
            return;
        };
        let Ok(primary) = self.channels[file.channel].fstat(file.handle.clone()).await else {
            return;
        };
        let path = Bytes::from(path);
        let mut opening = tokio::task::JoinSet::new();
        let others = self.channels.iter().enumerate();
        for (index, channel) in others.filter(|(index, _)| *index != file.channel) {
            let channel = channel.clone();
            let (file, writer) = (file.clone(), writer.clone());
            let (path, primary) = (path.clone(), primary.clone());
            opening.spawn(async move {
                let Ok(handle) = channel
                    .open(&path, open_flags::WRITE, Attrs::default())
                    .await
                else {
                    return;
                };
                let same = channel.fstat(handle.clone()).await.is_ok_and(|a| {
                    a.permissions == primary.permissions
                        && a.uid_gid == primary.uid_gid
                        && a.size
                            .zip(primary.size)
                            .is_some_and(|(now, ours)| now >= ours)
                });
                if !same {
                    warn!("not spreading writes: the file's name now reaches another file");
                    let _ = channel.close(handle).await;
                    return;
                }
                let registered = match file.lane_handles.lock().unwrap().as_mut() {
                    Some(handles) => {
                        handles.push((channel.clone(), handle.clone()));
                        true
                    }
                    None => false,
                };
                if !registered {
                    let _ = channel.close(handle).await;
                    return;
                }
                writer.add_lane(Arc::new(SftpLane {
                    session: channel,
                    channel: index,
                    handle,
                    statvfs_path: path,
                }));
            });
        }
        opening.join_all().await;
    }

    /// Closes the file's handles on every channel.
    async fn close_handles(&self, file: &OpenFile) -> FsResult<()> {
        let lanes = file.lane_handles.lock().unwrap().take().unwrap_or_default();
        // All at once: the server frees an unlinked file's space only once every handle is
        // closed, and the kernel does not wait for a release.
        let mut closing = tokio::task::JoinSet::new();
        for (channel, handle) in lanes {
            closing.spawn(async move { channel.close(handle).await });
        }
        let closed = self.channels[file.channel].close(file.handle.clone()).await;
        self.files_on[file.channel].fetch_sub(1, Ordering::Relaxed);
        closing.join_all().await;
        closed.map_err(errno)
    }

    /// OPENs `path` on the metadata channel, or once it holds [`FILES_ON_FIRST_CHANNEL`] files,
    /// on the channel holding the fewest; counted there until [`Core::close_handles`].
    async fn open_handle(
        &self,
        path: &[u8],
        pflags: u32,
        attrs: Attrs,
    ) -> Result<(usize, Bytes), SftpError> {
        let load = |i: usize| self.files_on[i].load(Ordering::Relaxed);
        let channel = if load(0) < FILES_ON_FIRST_CHANNEL {
            0
        } else {
            (0..self.channels.len())
                .min_by_key(|&i| load(i))
                .unwrap_or(0)
        };
        self.files_on[channel].fetch_add(1, Ordering::Relaxed);
        match self.channels[channel].open(path, pflags, attrs).await {
            Ok(handle) => Ok((channel, handle)),
            Err(e) => {
                self.files_on[channel].fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub async fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let (path, linked) = self.path_and_linked(ino)?;
        let pflags = Self::sftp_open_flags(flags & !(libc::O_CREAT | libc::O_EXCL));
        let truncating = pflags & open_flags::TRUNC != 0;
        if truncating && let Some(w) = self.inode_writes(ino) {
            w.settle().await;
        }
        // The attributes that decide whether the kernel's cached pages are still the file's
        // travel alongside the OPEN, so they cost no round trip of their own.
        let stat = async {
            if linked && !truncating {
                self.stat_cached(Some(ino), &path).await.ok()
            } else {
                None
            }
        };
        let (handle, attrs) = tokio::join!(self.open_handle(&path, pflags, Attrs::default()), stat);
        if truncating {
            self.changed_attrs(ino);
        }
        let handle = handle.map_err(errno)?;
        let seen = attrs.and_then(|a| Some((a.size?, a.atime_mtime?.1)));
        let before = self.inodes.lock().unwrap().swap_contents_seen(ino, seen);
        let keep_cache = match self.config.keep_cache {
            KeepCache::Never => false,
            KeepCache::WhileUnchanged => seen.is_some() && before == seen,
            KeepCache::Always => true,
        };
        Ok(Opened {
            fh: self.register_open(ino, handle, flags, &path)?,
            keep_cache,
        })
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: CreateMode,
        flags: i32,
    ) -> FsResult<(Entry, u64)> {
        let path = self.child_path(parent, name)?;
        let attrs = Attrs {
            permissions: Some(mode.mode & !mode.umask & 0o7777),
            ..Default::default()
        };
        let pflags = Self::sftp_open_flags(flags | libc::O_CREAT);
        let opened = self.open_handle(&path, pflags, attrs).await;
        self.changed_path(&path);
        let (channel, handle) = match opened {
            Ok(h) => h,
            Err(e) if flags & libc::O_EXCL != 0 => return Err(self.refine_exists(e, &path).await),
            Err(e) => return Err(errno(e)),
        };
        let ticket = self.cache.ticket();
        let attrs = match self.channels[channel].fstat(handle.clone()).await {
            Ok(a) => a,
            Err(e) => {
                let _ = self.channels[channel].close(handle).await;
                self.files_on[channel].fetch_sub(1, Ordering::Relaxed);
                return Err(errno(e));
            }
        };
        self.cache
            .put_name(ticket, path.clone(), Known::Attrs(attrs.clone()));
        let ino = self.inodes.lock().unwrap().remember(parent, name, false);
        let fh = self.register_open(ino, (channel, handle), flags, &path)?;
        Ok((
            Entry {
                attr: self.to_attr(ino, &attrs),
            },
            fh,
        ))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.file(fh)?;
        // A read sees every earlier write through the mount.
        file.inode_writes.settle().await;
        if let Some(prefetch) = &file.prefetch
            && let Some(data) = prefetch
                .read(offset, size, file.inode_writes.generation())
                .await
        {
            return Ok(data);
        }
        // The READs go out at once; each reply that comes back short is read on from where
        // it stopped, so a short result means the end of the file and nothing else.
        let source = SftpSource {
            session: self.channels[file.channel].clone(),
            handle: file.handle.clone(),
        };
        let max = self.session.features().max_read;
        let chunks: Vec<_> = (0..size)
            .step_by(max as usize)
            .map(|pos| {
                let len = (size - pos).min(max);
                let at = offset + pos as u64;
                (at, len, source.read(at, len))
            })
            .collect();
        let mut out = bytes::BytesMut::with_capacity(size as usize);
        for (at, len, pending) in chunks {
            let data = read::read_on(&source, at, len, pending.await?).await?;
            out.extend_from_slice(&data);
            if data.len() < len as usize {
                break;
            }
        }
        Ok(out.freeze())
    }

    /// `whole`: the request must be taken entirely (pages written back from a shared mmap: the
    /// kernel would drop the rest of a short reply).
    pub async fn write(
        self: &Arc<Self>,
        fh: u64,
        offset: u64,
        data: Bytes,
        whole: bool,
    ) -> FsResult<u32> {
        let file = self.file(fh)?;
        let writer = file.writer.clone().ok_or(libc::EBADF)?;
        if self.shutting_down.load(Ordering::Acquire) {
            writer.close();
        }
        let written = writer.write(offset, data, whole).await?;
        // After the write is pending, so that no stat from before it is stored after it.
        self.changed_attrs(file.ino);
        if self.channels.len() > 1
            && !writer.is_append()
            && writer.accepted_bytes() >= SPREAD_AFTER_BYTES
            && !file.spreading.swap(true, Ordering::Relaxed)
        {
            let core = self.clone();
            tokio::spawn(core.spread(file, writer));
        }
        Ok(written)
    }

    /// close(2) of one descriptor: every write accepted so far is on the server, or its error
    /// is returned here.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        match &file.writer {
            Some(writer) => writer.settle().await,
            None => Ok(()),
        }
    }

    /// fsync(2) through any descriptor of the file, a read-only one too (`sync FILE`): every
    /// write of the inode accepted before it, from any descriptor, is acked first; a failure of
    /// any of them since this descriptor was opened is reported, once, as Linux does. Then the
    /// server is asked to fsync (when it can).
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        file.inode_writes.settle().await;
        let own = match &file.writer {
            Some(writer) => writer.settle().await,
            None => Ok(()),
        };
        let any = file.inode_writes.failure_since(&file.failures_seen);
        own?;
        if let Some(e) = any {
            return Err(e);
        }
        self.channels[file.channel]
            .fsync(&file.handle)
            .await
            .map_err(errno)
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(file) = self.files.lock().unwrap().remove(&fh) else {
            return Err(libc::EBADF);
        };
        let settled = match &file.writer {
            Some(writer) => writer.settle().await,
            None => Ok(()),
        };
        if let Some(loss) = self.loss(&file, settled) {
            // The kernel does not pass a release's error on: a page written back from an
            // mmap after the last close may have had no other way to report it.
            error!("{loss}");
        }
        debug!(ino = file.ino, "closing remote handles");
        let closed = self.close_handles(&file).await;
        settled.and(closed)
    }

    /// What of `file`'s writes failed, once they settled with `settled`.
    fn loss(&self, file: &OpenFile, settled: FsResult<()>) -> Option<Loss> {
        let errno = settled.err()?;
        let path = self.inodes.lock().unwrap().path(file.ino);
        Some(Loss {
            path: path.map(|p| String::from_utf8_lossy(&p).into_owned()),
            bytes: file.writer.as_ref().map_or(0, |w| w.lost_bytes()),
            errno,
        })
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let path = self.path(ino)?;
        let pending = self.pending_paths();
        let entries = match self.cache.listing(&path, |p| !pending.contains(p)) {
            Some(entries) => entries,
            None => self.fetch_listing(&path).await?,
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .unwrap()
            .insert(fh, Arc::new(DirHandle { ino, entries }));
        Ok(fh)
    }

    /// A listing from the server, kept in the cache. A listing already being fetched (ahead,
    /// for a tree walk) is waited for rather than asked for twice.
    async fn fetch_listing(&self, path: &[u8]) -> FsResult<Vec<(Bytes, Attrs)>> {
        let (tx, waiting) = {
            let mut in_flight = self.listings_in_flight.lock().unwrap();
            match in_flight.get(path) {
                Some(rx) => (None, Some(rx.clone())),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    in_flight.insert(path.to_vec(), rx);
                    (Some(tx), None)
                }
            }
        };
        if let Some(mut rx) = waiting {
            if let Ok(done) = rx.wait_for(Option::is_some).await {
                return done.clone().expect("waited for Some");
            }
            // The fetch was given up: fetch it here.
            return Box::pin(self.fetch_listing(path)).await;
        }
        // Whatever happens to this fetch, it stops being the one others wait for.
        struct InFlight<'a>(&'a Mutex<HashMap<Vec<u8>, ListingWatch>>, &'a [u8]);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap().remove(self.1);
            }
        }
        let _in_flight = InFlight(&self.listings_in_flight, path);
        let ticket = self.cache.ticket();
        let listed = self.list_dir(path).await;
        if let Ok(entries) = &listed {
            let pending = self.pending_paths();
            self.cache
                .put_listing(ticket, path, entries, |p| !pending.contains(p));
        }
        if let Some(tx) = tx {
            tx.send_replace(Some(listed.clone()));
        }
        listed
    }

    /// Fetches listings below the directory `dir` into the cache while its reader is busy
    /// with it, so that a tree walk (`ls -lR`, `find`, `du`) finds them there instead of
    /// waiting two round trips per directory, one directory after another. `subdirs` (the ones
    /// the kernel was just told about, in name order as `ls -R` and `find -s` visit them) go on
    /// top of one stack for the mount: the directory read last is the walker's position, so its
    /// neighbourhood comes first. [`DIR_PREFETCH_CONCURRENCY`] workers take from the top, each
    /// fetched listing pushing its own subdirectories down to [`DIR_PREFETCH_DEPTH`] levels below
    /// the read directory; the oldest entries fall off the bottom of a full stack. A single
    /// `ls` thus costs a bounded number of listings, and a walk keeps ahead of its walker.
    pub fn prefetch_listings(self: &Arc<Self>, dir: u64, mut subdirs: Vec<Bytes>) {
        if !self.config.dir_prefetch || !self.config.cache.enabled {
            return;
        }
        let Ok(base) = self.path(dir) else {
            return;
        };
        subdirs.sort();
        let paths = subdirs.iter().map(|name| join(&base, name)).collect();
        self.push_prefetch(paths, 1);
    }

    fn push_prefetch(self: &Arc<Self>, paths: Vec<Vec<u8>>, depth: u32) {
        let mut state = self.dir_prefetch.lock().unwrap();
        // Reversed: the first in name order ends on top.
        state
            .stack
            .extend(paths.into_iter().rev().map(|path| (path, depth)));
        while state.stack.len() > DIR_PREFETCH_STACK {
            state.stack.pop_front();
        }
        let idle = DIR_PREFETCH_CONCURRENCY - state.workers;
        for _ in 0..idle.min(state.stack.len()) {
            state.workers += 1;
            tokio::spawn(self.clone().prefetch_worker());
        }
    }

    async fn prefetch_worker(self: Arc<Self>) {
        loop {
            let (path, depth) = {
                let mut state = self.dir_prefetch.lock().unwrap();
                match state.stack.pop_back() {
                    Some(next) => next,
                    None => {
                        state.workers -= 1;
                        return;
                    }
                }
            };
            if self.cache.too_large(&path) {
                continue;
            }
            let below = match self.cache.subdirs(&path) {
                Some(below) => below,
                None => match self.fetch_listing(&path).await {
                    Ok(entries) => entries
                        .iter()
                        .filter(|(_, attrs)| is_dir(attrs))
                        .map(|(name, _)| join(&path, name))
                        .collect(),
                    Err(_) => Vec::new(),
                },
            };
            if depth < DIR_PREFETCH_DEPTH && !below.is_empty() {
                let mut below = below;
                below.sort();
                self.push_prefetch(below, depth + 1);
            }
        }
    }

    /// The whole listing of a directory, from the server. READDIRs are pipelined (two at first,
    /// so a small directory costs one round trip after the OPENDIR, more while batches keep
    /// coming) and the CLOSE is not waited for: on a far link a listing costs two round trips
    /// where one READDIR at a time would cost one per batch, plus one for the end, plus the CLOSE.
    async fn list_dir(&self, path: &[u8]) -> FsResult<Vec<(Bytes, Attrs)>> {
        let handle = self.session.opendir(path).await.map_err(errno)?;
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..2 {
            in_flight.push_back(self.session.submit_readdir(handle.clone()));
        }
        let mut entries = Vec::new();
        let mut rejected = Vec::new();
        let listed = loop {
            let next = in_flight.pop_front().expect("a READDIR in flight");
            match next.await {
                Ok(Some(batch)) => {
                    for e in batch {
                        match listed_name(&e.filename, &e.attrs) {
                            Ok(true) => entries.push((e.filename, e.attrs)),
                            Ok(false) => {}
                            Err(why) => rejected.push(why),
                        }
                    }
                    // A large directory: keep more batches coming, up to a bound.
                    let depth = (in_flight.len() + 2).min(MAX_READDIRS_IN_FLIGHT);
                    while in_flight.len() < depth {
                        in_flight.push_back(self.session.submit_readdir(handle.clone()));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(errno(e)),
            }
        };
        if let Some(why) = rejected.first() {
            warn!(
                "listing of {}: left out {} entries the server sent ({why})",
                String::from_utf8_lossy(path),
                rejected.len()
            );
        }
        // The READDIRs still in flight answer "end of listing"; nobody waits for them.
        drop(in_flight);
        self.session.close_unawaited(handle);
        listed.map(|()| entries)
    }

    /// Entries from `offset` on; with `plus`, each carries attributes and a kernel reference.
    pub fn readdir(&self, fh: u64, offset: u64, plus: bool) -> FsResult<Vec<DirEntry>> {
        let dir = self
            .dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)?;
        let mut out = Vec::new();
        // ".." only needs an inode number; the kernel looks the parent up itself.
        let dots = [(&b"."[..], dir.ino), (&b".."[..], ROOT)];
        for (i, (name, ino)) in dots.iter().enumerate() {
            if offset <= i as u64 {
                out.push(DirEntry {
                    ino: *ino,
                    offset: i as u64 + 1,
                    kind: FileType::Directory,
                    name: Bytes::copy_from_slice(name),
                    attr: None,
                });
            }
        }
        let start = offset.saturating_sub(2) as usize;
        for (i, (name, attrs)) in dir.entries.iter().enumerate().skip(start) {
            let offset = i as u64 + 3;
            if plus {
                let ino = self
                    .inodes
                    .lock()
                    .unwrap()
                    .remember(dir.ino, name, is_symlink(attrs));
                let attr = self.with_pending_size(ino, self.to_attr(ino, attrs));
                out.push(DirEntry {
                    ino,
                    offset,
                    kind: attr.kind,
                    name: name.clone(),
                    attr: Some(attr),
                });
            } else {
                // readdir needs only a number; an unknown entry gets a placeholder the kernel
                // replaces through lookup.
                let attr = self.to_attr(0, attrs);
                out.push(DirEntry {
                    ino: u64::MAX,
                    offset,
                    kind: attr.kind,
                    name: name.clone(),
                    attr: None,
                });
            }
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Before unmounting: refuses every later write (its writer gets EIO), waits until every
    /// write accepted before is acked, closes every remote handle, and returns what could not
    /// be written. A file still open keeps its descriptor; only its later writes fail.
    pub async fn shut_down(&self) -> Vec<Loss> {
        self.shutting_down.store(true, Ordering::Release);
        // Left in the table: a descriptor still open gets EIO for its writes, not EBADF.
        let files: Vec<Arc<OpenFile>> = self.files.lock().unwrap().values().cloned().collect();
        for writer in files.iter().filter_map(|f| f.writer.as_ref()) {
            writer.close();
        }
        let mut losses = Vec::new();
        for file in files {
            let settled = match &file.writer {
                Some(writer) => writer.settle().await,
                None => Ok(()),
            };
            losses.extend(self.loss(&file, settled));
            let _ = self.close_handles(&file).await;
        }
        losses
    }
}

/// Why a rename failed: the server's status (refined by the caller), or an errno found out.
enum RenameError {
    Sftp(SftpError),
    Errno(Errno),
}

/// Writes of one file that did not reach the server.
#[derive(Debug, Clone)]
pub struct Loss {
    /// Where the file was last known (`None`: forgotten).
    pub path: Option<String>,
    /// Bytes accepted from the writer that are not on the server.
    pub bytes: u64,
    pub errno: Errno,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes written to {} did not reach the server: {}",
            self.bytes,
            self.path.as_deref().unwrap_or("a removed file"),
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}
