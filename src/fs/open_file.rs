//! Open files: OPEN and CREATE (on which channel), the handles of one open file on every
//! channel it writes through, reads (read-ahead or direct, short replies read on), writes into
//! the write pipeline, the barriers (flush, fsync, release) and the shutdown that settles them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{debug, error, warn};

use super::cache::{Contents, Known, Ticket};
use super::handle::{ServerHandle, SftpLane, SftpSource};
use super::namespace::CreateMode;
use super::open_files::{NewFile, OpenFile, same_file};
use super::read;
use super::small_files::SMALL_FILE;
use super::write::WritePipeline;
use super::{Core, Entry, Errno, FsResult, Opened, errno};
use crate::remote::Generation;
use crate::sftp::client::Reply;
use crate::sftp::proto::{Attrs, open_flags};
use crate::sftp::{SftpError, StatusCode};

/// A file gets lanes on the other channels once this much was written to it: a small file is
/// done before a second handle would pay for its open and close.
const SPREAD_AFTER_BYTES: u64 = 2 * 1024 * 1024;

/// Why a reopen after a reconnection installed no handle.
enum NotReopened {
    /// That connection was lost too: the next one reopens the file.
    Lost,
    /// The path does not reach the file it had open, or the server refused: why.
    Refused(String),
}

impl From<SftpError> for NotReopened {
    fn from(e: SftpError) -> Self {
        match e {
            SftpError::ConnectionLost => NotReopened::Lost,
            other => NotReopened::Refused(other.to_string()),
        }
    }
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

impl Core {
    pub(super) fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(libc::EBADF)
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

    fn register_open(
        &self,
        ino: u64,
        opened: ServerHandle,
        flags: i32,
        path: &[u8],
        identity: Option<Attrs>,
        opener: u32,
    ) -> FsResult<(u64, Option<Arc<OpenFile>>)> {
        let Some(inode_writes) = self.inodes.writes_or_new(ino) else {
            opened.session.close_unawaited(opened.handle);
            self.files.closed_on(opened.channel);
            return Err(libc::ESTALE);
        };
        Ok(self.files.register(NewFile {
            ino,
            opened,
            inode_writes,
            flags,
            path,
            identity,
            opener,
        }))
    }

    /// What the core does in the background for the mount's life: reopening open files after
    /// a reconnection, reading again listings that lookups found due, and fetching ahead the
    /// listings below stat bursts.
    pub async fn background_work(self: Arc<Self>) {
        tokio::join!(
            self.clone().follow_reconnections(),
            self.clone().settle_checked_listings(),
            self.clone().prefetch_below_bursts()
        );
    }

    /// Keeps open files working across reconnections: each time the connection is replaced,
    /// every open file is reopened on the new one (see [`Core::reopen`]). Runs for the mount's
    /// life.
    async fn follow_reconnections(self: Arc<Self>) {
        let mut seen = self.remote.current_now().map_or(1, |g| g.id);
        while let Some(generation) = self.remote.after(seen).await {
            seen = generation.id;
            let files = self.files.to_reopen_on(generation.id);
            let mut reopening = tokio::task::JoinSet::new();
            for file in files {
                let (core, generation) = (self.clone(), generation.clone());
                reopening.spawn(async move { core.reopen(&file, &generation).await });
            }
            let outcomes = reopening.join_all().await;
            for hidden in self.inodes.take_hidden_to_remove() {
                if !self.remove_hidden_path(&hidden).await {
                    self.inodes.remove_later(hidden);
                }
            }
            // Those left for the next connection (this one went too) are not counted.
            let outcomes: Vec<bool> = outcomes.into_iter().flatten().collect();
            let failed = outcomes.iter().filter(|reopened| !**reopened).count();
            if !outcomes.is_empty() {
                warn!(
                    "reopened {} of {} open files on the new connection",
                    outcomes.len() - failed,
                    outcomes.len()
                );
            }
        }
    }

    /// A file opened on a connection lost before it was registered, which that connection's
    /// reopening pass did not see: reopened here, on the connection now (or left to the next
    /// pass when that goes too). Called without the names lock, which reopening takes.
    async fn reopen_missed(&self, missed: Option<Arc<OpenFile>>) {
        let Some(file) = missed else { return };
        if let Ok(generation) = self.remote.current().await
            && self.reopen(&file, &generation).await == Some(false)
        {
            debug!("a file opened as its connection was lost could not be reopened");
        }
    }

