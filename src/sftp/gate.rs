//! What one connection's bulk data may hold on the wire at once, in each direction: WRITE data
//! going up, READ replies coming down. The channels of a connection share one TCP stream and
//! one sshd: bulk data beyond what keeps the link busy only queues (in socket buffers, in a
//! modem, in sshd), and a lookup sent behind it waits for all of it. Measured on main before
//! this (issue #21), 20 Mbit/s at 40 ms RTT: `ls -l` + `cat` of a small file took 10.7 s during
//! a 32 MiB upload or download, 0.32 s idle.
//!
//! So the link is learnt, as BBR learns it: the rate at which bulk bytes are delivered (acked
//! WRITE data, received READ data) and the lowest round trip give the bandwidth-delay product,
//! and bulk in flight is held to [`GAIN`] times that (at least [`MIN_CAP`]): a small request
//! then waits behind about one round trip of bulk. The cap starts at [`MIN_CAP`] and doubles
//! with each round trip while the rate keeps up with it, since the rate it measures is all the
//! cap lets through until the link is full. The fastest rate of the last [`RATE_WINDOW`]
//! counts, so that a pause (the program thinking) does not shrink the cap.
//!
//! Round trips are taken from small requests (not bulk) answered while little bulk was in
//! flight, so that the queue the bulk makes does not raise them; the lowest of the last minute
//! or two counts, so that a path that got longer is noticed. The price: a channel whose server
//! stalls keeps its share until its requests time out (`request_timeout`), and the other
//! channels' bulk waits behind it meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Bulk in flight, at most, in bandwidth-delay products: one keeps the link full, the second
/// covers the delivery rate's dips.
const GAIN: f64 = 2.0;
/// The least the cap may be: bulk a near link takes in a moment (at RTT 0, `ls -l` + `cat`
/// during a 256 MiB upload took 0.025-0.036 s with 1 MiB on the wire, 0.06-0.15 s with every
/// channel's 2 MiB window full), and what a slow one drains in a fraction of a second.
pub const MIN_CAP: usize = 256 << 10;
/// Round trips are taken only while at most this much bulk is in flight.
const CLEAN_IN_FLIGHT: usize = 512 << 10;
/// How long the lowest round trip of a period stands.
const PERIOD: Duration = Duration::from_secs(60);
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

/// One direction's bulk: what is in flight, who waits, what was delivered and how fast.
struct Flow {
    in_flight: usize,
    cap: usize,
    /// Bulk waiting to go, in the order it asked: first come, first sent.
    waiting: VecDeque<(usize, oneshot::Sender<()>)>,
    /// Bytes delivered so far, and when the last of them was.
    delivered: u64,
    delivered_at: Instant,
    /// Delivery rates (bytes a second) of the last [`RATE_WINDOW`], each with when it was
    /// taken; only those that may still be the fastest are kept.
    rates: VecDeque<(Instant, f64)>,
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
        }
    }

    /// Admits the waiting bulk that fits now, in its order.
    fn let_in(&mut self) {
        while let Some(len) = self.waiting.front().map(|w| w.0) {
            if self.in_flight != 0 && self.in_flight + len > self.cap {
                break;
            }
            let (len, tx) = self.waiting.pop_front().expect("front exists");
            self.in_flight += len;
            if tx.send(()).is_err() {
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

    /// The cap of `direction` from what was learnt: [`GAIN`] bandwidth-delay products.
    fn recap(&mut self, direction: Direction) {
        let rtt = self.min_rtt();
        let flow = self.flow(direction);
        // Plus one more of the least cap: bulk goes in requests of up to a few hundred KiB,
        // and a cap that holds one of them only measures what one at a time delivers.
        if let (Some(rate), Some(rtt)) = (flow.fastest(), rtt) {
            flow.cap = ((GAIN * rate * rtt.as_secs_f64()) as usize).max(MIN_CAP) + MIN_CAP;
        }
        flow.let_in();
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
    /// received): a sample of the rate the link delivers at.
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
            if flow.waiting.is_empty() && (flow.in_flight == 0 || flow.in_flight + len <= flow.cap)
            {
                flow.in_flight += len;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                flow.waiting.push_back((len, tx));
                Some(rx)
            }
        };
        if let Some(rx) = waiting {
            // The sender is only dropped once it has admitted us (see `let_in`).
            let _ = rx.await;
        }
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
            delivered_before: flow.delivered,
            delivered_at_before: flow.delivered_at,
        }
    }

    /// A delivery rate sample, as BBR takes it: the bytes delivered between this request's
    /// sending and its reply, over the longer of that time and the time since the last
    /// delivery before it was sent (so that a burst of replies queued together does not read
    /// as a faster link).
    fn delivered(&self, permit: &GatePermit, bytes: usize) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
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
        s.recap(permit.direction);
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
        s.recap(Direction::Up);
        s.recap(Direction::Down);
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

    #[tokio::test]
    async fn the_cap_follows_the_rate_and_the_round_trip() {
        let gate = WireGate::new();
        gate.sample(Duration::from_millis(40));
        // 2.5 MB/s (20 Mbit/s): 100 KB a round trip, so the cap is at its least.
        let now = Instant::now();
        {
            let mut s = gate.state.lock().unwrap();
            s.up.add_rate(now, 2.5e6);
            s.recap(Direction::Up);
        }
        assert_eq!(gate.cap(Direction::Up), 2 * MIN_CAP);
        // 250 MB/s: 10 MB a round trip, twice that in flight.
        {
            let mut s = gate.state.lock().unwrap();
            s.up.add_rate(now, 2.5e8);
            s.recap(Direction::Up);
        }
        assert_eq!(gate.cap(Direction::Up), 20_000_000 + MIN_CAP);
        assert_eq!(gate.cap(Direction::Down), MIN_CAP, "each direction its own");
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
