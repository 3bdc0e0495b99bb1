//! The filesystem core: POSIX operations on inodes and open files, carried out with SFTP
//! requests. It knows nothing of the kernel protocol (the `fuse` adapter does that). This file
//! holds the [`Core`] and what its parts share; each concern is a module of its own: `attr`
//! (attributes, getattr, setattr), `namespace` (names), `open_file` (opens, reads, writes,
//! barriers, shutdown), `open_files` (the descriptor table), `dir` (listings), `inode` (the
//! inode table: names, and paths only while a name reaches a file), `cache` (metadata cache),
//! `read` (read-ahead) and `write` (the write pipeline).

mod attr;
pub mod cache;
mod dir;
mod handle;
pub mod inode;
mod namespace;
mod open_file;
mod open_files;
pub mod read;
mod small_files;
pub mod write;

pub use attr::{IdMapping, SetAttr};
pub use dir::DirEntry;
pub use namespace::CreateMode;
pub use open_file::{Loss, Opened};

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fuser::FileAttr;

use crate::remote::{Generation, Remote};
use crate::sftp::proto::Attrs;
use crate::sftp::{ServerFeatures, Session, SftpError, StatVfs, StatusCode};
use cache::{CacheConfig, MetaCache};
use dir::{DirHandle, DirPrefetch, ListingWatch};
use inode::InodeTable;
use write::InodeWrites;

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

fn is_regular(attrs: &Attrs) -> bool {
    attrs.permissions.unwrap_or(0) & libc::S_IFMT == libc::S_IFREG
}

fn is_dir(attrs: &Attrs) -> bool {
    attrs.permissions.unwrap_or(0) & libc::S_IFMT == libc::S_IFDIR
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
    /// Read ahead of what programs ask: a file's next bytes, a directory's next small files
    /// (sshfs's `no_readahead` turns both off).
    pub readahead: bool,
    /// `sshfs_sync`: a write returns once the server has it (its error to that write).
    pub sync_writes: bool,
    pub symlinks: SymlinkMode,
    /// `disable_hardlink`: link(2) answers ENOSYS.
    pub hardlinks: bool,
    /// `workaround=renamexdev`: a rename the server fails with a bare FAILURE is EXDEV, so
    /// mv copies instead (servers say FAILURE for a rename across their filesystems).
    pub rename_failure_is_exdev: bool,
    /// The longest name the server's filesystem takes (statvfs's f_namemax; else 255).
    pub name_max: usize,
    /// New files are given to the local user who made them (`allow_other` with a login that
    /// may chown: root).
    pub owner_from_caller: bool,
}

/// How symlinks on the server are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SymlinkMode {
    /// `follow_symlinks`: a symlink shows as what it points to (a dangling one as a symlink).
    pub follow: bool,
    /// `transform_symlinks`: an absolute target inside the mounted directory is shown
    /// relative to the link, so it resolves inside the mount; others are shown unchanged.
    pub transform: bool,
    /// `contain_symlinks` (sshfs 3.7.6, CVE-2026-47187): a target that could lead out of the
    /// mount (absolute, or with a `..` component) is not given to the kernel: EPERM.
    pub contain: bool,
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

/// Read-ahead of all open files together, at most.
const MAX_PREFETCH_TOTAL: usize = 64 * 1024 * 1024;

/// The open files as `sftpmount status` shows them.
#[derive(Debug, Default, Clone, Copy)]
pub struct FilesStatus {
    pub open_files: usize,
    /// Written by programs, not yet acknowledged by the server.
    pub unacked_bytes: u64,
    /// Open files with a write failure their program has not been told of yet (it will be, by
    /// its next write, fsync or close).
    pub files_with_errors: usize,
    /// Bytes of open files whose WRITE failed.
    pub lost_bytes: u64,
}

/// An entry the kernel is told about: the inode and its attributes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: FileAttr,
}

pub struct Core {
    /// The connection: its current generation's channels, the metadata channel first; a
    /// large file's writes spread over all of them.
    remote: Arc<Remote>,
    /// What the server offered at the first connection.
    features: ServerFeatures,
    /// Open files whose first handle is on each channel (by index).
    files_on: Vec<AtomicUsize>,
    budget: ByteBudget,
    read_budget: ByteBudget,
    root: Bytes,
    inodes: Mutex<InodeTable>,
    /// The descriptor table (files with a server handle) and every descriptor's number.
    files: open_files::OpenFiles,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    cache: MetaCache,
    small_files: small_files::SmallFiles,
    dir_prefetch: Mutex<DirPrefetch>,
    listings_in_flight: Mutex<HashMap<Vec<u8>, ListingWatch>>,
    /// Held (shared) while a file is opened again by its path for more lanes, and exclusively
    /// while a name is removed or replaced: a reopen must reach the same file, never one that
    /// took its name.
    namespace: tokio::sync::RwLock<()>,
    /// Hidden names whose file's last descriptor closed while the server could not be told:
    /// removed after the next reconnection.
    hidden_to_remove: Mutex<Vec<Vec<u8>>>,
    /// The mount is going down: writes are refused from now on.
    shutting_down: std::sync::atomic::AtomicBool,
    config: CoreConfig,
}