    /// Reopens `file` on `generation` and installs the new handle, so that its lost READs are
    /// asked again and its lost WRITEs sent again there. Only the same file is reopened: by its
    /// path (it was not unlinked), with its flags less O_CREAT, O_EXCL and O_TRUNC, of the same
    /// type, and of a size that what the mount sent explains (at least what was acked, at most
    /// what was in flight). Otherwise its descriptor fails with EIO from now on, and nothing is
    /// written into whatever now has its name. Returns whether it was reopened; `None` when
    /// that connection went too (the next one reopens it).
    async fn reopen(&self, file: &OpenFile, generation: &Generation) -> Option<bool> {
        let _reopening = file.reopening.lock().await;
        let Ok(old) = file.handle.now() else {
            return Some(true);
        };
        if old.generation >= generation.id {
            return Some(true);
        }
        match self.reopened(file, generation).await {
            Ok(handle) => {
                // New chunks go to the new handle, and the file may spread again.
                if let Some(writer) = &file.writer {
                    let path = self.inodes.path(file.ino).unwrap_or_default();
                    writer.add_lane(Arc::new(SftpLane {
                        handle: handle.clone(),
                        file: file.handle.clone(),
                        statvfs_path: Bytes::from(path),
                    }));
                    file.spreading.store(false, Ordering::Relaxed);
                }
                file.handle.replace(Ok(handle));
                Some(true)
            }
            // That connection went too: the next one reopens the file (its old handle is
            // older than that one's generation).
            Err(NotReopened::Lost) => None,
            Err(NotReopened::Refused(why)) => {
                let path = self.inodes.table().path(file.ino);
                let path = path.map(|p| String::from_utf8_lossy(&p).into_owned());
                warn!(
                    "{} cannot be reopened after the reconnection ({why}): its descriptor fails with EIO",
                    path.as_deref().unwrap_or("a removed file")
                );
                file.handle.replace(Err(libc::EIO));
                Some(false)
            }
        }
    }

    async fn reopened(
        &self,
        file: &OpenFile,
        generation: &Generation,
    ) -> Result<ServerHandle, NotReopened> {
        let refused = |why: &str| NotReopened::Refused(why.to_string());
        // The path must name this file until the new handle is checked.
        let _names = self.inodes.names_kept().await;
        let path = self
            .inodes
            .path(file.ino)
            .map_err(|_| refused("no name reaches it any more"))?;
        if file.flags & libc::O_APPEND != 0 && file.inode_writes.pending() {
            // Where the server appended them, if it did, is unknown: never sent twice.
            return Err(refused("appends were in flight"));
        }
        let flags = file.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        let channel = file.channel.min(generation.channels.len() - 1);
        let session = generation.channels[channel].clone();
        let asked = file.size_bounds();
        let handle = session
            .open(&path, Self::sftp_open_flags(flags), Attrs::default())
            .await
            .map_err(NotReopened::from)?;
        let same = match session.fstat(handle.clone()).await {
            Ok(attrs) => same_file(file, &attrs, asked)
                .map(|()| attrs)
                .map_err(NotReopened::Refused),
            Err(e) => Err(NotReopened::from(e)),
        };
        match same {
            Ok(attrs) => *file.identity.lock().unwrap() = Some(attrs),
            Err(why) => {
                session.close_unawaited(handle);
                return Err(why);
            }
        }
        Ok(ServerHandle {
            generation: generation.id,
            channel,
            session,
            handle,
        })
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
    /// replaced on the server by someone else is caught by the new handle's attributes, as a
    /// reopen's are ([`same_file`]): not by asking the file's own handle for them, which waits
    /// behind the writes that fill its channel's window (1.5 s at 300 ms).
    async fn open_lanes(&self, file: &Arc<OpenFile>, writer: &Arc<WritePipeline>) {
        let _names = self.inodes.names_kept().await;
        let Ok(path) = self.inodes.path(file.ino) else {
            return;
        };
        // Only over the connection the file's handle is on.
        let Some(generation) = self.remote.current_now() else {
            return;
        };
        let Ok(own) = file.handle.now() else {
            return;
        };
        if own.generation != generation.id {
            return;
        }
        let path = Bytes::from(path);
        let mut opening = tokio::task::JoinSet::new();
        let others = generation.channels.iter().enumerate();
        // Not on the metadata channel either (see `open_handle`).
        for (index, channel) in others.filter(|(index, _)| *index != own.channel && *index != 0) {
            let channel = channel.clone();
            let generation = generation.id;
            let (file, writer) = (file.clone(), writer.clone());
            let path = path.clone();
            opening.spawn(async move {
                let Ok(handle) = channel
                    .open(&path, open_flags::WRITE, Attrs::default())
                    .await
                else {
                    return;
                };
                let asked = file.size_bounds();
                let same = match channel.fstat(handle.clone()).await {
                    Ok(now) => same_file(&file, &now, asked),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(why) = same {
                    warn!("not spreading writes: the file's name now reaches another file ({why})");
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
                    handle: ServerHandle {
                        generation,
                        channel: index,
                        session: channel,
                        handle,
                    },
                    file: file.handle.clone(),
                    statvfs_path: path,
                }));
            });
        }
        opening.join_all().await;
    }

