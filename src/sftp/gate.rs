//! What one connection's WRITEs may hold on the wire at once. The channels of a connection
//! share one TCP stream and one sshd: bulk data sent beyond what keeps the link busy only
//! queues (in socket buffers, in sshd, in each sftp-server's pipe), and a lookup sent behind it
//! waits for all of it. Measured on a 2-core machine at RTT 0, `ls -l` + `cat` of a small file
//! during a 256 MiB upload: 0.06-0.15 s with every data channel's 2 MiB window full; 0.035-0.042
//! s with 2 MiB on the wire; 0.025-0.036 s with 1 MiB (sshfs: 0.021-0.035 s); the upload as fast
//! in all three (0.38-0.44 s).
//!
//! The cap is what the connection's round trip needs for a rate no SSH connection reaches
//! ([`FULL_RATE`] x the lowest round trip seen), and at least [`MIN_CAP`]: on a far link it
//! never binds (40 ms: 80 MB, above the write buffers), on a near one it keeps the queue short.
//! Round trips are taken from small requests (not WRITEs) answered while little bulk was in
//! flight, so that the queue the bulk makes does not raise them; the lowest of the last minute
//! or two counts, so that a path that got longer is noticed. The price, where the cap binds (a
//! near server): a channel whose server stalls keeps its share until its requests time out
//! (`request_timeout`), and the other channels' WRITEs wait behind it meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A rate above what SSH's ciphers carry on one connection, in bytes per second.
const FULL_RATE: f64 = 2e9;
/// The least the cap may be (see the measurements above).
pub const MIN_CAP: usize = 1 << 20;
/// With no round trip measured yet: no cap worth the name.
const NO_CAP: usize = usize::MAX / 2;
/// Round trips are taken only while at most this much bulk is in flight.
const CLEAN_IN_FLIGHT: usize = 512 << 10;
/// How long the lowest round trip of a period stands.
const PERIOD: Duration = Duration::from_secs(60);

struct State {
    in_flight: usize,
    cap: usize,
    /// WRITEs waiting to go, in the order they asked: first come, first sent.
    waiting: VecDeque<(usize, oneshot::Sender<()>)>,
    /// The lowest clean round trip of this period and of the one before.
    best_now: Option<Duration>,
    best_before: Option<Duration>,
    period_start: Instant,
}

pub struct WireGate {
    state: Mutex<State>,
}

/// Room for one WRITE's data on the wire, given back when dropped (its reply came, or it
/// failed).
pub struct GatePermit {
    gate: Arc<WireGate>,
    len: usize,
}

impl GatePermit {
    /// The WRITE's data bytes this permit holds on the wire.
    pub fn bytes(&self) -> usize {
        self.len
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.release(self.len);
    }
}

impl WireGate {
    pub fn new() -> Arc<WireGate> {
        Arc::new(WireGate {
            state: Mutex::new(State {
                in_flight: 0,
                cap: NO_CAP,
                waiting: VecDeque::new(),
                best_now: None,
                best_before: None,
                period_start: Instant::now(),
            }),
        })
    }

    /// Waits until `len` more bytes of WRITE data may go out. One WRITE always may when
    /// nothing is in flight, whatever its size.
    pub async fn admit(self: &Arc<Self>, len: usize) -> GatePermit {
        let waiting = {
            let mut s = self.state.lock().unwrap();
            if s.waiting.is_empty() && (s.in_flight == 0 || s.in_flight + len <= s.cap) {
                s.in_flight += len;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back((len, tx));
                Some(rx)
            }
        };
        if let Some(rx) = waiting {
            // The sender is only dropped once it has admitted us (see `let_in`).
            let _ = rx.await;
        }
        GatePermit {
            gate: self.clone(),
            len,
        }
    }

    fn release(&self, len: usize) {
        let mut s = self.state.lock().unwrap();
        s.in_flight -= len;
        Self::let_in(&mut s);
    }

    /// Admits the waiting WRITEs that fit now, in their order.
    fn let_in(s: &mut State) {
        while let Some(len) = s.waiting.front().map(|w| w.0) {
            if s.in_flight != 0 && s.in_flight + len > s.cap {
                break;
            }
            let (len, tx) = s.waiting.pop_front().expect("front exists");
            s.in_flight += len;
            if tx.send(()).is_err() {
                // Its sender went away (the session ended): the room is free again.
                s.in_flight -= len;
            }
        }
    }

    /// The round trip of a small request just answered.
    pub fn sample(&self, rtt: Duration) {
        let mut s = self.state.lock().unwrap();
        if s.in_flight > CLEAN_IN_FLIGHT {
            return;
        }
        if s.period_start.elapsed() > PERIOD {
            s.best_before = s.best_now.take();
            s.period_start = Instant::now();
        }
        s.best_now = Some(s.best_now.map_or(rtt, |best| best.min(rtt)));
        let base = match (s.best_now, s.best_before) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("best_now was just set"),
        };
        s.cap = cap_for(base);
        Self::let_in(&mut s);
    }

    /// Bytes of WRITE data the connection may have on the wire now.
    pub fn cap(&self) -> usize {
        self.state.lock().unwrap().cap
    }
}

fn cap_for(rtt: Duration) -> usize {
    ((FULL_RATE * rtt.as_secs_f64()) as usize).max(MIN_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_binds_on_a_near_link_only() {
        assert_eq!(cap_for(Duration::from_micros(300)), MIN_CAP);
        assert!(cap_for(Duration::from_millis(40)) >= 64 << 20);
    }

    #[tokio::test]
    async fn writes_wait_their_turn_and_go_once_room_is_given_back() {
        let gate = WireGate::new();
        gate.sample(Duration::from_micros(100));
        assert_eq!(gate.cap(), MIN_CAP);
        let first = gate.admit(MIN_CAP - 10).await;
        // Does not fit: waits, and so does a small one behind it (first come, first sent).
        let big = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(100).await }
        });
        tokio::task::yield_now().await;
        let small = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(5).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!big.is_finished() && !small.is_finished());
        drop(first);
        let (big, small) = (big.await.unwrap(), small.await.unwrap());
        assert_eq!(gate.state.lock().unwrap().in_flight, 105);
        drop((big, small));
        assert_eq!(gate.state.lock().unwrap().in_flight, 0);
        // One WRITE larger than the cap still goes when nothing else is in flight.
        let huge = gate.admit(3 * MIN_CAP).await;
        drop(huge);
    }

    #[test]
    fn round_trips_taken_under_bulk_do_not_count() {
        let gate = WireGate::new();
        gate.state.lock().unwrap().in_flight = 10 << 20;
        gate.sample(Duration::from_micros(100));
        assert_eq!(gate.cap(), NO_CAP);
        gate.state.lock().unwrap().in_flight = 0;
        gate.sample(Duration::from_micros(100));
        assert_eq!(gate.cap(), MIN_CAP);
    }
}
