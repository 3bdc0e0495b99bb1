//! The per-open-file write pipeline. A kernel WRITE is accepted into a bounded buffer of unacked
//! data and answered at once (with a short count for the part that fit, when only part fits);
//! the data goes out as SFTP WRITEs of the server's largest size, spread over the file's lanes
//! (one handle per SFTP channel, since one channel's window caps a far link); acks free the
//! buffer; the first failure is latched with its errno and returned by the next write, flush or
//! fsync.
//!
//! Ordering is per inode, not per open file: a second descriptor, or pages written back from a
//! shared mmap, may write the same range. A chunk that overlaps chunks still in flight (from any
//! open file of the inode) goes to the channel they are on, since a channel executes in order,
//! or waits for them. A WRITE that timed out or whose channel died has an unknown fate (the
//! server may still apply it): an overlapping chunk may only follow it on the same channel, or
//! it fails. Appends use one lane only, so the server's O_APPEND keeps their order.
//! Unacked data stays here, whole, until its ack: it can be re-sent.
//!
//! [`InodeWrites`] is that per-inode record: which writes are unacked and where, so that reads,
//! attribute fetches and barriers (fsync through any descriptor) can wait for them.

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

/// A chunk sent to the server: where it went decides where an overlapping one may go.
#[derive(Debug, Clone, Copy)]
struct Placed {
    offset: u64,
    len: u64,
    channel: usize,
}

impl Placed {
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        self.offset < offset + len && offset < self.offset + self.len
    }
}

#[derive(Debug, Default)]
struct InodeWritesState {
    next_seq: u64,
    unacked: BTreeSet<u64>,
    /// Highest end offset written while writes were unacked: the size the server will have.
    unacked_end: u64,
    next_chunk: u64,
    in_flight: BTreeMap<u64, Placed>,
    /// Chunks of accepted writes not yet queued on a channel.
    unsent: usize,
    /// Attribute changes queued behind the writes and not yet answered (see
    /// [`WritePipeline::track_attr_change`]).
    attr_changes: usize,
    /// Chunks that timed out or lost their channel: the server may or may not apply them, at
    /// any time. Kept for the life of the inode.
    unknown_fate: Vec<Placed>,
    /// The end of the furthest chunk acked since `size_set`, and the size the mount last gave
    /// the file (a truncate, O_TRUNC): what the server's size can be, for a reopen to know the
    /// file again.
    acked_end: u64,
    size_set: Option<u64>,
    /// A size the mount is giving the file, not yet confirmed by the server: until then the
    /// file may have it or still what it had (see [`InodeWrites::size_bounds`]).
    size_changing: Option<u64>,
    /// The lowest offset of a write that failed for good (not one of unknown fate): the file
    /// should end there, not hold later writes that landed beyond a hole (see
    /// [`InodeWrites::prefix_cut`]).
    first_lost: Option<u64>,
    /// Failed writes so far, and the errno of the last: an fsync through any descriptor opened
    /// before a failure reports it (as Linux's errseq does).
    failures: u64,
    last_failure: Errno,
}

impl Default for InodeWrites {
    fn default() -> Self {
        InodeWrites {
            state: Mutex::default(),
            changed: watch::channel(()).0,
        }
    }
}

/// Where the inode lets a chunk go.
enum Placement {
    /// Anywhere: nothing it overlaps is in flight.
    Free,
    /// Only on this channel, behind what it overlaps.
    Channel(usize),
    /// Not yet: it overlaps chunks on several channels.
    Wait,
}

/// The errnos of a WRITE whose fate is unknown: it may still be applied.
fn fate_unknown(errno: Errno) -> bool {
    errno == libc::ETIMEDOUT || errno == libc::ENOTCONN
}

impl InodeWrites {
    fn begin(&self, end: u64, chunks: usize) -> u64 {
        let mut s = self.state.lock().unwrap();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.unacked.insert(seq);
        s.unacked_end = s.unacked_end.max(end);
        s.unsent += chunks;
        seq
    }

