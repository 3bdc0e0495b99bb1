//! Directories: listings fetched with pipelined READDIRs (untrusted names left out), kept in
//! the cache, fetched ahead for tree walks, and served to readdir and readdirplus.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fuser::{FileAttr, FileType};
use tracing::warn;

use super::cache::{COHERENCE, Known, Listed, ListingCheck, parent};
use super::inode::{Identity, ROOT, join, now_secs, racy};
use super::{Core, FsResult, is_dir, is_symlink};
use crate::sftp::proto::Attrs;
use crate::sftp::{Session, SftpError};

/// READDIRs in flight at most for one listing: OpenSSH answers each with up to 100 names, so a
/// directory of 100,000 costs about 16 round trips once the pipeline is full.
const MAX_READDIRS_IN_FLIGHT: usize = 64;
/// Listings fetched ahead at once for a tree walk; see [`Core::prefetch_listings`]. With 16,
/// git status of a 2,000-file repository after the timeout (about 100 directories listed
/// again) took 2.4 s at 40 ms; with 32, 1.4 s.
const DIR_PREFETCH_CONCURRENCY: usize = 32;
/// Directories waiting to be fetched ahead, at most.
const DIR_PREFETCH_STACK: usize = 256;
/// How far below a directory being read its subdirectories are fetched ahead.
const DIR_PREFETCH_DEPTH: u32 = 3;
/// A directory read within this of its parent is a step of a tree walk.
const WALK_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);
/// Directories read lately, remembered to see a walk.
const RECENT_READS: usize = 64;
/// Stats missing the cache in one directory within [`COHERENCE`] that make a burst, answered
/// by one listing (see [`Core::burst_listing`]); directories whose misses are counted at once.
const BURST_MISSES: u32 = 3;
const BURST_DIRS: usize = 64;
/// Listings whose directories' mtimes one sweep asks at most (see
/// [`Core::check_listings_due`]): the ones listed or checked last.
const SWEEP_LISTINGS: usize = 64;

/// Entries, and bytes of names, one listing may hold: a server that never ends a listing must
/// not take the mount's memory with it.
const MAX_LISTING_ENTRIES: usize = 1_000_000;
const MAX_LISTING_NAME_BYTES: usize = 128 << 20;

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

/// A directory entry for readdir(plus). For readdirplus, `attr` is set and the kernel's lookup
/// count of `ino` has been raised: an entry the adapter cannot send must be forgotten again.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    pub kind: FileType,
    pub name: Bytes,
    pub attr: Option<FileAttr>,
    /// The name was removed or replaced since the listing was taken: the entry is not to be
    /// kept by the kernel (no entry timeout).
    pub gone: bool,
}

/// The core's directories part: the open directories, the listings being fetched (for others
/// who want them too), and the listings fetched ahead for a tree walk.
pub(super) struct Directories {
    open: Mutex<HashMap<u64, Arc<DirHandle>>>,
    in_flight: Mutex<HashMap<Vec<u8>, ListingWatch>>,
    prefetch: Mutex<DirPrefetch>,
    /// Checked listings to read again in the background (see
    /// [`Core::relist_later`]), each once however many lookups found it due, and the
    /// queue's reader's end, taken by [`Core::settle_checked_listings`].
    relisting: Mutex<HashSet<Vec<u8>>>,
    to_relist: tokio::sync::mpsc::UnboundedSender<ListingCheck>,
    relister: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ListingCheck>>>,
    /// Directories below a burst's, to fetch ahead (see [`Core::burst_listing`]), and the
    /// queue's reader's end, taken by [`Core::prefetch_below_bursts`].
    to_prefetch: tokio::sync::mpsc::UnboundedSender<ToPrefetch>,
    prefetcher: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ToPrefetch>>>,
    bursts: Mutex<lru::LruCache<Vec<u8>, Burst>>,
    /// A sweep of the listings due a check is under way (see [`Core::check_listings_due`]).
    sweeping: AtomicBool,
}

/// Directories to fetch ahead, and how deep below them the walk is (see [`DirPrefetch`]).
type ToPrefetch = (Vec<Vec<u8>>, u32);

