//! The per-open-file write pipeline. A kernel WRITE is accepted into a bounded buffer of unacked
//! data and answered at once (with a short count for the part that fit, when only part fits);
//! the data goes out as SFTP WRITEs of the server's largest size, spread over the file's lanes
//! (one handle per SFTP channel, since one channel's window caps a far link); acks free the
//! buffer; the first failure is latched with its errno and returned by the next write, flush or
//! fsync.
//!
//! Ordering: writes that overlap a write still in flight go to the same lane (a channel executes
//! in order) or wait for it; appends use one lane only, so the server's O_APPEND keeps their order.
//! Unacked data stays here, whole, until its ack: it can be re-sent.
//!
//! [`InodeWrites`] tracks, across every open file of one inode, which writes are still unacked,
//! so that reads and attribute fetches can wait for (or account for) data not yet on the server.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::warn;

use super::{ByteBudget, Errno};

/// Unacked writes of one inode, whichever open file issued them.
#[derive(Debug)]
pub struct InodeWrites {
    state: Mutex<InodeWritesState>,
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct InodeWritesState {
    next_seq: u64,
    unacked: BTreeSet<u64>,
    /// Highest end offset written while writes were unacked: the size the server will have.
    unacked_end: u64,
}

impl Default for InodeWrites {
    fn default() -> Self {
        InodeWrites {
            state: Mutex::default(),
            changed: watch::channel(()).0,
        }
    }
}

impl InodeWrites {
    fn begin(&self, end: u64) -> u64 {
        let mut s = self.state.lock().unwrap();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.unacked.insert(seq);
        s.unacked_end = s.unacked_end.max(end);
        seq
    }

    fn finish(&self, seq: u64) {
        let mut s = self.state.lock().unwrap();
        s.unacked.remove(&seq);
        if s.unacked.is_empty() {
            s.unacked_end = 0;
        }
        drop(s);
        self.changed.send_replace(());
    }

    /// Writes accepted and not yet acked: the server's attributes are about to change.
    pub fn pending(&self) -> bool {
        !self.state.lock().unwrap().unacked.is_empty()
    }

    /// Changes whenever the inode's contents change through the mount: read-ahead fetched under
    /// another generation is stale.
    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap().next_seq
    }

    /// Marks a change made other than by a write (a truncate).
    pub fn touch(&self) {
        self.state.lock().unwrap().next_seq += 1;
    }

    /// The size to report while writes are in flight: the server's size does not know them yet.
    pub fn size_floor(&self) -> u64 {
        self.state.lock().unwrap().unacked_end
    }

    /// Waits until every write issued before this call has been acked (or has failed).
    pub async fn settle(&self) {
        let mut rx = self.changed.subscribe();
        let horizon = self.state.lock().unwrap().next_seq;
        loop {
            let done = {
                let s = self.state.lock().unwrap();
                s.unacked.first().is_none_or(|&oldest| oldest >= horizon)
            };
            if done || rx.changed().await.is_err() {
                return;
            }
        }
    }
}

pub type AckFuture = Pin<Box<dyn Future<Output = Result<(), Errno>> + Send>>;

/// One handle on one channel: a place a chunk of the file can be written.
pub trait WriteLane: Send + Sync {
    /// Queues a WRITE now (lanes keep submission order); the future resolves on the ack, with
    /// the errno the failure means.
    fn submit(&self, offset: u64, data: Bytes) -> AckFuture;
}

/// Limits of one file's pipeline.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimits {
    /// Unacked bytes one open file may hold.
    pub per_file: usize,
    /// Largest WRITE payload the server takes.
    pub max_write: usize,
    /// Answer a WRITE that only partly fits with a short count (else wait until all of it fits).
    pub short_writes: bool,
    /// Bytes in flight on one lane before the next lane is used: about what one channel's
    /// window lets through per round trip. Filling lanes in order keeps a near server on one
    /// channel (one server process, writes in order) and spreads only when the window binds.
    pub lane_target: usize,
}

