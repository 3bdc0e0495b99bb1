//! The metadata cache: what the server told us about names (attributes, "no such name"),
//! symlink targets and directory listings, each kept for its timeout (sshfs's `dcache_*`
//! options) in bounded LRUs, so that `ls -l` twice or a build's thousands of stats do not each
//! cost a round trip.
//!
//! Names are keyed by (parent inode, name): a rename of a directory moves its subtree's keys with
//! it. The core invalidates what its own operations change; a fetch that raced with any
//! invalidation is not stored (the epoch ticket), so the cache never holds a state older than
//! one of our own changes.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lru::LruCache;

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

/// A name in a directory: (parent inode, name).
pub type NameKey = (u64, Bytes);

/// What the cache knows about a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    Attrs(Attrs),
    Missing,
}

/// Taken before a fetch; the fetch's result is stored only if nothing was invalidated since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

struct Timed<T> {
    value: T,
    at: Instant,
}

struct Inner {
    epoch: u64,
    names: LruCache<NameKey, Timed<Known>>,
    links: LruCache<NameKey, Timed<Bytes>>,
    dirs: LruCache<u64, Timed<Vec<Bytes>>>,
    /// Names in `dirs`, all listings together.
    listed: usize,
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
                names: LruCache::new(cap),
                links: LruCache::new(cap),
                // Bounded by `listed`; the count bound only keeps the table small.
                dirs: LruCache::new(cap),
                listed: 0,
            }),
        }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.inner.lock().unwrap().epoch)
    }

    fn fresh<T: Clone>(value: Option<&Timed<T>>, timeout: Duration) -> Option<T> {
        value
            .filter(|t| t.at.elapsed() < timeout)
            .map(|t| t.value.clone())
    }

    pub fn name(&self, key: &NameKey) -> Option<Known> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        Self::fresh(inner.names.get(key), self.config.stat_timeout)
    }

    pub fn put_name(&self, ticket: Ticket, key: NameKey, known: Known) {
        if !self.config.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        if inner.epoch == ticket.0 {
            inner.names.put(
                key,
                Timed {
                    value: known,
                    at: Instant::now(),
                },
            );
        }
    }

    pub fn link(&self, key: &NameKey) -> Option<Bytes> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        Self::fresh(inner.links.get(key), self.config.link_timeout)
    }

    pub fn put_link(&self, ticket: Ticket, key: NameKey, target: Bytes) {
        if !self.config.enabled {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        if inner.epoch == ticket.0 {
            inner.links.put(
                key,
                Timed {
                    value: target,
                    at: Instant::now(),
                },
            );
        }
    }

    /// The listing of `dir` with every entry's attributes, if all of it is still fresh;
    /// `usable(name)` may refuse an entry (its file has writes in flight).
    pub fn listing(
        &self,
        dir: u64,
        usable: impl Fn(&Bytes) -> bool,
    ) -> Option<Vec<(Bytes, Attrs)>> {
        if !self.config.enabled {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        let names = Self::fresh(inner.dirs.get(&dir), self.config.dir_timeout)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if !usable(&name) {
                return None;
            }
            let key = (dir, name);
            match Self::fresh(inner.names.get(&key), self.config.stat_timeout)? {
                Known::Attrs(attrs) => out.push((key.1, attrs)),
                Known::Missing => return None,
            }
        }
        Some(out)
    }

    /// Whether a fresh listing of `dir` is kept (its entries' attributes may not all be).
    pub fn has_listing(&self, dir: u64) -> bool {
        if !self.config.enabled {
            return false;
        }
        let inner = self.inner.lock().unwrap();
        inner
            .dirs
            .peek(&dir)
            .is_some_and(|t| t.at.elapsed() < self.config.dir_timeout)
    }

    /// Stores a listing and its entries' attributes, except entries `usable` refuses.
    pub fn put_listing(
        &self,
        ticket: Ticket,
        dir: u64,
        entries: &[(Bytes, Attrs)],
        usable: impl Fn(&Bytes) -> bool,
    ) {
        if !self.config.enabled || entries.len() > self.config.max_entries {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        if inner.epoch != ticket.0 {
            return;
        }
        let now = Instant::now();
        for (name, attrs) in entries {
            let key = (dir, name.clone());
            if usable(name) {
                let value = Known::Attrs(attrs.clone());
                inner.names.put(key, Timed { value, at: now });
            } else {
                inner.names.pop(&key);
            }
        }
        let names: Vec<Bytes> = entries.iter().map(|(n, _)| n.clone()).collect();
        inner.listed += names.len();
        if let Some(old) = inner.dirs.put(
            dir,
            Timed {
                value: names,
                at: now,
            },
        ) {
            inner.listed -= old.value.len();
        }
        while inner.listed > self.config.max_entries {
            match inner.dirs.pop_lru() {
                Some((_, old)) => inner.listed -= old.value.len(),
                None => break,
            }
        }
    }

    /// Forgets what is known of a name (its attributes, target) and of its directory's listing:
    /// the name was created, changed, renamed or removed through the mount.
    pub fn invalidate(&self, key: &NameKey) {
        let mut inner = self.inner.lock().unwrap();
        inner.epoch += 1;
        inner.names.pop(key);
        inner.links.pop(key);
        if let Some(old) = inner.dirs.pop(&key.0) {
            inner.listed -= old.value.len();
        }
    }

    /// Forgets a name's attributes only (its contents changed; the listing's names did not).
    pub fn invalidate_attrs(&self, key: &NameKey) {
        let mut inner = self.inner.lock().unwrap();
        inner.epoch += 1;
        inner.names.pop(key);
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

    fn key(parent: u64, name: &'static [u8]) -> NameKey {
        (parent, Bytes::from_static(name))
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

    #[test]
    fn entries_expire_after_their_timeout() {
        let c = cache(50, 100);
        c.put_name(c.ticket(), key(1, b"a"), Known::Attrs(attrs(3)));
        c.put_name(c.ticket(), key(1, b"gone"), Known::Missing);
        assert_eq!(c.name(&key(1, b"a")), Some(Known::Attrs(attrs(3))));
        assert_eq!(c.name(&key(1, b"gone")), Some(Known::Missing));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.name(&key(1, b"a")), None);
        assert_eq!(c.name(&key(1, b"gone")), None);
    }

    #[test]
    fn a_fetch_that_raced_an_invalidation_is_not_stored() {
        let c = cache(10_000, 100);
        let before = c.ticket();
        c.invalidate_attrs(&key(1, b"other"));
        c.put_name(before, key(1, b"a"), Known::Attrs(attrs(1)));
        c.put_link(before, key(1, b"a"), Bytes::from_static(b"t"));
        c.put_listing(before, 1, &[(Bytes::from_static(b"a"), attrs(1))], |_| true);
        assert_eq!(c.name(&key(1, b"a")), None);
        assert_eq!(c.link(&key(1, b"a")), None);
        assert!(c.listing(1, |_| true).is_none());
    }

    #[test]
    fn listing_needs_every_entry_fresh_and_usable() {
        let c = cache(10_000, 100);
        let entries = [
            (Bytes::from_static(b"a"), attrs(1)),
            (Bytes::from_static(b"b"), attrs(2)),
        ];
        c.put_listing(c.ticket(), 7, &entries, |_| true);
        assert_eq!(c.listing(7, |_| true).unwrap(), entries.to_vec());
        assert!(c.listing(7, |n| &n[..] != b"b").is_none());
        c.invalidate_attrs(&key(7, b"b"));
        assert!(c.listing(7, |_| true).is_none());
        // An entry refused at store time is not cached, so the listing is not served.
        c.put_listing(c.ticket(), 7, &entries, |n| &n[..] != b"a");
        assert!(c.listing(7, |_| true).is_none());
        c.put_listing(c.ticket(), 7, &entries, |_| true);
        c.invalidate(&key(7, b"new"));
        assert!(c.listing(7, |_| true).is_none());
    }

    #[test]
    fn listings_are_bounded_by_their_total_entries() {
        let c = cache(10_000, 5);
        let three: Vec<_> = [b"a", b"b", b"c"]
            .iter()
            .map(|n| (Bytes::from_static(*n), attrs(0)))
            .collect();
        c.put_listing(c.ticket(), 1, &three, |_| true);
        c.put_listing(c.ticket(), 2, &three, |_| true);
        assert!(c.listing(1, |_| true).is_none(), "oldest listing evicted");
        assert!(c.listing(2, |_| true).is_some());
        let six: Vec<_> = (0..6u8)
            .map(|i| (Bytes::from(vec![b'x', i]), attrs(0)))
            .collect();
        c.put_listing(c.ticket(), 3, &six, |_| true);
        assert!(c.listing(3, |_| true).is_none(), "too large to cache");
    }

    #[test]
    fn disabled_cache_keeps_nothing() {
        let c = MetaCache::new(CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        });
        c.put_name(c.ticket(), key(1, b"a"), Known::Attrs(attrs(1)));
        assert_eq!(c.name(&key(1, b"a")), None);
    }
}
