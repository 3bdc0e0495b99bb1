//! The connection layer: one connection and its SFTP channels, held as one generation and
//! replaced as a whole when the connection is lost. A supervisor notices the loss (a channel or
//! the connection closed: TCP errors, keepalives unanswered; or requests and a probe
//! unanswered: a black hole), reconnects with a backoff that never hammers the server (1 s
//! doubling to 30 s, with jitter) and hands out the new generation. Callers wait for it a
//! bounded time ([`RemoteSettings::reconnect_wait`]) from the moment of the loss; past that they
//! fail at once until the server is back.
//!
//! How a connection is made is a [`Connector`]'s business: over SSH in a mount
//! ([`ssh::SshConnector`]: what authenticated the first time is re-used, the host key checked as
//! on the first connect), and in the core's fault tests over pipes to a local SFTP server that
//! the test drops, stalls and refuses.

pub mod ssh;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::sftp::{Session, SftpError};
use crate::ssh::SshError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes connections to the server, each with its SFTP channels.
pub trait Connector: Send + Sync + 'static {
    /// The server, as the log names it.
    fn server(&self) -> &str;

    /// Makes one connection and starts SFTP on up to `settings.sftp_channels` channels of it,
    /// the first of them the metadata channel. A server that grants fewer channels gives fewer.
    fn connect<'a>(
        &'a self,
        settings: &'a RemoteSettings,
    ) -> BoxFuture<'a, Result<Link, ConnectError>>;
}

/// A connection as a [`Connector`] made it.
pub struct Link {
    pub channels: Vec<Session>,
    /// Held as long as the channels are in use (dropping it may close the connection).
    pub connection: Box<dyn Connection>,
}

/// The connection under a generation's channels.
pub trait Connection: Send + Sync {
    /// Resolves to whether the connection itself answers a probe (over SSH, opening a channel
    /// is answered by sshd whatever the SFTP server is busy with). It may never resolve on a
    /// link that delivers nothing: the caller bounds the wait.
    fn answers(&self) -> BoxFuture<'_, bool>;
}

/// How the connection is made and kept.
#[derive(Debug, Clone, Copy)]
pub struct RemoteSettings {
    pub request_timeout: Duration,
    /// SFTP channels to open over the connection (sshd's MaxSessions may grant fewer).
    pub sftp_channels: usize,
    /// Reconnect after a loss (else the mount stays down).
    pub reconnect: bool,
    /// How long an operation waits for a lost connection to come back, counted from the loss.
    pub reconnect_wait: Duration,
    /// More channels where the link is far, if the user chose no number of them.
    pub far: Option<FarLink>,
}

/// A far link's channels. sshd grants each channel a 2 MiB window, so one carries at most
/// 2 MiB a round trip upstream: over `rtt` and more, the default channels cannot keep a fast
/// uplink full (7 data channels: 49 MB/s at 300 ms). sshd allows 10 sessions a connection
/// (MaxSessions), so more channels take more connections.
#[derive(Debug, Clone, Copy)]
pub struct FarLink {
    pub rtt: Duration,
    pub connections: usize,
    pub channels: usize,
}

/// One connection and the channels opened over it.
pub struct Generation {
    /// Counts connections: 1 for the first.
    pub id: u64,
    /// The SFTP channels, the metadata channel first.
    pub channels: Vec<Arc<Session>>,
    connection: Box<dyn Connection>,
    /// When it was established.
    pub since: Instant,
}

impl Generation {
    fn new(id: u64, link: Link) -> Generation {
        Generation {
            id,
            since: Instant::now(),
            channels: link.channels.into_iter().map(Arc::new).collect(),
            connection: link.connection,
        }
    }

    /// The metadata channel.
    pub fn meta(&self) -> &Arc<Session> {
        &self.channels[0]
    }

    fn is_closed(&self) -> bool {
        self.channels.iter().any(|c| c.is_closed())
    }

