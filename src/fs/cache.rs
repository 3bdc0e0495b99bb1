//! The metadata cache: what the server told us about names (attributes, "no such name"),
//! symlink targets and directory listings, each kept for its timeout (sshfs's `dcache_*`
//! options) in bounded LRUs, so that `ls -l` twice or a build's thousands of stats do not each
//! cost a round trip. Small files read ahead whole (see `small_files.rs`) are kept here too,
//! beside their names: whatever makes a name's attributes stale makes its contents stale.
//!
//! Everything is keyed by remote path, as the server names things, so that listings can be
//! fetched ahead for directories the kernel has not heard of yet. The core invalidates what its
//! own operations change (a renamed directory takes its subtree's keys with it); a fetch that
//! raced with a change of names, or with a change of the attributes it describes, is not stored
//! (the ticket), so the cache never holds a state older than one of our own changes.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;

use super::inode::{join, now_secs, racy};
use super::is_dir;
use crate::sftp::proto::Attrs;

/// The cache's settings, as the `dir_cache` and `dcache_*` options set them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Attributes and "no such name".
    pub stat_timeout: Duration,
    /// Directory listings.
    pub dir_timeout: Duration,
    /// Symlink targets.
    pub link_timeout: Duration,
    /// Names kept at most, and names in all cached listings together at most.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    /// sshfs's defaults: 20 s, 10000 entries.
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            stat_timeout: Duration::from_secs(20),
            dir_timeout: Duration::from_secs(20),
            link_timeout: Duration::from_secs(20),
            max_entries: 10_000,
        }
    }
}

/// The directory holding `path` ("/" for "/x"); `None` for "/" or a relative name.
pub(super) fn parent(path: &[u8]) -> Option<&[u8]> {
    let slash = path.iter().rposition(|&b| b == b'/')?;
    if slash + 1 == path.len() {
        return None;
    }
    Some(if slash == 0 {
        &path[..1]
    } else {
        &path[..slash]
    })
}

/// A path's directory and last component.
fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let dir = parent(path)?;
    let slash = path.iter().rposition(|&b| b == b'/')?;
    Some((dir, &path[slash + 1..]))
}

/// What the cache knows about a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    Attrs(Attrs),
    Missing,
}

/// A name's path and attributes.
pub type PathAttrs = (Vec<u8>, Attrs);

/// A listing fetched from the server: its entries, the directory's mtime asked right before
/// them, and when it was asked for.
pub struct Listed<'a> {
    pub since: Instant,
    pub dir_mtime: Option<u32>,
    pub entries: &'a [(Bytes, Attrs)],
}

#[cfg(test)]
impl<'a> Listed<'a> {
    /// A listing without a directory mtime, asked for now.
    pub fn entries(entries: &'a [(Bytes, Attrs)]) -> Self {
        Listed {
            since: Instant::now(),
            dir_mtime: None,
            entries,
        }
    }
}

/// A directory's attributes asked right behind a change in it, on the same channel (a server
/// that runs a channel in order answers them as the change left them), with the ticket taken
/// before the change was sent: they are kept only if nothing else changed since.
pub type DirAfter = Option<(Ticket, Attrs)>;

/// Taken before a fetch; the fetch's result is stored only if nothing was invalidated since
/// that could make it stale: no change of names at all, no change of the attributes of what it
/// describes.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    attrs_seq: u64,
}

/// Attribute changes remembered by path, for [`Ticket`]s: a fetch older than the oldest of them
/// is not stored if any attribute changed since. Writes change attributes all the time (every
/// write of a checkout); a global count would refuse every stat that overlapped one.
const ATTRS_LOG: usize = 256;

struct Timed<T> {
    value: T,
    at: Instant,
}

impl<T> Timed<T> {
    fn now(value: T) -> Self {
        Timed {
            value,
            at: Instant::now(),
        }
    }
}

struct Inner {
    /// Moved by every change of names (creations, removals, renames, invalidations).
    epoch: u64,
    /// Counts attribute-only changes; the last [`ATTRS_LOG`] of them, by path.
    attrs_seq: u64,
    attrs_changed: VecDeque<(u64, Vec<u8>)>,
    names: LruCache<Vec<u8>, Timed<Known>>,
    links: LruCache<Vec<u8>, Timed<Bytes>>,
    dirs: LruCache<Vec<u8>, Timed<Vec<Bytes>>>,
    /// Names in `dirs`, all listings together.
    listed: usize,
    /// Directories whose listing was too large to keep, and when that was seen: fetching
    /// them ahead again and again would be all cost.
    too_large: LruCache<Vec<u8>, Instant>,
    /// Whole contents of small files, with the attributes they were read under.
    contents: ContentsStore,
    /// Listings whose directories' mtimes are known (from an LSTAT right before the listing, or
    /// right behind a change through the mount, or a mkdir): a name missing from one is taken
    /// as missing for a second after it was listed, changed or checked (`tar -x`, `git clone`
    /// into a new directory), and after that while the directory's mtime, asked at most once a
    /// second, shows no change by anyone else.
    checked_listings: LruCache<Vec<u8>, CheckedListing>,
}

/// What an open trusts of the cache without asking the server (close-to-open coherence, as
/// NFS gives it): attributes, contents and "no such name" at most this old. A directory the
/// mount made, and has been the only one to change since, is trusted for its whole timeout.
pub const COHERENCE: Duration = Duration::from_secs(1);

/// A small file's whole contents, with the attributes they were read under.
#[derive(Debug, Clone)]
pub struct Contents {
    pub attrs: Attrs,
    pub data: Bytes,
    /// Read while the mtime was within a second of the clock (see `inode::ContentsSeen`): the
    /// file may change again with the same size and mtime.
    pub racy: bool,
}

impl Contents {
    /// `data`, the whole file that has `attrs`, read just now.
    pub fn read_now(attrs: Attrs, data: Bytes) -> Self {
        let racy = attrs
            .atime_mtime
            .is_none_or(|(_, mtime)| super::inode::racy(mtime, super::inode::now_secs()));
        Contents { attrs, data, racy }
    }
}

/// Contents as [`MetaCache::contents`] finds them.
#[derive(Debug, Clone)]
pub struct KeptContents {
    pub contents: Contents,
    /// Read within [`COHERENCE`]: usable at an open without asking the server.
    pub recent: bool,
}

/// A listing whose names are trusted while its directory's mtime stays as it was: when the
/// mount listed, last changed or found it unchanged, and the mtime then (the server's, asked
/// right before the listing or right behind the change).
#[derive(Debug, Clone, Copy)]
struct CheckedListing {
    checked: Instant,
    mtime: Option<u32>,
    /// A directory the mount made: its readers, not only its lookups, check the mtime (see
    /// [`MetaCache::made_listing_to_check`]); other listings are read for the listing timeout.
    made: bool,
    /// The listing was read again after the second of `mtime` was over: a change by someone
    /// else within that second (which leaves the mtime as it was) is in it.
    settled: bool,
}

