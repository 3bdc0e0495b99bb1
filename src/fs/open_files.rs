//! The core's open-files part: the descriptor table (files with a server handle, by the number
//! the kernel knows each by), descriptor numbers (directories and files served from memory
//! draw theirs here too, so that no two descriptors share one), the descriptors served from
//! memory, the channel each file is opened on, the byte budgets of every file's writes and
//! read-ahead, and what an open file is: its handles, write pipeline, read-ahead and identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::handle::{FileHandle, ServerHandle, SftpLane, SftpSource};
use super::read::Prefetcher;
use super::small_files::SmallFiles;
use super::write::{InodeWrites, WriteLimits, WritePipeline};
use super::{ByteBudget, FilesStatus};
use crate::sftp::Session;
use crate::sftp::proto::Attrs;

/// Small files open there at once, at most: the rest go to the data channels, so that a program
/// holding thousands open neither fills one session's handle table nor crowds out lookups.
const SMALL_FILES_ON_METADATA_CHANNEL: usize = 32;

/// OpenSSH's sshd grants each session channel a 2 MiB window (CHAN_SES_WINDOW_DEFAULT).
const LANE_TARGET: usize = 2 * 1024 * 1024;

/// Read-ahead per open file, at most (a far link needs rate x round trip: 250 MB/s x 40 ms).
const MAX_PREFETCH: usize = 32 * 1024 * 1024;

/// A handle on another channel: which channel, and the handle.
type LaneHandle = (Arc<Session>, Bytes);

pub(super) struct OpenFile {
    pub(super) ino: u64,
    /// The server's handle, swapped for a new one when the connection is.
    pub(super) handle: Arc<FileHandle>,
    /// The channel (by index) the file was opened on, where it is counted in [`OpenFiles`].
    pub(super) channel: usize,
    /// The open(2) flags: a reopen uses them, less O_CREAT, O_EXCL and O_TRUNC.
    pub(super) flags: i32,
    /// What the mount knows of the file: attributes seen at the open, and at its own changes
    /// since, to know the file again at a reopen (see [`same_file`]).
    pub(super) identity: Mutex<Option<Attrs>>,
    pub(super) writer: Option<Arc<WritePipeline>>,
    /// Read-ahead for sequential readers; none for write-only opens.
    pub(super) prefetch: Option<Prefetcher>,
    pub(super) inode_writes: Arc<InodeWrites>,
    /// Handles on the other channels, opened once the file proved large: closed on release,
    /// which leaves `None` so that a handle opened after it is closed at once, not leaked.
    pub(super) lane_handles: Mutex<Option<Vec<LaneHandle>>>,
    pub(super) spreading: std::sync::atomic::AtomicBool,
    /// The inode's write failures this descriptor has reported (fsync reports each once).
    pub(super) failures_seen: AtomicU64,
    /// The process that opened it: its attribute changes may be reported at its close.
    pub(super) opener: u32,
    /// A close (flush) came after the last write: the program may be done with the file, so a
    /// change of its attributes is no longer one its close can report.
    pub(super) flushed: std::sync::atomic::AtomicBool,
    /// What this descriptor wrote, while that is all of a small file it created or truncated:
    /// kept as the file's contents at close (git writes its config, then reads it back). With
    /// the inode's contents generation it expects: anything else that changed the file (another
    /// descriptor's write, a truncate) moves it past that.
    pub(super) written: Mutex<Option<(bytes::BytesMut, u64)>>,
    /// Held while the file is reopened: a file its registrar reopens may be in a pass too.
    pub(super) reopening: tokio::sync::Mutex<()>,
    /// A change of the file's mode, owner or times on its way: until its answer, a reopen
    /// takes either the old or the new values for the file's (a cut may lose the answer of a
    /// change the server made).
    pub(super) announced: Mutex<Option<Attrs>>,
}

impl OpenFile {
    /// The sizes the server's file may have now, from what the mount did to it.
    pub(super) fn size_bounds(&self) -> (u64, u64) {
        let known = self.identity.lock().unwrap().as_ref().and_then(|a| a.size);
        self.inode_writes.size_bounds(known.unwrap_or(0))
    }

    /// This descriptor changed the file's mode, owner or times (a step of the inode's
    /// generation taken at `before`), not its contents: what it wrote is still all of them.
    pub(super) fn contents_unchanged_since(&self, before: u64) {
        if let Some((_, expected)) = self.written.lock().unwrap().as_mut()
            && *expected == before
        {
            *expected += 1;
        }
    }
}

