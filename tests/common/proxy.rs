//! A TCP delay line of our own, between a mount and sshd: holds every chunk a fixed delay in each
//! direction, so the round trip gains twice that. Bandwidth is not limited unless a [`Shape`]
//! says so: then each direction is a bottleneck of that rate with a queue of bounded length in
//! front of it (a home uplink's modem); once the queue is full the line stops reading, so the
//! sender's own socket buffers fill behind it, as they do in front of a real one. Only
//! loopback. Shared by the integration tests (in-process) and `examples/latency_proxy.rs`
//! (benchmarks).
//!
//! The tests also break the link through its [`Link`]: cut every connection, black-hole them
//! (nothing delivered either way, no FIN: a suspended laptop, a dead Wi-Fi), refuse new ones.
//!
//! Plain threads and blocking sockets, two per direction: an async runtime busy with the data
//! fires its timers late, which would add delay nobody asked for.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// What a test can do to the link while it runs.
#[derive(Default)]
pub struct Link {
    /// Both ends of every connection made so far, to cut them.
    connections: Mutex<Vec<(TcpStream, TcpStream)>>,
    black_hole: AtomicBool,
    refuse: AtomicBool,
}

impl Link {
    /// Ends every connection now, on both sides (each side sees its connection end), and lets
    /// new ones through.
    pub fn cut(&self) {
        for (client, server) in self.connections.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// While on, nothing is delivered either way and nothing is closed: the connections stay
    /// open, silent. Off: what was held goes on.
    pub fn black_hole(&self, on: bool) {
        self.black_hole.store(on, Ordering::SeqCst);
    }

    /// While on, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    fn hold_while_black_holed(&self) {
        while self.black_hole.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What the line does to the bytes it carries, in each direction.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Held this long each way.
    pub delay: Duration,
    /// At most this many bytes a second each way (`None`: as fast as they come).
    pub rate: Option<u64>,
    /// The bottleneck's queue holds this much of its rate; a full queue stops the reading.
    pub queue: Duration,
}

impl Shape {
    pub fn delay(delay: Duration) -> Shape {
        Shape {
            delay,
            rate: None,
            queue: Duration::from_millis(50),
        }
    }

    /// `mbit` megabits a second each way, with a queue of 50 ms.
    pub fn rate_limited(delay: Duration, mbit: f64) -> Shape {
        Shape {
            rate: Some((mbit * 1e6 / 8.0) as u64),
            ..Shape::delay(delay)
        }
    }
}

/// Listens on 127.0.0.1:`listen_port` (0: any free port) and forwards each connection to
/// 127.0.0.1:`target_port` with `delay` each way. Returns the port it listens on; the proxy runs
/// on threads until the process ends.
pub fn start(listen_port: u16, target_port: u16, delay: Duration) -> std::io::Result<u16> {
    start_with_link(listen_port, target_port, delay).map(|(port, _)| port)
}

/// [`start`], with the [`Link`] that breaks it.
pub fn start_with_link(
    listen_port: u16,
    target_port: u16,
    delay: Duration,
) -> std::io::Result<(u16, Arc<Link>)> {
    start_shaped(listen_port, target_port, Shape::delay(delay))
}

/// [`start_with_link`] for a line of any [`Shape`].
pub fn start_shaped(
    listen_port: u16,
    target_port: u16,
    shape: Shape,
) -> std::io::Result<(u16, Arc<Link>)> {
    let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
    let port = listener.local_addr()?.port();
    let link = Arc::new(Link::default());
    let served = link.clone();
    thread::spawn(move || serve_link(listener, target_port, shape, served));
    Ok((port, link))
}

/// Accepts and forwards until the listener fails.
pub fn serve(listener: TcpListener, target_port: u16, delay: Duration) {
    serve_link(listener, target_port, Shape::delay(delay), Arc::default())
}

fn serve_link(listener: TcpListener, target_port: u16, shape: Shape, link: Arc<Link>) {
    // One bottleneck each way for all the line's connections, as a modem or a router has: a
    // mount's second connection shares the rate, it does not add its own.
    let (up, down) = (BottleneckClock::default(), BottleneckClock::default());
    for client in listener.incoming().flatten() {
        if link.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
            link.connections.lock().unwrap().push((c, s));
        }
        delay_line(client, server2, shape, link.clone(), up.clone());
        delay_line(server, client2, shape, link.clone(), down.clone());
    }
}

/// When a direction's bottleneck is free to send its next bytes.
type BottleneckClock = Arc<Mutex<Option<Instant>>>;

/// The bottleneck's queue: chunks waiting to be sent at the line's rate, each with when it
/// came, and their bytes.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    /// The reading side is done (its connection ended).
    closed: bool,
}

fn delay_line(
    mut from: TcpStream,
    mut to: TcpStream,
    shape: Shape,
    link: Arc<Link>,
    clock: BottleneckClock,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reading = link.clone();
    let delay = shape.delay;
    match shape.rate {
        None => {
            thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    // Black-holed: nothing is read either, so the sender's buffers fill as
                    // they would.
                    reading.hold_while_black_holed();
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            });
        }
        Some(rate) => {
            let rate = rate.max(1000);
            let limit = ((rate as f64 * shape.queue.as_secs_f64()) as usize).max(16 * 1024);
            let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
            let filling = queue.clone();
            // Reads while the queue has room: a full one leaves the bytes in the sender's
            // socket buffers.
            thread::spawn(move || {
                let (lock, changed) = &*filling;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    reading.hold_while_black_holed();
                    {
                        let mut q = lock.lock().unwrap();
                        while q.bytes >= limit {
                            q = changed.wait(q).unwrap();
                        }
                    }
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let mut q = lock.lock().unwrap();
                    if n == 0 {
                        q.closed = true;
                        changed.notify_all();
                        break;
                    }
                    q.chunks.push_back((Instant::now(), buf[..n].to_vec()));
                    q.bytes += n;
                    changed.notify_all();
                }
            });
            // Sends the queue's chunks at the rate, each then held `delay`.
            thread::spawn(move || {
                let (lock, changed) = &*queue;
                loop {
                    let chunk = {
                        let mut q = lock.lock().unwrap();
                        loop {
                            if let Some(chunk) = q.chunks.pop_front() {
                                break Some(chunk);
                            }
                            if q.closed {
                                break None;
                            }
                            q = changed.wait(q).unwrap();
                        }
                    };
                    let Some((came, chunk)) = chunk else { break };
                    let now = Instant::now();
                    let free_at = {
                        let mut free = clock.lock().unwrap();
                        // A chunk starts once it came and the line is free, whenever this thread
                        // woke: starting when it woke lost each sleep's overshoot (the line
                        // carried 92% of its rate).
                        let start = free.map_or(came, |free| free.max(came));
                        let end = start + Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                        *free = Some(end);
                        end
                    };
                    if free_at > now {
                        thread::sleep(free_at - now);
                    }
                    {
                        let mut q = lock.lock().unwrap();
                        q.bytes -= chunk.len();
                        changed.notify_all();
                    }
                    if tx.send((free_at + delay, chunk)).is_err() {
                        break;
                    }
                }
            });
        }
    }
    thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            link.hold_while_black_holed();
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
