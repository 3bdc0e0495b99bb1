//! The mount's [`Connector`]: an SSH connection (authenticated with what worked the first time,
//! the host key checked every time) and SFTP on its session channels.

use std::sync::Arc;

use russh::client::Handle;
use tracing::warn;

use super::{BoxFuture, ConnectError, Connection, Connector, Link, RemoteSettings};
use crate::sftp::{Session, Transport, WireGate};
use crate::ssh::{self, ClientHandler, Target};

pub struct SshConnector {
    target: Arc<Target>,
}

impl SshConnector {
    pub fn new(target: Arc<Target>) -> SshConnector {
        SshConnector { target }
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
        Box::pin(establish(&self.target, settings))
    }
}

struct SshConnection(Arc<Handle<ClientHandler>>);

impl Connection for SshConnection {
    fn answers(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.0.channel_open_session().await {
                Ok(channel) => {
                    let _ = channel.close().await;
                    true
                }
                Err(_) => false,
            }
        })
    }
}

async fn establish(target: &Arc<Target>, settings: &RemoteSettings) -> Result<Link, ConnectError> {
    let handle = Arc::new(ssh::connect(target.clone()).await?);
    let channel = handle
        .channel_open_session()
        .await
        .map_err(ConnectError::Channel)?;
    let gate = WireGate::new();
    let first = Session::start(
        Transport::Ssh(channel),
        settings.request_timeout,
        gate.clone(),
    )
    .await?;
    let mut channels = vec![first];
    // The others all at once. A server that allows fewer sessions (sshd's MaxSessions) just
    // gives us fewer: the mount works with any number.
    let mut pending = tokio::task::JoinSet::new();
    for _ in 1..settings.sftp_channels {
        let handle = handle.clone();
        let timeout = settings.request_timeout;
        let gate = gate.clone();
        pending.spawn(async move {
            let channel = handle.channel_open_session().await.ok()?;
            Session::start(Transport::Ssh(channel), timeout, gate)
                .await
                .ok()
        });
    }
    while let Some(done) = pending.join_next().await {
        if let Ok(Some(session)) = done {
            channels.push(session);
        }
    }
    if channels.len() < settings.sftp_channels {
        warn!(
            "the server granted {} of {} SFTP channels",
            channels.len(),
            settings.sftp_channels
        );
    }
    Ok(Link {
        channels,
        connection: Box::new(SshConnection(handle)),
    })
}
