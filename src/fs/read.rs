//! The per-open-file prefetcher. The kernel reads a FUSE file at most 128 KiB ahead, so on a far
//! link only a couple of READs are ever in flight; this keeps a window of READs in flight ahead of
//! a sequential reader, starting small and doubling while the reader keeps up. Nothing is fetched
//! ahead until a run of sequential reads has read [`PREFETCH_AFTER`] bytes, and a read that is not
//! near where the last one ended (a seek) drops the window, so random reads fetch nothing extra.
//! Chunks sit on a fixed grid of the server's largest READ; replies may arrive in any order.
//!
//! Prefetched data is only served while no write through the mount has touched the inode since
//! it was fetched (the caller passes the inode's write generation), and never past where the file
//! ended when it was fetched: a read there goes to the server, since the file may have grown.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::cache::COHERENCE;
use super::{ByteBudget, Errno};

pub type ReadFuture = Pin<Box<dyn Future<Output = Result<Bytes, Errno>> + Send>>;

/// Where a file's bytes come from: READ requests on one handle.
pub trait ReadSource: Send + Sync {
    /// Queues a READ now; the future gives the data: empty at end of file, and possibly
    /// shorter than asked anywhere (see [`read_on`]). Dropping the future before the READ left
    /// takes it back.
    fn read(&self, offset: u64, len: u32) -> ReadFuture;

    /// How far ahead of a reader it is worth fetching: what the link brings in a moment (more
    /// only waits, and is fetched for nothing when the reader stops).
    fn ahead_limit(&self) -> usize {
        usize::MAX
    }
}

/// Completes a READ of `len` bytes at `offset` whose reply was `first`. A server may answer a
/// READ with fewer bytes than asked anywhere in a file (the draft: it "reads as many bytes as
/// it can"; servers over network or FUSE storage do): only an empty reply (STATUS EOF) ends the
/// file. So a short reply is followed by READs from where it stopped until the length is
/// reached or the end of the file is: what this returns is short only at the end of the file.
pub async fn read_on(
    source: &dyn ReadSource,
    offset: u64,
    len: u32,
    first: Bytes,
) -> Result<Bytes, Errno> {
    if first.len() >= len as usize || first.is_empty() {
        return Ok(first);
    }
    let mut out = BytesMut::with_capacity(len as usize);
    out.extend_from_slice(&first);
    while out.len() < len as usize {
        let want = len - out.len() as u32;
        let more = source.read(offset + out.len() as u64, want).await?;
        if more.is_empty() {
            break;
        }
        out.extend_from_slice(&more[..more.len().min(want as usize)]);
    }
    Ok(out.freeze())
}

/// Reads `size` bytes at `offset` with no read-ahead: the READs go out at once, each reply that
/// comes back short is read on from where it stopped (see [`read_on`]), so a short result means
/// the end of the file and nothing else. `known_end`: where the file ends, as last known: a
/// READ of one byte there goes out right behind the others, so that the end of the file (which
/// only the server's EOF may tell) is confirmed in the same round trip rather than one more: a
/// small file is read in one.
pub async fn read_range(
    source: &dyn ReadSource,
    offset: u64,
    size: u32,
    max_read: u32,
    known_end: Option<u64>,
) -> Result<Bytes, Errno> {
    let chunks: Vec<_> = (0..size)
        .step_by(max_read as usize)
        .map(|pos| {
            let len = (size - pos).min(max_read);
            let at = offset + pos as u64;
            (at, len, source.read(at, len))
        })
        .collect();
    let mut end_probe = known_end
        .filter(|&end| end > offset && end < offset + size as u64)
        .map(|end| (end, source.read(end, 1)));
    let mut out = BytesMut::with_capacity(size as usize);
    for (at, len, pending) in chunks {
        let first = pending.await?;
        let short_at = at + first.len() as u64;
        let confirmed_end = match end_probe.take() {
            Some((end, probe)) if short_at == end && first.len() < len as usize => {
                probe.await?.is_empty()
            }
            other => {
                end_probe = other;
                false
            }
        };
        let data = if confirmed_end {
            first
        } else {
            read_on(source, at, len, first).await?
        };
        out.extend_from_slice(&data);
        if data.len() < len as usize {
            break;
        }
    }
    Ok(out.freeze())
}