    /// Whether attribute changes sent in the background are still unanswered: until they are,
    /// the server's attributes are older than what the kernel was told.
    pub fn attrs_changing(&self) -> bool {
        self.state.lock().unwrap().attr_changes > 0
    }

    /// An attribute change was sent behind the inode's writes: barriers wait for it as for a
    /// write, and the attributes the kernel was told stay ahead of the server's until it ends.
    fn begin_attr_change(&self) -> u64 {
        let seq = self.begin(0, 0);
        self.state.lock().unwrap().attr_changes += 1;
        seq
    }

    /// Its reply came: a failure counts as a write's does (fsync reports it).
    fn end_attr_change(&self, seq: u64, result: Result<(), Errno>) {
        {
            let mut s = self.state.lock().unwrap();
            s.attr_changes -= 1;
            if let Err(errno) = result {
                s.failures += 1;
                s.last_failure = errno;
            }
        }
        self.finish(seq);
    }

    /// A chunk was queued on its channel, or failed before.
    fn sent(&self) {
        self.state.lock().unwrap().unsent -= 1;
    }

    /// Whether every unacked write of the inode is queued on `channel` (see
    /// [`super::handle::ServerHandle::ordering_channel`]): a server that runs a channel in order
    /// applies a request queued there now after them.
    pub fn all_queued_on(&self, channel: usize) -> bool {
        let s = self.state.lock().unwrap();
        s.unsent == 0
            && s.in_flight
                .values()
                .chain(&s.unknown_fate)
                .all(|p| p.channel == channel)
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

    /// Where a chunk at `offset` may go, given what of the inode is in flight.
    fn placement(s: &InodeWritesState, offset: u64, len: u64) -> Placement {
        let mut channels = s
            .in_flight
            .values()
            .chain(&s.unknown_fate)
            .filter(|p| p.overlaps(offset, len))
            .map(|p| p.channel);
        match channels.next() {
            None => Placement::Free,
            Some(first) if channels.all(|c| c == first) => Placement::Channel(first),
            Some(_) => Placement::Wait,
        }
    }

    /// Whether a chunk can ever be ordered after the WRITEs of unknown fate it overlaps: only
    /// behind them on their one channel, on a lane there (`lane_on`), when the server keeps a
    /// channel's order (`in_order`). Their acks never come, so waiting cannot help.
    fn orderable(
        s: &InodeWritesState,
        offset: u64,
        len: u64,
        in_order: bool,
        lane_on: impl Fn(usize) -> bool,
    ) -> bool {
        let mut channels = s
            .unknown_fate
            .iter()
            .filter(|p| p.overlaps(offset, len))
            .map(|p| p.channel);
        match channels.next() {
            None => true,
            Some(first) => in_order && lane_on(first) && channels.all(|c| c == first),
        }
    }

    fn landed(&self, chunk: u64, result: Result<(), Errno>) {
        let mut s = self.state.lock().unwrap();
        let placed = s.in_flight.remove(&chunk);
        if let (Ok(()), Some(placed)) = (result, placed) {
            s.acked_end = s.acked_end.max(placed.offset + placed.len);
        }
        if let Err(errno) = result {
            s.failures += 1;
            s.last_failure = errno;
            if let Some(placed) = placed {
                if fate_unknown(errno) {
                    s.unknown_fate.push(placed);
                } else {
                    s.first_lost = Some(
                        s.first_lost
                            .map_or(placed.offset, |at| at.min(placed.offset)),
                    );
                }
            }
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

    /// The mount is giving the file this size (a truncate on its way): read-ahead is stale
    /// from now on, and until [`InodeWrites::truncated_to`] or
    /// [`InodeWrites::truncate_failed`] the server's file may have either size.
    pub fn truncating(&self, size: u64) {
        let mut s = self.state.lock().unwrap();
        s.next_seq += 1;
        s.size_changing = Some(size);
    }

    /// The truncate announced by [`InodeWrites::truncating`] did not happen.
    pub fn truncate_failed(&self) {
        self.state.lock().unwrap().size_changing = None;
    }

    /// The mount gave the file this size (a truncate the server confirmed, or an O_TRUNC
    /// open it answered): its contents changed other than by a write.
    pub fn truncated_to(&self, size: u64) {
        let mut s = self.state.lock().unwrap();
        s.next_seq += 1;
        s.size_set = Some(size);
        s.size_changing = None;
        s.acked_end = 0;
        s.first_lost = None;
    }

    /// Once writes failed and every write has settled: where the file must be cut so that it
    /// is a clean prefix, as a local filesystem leaves a failed sequential write (tools that
    /// resume from a file's size, `curl -C -`, `rsync --append`, would build on a hole). Only
    /// when later writes landed beyond the failed one, and only what this mount wrote: not
    /// below the size the file had when opened (`opened`) or was last given. Given once.
    pub fn prefix_cut(&self, opened: u64) -> Option<u64> {
        let mut s = self.state.lock().unwrap();
        let at = s.first_lost?;
        if !s.unacked.is_empty() {
            return None;
        }
        s.first_lost = None;
        let base = s.size_set.unwrap_or(opened);
        (base <= at && s.acked_end > at).then_some(at)
    }

    /// Bytes were copied into the file on the server up to `end` (copy-data): its contents
    /// changed other than by a write, and it is at least that long.
    pub fn copied_in(&self, end: u64) {
        let mut s = self.state.lock().unwrap();
        s.next_seq += 1;
        s.acked_end = s.acked_end.max(end);
    }

    /// The file was opened with nothing of the inode's open before: what the mount knew of its
    /// size may have changed on the server since.
    pub fn forget_size(&self) {
        let mut s = self.state.lock().unwrap();
        if s.unacked.is_empty() {
            s.size_set = None;
            s.acked_end = 0;
        }
    }

    /// The sizes the server's file may have from what the mount did, for a file that had
    /// `opened` bytes when it was opened: at least the end of the furthest acked write and the
    /// size the mount last set (else `opened`); at most the furthest end in flight, that size,
    /// or `opened`; a truncate on its way widens them to its size too.
    pub fn size_bounds(&self, opened: u64) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        let base = s.size_set.unwrap_or(opened);
        let least = s.acked_end.max(base);
        let most = s.unacked_end.max(s.acked_end).max(base);
        match s.size_changing {
            Some(size) => (least.min(size), most.max(size)),
            None => (least, most),
        }
    }

    /// The size of a file last known to have `known` bytes, at least what the mount's own
    /// acked writes (since its last truncate) made it.
    pub fn size_at_least(&self, known: u64) -> u64 {
        known.max(self.size_bounds(known).0)
    }

    /// The size to report while writes are in flight: the server's size does not know them yet.
    pub fn size_floor(&self) -> u64 {
        self.state.lock().unwrap().unacked_end
    }

    /// How many writes of this inode have failed so far: see [`InodeWrites::failure_since`].
    pub fn failures(&self) -> u64 {
        self.state.lock().unwrap().failures
    }

    /// The errno of the last failure if any failed after the count `seen`; `seen` moves on.
    pub fn failure_since(&self, seen: &AtomicU64) -> Option<Errno> {
        let s = self.state.lock().unwrap();
        let before = seen.swap(s.failures, Ordering::AcqRel);
        (s.failures > before).then_some(s.last_failure)
    }

    /// Waits until every write issued before this call has been acked (or has failed), from
    /// whichever open file: later writes do not hold it up.
    pub async fn settle(&self) {
        let horizon = self.generation();
        self.settle_before(horizon).await
    }

    /// Waits until every write issued before the inode's [`InodeWrites::generation`] was
    /// `horizon` has been acked (or has failed).
    pub async fn settle_before(&self, horizon: u64) {
        let mut rx = self.changed.subscribe();
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
    /// the errno the failure means. `chunk` numbers the inode's chunks in the order they are
    /// submitted: one that must be sent again (after a reconnection) keeps its place by it.
    fn submit(&self, chunk: u64, offset: u64, data: Bytes) -> AckFuture;

    /// The channel the handle lives on: requests on one channel are executed in order, whatever
    /// open file sent them.
    fn channel(&self) -> usize;

    /// Whether new chunks should go here: a lane whose connection is gone still takes the
    /// chunks that must follow others on it, but no others.
    fn usable(&self) -> bool {
        true
    }

    /// The unacked bytes a file may hold on this lane's link: a few seconds of its rate keep it
    /// full; more only makes a writer's progress (and its Ctrl-C) lag behind the link.
    fn buffer_limit(&self) -> usize {
        usize::MAX
    }
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
    /// The server executes a channel's requests in order: an overlapping chunk may follow the
    /// chunks it overlaps on their channel instead of waiting for their acks.
    pub in_order: bool,
}

impl PipelineState {
    /// Numbers a write (or attribute change) taken now, unacked until it lands.
    fn begin(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.insert(seq);
        seq
    }
}

#[derive(Default)]
struct PipelineState {
    buffered: usize,
    latched: Option<Errno>,
    /// Kernel writes accepted, numbered; those not yet wholly acked.
    next_seq: u64,
    unacked: BTreeSet<u64>,
    /// Bytes in flight on each lane, to pick the least loaded.
    lane_load: Vec<usize>,
    /// Bytes accepted that never reached the server (their write failed).
    lost_bytes: u64,
    /// The first failure of an attribute change, reported by every later barrier.
    attr_failed: Option<Errno>,
}

/// The write side of one open file.
pub struct WritePipeline {
    /// Lock order: `lanes` before `state` (before the inode's state), never the other way.
    lanes: Mutex<Vec<Arc<dyn WriteLane>>>,
    /// The first lane, whose link sets the file's buffer; kept apart so that asking it needs no
    /// lock (asked under `state`'s, it must not take `lanes`: a deadlock with `add_lane`).
    link: Arc<dyn WriteLane>,
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
    /// No more writes are taken (the mount is shutting down); those refused are counted.
    closed: AtomicBool,
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
            link: first_lane.clone(),
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
            closed: AtomicBool::new(false),
        })
    }

