//! What one connection's bulk data may hold on the wire at once, in each direction: WRITE data
//! going up, READ replies coming down. The channels of a connection share one TCP stream and
//! one sshd: bulk data beyond what keeps the link busy only queues (in socket buffers, in a
//! modem, in sshd), and a lookup sent behind it waits for all of it. Measured on main before
//! this (issue #21), 20 Mbit/s at 40 ms RTT: `ls -l` + `cat` of a small file took 10.7 s during
//! a 32 MiB upload or download, 0.32 s idle.
//!
//! So the queue is measured and held to a target, as LEDBAT does for background transfers: each
//! bulk request's time on the wire, less what its own bytes take at the delivery rate, is
//! compared with that of one sent while no other bulk was in flight (the base: the round trip,
//! the server's work, nothing queued); the difference is the queue the bulk in flight made.
//! Below the target ([`target`]: half a round trip) the cap grows, by up to half of each
//! request delivered (about 1.5 times a round trip; three times, until a queue is first seen,
//! as BBR's startup), above it the cap shrinks as fast. Once no
//! request went alone for [`DRAIN_EVERY`], bulk waits for what is in flight and one request
//! goes alone (BBR's ProbeRTT): a base taken long ago, before the path changed, would misjudge
//! the queue. The cap never exceeds a few times what the link holds at the target ([`CAP_GAIN`]),
//! so that a queue misjudged (at the start, when the rate is not yet known) drains soon.
//!
//! Bulk goes in requests whose size follows the link too ([`WireGate::bulk_request`]: larger
//! ones are split): a quarter of a round trip of the delivery rate, at least
//! [`MIN_BULK_REQUEST`]; the fastest rate of the last [`RATE_WINDOW`] counts, so that a pause
//! does not shrink them. The cap is never below two of them.
//!
//! Round trips of small requests (not bulk) answered while little bulk was in flight give the
//! target; the lowest of the last minute or two counts, so that a path that got longer is
//! noticed. The price: a channel whose server stalls keeps its share until its requests time out
//! (`request_timeout`), and the other channels' bulk waits behind it meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The cap before anything is learnt: bulk a near link takes in a moment (at RTT 0, `ls -l` +
/// `cat` during a 256 MiB upload took 0.025-0.036 s with 1 MiB on the wire, 0.06-0.15 s with
/// every channel's 2 MiB window full), and a slow one drains in a fraction of a second.
pub const MIN_CAP: usize = 256 << 10;
/// Bulk goes in requests of about a quarter of a round trip of the link's rate (at least
/// [`BULK_REQUEST_TIME`] of it, so that a fast link is not cut into many small requests), and
/// never less than this: one request of 256 KiB is 100 ms of a 20 Mbit/s line.
pub const MIN_BULK_REQUEST: usize = 32 << 10;
const BULK_REQUEST_TIME: Duration = Duration::from_millis(10);
/// The least queue the target allows: below a few milliseconds, the scheduling of a busy
/// machine reads as queue.
const MIN_TARGET: Duration = Duration::from_millis(5);
/// How long bulk may go without a request sent alone (a fresh base) before one is made to.
const DRAIN_EVERY: Duration = Duration::from_secs(10);
/// Round trips are taken only while at most this much bulk is in flight.
const CLEAN_IN_FLIGHT: usize = 512 << 10;
/// How long the lowest round trip of a period stands.
const PERIOD: Duration = Duration::from_secs(60);
/// The most the cap may be, in what the link holds at the queue aimed at (BBR's gain for its
/// congestion window). At 5 Mbit/s and 150 ms, ls -l + cat during an upload took 1.27-1.34 s
/// with a ceiling of 270 KB, 1.37-1.45 s with 410 KB (0.79 s idle).
const CAP_GAIN: f64 = 2.0;
/// The same until a queue is first seen (BBR's startup gain, 2/ln 2): the cap of a far, fast
/// link still triples each round trip (with 2, a 256 MiB read at 300 ms ran at 50.4-51.2 MB/s,
/// 54.1 without a ceiling).
const STARTUP_CAP_GAIN: f64 = 2.89;
/// How long the fastest delivery rate stands.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Which way a request's bulk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// WRITE data, to the server.
    Up,
    /// READ replies, from the server.
    Down,
}