    /// Resolves once any channel (and so, as we treat it, the connection) is gone.
    async fn closed(&self) {
        let mut waits = tokio::task::JoinSet::new();
        for channel in &self.channels {
            let channel = channel.clone();
            waits.spawn(async move { channel.closed().await });
        }
        waits.join_next().await;
    }
}

#[derive(Clone)]
enum State {
    Up(Arc<Generation>),
    /// Lost at `since`; being re-established.
    Down {
        since: Instant,
    },
    /// Lost for good: reconnecting is off, or the server refused us in a way retrying cannot
    /// change (host key, authentication); `why` says which.
    Gone {
        why: Arc<str>,
    },
}

/// What [`Remote::link_state`] reports.
#[derive(Debug, Clone)]
pub struct LinkState {
    pub phase: LinkPhase,
    /// Connections made again after a loss.
    pub reconnections: u64,
    /// Attempts to reconnect that failed.
    pub failed_attempts: u64,
}

#[derive(Debug, Clone)]
pub enum LinkPhase {
    Connected {
        since: Instant,
    },
    Reconnecting {
        since: Instant,
    },
    /// Lost for good, and why (reconnect=no, or the server's refusal).
    Down {
        why: Arc<str>,
    },
}

/// How long a connection suspected dead has to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests past their timeout still wait once the connection answered a probe.
const LATE_REPLY_GRACE: Duration = Duration::from_secs(5);
/// Reconnection attempts an access asks for start at most this often.
const MIN_ATTEMPT_INTERVAL: Duration = Duration::from_secs(1);

/// Reconnection attempts so far: an access past reconnect_wait waits for one that started
/// after it. One that succeeds counts as ended only once the connection is up.
#[derive(Debug, Clone, Copy, Default)]
struct Attempts {
    started: u64,
    ended: u64,
    succeeded: u64,
}

/// Why no connection could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("the server has been unreachable for longer than reconnect_wait")]
    Down,
    #[error("the connection to the server is lost for good")]
    Gone,
}

pub struct Remote {
    connector: Arc<dyn Connector>,
    settings: RemoteSettings,
    state: watch::Sender<State>,
    /// The id the next generation gets.
    next_id: std::sync::atomic::AtomicU64,
    /// An access while down: try now rather than at the end of the backoff.
    wanted: tokio::sync::Notify,
    attempts: watch::Sender<Attempts>,
}

impl Remote {
    /// Makes the first connection (its failure is the mount's) and starts the supervisor.
    pub async fn connect(
        connector: Arc<dyn Connector>,
        settings: RemoteSettings,
    ) -> Result<Arc<Remote>, ConnectError> {
        let first = Generation::new(1, connector.connect(&settings).await?);
        let remote = Arc::new(Remote {
            connector,
            settings,
            state: watch::channel(State::Up(Arc::new(first))).0,
            next_id: 2.into(),
            wanted: tokio::sync::Notify::new(),
            attempts: watch::channel(Attempts::default()).0,
        });
        tokio::spawn(remote.clone().supervise());
        Ok(remote)
    }

    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The connection to use now. While it is being re-established, asks for an attempt at once
    /// and waits until it is back or `reconnect_wait` has passed since it was lost; after that,
    /// waits for one attempt, under way or started for it (the server may be back: the first
    /// access then succeeds, as with sshfs), and fails if that one does.
    pub async fn current(&self) -> Result<Arc<Generation>, RemoteError> {
        let mut rx = self.state.subscribe();
        loop {
            let deadline = match &*rx.borrow_and_update() {
                State::Up(generation) if !generation.is_closed() => {
                    return Ok(generation.clone());
                }
                // Lost, and the supervisor is about to say so.
                State::Up(_) => Instant::now() + self.settings.reconnect_wait,
                State::Down { since } => {
                    self.wanted.notify_one();
                    *since + self.settings.reconnect_wait
                }
                State::Gone { .. } => return Err(RemoteError::Gone),
            };
            if deadline <= Instant::now() {
                return self.after_one_attempt(rx).await;
            }
            let changed = tokio::time::timeout_at(deadline.into(), rx.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(RemoteError::Down);
            }
        }
    }

