//! The mount's [`Connector`]: SSH connections (authenticated with what worked the first time,
//! the host key checked every time; one, or `max_conns`) and SFTP on their session channels.

use std::sync::Arc;

use russh::client::Handle;
use tracing::{debug, warn};

use super::{BoxFuture, ConnectError, Connection, Connector, Link, RemoteSettings};
use crate::sftp::{Session, SftpError, Transport, WireGate};
use crate::ssh::{self, ClientHandler, Target};

pub struct SshConnector {
    target: Arc<Target>,
    /// SSH connections per link (sshfs's max_conns): each has its own TCP window and its own
    /// sshd process, hence its own core for the server's encryption.
    connections: usize,
}

impl SshConnector {
    pub fn new(target: Arc<Target>, connections: usize) -> SshConnector {
        SshConnector {
            target,
            connections: connections.max(1),
        }
    }
}

impl Connector for SshConnector {
    fn server(&self) -> &str {
        &self.target.host
    }

    fn connect<'a>(
        &'a self,
        settings: &'a RemoteSettings,
    ) -> BoxFuture<'a, Result<Link, ConnectError>> {
        Box::pin(establish(&self.target, self.connections, settings))
    }
}

/// The link's SSH connections: it answers when every one of them does.
struct SshConnection(Vec<Arc<Handle<ClientHandler>>>);

impl Connection for SshConnection {
    fn answers(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            for handle in &self.0 {
                match handle.channel_open_session().await {
                    Ok(channel) => {
                        let _ = channel.close().await;
                    }
                    Err(_) => return false,
                }
            }
            true
        })
    }
}

/// `n` more connections, made at once, once the first has authenticated (their secrets are
/// the first's); a task that died is left out.
async fn connect_more(
    target: &Arc<Target>,
    n: usize,
) -> Vec<Result<Handle<ClientHandler>, crate::ssh::SshError>> {
    let mut more = tokio::task::JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        more.spawn(async move { ssh::connect(target).await });
    }
    let mut made = Vec::new();
    while let Some(done) = more.join_next().await {
        match done {
            Ok(result) => made.push(result),
            Err(e) => warn!("a connection attempt failed: {e}"),
        }
    }
    made
}

async fn establish(
    target: &Arc<Target>,
    connections: usize,
    settings: &RemoteSettings,
) -> Result<Link, ConnectError> {
    // The first alone: it asks for secrets, if any, which the others then re-use.
    let mut handles = vec![Arc::new(ssh::connect(target.clone()).await?)];
    for more in connect_more(target, connections - 1).await {
        handles.push(Arc::new(more?));
    }
    let handle = handles[0].clone();
    // Bounded as every step of connecting: a server may never confirm a channel.
    let channel = tokio::time::timeout(settings.request_timeout, handle.channel_open_session())
        .await
        .map_err(|_| ConnectError::Sftp(SftpError::Timeout(settings.request_timeout)))?
        .map_err(ConnectError::Channel)?;
    let gate = WireGate::new();
    let first = Session::start(
        Transport::Ssh(channel),
        settings.request_timeout,
        gate.clone(),
    )
    .await
    .map_err(|why| match why {
        SftpError::NoSftpServer | SftpError::ShellOutput(_) => ConnectError::NotSftp {
            host: target.host.clone(),
            why,
        },
        other => other.into(),
    })?;
    // Once per connection: every channel of it has the same server.
    debug!(features = ?first.features(), "SFTP server");
    if let Some(text) = first.shell_output() {
        warn!(
            "{} printed {text:?} from the login's shell before starting the SFTP server: \
             skipped; make the shell startup files there (~/.bashrc, ~/.profile, ...) print \
             nothing when the shell is not interactive",
            target.host
        );
    }
    // A far link (its round trip known from the start's limits request) gets more channels,
    // over more connections, made now: one SSH handshake more at mount.
    let far = settings
        .far
        .filter(|far| first.round_trip().is_some_and(|rtt| rtt >= far.rtt));
    let mut wanted = settings.sftp_channels;
    if let Some(far) = far {
        debug!(rtt = ?first.round_trip(), "a far link: {} channels over {} connections", far.channels, far.connections);
        wanted = wanted.max(far.channels);
        let missing = far.connections.saturating_sub(handles.len());
        // Fewer connections only means fewer channels.
        for more in connect_more(target, missing).await {
            match more {
                Ok(handle) => handles.push(Arc::new(handle)),
                Err(e) => warn!("a further connection for the far link failed: {e}"),
            }
        }
    }
    let mut channels = vec![first];
    // The others all at once. A server that allows fewer sessions (sshd's MaxSessions) just
    // gives us fewer: the mount works with any number.
    let mut pending = tokio::task::JoinSet::new();
    // Channel i on connection i mod n: the metadata channel (0) on the first.
    for i in 1..wanted {
        let handle = handles[i % handles.len()].clone();
        let timeout = settings.request_timeout;
        let gate = gate.clone();
        pending.spawn(async move {
            let channel = tokio::time::timeout(timeout, handle.channel_open_session())
                .await
                .ok()?
                .ok()?;
            let session = Session::start(Transport::Ssh(channel), timeout, gate).await;
            Some((i, session.ok()?))
        });
    }
    // In the order asked, so that the channels alternate between connections.
    let mut opened = Vec::new();
    while let Some(done) = pending.join_next().await {
        if let Ok(Some(session)) = done {
            opened.push(session);
        }
    }
    opened.sort_by_key(|(i, _)| *i);
    channels.extend(opened.into_iter().map(|(_, s)| s));
    if channels.len() < wanted {
        warn!(
            "the server granted {} of {} SFTP channels",
            channels.len(),
            wanted
        );
    }
    Ok(Link {
        channels,
        connection: Box::new(SshConnection(handles)),
    })
}