impl Core {
    /// `first`: the connection's generation at mount time, for what the server offers.
    pub fn new(remote: Arc<Remote>, first: &Generation, root: Bytes, config: CoreConfig) -> Self {
        Core {
            features: first.meta().features().clone(),
            files_on: (0..remote.settings().sftp_channels)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            remote,
            budget: ByteBudget::new(config.write_buffer_total),
            read_budget: ByteBudget::new(MAX_PREFETCH_TOTAL),
            inodes: Mutex::new(InodeTable::new(root.clone())),
            root,
            files: Default::default(),
            dirs: Mutex::default(),
            cache: MetaCache::new(config.cache),
            small_files: Default::default(),
            dir_prefetch: Mutex::default(),
            listings_in_flight: Mutex::default(),
            namespace: tokio::sync::RwLock::new(()),
            hidden_to_remove: Mutex::default(),
            shutting_down: Default::default(),
            config,
        }
    }

    /// The connection's state, for `sftpmount status`.
    pub fn link_state(&self) -> crate::remote::LinkState {
        self.remote.link_state()
    }

    /// What `sftpmount status` reports of the files: see [`FilesStatus`].
    pub fn files_status(&self) -> FilesStatus {
        let files = self.files.all();
        let mut status = FilesStatus {
            open_files: files.len() + self.small_files.open_count(),
            unacked_bytes: (self.config.write_buffer_total - self.budget.available()) as u64,
            ..Default::default()
        };
        for file in &files {
            let failures = file.inode_writes.failures();
            if failures
                > file
                    .failures_seen
                    .load(std::sync::atomic::Ordering::Acquire)
            {
                status.files_with_errors += 1;
            }
            if let Some(writer) = &file.writer {
                status.lost_bytes += writer.lost_bytes();
            }
        }
        status
    }

    /// Runs a request that may be sent twice (it only reads) on the metadata channel; one lost
    /// with its connection is sent again on the next connection, once.
    async fn idempotent<T, F, Fut>(&self, request: F) -> FsResult<T>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<T, SftpError>>,
    {
        match request(self.meta().await?).await {
            Err(SftpError::ConnectionLost) => request(self.meta().await?).await.map_err(errno),
            other => other.map_err(errno),
        }
    }

    /// The metadata channel of the connection now (waiting for a lost one a bounded time).
    async fn meta(&self) -> FsResult<Arc<Session>> {
        match self.remote.current().await {
            Ok(generation) => Ok(generation.meta().clone()),
            Err(_) => Err(libc::EIO),
        }
    }

    fn path(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.inodes.lock().unwrap().path(ino).ok_or(libc::ESTALE)
    }

    fn child_path(&self, parent: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if name.contains(&b'/') {
            return Err(libc::EINVAL);
        }
        // OpenSSH answers a name over the limit with BAD_MESSAGE (EINVAL): every operation,
        // lookup included, says what a local filesystem says.
        if name.len() > self.config.name_max {
            return Err(libc::ENAMETOOLONG);
        }
        self.inodes
            .lock()
            .unwrap()
            .child_path(parent, name)
            .ok_or(libc::ESTALE)
    }

    /// `ino`'s write state if it has one: none means nothing of it is in flight.
    fn inode_writes(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.inodes.lock().unwrap().writes(ino)
    }

    /// `ino`'s write state, made if it has none (an open, a truncate); `None`: a forgotten
    /// inode.
    fn inode_writes_or_new(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.inodes.lock().unwrap().writes_or_new(ino)
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

    /// The contents or attributes of `ino` changed through the mount.
    fn changed_attrs(&self, ino: u64) {
        if let Some(path) = self.linked_path(ino) {
            self.cache.invalidate_attrs(&path);
        }
        self.changed_other_names(ino);
    }

    /// What the cache holds under `ino`'s other names (hard links made through the mount) is
    /// older than a change made through one of them.
    fn changed_other_names(&self, ino: u64) {
        let aliases = self.inodes.lock().unwrap().alias_paths(ino);
        for path in aliases {
            self.cache.invalidate_attrs(&path);
        }
    }

    pub async fn statfs(&self) -> FsResult<StatVfs> {
        let root = &self.root;
        match self
            .idempotent(|s| async move {
                match s.statvfs(root).await {
                    Err(e) if e.status() == Some(StatusCode::OP_UNSUPPORTED) => Ok(None),
                    other => other.map(Some),
                }
            })
            .await
        {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Ok(StatVfs {
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
            Err(e) => Err(e),
        }
    }
}