    /// The connection once the attempt under way, or else the next, has ended: back, or down.
    async fn after_one_attempt(
        &self,
        mut state: watch::Receiver<State>,
    ) -> Result<Arc<Generation>, RemoteError> {
        let mut attempts = self.attempts.subscribe();
        // One under way is ours too: waiting for the one after it could take two connect
        // timeouts on a dead link.
        let ours = {
            let now = attempts.borrow_and_update();
            if now.started > now.ended {
                now.started
            } else {
                now.started + 1
            }
        };
        self.wanted.notify_one();
        loop {
            match &*state.borrow_and_update() {
                State::Up(generation) if !generation.is_closed() => {
                    return Ok(generation.clone());
                }
                State::Gone { .. } => return Err(RemoteError::Gone),
                _ => {}
            }
            if attempts.borrow_and_update().ended >= ours {
                return Err(RemoteError::Down);
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return Err(RemoteError::Down) },
                changed = attempts.changed() => if changed.is_err() { return Err(RemoteError::Down) },
            }
        }
    }

    /// Waits for a connection newer than `generation`; `None` once there will be none.
    pub async fn after(&self, generation: u64) -> Option<Arc<Generation>> {
        let mut rx = self.state.subscribe();
        let found = rx
            .wait_for(|s| match s {
                State::Up(g) => g.id > generation,
                State::Down { .. } => false,
                State::Gone { .. } => true,
            })
            .await
            .ok()?;
        match &*found {
            State::Up(g) => Some(g.clone()),
            _ => None,
        }
    }

    /// The connection's state as `sftpmount status` reports it.
    pub fn link_state(&self) -> LinkState {
        let phase = match &*self.state.borrow() {
            State::Up(g) if !g.is_closed() => LinkPhase::Connected { since: g.since },
            // Lost a moment ago; the supervisor has not said so yet.
            State::Up(_) => LinkPhase::Reconnecting {
                since: Instant::now(),
            },
            State::Down { since } => LinkPhase::Reconnecting { since: *since },
            State::Gone { why } => LinkPhase::Down { why: why.clone() },
        };
        let attempts = *self.attempts.borrow();
        LinkState {
            phase,
            reconnections: attempts.succeeded,
            failed_attempts: attempts.ended - attempts.succeeded,
        }
    }

    /// The generation in use now, if the connection is up: for work that must not wait.
    pub fn current_now(&self) -> Option<Arc<Generation>> {
        match &*self.state.borrow() {
            State::Up(generation) if !generation.is_closed() => Some(generation.clone()),
            _ => None,
        }
    }

    /// Returns once `generation` is lost: a channel closed, or requests went unanswered past
    /// their timeout and the connection did not answer a probe either (a black hole: no FIN,
    /// nothing delivered). When the probe is answered, the server alone is slow: those requests
    /// fail with a timeout and the connection stays.
    async fn watch(&self, generation: &Generation) {
        loop {
            // A stall missed between two rounds is not lost: its requests fail with a timeout
            // after a while all the same (see `Session::stalls`).
            let mut stalled = tokio::task::JoinSet::new();
            for channel in &generation.channels {
                let mut stalls = channel.stalls();
                stalled.spawn(async move { stalls.changed().await.is_ok() });
            }
            tokio::select! {
                _ = generation.closed() => return,
                Some(Ok(true)) = stalled.join_next() => {}
            }
            drop(stalled);
            if self.answers(generation).await {
                // A link that just came back (a laptop waking up) delivers the late replies
                // now: only what is still unanswered after a moment is the server's trouble.
                tokio::time::sleep(LATE_REPLY_GRACE).await;
                for channel in &generation.channels {
                    channel.fail_expired();
                }
            } else {
                warn!(
                    "connection to {} stalled: requests and a probe went unanswered",
                    self.connector.server()
                );
                for channel in &generation.channels {
                    channel.abandon();
                }
                return;
            }
        }
    }

    /// Whether the SSH connection itself answers: opening a channel is answered by sshd,
    /// whatever the SFTP server is busy with.
    async fn answers(&self, generation: &Generation) -> bool {
        tokio::time::timeout(PROBE_TIMEOUT, generation.connection.answers())
            .await
            .unwrap_or(false)
    }

    async fn supervise(self: Arc<Self>) {
        loop {
            let State::Up(generation) = self.state.borrow().clone() else {
                return;
            };
            self.watch(&generation).await;
            let since = Instant::now();
            warn!(
                "connection to {} lost (connection {})",
                self.connector.server(),
                generation.id
            );
            drop(generation);
            if !self.settings.reconnect {
                warn!("not reconnecting (reconnect=no): the mount stays down");
                self.state.send_replace(State::Gone {
                    why: "the connection was lost and reconnect=no".into(),
                });
                return;
            }
            self.state.send_replace(State::Down { since });
            let next = match self.reestablish(since).await {
                Ok(next) => next,
                Err(refusal) => {
                    self.state.send_replace(State::Gone {
                        why: refusal.to_string().into(),
                    });
                    return;
                }
            };
            // A warning, as the loss was: whoever read of the one must read of the other.
            warn!(
                "reconnected to {} after {:.1} s (connection {})",
                self.connector.server(),
                since.elapsed().as_secs_f64(),
                next.id
            );
            self.state.send_replace(State::Up(Arc::new(next)));
            self.attempts.send_modify(|a| {
                a.ended += 1;
                a.succeeded += 1;
            });
        }
    }

    /// Tries until it connects, or until the server refuses us for a reason retrying cannot
    /// change (that refusal).
    async fn reestablish(&self, since: Instant) -> Result<Generation, ConnectError> {
        let mut backoff = Duration::from_secs(1);
        let mut last_start: Option<Instant> = None;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            // The backoff, cut short by an access (which must not wait for a server that may
            // be back), at most one attempt a MIN_ATTEMPT_INTERVAL.
            tokio::select! {
                _ = tokio::time::sleep(jittered(backoff)) => {}
                _ = self.wanted.notified() => {
                    if let Some(last) = last_start {
                        tokio::time::sleep_until((last + MIN_ATTEMPT_INTERVAL).into()).await;
                    }
                }
            }
            last_start = Some(Instant::now());
            info!(
                "reconnecting to {} (attempt {attempt}, down {:.0} s)",
                self.connector.server(),
                since.elapsed().as_secs_f64()
            );
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.attempts.send_modify(|a| a.started += 1);
            match self.connector.connect(&self.settings).await {
                Ok(link) => return Ok(Generation::new(id, link)),
                Err(e) if e.is_permanent() => {
                    warn!("reconnecting to {} refused: {e}", self.connector.server());
                    return Err(e);
                }
                Err(e) => warn!("reconnection attempt {attempt} failed: {e}"),
            }
            self.attempts.send_modify(|a| a.ended += 1);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// `base` give or take a quarter, so that many mounts of one server do not retry in step.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let quarter = base.as_millis() as u64 / 4;
    let offset = if quarter == 0 {
        0
    } else {
        nanos % (2 * quarter)
    };
    Duration::from_millis(base.as_millis() as u64 - quarter + offset)
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("the server refused a session channel: {0}")]
    Channel(russh::Error),
    #[error("cannot start SFTP: {0}")]
    Sftp(#[from] SftpError),
    /// The server is reached but what answers is no SFTP server.
    #[error("{host} {why}")]
    NotSftp { host: String, why: SftpError },
    /// A connector's own reason (a test's stand-in refusing).
    #[error("{0}")]
    Refused(String),
}

impl ConnectError {
    /// Whether retrying cannot mend it: a host key that is not the one we know, credentials
    /// refused.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ConnectError::Ssh(
                SshError::UnknownHostKey { .. }
                    | SshError::ChangedHostKey { .. }
                    | SshError::RevokedHostKey { .. }
                    | SshError::RevokedHostKeysUnreadable { .. }
                    | SshError::AuthRefused { .. }
                    | SshError::KeyFile { .. }
            )
        )
    }
}
