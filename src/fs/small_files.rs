//! Read-ahead across a directory's small files. `cat *`, `grep -r`, `tar -c`, `find -exec`
//! and git open one small file after another, and each costs two round trips the program waits
//! for (OPEN, then READ): reading a source tree over a far link is all waiting. Once a program
//! opens a small file of a directory whose listing the mount holds, the next small files of
//! that listing are fetched whole ahead of it, several at once (a window that doubles while
//! the program keeps to the listing's order). A program that strays from the listing's order
//! (git goes by path, a shell glob by name) has the directory read whole ahead of it, in name
//! order from where it is, a bounded window that moves with it; and while such a scan goes on,
//! the next directory it opens a file in is read so from its first open. What is fetched is
//! kept in the metadata cache beside the names; an open of one is answered from memory, with
//! no round trip, and so are its reads.
//!
//! What is served is what the kernel's own page cache would serve: contents read within the
//! attribute timeout, while the name still has the size and mtime they were read under; any
//! change through the mount drops them (the cache's invalidation), and a write through the
//! mount while such a file is open sends its later reads to the server.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::{Semaphore, watch};

use super::cache::{Contents, Known};
use super::handle::{FileHandle, SftpSource};
use super::inode::join;
use super::read::{ReadSource, read_range};
use super::write::InodeWrites;
use super::{Core, FsResult, KeepCache, Opened, errno, is_regular};
use crate::sftp::proto::{Attrs, open_flags};

/// Files read whole by one kernel READ: opened on the metadata channel (see
/// `OpenFiles::channel_for`), and read ahead whole when their directory is read file by file.
pub(super) const SMALL_FILE: u64 = 128 * 1024;

/// A regular file of at most [`SMALL_FILE`] bytes.
fn small(attrs: &Attrs) -> bool {
    is_regular(attrs) && attrs.size.is_some_and(|s| s <= SMALL_FILE)
}

/// Files fetched ahead after the first open in a directory; doubled on each open that keeps to
/// the listing's order, up to `MAX_WINDOW`.
const FIRST_WINDOW: usize = 2;
const MAX_WINDOW: usize = 16;
/// Directories whose reading order is followed at once.
const STREAMS: usize = 64;
/// How far ahead of a program a directory read whole is fetched, in files and in bytes: two
/// round trips' worth of `FETCHES` keeps the pipeline full, and a program that stops early
/// leaves at most this much fetched for nothing.
const WHOLE_AHEAD_FILES: usize = 64;
const WHOLE_AHEAD_BYTES: u64 = 2 << 20;
/// Directories with more small files than this are only read ahead in the listing's order.
const WHOLE_MAX_FILES: usize = 10_000;
/// A directory read whole within this of the last makes a scan, which reads the next
/// directory whole from its first open.
const SCAN_SPAN: Duration = Duration::from_secs(2);
/// Fetches in flight at most for the mount: bounded in requests, and in handles a server may
/// cap per session.
const FETCHES: usize = 32;

/// Where a program reading a directory's small files has got to.
struct Stream {
    /// Position in the listing of the file opened last.
    at: usize,
    window: usize,
    /// Once the program strayed from the listing's order: the directory read whole.
    whole: Option<Whole>,
}

/// A directory's small files in name order, with their sizes, and those asked for already
/// (fetched, or opened by the program).
struct Whole {
    names: Vec<(Bytes, u64)>,
    asked: Vec<bool>,
}

impl Whole {
    fn new(names: Vec<(Bytes, u64)>) -> Self {
        let asked = vec![false; names.len()];
        Whole { names, asked }
    }