/// Stats of one directory's names that missed the cache lately.
struct Burst {
    since: std::time::Instant,
    misses: u32,
    /// When a burst last had the directory listed: at most once per [`COHERENCE`], whether
    /// or not the listing could be kept.
    listed: Option<std::time::Instant>,
}

impl Default for Directories {
    fn default() -> Self {
        let (to_relist, relister) = tokio::sync::mpsc::unbounded_channel();
        let (to_prefetch, prefetcher) = tokio::sync::mpsc::unbounded_channel();
        Directories {
            open: Mutex::default(),
            in_flight: Mutex::default(),
            prefetch: Mutex::default(),
            relisting: Mutex::default(),
            to_relist,
            relister: Mutex::new(Some(relister)),
            to_prefetch,
            prefetcher: Mutex::new(Some(prefetcher)),
            bursts: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(BURST_DIRS).expect("not zero"),
            )),
            sweeping: AtomicBool::new(false),
        }
    }
}

impl Directories {
    fn handle(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.open.lock().unwrap().get(&fh).cloned()
    }

    fn set_handle(&self, fh: u64, handle: Arc<DirHandle>) {
        self.open.lock().unwrap().insert(fh, handle);
    }

    fn close(&self, fh: u64) {
        self.open.lock().unwrap().remove(&fh);
    }

    /// Counts a stat of a name in `dir` that missed the cache: whether it makes a burst whose
    /// directory is to be listed now, or (`listed_before`: the mount had a listing of it, now
    /// timed out) the first miss of one, the directory to be listed behind it.
    fn burst(&self, dir: &[u8], listed_before: bool) -> BurstListing {
        let now = std::time::Instant::now();
        let mut bursts = self.bursts.lock().unwrap();
        let burst = bursts.get_or_insert_mut(dir.to_vec(), || Burst {
            since: now,
            misses: 0,
            listed: None,
        });
        if now.duration_since(burst.since) > COHERENCE {
            burst.since = now;
            burst.misses = 0;
        }
        burst.misses += 1;
        if burst
            .listed
            .is_some_and(|at| now.duration_since(at) <= COHERENCE)
        {
            return BurstListing::No;
        }
        let listing = match burst.misses {
            n if n >= BURST_MISSES => BurstListing::Now,
            1 if listed_before => BurstListing::Behind,
            _ => return BurstListing::No,
        };
        burst.listed = Some(now);
        listing
    }
}

/// What a stat that missed the cache does about its directory's listing.
#[derive(PartialEq)]
enum BurstListing {
    No,
    /// Lists it and answers from the listing.
    Now,
    /// Has it listed in the background, and asks for its own name meanwhile.
    Behind,
}

/// Directories whose listings are to be fetched ahead (top = next), the workers doing it, and
/// the directories read lately with their subdirectories (to tell a walk from a look).
#[derive(Default)]
struct DirPrefetch {
    stack: std::collections::VecDeque<(Vec<u8>, u32)>,
    workers: usize,
    recent: std::collections::VecDeque<RecentRead>,
}

struct RecentRead {
    path: Vec<u8>,
    at: std::time::Instant,
    subdirs: Vec<Vec<u8>>,
}

impl DirPrefetch {
    /// Notes that `path` was read, with its `subdirs` (paths, in name order). When it lies
    /// below a directory read within [`WALK_WINDOW`], a walk is under way: returns that
    /// directory's other subdirectories, the walk's next steps after this one's own.
    fn read(&mut self, path: &[u8], subdirs: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        let now = std::time::Instant::now();
        let parent = &path[..path.iter().rposition(|&b| b == b'/').unwrap_or(0)];
        let siblings = self
            .recent
            .iter()
            .find(|r| r.path == parent && now.duration_since(r.at) < WALK_WINDOW)
            .map(|r| {
                r.subdirs
                    .iter()
                    .filter(|s| s.as_slice() != path)
                    .cloned()
                    .collect()
            });
        self.recent.retain(|r| r.path != path);
        self.recent.push_back(RecentRead {
            path: path.to_vec(),
            at: now,
            subdirs: subdirs.to_vec(),
        });
        if self.recent.len() > RECENT_READS {
            self.recent.pop_front();
        }
        siblings
    }
}