struct InFlight {
    offset: u64,
    len: u64,
    lane: usize,
}

#[derive(Default)]
struct PipelineState {
    buffered: usize,
    latched: Option<Errno>,
    next_id: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Bytes in flight on each lane, to pick the least loaded.
    lane_load: Vec<usize>,
}

/// The write side of one open file.
pub struct WritePipeline {
    lanes: Mutex<Vec<Arc<dyn WriteLane>>>,
    limits: WriteLimits,
    budget: ByteBudget,
    inode: Arc<InodeWrites>,
    append: bool,
    state: Mutex<PipelineState>,
    changed: watch::Sender<()>,
    /// Total bytes ever accepted, to decide when the file is worth more lanes.
    accepted: AtomicU64,
    /// More lanes are being opened: rather than pile data on the lanes there are (where it
    /// would wait for that lane's window long after the new lanes are free), wait for them.
    expecting_lanes: AtomicBool,
}

impl WritePipeline {
    pub fn new(
        first_lane: Arc<dyn WriteLane>,
        limits: WriteLimits,
        budget: ByteBudget,
        inode: Arc<InodeWrites>,
        append: bool,
    ) -> Arc<Self> {
        Arc::new(WritePipeline {
            lanes: Mutex::new(vec![first_lane]),
            limits,
            budget,
            inode,
            append,
            state: Mutex::new(PipelineState {
                lane_load: vec![0],
                ..Default::default()
            }),
            changed: watch::channel(()).0,
            accepted: Default::default(),
            expecting_lanes: AtomicBool::new(false),
        })
    }

    /// Adds a lane (another handle on another channel). Appends never spread.
    pub fn add_lane(&self, lane: Arc<dyn WriteLane>) {
        if self.append {
            return;
        }
        self.lanes.lock().unwrap().push(lane);
        self.state.lock().unwrap().lane_load.push(0);
        self.changed.send_replace(());
    }