    /// Closes the file's handles on every channel.
    async fn close_handles(&self, file: &OpenFile) -> FsResult<()> {
        // `None`: closed already (a release after the shutdown closed everything); a handle
        // closed twice could be another file's by then.
        let Some(lanes) = file.lane_handles.lock().unwrap().take() else {
            return Ok(());
        };
        // All at once: the server frees an unlinked file's space only once every handle is
        // closed, and the kernel does not wait for a release.
        let mut closing = tokio::task::JoinSet::new();
        for (channel, handle) in lanes {
            closing.spawn(async move { channel.close(handle).await });
        }
        // A handle whose connection is gone went with it, one whose CLOSE a cut took too (its
        // writes were settled before).
        let closed = match file.handle.now() {
            Ok(own) if !own.session.is_closed() => match own.session.close(own.handle).await {
                Err(SftpError::ConnectionLost) => Ok(()),
                other => other,
            },
            _ => Ok(()),
        };
        // The descriptor is closed: no reopen may install a handle for it any more.
        file.handle.replace(Err(libc::EBADF));
        self.files.closed_on(file.channel);
        closing.join_all().await;
        closed.map_err(errno)
    }

    /// OPENs `path` on the channel holding the fewest files, never on the metadata channel when
    /// there is another: a lookup or a listing must not wait behind megabytes of a file's
    /// WRITEs in that channel's window (`ls -l` during an upload). The exception is `small`: a
    /// file only read and known to be small is as light as a lookup, and the data channels may
    /// hold megabytes of an upload queued ahead of it (`cat` of a small file during an upload
    /// waited a round trip or two more there). Servers also cap the handles of one session
    /// (Green End's at 128). Counted there until [`Core::close_handles`]. With
    /// `stat_after` (the directory holding `path`), on a server that runs a channel in order, a
    /// STAT of `path` (following a symlink, as the OPEN did) and an LSTAT of the directory go
    /// right behind the OPEN: the attributes as the OPEN left them, with no round trip of their
    /// own.
    /// The outer error: no connection to open it on.
    pub(super) async fn open_handle(
        &self,
        path: &[u8],
        pflags: u32,
        attrs: Attrs,
        stat_after: Option<&[u8]>,
        small: bool,
    ) -> FsResult<(
        Result<ServerHandle, SftpError>,
        Option<Reply<Attrs>>,
        Option<Reply<Attrs>>,
    )> {
        let generation = self.remote.current().await.map_err(|_| libc::EIO)?;
        let channel = self.files.channel_for(small, generation.channels.len());
        let session = generation.channels[channel].clone();
        let opened = session.open(path, pflags, attrs);
        let (after, dir_after) = match stat_after {
            Some(dir) if self.features.in_order => {
                (Some(session.stat(path)), Some(session.lstat(dir)))
            }
            _ => (None, None),
        };
        let opened = match opened.await {
            Ok(handle) => Ok(ServerHandle {
                generation: generation.id,
                channel,
                session,
                handle,
            }),
            Err(e) => {
                self.files.closed_on(channel);
                Err(e)
            }
        };
        Ok((opened, after, dir_after))
    }