/// A listing whose directory's mtime is to be asked again (see
/// [`MetaCache::listing_to_check`]).
#[derive(Debug, Clone)]
pub struct ListingCheck {
    pub dir: Vec<u8>,
    pub mtime: u32,
    pub settled: bool,
    /// When the mount last changed or checked the directory, as the check began: a change
    /// through the mount while the check was on its way makes its finding stale (the mtime
    /// asked may be from before the change or after it).
    since: Instant,
}

/// Bytes of small files' contents kept at most, and of those opened again from memory.
const MAX_CONTENTS_BYTES: usize = 16 * 1024 * 1024;
const MAX_USED_CONTENTS_BYTES: usize = 4 * 1024 * 1024;

/// Whole contents of small files, bounded in bytes. Those opened again from memory are kept
/// apart from those only read (ahead), as a segmented LRU does: a scan of a tree's files
/// (git's first status reads them all) pushes out what it read, not the few files a program
/// opens again and again (HEAD, refs, config).
struct ContentsStore {
    read: LruCache<Vec<u8>, Timed<Contents>>,
    used: LruCache<Vec<u8>, Timed<Contents>>,
    read_bytes: usize,
    used_bytes: usize,
}

impl ContentsStore {
    fn new(cap: NonZeroUsize) -> Self {
        ContentsStore {
            read: LruCache::new(cap),
            used: LruCache::new(cap),
            read_bytes: 0,
            used_bytes: 0,
        }
    }

    fn get(&mut self, path: &[u8]) -> Option<&mut Timed<Contents>> {
        if self.used.contains(path) {
            return self.used.get_mut(path);
        }
        self.read.get_mut(path)
    }

    fn pop(&mut self, path: &[u8]) -> Option<Timed<Contents>> {
        if let Some(old) = self.used.pop(path) {
            self.used_bytes -= old.value.data.len();
            return Some(old);
        }
        let old = self.read.pop(path)?;
        self.read_bytes -= old.value.data.len();
        Some(old)
    }

    /// Keeps `contents` for `path`: where its earlier contents were, else with those read.
    fn put(&mut self, path: Vec<u8>, contents: Timed<Contents>) {
        let used = self.used.contains(&path);
        self.pop(&path);
        let len = contents.value.data.len();
        if used {
            self.used.put(path, contents);
            self.used_bytes += len;
        } else {
            self.read.put(path, contents);
            self.read_bytes += len;
        }
        self.trim();
    }

    /// `path`'s contents were opened from memory: kept with those used again.
    fn used(&mut self, path: &[u8]) {
        if let Some(kept) = self.read.pop(path) {
            let len = kept.value.data.len();
            self.read_bytes -= len;
            self.used_bytes += len;
            self.used.put(path.to_vec(), kept);
            self.trim();
        }
    }

    fn trim(&mut self) {
        // The used ones least recently used go back with those read, at their newest end.
        while self.used_bytes > MAX_USED_CONTENTS_BYTES
            && let Some((path, old)) = self.used.pop_lru()
        {
            let len = old.value.data.len();
            self.used_bytes -= len;
            self.read_bytes += len;
            self.read.put(path, old);
        }
        while self.read_bytes + self.used_bytes > MAX_CONTENTS_BYTES {
            if let Some((_, old)) = self.read.pop_lru() {
                self.read_bytes -= old.value.data.len();
            } else if let Some((_, old)) = self.used.pop_lru() {
                self.used_bytes -= old.value.data.len();
            } else {
                break;
            }
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.read.iter().chain(self.used.iter()).map(|(k, _)| k)
    }
}

pub struct MetaCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
}

impl MetaCache {
    pub fn new(config: CacheConfig) -> Self {
        let cap = NonZeroUsize::new(config.max_entries.max(1)).expect("non-zero");
        MetaCache {
            config,
            inner: Mutex::new(Inner {
                epoch: 0,
                attrs_seq: 0,
                attrs_changed: VecDeque::new(),
                names: LruCache::new(cap),
                links: LruCache::new(cap),
                // Bounded by `listed`; the count bound only keeps the table small.
                dirs: LruCache::new(cap),
                listed: 0,
                too_large: LruCache::new(NonZeroUsize::new(256).expect("non-zero")),
                contents: ContentsStore::new(cap),
                checked_listings: LruCache::new(cap),
            }),
        }
    }

    /// `known`, if the cache keeps anything.
    fn known(&self, known: Known) -> Option<Known> {
        self.config.enabled.then_some(known)
    }

    pub fn ticket(&self) -> Ticket {
        self.inner.lock().unwrap().ticket()
    }

    fn fresh<T: Clone>(value: Option<&Timed<T>>, timeout: Duration) -> Option<T> {
        value
            .filter(|t| t.at.elapsed() < timeout)
            .map(|t| t.value.clone())
    }

    /// What is known of `path`: its own entry, or else its absence from a listing of its
    /// directory. That a name is missing is trusted for [`COHERENCE`] only (in a directory the
    /// mount made, for that long after its last change there): a file made on the server
    /// appears at the next lookup after a second ("build there, look here").
    pub fn name(&self, path: &[u8]) -> Option<Known> {
        self.name_within(path, self.config.stat_timeout)
    }

    /// [`MetaCache::name`] for an open: attributes at most [`COHERENCE`] old.
    pub fn name_for_open(&self, path: &[u8]) -> Option<Known> {
        self.name_within(path, COHERENCE)
    }