    /// Lanes are being added (`true`) or all that will come have come (`false`).
    pub fn expect_lanes(&self, expecting: bool) {
        self.expecting_lanes.store(expecting, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    pub fn lane_count(&self) -> usize {
        self.lanes.lock().unwrap().len()
    }

    pub fn accepted_bytes(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn is_append(&self) -> bool {
        self.append
    }

    /// Accepts as much of `data` at `offset` as fits and returns how much that was (at least one
    /// byte: with nothing free it waits). With `whole`, or when short writes are off, it waits
    /// until all of `data` fits. Returns the latched failure instead, once there is one.
    pub async fn write(
        self: &Arc<Self>,
        offset: u64,
        data: Bytes,
        whole: bool,
    ) -> Result<u32, Errno> {
        let whole = whole || !self.limits.short_writes;
        let (take, mut permit) = self.reserve(data.len(), whole).await?;
        let data = data.slice(..take);
        self.accepted.fetch_add(take as u64, Ordering::Relaxed);
        let seq = self.inode.begin(offset + take as u64);
        let chunks = take.div_ceil(self.limits.max_write);
        let remaining = Arc::new(AtomicUsize::new(chunks));
        let mut pos = 0;
        while pos < take {
            let end = (pos + self.limits.max_write).min(take);
            let chunk = data.slice(pos..end);
            let chunk_offset = offset + pos as u64;
            let (id, lane_index) = self.place(chunk_offset, chunk.len() as u64).await;
            let lane = self.lanes.lock().unwrap()[lane_index].clone();
            let ack = lane.submit(chunk_offset, chunk.clone());
            let chunk_permit = if end == take {
                permit.take()
            } else {
                permit.as_mut().and_then(|p| p.split(chunk.len()))
            };
            let this = self.clone();
            let remaining = remaining.clone();
            tokio::spawn(async move {
                let result = ack.await;
                this.landed(id, chunk.len(), lane_index, result);
                drop(chunk_permit);
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    this.inode.finish(seq);
                }
            });
            pos = end;
        }
        Ok(take as u32)
    }

    fn landed(&self, id: u64, len: usize, lane: usize, result: Result<(), Errno>) {
        {
            let mut s = self.state.lock().unwrap();
            if let Err(errno) = result
                && s.latched.is_none()
            {
                warn!("write failed: {}", std::io::Error::from_raw_os_error(errno));
                s.latched = Some(errno);
            }
            s.in_flight.remove(&id);
            s.buffered -= len;
            s.lane_load[lane] -= len;
        }
        self.changed.send_replace(());
    }

    /// Waits for room and takes it: per file first, then from the mount's global budget.
    async fn reserve(
        &self,
        len: usize,
        whole: bool,
    ) -> Result<(usize, Option<OwnedSemaphorePermit>), Errno> {
        let mut rx = self.changed.subscribe();
        let take = loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some(errno) = s.latched {
                    return Err(errno);
                }
                let free = self.limits.per_file.saturating_sub(s.buffered);
                // A request larger than the whole buffer goes alone into an empty buffer.
                let take = if free >= len || (s.buffered == 0 && whole) {
                    Some(len)
                } else if !whole && free > 0 {
                    Some(free)
                } else {
                    None
                };
                if let Some(take) = take {
                    s.buffered += take;
                    break take;
                }
            }
            if rx.changed().await.is_err() {
                return Err(libc::EIO);
            }
        };
        let sem = &self.budget.0;
        let granted = match sem.clone().try_acquire_many_owned(take as u32) {
            Ok(p) => Ok((take, p)),
            Err(_) => {
                let available = sem.available_permits().min(take);
                let partial = (!whole && available > 0)
                    .then(|| sem.clone().try_acquire_many_owned(available as u32).ok())
                    .flatten();
                match partial {
                    Some(p) => Ok((available, p)),
                    None => sem
                        .clone()
                        .acquire_many_owned(take as u32)
                        .await
                        .map(|p| (take, p))
                        .map_err(|_| libc::EIO),
                }
            }
        };
        let given_back = match &granted {
            Ok((got, _)) => take - got,
            Err(_) => take,
        };
        if given_back > 0 {
            self.state.lock().unwrap().buffered -= given_back;
            self.changed.send_replace(());
        }
        granted.map(|(got, permit)| (got, Some(permit)))
    }