/// First window, once the reader has shown it reads on.
const INITIAL_WINDOW: usize = 512 * 1024;
/// Bytes a reader must have read in one sequential run before anything is fetched ahead: two
/// of the kernel's 128 KiB READs. Random reads that happen to land near each other never get
/// this far, and a small file is read whole before it matters.
const PREFETCH_AFTER: u64 = 256 * 1024;
/// The kernel sends a sequential reader's READs concurrently and they may arrive out of order:
/// a read this close to where the last one ended still counts as sequential.
const SEQUENTIAL_SLACK: u64 = 1024 * 1024;

/// A file this small is fetched whole once a reader shows it reads at random (`git
/// index-pack` reads back the pack it wrote, a linker its objects): one round trip instead of
/// one per read. Small enough that a slow link carries it in a few round trips' time.
const WHOLE_FILE_MAX: u64 = 512 * 1024;
/// Reads away from where the last one ended before a small file is fetched whole.
const RANDOM_READS_FOR_WHOLE: u32 = 2;

type ChunkResult = Option<Result<Bytes, Errno>>;

/// A fetched or fetching chunk; its share of the mount's read-ahead budget is given back when
/// it is dropped.
struct Chunk {
    result: watch::Receiver<ChunkResult>,
    _budget: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    /// Where the last read ended: a read starting there is sequential.
    next: u64,
    /// Bytes read in the current sequential run.
    run_bytes: u64,
    /// The window doubles once a read ends past here: only while the reader moves on through
    /// it, so reads that stay in one region do not grow it.
    grow_at: u64,
    window: usize,
    /// Write generation the chunks were fetched under.
    generation: u64,
    chunks: BTreeMap<u64, Chunk>,
    /// A chunk came back short: the file ends there, fetch nothing past it.
    end: Option<u64>,
    /// Reads away from where the last one ended, since the last write through the mount.
    random_reads: u32,
    /// All of the file (up to `end`) is fetched: every read within it is served, until
    /// [`COHERENCE`] after the fetch (`whole_at`).
    whole: bool,
    whole_at: Option<std::time::Instant>,
}

pub struct Prefetcher {
    source: Arc<dyn ReadSource>,
    budget: ByteBudget,
    chunk: u64,
    max_window: usize,
    state: Mutex<State>,
}

impl Prefetcher {
    pub fn new(
        source: Arc<dyn ReadSource>,
        budget: ByteBudget,
        chunk: u32,
        max_window: usize,
    ) -> Self {
        Prefetcher {
            source,
            budget,
            chunk: chunk.max(4096) as u64,
            max_window,
            state: Mutex::default(),
        }
    }

    /// Bytes fetched ahead and not yet read, for accounting.
    pub fn window(&self) -> usize {
        self.state.lock().unwrap().window
    }