    /// Adds a lane (another handle on another channel). Appends never spread.
    pub fn add_lane(&self, lane: Arc<dyn WriteLane>) {
        if self.append {
            return;
        }
        // Both under the lanes' lock (taken before the state's, as `place` takes them): a
        // writer must never see a lane without its load (it indexed past the loads: a panic).
        let mut lanes = self.lanes.lock().unwrap();
        self.state.lock().unwrap().lane_load.push(0);
        lanes.push(lane);
        drop(lanes);
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

    /// Bytes accepted whose WRITE failed: they are not on the server.
    pub fn lost_bytes(&self) -> u64 {
        self.state.lock().unwrap().lost_bytes
    }

    pub fn is_append(&self) -> bool {
        self.append
    }

    /// Takes no more writes: each later one fails with EIO, so the writer hears of it.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.send_replace(());
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
        let (take, mut permit, write_seq) = self.reserve(data.len(), whole).await?;
        let data = data.slice(..take);
        self.accepted.fetch_add(take as u64, Ordering::Relaxed);
        let chunks = take.div_ceil(self.limits.max_write);
        let seq = self.inode.begin(offset + take as u64, chunks);
        let remaining = Arc::new(AtomicUsize::new(chunks));
        let mut pos = 0;
        while pos < take {
            let end = (pos + self.limits.max_write).min(take);
            let chunk = data.slice(pos..end);
            let chunk_offset = offset + pos as u64;
            let chunk_permit = if end == take {
                permit.take()
            } else {
                permit.as_mut().and_then(|p| p.split(chunk.len()))
            };
            let placed = self.place(chunk_offset, chunk.len() as u64).await;
            let this = self.clone();
            let remaining = remaining.clone();
            let done = move |this: &Self| {
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    this.inode.finish(seq);
                    this.state.lock().unwrap().unacked.remove(&write_seq);
                    this.changed.send_replace(());
                }
            };
            match placed {
                Ok((id, lane_index)) => {
                    let lane = self.lanes.lock().unwrap()[lane_index].clone();
                    let ack = lane.submit(id, chunk_offset, chunk.clone());
                    self.inode.sent();
                    tokio::spawn(async move {
                        let result = ack.await;
                        this.inode.landed(id, result);
                        this.landed(chunk.len(), Some(lane_index), result);
                        drop(chunk_permit);
                        done(&this);
                    });
                }
                Err(errno) => {
                    // Never sent: it cannot be placed safely behind a write of unknown fate.
                    self.inode.sent();
                    this.landed(chunk.len(), None, Err(errno));
                    drop(chunk_permit);
                    done(&this);
                }
            }
            pos = end;
        }
        Ok(take as u32)
    }

    fn landed(&self, len: usize, lane: Option<usize>, result: Result<(), Errno>) {
        {
            let mut s = self.state.lock().unwrap();
            if let Err(errno) = result {
                s.lost_bytes += len as u64;
                if s.latched.is_none() {
                    warn!("write failed: {}", std::io::Error::from_raw_os_error(errno));
                    s.latched = Some(errno);
                }
            }
            s.buffered -= len;
            if let Some(lane) = lane {
                s.lane_load[lane] -= len;
            }
        }
        self.changed.send_replace(());
    }

    /// The unacked bytes this file may hold now: its limit, or less on a slow link (see
    /// [`WriteLane::buffer_limit`]).
    fn per_file(&self) -> usize {
        self.limits.per_file.min(self.link.buffer_limit())
    }

    /// Waits for room and takes it: per file first, then from the mount's global budget. The
    /// write is numbered (for [`WritePipeline::settle`]) under the same lock that checks
    /// [`WritePipeline::close`], so a barrier after a close sees every write taken before it.
    async fn reserve(
        &self,
        len: usize,
        whole: bool,
    ) -> Result<(usize, Option<OwnedSemaphorePermit>, u64), Errno> {
        let mut rx = self.changed.subscribe();
        let (take, seq) = loop {
            {
                let per_file = self.per_file();
                let mut s = self.state.lock().unwrap();
                if let Some(errno) = s.latched {
                    return Err(errno);
                }
                if self.closed.load(Ordering::Acquire) {
                    return Err(libc::EIO);
                }
                let free = per_file.saturating_sub(s.buffered);
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
                    break (take, s.begin());
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
            let mut s = self.state.lock().unwrap();
            s.buffered -= given_back;
            if granted.is_err() {
                s.unacked.remove(&seq);
            }
            drop(s);
            self.changed.send_replace(());
        }
        granted.map(|(got, permit)| (got, Some(permit), seq))
    }

    /// Chooses the lane for a chunk and records it as in flight, for this file and its inode.
    async fn place(&self, offset: u64, len: u64) -> Result<(u64, usize), Errno> {
        let mut rx = self.changed.subscribe();
        let mut inode_rx = self.inode.changed.subscribe();
        loop {
            {
                let lanes = self.lanes.lock().unwrap();
                let mut s = self.state.lock().unwrap();
                let mut inode = self.inode.state.lock().unwrap();
                let in_order = self.limits.in_order;
                let lane_on = |channel| lanes.iter().position(|l| l.channel() == channel);
                if !InodeWrites::orderable(&inode, offset, len, in_order, |c| lane_on(c).is_some())
                {
                    return Err(libc::EIO);
                }
                let lane = match InodeWrites::placement(&inode, offset, len) {
                    Placement::Wait => None,
                    Placement::Channel(channel) => lane_on(channel).filter(|_| in_order),
                    Placement::Free if self.append => Some(0),
                    Placement::Free => {
                        let loads = &s.lane_load;
                        let usable: Vec<usize> =
                            (0..lanes.len()).filter(|&i| lanes[i].usable()).collect();
                        let candidates = if usable.is_empty() {
                            (0..lanes.len()).collect()
                        } else {
                            usable
                        };
                        candidates
                            .iter()
                            .copied()
                            .find(|&i| loads[i] + len as usize <= self.limits.lane_target)
                            .or_else(|| {
                                // Every lane is at its window: use the least loaded, unless
                                // more lanes are on their way.
                                (!self.expecting_lanes.load(Ordering::Relaxed))
                                    .then(|| candidates.iter().copied().min_by_key(|&i| loads[i]))
                                    .flatten()
                            })
                    }
                };
                if let Some(lane) = lane {
                    let id = inode.next_chunk;
                    inode.next_chunk += 1;
                    let channel = lanes[lane].channel();
                    inode.in_flight.insert(
                        id,
                        Placed {
                            offset,
                            len,
                            channel,
                        },
                    );
                    s.lane_load[lane] += len as usize;
                    return Ok((id, lane));
                }
            }
            // Overlaps writes in flight on other channels, or waits for new lanes: wait.
            tokio::select! {
                r = rx.changed() => r.map_err(|_| libc::EIO)?,
                r = inode_rx.changed() => r.map_err(|_| libc::EIO)?,
            }
        }
    }

    /// Takes an attribute change (chmod, chown, utimes) already queued behind this file's
    /// writes, so that the program need not wait for it: barriers wait for it as for a write,
    /// and the next one reports its failure, once (a later write does not: it is not the
    /// data's). Refused (`false`) once the pipeline is closed or has failed: the caller waits
    /// for the change itself then.
    pub fn track_attr_change(self: &Arc<Self>, ack: AckFuture) -> bool {
        let seq = {
            let mut s = self.state.lock().unwrap();
            if s.latched.is_some() || self.closed.load(Ordering::Acquire) {
                return false;
            }
            s.begin()
        };
        let inode_seq = self.inode.begin_attr_change();
        let this = self.clone();
        tokio::spawn(async move {
            let result = ack.await;
            this.inode.end_attr_change(inode_seq, result);
            let mut s = this.state.lock().unwrap();
            if let Err(errno) = result {
                warn!(
                    "attribute change failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
                s.attr_failed.get_or_insert(errno);
            }
            s.unacked.remove(&seq);
            drop(s);
            this.changed.send_replace(());
        });
        true
    }

    /// Waits until every write (and attribute change) accepted before this call is acked (a
    /// writer that goes on writing does not hold it up); returns the latched failure, if any,
    /// or else an attribute change's not reported yet.
    pub async fn settle(&self) -> Result<(), Errno> {
        let mut rx = self.changed.subscribe();
        let horizon = self.state.lock().unwrap().next_seq;
        loop {
            {
                let s = self.state.lock().unwrap();
                if s.unacked.first().is_none_or(|&oldest| oldest >= horizon) {
                    if let Some(errno) = s.latched {
                        return Err(errno);
                    }
                    // Kept, as a write's failure is: every later barrier of this open file
                    // reports it (a duplicate's close, a forked child's, must not use it up
                    // before the opener's).
                    return s.attr_failed.map_or(Ok(()), Err);
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
        fn submit(&self, _chunk: u64, offset: u64, data: Bytes) -> AckFuture {
            let (tx, rx) = oneshot::channel();
            self.server.queue.lock().unwrap().push_back(Submitted {
                lane: self.lane,
                offset,
                data,
                ack: tx,
            });
            Box::pin(async move { rx.await.unwrap_or(Err(libc::EIO)) })
        }

        fn channel(&self) -> usize {
            self.lane
        }
    }

    fn limits(per_file: usize, max_write: usize) -> WriteLimits {
        WriteLimits {
            per_file,
            max_write,
            short_writes: true,
            lane_target: 3 * max_write,
            in_order: true,
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

    fn pipeline_on(
        server: &Arc<FakeServer>,
        inode: &Arc<InodeWrites>,
        lanes: &[usize],
    ) -> Arc<WritePipeline> {
        let p = WritePipeline::new(
            server.lane(lanes[0]),
            limits(1 << 20, 100),
            ByteBudget::new(1 << 20),
            inode.clone(),
            false,
        );
        for &lane in &lanes[1..] {
            p.add_lane(server.lane(lane));
        }
        p
    }

    /// Fills lane 0 to its target (300 bytes at 1000), so that a write of 1s over 0..100
    /// goes to channel 1.
    async fn write_0_to_100_on_channel_1(p: &Arc<WritePipeline>) {
        p.write(1000, Bytes::from(vec![9u8; 300]), false)
            .await
            .unwrap();
        p.write(0, Bytes::from(vec![1u8; 100]), false)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn overlapping_writes_of_two_open_files_keep_their_order() {
        let server = Arc::new(FakeServer::default());
        let inode = Arc::new(InodeWrites::default());
        let a = pipeline_on(&server, &inode, &[0, 1]);
        write_0_to_100_on_channel_1(&a).await;
        assert_eq!(server.lanes_used(), vec![0, 0, 0, 1]);
        // A second descriptor (channel 0 only) rewrites the range still in flight on channel 1.
        let b = pipeline_on(&server, &inode, &[0]);
        let writer = {
            let b = b.clone();
            tokio::spawn(async move { b.write(0, Bytes::from(vec![2u8; 100]), false).await })
        };
        yield_a_bit().await;
        assert_eq!(
            server.pending(),
            4,
            "b's write waits for the one it overlaps"
        );
        server.ack_lane(0);
        yield_a_bit().await;
        assert_eq!(server.pending(), 1, "still waiting for channel 1");
        server.ack_lane(1);
        yield_a_bit().await;
        assert_eq!(writer.await.unwrap(), Ok(100));
        server.ack_lane(0);
        assert_eq!(settle_soon(&a).await, Ok(()));
        assert_eq!(settle_soon(&b).await, Ok(()));
        assert_eq!(&server.file.lock().unwrap()[..100], &[2u8; 100][..]);
    }

    #[tokio::test]
    async fn without_in_order_channels_an_overlapping_write_waits_for_the_ack() {
        // A threaded server may run two requests of one channel in either order.
        let server = Arc::new(FakeServer::default());
        let p = WritePipeline::new(
            server.lane(0),
            WriteLimits {
                in_order: false,
                ..limits(1 << 20, 100)
            },
            ByteBudget::new(1 << 20),
            Arc::default(),
            false,
        );
        p.write(0, Bytes::from(vec![1u8; 100]), false)
            .await
            .unwrap();
        let writer = {
            let p = p.clone();
            tokio::spawn(async move { p.write(50, Bytes::from(vec![2u8; 100]), false).await })
        };
        yield_a_bit().await;
        assert_eq!(server.pending(), 1, "the overlapping write is held back");
        server.ack_one(0);
        assert_eq!(writer.await.unwrap(), Ok(100));
        yield_a_bit().await;
        assert_eq!(server.pending(), 1);
        server.ack_lane(0);
        assert_eq!(settle_soon(&p).await, Ok(()));
        assert_eq!(&server.file.lock().unwrap()[50..150], &[2u8; 100][..]);
    }

    #[tokio::test]
    async fn a_write_of_unknown_fate_is_never_overtaken() {
        let server = Arc::new(FakeServer::default());
        *server.fail_at.lock().unwrap() = Some((50, libc::ETIMEDOUT));
        let inode = Arc::new(InodeWrites::default());
        let a = pipeline_on(&server, &inode, &[0, 1]);
        write_0_to_100_on_channel_1(&a).await;
        server.ack_lane(1);
        server.ack_lane(0);
        assert_eq!(settle_soon(&a).await, Err(libc::ETIMEDOUT));
        *server.fail_at.lock().unwrap() = None;
        // The timed-out WRITE may still be applied on channel 1: a write over it through a
        // descriptor without a handle there cannot be ordered after it, so it fails.
        let b = pipeline_on(&server, &inode, &[0]);
        assert_eq!(
            b.write(0, Bytes::from(vec![2u8; 100]), false).await,
            Ok(100)
        );
        assert_eq!(server.pending(), 0, "nothing sent");
        assert_eq!(settle_soon(&b).await, Err(libc::EIO));
        assert_eq!(b.lost_bytes(), 100);
        // One with a handle on channel 1 queues behind it there; elsewhere writes are free.
        let c = pipeline_on(&server, &inode, &[0, 1]);
        c.write(0, Bytes::from(vec![3u8; 100]), false)
            .await
            .unwrap();
        c.write(5000, Bytes::from(vec![4u8; 10]), false)
            .await
            .unwrap();
        assert_eq!(server.lanes_used(), vec![1, 0]);
        server.ack_all_lanes_reversed(2);
        assert_eq!(settle_soon(&c).await, Ok(()));
    }

    #[tokio::test]
    async fn a_writer_that_never_pauses_does_not_starve_a_barrier() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(1 << 20, 100), 1 << 20, 1);
        p.write(0, Bytes::from(vec![1u8; 100]), false)
            .await
            .unwrap();
        let barrier = {
            let p = p.clone();
            tokio::spawn(async move { p.settle().await })
        };
        for i in 1..20u64 {
            // Always one more write before the oldest is acked: never an empty buffer.
            p.write(i * 100, Bytes::from(vec![1u8; 100]), false)
                .await
                .unwrap();
            server.ack_one(0);
            yield_a_bit().await;
        }
        assert!(
            barrier.is_finished(),
            "settle waits only for earlier writes"
        );
        assert_eq!(barrier.await.unwrap(), Ok(()));
        server.ack_lane(0);
        assert_eq!(settle_soon(&p).await, Ok(()));
    }

    #[tokio::test]
    async fn a_failure_is_seen_by_every_descriptor_of_the_inode_once() {
        let server = Arc::new(FakeServer::default());
        *server.fail_at.lock().unwrap() = Some((0, libc::EDQUOT));
        let inode = Arc::new(InodeWrites::default());
        let reader_seen = AtomicU64::new(inode.failures());
        let a = pipeline_on(&server, &inode, &[0]);
        a.write(0, Bytes::from(vec![1u8; 10]), false).await.unwrap();
        server.ack_lane(0);
        assert_eq!(settle_soon(&a).await, Err(libc::EDQUOT));
        assert_eq!(inode.failure_since(&reader_seen), Some(libc::EDQUOT));
        assert_eq!(inode.failure_since(&reader_seen), None, "reported once");
        let opened_later = AtomicU64::new(inode.failures());
        assert_eq!(inode.failure_since(&opened_later), None);
    }

    #[tokio::test]
    async fn a_closed_pipeline_refuses_writes() {
        let server = Arc::new(FakeServer::default());
        let p = pipeline(&server, limits(1 << 20, 100), 1 << 20, 1);
        p.close();
        assert_eq!(
            p.write(0, Bytes::from(vec![1u8; 10]), false).await,
            Err(libc::EIO)
        );
        assert_eq!(server.pending(), 0);
    }
}