    /// The names not yet asked for within the window ahead of `name`, in name order from it
    /// and around: the program may have started anywhere.
    fn ahead_of(&mut self, name: &[u8]) -> Vec<Bytes> {
        let len = self.names.len();
        let start = match self.names.binary_search_by(|(n, _)| n[..].cmp(name)) {
            Ok(at) => {
                self.asked[at] = true;
                at + 1
            }
            Err(at) => at,
        };
        let (mut bytes, mut out) = (0, Vec::new());
        for i in (start..start + len)
            .map(|i| i % len)
            .take(WHOLE_AHEAD_FILES)
        {
            let (next, size) = &self.names[i];
            if next[..] == *name {
                break;
            }
            bytes += size;
            if bytes > WHOLE_AHEAD_BYTES {
                break;
            }
            if !self.asked[i] {
                self.asked[i] = true;
                out.push(next.clone());
            }
        }
        out
    }
}

struct State {
    streams: LruCache<Vec<u8>, Stream>,
    /// When a directory read whole was last opened in: a scan under way.
    scanned_at: Option<Instant>,
    /// Paths being fetched; the value turns true when the fetch ends (stored or not).
    fetching: HashMap<Vec<u8>, watch::Receiver<bool>>,
    /// Descriptors served from memory.
    open: HashMap<u64, Arc<WholeFile>>,
}

impl State {
    /// Registers a fetch of `path`, unless one is under way: the sender that tells those
    /// waiting for it (see [`SmallFiles::fetched`]) that it is over.
    fn fetch_starts(&mut self, path: &[u8]) -> Option<watch::Sender<bool>> {
        if self.fetching.contains_key(path) {
            return None;
        }
        let (done, fetch) = watch::channel(false);
        self.fetching.insert(path.to_vec(), fetch);
        Some(done)
    }
}

pub(super) struct SmallFiles {
    state: Mutex<State>,
    fetches: Arc<Semaphore>,
}

impl Default for SmallFiles {
    fn default() -> Self {
        SmallFiles {
            state: Mutex::new(State {
                streams: LruCache::new(NonZeroUsize::new(STREAMS).expect("non-zero")),
                scanned_at: None,
                fetching: HashMap::new(),
                open: HashMap::new(),
            }),
            fetches: Arc::new(Semaphore::new(FETCHES)),
        }
    }
}

impl SmallFiles {
    /// Descriptors served from memory.
    pub(super) fn open_count(&self) -> usize {
        self.state.lock().unwrap().open.len()
    }

    /// Whether a descriptor of `ino` is served from memory.
    pub(super) fn is_open(&self, ino: u64) -> bool {
        self.state
            .lock()
            .unwrap()
            .open
            .values()
            .any(|f| f.ino == ino)
    }

    pub(super) fn open_file(&self, fh: u64) -> Option<Arc<WholeFile>> {
        self.state.lock().unwrap().open.get(&fh).cloned()
    }

    /// A fetch [`State::fetch_starts`] registered is over, its contents stored or not.
    fn fetch_over(&self, path: &[u8], done: watch::Sender<bool>) {
        self.state.lock().unwrap().fetching.remove(path);
        done.send_replace(true);
    }

    /// Waits for a fetch of `path` under way, if there is one.
    async fn fetched(&self, path: &[u8]) {
        let fetch = self.state.lock().unwrap().fetching.get(path).cloned();
        if let Some(mut done) = fetch {
            let _ = done.wait_for(|&done| done).await;
        }
    }
}

struct BriefHandle {
    source: SftpSource,
    channel: usize,
}

impl BriefHandle {
    /// Not waited for: nothing of what was read depends on it.
    fn close(self, core: &Core) {
        if let Ok(own) = self.source.file.now() {
            own.session.close_unawaited(own.handle);
        }
        core.files.closed_on(self.channel);
    }
}

/// A descriptor of a file read whole ahead: no server handle.
pub(super) struct WholeFile {
    ino: u64,
    data: Bytes,
    writes: Arc<InodeWrites>,
    /// The inode's contents generation at the open: a write through the mount since changes it.
    generation: u64,
    failures_seen: AtomicU64,
}