    /// `caller`: the process opening it.
    pub async fn open(self: &Arc<Self>, ino: u64, flags: i32, caller: u32) -> FsResult<Opened> {
        let (path, linked) = self.inodes.path_and_linked(ino)?;
        let pflags = Self::sftp_open_flags(flags & !(libc::O_CREAT | libc::O_EXCL));
        let truncating = pflags & open_flags::TRUNC != 0;
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY && !truncating;
        if read_only
            && linked
            && let Some(opened) = self.open_from_contents(ino, &path).await
        {
            return Ok(opened);
        }
        if truncating && let Some(w) = self.inodes.writes(ino) {
            w.settle().await;
        }
        // Until the handle is registered, a rename or unlink through the mount waits: the path
        // names this inode's file when the OPEN reaches the server.
        let _names = self.inodes.names_kept().await;
        let (path, linked) = self.inodes.path_and_linked(ino)?;
        // The attributes that decide whether the kernel's cached pages are still the file's
        // travel alongside the OPEN, so they cost no round trip of their own.
        let stat = async {
            if linked && !truncating {
                self.stat_for_open(ino, &path).await.ok()
            } else {
                None
            }
        };
        let small = read_only
            && self
                .inodes
                .table()
                .shown(ino)
                .and_then(|a| a.size)
                .is_some_and(|size| size <= SMALL_FILE);
        let (handle, attrs) = tokio::join!(
            self.open_handle(&path, pflags, Attrs::default(), None, small),
            stat
        );
        if truncating {
            self.changed_attrs(ino);
        }
        // An OPEN of an existing file may be sent twice (O_TRUNC too: nothing was written
        // through it yet): one lost with its connection is sent again on the next.
        let handle = match handle?.0 {
            Err(SftpError::ConnectionLost) => {
                let again = self.open_handle(&path, pflags, Attrs::default(), None, small);
                again.await?.0
            }
            other => other,
        };
        let handle = handle.map_err(errno)?;
        let keep_cache = self.keep_cache(ino, attrs.as_ref());
        let shown_stale = attrs.as_ref().is_some_and(|a| self.shown_stale(ino, a));
        if let Some(w) = self.inodes.writes_or_new(ino) {
            if !self.files.is_open(ino) {
                w.forget_size();
            }
            if truncating {
                w.truncated_to(0);
            }
        }
        // The kernel reads nothing of a small file whose pages it keeps: fetched behind the
        // open, to be kept as a read would be.
        let pages_kept = (keep_cache && small && linked && self.keeps_contents())
            .then(|| attrs.clone())
            .flatten();
        // Not asked when truncating: the type, mode and owner the kernel was shown will do.
        let identity = attrs.or_else(|| self.inodes.table().shown(ino));
        let (fh, missed) = self.register_open(ino, handle, flags, &path, identity, caller)?;
        if let Some(attrs) = pages_kept {
            self.keep_contents_behind(fh, &path, attrs);
        }
        drop(_names);
        self.reopen_missed(missed).await;
        if truncating {
            self.capture_writes(fh);
        }
        if small && linked {
            self.read_ahead_after(&path);
        }
        Ok(Opened {
            fh,
            keep_cache,
            shown_stale,
        })
    }