    /// Serves `size` bytes at `offset` from the window when the read is sequential, or from
    /// the whole file when it is small (`file_size`, as last known) and read at random. `None`:
    /// the caller reads directly (a random read, or the window could not answer it whole).
    pub async fn read(
        &self,
        offset: u64,
        size: u32,
        generation: u64,
        file_size: Option<u64>,
    ) -> Option<Bytes> {
        let end = offset + size as u64;
        let first = offset / self.chunk * self.chunk;
        let wanted: Vec<(u64, watch::Receiver<ChunkResult>)> = {
            let mut s = self.state.lock().unwrap();
            if s.generation != generation {
                s.chunks.clear();
                s.window = 0;
                s.end = None;
                s.whole = false;
                s.random_reads = 0;
                s.generation = generation;
            }
            // Another program may have changed the file on the server since it was fetched
            // whole (the kernel asks again what it dropped): served only within the second the
            // mount's other caches allow; a read after that fetches it again.
            if s.whole && s.whole_at.is_none_or(|at| at.elapsed() >= COHERENCE) {
                s.chunks.clear();
                s.end = None;
                s.whole = false;
            }
            // The end of the file seen earlier only stops fetching ahead: a read that reaches
            // it is asked of the server, which may have more by now (`tail -f`).
            if let Some(e) = s.end
                && end > e
            {
                if !s.whole {
                    let from = e / self.chunk * self.chunk;
                    drop(s.chunks.split_off(&from));
                    s.end = None;
                }
                s.next = end;
                return None;
            }
            let in_window = s
                .chunks
                .range(..=offset)
                .next_back()
                .is_some_and(|(&start, _)| offset < start + self.chunk);
            let sequential = in_window || offset.abs_diff(s.next) <= SEQUENTIAL_SLACK;
            // In a small file every read is near the last one: there, one that does not go on
            // from where the last ended is taken as random.
            let small = file_size.filter(|&n| n > 0 && n <= WHOLE_FILE_MAX);
            let random = match small {
                Some(_) => offset != s.next && !in_window,
                None => !sequential,
            };
            s.next = if sequential { s.next.max(end) } else { end };
            if !s.whole && random {
                s.random_reads += 1;
                match small {
                    Some(n) if s.random_reads >= RANDOM_READS_FOR_WHOLE => {
                        s.chunks.clear();
                        self.fetch_whole(&mut s, n);
                    }
                    _ if !sequential => {
                        s.chunks.clear();
                        s.window = 0;
                        s.end = None;
                        s.run_bytes = size as u64;
                        return None;
                    }
                    _ => {}
                }
            }
            // A file fetched whole serves any read within it (one past its end returned above);
            // else the window moves on with a sequential reader.
            if !s.whole {
                s.run_bytes += size as u64;
                if s.run_bytes < PREFETCH_AFTER {
                    return None;
                }
                if s.window == 0 || end >= s.grow_at {
                    let most = self.max_window.min(self.source.ahead_limit());
                    s.window = (s.window * 2).clamp(INITIAL_WINDOW, most.max(INITIAL_WINDOW));
                    s.grow_at = end + s.window as u64 / 4;
                }
                // Chunks well behind the reader are done with (those just behind may still be
                // asked for by a READ that arrives late).
                let keep_from = first.saturating_sub(SEQUENTIAL_SLACK) / self.chunk * self.chunk;
                s.chunks = s.chunks.split_off(&keep_from);
                // Not past the end the file is known to have: a read beyond it (the file grew)
                // is asked of the server.
                let horizon = (end + s.window as u64).min(file_size.unwrap_or(u64::MAX));
                let mut start = first;
                while start < horizon && s.end.is_none_or(|e| start < e) {
                    if !s.chunks.contains_key(&start)
                        && !self.fetch_chunk(&mut s, start, self.chunk)
                    {
                        // Out of budget: read-ahead stops growing; the reader is served
                        // directly.
                        break;
                    }
                    start += self.chunk;
                }
            }
            // Every chunk the read needs must be there (the budget may have run out first);
            // otherwise the direct read answers it, never a gap taken for the end of the file.
            let covered = (first..end)
                .step_by(self.chunk as usize)
                .all(|c| s.end.is_some_and(|e| c >= e) || s.chunks.contains_key(&c));
            if !covered {
                return None;
            }
            s.chunks
                .range(first..end)
                .map(|(&start, chunk)| (start, chunk.result.clone()))
                .collect()
        };
        let mut out = BytesMut::with_capacity(size as usize);
        for (start, mut rx) in wanted {
            let data = match rx.wait_for(Option::is_some).await {
                Ok(done) => done.clone().expect("waited for Some"),
                Err(_) => return None,
            };
            let Ok(data) = data else {
                // Let the direct read retry and report the error itself.
                let mut s = self.state.lock().unwrap();
                s.chunks.remove(&start);
                s.whole = false;
                return None;
            };
            let pos = offset + out.len() as u64;
            if start > pos {
                // A chunk in between was dropped (a failed fetch): read directly.
                return None;
            }
            let asked = self.state.lock().unwrap().asked(start, self.chunk);
            let short = (data.len() as u64) < asked;
            if short {
                self.state.lock().unwrap().end = Some(start + data.len() as u64);
            }
            let from = (pos - start) as usize;
            if from >= data.len() {
                // The file ends before `pos`.
                break;
            }
            let take = (data.len() - from).min(size as usize - out.len());
            out.extend_from_slice(&data[from..from + take]);
            if out.len() == size as usize || short {
                break;
            }
        }
        Some(out.freeze())
    }

