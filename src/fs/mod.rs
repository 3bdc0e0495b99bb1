//! The filesystem core: POSIX operations on inodes and open files, carried out with SFTP
//! requests. It knows nothing of the kernel protocol (the `fuse` adapter does that). The
//! [`Core`] is a handful of parts, each owning its state behind its own locks: the inodes
//! (`inode`: names, paths only while a name reaches a file, what the kernel was shown, each
//! inode's write state, and the lock names change under), the open files (`open_files`:
//! descriptors, their handles, write pipelines (`write`) and read-ahead (`read`), files served
//! from memory (`small_files`)), the directories (`dir`: open listings, listings in flight and
//! fetched ahead) and the metadata cache (`cache`). The operations that use several parts are
//! `impl Core` blocks by concern: `attr` (getattr, setattr), `namespace` (names), `open_file`
//! (opens, reads, writes, barriers, reopening after a reconnection, shutdown), `dir` (readdir)
//! and `small_files` (opens answered from memory).

mod attr;
pub mod cache;
mod copy;
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
pub use open_file::Loss;

use std::sync::Arc;

use bytes::Bytes;
use fuser::FileAttr;

use crate::remote::{Generation, Remote};
use crate::sftp::proto::Attrs;
use crate::sftp::{ServerFeatures, Session, SftpError, StatVfs, StatusCode};
use cache::{CacheConfig, MetaCache};
use dir::Directories;
use inode::Inodes;
use open_files::{FileSettings, OpenFiles};

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

/// An open file, as the kernel is told about it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep the pages it cached for this file: it did not change.
    pub keep_cache: bool,
    /// The kernel was shown another size or mtime than the file has now (it changed on the
    /// server within the attribute timeout): it must forget them before it reads, or it reads
    /// no further than the old size.
    pub shown_stale: bool,
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
    root: Bytes,
    inodes: Inodes,
    files: OpenFiles,
    dirs: Directories,
    /// What the server's files and directories were seen to be, and their contents read ahead.
    cache: MetaCache,
    config: CoreConfig,
}

impl Core {
    /// `first`: the connection's generation at mount time, for what the server offers.
    pub fn new(remote: Arc<Remote>, first: &Generation, root: Bytes, config: CoreConfig) -> Self {
        Core {
            features: first.meta().features().clone(),
            files: OpenFiles::new(
                remote.settings().sftp_channels,
                FileSettings {
                    write_buffer: config.write_buffer,
                    write_buffer_total: config.write_buffer_total,
                    short_writes: config.short_writes,
                    readahead: config.readahead,
                    max_write: first.meta().features().max_write as usize,
                    max_read: first.meta().features().max_read,
                    in_order: first.meta().features().in_order,
                    reconnect_wait: remote.settings().reconnect_wait,
                },
            ),
            remote,
            inodes: Inodes::new(root.clone(), config.name_max),
            root,
            dirs: Directories::default(),
            cache: MetaCache::new(config.cache),
            config,
        }
    }

    /// The connection's state, for `sftpmount status`.
    pub fn link_state(&self) -> crate::remote::LinkState {
        self.remote.link_state()
    }

    /// What `sftpmount status` reports of the files: see [`FilesStatus`].
    pub fn files_status(&self) -> FilesStatus {
        self.files.status()
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

    /// A change (by path, on the metadata channel) whose answer was lost with its connection:
    /// the server may or may not have made it. It is sent once more on the next connection,
    /// and an error that says it was already made (`made_before`: a REMOVE's NO_SUCH_FILE)
    /// counts as done: the caller holds the names lock, so no change of the mount's own
    /// explains that answer; another client's change of that name at that moment can, and is
    /// taken as the one asked for (README, "Survives a lost connection"). Any other result of
    /// `first` stands.
    async fn change_once<F, Fut, M, MFut>(
        &self,
        first: Result<(), SftpError>,
        send: F,
        made_before: M,
    ) -> Result<(), SftpError>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<(), SftpError>>,
        M: FnOnce(Arc<Session>, SftpError) -> MFut,
        MFut: std::future::Future<Output = bool>,
    {
        if !matches!(first, Err(SftpError::ConnectionLost)) {
            return first;
        }
        let Ok(session) = self.meta().await else {
            return first;
        };
        match send(session.clone()).await {
            Err(e) if made_before(session, e.clone()).await => Ok(()),
            other => other,
        }
    }

    /// The metadata channel of the connection now (waiting for a lost one a bounded time).
    async fn meta(&self) -> FsResult<Arc<Session>> {
        match self.remote.current().await {
            Ok(generation) => Ok(generation.meta().clone()),
            Err(_) => Err(libc::EIO),
        }
    }

    /// `path` was created, changed, renamed or removed through the mount: what the cache knew
    /// of it and of its directory is gone. Called once the server has answered, so that no
    /// listing or stat fetched before the change is stored after it.
    fn changed_path(&self, path: &[u8]) {
        self.cache.invalidate(path);
    }

    /// The contents or attributes of `ino` changed through the mount.
    fn changed_attrs(&self, ino: u64) {
        if let Some(path) = self.inodes.linked_path(ino) {
            self.cache.invalidate_attrs(&path);
        }
        self.changed_other_names(ino);
    }

    /// What the cache holds under `ino`'s other names (hard links made through the mount) is
    /// older than a change made through one of them.
    fn changed_other_names(&self, ino: u64) {
        let aliases = self.inodes.table().alias_paths(ino);
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
