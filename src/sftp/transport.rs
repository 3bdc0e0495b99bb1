//! The byte stream one SFTP session runs over: an SSH channel's `sftp` subsystem, or any pipe to
//! an SFTP server (a local `sftp-server` started by a test, with no SSH between). The session
//! sees only whole buffers going out and bytes coming in, so its request table, timeouts and
//! failure handling are the same over both.

use bytes::{Bytes, BytesMut};
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub type BoxedReader = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

pub enum Transport {
    /// An SSH session channel; the session asks for the `sftp` subsystem on it.
    Ssh(russh::Channel<Msg>),
    /// Already speaking SFTP: the server's input and output.
    Pipe {
        from_server: BoxedReader,
        to_server: BoxedWriter,
    },
}

/// The sending half. Data goes out as given: an SSH channel takes a WRITE's payload without a
/// copy.
pub(super) enum Outgoing {
    Ssh(russh::ChannelWriteHalf<Msg>),
    Pipe(BoxedWriter),
}

impl Outgoing {
    /// `Err` once the peer is gone.
    pub(super) async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        match self {
            Outgoing::Ssh(channel) => channel.data_bytes(data).await.map_err(drop),
            Outgoing::Pipe(pipe) => {
                pipe.write_all(&data).await.map_err(drop)?;
                pipe.flush().await.map_err(drop)
            }
        }
    }
}

/// The receiving half.
pub(super) enum Incoming {
    Ssh(russh::ChannelReadHalf),
    Pipe(BoxedReader),
}

impl Incoming {
    /// Appends what arrives next to `inbox`; `false` once the stream has ended.
    pub(super) async fn receive(&mut self, inbox: &mut BytesMut) -> bool {
        match self {
            Incoming::Ssh(channel) => loop {
                match channel.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        inbox.extend_from_slice(&data);
                        return true;
                    }
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return false,
                    // Stderr of the subsystem, window changes and the like.
                    Some(_) => {}
                }
            },
            Incoming::Pipe(pipe) => {
                inbox.reserve(64 * 1024);
                matches!(pipe.read_buf(inbox).await, Ok(n) if n > 0)
            }
        }
    }
}

/// Why the stream could not be opened.
pub(super) enum OpenError {
    /// The server's sshd refused the `sftp` subsystem: it runs no SFTP server.
    NoSubsystem,
    Other(String),
}

impl Transport {
    /// Starts the subsystem where there is one to start (waiting for the server's yes or no:
    /// a refusal otherwise shows only as silence), and splits the stream. Returns what arrived
    /// meanwhile too.
    pub(super) async fn open(self) -> Result<(Incoming, Outgoing, BytesMut), OpenError> {
        match self {
            Transport::Ssh(mut channel) => {
                channel.request_subsystem(true, "sftp").await.map_err(|e| {
                    OpenError::Other(format!("cannot start the sftp subsystem: {e}"))
                })?;
                let mut early = BytesMut::new();
                loop {
                    match channel.wait().await {
                        Some(ChannelMsg::Success) => break,
                        Some(ChannelMsg::Failure) => return Err(OpenError::NoSubsystem),
                        Some(ChannelMsg::Data { data }) => early.extend_from_slice(&data),
                        Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                            return Err(OpenError::Other(
                                "the server closed the channel before starting the sftp \
                                 subsystem"
                                    .into(),
                            ));
                        }
                        Some(_) => {}
                    }
                }
                let (read_half, write_half) = channel.split();
                Ok((Incoming::Ssh(read_half), Outgoing::Ssh(write_half), early))
            }
            Transport::Pipe {
                from_server,
                to_server,
            } => Ok((
                Incoming::Pipe(from_server),
                Outgoing::Pipe(to_server),
                BytesMut::new(),
            )),
        }
    }
}