    /// Starts fetching `len` bytes at `start` as a chunk, if the budget has room.
    fn fetch_chunk(&self, s: &mut State, start: u64, len: u64) -> bool {
        let Ok(permit) = self.budget.0.clone().try_acquire_many_owned(len as u32) else {
            return false;
        };
        let (tx, rx) = watch::channel(None);
        let fetch = self.source.read(start, len as u32);
        let source = self.source.clone();
        tokio::spawn(async move {
            let whole = async {
                match fetch.await {
                    Ok(first) => read_on(&*source, start, len as u32, first).await,
                    Err(e) => Err(e),
                }
            };
            // A chunk dropped (the reader went elsewhere, or closed the file) is not fetched:
            // its READs not yet sent are taken back.
            tokio::select! {
                whole = whole => {
                    let _ = tx.send(Some(whole));
                }
                () = tx.closed() => {}
            }
        });
        s.chunks.insert(
            start,
            Chunk {
                result: rx,
                _budget: permit,
            },
        );
        true
    }

    /// Fetches all `size` bytes of the file at once, each chunk asked for no further than
    /// `size`, so that no READ past the end costs a round trip more; the end is taken to be
    /// there (a read past it goes to the server, which may have more by now).
    fn fetch_whole(&self, s: &mut State, size: u64) {
        let mut start = 0;
        while start < size {
            let len = self.chunk.min(size - start);
            if !self.fetch_chunk(s, start, len) {
                s.chunks.clear();
                return;
            }
            start += self.chunk;
        }
        s.end = Some(size);
        s.whole = true;
        s.whole_at = Some(std::time::Instant::now());
    }
}