/// A repository's `.git`, or a directory in it.
fn in_git_dir(dir: &[u8]) -> bool {
    dir.ends_with(b"/.git") || dir.windows(6).any(|w| w == b"/.git/")
}

/// Directories to fetch ahead of a walk or a scan, without a repository's `.git`: the tools
/// that scan work trees (git's own scan among them) skip it, and its 256 object directories
/// would push the work tree's off the stack. A walker that goes into it has it read, and
/// what is below it fetched ahead.
fn not_git_dirs(mut paths: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    paths.retain(|path| !path.ends_with(b"/.git"));
    paths
}

/// A listing being fetched, for others who want it too.
type ListingWatch = tokio::sync::watch::Receiver<Option<FsResult<Vec<(Bytes, Attrs)>>>>;

/// An open directory: the listing its reader goes through, taken at opendir and again when
/// the reader starts over (rewinddir sees the directory as it is then).
struct DirHandle {
    ino: u64,
    entries: Vec<(Bytes, Attrs)>,
    /// The inodes the mount had for the entries' names when the listing was taken: a name
    /// removed since keeps the number its file had (its `d_ino` is that `st_ino`).
    inos: Vec<Option<Identity>>,
    /// Read from the start once already.
    started: AtomicBool,
}

impl Core {
    /// Paths of the files with writes in flight (only open files can have them).
    fn pending_paths(&self) -> HashSet<Vec<u8>> {
        let files = self.files.all();
        let inodes = self.inodes.table();
        files
            .iter()
            .filter(|f| f.inode_writes.pending())
            .filter_map(|f| inodes.linked_path(f.ino))
            .collect()
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let handle = self.dir_handle(ino).await?;
        let fh = self.files.new_fh();
        self.dirs.set_handle(fh, Arc::new(handle));
        Ok(fh)
    }

    /// The directory `ino` as a handle reads it.
    async fn dir_handle(&self, ino: u64) -> FsResult<DirHandle> {
        let path = self.inodes.path(ino)?;
        // A listing the mount keeps up to date itself is read as its lookups are: as long as
        // the directory's mtime, asked once a second, is the one the mount's changes left.
        if let Some(check) = self.cache.made_listing_to_check(&path)
            && let Some(due) = self.check_listing(check).await
        {
            self.relist_checked(&due).await;
        }
        let pending = self.pending_paths();
        let entries = match self.cache.listing(&path, |p| !pending.contains(p)) {
            Some(entries) => entries,
            None => self.fetch_listing(&path).await?,
        };
        let inos = {
            let inodes = self.inodes.table();
            entries
                .iter()
                .map(|(name, _)| inodes.child_identity(ino, name))
                .collect()
        };
        Ok(DirHandle {
            ino,
            entries,
            inos,
            started: Default::default(),
        })
    }

    /// Whether a directory is still as its listing has it, asked once a second (its mtime)
    /// rather than once per missing name. SFTP v3 times are whole seconds: a change by someone
    /// else within the second of the listing or of the mount's last change leaves the mtime, so
    /// once that second is over the listing is read again, once: returned when that is due (see
    /// [`Core::relist_checked`], [`Core::relist_later`]).
    pub(super) async fn check_listing(&self, check: ListingCheck) -> Option<ListingCheck> {
        let dir = &check.dir;
        let now = self.idempotent(|s| async move { s.lstat(dir).await }).await;
        let mtime = now.ok().and_then(|a| a.atime_mtime).map(|t| t.1);
        self.listing_check_found(check, mtime)
    }

    /// What a check of a listing found: its directory's mtime now (`None`: gone, or none).
    fn listing_check_found(&self, check: ListingCheck, mtime: Option<u32>) -> Option<ListingCheck> {
        if mtime != Some(check.mtime) {
            self.cache.listing_checked(&check, None);
            return None;
        }
        if check.settled {
            self.cache.listing_checked(&check, Some(false));
            return None;
        }
        // Racy: not yet, asked again at the next lookup.
        (!racy(check.mtime, now_secs())).then_some(check)
    }