impl Core {
    /// Opens `ino` (at `path`) for reading from contents read ahead, if there are any that are
    /// still the file's.
    pub(super) async fn open_from_contents(
        self: &Arc<Self>,
        ino: u64,
        path: &[u8],
    ) -> Option<Opened> {
        // A mount that lost its connection answers nothing from memory: it is down, and says
        // so (EIO), until it is back.
        if !self.keeps_contents() || self.remote.current_now().is_none() {
            return None;
        }
        self.files.small.fetched(path).await;
        let writes = self.inodes.writes_or_new(ino)?;
        if writes.pending() {
            return None;
        }
        let kept = self.cache.contents(path)?;
        let Contents { attrs, data, racy } = kept.contents;
        if !kept.recent {
            // Close-to-open: the name's attributes as they are now must still be those the
            // contents were read under, and those must have been old enough to tell.
            let now = self.stat_for_open(ino, path).await.ok()?;
            if racy || now.size_and_mtime() != attrs.size_and_mtime() {
                return None;
            }
        }
        self.cache.contents_used(path);
        let shown_stale = self.shown_stale(ino, &attrs);
        let keep_cache = self.keep_cache(ino, Some(&attrs));
        let fh = self.files.new_fh();
        let file = WholeFile {
            ino,
            data,
            generation: writes.generation(),
            failures_seen: AtomicU64::new(writes.failures()),
            writes,
        };
        self.files
            .small
            .state
            .lock()
            .unwrap()
            .open
            .insert(fh, Arc::new(file));
        self.read_ahead_after(path);
        Some(Opened {
            fh,
            keep_cache,
            shown_stale,
        })
    }

    /// A small file opened with its pages kept by the kernel (unchanged since they were
    /// read): the kernel reads nothing, so nothing of it would be kept here, and each open of
    /// it would cost an OPEN. Its READs go now, before the open is answered and so before any
    /// CLOSE of the handle, and what they bring is kept as a program's read of it would be:
    /// the next open within a second costs nothing, a later one a stat (git opens HEAD and
    /// its branch three or four times per command).
    pub(super) fn keep_contents_behind(self: &Arc<Self>, fh: u64, path: &[u8], attrs: Attrs) {
        let (Ok(file), Some(size)) = (self.file(fh), attrs.size) else {
            return;
        };
        if size == 0 || size > SMALL_FILE || self.cache.contents(path).is_some() {
            return;
        }
        let ticket = self.cache.ticket();
        let generation = file.inode_writes.generation();
        let source = SftpSource {
            file: file.handle.clone(),
        };
        // The next open waits for it rather than open the file again.
        let Some(done) = self.files.small.state.lock().unwrap().fetch_starts(path) else {
            return;
        };
        let (data, end) = (source.read(0, size as u32), source.read(size, 1));
        let (core, path) = (self.clone(), path.to_vec());
        tokio::spawn(async move {
            if let (Ok(data), Ok(end)) = (data.await, end.await)
                && data.len() as u64 == size
                && end.is_empty()
                && file.inode_writes.generation() == generation
                && !file.inode_writes.pending()
            {
                let contents = Contents::read_now(attrs, data);
                core.cache.put_contents(ticket, path.clone(), contents);
            }
            core.files.small.fetch_over(&path, done);
        });
    }

    /// Whether small files' contents are kept at all: `noauto_cache` asks for every open to
    /// read afresh.
    pub(super) fn keeps_contents(&self) -> bool {
        self.config.keep_cache != KeepCache::Never
    }

