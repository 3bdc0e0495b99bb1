//! SSH transport: reaching the server (TCP, a jump host's direct-tcpip channel, or a
//! ProxyCommand's pipes) within ConnectTimeout, then host key verification ([`host_key`]) and
//! authentication ([`auth`]). Where to connect and how is [`target`]'s.

mod auth;
pub mod config;
mod host_key;
pub mod known_hosts;
pub mod target;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use russh::client::{self, Handle};
use russh::keys::Algorithm;
use tracing::debug;

pub use target::{Route, Target, Wanted};

use host_key::{HostKeyVerdict, KnownHostsFiles};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {secs} s (ConnectTimeout)")]
    Timeout { addr: String, secs: u64 },
    #[error(
        "host key for {host} is not known ({fingerprint}); check it, then mount once with -o StrictHostKeyChecking=accept-new to trust it"
    )]
    UnknownHostKey { host: String, fingerprint: String },
    #[error(
        "HOST KEY FOR {host} HAS CHANGED (now {fingerprint}), refusing to connect; if you expected this, remove line {line} of {file}"
    )]
    ChangedHostKey {
        host: String,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error(
        "HOST KEY FOR {host} IS REVOKED ({fingerprint}, @revoked at line {line} of {file}), refusing to connect"
    )]
    RevokedHostKey {
        host: String,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error("cannot check the host key against RevokedHostKeys {file}: {why}; refusing to connect")]
    RevokedHostKeysUnreadable { file: String, why: String },
    #[error("cannot record the host key in {file}: {why}")]
    LearnHostKey { file: String, why: String },
    #[error("authentication refused for {user}@{host} (tried: {tried})")]
    AuthRefused {
        user: String,
        host: String,
        tried: String,
    },
    #[error("cannot read key {path}: {why}")]
    KeyFile { path: String, why: String },
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("SSH error: {0}")]
    Protocol(#[from] russh::Error),
    #[error("SSH session with {addr} failed: {why}")]
    Session { addr: String, why: String },
    #[error(
        "the {what} \"{name}\" has characters ssh refuses (quotes, $, `, \\, ;, &, |, <, >, brackets, spaces) or starts with '-': check the mount's target"
    )]
    InvalidName { what: &'static str, name: String },
    #[error("bad {key} '{value}': {why}")]
    BadSetting {
        key: String,
        value: String,
        why: String,
    },
    #[error("cannot run ProxyCommand '{command}': {source}")]
    ProxyCommand {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot reach {addr} through jump host {jump}: {why}")]
    Jump {
        addr: String,
        jump: String,
        why: String,
    },
}

impl SshError {
    /// The error, naming the server where it does not yet.
    fn at(self, addr: &str) -> SshError {
        match self {
            SshError::Protocol(e) => SshError::Session {
                addr: addr.to_string(),
                why: e.to_string(),
            },
            other => other,
        }
    }
}

/// The password and the decrypted keys the first connection obtained, kept in memory only, so
/// that a reconnection asks nobody again (nobody may be there to answer; sshfs's ssh process
/// keeps them the same way). Never printed: its Debug shows nothing of them.
#[derive(Default)]
pub struct SecretCache {
    password: Mutex<Option<zeroize::Zeroizing<String>>>,
    keys: Mutex<std::collections::HashMap<PathBuf, russh::keys::PrivateKey>>,
    /// A login succeeded once: later connections are reconnections, and nobody is asked
    /// anything then (not even in the foreground, where a terminal may still be there).
    pub(super) logged_in: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCache(..)")
    }
}

pub struct ClientHandler {
    target: Arc<Target>,
    known_hosts: Arc<KnownHostsFiles>,
    verdict: Arc<Mutex<Option<HostKeyVerdict>>>,
    clock: PromptClock,
    /// What carries this connection, kept as long as the session runs: the jump host's
    /// connection (its channel is our stream) or the proxy command (killed with the session).
    _carrier: Option<Carrier>,
}

/// Held, never read: dropping it ends what carries the connection.
#[expect(dead_code)]
enum Carrier {
    Jump(Handle<ClientHandler>),
    Command(tokio::process::Child),
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let mut verdict = host_key::check_host_key(&self.target, &self.known_hosts, key);
        if let HostKeyVerdict::AskUser { key, fingerprint } = &verdict {
            let trusted = if !self.target.may_ask() {
                None
            } else {
                // A person typing is not a network wait: the connect timeout stops meanwhile.
                let _asking = self.clock.asking();
                let (target, key) = (self.target.clone(), key.clone());
                tokio::task::spawn_blocking(move || host_key::ask_user(&target, &key))
                    .await
                    .ok()
                    .flatten()
            };
            verdict = match trusted {
                Some(true) => host_key::learn(&self.target, key),
                _ => HostKeyVerdict::Unknown {
                    fingerprint: fingerprint.clone(),
                },
            };
        }
        let accept = matches!(verdict, HostKeyVerdict::Known);
        *self.verdict.lock().unwrap() = Some(verdict);
        Ok(accept)
    }
}

