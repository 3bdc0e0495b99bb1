//! A [`Connector`] for driving the filesystem core without SSH or FUSE: each connection is one
//! OpenSSH `sftp-server` process per channel, spoken to over its stdin and stdout, with a relay
//! in between that the test can cut (both directions end: the client sees the connection
//! closed), black-hole (nothing is delivered either way, and the connection's probe goes
//! unanswered, as after a suspend) and restore; and connections can be refused, for a while
//! or for good (as a changed host key or refused credentials are).
//!
//! The server is the real one: what the core sends is carried out on a real directory, so a
//! test checks the bytes that arrived there, as the mount's tests do.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sftpmount::remote::{BoxFuture, ConnectError, Connection, Connector, Link, RemoteSettings};
use sftpmount::sftp::{Session, Transport, WireGate};
use sftpmount::ssh::SshError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::watch;

use super::default_sftp_server;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Open,
    /// Holds everything; the probe is not answered.
    BlackHole,
    /// Requests are delivered, replies held; the probe is not answered.
    RepliesHeld,
    /// Over for good: the relays end.
    Cut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    None,
    /// A failure retrying may mend (the server is unreachable).
    ForNow,
    /// One it cannot (credentials refused).
    ForGood,
}

pub struct LocalServer {
    program: String,
    /// The link of the newest connection.
    link: Mutex<Option<watch::Sender<LinkState>>>,
    refusal: Mutex<Refusal>,
    connections: AtomicUsize,
}

impl LocalServer {
    /// Fails loudly when the server program is missing: `./scripts/test` installs it.
    pub fn new() -> Arc<LocalServer> {
        let program = default_sftp_server();
        assert!(
            Path::new(&program).exists(),
            "{program} is missing: run ./scripts/test, which installs openssh-sftp-server"
        );
        Arc::new(LocalServer {
            program,
            link: Mutex::default(),
            refusal: Mutex::new(Refusal::None),
            connections: AtomicUsize::new(0),
        })
    }

    /// Connections made so far (refused ones not counted).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn set_link(&self, state: LinkState) {
        if let Some(link) = &*self.link.lock().unwrap() {
            link.send_replace(state);
        }
    }

    /// Ends the current connection, as a reset does.
    pub fn cut(&self) {
        self.set_link(LinkState::Cut);
    }

    /// The current connection delivers nothing more, and does not say so.
    pub fn black_hole(&self) {
        self.set_link(LinkState::BlackHole);
    }

    /// The current connection delivers requests, and holds the replies: a cut then loses
    /// answers to requests the server carried out.
    pub fn hold_replies(&self) {
        self.set_link(LinkState::RepliesHeld);
    }

    /// A black-holed connection delivers again, what it held first.
    pub fn restore(&self) {
        self.set_link(LinkState::Open);
    }

    /// New connections fail, with an error retrying may mend.
    pub fn refuse(&self) {
        *self.refusal.lock().unwrap() = Refusal::ForNow;
    }

    /// New connections fail, with an error retrying cannot mend.
    pub fn refuse_for_good(&self) {
        *self.refusal.lock().unwrap() = Refusal::ForGood;
    }

    pub fn accept(&self) {
        *self.refusal.lock().unwrap() = Refusal::None;
    }

    async fn connect_now(&self, settings: &RemoteSettings) -> Result<Link, ConnectError> {
        match *self.refusal.lock().unwrap() {
            Refusal::None => {}
            Refusal::ForNow => return Err(ConnectError::Refused("connection refused".into())),
            Refusal::ForGood => {
                return Err(ConnectError::Ssh(SshError::AuthRefused {
                    user: "test".into(),
                    host: "local".into(),
                    tried: "nothing".into(),
                }));
            }
        }
        let (link, state) = watch::channel(LinkState::Open);
        let mut channels = Vec::new();
        let gate = WireGate::new();
        for _ in 0..settings.sftp_channels {
            let mut child = Command::new(&self.program)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| ConnectError::Refused(format!("cannot run {}: {e}", self.program)))?;
            let to_server = child.stdin.take().unwrap();
            let from_server = child.stdout.take().unwrap();
            let (client_end, relay_end) = tokio::io::duplex(1 << 20);
            let (relay_in, relay_out) = tokio::io::split(relay_end);
            tokio::spawn(relay(relay_in, to_server, state.clone(), false));
            let mut ends = state.clone();
            tokio::spawn(async move {
                relay(from_server, relay_out, ends.clone(), true).await;
                // The server goes with its connection.
                let _ = ends.wait_for(|s| *s == LinkState::Cut).await;
                let _ = child.kill().await;
            });
            let (from_server, to_server) = tokio::io::split(client_end);
            let transport = Transport::Pipe {
                from_server: Box::new(from_server),
                to_server: Box::new(to_server),
            };
            channels.push(Session::start(transport, settings.request_timeout, gate.clone()).await?);
        }
        *self.link.lock().unwrap() = Some(link);
        self.connections.fetch_add(1, Ordering::SeqCst);
        Ok(Link {
            channels,
            connection: Box::new(Probe(state)),
        })
    }
}

impl Connector for LocalServer {
    fn server(&self) -> &str {
        "local sftp-server"
    }

    fn connect<'a>(
        &'a self,
        settings: &'a RemoteSettings,
    ) -> BoxFuture<'a, Result<Link, ConnectError>> {
        Box::pin(self.connect_now(settings))
    }
}

/// The connection answers while it delivers.
struct Probe(watch::Receiver<LinkState>);

impl Connection for Probe {
    fn answers(&self) -> BoxFuture<'_, bool> {
        let mut state = self.0.clone();
        Box::pin(async move {
            match state
                .wait_for(|s| matches!(s, LinkState::Open | LinkState::Cut))
                .await
            {
                Ok(s) => *s == LinkState::Open,
                Err(_) => false,
            }
        })
    }
}

/// Moves bytes one way (`replies`: the server's) while the link is open, holds them while it
/// is black-holed (or holding replies), and ends (dropping both ends) once it is cut or either
/// end closes.
async fn relay(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut state: watch::Receiver<LinkState>,
    replies: bool,
) {
    let held = move |s: &LinkState| {
        *s == LinkState::BlackHole || (replies && *s == LinkState::RepliesHeld)
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match state.wait_for(|s| !held(s)).await {
            Ok(s) if *s != LinkState::Cut => {}
            _ => return,
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Reading is cancel-safe: nothing read is lost.
            _ = state.changed() => continue,
        };
        match state.wait_for(|s| !held(s)).await {
            Ok(s) if *s != LinkState::Cut => {}
            _ => return,
        }
        let cut = async {
            let _ = state.wait_for(|s| *s == LinkState::Cut).await;
        };
        tokio::select! {
            written = to.write_all(&buf[..n]) => if written.is_err() { return },
            _ = cut => return,
        }
    }
}