    /// A small file at `path` was opened for reading: fetch the small files after it, in its
    /// directory's listing as far as the window reaches, or in name order once the program
    /// strayed from the listing (see the module's comment).
    pub(super) fn read_ahead_after(self: &Arc<Self>, path: &[u8]) {
        if !self.keeps_contents() || !self.config.readahead {
            return;
        }
        let Some(slash) = path.iter().rposition(|&b| b == b'/') else {
            return;
        };
        let (dir, name) = (&path[..slash.max(1)], &path[slash + 1..]);
        let mut state = self.files.small.state.lock().unwrap();
        let scanning = state.scanned_at.is_some_and(|t| t.elapsed() < SCAN_SPAN);
        let mut last = state.streams.pop(dir);
        // A directory read whole goes by name: its listing's order is not looked for (a search
        // of the listing at every open, the position never where the last open left it).
        if let Some(Stream {
            whole: Some(whole), ..
        }) = last.as_mut()
        {
            let paths: Vec<Vec<u8>> = whole.ahead_of(name).iter().map(|n| join(dir, n)).collect();
            state.scanned_at = Some(Instant::now());
            state.streams.put(dir.to_vec(), last.expect("matched"));
            self.fetch_ahead(&mut state, paths);
            return;
        }
        let hint = last.as_ref().map_or(0, |s| s.at + 1);
        let Some((at, ahead)) = self.cache.names_after(dir, name, hint, MAX_WINDOW, small) else {
            return;
        };
        let follows = |s: &Stream| at == s.at || (at > s.at && at <= s.at + 1 + s.window);
        let before = last.as_ref().map(|s| (s.at, s.window));
        // Twice out of the listing's order, or a scan coming to a new directory.
        let strays = last.as_ref().map_or(scanning, |s| !follows(s));
        let whole = strays
            .then(|| self.cache.names_sorted(dir, WHOLE_MAX_FILES, small))
            .flatten()
            .map(Whole::new);
        let paths: Vec<Vec<u8>> = match whole {
            Some(mut whole) => {
                let paths: Vec<Vec<u8>> =
                    whole.ahead_of(name).iter().map(|n| join(dir, n)).collect();
                state.scanned_at = Some(Instant::now());
                let stream = Stream {
                    at,
                    window: FIRST_WINDOW,
                    whole: Some(whole),
                };
                state.streams.put(dir.to_vec(), stream);
                paths
            }
            None => {
                let window = match before {
                    // Within what was fetched ahead for it: the program follows the listing.
                    Some((was, window)) if at > was => (window * 2).min(MAX_WINDOW),
                    Some((_, window)) => window,
                    None => FIRST_WINDOW,
                };
                let stream = Stream {
                    at,
                    window,
                    whole: None,
                };
                state.streams.put(dir.to_vec(), stream);
                ahead
                    .into_iter()
                    .take(window)
                    .map(|(path, _)| path)
                    .collect()
            }
        };
        self.fetch_ahead(&mut state, paths);
    }

    /// Fetches `paths` whole in the background, those not held or being fetched already.
    fn fetch_ahead(self: &Arc<Self>, state: &mut State, paths: Vec<Vec<u8>>) {
        for path in paths {
            if self.cache.contents(&path).is_some() {
                continue;
            }
            let Some(done) = state.fetch_starts(&path) else {
                continue;
            };
            let core = self.clone();
            let slots = self.files.small.fetches.clone();
            tokio::spawn(async move {
                if let Ok(_slot) = slots.acquire().await
                    && let Some(Known::Attrs(attrs)) = core.cache.name(&path)
                    && small(&attrs)
                {
                    core.fetch_whole(&path, attrs).await;
                }
                core.files.small.fetch_over(&path, done);
            });
        }
    }

    /// OPEN, READ of all of it with the end confirmed and an FSTAT in the same round trip,
    /// CLOSE not waited for; kept only if it is all of the file `attrs` describe, the FSTAT
    /// still shows them, and nothing changed through the mount meanwhile (the cache's ticket).
    /// The FSTAT also renews the name's attributes: a program that reads a tree's files
    /// (git's first status) finds them fresh when it stats them again (its next status),
    /// instead of all timing out together, counted from the listing that found them.
    async fn fetch_whole(&self, path: &[u8], attrs: Attrs) {
        let ticket = self.cache.ticket();
        let Some(size) = attrs.size else { return };
        let Ok(file) = self.open_briefly(path).await else {
            return;
        };
        // One byte past the end: the READ of that byte must come back empty.
        let max = self.features.max_read;
        let read = read_range(&file.source, 0, size as u32 + 1, max, Some(size));
        let fstat = async {
            let own = file.source.file.now().ok()?;
            own.session.fstat(own.handle.clone()).await.ok()
        };
        let (data, now) = tokio::join!(read, fstat);
        file.close(self);
        let Some(now) = now.filter(|now| now.size_and_mtime() == attrs.size_and_mtime()) else {
            return;
        };
        if let Ok(data) = data
            && data.len() as u64 == size
        {
            let contents = Contents::read_now(now.clone(), data);
            self.cache.put_contents(ticket, path.to_vec(), contents);
            self.cache
                .put_name(ticket, path.to_vec(), Known::Attrs(now));
        }
    }