/// Connects, verifies the host and authenticates, all within the connect timeout (prompts for
/// secrets excluded: a person typing is not a network wait).
pub async fn connect(target: Arc<Target>) -> Result<Handle<ClientHandler>, SshError> {
    let addr = target.addr();
    connect_to(target).await.map_err(|e: SshError| e.at(&addr))
}

/// The jump host's connection is made first, in full (its own route, host key, login), so its
/// errors name it; ours then runs over a direct-tcpip channel of it.
fn connect_to(
    target: Arc<Target>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Handle<ClientHandler>, SshError>> + Send>> {
    Box::pin(async move {
        let addr = target.addr();
        let verdict = Arc::new(Mutex::new(None));
        let known_hosts = Arc::new(host_key::read_known_hosts(&target));
        let config = Arc::new(client_config(&target, &known_hosts));
        let timeout = target.connect_timeout;
        let clock = PromptClock::default();
        debug!("connecting to {addr} as {}", target.user);
        let connected = clock
            .timeout(timeout, async {
                let result = match &target.route {
                    Route::Direct => {
                        let stream =
                            tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                                .await
                                .map_err(|source| SshError::Unreachable {
                                    addr: addr.clone(),
                                    source,
                                })?;
                        stream.set_nodelay(true).ok();
                        limit_unsent(&stream);
                        let handler = handler(&target, &known_hosts, &verdict, &clock, None);
                        client::connect_stream(config, stream, handler).await
                    }
                    Route::Jump(jump) => {
                        let via = connect(jump.clone()).await?;
                        let channel = via
                            .channel_open_direct_tcpip(
                                target.host.clone(),
                                target.port.into(),
                                "127.0.0.1",
                                0,
                            )
                            .await
                            .map_err(|e| SshError::Jump {
                                addr: addr.clone(),
                                jump: jump.addr(),
                                why: match e {
                                    russh::Error::ChannelOpenFailure(reason) => format!(
                                        "it refused to forward ({reason:?}): does its sshd allow \
                                     AllowTcpForwarding, and can it reach {addr}?"
                                    ),
                                    other => other.to_string(),
                                },
                            })?;
                        debug!("reached {addr} through {}", jump.addr());
                        let stream = channel.into_stream();
                        let handler = handler(
                            &target,
                            &known_hosts,
                            &verdict,
                            &clock,
                            Some(Carrier::Jump(via)),
                        );
                        client::connect_stream(config, stream, handler).await
                    }
                    Route::Command(command) => {
                        let mut child = tokio::process::Command::new("/bin/sh")
                            .arg("-c")
                            .arg(format!("exec {command}"))
                            .stdin(std::process::Stdio::piped())
                            .stdout(std::process::Stdio::piped())
                            .kill_on_drop(true)
                            .spawn()
                            .map_err(|source| SshError::ProxyCommand {
                                command: command.clone(),
                                source,
                            })?;
                        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take())
                        else {
                            return Err(SshError::ProxyCommand {
                                command: command.clone(),
                                source: std::io::Error::other("its stdin or stdout is not a pipe"),
                            });
                        };
                        debug!("reaching {addr} through ProxyCommand {command}");
                        let stream = tokio::io::join(stdout, stdin);
                        let handler = handler(
                            &target,
                            &known_hosts,
                            &verdict,
                            &clock,
                            Some(Carrier::Command(child)),
                        );
                        client::connect_stream(config, stream, handler).await
                    }
                };
                result.map_err(|e| host_key::host_key_error(&target, &verdict, e))
            })
            .await;
        let mut handle = connected.map_err(|_| SshError::Timeout {
            addr: addr.clone(),
            secs: timeout.as_secs(),
        })??;
        debug!("connected to {addr}, host key verified; authenticating");
        // Bounded too: a server that stalls during the login must not hold a reconnection (and
        // every operation waiting for it) for ever.
        clock
            .timeout(timeout, auth::authenticate(&mut handle, &target, &clock))
            .await
            .map_err(|_| SshError::Timeout {
                addr: addr.clone(),
                secs: timeout.as_secs(),
            })??;
        target.secrets.logged_in.store(true, Ordering::Relaxed);
        debug!("logged in to {addr} as {}", target.user);
        Ok(handle)
    })
}