impl State {
    /// The bytes a chunk at `start` was asked for: less than a chunk only for the last one of a
    /// file fetched whole.
    fn asked(&self, start: u64, chunk: u64) -> u64 {
        match self.end {
            Some(e) if self.whole => chunk.min(e.saturating_sub(start)),
            _ => chunk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A file of `len` bytes whose byte at i is i % 251; counts the bytes it was asked for.
    struct FakeFile {
        len: u64,
        asked: AtomicUsize,
        reads: AtomicUsize,
    }

    impl ReadSource for FakeFile {
        fn read(&self, offset: u64, len: u32) -> ReadFuture {
            self.asked.fetch_add(len as usize, Ordering::Relaxed);
            self.reads.fetch_add(1, Ordering::Relaxed);
            let end = (offset + len as u64).min(self.len);
            let data: Vec<u8> = (offset..end.max(offset)).map(|i| (i % 251) as u8).collect();
            // Later chunks answer first: replies in any order.
            let delay = std::time::Duration::from_micros(500 - (offset / 4096 % 500));
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Bytes::from(data))
            })
        }
    }

    fn expected(offset: u64, len: usize, file_len: u64) -> Vec<u8> {
        (offset..(offset + len as u64).min(file_len))
            .map(|i| (i % 251) as u8)
            .collect()
    }

    #[tokio::test]
    async fn sequential_reads_are_served_from_a_growing_window() {
        let file = Arc::new(FakeFile {
            len: 10_000_000 + 123,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 4 << 20);
        let mut offset = 0u64;
        let mut windows = Vec::new();
        while offset < file.len {
            let size = 131072u32;
            let got = match p.read(offset, size, 0, None).await {
                Some(d) => d.to_vec(),
                // The first reads are the caller's, until the run is long enough.
                None if offset + (size as u64) < PREFETCH_AFTER => {
                    expected(offset, size as usize, file.len)
                }
                None => panic!("sequential read at {offset} not served"),
            };
            assert_eq!(
                got,
                expected(offset, size as usize, file.len),
                "at {offset}"
            );
            offset += size as u64;
            windows.push(p.window());
        }
        assert_eq!(*windows.last().unwrap(), 4 << 20, "window grew to its cap");
        // Nothing far past the end was fetched.
        assert!(file.asked.load(Ordering::Relaxed) < file.len as usize + (5 << 20));
    }

    /// A source whose link brings `ahead` bytes in a moment.
    struct SlowLink(Arc<FakeFile>, usize);

    impl ReadSource for SlowLink {
        fn read(&self, offset: u64, len: u32) -> ReadFuture {
            self.0.read(offset, len)
        }

        fn ahead_limit(&self) -> usize {
            self.1
        }
    }

    #[tokio::test]
    async fn read_ahead_stops_at_the_known_end_and_at_what_the_link_brings_in_a_moment() {
        let len = 6_000_000;
        let file = Arc::new(FakeFile {
            len,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let source = Arc::new(SlowLink(file.clone(), 1 << 20));
        let p = Prefetcher::new(source, ByteBudget::new(64 << 20), 64 * 1024, 16 << 20);
        let mut offset = 0;
        while offset < len {
            let got = p.read(offset, 131072, 0, Some(len)).await;
            if let Some(got) = got {
                assert_eq!(got, expected(offset, 131072, len), "at {offset}");
            }
            assert!(p.window() <= 1 << 20, "window {} at {offset}", p.window());
            offset += 131072;
        }
        // What was asked past the end: at most the rest of the last chunk.
        let asked = file.asked.load(Ordering::Relaxed) as u64;
        assert!(
            asked <= len + 65536,
            "{asked} bytes asked of a file of {len}"
        );
    }

    #[tokio::test]
    async fn a_small_file_read_at_random_is_fetched_whole_once() {
        let len = 300 * 1024;
        let file = Arc::new(FakeFile {
            len,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 16 << 20);
        // `git index-pack` reading back its pack: 4 KiB here and there, never past the end.
        let offsets = [
            12288u64, 16384, 61440, 36864, 155648, 102400, 4096, 290816, 0,
        ];
        let mut served = 0;
        for offset in offsets {
            if let Some(got) = p.read(offset, 4096, 0, Some(len)).await {
                assert_eq!(got, expected(offset, 4096, len), "at {offset}");
                served += 1;
            }
        }
        // 12288 and 61440 go away from where the last read ended (16384 goes on from 12288):
        // from the second of those on, all is served.
        assert_eq!(
            served,
            offsets.len() - 2,
            "all from the second random read on"
        );
        assert_eq!(
            file.asked.load(Ordering::Relaxed),
            len as usize,
            "the file once"
        );
        // Not past its end (the server may have more by now), and a read after a write
        // through the mount (a new generation) is not served from what was fetched before.
        assert!(p.read(len - 100, 4096, 0, Some(len)).await.is_none());
        assert!(p.read(8192, 4096, 1, Some(len)).await.is_none());
        // A larger file is not fetched whole.
        let big = 4 << 20;
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 16 << 20);
        let asked = file.asked.load(Ordering::Relaxed);
        for offset in offsets {
            assert!(p.read(offset, 4096, 0, Some(big)).await.is_none());
        }
        assert_eq!(file.asked.load(Ordering::Relaxed), asked);
    }

    /// A file whose bytes can be changed, as another program changes it on the server.
    struct ChangingFile(Mutex<Vec<u8>>);

    impl ReadSource for ChangingFile {
        fn read(&self, offset: u64, len: u32) -> ReadFuture {
            let data = self.0.lock().unwrap();
            let start = (offset as usize).min(data.len());
            let end = (start + len as usize).min(data.len());
            let got = Bytes::copy_from_slice(&data[start..end]);
            Box::pin(async move { Ok(got) })
        }
    }

    #[tokio::test]
    async fn a_file_fetched_whole_is_fetched_again_after_a_second() {
        let len = 300 * 1024;
        let file = Arc::new(ChangingFile(Mutex::new(vec![1u8; len])));
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 16 << 20);
        let size = Some(len as u64);
        assert!(p.read(12288, 4096, 0, size).await.is_none());
        let got = p.read(61440, 4096, 0, size).await.expect("fetched whole");
        assert!(got.len() == 4096 && got.iter().all(|&b| b == 1));
        // Rewritten on the server, same size: within the second, what was fetched.
        *file.0.lock().unwrap() = vec![2u8; len];
        let got = p.read(36864, 4096, 0, size).await.expect("served");
        assert!(got.len() == 4096 && got.iter().all(|&b| b == 1));
        // After it, never the old bytes: read directly, or fetched whole again.
        tokio::time::sleep(COHERENCE + Duration::from_millis(100)).await;
        for offset in [155648u64, 4096, 200704] {
            if let Some(got) = p.read(offset, 4096, 0, size).await {
                assert!(got.iter().all(|&b| b == 2), "old bytes served at {offset}");
            }
        }
    }

    #[tokio::test]
    async fn reads_near_each_other_fetch_little_extra() {
        let file = Arc::new(FakeFile {
            len: 64 << 20,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 16 << 20);
        // Uniform random 4 KiB reads: some land within the sequential slack of the last one.
        let mut x = 12345u64;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (x >> 16) % (64 << 20) / 4096 * 4096;
            p.read(offset, 4096, 0, None).await;
        }
        assert_eq!(
            file.asked.load(Ordering::Relaxed),
            0,
            "uniform random reads"
        );
        // Random reads confined to a 2 MiB region: the window opens but does not grow.
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (8 << 20) + (x >> 16) % (2 << 20) / 4096 * 4096;
            if let Some(d) = p.read(offset, 4096, 0, None).await {
                assert_eq!(d.to_vec(), expected(offset, 4096, file.len));
            }
        }
        let asked = file.asked.load(Ordering::Relaxed);
        assert!(asked <= 4 << 20, "hot region fetched {asked} bytes");
    }

    /// A file that grows between reads, as one being appended to on the server.
    struct GrowingFile {
        len: AtomicUsize,
    }

    impl ReadSource for GrowingFile {
        fn read(&self, offset: u64, len: u32) -> ReadFuture {
            let end = (offset + len as u64).min(self.len.load(Ordering::Relaxed) as u64);
            let data: Vec<u8> = (offset..end.max(offset)).map(|i| (i % 251) as u8).collect();
            Box::pin(async move { Ok(Bytes::from(data)) })
        }
    }

    /// A server that answers every READ with at most `max_reply` bytes, anywhere in the file.
    struct StingyFile {
        len: u64,
        max_reply: u64,
    }

    impl ReadSource for StingyFile {
        fn read(&self, offset: u64, len: u32) -> ReadFuture {
            let end = (offset + (len as u64).min(self.max_reply)).min(self.len);
            let data: Vec<u8> = (offset..end.max(offset)).map(|i| (i % 251) as u8).collect();
            Box::pin(async move { Ok(Bytes::from(data)) })
        }
    }

    #[tokio::test]
    async fn short_replies_are_read_on_not_taken_for_the_end() {
        let file = Arc::new(StingyFile {
            len: 3_000_000,
            max_reply: 1000,
        });
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 4 << 20);
        let mut offset = 0u64;
        let mut served = 0;
        while offset < file.len {
            let want = expected(offset, 131072, file.len);
            let got = match p.read(offset, 131072, 0, None).await {
                Some(d) => {
                    served += 1;
                    d.to_vec()
                }
                None => read_on(
                    &*file,
                    offset,
                    131072,
                    file.read(offset, 131072).await.unwrap(),
                )
                .await
                .unwrap()
                .to_vec(),
            };
            assert_eq!(got.len(), want.len(), "short at {offset}");
            assert!(got == want, "wrong bytes at {offset}");
            offset += got.len() as u64;
        }
        assert!(
            served > 10,
            "the read-ahead served the reader ({served} reads)"
        );
        let at_end = read_on(&*file, 3_000_000, 4096, Bytes::new())
            .await
            .unwrap();
        assert!(at_end.is_empty(), "only the end of the file is empty");
    }

    #[tokio::test]
    async fn the_end_of_a_file_seen_once_is_not_trusted_for_later_reads() {
        let file = Arc::new(GrowingFile {
            len: AtomicUsize::new(1_000_000),
        });
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 4 << 20);
        let mut offset = 0u64;
        let mut got = Vec::new();
        loop {
            let data = match p.read(offset, 131072, 0, None).await {
                Some(d) => d.to_vec(),
                None => expected(offset, 131072, file.len.load(Ordering::Relaxed) as u64),
            };
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            got.extend(data);
        }
        assert_eq!(got, expected(0, 1_000_000, 1_000_000));
        file.len.store(1_500_000, Ordering::Relaxed);
        // At the old end: the caller asks the server, or the prefetcher serves the new bytes.
        for _ in 0..8 {
            let want = expected(offset, 131072, 1_500_000);
            if let Some(d) = p.read(offset, 131072, 0, None).await {
                assert!(
                    d.to_vec() == want,
                    "stale end of file at {offset}: {} bytes",
                    d.len()
                );
            }
            offset += want.len() as u64;
        }
        assert_eq!(offset, 1_500_000);
    }

    #[tokio::test]
    async fn readers_share_the_mount_budget() {
        let budget = ByteBudget::new(1 << 20);
        let file = Arc::new(FakeFile {
            len: 64 << 20,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let readers: Vec<Prefetcher> = (0..3)
            .map(|_| Prefetcher::new(file.clone(), budget.clone(), 64 * 1024, 8 << 20))
            .collect();
        for step in 0..40u64 {
            for p in &readers {
                let offset = step * 131072;
                if let Some(d) = p.read(offset, 131072, 0, None).await {
                    assert!(
                        d.to_vec() == expected(offset, 131072, file.len),
                        "wrong data at {offset}"
                    );
                }
                // Never more than the budget fetched and held at once.
                assert!(budget.available() <= 1 << 20);
            }
        }
        let held: usize = (1 << 20) - budget.available();
        assert!(held <= 1 << 20);
        drop(readers);
        assert_eq!(budget.available(), 1 << 20, "every byte given back");
    }

    #[tokio::test]
    async fn random_reads_fetch_nothing_extra_and_writes_invalidate() {
        let file = Arc::new(FakeFile {
            len: 50_000_000,
            asked: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let p = Prefetcher::new(file.clone(), ByteBudget::new(64 << 20), 64 * 1024, 8 << 20);
        p.read(0, 4096, 0, None).await;
        let base = file.asked.load(Ordering::Relaxed);
        for i in 1..200u64 {
            let offset = (i * 7_919_993) % 49_000_000;
            assert!(
                p.read(offset, 4096, 0, None).await.is_none(),
                "random read at {offset}"
            );
        }
        assert_eq!(
            file.asked.load(Ordering::Relaxed),
            base,
            "no prefetch for random reads"
        );
        // Sequential again, then a write (new generation) drops what was fetched.
        let mut offset = 1_000_000;
        while offset < 1_000_000 + PREFETCH_AFTER {
            p.read(offset, 4096, 0, None).await;
            offset += 4096;
        }
        let got = p.read(offset, 4096, 0, None).await.expect("sequential");
        assert_eq!(got.to_vec(), expected(offset, 4096, file.len));
        let before = file.reads.load(Ordering::Relaxed);
        offset += 4096;
        let got = p.read(offset, 4096, 1, None).await.expect("sequential");
        assert_eq!(got.to_vec(), expected(offset, 4096, file.len));
        assert!(
            file.reads.load(Ordering::Relaxed) > before,
            "refetched after a write"
        );
    }
}