    fn name_within(&self, path: &[u8], attrs_for: Duration) -> Option<Known> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let (dir, name) = split(path).unzip();
        let checked = dir.is_some_and(|dir| {
            inner
                .checked_listings
                .peek(dir)
                .is_some_and(|listing| listing.checked.elapsed() < COHERENCE)
        });
        let absent_for = match checked {
            true => self.config.dir_timeout,
            false => COHERENCE,
        };
        match inner.names.get(path) {
            Some(Timed {
                value: Known::Attrs(attrs),
                at,
            }) if at.elapsed() < attrs_for.min(self.config.stat_timeout) => {
                return Some(Known::Attrs(attrs.clone()));
            }
            Some(Timed {
                value: Known::Missing,
                at,
            }) if at.elapsed() < absent_for.min(self.config.stat_timeout) => {
                return Some(Known::Missing);
            }
            _ => {}
        }
        let (dir, name) = (dir?, name?);
        let listed = Self::fresh(inner.dirs.get(dir), absent_for.min(self.config.dir_timeout))?;
        (!listed.iter().any(|n| n[..] == *name)).then_some(Known::Missing)
    }

    /// The directory of `path`, when its listing was taken, changed or checked more than
    /// [`COHERENCE`] ago: its mtime is to be asked before a name missing from it is taken as
    /// missing (see [`MetaCache::listing_checked`]).
    pub fn listing_to_check(&self, path: &[u8]) -> Option<ListingCheck> {
        let (dir, _) = split(path)?;
        let inner = self.inner.lock().unwrap();
        // The server itself said so within the second: as good as asking it again, whatever
        // the listing is worth (git's checkout stats a missing directory up to three times
        // before its mkdir; each cost a round trip while the directory was due a check).
        if let Some(Timed {
            value: Known::Missing,
            at,
        }) = inner.names.peek(path)
            && at.elapsed() < COHERENCE
        {
            return None;
        }
        self.check_of(&inner, dir)
    }

    /// The listings due a check, other than `except`'s, the ones listed or checked last
    /// first, `n` at most (see [`MetaCache::listing_to_check`]).
    pub fn listings_due(&self, except: &[u8], n: usize) -> Vec<ListingCheck> {
        let inner = self.inner.lock().unwrap();
        inner
            .checked_listings
            .iter()
            .filter(|(dir, _)| dir[..] != *except)
            .filter_map(|(dir, _)| self.check_of(&inner, dir))
            .take(n)
            .collect()
    }

    /// [`MetaCache::listing_to_check`] for the listing of `dir` itself, if the mount made it.
    pub fn made_listing_to_check(&self, dir: &[u8]) -> Option<ListingCheck> {
        let inner = self.inner.lock().unwrap();
        let made = inner.checked_listings.peek(dir).is_some_and(|o| o.made);
        made.then(|| self.check_of(&inner, dir)).flatten()
    }

    fn check_of(&self, inner: &Inner, dir: &[u8]) -> Option<ListingCheck> {
        if !self.config.enabled {
            return None;
        }
        let own = inner.checked_listings.peek(dir)?;
        let listed = inner.dirs.peek(dir)?;
        if own.checked.elapsed() < COHERENCE || listed.at.elapsed() >= self.config.dir_timeout {
            return None;
        }
        Some(ListingCheck {
            dir: dir.to_vec(),
            mtime: own.mtime?,
            settled: own.settled,
            since: own.checked,
        })
    }

    /// What the check of a listing's directory found: `Some(settled)` when its mtime is still
    /// the one the listing or the mount's last change left (`settled`: and its listing was just
    /// read again, see [`CheckedListing::settled`]), `None` when someone else changed it: its
    /// missing names are asked for again.
    pub fn listing_checked(&self, check: &ListingCheck, unchanged: Option<bool>) {
        let mut inner = self.inner.lock().unwrap();
        let current = inner.checked_listings.peek(&check.dir).copied();
        if current.is_some_and(|listing| listing.checked != check.since) {
            return;
        }
        match unchanged {
            Some(settled) => {
                // A listing read again replaced the one checked: it is checked again.
                let made = current.is_some_and(|listing| listing.made);
                let own = CheckedListing {
                    checked: Instant::now(),
                    mtime: Some(check.mtime),
                    made,
                    settled: settled || check.settled,
                };
                if inner.dirs.peek(&check.dir).is_some() {
                    inner.checked_listings.put(check.dir.clone(), own);
                }
            }
            None => {
                // Someone else changed it: its listing is not the directory any more.
                inner.epoch += 1;
                inner.pop_listing(&check.dir);
            }
        }
    }

    /// The cache to store in, unless it is off, a name changed since `ticket`, or so did the
    /// attributes of `path` (what is stored describes it).
    fn lock_if_current(&self, ticket: Ticket, path: &[u8]) -> Option<MutexGuard<'_, Inner>> {
        if !self.config.enabled {
            return None;
        }
        let inner = self.inner.lock().unwrap();
        inner.current(ticket, path).then_some(inner)
    }

    /// The whole contents of `path`, unless the name is known to have other attributes (size
    /// and mtime) than they were read under. Kept past the attribute timeout, as the kernel
    /// keeps a file's pages: an open asks the attributes again to use them (unless `recent`),
    /// so that a file read once and opened again and again (git's HEAD, a build's headers)
    /// costs that stat, not an OPEN and a READ.
    pub fn contents(&self, path: &[u8]) -> Option<KeptContents> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let now = match Self::fresh(inner.names.get(path), self.config.stat_timeout) {
            Some(Known::Attrs(now)) => Some(now),
            Some(Known::Missing) => return None,
            None => None,
        };
        let kept = inner.contents.get(path)?;
        if now
            .as_ref()
            .is_some_and(|now| now.size_and_mtime() != kept.value.attrs.size_and_mtime())
        {
            return None;
        }
        Some(KeptContents {
            contents: kept.value.clone(),
            recent: now.is_some() && kept.at.elapsed() < COHERENCE,
        })
    }

    /// `path`'s contents were opened from memory, its attributes as the name has them now:
    /// kept apart from those only read (see [`ContentsStore`]), and, when the name's
    /// attributes were asked after the contents were read and still match them (not racy:
    /// read after the second of their mtime), as good as read when those were asked, so that
    /// opening the file again within [`COHERENCE`] of that costs no round trip (git opens HEAD
    /// three or four times per command).
    pub fn contents_used(&self, path: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        let confirmed = match inner.names.peek(path) {
            Some(Timed {
                value: Known::Attrs(attrs),
                at,
            }) => Some((attrs.size_and_mtime(), *at)),
            _ => None,
        };
        inner.contents.used(path);
        if let Some(kept) = inner.contents.get(path)
            && let Some((now, at)) = confirmed
            && now == kept.value.attrs.size_and_mtime()
            && !kept.value.racy
            && at > kept.at
        {
            kept.at = at;
        }
    }

    /// Keeps `contents` as the whole contents of `path` while it has their attributes.
    pub fn put_contents(&self, ticket: Ticket, path: Vec<u8>, contents: Contents) {
        if let Some(mut inner) = self.lock_if_current(ticket, &path) {
            inner.keep_contents(path, Timed::now(contents));
        }
    }

    pub fn put_name(&self, ticket: Ticket, path: Vec<u8>, known: Known) {
        let Some(mut inner) = self.lock_if_current(ticket, &path) else {
            return;
        };
        // A name found that the directory's listing lacks: the listing is older than this
        // answer, someone else changed the directory since. (A name found missing that the
        // listing has makes it unusable already, see `listing`.) Only a name not known to
        // exist is looked for: a stat of a listed name costs no scan of a large listing.
        let known_before = matches!(
            inner.names.peek(&path),
            Some(Timed {
                value: Known::Attrs(_),
                ..
            })
        );
        if matches!(known, Known::Attrs(_))
            && !known_before
            && let Some((dir, name)) = split(&path)
            && let Some(listing) = inner.dirs.peek(dir)
            && !listing.value.iter().any(|n| n[..] == *name)
        {
            let dir = dir.to_vec();
            inner.pop_listing(&dir);
        }
        inner.names.put(path, Timed::now(known));
    }

    pub fn link(&self, path: &[u8]) -> Option<Bytes> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        Self::fresh(inner.links.get(path), self.config.link_timeout)
    }

    pub fn put_link(&self, ticket: Ticket, path: Vec<u8>, target: Bytes) {
        if let Some(mut inner) = self.lock_if_current(ticket, &path) {
            inner.links.put(path, Timed::now(target));
        }
    }

    /// The listing of `dir` with every entry's attributes, if all of it is still fresh;
    /// `usable(name)` may refuse an entry (its file has writes in flight).
    pub fn listing(
        &self,
        dir: &[u8],
        usable: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<(Bytes, Attrs)>> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let names = Self::fresh(inner.dirs.get(dir), self.config.dir_timeout)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = join(dir, &name);
            if !usable(&path) {
                return None;
            }
            match Self::fresh(inner.names.get(&path), self.config.stat_timeout)? {
                Known::Attrs(attrs) => out.push((name, attrs)),
                Known::Missing => return None,
            }
        }
        Some(out)
    }

    /// The names of `dir`'s listing, if it is within the listing timeout.
    fn fresh_listing<'a>(&self, inner: &'a mut Inner, dir: &[u8]) -> Option<&'a [Bytes]> {
        inner
            .dirs
            .get(dir)
            .filter(|t| t.at.elapsed() < self.config.dir_timeout)
            .map(|t| &t.value[..])
    }

    /// Where `name` stands in the fresh listing of `dir` (looked for at `hint` first), and the
    /// names after it whose fresh attributes `wanted` accepts, `n` at most, as paths.
    pub fn names_after(
        &self,
        dir: &[u8],
        name: &[u8],
        hint: usize,
        n: usize,
        wanted: impl Fn(&Attrs) -> bool,
    ) -> Option<(usize, Vec<PathAttrs>)> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let names = self.fresh_listing(&mut inner, dir)?;
        let at = if names.get(hint).is_some_and(|n| n[..] == *name) {
            hint
        } else {
            names.iter().position(|n| n[..] == *name)?
        };
        // Not the whole listing: a directory of thousands is read one file at a time.
        let ahead: Vec<Bytes> = names[at + 1..].iter().take(4 * n + 16).cloned().collect();
        let mut out = Vec::new();
        for next in &ahead {
            if out.len() == n {
                break;
            }
            let path = join(dir, next);
            if let Some(Known::Attrs(attrs)) =
                Self::fresh(inner.names.get(&path), self.config.stat_timeout)
                && wanted(&attrs)
            {
                out.push((path, attrs));
            }
        }
        Some((at, out))
    }

    /// The names in the fresh listing of `dir` whose fresh attributes `wanted` accepts, in
    /// byte order (git's, and a shell glob's in the C locale), with their sizes; `None`
    /// without such a listing or with more than `max` of them.
    pub fn names_sorted(
        &self,
        dir: &[u8],
        max: usize,
        wanted: impl Fn(&Attrs) -> bool,
    ) -> Option<Vec<(Bytes, u64)>> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let listing = self.fresh_listing(&mut inner, dir)?.to_vec();
        let mut out = Vec::new();
        for name in listing.iter() {
            if let Some(Known::Attrs(attrs)) =
                Self::fresh(inner.names.get(&join(dir, name)), self.config.stat_timeout)
                && wanted(&attrs)
            {
                if out.len() == max {
                    return None;
                }
                out.push((name.clone(), attrs.size.unwrap_or(0)));
            }
        }
        out.sort_unstable();
        Some(out)
    }

    /// Whether the cache still holds a listing of `dir`, timed out or not.
    pub fn listed_before(&self, dir: &[u8]) -> bool {
        self.config.enabled && self.inner.lock().unwrap().dirs.peek(dir).is_some()
    }

    /// Whether `dir` was listed within the listing timeout and had more names than the cache
    /// keeps.
    pub fn too_large(&self, dir: &[u8]) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .too_large
            .peek(dir)
            .is_some_and(|at| at.elapsed() < self.config.dir_timeout)
    }

    /// The subdirectories in a fresh cached listing of `dir`, as paths.
    pub fn subdirs(&self, dir: &[u8]) -> Option<Vec<Vec<u8>>> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let names = Self::fresh(inner.dirs.get(dir), self.config.dir_timeout)?;
        Some(
            names
                .iter()
                .map(|name| join(dir, name))
                .filter(|path| {
                    matches!(inner.names.peek(path), Some(Timed { value: Known::Attrs(a), .. })
                        if is_dir(a))
                })
                .collect(),
        )
    }

    /// Stores a listing and its entries' attributes, except entries `usable` refuses.
    pub fn put_listing(
        &self,
        ticket: Ticket,
        dir: &[u8],
        listed: Listed,
        usable: impl Fn(&[u8]) -> bool,
    ) {
        let entries = listed.entries;
        if !self.config.enabled {
            return;
        }
        if entries.len() > self.config.max_entries {
            let mut inner = self.inner.lock().unwrap();
            inner.too_large.put(dir.to_vec(), Instant::now());
            return;
        }
        let max_entries = self.config.max_entries;
        let Some(mut inner) = self.lock_if_current(ticket, dir) else {
            return;
        };
        for (name, attrs) in entries {
            let path = join(dir, name);
            // An entry whose attributes changed through the mount meanwhile is listed as
            // it was before.
            if usable(&path) && !inner.attrs_changed_since(ticket, &path) {
                inner
                    .names
                    .put(path, Timed::now(Known::Attrs(attrs.clone())));
            } else {
                inner.names.pop(&path);
            }
        }
        let names: Vec<Bytes> = entries.iter().map(|(n, _)| n.clone()).collect();
        // Its names stay trusted while the directory's mtime stays what it was (asked once a
        // second when a name missing from it is looked up), as for a directory the mount
        // made. Not a time of 0: a server that shows no times for directories.
        match listed.dir_mtime.filter(|&mtime| mtime != 0) {
            Some(mtime) => {
                let made = inner.checked_listings.peek(dir).is_some_and(|o| o.made);
                let checked = CheckedListing {
                    checked: listed.since,
                    mtime: Some(mtime),
                    made,
                    // Listed after the second of its mtime was over: any change since moves it.
                    settled: !racy(mtime, now_secs()),
                };
                inner.checked_listings.put(dir.to_vec(), checked);
            }
            None => {
                inner.checked_listings.pop(dir);
            }
        }
        inner.listed += names.len();
        if let Some(old) = inner.dirs.put(dir.to_vec(), Timed::now(names)) {
            inner.listed -= old.value.len();
        }
        while inner.listed > max_entries {
            match inner.dirs.pop_lru() {
                Some((_, old)) => inner.listed -= old.value.len(),
                None => break,
            }
        }
    }

    /// Forgets what is known of a name (its attributes, target, listing) and of its directory
    /// (listing, attributes): the name was created, changed, renamed or removed through the
    /// mount.
    pub fn invalidate(&self, path: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        inner.epoch += 1;
        inner.names.pop(path);
        inner.pop_contents(path);
        inner.links.pop(path);
        inner.pop_listing(path);
        if let Some(dir) = parent(path) {
            inner.names.pop(dir);
            inner.pop_listing(dir);
        }
    }

    /// [`MetaCache::invalidate`], and everything below `path`: a directory was renamed.
    pub fn invalidate_tree(&self, path: &[u8]) {
        self.invalidate(path);
        let under = join(path, b"");
        let mut inner = self.inner.lock().unwrap();
        let below = |keys: &mut dyn Iterator<Item = &Vec<u8>>| -> Vec<Vec<u8>> {
            keys.filter(|k| k.starts_with(&under)).cloned().collect()
        };
        for key in below(&mut inner.names.iter().map(|(k, _)| k)) {
            inner.names.pop(&key);
        }
        let contents = below(&mut inner.contents.paths());
        for key in contents {
            inner.pop_contents(&key);
        }
        for key in below(&mut inner.links.iter().map(|(k, _)| k)) {
            inner.links.pop(&key);
        }
        for key in below(&mut inner.dirs.iter().map(|(k, _)| k)) {
            inner.pop_listing(&key);
        }
    }

    /// `path` was created through the mount (`attrs`: as the server showed it just after).
    /// Its directory's listing, if cached, gains the name instead of being dropped, so that
    /// other names of it can still be looked up without a round trip (untarring into a
    /// directory); a directory just made is known empty.
    pub fn created(&self, path: &[u8], attrs: Attrs, dir_after: DirAfter) {
        let mut inner = self.inner.lock().unwrap();
        self.created_in(&mut inner, path, Some(attrs), dir_after);
    }

    fn created_in(
        &self,
        inner: &mut Inner,
        path: &[u8],
        attrs: Option<Attrs>,
        dir_after: DirAfter,
    ) {
        let made_dir = attrs.as_ref().is_some_and(is_dir);
        let attrs_mtime = attrs.as_ref().and_then(|a| a.atime_mtime).map(|t| t.1);
        let dir_after = dir_after.filter(|_| self.config.enabled);
        let known = attrs.and_then(|a| self.known(Known::Attrs(a)));
        let Some((dir, name)) = inner.changed_in_place(path, known, dir_after) else {
            return;
        };
        if let Some(listing) = inner.dirs.get_mut(dir)
            && !listing.value.iter().any(|n| n[..] == *name)
        {
            listing.value.push(Bytes::copy_from_slice(name));
            inner.listed += 1;
        }
        if made_dir && self.config.enabled {
            inner.dirs.put(path.to_vec(), Timed::now(Vec::new()));
            let own = CheckedListing {
                checked: Instant::now(),
                mtime: attrs_mtime,
                made: true,
                settled: false,
            };
            inner.checked_listings.put(path.to_vec(), own);
        }
    }

    /// `path` was removed through the mount: known missing, and gone from its directory's
    /// listing (kept, so that the directory's other names need no round trip).
    pub fn removed(&self, path: &[u8], dir_after: DirAfter) {
        let mut inner = self.inner.lock().unwrap();
        self.removed_in(&mut inner, path, dir_after);
    }

    /// A file renamed through the mount from `from` to `to`, both in the directory `dir_after`
    /// describes (if given): it keeps `attrs`, and the listing is edited, not dropped.
    /// `attrs`: the file's, if they are known (a file the mount just wrote is known as one,
    /// its attributes not).
    pub fn renamed(&self, from: &[u8], to: &[u8], attrs: Option<Attrs>, dir_after: DirAfter) {
        let mut inner = self.inner.lock().unwrap();
        let dir_after = dir_after
            .filter(|(ticket, _)| split(to).is_some_and(|(dir, _)| inner.current(*ticket, dir)));
        // The contents go along with the name.
        let contents = inner.pop_contents(from);
        self.removed_in(&mut inner, from, None);
        // One change: the ticket checked above holds for both halves.
        let dir_after = dir_after.map(|(_, attrs)| (inner.ticket(), attrs));
        self.created_in(&mut inner, to, attrs, dir_after);
        if let Some(contents) = contents {
            inner.keep_contents(to.to_vec(), contents);
        }
    }

    fn removed_in(&self, inner: &mut Inner, path: &[u8], dir_after: DirAfter) {
        let dir_after = dir_after.filter(|_| self.config.enabled);
        let Some((dir, name)) = inner.changed_in_place(path, self.known(Known::Missing), dir_after)
        else {
            return;
        };
        if let Some(listing) = inner.dirs.get_mut(dir)
            && let Some(at) = listing.value.iter().position(|n| n[..] == *name)
        {
            listing.value.swap_remove(at);
            inner.listed -= 1;
        }
    }

    /// Forgets a name's attributes only (its contents changed; the listing's names did not).
    pub fn invalidate_attrs(&self, path: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        inner.attrs_seq += 1;
        let seq = inner.attrs_seq;
        inner.attrs_changed.push_back((seq, path.to_vec()));
        if inner.attrs_changed.len() > ATTRS_LOG {
            inner.attrs_changed.pop_front();
        }
        inner.names.pop(path);
        inner.pop_contents(path);
    }
}