/// One direction's bulk: what is in flight, who waits, what was delivered, how fast and how
/// queued.
struct Flow {
    in_flight: usize,
    cap: usize,
    /// Bulk waiting to go, in the order it asked: first come, first sent. Each is told whether
    /// it went alone.
    waiting: VecDeque<(usize, oneshot::Sender<bool>)>,
    /// Bytes delivered so far, and when the last of them was.
    delivered: u64,
    delivered_at: Instant,
    /// Delivery rates (bytes a second) of the last [`RATE_WINDOW`], each with when it was
    /// taken; only those that may still be the fastest are kept.
    rates: VecDeque<(Instant, f64)>,
    /// A request's time on the wire, less its own bytes at the rate, when it went alone; and
    /// when the last request that went alone was delivered.
    base: Option<Duration>,
    alone_at: Instant,
    /// Bulk waits for all in flight to be delivered, until one request goes alone (see
    /// [`DRAIN_EVERY`]); those behind that one may follow it at once: they queue behind it,
    /// not ahead, so its time on the wire stays clean.
    draining: bool,
    /// No queue seen yet: the cap triples each round trip (as BBR's startup nearly does), not
    /// half as fast again; a far, fast link is full in a few round trips instead of ten (at
    /// 300 ms, 3 s from 256 KiB to 16 MiB, a third of a 256 MiB copy).
    starting: bool,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            in_flight: 0,
            cap: MIN_CAP,
            waiting: VecDeque::new(),
            delivered: 0,
            delivered_at: Instant::now(),
            rates: VecDeque::new(),
            base: None,
            alone_at: Instant::now(),
            draining: false,
            starting: true,
        }
    }

    /// The size bulk requests should have, from the rate and round trip learnt.
    fn bulk_request(&self, rtt: Option<Duration>) -> Option<usize> {
        let (rate, rtt) = (self.fastest()?, rtt?);
        let time = (rtt / 4).max(BULK_REQUEST_TIME);
        Some(((rate * time.as_secs_f64()) as usize).max(MIN_BULK_REQUEST))
    }

    /// `len` goes on the wire; whether it went alone. A request sent with nothing in flight
    /// starts the delivery clock afresh (as BBR does): the time since the last delivery, long
    /// ago, is not time the link took to deliver it (the first sample of an upload read 0.06
    /// MB/s on a 0.6 MB/s link, so its own bytes seemed to take the queue's time and the cap
    /// kept growing to 2 s of the link).
    fn send(&mut self, len: usize) -> bool {
        let alone = self.in_flight == 0;
        if alone {
            self.delivered_at = Instant::now();
            // Waiting for its reply too left the link idle a second round trip (0.3 s of
            // each 10 s at 150 ms).
            self.draining = false;
        }
        self.in_flight += len;
        alone
    }

    /// Whether `len` more may go now: always when nothing is in flight.
    fn fits(&self, len: usize) -> bool {
        self.in_flight == 0 || (!self.draining && self.in_flight + len <= self.cap)
    }

    /// Admits the waiting bulk that fits now, in its order.
    fn let_in(&mut self) {
        while let Some(len) = self.waiting.front().map(|w| w.0) {
            if !self.fits(len) {
                break;
            }
            let (len, tx) = self.waiting.pop_front().expect("front exists");
            let alone = self.send(len);
            if tx.send(alone).is_err() {
                // Its sender went away (the session ended): the room is free again.
                self.in_flight -= len;
            }
        }
    }

    fn fastest(&self) -> Option<f64> {
        self.rates.front().map(|r| r.1)
    }

    fn add_rate(&mut self, now: Instant, rate: f64) {
        while self.rates.back().is_some_and(|r| r.1 <= rate) {
            self.rates.pop_back();
        }
        self.rates.push_back((now, rate));
        while self
            .rates
            .front()
            .is_some_and(|r| now.duration_since(r.0) > RATE_WINDOW)
        {
            self.rates.pop_front();
        }
    }

    /// A request of `bytes` (`alone`: sent with no other bulk in flight) spent `wire` between
    /// its sending and its reply (`rtt`: a small request's round trip): the cap moves towards
    /// the queue `target`. `least`: the cap's floor.
    #[allow(clippy::too_many_arguments)]
    fn learn_queue(
        &mut self,
        now: Instant,
        wire: Duration,
        bytes: usize,
        alone: bool,
        rtt: Option<Duration>,
        target: Duration,
        least: usize,
    ) {
        // Its own bytes at the rate, and at most what the wire time leaves beyond a round trip
        // (the first rates are low: the cap let little through).
        let own = self.fastest().map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(bytes as f64 / rate)
        });
        let own = own.min(wire.saturating_sub(rtt.unwrap_or_default()));
        let sample = wire.saturating_sub(own);
        if alone {
            // The lowest of the recent ones: a path that got longer is seen at the next drain.
            let recent = now.duration_since(self.alone_at) < DRAIN_EVERY;
            self.base = Some(match self.base {
                Some(base) if recent => base.min(sample),
                _ => sample,
            });
            self.alone_at = now;
            self.draining = false;
        } else if now.duration_since(self.alone_at) > DRAIN_EVERY && !self.draining {
            self.draining = true;
        }
        let queue = sample.saturating_sub(self.base.unwrap_or(sample));
        let off = 1.0 - queue.as_secs_f64() / target.as_secs_f64();
        if off < 0.5 {
            self.starting = false;
        }
        let gain = if self.starting { 2.0 } else { 0.5 };
        let step = off.clamp(-1.0, 1.0) * bytes as f64 * gain;
        let mut cap = (self.cap as f64 + step) as usize;
        // Never more than twice what the link holds with the queue aimed at (a round trip and
        // the target of the fastest rate seen), or the first cap: a cap that grows while the
        // queue is misjudged still drains in about a second. (At the start, a request alone
        // delivers its bytes over a round trip and its own time: the rate it shows is low.)
        if let (Some(rate), Some(rtt)) = (self.fastest(), rtt) {
            let held = rate * (rtt + target).as_secs_f64();
            let ceiling_gain = if self.starting {
                STARTUP_CAP_GAIN
            } else {
                CAP_GAIN
            };
            cap = cap.min(((held * ceiling_gain) as usize).max(MIN_CAP));
        }
        self.cap = cap.max(least);
    }
}