/// The connect timeout's clock, stopped while a person is asked something (a host key's
/// yes or no): a person typing is not a network wait.
#[derive(Clone, Default)]
pub(super) struct PromptClock(Arc<Mutex<ClockState>>);

#[derive(Default)]
struct ClockState {
    /// Time spent asking, finished questions.
    asked: std::time::Duration,
    asking_since: Option<std::time::Instant>,
}

/// Restarts the clock when dropped.
pub(super) struct Asking(PromptClock);

impl Drop for Asking {
    fn drop(&mut self) {
        let mut state = (self.0).0.lock().unwrap();
        if let Some(since) = state.asking_since.take() {
            state.asked += since.elapsed();
        }
    }
}

impl PromptClock {
    pub(super) fn asking(&self) -> Asking {
        self.0.lock().unwrap().asking_since = Some(std::time::Instant::now());
        Asking(self.clone())
    }

    /// Time not to count: questions asked, and the one being asked.
    fn paused(&self) -> std::time::Duration {
        let state = self.0.lock().unwrap();
        state.asked
            + state
                .asking_since
                .map_or_else(Default::default, |s| s.elapsed())
    }

    /// `future`, unless `timeout` of network time (time not spent asking) passes first.
    async fn timeout<F: Future>(
        &self,
        timeout: std::time::Duration,
        future: F,
    ) -> Result<F::Output, ()> {
        let start = std::time::Instant::now();
        tokio::pin!(future);
        loop {
            let deadline = start + timeout + self.paused();
            tokio::select! {
                out = &mut future => return Ok(out),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if start + timeout + self.paused() <= std::time::Instant::now() {
                        return Err(());
                    }
                }
            }
        }
    }
}

fn handler(
    target: &Arc<Target>,
    known_hosts: &Arc<KnownHostsFiles>,
    verdict: &Arc<Mutex<Option<HostKeyVerdict>>>,
    clock: &PromptClock,
    carrier: Option<Carrier>,
) -> ClientHandler {
    ClientHandler {
        target: target.clone(),
        known_hosts: known_hosts.clone(),
        verdict: verdict.clone(),
        clock: clock.clone(),
        _carrier: carrier,
    }
}

/// Bytes the kernel may hold unsent for the socket. Unsent bytes are a queue every channel
/// shares: a lookup sent during an upload waits behind all of them (measured: 3 MB queued, a
/// `stat` 20 ms instead of 0.5 at RTT 0). Bulk data waits in its own channel's queue instead,
/// where the next small request need not. Enough to keep the link busy between writes.
const UNSENT_LIMIT: libc::c_int = 128 * 1024;

fn limit_unsent(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&UNSENT_LIMIT as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        debug!(
            "TCP_NOTSENT_LOWAT not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The host key algorithms whose `*-cert-v01` form is asked for when an authority is trusted:
/// those of the list that ssh offers certificates for (not DSA, SHA-1 RSA or others).
fn certificate_algorithms(keys: &[Algorithm]) -> Vec<Algorithm> {
    keys.iter()
        .filter(|a| {
            matches!(
                a,
                Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { hash: Some(_) }
            )
        })
        .cloned()
        .collect()
}

fn client_config(target: &Target, known_hosts: &KnownHostsFiles) -> client::Config {
    let mut preferred = target.algorithms.clone();
    if host_key::wants_certificates(target, known_hosts) {
        preferred.host_key_certificates = certificate_algorithms(&preferred.key).into();
    }
    client::Config {
        preferred,
        // A large receive window keeps reads flowing on far links (DESIGN.md).
        window_size: 64 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 1024,
        keepalive_interval: Some(target.keepalive_interval).filter(|d| !d.is_zero()),
        keepalive_max: target.keepalive_max as usize,
        nodelay: true,
        ..Default::default()
    }
}

pub(crate) fn local_user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getpwuid returns a pointer into static storage or null.
            unsafe {
                let pw = libc::getpwuid(libc::geteuid());
                if pw.is_null() {
                    return "root".to_string();
                }
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned()
            }
        })
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_literals_are_written_in_brackets() {
        assert_eq!(host_port("::1", 22), "[::1]:22");
        assert_eq!(host_port("example.org", 2222), "example.org:2222");
    }
}