/// Whether `now`, the attributes of what a reopen found under the file's path, can be the file
/// `file` had open. SFTP v3 has no file identity; what it does give must all agree with what
/// the mount knew of the file (`identity`: kept up to date by the mount's own changes): the
/// same type, permissions and owner, for a reader a modification time no older, and a size that what the
/// mount did explains (at least what it set and what was acked; for a writer, at most what it
/// set, had or sent, as the server may or may not have applied the WRITEs in flight). A file
/// put in its place with the same owner and mode, a newer mtime and a size in those bounds is
/// taken for it: the window that remains. `asked`: the size bounds when `now` was asked for; a
/// truncate confirmed since moved them, and the server's answer may be from either side of it.
pub(super) fn same_file(file: &OpenFile, now: &Attrs, asked: (u64, u64)) -> Result<(), String> {
    let Some(known) = file.identity.lock().unwrap().clone() else {
        return Err("nothing is known of the file it had open".into());
    };
    let kind = |a: &Attrs| a.permissions.map(|m| m & libc::S_IFMT);
    if kind(&known) != kind(now) {
        return Err("it is another kind of file now".into());
    }
    let announced = file.announced.lock().unwrap().clone().unwrap_or_default();
    let bits = |mode: Option<u32>| mode.map(|m| m & 0o7777);
    if known.permissions != now.permissions
        && (announced.permissions.is_none() || bits(announced.permissions) != bits(now.permissions))
    {
        return Err(format!(
            "its mode is {:o}, not {:o}",
            now.permissions.unwrap_or(0) & 0o7777,
            known.permissions.unwrap_or(0) & 0o7777
        ));
    }
    if known.uid_gid.is_some()
        && known.uid_gid != now.uid_gid
        && (announced.uid_gid.is_none() || announced.uid_gid != now.uid_gid)
    {
        return Err("it has another owner".into());
    }
    // A reader's: for a writer, what the mount itself did bounds its size more closely, and
    // the mtimes its own writes and changes left are not all known to it.
    let mtime = |a: &Attrs| a.atime_mtime.map(|t| t.1);
    if file.writer.is_none()
        && let (Some(then), Some(now)) = (mtime(&known), mtime(now))
        && now < then
        && mtime(&announced) != Some(now)
    {
        return Err(format!("it was modified at {now}, before the {then} seen"));
    }
    let size = now.size.unwrap_or(0);
    let bounds = file.inode_writes.size_bounds(known.size.unwrap_or(0));
    let (least, most) = (bounds.0.min(asked.0), bounds.1.max(asked.1));
    if size < least {
        return Err(format!(
            "it holds {size} bytes, fewer than the {least} it had"
        ));
    }
    if file.writer.is_some() && size > most {
        return Err(format!(
            "it holds {size} bytes, more than it could have ({most})"
        ));
    }
    Ok(())
}

/// A change of attributes the mount is about to send, announced to the files open on its
/// inode: until it is confirmed, a reopen takes the old or the new values. Withdrawn when
/// dropped unconfirmed (the change failed, or was given up on the way), so that no early
/// return leaves the identity check loose.
pub(super) struct Announced {
    files: Vec<Arc<OpenFile>>,
}

impl Announced {
    pub(super) fn new(files: Vec<Arc<OpenFile>>, change: &Attrs) -> Announced {
        for file in &files {
            *file.announced.lock().unwrap() = Some(change.clone());
        }
        Announced { files }
    }

    /// The server made the change: the files know the new values from now on.
    pub(super) fn confirm(mut self, change: &Attrs) {
        known_changed(&std::mem::take(&mut self.files), change);
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        for file in &self.files {
            *file.announced.lock().unwrap() = None;
        }
    }
}

/// The mount changed the attributes of the file `files` have open (`change`: what it set):
/// they are known by them from now on. The size is not: the writes' bounds know it.
pub(super) fn known_changed(files: &[Arc<OpenFile>], change: &Attrs) {
    for file in files {
        *file.announced.lock().unwrap() = None;
        let mut identity = file.identity.lock().unwrap();
        let Some(known) = identity.as_mut() else {
            continue;
        };
        if let Some(mode) = change.permissions {
            let kind = known.permissions.unwrap_or(0) & libc::S_IFMT;
            known.permissions = Some(kind | (mode & 0o7777));
        }
        if change.uid_gid.is_some() {
            known.uid_gid = change.uid_gid;
        }
        if change.atime_mtime.is_some() {
            known.atime_mtime = change.atime_mtime;
        }
    }
}