    /// A read through a descriptor served from memory; once the file was written through the
    /// mount, from the server.
    pub(super) async fn read_whole(
        &self,
        file: &WholeFile,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        file.writes.settle().await;
        if file.writes.generation() == file.generation {
            let start = (offset as usize).min(file.data.len());
            let end = (start + size as usize).min(file.data.len());
            return Ok(file.data.slice(start..end));
        }
        let brief = self.open_briefly(&self.inodes.path(file.ino)?).await?;
        let max = self.features.max_read;
        let data = read_range(&brief.source, offset, size, max, None).await;
        brief.close(self);
        data
    }

    /// fsync(2) of a descriptor served from memory, as of any other: waits for the inode's
    /// writes, reports their failures once, and, if there were any since it was opened, asks
    /// the server to sync the file.
    pub(super) async fn fsync_whole(&self, file: &WholeFile) -> FsResult<()> {
        file.writes.settle().await;
        if let Some(e) = file.writes.failure_since(&file.failures_seen) {
            return Err(e);
        }
        if file.writes.generation() == file.generation {
            return Ok(());
        }
        let brief = self.open_briefly(&self.inodes.path(file.ino)?).await?;
        let synced = match brief.source.file.now() {
            Ok(own) => own.session.fsync(&own.handle).await.map_err(errno),
            Err(e) => Err(e),
        };
        brief.close(self);
        synced
    }

    /// A handle for one read, on the metadata channel when there is room (see `open_handle`).
    async fn open_briefly(&self, path: &[u8]) -> FsResult<BriefHandle> {
        let (opened, _, _) = self
            .open_handle(path, open_flags::READ, Attrs::default(), None, true)
            .await?;
        let opened = opened.map_err(errno)?;
        Ok(BriefHandle {
            channel: opened.channel,
            source: SftpSource {
                file: FileHandle::new(opened, self.remote.settings().reconnect_wait),
            },
        })
    }

    /// Closes a descriptor served from memory; its inode, or `None` if `fh` is not one.
    pub(super) fn release_whole(&self, fh: u64) -> Option<u64> {
        let file = self.files.small.state.lock().unwrap().open.remove(&fh)?;
        Some(file.ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(names: &[&str], size: u64) -> Whole {
        Whole::new(
            names
                .iter()
                .map(|n| (Bytes::copy_from_slice(n.as_bytes()), size))
                .collect(),
        )
    }

    fn strs(names: Vec<Bytes>) -> Vec<String> {
        names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn a_directory_read_whole_moves_its_window_with_the_program() {
        let mut w = whole(&["a", "b", "c", "d", "e", "f", "g"], 1 << 20);
        // Two files of 1 MiB fit in the bytes ahead.
        assert_eq!(strs(w.ahead_of(b"c")), ["d", "e"]);
        // What was asked for is not asked again; the window moves on.
        assert_eq!(strs(w.ahead_of(b"d")), ["f"]);
        // From the end, around to the start; the file opened is not fetched.
        assert_eq!(strs(w.ahead_of(b"g")), ["a", "b"]);
        assert!(w.ahead_of(b"a").is_empty(), "b was asked, c was opened");
    }

    #[test]
    fn a_directory_read_whole_is_bounded_in_files() {
        let names: Vec<String> = (0..200).map(|i| format!("{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut w = whole(&refs, 10);
        let ahead = strs(w.ahead_of(b"050"));
        assert_eq!(ahead.len(), WHOLE_AHEAD_FILES);
        assert_eq!(ahead[0], "051");
        // A name no longer listed: the window starts where it would be.
        assert_eq!(strs(w.ahead_of(b"150x"))[0], "151");
    }
}