struct State {
    up: Flow,
    down: Flow,
    /// The lowest clean round trip of this period and of the one before.
    best_now: Option<Duration>,
    best_before: Option<Duration>,
    period_start: Instant,
}

impl State {
    fn flow(&mut self, direction: Direction) -> &mut Flow {
        match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }

    fn min_rtt(&self) -> Option<Duration> {
        match (self.best_now, self.best_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The queue bulk may make: half a round trip, at least [`MIN_TARGET`].
    fn target(&self) -> Duration {
        self.min_rtt()
            .map_or(MIN_TARGET, |rtt| (rtt / 2).max(MIN_TARGET))
    }
}

pub struct WireGate {
    state: Mutex<State>,
}

/// Room for one request's bulk on the wire, given back when dropped (its reply came, or it
/// failed).
pub struct GatePermit {
    gate: Arc<WireGate>,
    direction: Direction,
    len: usize,
    sent_at: Instant,
    /// No other bulk of its direction was in flight when it went.
    alone: bool,
    /// The flow's delivered bytes, and the time of the last of them, when this was sent.
    delivered_before: u64,
    delivered_at_before: Instant,
}

impl GatePermit {
    /// The bulk bytes this permit holds on the wire.
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Its reply came with `bytes` of bulk delivered (a WRITE's data acked, a READ's data
    /// received): a sample of the rate the link delivers at, and of the queue.
    pub fn delivered(&self, bytes: usize) {
        self.gate.delivered(self, bytes);
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock().unwrap();
        let flow = s.flow(self.direction);
        flow.in_flight -= self.len;
        flow.let_in();
    }
}

impl WireGate {
    pub fn new() -> Arc<WireGate> {
        Arc::new(WireGate {
            state: Mutex::new(State {
                up: Flow::new(),
                down: Flow::new(),
                best_now: None,
                best_before: None,
                period_start: Instant::now(),
            }),
        })
    }

    /// Waits until `len` more bytes of bulk may go `direction`. One request always may when
    /// nothing of its direction is in flight, whatever its size.
    pub async fn admit(self: &Arc<Self>, direction: Direction, len: usize) -> GatePermit {
        let waiting = {
            let mut s = self.state.lock().unwrap();
            let flow = s.flow(direction);
            if flow.waiting.is_empty() && flow.fits(len) {
                Err(flow.send(len))
            } else {
                let (tx, rx) = oneshot::channel();
                flow.waiting.push_back((len, tx));
                Ok(rx)
            }
        };
        // The sender is only dropped once it has admitted us (see `let_in`).
        let alone = match waiting {
            Err(alone) => alone,
            Ok(rx) => rx.await.unwrap_or(false),
        };
        let s = self.state.lock().unwrap();
        let flow = match direction {
            Direction::Up => &s.up,
            Direction::Down => &s.down,
        };
        GatePermit {
            gate: self.clone(),
            direction,
            len,
            sent_at: Instant::now(),
            alone,
            delivered_before: flow.delivered,
            delivered_at_before: flow.delivered_at,
        }
    }

    /// A delivery rate sample, as BBR takes it: the bytes delivered between this request's
    /// sending and its reply, over the longer of that time and the time since the last
    /// delivery before it was sent (so that a burst of replies queued together does not read
    /// as a faster link); and a sample of the queue (see [`Flow::learn_queue`]).
    fn delivered(&self, permit: &GatePermit, bytes: usize) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        let (target, rtt) = (s.target(), s.min_rtt());
        let flow = s.flow(permit.direction);
        flow.delivered += bytes as u64;
        flow.delivered_at = now;
        let interval = now
            .duration_since(permit.sent_at)
            .max(now.duration_since(permit.delivered_at_before));
        if interval >= Duration::from_micros(100) {
            let rate = (flow.delivered - permit.delivered_before) as f64 / interval.as_secs_f64();
            flow.add_rate(now, rate);
        }
        let least = 2 * flow.bulk_request(rtt).unwrap_or(MIN_BULK_REQUEST);
        let wire = now.duration_since(permit.sent_at);
        let before = flow.cap;
        flow.learn_queue(now, wire, bytes, permit.alone, rtt, target, least);
        if flow.cap.abs_diff(before) > before / 4 || flow.cap == least && before != least {
            tracing::debug!(
                "bulk {:?}: {:.2} MB/s, base {:.1} ms, target {:.1} ms, cap {} KiB",
                permit.direction,
                flow.fastest().unwrap_or(0.0) / 1e6,
                flow.base.unwrap_or_default().as_secs_f64() * 1e3,
                target.as_secs_f64() * 1e3,
                flow.cap >> 10
            );
        }
        flow.let_in();
    }

    /// The lowest round trip of a small request lately, once there was one.
    pub fn round_trip(&self) -> Option<Duration> {
        self.state.lock().unwrap().min_rtt()
    }

    /// The round trip of a small request just answered.
    pub fn sample(&self, rtt: Duration) {
        let mut s = self.state.lock().unwrap();
        if s.up.in_flight + s.down.in_flight > CLEAN_IN_FLIGHT {
            return;
        }
        if s.period_start.elapsed() > PERIOD {
            s.best_before = s.best_now.take();
            s.period_start = Instant::now();
        }
        s.best_now = Some(s.best_now.map_or(rtt, |best| best.min(rtt)));
    }

    /// How large a bulk request going `direction` should be, at most (larger ones are split):
    /// none until the link is learnt. Writes before their rate is learnt go in the least: the
    /// kernel hands them over 256 KiB at a time, and one such took 0.4 s on a 5 Mbit/s uplink,
    /// a lookup behind it waited that long (read-ahead starts small of itself).
    pub fn bulk_request(&self, direction: Direction) -> Option<usize> {
        let mut s = self.state.lock().unwrap();
        let rtt = s.min_rtt()?;
        let learnt = s.flow(direction).bulk_request(Some(rtt));
        match direction {
            Direction::Up => Some(learnt.unwrap_or(MIN_BULK_REQUEST)),
            Direction::Down => learnt,
        }
    }

    /// The fastest rate bulk going `direction` was delivered at lately, bytes a second.
    pub fn delivery_rate(&self, direction: Direction) -> Option<f64> {
        self.state.lock().unwrap().flow(direction).fastest()
    }

    /// Bytes of bulk the connection may have on the wire now, going `direction`.
    pub fn cap(&self, direction: Direction) -> usize {
        self.state.lock().unwrap().flow(direction).cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bulk_waits_its_turn_and_goes_once_room_is_given_back() {
        let gate = WireGate::new();
        assert_eq!(gate.cap(Direction::Up), MIN_CAP);
        let first = gate.admit(Direction::Up, MIN_CAP - 10).await;
        // Does not fit: waits, and so does a small one behind it (first come, first sent).
        let big = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(Direction::Up, 100).await }
        });
        tokio::task::yield_now().await;
        let small = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(Direction::Up, 5).await }
        });
        // The other direction is not held up by this one.
        drop(gate.admit(Direction::Down, MIN_CAP).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!big.is_finished() && !small.is_finished());
        drop(first);
        let (big, small) = (big.await.unwrap(), small.await.unwrap());
        assert_eq!(gate.state.lock().unwrap().up.in_flight, 105);
        drop((big, small));
        assert_eq!(gate.state.lock().unwrap().up.in_flight, 0);
        // One request larger than the cap still goes when nothing else is in flight.
        let huge = gate.admit(Direction::Up, 3 * MIN_CAP).await;
        drop(huge);
    }

    #[test]
    fn the_cap_grows_while_bulk_is_not_queued_and_shrinks_when_it_is() {
        let mut flow = Flow::new();
        let now = Instant::now();
        let ms = Duration::from_millis;
        let (target, least) = (ms(20), 128 << 10);
        // 64 KiB at 2.5 MB/s take 26 ms of their own: a request alone gives the base (40 ms).
        flow.add_rate(now, 2.5e6);
        flow.learn_queue(now, ms(66), 65536, true, None, target, least);
        assert_eq!(
            flow.cap,
            MIN_CAP + 131072,
            "nothing queued yet: twice the request more (startup)"
        );
        // Queued 10 ms: half the target, the request more.
        flow.learn_queue(now, ms(76), 65536, false, None, target, least);
        assert_eq!(flow.cap, MIN_CAP + 131072 + 65536);
        // Queued 60 ms: three times the target, half the request less (the most it moves),
        // and the start is over.
        flow.learn_queue(now, ms(126), 65536, false, None, target, least);
        assert_eq!(flow.cap, MIN_CAP + 131072 + 32768);
        // Nothing queued: now half the request more.
        flow.learn_queue(now, ms(66), 65536, false, None, target, least);
        assert_eq!(flow.cap, MIN_CAP + 131072 + 65536);
        for _ in 0..20 {
            flow.learn_queue(now, ms(126), 65536, false, None, target, least);
        }
        assert_eq!(flow.cap, least, "never below its floor");
        // No request alone for a while: one at a time until one goes alone.
        flow.learn_queue(
            now + DRAIN_EVERY * 2,
            ms(66),
            65536,
            false,
            None,
            target,
            least,
        );
        assert!(flow.draining);
        flow.in_flight = 1000;
        assert!(!flow.fits(1), "draining: only alone");
        flow.in_flight = 0;
        assert!(flow.fits(1 << 30), "alone, whatever its size");
        assert!(flow.send(65536), "it went alone");
        assert!(
            flow.fits(65536),
            "the ones behind it follow at once: they queue behind it"
        );
        flow.learn_queue(
            now + DRAIN_EVERY * 2,
            ms(50),
            65536,
            true,
            None,
            target,
            least,
        );
        assert!(!flow.draining);
        assert_eq!(
            flow.base,
            Some(ms(50) - Duration::from_secs_f64(65536.0 / 2.5e6))
        );
    }

    #[test]
    fn the_cap_stays_within_a_few_round_trips_of_the_rate() {
        let mut flow = Flow::new();
        let now = Instant::now();
        let ms = Duration::from_millis;
        // 5 Mbit/s at 150 ms, 75 ms of queue aimed at: the link holds 141 KB.
        flow.add_rate(now, 625e3);
        flow.base = Some(ms(150));
        let least = 64 << 10;
        for _ in 0..50 {
            // Seemingly never queued (its own bytes misjudged): the cap would keep growing.
            flow.learn_queue(now, ms(150), 32768, false, Some(ms(150)), ms(75), least);
        }
        assert_eq!(
            flow.cap,
            (625e3 * (0.150 + 0.075) * STARTUP_CAP_GAIN) as usize
        );
        // Once a queue was seen, twice.
        flow.learn_queue(now, ms(300), 32768, false, Some(ms(150)), ms(75), least);
        assert!(!flow.starting);
        for _ in 0..50 {
            flow.learn_queue(now, ms(150), 32768, false, Some(ms(150)), ms(75), least);
        }
        assert_eq!(flow.cap, (625e3 * (0.150 + 0.075) * CAP_GAIN) as usize);
        // A slower link: never below the first cap.
        let mut slow = Flow::new();
        slow.add_rate(now, 62.5e3);
        slow.learn_queue(now, ms(150), 32768, false, Some(ms(150)), ms(75), least);
        assert_eq!(slow.cap, MIN_CAP);
    }

    #[tokio::test]
    async fn a_request_sent_alone_starts_the_delivery_clock() {
        let gate = WireGate::new();
        gate.sample(Duration::from_millis(10));
        // Long after the flow began: the wait before the send is not delivery time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let permit = gate.admit(Direction::Up, 100_000).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        permit.delivered(100_000);
        drop(permit);
        let rate = gate.state.lock().unwrap().up.fastest().unwrap();
        // 100 KB in about 20 ms, not in 220.
        assert!(rate > 2.0e6, "{rate}");
    }

    #[tokio::test]
    async fn bulk_requests_follow_the_rate_and_the_round_trip() {
        let gate = WireGate::new();
        assert_eq!(gate.bulk_request(Direction::Up), None, "nothing learnt yet");
        gate.sample(Duration::from_millis(40));
        let now = Instant::now();
        gate.state.lock().unwrap().up.add_rate(now, 2.5e6);
        // 20 Mbit/s: a quarter of a round trip is 25 KB, less than the least.
        assert_eq!(gate.bulk_request(Direction::Up), Some(MIN_BULK_REQUEST));
        gate.state.lock().unwrap().up.add_rate(now, 2.5e8);
        assert_eq!(gate.bulk_request(Direction::Up), Some(2_500_000));
        assert_eq!(
            gate.bulk_request(Direction::Down),
            None,
            "each direction its own: none learnt yet"
        );
        let fresh = WireGate::new();
        fresh.sample(Duration::from_millis(40));
        assert_eq!(
            fresh.bulk_request(Direction::Up),
            Some(MIN_BULK_REQUEST),
            "writes before their rate is learnt: the least"
        );
    }

    #[tokio::test]
    async fn a_delivery_sample_is_taken_over_the_time_the_bytes_took() {
        let gate = WireGate::new();
        gate.sample(Duration::from_millis(10));
        let permit = gate.admit(Direction::Down, 100_000).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        permit.delivered(100_000);
        drop(permit);
        let rate = gate.state.lock().unwrap().down.fastest().unwrap();
        // 100 KB in at least 50 ms: at most 2 MB/s.
        assert!(rate <= 2.0e6 && rate > 0.5e6, "{rate}");
    }

    #[test]
    fn round_trips_taken_under_bulk_do_not_count() {
        let gate = WireGate::new();
        gate.state.lock().unwrap().up.in_flight = 10 << 20;
        gate.sample(Duration::from_micros(100));
        assert!(gate.state.lock().unwrap().min_rtt().is_none());
        gate.state.lock().unwrap().up.in_flight = 0;
        gate.sample(Duration::from_micros(100));
        assert_eq!(
            gate.state.lock().unwrap().min_rtt(),
            Some(Duration::from_micros(100))
        );
    }
}