/// A file just opened on the server, to be made an open file of.
pub(super) struct NewFile<'a> {
    pub(super) ino: u64,
    pub(super) opened: ServerHandle,
    pub(super) inode_writes: Arc<InodeWrites>,
    /// The open(2) flags.
    pub(super) flags: i32,
    /// Where the file was opened; its own filesystem is the one that may be full (it may be a
    /// mount of its own), so a failed write asks there for the free space.
    pub(super) path: &'a [u8],
    /// What is known of the file (see [`OpenFile::identity`]).
    pub(super) identity: Option<Attrs>,
    /// The process opening it.
    pub(super) opener: u32,
}

/// Read-ahead of all open files together, at most.
const MAX_PREFETCH_TOTAL: usize = 64 * 1024 * 1024;

/// How open files are built: the mount's options and what the server offers.
pub(super) struct FileSettings {
    /// Unacked bytes per open file.
    pub(super) write_buffer: usize,
    /// Unacked bytes of all files together.
    pub(super) write_buffer_total: usize,
    pub(super) short_writes: bool,
    pub(super) readahead: bool,
    pub(super) max_write: usize,
    pub(super) max_read: u32,
    /// The server carries out a channel's requests in order.
    pub(super) in_order: bool,
    /// How long a file's requests wait for a lost connection to come back.
    pub(super) reconnect_wait: Duration,
}

pub(super) struct OpenFiles {
    table: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// The newest connection whose reopening pass took the table (written and read under its
    /// lock): a file registered after that with a handle of an older connection was missed.
    reopen_pass: AtomicU64,
    next_fh: AtomicU64,
    /// Descriptors served from memory, and the read-ahead across a directory's small files.
    pub(super) small: SmallFiles,
    /// Files open on each channel (by index), handles of files read ahead whole included.
    on_channel: Vec<AtomicUsize>,
    write_budget: ByteBudget,
    read_budget: ByteBudget,
    /// The mount is going down: writes are refused from now on.
    closing: AtomicBool,
    settings: FileSettings,
}

impl OpenFiles {
    pub(super) fn new(channels: usize, settings: FileSettings) -> Self {
        OpenFiles {
            table: Mutex::default(),
            reopen_pass: AtomicU64::new(0),
            next_fh: AtomicU64::new(1),
            small: SmallFiles::default(),
            on_channel: (0..channels).map(|_| AtomicUsize::new(0)).collect(),
            write_budget: ByteBudget::new(settings.write_buffer_total),
            read_budget: ByteBudget::new(MAX_PREFETCH_TOTAL),
            closing: AtomicBool::new(false),
            settings,
        }
    }

    /// A descriptor number no other descriptor has.
    pub(super) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The channel for a file about to be opened, of the `available` ones: the one holding the
    /// fewest files, never the metadata channel (0) when there is another: a lookup or a
    /// listing must not wait behind megabytes of a file's WRITEs in that channel's window (`ls
    /// -l` during an upload). The exception is `small`: a file only read and known to be small
    /// is as light as a lookup, and the data channels may hold megabytes of an upload queued
    /// ahead of it. Counted there until [`OpenFiles::closed_on`].
    pub(super) fn channel_for(&self, small: bool, available: usize) -> usize {
        let channels = available.min(self.on_channel.len());
        let load = |i: usize| self.on_channel[i].load(Ordering::Relaxed);
        let channel = if small && load(0) < SMALL_FILES_ON_METADATA_CHANNEL {
            0
        } else {
            (1..channels).min_by_key(|&i| load(i)).unwrap_or(0)
        };
        self.on_channel[channel].fetch_add(1, Ordering::Relaxed);
        channel
    }