impl Inner {
    fn ticket(&self) -> Ticket {
        Ticket {
            epoch: self.epoch,
            attrs_seq: self.attrs_seq,
        }
    }

    /// Whether what was fetched of `path` under `ticket` may be stored: no name changed since,
    /// nor did `path`'s attributes.
    fn current(&self, ticket: Ticket, path: &[u8]) -> bool {
        self.epoch == ticket.epoch && !self.attrs_changed_since(ticket, path)
    }

    /// Whether the attributes of `path` changed through the mount since `ticket` (or may have:
    /// the log no longer reaches back that far).
    fn attrs_changed_since(&self, ticket: Ticket, path: &[u8]) -> bool {
        if ticket.attrs_seq == self.attrs_seq {
            return false;
        }
        let logged_from = self.attrs_changed.front().map_or(u64::MAX, |(seq, _)| *seq);
        if logged_from > ticket.attrs_seq + 1 {
            return true;
        }
        self.attrs_changed
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > ticket.attrs_seq)
            .any(|(_, changed)| changed[..] == *path)
    }

    /// What a creation or removal of `path` through the mount makes stale, dropped: its target,
    /// its listing, its directory's attributes (their mtime moved), unless `dir_after` has them
    /// as the change left them; `now` is what the name is known to be. The directory's listing
    /// is left for the caller to edit. Returns the directory and the name.
    fn changed_in_place<'p>(
        &mut self,
        path: &'p [u8],
        now: Option<Known>,
        dir_after: DirAfter,
    ) -> Option<(&'p [u8], &'p [u8])> {
        let dir_now = dir_after
            .filter(|(ticket, _)| split(path).is_some_and(|(dir, _)| self.current(*ticket, dir)))
            .map(|(_, attrs)| attrs);
        self.epoch += 1;
        self.links.pop(path);
        self.pop_listing(path);
        self.pop_contents(path);
        match now {
            Some(known) => self.names.put(path.to_vec(), Timed::now(known)),
            None => self.names.pop(path),
        };
        let (dir, name) = split(path)?;
        if let Some(own) = self.checked_listings.get_mut(dir) {
            own.checked = Instant::now();
            own.mtime = dir_now.as_ref().and_then(|a| a.atime_mtime).map(|t| t.1);
            own.settled = false;
        }
        match dir_now {
            Some(attrs) => self
                .names
                .put(dir.to_vec(), Timed::now(Known::Attrs(attrs))),
            None => self.names.pop(dir),
        };
        Some((dir, name))
    }

    fn pop_contents(&mut self, path: &[u8]) -> Option<Timed<Contents>> {
        self.contents.pop(path)
    }

    fn keep_contents(&mut self, path: Vec<u8>, contents: Timed<Contents>) {
        self.contents.put(path, contents);
    }

    fn pop_listing(&mut self, dir: &[u8]) {
        self.checked_listings.pop(dir);
        if let Some(old) = self.dirs.pop(dir) {
            self.listed -= old.value.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(size: u64) -> Attrs {
        Attrs {
            size: Some(size),
            permissions: Some(0o100644),
            ..Default::default()
        }
    }

    fn dir_attrs(mtime: u32) -> Attrs {
        let mut a = attrs(0);
        a.permissions = Some(0o040755);
        a.atime_mtime = Some((mtime, mtime));
        a
    }

    /// A cache where /r/d is a directory the mount made (mtime 100) and last changed more than
    /// a second ago: a name missing from it is due a check of its mtime.
    fn own_dir_due() -> MetaCache {
        let c = cache(10_000, 100);
        c.created(b"/r/d", dir_attrs(100), None);
        c.created(b"/r/d/f", attrs(1), Some((c.ticket(), dir_attrs(100))));
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        c
    }

    fn cache(timeout_ms: u64, max_entries: usize) -> MetaCache {
        let t = Duration::from_millis(timeout_ms);
        MetaCache::new(CacheConfig {
            enabled: true,
            stat_timeout: t,
            dir_timeout: t,
            link_timeout: t,
            max_entries,
        })
    }

    fn kept(attrs: Attrs, data: &Bytes) -> Contents {
        Contents {
            attrs,
            data: data.clone(),
            racy: false,
        }
    }

    fn entries(names: &[&'static [u8]]) -> Vec<(Bytes, Attrs)> {
        names
            .iter()
            .map(|n| (Bytes::from_static(n), attrs(n.len() as u64)))
            .collect()
    }

    #[test]
    fn paths_join_and_split() {
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(join(b"/srv", b"a"), b"/srv/a");
        assert_eq!(parent(b"/srv/a"), Some(&b"/srv"[..]));
        assert_eq!(parent(b"/a"), Some(&b"/"[..]));
        assert_eq!(parent(b"/"), None);
    }

    #[test]
    fn entries_expire_after_their_timeout() {
        let c = cache(50, 100);
        c.put_name(c.ticket(), b"/r/a".to_vec(), Known::Attrs(attrs(3)));
        c.put_name(c.ticket(), b"/r/gone".to_vec(), Known::Missing);
        assert_eq!(c.name(b"/r/a"), Some(Known::Attrs(attrs(3))));
        assert_eq!(c.name(b"/r/gone"), Some(Known::Missing));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.name(b"/r/a"), None);
        assert_eq!(c.name(b"/r/gone"), None);
    }

    #[test]
    fn contents_are_kept_while_their_name_has_the_attributes_they_were_read_under() {
        let c = cache(10_000, 100);
        let data = Bytes::from_static(b"abc");
        let store = |path: &[u8], size| {
            let t = c.ticket();
            c.put_name(t, path.to_vec(), Known::Attrs(attrs(size)));
            c.put_contents(t, path.to_vec(), kept(attrs(size), &data));
        };
        store(b"/r/a", 3);
        assert_eq!(
            c.contents(b"/r/a").map(|k| k.contents.data),
            Some(data.clone())
        );
        // The name seen again with other attributes: the contents are another file's.
        c.put_name(c.ticket(), b"/r/a".to_vec(), Known::Attrs(attrs(4)));
        assert!(c.contents(b"/r/a").is_none());
        // Each change through the mount drops them.
        type Change = fn(&MetaCache);
        let changes: [Change; 5] = [
            |c| c.invalidate_attrs(b"/r/a"),
            |c| c.invalidate(b"/r/a"),
            |c| c.invalidate_tree(b"/r"),
            |c| c.removed(b"/r/a", None),
            |c| c.created(b"/r/a", attrs(3), None),
        ];
        for change in changes {
            store(b"/r/a", 3);
            assert!(c.contents(b"/r/a").is_some());
            change(&c);
            assert!(c.contents(b"/r/a").is_none());
        }
        // A read that raced a change is not kept.
        let before = c.ticket();
        c.put_name(before, b"/r/b".to_vec(), Known::Attrs(attrs(3)));
        c.invalidate_attrs(b"/r/b");
        c.put_contents(before, b"/r/b".to_vec(), kept(attrs(3), &data));
        assert!(c.contents(b"/r/b").is_none());
        // Past the attributes' timeout they are kept, no longer to be used without asking.
        let c = cache(50, 100);
        let t = c.ticket();
        c.put_name(t, b"/r/a".to_vec(), Known::Attrs(attrs(3)));
        c.put_contents(t, b"/r/a".to_vec(), kept(attrs(3), &data));
        assert!(c.contents(b"/r/a").is_some_and(|k| k.recent));
        std::thread::sleep(Duration::from_millis(80));
        assert!(c.contents(b"/r/a").is_some_and(|k| !k.recent));
        c.put_name(c.ticket(), b"/r/a".to_vec(), Known::Attrs(attrs(4)));
        assert!(c.contents(b"/r/a").is_none());
    }

    #[test]
    fn a_directory_keeps_the_attributes_asked_behind_a_change_in_it_if_nothing_else_changed() {
        let c = cache(10_000, 100);
        let dir = |c: &MetaCache| match c.name(b"/r") {
            Some(Known::Attrs(a)) => a.size,
            _ => None,
        };
        c.put_listing(
            c.ticket(),
            b"/r",
            Listed::entries(&entries(&[b"a"])),
            |_| true,
        );
        // Created, the directory's attributes from right behind the change: kept.
        let before = c.ticket();
        c.created(b"/r/b", attrs(1), Some((before, attrs(7))));
        assert_eq!(dir(&c), Some(7));
        // Something else changed between the request and the reply: dropped.
        let before = c.ticket();
        c.invalidate(b"/elsewhere");
        c.removed(b"/r/a", Some((before, attrs(8))));
        assert_eq!(dir(&c), None);
        // A file's contents changed meanwhile: the directory's attributes did not.
        let before = c.ticket();
        c.invalidate_attrs(b"/r/b");
        c.created(b"/r/a", attrs(1), Some((before, attrs(10))));
        assert_eq!(dir(&c), Some(10));
        // Gone again, as the rename below expects.
        c.removed(b"/r/a", Some((before, attrs(8))));
        // A rename within the directory: the listing edited, the file's attributes moved.
        let before = c.ticket();
        c.renamed(b"/r/b", b"/r/c", Some(attrs(1)), Some((before, attrs(9))));
        assert_eq!(dir(&c), Some(9));
        assert_eq!(c.name(b"/r/b"), Some(Known::Missing));
        assert_eq!(c.name(b"/r/c"), Some(Known::Attrs(attrs(1))));
        assert_eq!(c.name(b"/r/zz"), Some(Known::Missing));
    }

    #[test]
    fn a_missing_name_and_an_open_trust_the_cache_a_second_except_in_the_mounts_own_directories() {
        let c = cache(10_000, 100);
        c.put_listing(
            c.ticket(),
            b"/r",
            Listed::entries(&entries(&[b"a"])),
            |_| true,
        );
        c.put_name(c.ticket(), b"/r/gone".to_vec(), Known::Missing);
        c.created(b"/r/d", dir_attrs(100), None);
        c.created(b"/r/d/f", attrs(1), None);
        for path in [&b"/r/b"[..], b"/r/gone", b"/r/d/x"] {
            assert_eq!(c.name(path), Some(Known::Missing));
        }
        assert_eq!(c.name_for_open(b"/r/a"), Some(Known::Attrs(attrs(1))));
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        // The server may have made them meanwhile: asked again.
        assert_eq!(c.name(b"/r/b"), None);
        assert_eq!(c.name(b"/r/gone"), None);
        // A directory the mount made: trusted while the mount keeps changing it, then while
        // its mtime (asked once a second) is the one the mount's last change left.
        assert_eq!(c.name(b"/r/d/x"), None);
        c.created(b"/r/d/g", attrs(1), Some((c.ticket(), dir_attrs(101))));
        assert_eq!(c.name(b"/r/d/x"), Some(Known::Missing));
        assert!(
            c.listing_to_check(b"/r/d/x").is_none(),
            "checked a moment ago"
        );
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        assert_eq!(c.name(b"/r/d/x"), None);
        let check = c.listing_to_check(b"/r/d/x").unwrap();
        assert_eq!(
            (&check.dir[..], check.mtime, check.settled),
            (&b"/r/d"[..], 101, false)
        );
        c.listing_checked(&check, Some(true));
        assert_eq!(c.name(b"/r/d/x"), Some(Known::Missing));
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        let check = c.listing_to_check(b"/r/d/x").unwrap();
        assert!(check.settled);
        // Someone else changed it.
        c.listing_checked(&check, None);
        assert_eq!(c.name(b"/r/d/x"), None);
        assert!(c.listing_to_check(b"/r/d/x").is_none());
        c.created(b"/r/e", dir_attrs(100), None);
        // Attributes: kept for a stat, asked again for an open.
        assert_eq!(c.name(b"/r/a"), Some(Known::Attrs(attrs(1))));
        assert_eq!(c.name_for_open(b"/r/a"), None);
        // Listed from the server without its directory's mtime: nothing to check it by.
        assert_eq!(c.name(b"/r/e/x"), Some(Known::Missing));
        c.put_listing(
            c.ticket(),
            b"/r/e",
            Listed::entries(&entries(&[b"f"])),
            |_| true,
        );
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        c.created(b"/r/e/g", attrs(1), None);
        assert_eq!(c.name(b"/r/e/x"), None);
    }

    #[test]
    fn a_name_the_server_just_said_is_missing_needs_no_check_of_its_own_directory() {
        let c = own_dir_due();
        assert!(
            c.listing_to_check(b"/r/d/x").is_some(),
            "the directory is due"
        );
        c.put_name(c.ticket(), b"/r/d/x".to_vec(), Known::Missing);
        assert_eq!(c.name(b"/r/d/x"), Some(Known::Missing));
        assert!(c.listing_to_check(b"/r/d/x").is_none());
        assert!(
            c.listing_to_check(b"/r/d/y").is_some(),
            "only the name asked"
        );
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        assert!(
            c.listing_to_check(b"/r/d/x").is_some(),
            "asked more than a second ago"
        );
    }

    #[test]
    fn a_check_of_an_own_directory_that_crossed_a_change_through_the_mount_is_ignored() {
        let c = own_dir_due();
        // The check's LSTAT of the directory went out, then the mount made a name in it (the
        // mtime moved to 101), then the check came back.
        let check = c.listing_to_check(b"/r/d/x").unwrap();
        c.created(b"/r/d/g", attrs(1), Some((c.ticket(), dir_attrs(101))));
        c.listing_checked(&check, None);
        assert_eq!(
            c.name(b"/r/d/x"),
            Some(Known::Missing),
            "the listing is kept"
        );
        // A re-listing begun before the change does not put the old mtime back.
        c.listing_checked(&check, Some(true));
        std::thread::sleep(COHERENCE + Duration::from_millis(100));
        let check = c.listing_to_check(b"/r/d/x").unwrap();
        assert_eq!((check.mtime, check.settled), (101, false));
    }

    #[test]
    fn names_after_follow_the_listing_order() {
        let c = cache(10_000, 100);
        let mut list = entries(&[b"a", b"d", b"b", b"c"]);
        list[1].1.permissions = Some(0o040755);
        c.put_listing(c.ticket(), b"/r", Listed::entries(&list), |_| true);
        let files = |a: &Attrs| a.permissions == Some(0o100644);
        let (at, after) = c.names_after(b"/r", b"a", 0, 8, files).unwrap();
        assert_eq!(at, 0);
        let paths: Vec<&[u8]> = after.iter().map(|(p, _)| &p[..]).collect();
        assert_eq!(paths, [&b"/r/b"[..], b"/r/c"]);
        // A wrong hint costs a search, not a wrong answer.
        let (at, after) = c.names_after(b"/r", b"b", 0, 1, files).unwrap();
        assert_eq!((at, after.len()), (2, 1));
        assert!(c.names_after(b"/r", b"zz", 0, 8, files).is_none());
    }

    #[test]
    fn a_fetch_that_raced_an_invalidation_is_not_stored() {
        let c = cache(10_000, 100);
        let before = c.ticket();
        c.invalidate(b"/r/other");
        c.put_name(before, b"/r/a".to_vec(), Known::Attrs(attrs(1)));
        c.put_link(before, b"/r/a".to_vec(), Bytes::from_static(b"t"));
        c.put_listing(before, b"/r", Listed::entries(&entries(&[b"a"])), |_| true);
        assert_eq!(c.name(b"/r/a"), None);
        assert_eq!(c.link(b"/r/a"), None);
        assert!(c.listing(b"/r", |_| true).is_none());
    }

    #[test]
    fn a_fetch_is_refused_only_by_attribute_changes_of_what_it_describes() {
        let c = cache(10_000, 100);
        let before = c.ticket();
        c.invalidate_attrs(b"/r/other");
        c.put_name(before, b"/r/a".to_vec(), Known::Missing);
        assert_eq!(c.name(b"/r/a"), Some(Known::Missing));
        c.invalidate_attrs(b"/r/b");
        c.put_name(before, b"/r/b".to_vec(), Known::Attrs(attrs(1)));
        assert_eq!(c.name(b"/r/b"), None, "its own attributes changed");
        // A listing keeps its names; an entry changed meanwhile is not taken from it.
        c.put_listing(
            before,
            b"/r",
            Listed::entries(&entries(&[b"b", b"c"])),
            |_| true,
        );
        assert_eq!(c.name(b"/r/c"), Some(Known::Attrs(attrs(1))));
        assert_eq!(c.name(b"/r/b"), None);
        assert_eq!(c.name(b"/r/zz"), Some(Known::Missing));
        // Once more changes came than are remembered, any older fetch is refused.
        let before = c.ticket();
        for i in 0..=ATTRS_LOG {
            c.invalidate_attrs(format!("/r/f{i}").as_bytes());
        }
        c.put_name(before, b"/s/d".to_vec(), Known::Attrs(attrs(1)));
        assert_eq!(c.name(b"/s/d"), None);
    }

    #[test]
    fn listing_needs_every_entry_fresh_and_usable() {
        let c = cache(10_000, 100);
        let listed = entries(&[b"a", b"bb"]);
        c.put_listing(c.ticket(), b"/d", Listed::entries(&listed), |_| true);
        assert_eq!(c.name(b"/d/bb"), Some(Known::Attrs(attrs(2))));
        assert_eq!(c.listing(b"/d", |_| true).unwrap(), listed);
        assert!(c.listing(b"/d", |p| p != b"/d/bb").is_none());
        c.invalidate_attrs(b"/d/bb");
        assert!(c.listing(b"/d", |_| true).is_none());
        // An entry refused at store time is not cached, so the listing is not served.
        c.put_listing(c.ticket(), b"/d", Listed::entries(&listed), |p| {
            p != b"/d/a"
        });
        assert!(c.listing(b"/d", |_| true).is_none());
        // A name created or removed in it, and the directory's own attributes with it.
        c.put_listing(c.ticket(), b"/d", Listed::entries(&listed), |_| true);
        c.put_name(c.ticket(), b"/d".to_vec(), Known::Attrs(attrs(0)));
        c.invalidate(b"/d/new");
        assert!(c.listing(b"/d", |_| true).is_none());
        assert_eq!(c.name(b"/d"), None);
        assert_eq!(c.name(b"/d/a"), Some(Known::Attrs(attrs(1))));
    }

    #[test]
    fn a_renamed_directory_takes_its_subtree_along() {
        let c = cache(10_000, 100);
        c.put_listing(
            c.ticket(),
            b"/d",
            Listed::entries(&entries(&[b"x"])),
            |_| true,
        );
        c.put_listing(
            c.ticket(),
            b"/d/x",
            Listed::entries(&entries(&[b"y"])),
            |_| true,
        );
        c.put_listing(
            c.ticket(),
            b"/dd",
            Listed::entries(&entries(&[b"z"])),
            |_| true,
        );
        c.put_link(c.ticket(), b"/d/x/l".to_vec(), Bytes::from_static(b"t"));
        c.invalidate_tree(b"/d");
        assert!(c.listing(b"/d", |_| true).is_none());
        assert!(c.listing(b"/d/x", |_| true).is_none());
        assert_eq!(c.name(b"/d/x/y"), None);
        assert_eq!(c.link(b"/d/x/l"), None);
        assert!(
            c.listing(b"/dd", |_| true).is_some(),
            "a sibling sharing a prefix stays"
        );
    }

    #[test]
    fn listings_are_bounded_by_their_total_entries() {
        let c = cache(10_000, 5);
        let three = entries(&[b"a", b"b", b"c"]);
        c.put_listing(c.ticket(), b"/1", Listed::entries(&three), |_| true);
        c.put_listing(c.ticket(), b"/2", Listed::entries(&three), |_| true);
        assert!(c.subdirs(b"/1").is_none(), "oldest listing evicted");
        assert!(c.subdirs(b"/2").is_some());
        let six = entries(&[b"a", b"b", b"c", b"d", b"e", b"f"]);
        c.put_listing(c.ticket(), b"/3", Listed::entries(&six), |_| true);
        assert!(c.subdirs(b"/3").is_none(), "too large to cache");
        assert!(c.too_large(b"/3") && !c.too_large(b"/2"));
    }

    #[test]
    fn disabled_cache_keeps_nothing() {
        let c = MetaCache::new(CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        });
        c.put_name(c.ticket(), b"/a".to_vec(), Known::Attrs(attrs(1)));
        assert_eq!(c.name(b"/a"), None);
    }
}