    /// mknod(2): a regular file is made (and closed) as an exclusive create would; SFTP has
    /// no FIFOs, sockets or devices: EPERM, as sshfs and filesystems without them answer (rsync
    /// reports it and goes on; ENOSYS would read as a broken mount).
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: CreateMode,
        caller: u32,
    ) -> FsResult<Entry> {
        if mode.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(libc::EPERM);
        }
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
        let (entry, fh) = self.create(parent, name, mode, flags, caller).await?;
        self.release(fh).await?;
        Ok(entry)
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: CreateMode,
        flags: i32,
        caller: u32,
    ) -> FsResult<(Entry, u64)> {
        let _names = self.inodes.names_kept().await;
        let path = self.inodes.child_path(parent, name)?;
        let attrs = Attrs {
            permissions: Some(mode.mode & !mode.umask & 0o7777),
            ..Default::default()
        };
        // The kernel creates only a name it believes missing: asked exclusively, so that a
        // file someone made meanwhile is known as such (it keeps its mode and owner) and not
        // taken for one this create made. Only then is it opened as it is (a round trip more).
        let excl = flags & libc::O_EXCL != 0;
        let dir = self.inodes.path(parent)?;
        let ticket = self.cache.ticket();
        let exclusive = Self::sftp_open_flags(flags | libc::O_CREAT | libc::O_EXCL);
        let (mut opened, mut after, mut parent_after) = self
            .open_handle(&path, exclusive, attrs.clone(), Some(&dir), false)
            .await?;
        let mut made_now = true;
        if let Err(e) = opened {
            let found = self.refine_exists(e, &path, after.take()).await;
            if excl || found != libc::EEXIST {
                self.changed_path(&path);
                return Err(found);
            }
            made_now = false;
            let pflags = Self::sftp_open_flags(flags | libc::O_CREAT);
            (opened, after, parent_after) = self
                .open_handle(&path, pflags, attrs, Some(&dir), false)
                .await?;
        }
        let opened = match opened {
            Ok(h) => h,
            Err(e) => {
                self.changed_path(&path);
                return Err(errno(e));
            }
        };
        let attrs = match after {
            Some(after) => after.await,
            None => opened.session.fstat(opened.handle.clone()).await,
        };
        let attrs = match attrs {
            Ok(a) => a,
            Err(e) => {
                self.changed_path(&path);
                let _ = opened.session.close(opened.handle).await;
                self.files.closed_on(opened.channel);
                return Err(errno(e));
            }
        };
        let dir_after = super::namespace::dir_after(ticket, parent_after).await;
        // Only a file this create made: an existing one keeps its owner and mode.
        let attrs = if made_now {
            self.as_created(&opened.session, parent, &path, attrs, &mode, false)
                .await
        } else {
            attrs
        };
        self.cache.created(&path, attrs.clone(), dir_after);
        let ino = self.inodes.table().remember(parent, name, false);
        let (fh, missed) =
            self.register_open(ino, opened, flags, &path, Some(attrs.clone()), caller)?;
        drop(_names);
        self.reopen_missed(missed).await;
        if attrs.size == Some(0) {
            self.capture_writes(fh);
        }
        Ok((
            Entry {
                attr: self.shown(ino, &attrs),
            },
            fh,
        ))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        if let Some(whole) = self.files.small.open_file(fh) {
            return self.read_whole(&whole, offset, size).await;
        }
        let file = self.file(fh)?;
        // A read sees every earlier write through the mount.
        file.inode_writes.settle().await;
        let known_end = self.inodes.table().shown(file.ino).and_then(|a| a.size);
        if let Some(prefetch) = &file.prefetch {
            // What the kernel was shown, or more when the mount's own writes made it longer
            // since (the pack `git index-pack` wrote and reads back).
            let file_size = file.inode_writes.size_at_least(known_end.unwrap_or(0));
            let generation = file.inode_writes.generation();
            let fetched = prefetch.read(offset, size, generation, Some(file_size));
            if let Some(data) = fetched.await {
                return Ok(data);
            }
        }
        let source = SftpSource {
            file: file.handle.clone(),
        };
        let ticket = self.cache.ticket();
        let generation = file.inode_writes.generation();
        let data =
            read::read_range(&source, offset, size, self.features.max_read, known_end).await?;
        // A small file read whole, from its start to the end the server confirmed: kept as
        // one read ahead would be (see `small_files.rs`), so that opening it again (git reads
        // its config a dozen times) costs nothing while it is unchanged.
        if offset == 0
            && self.keeps_contents()
            && data.len() < size as usize
            && data.len() as u64 <= SMALL_FILE
            && file.flags & libc::O_ACCMODE == libc::O_RDONLY
            && file.inode_writes.generation() == generation
            && !file.inode_writes.pending()
            && let Some(path) = self.inodes.linked_path(file.ino)
            && let Some(Known::Attrs(attrs)) = self.cache.name(&path)
            && attrs.size == Some(data.len() as u64)
        {
            let contents = Contents::read_now(attrs, data.clone());
            self.cache.put_contents(ticket, path, contents);
        }
        Ok(data)
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
        if self.files.closed_to_writes() {
            writer.close();
        }
        file.flushed.store(false, Ordering::Release);
        let written = writer.write(offset, data.clone(), whole).await?;
        if self.config.sync_writes {
            writer.settle().await?;
        }
        {
            let mut captured = file.written.lock().unwrap();
            let end = offset + written as u64;
            match captured.as_mut() {
                Some((buf, expected)) if offset == buf.len() as u64 && end <= SMALL_FILE => {
                    buf.extend_from_slice(&data[..written as usize]);
                    // This write's own step of the generation.
                    *expected += 1;
                }
                _ => *captured = None,
            }
        }
        // After the write is pending, so that no stat from before it is stored after it.
        self.changed_attrs(file.ino);
        self.inodes
            .table()
            .set_ctime(file.ino, std::time::SystemTime::now());
        if self.files.several_channels()
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
    pub async fn flush(self: &Arc<Self>, fh: u64) -> FsResult<()> {
        if self.files.small.open_file(fh).is_some() {
            return Ok(());
        }
        let file = self.file(fh)?;
        if file.writer.is_none() {
            return Ok(());
        }
        file.flushed.store(true, Ordering::Release);
        // The attributes the writes leave (the server's new mtime and size), asked right behind
        // them on their channel: a stat after close (git, cp -p, make) needs no round trip.
        let after = match file.handle.now() {
            Ok(own)
                if self.features.in_order
                    && file.inode_writes.pending()
                    && file.inode_writes.all_queued_on(own.ordering_channel()) =>
            {
                Some((self.cache.ticket(), own.session.fstat(own.handle)))
            }
            _ => None,
        };
        self.settle_writes(&file).await?;
        let written = file.written.lock().unwrap().take();
        if let Some((ticket, mut after)) = after {
            // Sent with the writes, it is answered with them. Sent as they were being acked
            // (git's fstat before close takes a round trip of its own, and the writes land
            // meanwhile), it would hold the close a round trip more: kept when it comes.
            let mut now = std::task::Context::from_waker(std::task::Waker::noop());
            match after.as_mut().poll(&mut now) {
                std::task::Poll::Ready(attrs) => {
                    self.keep_flushed(&file, fh, ticket, attrs, written)
                }
                std::task::Poll::Pending => {
                    let core = self.clone();
                    tokio::spawn(async move {
                        let attrs = after.await;
                        core.keep_flushed(&file, fh, ticket, attrs, written);
                    });
                }
            }
        }
        Ok(())
    }

    /// Keeps what a flush learnt: the attributes its writes left, and the contents when all
    /// of the file is what this descriptor wrote, and no other may have written.
    fn keep_flushed(
        &self,
        file: &OpenFile,
        fh: u64,
        ticket: Ticket,
        attrs: Result<Attrs, SftpError>,
        written: Option<(bytes::BytesMut, u64)>,
    ) {
        let Ok(attrs) = attrs else {
            return;
        };
        if file.inode_writes.pending() {
            return;
        }
        let Some(path) = self.inodes.linked_path(file.ino) else {
            return;
        };
        self.cache
            .put_name(ticket, path.clone(), Known::Attrs(attrs.clone()));
        if let Some((data, expected)) = written
            && expected == file.inode_writes.generation()
            && attrs.size == Some(data.len() as u64)
            && self.keeps_contents()
            && !self.files.other_writers(file.ino, fh)
        {
            let contents = Contents::read_now(attrs, data.freeze());
            self.cache.put_contents(ticket, path, contents);
        }
    }

    /// Starts keeping what `fh` writes (see `OpenFile::written`): the file is empty now.
    fn capture_writes(&self, fh: u64) {
        if let Ok(file) = self.file(fh)
            && file.writer.is_some()
            && !self.files.other_writers(file.ino, fh)
        {
            let now = file.inode_writes.generation();
            *file.written.lock().unwrap() = Some((bytes::BytesMut::new(), now));
        }
    }

    /// fsync(2) through any descriptor of the file, a read-only one too (`sync FILE`): every
    /// write of the inode accepted before it, from any descriptor, is acked first; a failure of
    /// any of them since this descriptor was opened is reported, once, as Linux does. Then the
    /// server is asked to fsync (when it can).
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        if let Some(whole) = self.files.small.open_file(fh) {
            return self.fsync_whole(&whole).await;
        }
        let file = self.file(fh)?;
        file.inode_writes.settle().await;
        let own = self.settle_writes(&file).await;
        let any = file.inode_writes.failure_since(&file.failures_seen);
        own?;
        if let Some(e) = any {
            return Err(e);
        }
        // Asked again on the reopened handle if its connection goes meanwhile.
        file.handle
            .idempotent(|own| {
                let (session, handle) = (own.session.clone(), own.handle.clone());
                Box::pin(async move { session.fsync(&handle).await })
            })
            .await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        if let Some(ino) = self.release_whole(fh) {
            self.remove_hidden(ino).await;
            return Ok(());
        }
        let Some(file) = self.files.remove(fh) else {
            return Err(libc::EBADF);
        };
        let settled = self.settle_writes(&file).await;
        if let Some(loss) = self.loss(&file, settled) {
            // The kernel does not pass a release's error on: a page written back from an
            // mmap after the last close may have had no other way to report it.
            error!("{loss}");
        }
        debug!(ino = file.ino, "closing remote handles");
        let closed = self.close_handles(&file).await;
        self.remove_hidden(file.ino).await;
        settled.and(closed)
    }

    /// Waits for every write `file` accepted so far; once one failed, the server's file is cut
    /// to a clean prefix (see [`InodeWrites::prefix_cut`]) before the error is returned.
    async fn settle_writes(&self, file: &OpenFile) -> FsResult<()> {
        let Some(writer) = &file.writer else {
            return Ok(());
        };
        let settled = writer.settle().await;
        if settled.is_ok() {
            return settled;
        }
        file.inode_writes.settle().await;
        let opened = file.identity.lock().unwrap().as_ref().and_then(|a| a.size);
        if let Some(at) = file.inode_writes.prefix_cut(opened.unwrap_or(0)) {
            let cut = Attrs {
                size: Some(at),
                ..Default::default()
            };
            let done = match file.handle.live().await {
                Ok(own) => own.session.fsetstat(own.handle, cut).await.map_err(errno),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => self.changed_attrs(file.ino),
                Err(e) => warn!(
                    "the failed writes leave data beyond byte {at}: cutting it there failed: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            }
        }
        settled
    }

    /// Once the last descriptor of `ino` is closed, the hidden name its file was kept under
    /// (its name was removed or replaced while it was open) goes, and the file with it.
    async fn remove_hidden(&self, ino: u64) {
        if self.inodes.table().hidden_path(ino).is_none() {
            return;
        }
        // Not while an open of it (through /proc/PID/fd) is on its way.
        let _names = self.inodes.names_changing().await;
        self.remove_hidden_if_closed(ino).await;
    }

    /// [`Self::remove_hidden`] with the namespace lock held: also called right after a name
    /// was hidden, in case the last release passed while the REMOVE or RENAME was on its way
    /// (it found no hidden name then).
    pub(super) async fn remove_hidden_if_closed(&self, ino: u64) {
        if self.files.is_open(ino) {
            return;
        }
        let Some(hidden) = self.inodes.take_hidden(ino) else {
            return;
        };
        self.cache.invalidate(&hidden);
        if !self.remove_hidden_path(&hidden).await {
            self.inodes.remove_later(hidden);
        }
    }

    /// Removes a hidden name nothing uses any more; whether it is gone. A REMOVE lost with its
    /// connection may have been carried out: not finding the name then is success.
    async fn remove_hidden_path(&self, hidden: &[u8]) -> bool {
        let removed = self
            .idempotent(|s| async move {
                match s.remove(hidden).await {
                    Err(e) if e.status() == Some(StatusCode::NO_SUCH_FILE) => Ok(()),
                    other => other,
                }
            })
            .await;
        if let Err(e) = removed {
            warn!(
                "{} (a removed file kept for its open descriptors) stays on the server for now: {}",
                String::from_utf8_lossy(hidden),
                std::io::Error::from_raw_os_error(e)
            );
        }
        removed.is_ok()
    }

    /// What of `file`'s writes failed, once they settled with `settled`.
    fn loss(&self, file: &OpenFile, settled: FsResult<()>) -> Option<Loss> {
        let errno = settled.err()?;
        let path = self.inodes.table().path(file.ino);
        Some(Loss {
            path: path.map(|p| String::from_utf8_lossy(&p).into_owned()),
            bytes: file.writer.as_ref().map_or(0, |w| w.lost_bytes()),
            errno,
        })
    }

    /// Before unmounting: refuses every later write (its writer gets EIO), waits until every
    /// write accepted before is acked, closes every remote handle, and returns what could not
    /// be written. A file still open keeps its descriptor; only its later writes fail.
    pub async fn shut_down(&self) -> Vec<Loss> {
        self.files.close_to_writes();
        // Left in the table: a descriptor still open gets EIO for its writes, not EBADF.
        let files = self.files.all();
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
        let hidden = self.inodes.table().hidden();
        if let Ok(meta) = self.meta().await {
            for path in hidden {
                let _ = meta.remove(&path).await;
            }
        }
        losses
    }
}