    /// A file counted on `channel` by [`OpenFiles::channel_for`] was closed, or not opened.
    pub(super) fn closed_on(&self, channel: usize) {
        self.on_channel[channel].fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a file's writes may spread over more than one channel.
    pub(super) fn several_channels(&self) -> bool {
        self.on_channel.len() > 1
    }

    /// Makes the open file `new` describes; returns its descriptor number, and the file when its
    /// handle's connection was replaced before it was registered: the reopening pass missed it,
    /// the caller reopens it.
    pub(super) fn register(&self, new: NewFile) -> (u64, Option<Arc<OpenFile>>) {
        let (opened, inode_writes, flags) = (new.opened, new.inode_writes, new.flags);
        let settings = &self.settings;
        let (channel, generation) = (opened.channel, opened.generation);
        let handle = FileHandle::new(opened.clone(), settings.reconnect_wait);
        let statvfs_path = Bytes::copy_from_slice(new.path);
        let writer = (flags & libc::O_ACCMODE != libc::O_RDONLY).then(|| {
            WritePipeline::new(
                Arc::new(SftpLane {
                    handle: opened,
                    file: handle.clone(),
                    statvfs_path,
                }),
                WriteLimits {
                    per_file: settings.write_buffer,
                    max_write: settings.max_write,
                    short_writes: settings.short_writes,
                    lane_target: LANE_TARGET,
                    in_order: settings.in_order,
                },
                self.write_budget.clone(),
                inode_writes.clone(),
                flags & libc::O_APPEND != 0,
            )
        });
        let reads = flags & libc::O_ACCMODE != libc::O_WRONLY;
        let prefetch = (reads && settings.readahead).then(|| {
            Prefetcher::new(
                Arc::new(SftpSource {
                    file: handle.clone(),
                }),
                self.read_budget.clone(),
                settings.max_read,
                MAX_PREFETCH,
            )
        });
        let fh = self.new_fh();
        let failures_seen = AtomicU64::new(inode_writes.failures());
        let file = OpenFile {
            ino: new.ino,
            handle,
            channel,
            flags,
            identity: Mutex::new(new.identity),
            writer,
            prefetch,
            inode_writes,
            lane_handles: Mutex::new(Some(Vec::new())),
            spreading: Default::default(),
            flushed: Default::default(),
            opener: new.opener,
            failures_seen,
            written: Mutex::new(None),
            reopening: tokio::sync::Mutex::new(()),
            announced: Mutex::new(None),
        };
        let file = Arc::new(file);
        let mut table = self.table.lock().unwrap();
        table.insert(fh, file.clone());
        let missed = self.reopen_pass.load(Ordering::Relaxed) > generation;
        (fh, missed.then_some(file))
    }

    pub(super) fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.table.lock().unwrap().get(&fh).cloned()
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.table.lock().unwrap().remove(&fh)
    }

    /// Every open file with a server handle, as of now.
    pub(super) fn all(&self) -> Vec<Arc<OpenFile>> {
        self.table.lock().unwrap().values().cloned().collect()
    }

    /// Every open file, to be reopened on connection `generation`; a file registered later
    /// with an older handle is handed to its registrar (see [`OpenFiles::register`]).
    pub(super) fn to_reopen_on(&self, generation: u64) -> Vec<Arc<OpenFile>> {
        let table = self.table.lock().unwrap();
        self.reopen_pass.fetch_max(generation, Ordering::Relaxed);
        table.values().cloned().collect()
    }

    /// The open files of `ino`.
    pub(super) fn of_inode(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        let table = self.table.lock().unwrap();
        table.values().filter(|f| f.ino == ino).cloned().collect()
    }

    /// Whether a descriptor of `ino` is open, one served from memory too.
    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.table.lock().unwrap().values().any(|f| f.ino == ino) || self.small.is_open(ino)
    }

    /// A file of `ino` open for writing and not closed since its last write (its handle may be
    /// closing), if there is one.
    pub(super) fn writing(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let table = self.table.lock().unwrap();
        table
            .values()
            .find(|f| f.ino == ino && f.writer.is_some() && !f.flushed.load(Ordering::Acquire))
            .cloned()
    }

    /// Whether a descriptor of `ino` other than `fh` may write to it.
    pub(super) fn other_writers(&self, ino: u64, fh: u64) -> bool {
        let table = self.table.lock().unwrap();
        table
            .iter()
            .any(|(&other, f)| other != fh && f.ino == ino && f.writer.is_some())
    }

    /// From now on every write is refused (the mount is going down).
    pub(super) fn close_to_writes(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub(super) fn closed_to_writes(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// What `sftpmount status` reports of the files: see [`FilesStatus`].
    pub(super) fn status(&self) -> FilesStatus {
        let files = self.all();
        let unacked = self.settings.write_buffer_total - self.write_budget.available();
        let mut status = FilesStatus {
            open_files: files.len() + self.small.open_count(),
            unacked_bytes: unacked as u64,
            ..Default::default()
        };
        for file in &files {
            if file.inode_writes.failures() > file.failures_seen.load(Ordering::Acquire) {
                status.files_with_errors += 1;
            }
            if let Some(writer) = &file.writer {
                status.lost_bytes += writer.lost_bytes();
            }
        }
        status
    }
}