    /// A name missing from a listing was looked up once its directory was due a check (see
    /// [`Core::check_listing`]): the other listings due are checked in the same round trip,
    /// their directories' mtimes asked all at once, so that the lookups that follow in them
    /// (git's `.gitignore` in every directory, a compiler's include path) find their names
    /// missing without a round trip each. One sweep at a time, [`SWEEP_LISTINGS`] at most.
    pub(super) async fn check_listings_due(&self, except: &[u8]) {
        if self.dirs.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        struct Sweeping<'a>(&'a AtomicBool);
        impl Drop for Sweeping<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _sweeping = Sweeping(&self.dirs.sweeping);
        let checks = self.cache.listings_due(except, SWEEP_LISTINGS);
        if checks.is_empty() {
            return;
        }
        let Ok(session) = self.meta().await else {
            return;
        };
        let asked: Vec<_> = checks.iter().map(|c| session.lstat(&c.dir)).collect();
        for (check, reply) in checks.into_iter().zip(asked) {
            let mtime = match reply.await {
                Ok(attrs) => attrs.atime_mtime.map(|t| t.1),
                // Nothing learnt: the next lookup there checks it again.
                Err(SftpError::ConnectionLost) => return,
                Err(_) => None,
            };
            if let Some(due) = self.listing_check_found(check, mtime) {
                self.relist_later(due);
            }
        }
    }

    /// What a listing says of `path`, when its stat missing the cache is one of a burst in its
    /// directory (git status, make, an IDE's scan, all again once the attribute timeout has
    /// passed): one listing answers them all (READDIR gives every entry's attributes) where
    /// each would cost an LSTAT, one round trip. `None`: ask the server for the name itself.
    /// `for_open`: the stat of an open, which waits for nothing but its own LSTAT (one round
    /// trip, where a listing costs two).
    pub(super) async fn burst_listing(&self, path: &[u8], for_open: bool) -> Option<Known> {
        let dir = parent(path)?;
        if !self.config.cache.enabled || self.cache.too_large(dir) {
            return None;
        }
        // A listing on its way (fetched ahead for a scan, or for another burst) answers it.
        let listing_coming = self.dirs.in_flight.lock().unwrap().contains_key(dir);
        if listing_coming && !for_open {
            self.fetch_listing(dir).await.ok()?;
            return self.cache.name(path);
        }
        let listed_before = !for_open && self.cache.listed_before(dir);
        match self.dirs.burst(dir, listed_before) {
            BurstListing::Now => {
                let entries = self.fetch_listing(dir).await.ok()?;
                let below = entries
                    .iter()
                    .filter(|(_, attrs)| is_dir(attrs))
                    .map(|(name, _)| join(dir, name))
                    .collect();
                self.scan_next(dir, below, 1);
                self.cache.name(path)
            }
            // Its names asked again once the listing timed out (git status after the
            // attribute timeout): listed in the background as for a burst, the stats that
            // follow waiting for it instead of each asking, while this one asks for its own
            // name rather than wait two round trips.
            BurstListing::Behind => {
                self.scan_next(dir, vec![dir.to_vec()], 0);
                None
            }
            BurstListing::No => None,
        }
    }

    /// A burst is a scan of the tree (git's preload threads, make, an IDE indexing): the
    /// directories `below` (at `depth` under the burst's `dir`) and beside it come next,
    /// fetched ahead as for a walk, where each would cost a lookup and a burst of its own, one
    /// directory after another.
    fn scan_next(&self, dir: &[u8], mut below: Vec<Vec<u8>>, depth: u32) {
        if !self.config.dir_prefetch {
            return;
        }
        // git reaches into its own directory by name (objects by hash, refs, HEAD), it does
        // not scan it: a burst there lists that directory only, not the 256 object
        // directories beside or below it.
        if in_git_dir(dir) {
            below.retain(|path| path[..] == *dir);
            if !below.is_empty() {
                let _ = self.dirs.to_prefetch.send((below, DIR_PREFETCH_DEPTH));
            }
            return;
        }
        // Beside: each listed alone, not walked (the scan may never go there).
        let beside: Vec<Vec<u8>> = parent(dir)
            .and_then(|up| self.cache.subdirs(up))
            .into_iter()
            .flatten()
            .filter(|sibling| sibling[..] != *dir)
            .collect();
        let (beside, below) = (not_git_dirs(beside), not_git_dirs(below));
        for (paths, depth) in [(beside, DIR_PREFETCH_DEPTH), (below, depth)] {
            if !paths.is_empty() {
                let _ = self.dirs.to_prefetch.send((paths, depth));
            }
        }
    }

    /// Fetches ahead the directories below bursts (see [`Core::burst_listing`]). Runs for the
    /// mount's life.
    pub(super) async fn prefetch_below_bursts(self: Arc<Self>) {
        let Some(mut below) = self.dirs.prefetcher.lock().unwrap().take() else {
            return;
        };
        while let Some((mut paths, depth)) = below.recv().await {
            paths.sort();
            self.push_prefetch(paths, depth);
        }
    }

    /// Reads a checked listing again, as `due` found it should be.
    async fn relist_checked(&self, due: &ListingCheck) {
        let relisted = self.fetch_listing(&due.dir).await.is_ok();
        self.cache.listing_checked(due, relisted.then_some(true));
    }

    /// [`Core::relist_checked`] in the background: a lookup, which asked its own name alongside
    /// the check, does not wait two round trips more for names it did not ask about. Until it
    /// is read again, the next lookup there checks again.
    pub(super) fn relist_later(&self, due: ListingCheck) {
        if self.dirs.relisting.lock().unwrap().insert(due.dir.clone()) {
            let _ = self.dirs.to_relist.send(due);
        }
    }

    /// Reads again the directories lookups found due (see [`Core::relist_later`]), a few at
    /// once. Runs for the mount's life.
    pub(super) async fn settle_checked_listings(self: Arc<Self>) {
        let Some(mut due) = self.dirs.relister.lock().unwrap().take() else {
            return;
        };
        let mut reading = tokio::task::JoinSet::new();
        while let Some(check) = due.recv().await {
            while reading.len() >= DIR_PREFETCH_CONCURRENCY {
                reading.join_next().await;
            }
            let core = self.clone();
            reading.spawn(async move {
                core.relist_checked(&check).await;
                core.dirs.relisting.lock().unwrap().remove(&check.dir);
            });
        }
    }

    /// A listing from the server, kept in the cache. A listing already being fetched (ahead,
    /// for a tree walk) is waited for rather than asked for twice.
    async fn fetch_listing(&self, path: &[u8]) -> FsResult<Vec<(Bytes, Attrs)>> {
        let (tx, waiting) = {
            let mut in_flight = self.dirs.in_flight.lock().unwrap();
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
        let _in_flight = InFlight(&self.dirs.in_flight, path);
        let ticket = self.cache.ticket();
        // A file with writes or attribute changes in flight at any time during the fetch may
        // be listed as it was before them: not kept (their acks do not move the ticket).
        let pending_before = self.pending_paths();
        let since = std::time::Instant::now();
        let listed = self.list_dir(path).await;
        let listed = listed.map(|(entries, dir_mtime)| {
            let mut pending = self.pending_paths();
            pending.extend(pending_before);
            let listed = Listed {
                since,
                dir_mtime,
                entries: &entries,
            };
            self.cache
                .put_listing(ticket, path, listed, |p| !pending.contains(p));
            entries
        });
        if let Some(tx) = tx {
            tx.send_replace(Some(listed.clone()));
        }
        listed
    }

    /// Fetches listings below the directory `dir` into the cache while its reader is busy
    /// with it, so that a tree walk (`ls -lR`, `find`, `du`) finds them there instead of
    /// waiting two round trips per directory, one directory after another. A walk shows as a
    /// directory read a moment after its parent; a directory read alone fetches nothing more.
    /// `subdirs` (the ones the kernel was just told about, in name order as `ls -R` and
    /// `find -s` visit them) go on top of one stack for the mount: the directory read last is
    /// the walker's position, so its neighbourhood comes first. [`DIR_PREFETCH_CONCURRENCY`]
    /// workers take from the top, each fetched listing pushing its own subdirectories down to
    /// [`DIR_PREFETCH_DEPTH`] levels below the read directory; the oldest entries fall off the
    /// bottom of a full stack. A walk thus costs a bounded number of listings ahead of its
    /// walker.
    pub fn prefetch_listings(self: &Arc<Self>, dir: u64, mut subdirs: Vec<Bytes>) {
        if !self.config.dir_prefetch || !self.config.cache.enabled {
            return;
        }
        let Ok(base) = self.inodes.path(dir) else {
            return;
        };
        subdirs.sort();
        let paths: Vec<Vec<u8>> = subdirs.iter().map(|name| join(&base, name)).collect();
        // Only a walk: a look at one directory (`ls /usr`) fetches nothing it did not ask for.
        let Some(siblings) = self.dirs.prefetch.lock().unwrap().read(&base, &paths) else {
            return;
        };
        // The walker's next steps: this directory's subdirectories first (on top), then the
        // rest of its parent's.
        self.push_prefetch(not_git_dirs(siblings), 1);
        self.push_prefetch(not_git_dirs(paths), 1);
    }

    fn push_prefetch(self: &Arc<Self>, paths: Vec<Vec<u8>>, depth: u32) {
        let mut state = self.dirs.prefetch.lock().unwrap();
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
                let mut state = self.dirs.prefetch.lock().unwrap();
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
            let mut below = not_git_dirs(below);
            if depth < DIR_PREFETCH_DEPTH && !below.is_empty() {
                below.sort();
                self.push_prefetch(below, depth + 1);
            }
        }
    }

    /// The whole listing of a directory, from the server. READDIRs are pipelined (two at first,
    /// so a small directory costs one round trip after the OPENDIR, more while batches keep
    /// coming) and the CLOSE is not waited for: on a far link a listing costs two round trips
    /// where one READDIR at a time would cost one per batch, plus one for the end, plus the CLOSE.
    /// With the entries, the directory's mtime asked right before them (on the same channel,
    /// in the same round trip): a later change moves it (see [`Core::check_listing`]).
    async fn list_dir(&self, path: &[u8]) -> FsResult<(Vec<(Bytes, Attrs)>, Option<u32>)> {
        let follow = self.config.symlinks.follow;
        self.idempotent(|session| async move {
            let dir = session.lstat(path);
            let mut entries = Self::list_dir_on(session.clone(), path).await?;
            // Only a directory's own: a symlink followed to one (`follow_symlinks`) has the
            // link's mtime, which no change in the directory moves.
            let dir_mtime = dir
                .await
                .ok()
                .filter(is_dir)
                .and_then(|a| a.atime_mtime)
                .map(|t| t.1);
            if follow {
                follow_links(&session, path, &mut entries).await;
            }
            Ok((entries, dir_mtime))
        })
        .await
    }

    async fn list_dir_on(
        session: Arc<Session>,
        path: &[u8],
    ) -> Result<Vec<(Bytes, Attrs)>, SftpError> {
        let handle = session.opendir(path).await?;
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..2 {
            in_flight.push_back(session.submit_readdir(handle.clone()));
        }
        let mut entries = Vec::new();
        let mut name_bytes = 0;
        let mut rejected = Vec::new();
        let mut batches = 0;
        let listed = loop {
            if entries.len() > MAX_LISTING_ENTRIES || name_bytes > MAX_LISTING_NAME_BYTES {
                warn!(
                    "listing of {} stopped at {} entries: the server keeps sending names",
                    String::from_utf8_lossy(path),
                    entries.len()
                );
                break Err(SftpError::Protocol(format!(
                    "a listing of more than {MAX_LISTING_ENTRIES} entries"
                )));
            }
            let next = in_flight.pop_front().expect("a READDIR in flight");
            match next.await {
                Ok(Some(batch)) => {
                    for e in batch {
                        match listed_name(&e.filename, &e.attrs) {
                            Ok(true) => {
                                let mut attrs = e.attrs;
                                attrs.nlink = crate::sftp::proto::longname_nlink(&e.longname);
                                name_bytes += e.filename.len();
                                // Copied out: a slice would keep the whole reply (long names
                                // and all) alive as long as the listing.
                                let name = Bytes::copy_from_slice(&e.filename);
                                entries.push((name, attrs))
                            }
                            Ok(false) => {}
                            Err(why) => rejected.push(why),
                        }
                    }
                    // A large directory: keep more batches coming, half as many as came so far
                    // (the pipeline grows by half each round trip; those still in flight when
                    // the end comes, answered "end" too, are at most half as many again).
                    batches += 1;
                    let depth = (batches / 2 + 2).min(MAX_READDIRS_IN_FLIGHT);
                    while in_flight.len() < depth {
                        in_flight.push_back(session.submit_readdir(handle.clone()));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
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
        session.close_unawaited(handle);
        // Kept as long as the directory is open: not with the room its growth left.
        entries.shrink_to_fit();
        listed.map(|()| entries)
    }

    /// Gives `add` the entries from `offset` on until it answers that the reply is full
    /// (`true`): a reply holds a page of entries, and a directory of a million is read in many,
    /// each costing only what it holds. With `plus`, each entry carries attributes and a kernel
    /// reference, taken only for the entries `add` took.
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> FsResult<()> {
        let mut dir = self.dirs.handle(fh).ok_or(libc::EBADF)?;
        if offset == 0 && dir.started.swap(true, Ordering::AcqRel) {
            // rewinddir(3): the directory as it is now, not as it was at opendir.
            let again = self.dir_handle(dir.ino).await?;
            again.started.store(true, Ordering::Release);
            dir = Arc::new(again);
            self.dirs.set_handle(fh, dir.clone());
        }
        // ".." only needs an inode number; the kernel looks the parent up itself.
        let dots = [(&b"."[..], dir.ino), (&b".."[..], ROOT)];
        for (i, (name, ino)) in dots.iter().enumerate() {
            if offset <= i as u64 {
                let dot = DirEntry {
                    ino: *ino,
                    offset: i as u64 + 1,
                    kind: FileType::Directory,
                    name: Bytes::copy_from_slice(name),
                    attr: None,
                    gone: false,
                };
                if add(&dot) {
                    return Ok(());
                }
            }
        }
        let start = offset.saturating_sub(2) as usize;
        for (i, (name, attrs)) in dir.entries.iter().enumerate().skip(start) {
            let offset = i as u64 + 3;
            let listed_as = dir.inos[i];
            let entry = if plus {
                let (ino, gone) = {
                    let mut inodes = self.inodes.table();
                    let symlink = is_symlink(attrs);
                    match (listed_as, inodes.child_identity(dir.ino, name)) {
                        // The name went since it was listed: the number its file had (as a
                        // local filesystem's d_ino would be), an entry the kernel does not keep.
                        (Some(then), None) => (inodes.remember_nameless(then, symlink), true),
                        // Another file has the name now: its number, but not the attributes
                        // listed for the one before.
                        (Some(then), Some(now)) if now != then => {
                            (inodes.remember(dir.ino, name, symlink), true)
                        }
                        _ => (inodes.remember(dir.ino, name, symlink), false),
                    }
                };
                let attr = self.shown(ino, attrs);
                DirEntry {
                    ino,
                    offset,
                    kind: attr.kind,
                    name: name.clone(),
                    attr: Some(attr),
                    gone,
                }
            } else {
                // readdir needs only a number: the one the mount gave, else the one a lookup
                // will give (unless another inode takes it first).
                let ino = listed_as.map_or_else(
                    || self.inodes.table().number_for(dir.ino, name),
                    |then| then.ino,
                );
                DirEntry {
                    ino,
                    offset,
                    kind: self.to_attr(0, attrs).kind,
                    name: name.clone(),
                    attr: None,
                    gone: false,
                }
            };
            if add(&entry) {
                if plus {
                    // Not sent: the reference taken for it is given back.
                    self.forget(entry.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.close(fh);
    }
}

/// `follow_symlinks`: the listing's symlinks carry what they point to (STATs sent together);
/// a dangling one keeps its own attributes.
async fn follow_links(session: &Session, dir: &[u8], entries: &mut [(Bytes, Attrs)]) {
    let stats: Vec<_> = entries
        .iter()
        .enumerate()
        .filter(|(_, (_, attrs))| is_symlink(attrs))
        .map(|(i, (name, _))| (i, session.stat(&join(dir, name))))
        .collect();
    for (i, stat) in stats {
        if let Ok(attrs) = stat.await {
            entries[i].1 = attrs;
        }
    }
}