    /// Chooses the lane for a chunk and records it as in flight.
    async fn place(&self, offset: u64, len: u64) -> (u64, usize) {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let mut s = self.state.lock().unwrap();
                let end = offset + len;
                let mut overlap_lanes = s
                    .in_flight
                    .values()
                    .filter(|w| w.offset < end && offset < w.offset + w.len)
                    .map(|w| w.lane);
                let first = overlap_lanes.next();
                let same = first.is_none_or(|f| overlap_lanes.all(|l| l == f));
                let lane = if !same {
                    None
                } else if let Some(lane) = first {
                    Some(lane)
                } else if self.append {
                    Some(0)
                } else {
                    let loads = &s.lane_load;
                    (0..loads.len())
                        .find(|&i| loads[i] + len as usize <= self.limits.lane_target)
                        .or_else(|| {
                            // Every lane is at its window: use the least loaded, unless more
                            // lanes are on their way.
                            (!self.expecting_lanes.load(Ordering::Relaxed))
                                .then(|| (0..loads.len()).min_by_key(|&i| loads[i]))
                                .flatten()
                        })
                };
                if let Some(lane) = lane {
                    let id = s.next_id;
                    s.next_id += 1;
                    s.in_flight.insert(id, InFlight { offset, len, lane });
                    s.lane_load[lane] += len as usize;
                    return (id, lane);
                }
            }
            // Overlaps writes in flight on different lanes, or waits for new lanes: wait.
            if rx.changed().await.is_err() {
                return (u64::MAX, 0);
            }
        }
    }

    /// Waits until every accepted write is acked; returns the latched failure, if any.
    pub async fn settle(&self) -> Result<(), Errno> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let s = self.state.lock().unwrap();
                if s.buffered == 0 {
                    return s.latched.map_or(Ok(()), Err);
                }
            }
            if rx.changed().await.is_err() {
                return Err(libc::EIO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;
    use tokio::sync::oneshot;

    struct Submitted {
        lane: usize,
        offset: u64,
        data: Bytes,
        ack: oneshot::Sender<Result<(), Errno>>,
    }

    /// A server whose acks the test releases: per lane, in that lane's order, like a channel.
    #[derive(Default)]
    struct FakeServer {
        file: Mutex<Vec<u8>>,
        queue: Mutex<VecDeque<Submitted>>,
        fail_at: Mutex<Option<(u64, Errno)>>,
    }

    impl FakeServer {
        fn lane(self: &Arc<Self>, lane: usize) -> Arc<dyn WriteLane> {
            Arc::new(FakeLane {
                server: self.clone(),
                lane,
            })
        }

        fn pending(&self) -> usize {
            self.queue.lock().unwrap().len()
        }

        fn lanes_used(&self) -> Vec<usize> {
            self.queue.lock().unwrap().iter().map(|s| s.lane).collect()
        }

        /// Executes and acks the oldest pending write of `lane`.
        fn ack_one(&self, lane: usize) -> bool {
            let mut q = self.queue.lock().unwrap();
            let Some(i) = q.iter().position(|s| s.lane == lane) else {
                return false;
            };
            let s = q.remove(i).unwrap();
            drop(q);
            let fail = *self.fail_at.lock().unwrap();
            let end = s.offset + s.data.len() as u64;
            let result = match fail {
                Some((at, errno)) if s.offset <= at && at < end => Err(errno),
                _ => {
                    let mut f = self.file.lock().unwrap();
                    if f.len() < end as usize {
                        f.resize(end as usize, 0);
                    }
                    f[s.offset as usize..end as usize].copy_from_slice(&s.data);
                    Ok(())
                }
            };
            let _ = s.ack.send(result);
            true
        }

        fn ack_lane(&self, lane: usize) {
            while self.ack_one(lane) {}
        }

        /// Acks everything, newest lane first and, within the order a channel keeps, all of it.
        fn ack_all_lanes_reversed(&self, lanes: usize) {
            for lane in (0..lanes).rev() {
                self.ack_lane(lane);
            }
        }
    }

    struct FakeLane {
        server: Arc<FakeServer>,
        lane: usize,
    }

    impl WriteLane for FakeLane {
        fn submit(&self, offset: u64, data: Bytes) -> AckFuture {
            let (tx, rx) = oneshot::channel();
            self.server.queue.lock().unwrap().push_back(Submitted {
                lane: self.lane,
                offset,
                data,
                ack: tx,
            });
            Box::pin(async move { rx.await.unwrap_or(Err(libc::EIO)) })
        }
    }

    fn limits(per_file: usize, max_write: usize) -> WriteLimits {
        WriteLimits {
            per_file,
            max_write,
            short_writes: true,
            lane_target: 3 * max_write,
        }
    }

    fn pipeline(
        server: &Arc<FakeServer>,
        l: WriteLimits,
        budget: usize,
        lanes: usize,
    ) -> Arc<WritePipeline> {
        let p = WritePipeline::new(
            server.lane(0),
            l,
            ByteBudget::new(budget),
            Arc::default(),
            false,
        );
        for i in 1..lanes {
            p.add_lane(server.lane(i));
        }
        p
    }

    async fn settle_soon(p: &WritePipeline) -> Result<(), Errno> {
        tokio::time::timeout(Duration::from_secs(5), p.settle())
            .await
            .expect("settle hung")
    }

    /// Lets spawned ack tasks run.
    async fn yield_a_bit() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn acks_out_of_order_across_lanes() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(1 << 20, 100), 1 << 20, 3);
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(p.write(0, Bytes::from(data.clone()), false).await, Ok(1000));
        assert_eq!(server.pending(), 10, "split into max_write chunks");
        let mut used = server.lanes_used();
        used.sort();
        used.dedup();
        assert_eq!(used, vec![0, 1, 2], "spread over every lane");
        server.ack_all_lanes_reversed(3);
        assert_eq!(settle_soon(&p).await, Ok(()));
        assert_eq!(*server.file.lock().unwrap(), data);
    }

    #[tokio::test]
    async fn waits_for_lanes_being_opened_rather_than_piling_on_one() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(1 << 20, 100), 1 << 20, 1);
        p.expect_lanes(true);
        let writer = {
            let p = p.clone();
            tokio::spawn(async move { p.write(0, Bytes::from(vec![5u8; 600]), false).await })
        };
        yield_a_bit().await;
        assert_eq!(
            server.pending(),
            3,
            "lane 0 filled to its target, no further"
        );
        assert!(!writer.is_finished());
        p.add_lane(server.lane(1));
        p.expect_lanes(false);
        assert_eq!(writer.await.unwrap(), Ok(600));
        let lanes = server.lanes_used();
        assert_eq!(lanes.iter().filter(|&&l| l == 1).count(), 3, "{lanes:?}");
        server.ack_all_lanes_reversed(2);
        assert_eq!(settle_soon(&p).await, Ok(()));
    }

    #[tokio::test]
    async fn a_fast_server_keeps_one_lane() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(1 << 20, 100), 1 << 20, 3);
        for i in 0..20u64 {
            p.write(i * 100, Bytes::from(vec![i as u8; 100]), false)
                .await
                .unwrap();
            // Acked before the next write: the first lane never fills.
            server.ack_lane(0);
            yield_a_bit().await;
        }
        assert_eq!(server.pending(), 0, "everything went to lane 0");
        assert_eq!(settle_soon(&p).await, Ok(()));
    }

    #[tokio::test]
    async fn overlapping_writes_keep_their_order() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(1 << 20, 64), 1 << 20, 4);
        // Many rewrites of the same and overlapping ranges. A write overlapping writes on two
        // lanes must wait for them, so acks are released meanwhile: always the newest lane
        // first, the order that would scramble writes placed carelessly.
        let mut expected = vec![0u8; 300];
        let mut writes = Vec::new();
        for round in 0..12u8 {
            let start = (round as usize * 17) % 200;
            let chunk = vec![round + 1; 100];
            expected[start..start + 100].copy_from_slice(&chunk);
            writes.push((start as u64, Bytes::from(chunk)));
        }
        let writer = {
            let p = p.clone();
            tokio::spawn(async move {
                for (offset, data) in writes {
                    p.write(offset, data, false).await.unwrap();
                }
            })
        };
        while !writer.is_finished() {
            yield_a_bit().await;
            if server.pending() > 0 {
                server.ack_all_lanes_reversed(4);
            }
        }
        writer.await.unwrap();
        // Lanes finish in an order that would scramble writes placed on different lanes.
        server.ack_all_lanes_reversed(4);
        assert_eq!(settle_soon(&p).await, Ok(()));
        let file = server.file.lock().unwrap();
        assert_eq!(&file[..], &expected[..file.len()]);
    }

    #[tokio::test]
    async fn appends_stay_on_one_lane() {
        let server = Arc::new(FakeServer::default());
        let p = WritePipeline::new(
            server.lane(0),
            limits(1 << 20, 10),
            ByteBudget::new(1 << 20),
            Arc::default(),
            true,
        );
        p.add_lane(server.lane(1));
        assert_eq!(p.lane_count(), 1);
        for i in 0..5u8 {
            p.write(0, Bytes::from(vec![i; 25]), false).await.unwrap();
        }
        assert!(server.lanes_used().iter().all(|&l| l == 0));
        server.ack_lane(0);
        assert_eq!(settle_soon(&p).await, Ok(()));
    }

    #[tokio::test]
    async fn failure_is_latched_with_its_errno() {
        let server = Arc::new(FakeServer::default());
        *server.fail_at.lock().unwrap() = Some((250, libc::ENOSPC));
        let p = pipeline(&server, limits(1 << 20, 100), 1 << 20, 1);
        assert_eq!(
            p.write(0, Bytes::from(vec![1u8; 500]), false).await,
            Ok(500)
        );
        server.ack_lane(0);
        assert_eq!(settle_soon(&p).await, Err(libc::ENOSPC));
        // Later writes fail fast with the same errno, and so does every later barrier.
        assert_eq!(
            p.write(500, Bytes::from(vec![2u8; 10]), false).await,
            Err(libc::ENOSPC)
        );
        assert_eq!(server.pending(), 0, "nothing more was sent");
        assert_eq!(settle_soon(&p).await, Err(libc::ENOSPC));
    }

    #[tokio::test]
    async fn tiny_buffer_gives_short_counts_then_waits() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(100, 40), 1 << 20, 1);
        assert_eq!(p.write(0, Bytes::from(vec![1u8; 70]), false).await, Ok(70));
        // 30 bytes free: a 50-byte write is accepted short, never as 0.
        assert_eq!(p.write(70, Bytes::from(vec![2u8; 50]), false).await, Ok(30));
        // Full: the next write waits for an ack rather than answering 0.
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move { p.write(100, Bytes::from(vec![3u8; 50]), false).await })
        };
        yield_a_bit().await;
        assert!(
            !waiting.is_finished(),
            "a full buffer must wait, not reply 0"
        );
        assert!(server.ack_one(0));
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(got > 0 && got <= 40, "{got}");
        server.ack_lane(0);
        assert_eq!(settle_soon(&p).await, Ok(()));
    }

    #[tokio::test]
    async fn whole_writes_wait_for_all_of_it() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(100, 40), 1 << 20, 1);
        assert_eq!(p.write(0, Bytes::from(vec![1u8; 70]), true).await, Ok(70));
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move { p.write(70, Bytes::from(vec![2u8; 50]), true).await })
        };
        yield_a_bit().await;
        assert!(!waiting.is_finished());
        assert!(server.ack_one(0)); // 40 bytes acked: 70 free, 50 fit
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Ok(50));
        // Larger than the whole buffer: taken alone once the buffer is empty.
        server.ack_lane(0);
        assert_eq!(
            p.write(120, Bytes::from(vec![3u8; 250]), true).await,
            Ok(250)
        );
        server.ack_lane(0);
        assert_eq!(settle_soon(&p).await, Ok(()));
        assert_eq!(server.file.lock().unwrap().len(), 370);
    }

    #[tokio::test]
    async fn global_budget_is_shared_by_files() {
        let server_a = Arc::new(FakeServer::default());
        let server_b = Arc::new(FakeServer::default());
        let budget = ByteBudget::new(100);
        let a = WritePipeline::new(
            server_a.lane(0),
            limits(80, 1000),
            budget.clone(),
            Arc::default(),
            false,
        );
        let b = WritePipeline::new(
            server_b.lane(0),
            limits(80, 1000),
            budget.clone(),
            Arc::default(),
            false,
        );
        assert_eq!(a.write(0, Bytes::from(vec![1u8; 80]), false).await, Ok(80));
        assert_eq!(budget.available(), 20);
        // b has room of its own, but the mount's budget has only 20 bytes left.
        assert_eq!(b.write(0, Bytes::from(vec![2u8; 50]), false).await, Ok(20));
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.write(20, Bytes::from(vec![2u8; 30]), true).await })
        };
        yield_a_bit().await;
        assert!(!waiting.is_finished(), "global cap reached: must wait");
        server_a.ack_lane(0);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap(),
            Ok(30)
        );
        server_b.ack_lane(0);
        assert_eq!(settle_soon(&a).await, Ok(()));
        assert_eq!(settle_soon(&b).await, Ok(()));
        assert_eq!(budget.available(), 100, "every byte given back");
    }
}
