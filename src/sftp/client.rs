//! One SFTP session over one SSH channel (or pipe): request ids, the table of requests in flight, a
//! timeout per request counted from when it was sent, extension discovery, and typed calls.
//!
//! `submit` encodes and queues a request synchronously, so requests reach the server in the
//! order they were submitted (OpenSSH's sftp-server executes them in that order); the reply is a
//! future the caller may await later, which is what lets many requests be in flight at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::gate::{Direction, GatePermit, WireGate};
use super::proto::{
    self, Attrs, DecodeError, IdNames, Limits, NameEntry, Request, Response, StatVfs, StatusCode,
    StreamStart,
};
use super::transport::{Incoming, OpenError, Outgoing, Transport};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SftpError {
    #[error("{message} (SFTP status {code})", code = .code.0)]
    Status { code: StatusCode, message: String },
    #[error("connection to the server lost")]
    ConnectionLost,
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("SFTP protocol error: {0}")]
    Protocol(String),
    #[error("unexpected SFTP reply to {0}")]
    UnexpectedReply(&'static str),
    /// Worded to follow the server's name (see `ConnectError::NotSftp`).
    #[error(
        "runs no SFTP server: its sshd refused the sftp subsystem (its sshd_config needs a line \
         such as `Subsystem sftp internal-sftp`)"
    )]
    NoSftpServer,
    /// Worded to follow the server's name.
    #[error(
        "printed {0:?} from the login's shell instead of starting the SFTP server: make the \
         shell startup files there (~/.bashrc, ~/.profile, ...) print nothing when the shell is \
         not interactive"
    )]
    ShellOutput(String),
}

impl SftpError {
    pub fn errno(&self) -> i32 {
        match self {
            SftpError::Status { code, .. } => code.errno(),
            SftpError::ConnectionLost => libc::ENOTCONN,
            SftpError::Timeout(_) => libc::ETIMEDOUT,
            SftpError::Protocol(_)
            | SftpError::UnexpectedReply(_)
            | SftpError::NoSftpServer
            | SftpError::ShellOutput(_) => libc::EPROTO,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            SftpError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What a request the server did not offer (an extension it lacks) answers.
    fn not_offered() -> Self {
        SftpError::from_status(StatusCode::OP_UNSUPPORTED, b"")
    }

    fn from_status(code: StatusCode, message: &[u8]) -> Self {
        SftpError::Status {
            code,
            message: String::from_utf8_lossy(message).into_owned(),
        }
    }
}

impl From<DecodeError> for SftpError {
    fn from(e: DecodeError) -> Self {
        SftpError::Protocol(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, SftpError>;

/// What the server told us it supports.
#[derive(Debug, Clone, Default)]
pub struct ServerFeatures {
    pub posix_rename: bool,
    pub statvfs: bool,
    pub fsync: bool,
    pub hardlink: bool,
    pub lsetstat: bool,
    pub copy_data: bool,
    pub expand_path: bool,
    pub home_directory: bool,
    pub users_groups_by_id: bool,
    /// SYMLINK takes the link path first, as the draft says (OpenSSH takes the target first).
    pub symlink_draft_order: bool,
    /// The server executes one channel's requests one after another, in order: OpenSSH's
    /// sftp-server does; a threaded server (Green End's) may reorder requests on different
    /// handles. Recognised by OpenSSH's limits@openssh.com and no vendor-id.
    pub in_order: bool,
    /// Largest READ and WRITE payloads the server takes.
    pub max_read: u32,
    pub max_write: u32,
}

/// Payload size every v3 server must take (draft-02 section 3).
const DEFAULT_IO_LEN: u32 = 32 * 1024;
/// Room left in a packet for the WRITE header under a server's max-packet-length.
const WRITE_HEADER_ROOM: u64 = 1024;

/// The log target of one line per SFTP request (sshfs's `-d`/`sshfs_debug`).
pub const REQUEST_LOG: &str = "sftpmount::requests";

struct InFlight {
    reply: oneshot::Sender<Result<Response>>,
    /// Bulk's room on the wire (a WRITE's data, a large READ's reply: see `gate.rs`), given
    /// back with the entry.
    on_wire: Option<GatePermit>,
    submitted_at: Instant,
    /// What the request was, kept only while requests are logged (`-d`, `sshfs_debug`).
    logged_as: Option<String>,
    /// The path an OPEN or OPENDIR opens, while requests are logged: its handle's name.
    opens: Option<String>,
    sent_at: Option<Instant>,
    /// Past its timeout since then, waiting for the verdict on the connection (see
    /// [`Session::stalls`]).
    expired_at: Option<Instant>,
}

/// How long requests past their timeout wait for [`Session::fail_expired`] or
/// [`Session::abandon`] before they fail with a timeout all the same.
const VERDICT_WAIT: Duration = Duration::from_secs(30);

struct Table {
    next_id: u32,
    in_flight: HashMap<u32, InFlight>,
    /// Open handles and their paths, kept only while requests are logged.
    handle_paths: HashMap<Bytes, String>,
    /// Set once the session is unusable; every later request fails with it.
    dead: Option<SftpError>,
    /// When the channel last moved: a packet sent or a reply received. A request still queued
    /// (behind a full channel window) times out once the channel has not moved for the timeout.
    last_progress: Instant,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            next_id: 0,
            in_flight: HashMap::new(),
            handle_paths: HashMap::new(),
            dead: None,
            last_progress: Instant::now(),
        }
    }
}

impl Table {
    /// A request is given up once it was sent `timeout` ago without a reply, or, still queued,
    /// once it waited `timeout` and the channel moved no byte for as long: a long queue on a
    /// busy but working channel is no failure, a stalled one is.
    fn expired(&self, entry: &InFlight, now: Instant, timeout: Duration) -> bool {
        match entry.sent_at {
            Some(sent) => now - sent > timeout,
            None => now - entry.submitted_at > timeout && now - self.last_progress > timeout,
        }
    }
}

struct Shared {
    table: Mutex<Table>,
    /// Shared by every channel of the connection.
    gate: Arc<WireGate>,
    timeout: Duration,
    /// Becomes true once the session is unusable (see [`Session::closed`]).
    dead: tokio::sync::watch::Sender<bool>,
    /// Counts the times requests went past their timeout (see [`Session::stalls`]).
    stalls: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// Fails one request with an unusable reply; the session goes on.
    fn fail(&self, id: u32, why: SftpError) {
        warn!(id, "bad SFTP reply: {why}");
        if let Some(entry) = self.table.lock().unwrap().in_flight.remove(&id) {
            let _ = entry.reply.send(Err(why));
        }
    }

    fn kill(&self, why: SftpError) {
        let mut table = self.table.lock().unwrap();
        if table.dead.is_none() {
            // Callers report what failed; this is context for the debug log.
            info!("SFTP session ended: {why}");
            table.dead = Some(why.clone());
            self.dead.send_replace(true);
        }
        for (_, entry) in table.in_flight.drain() {
            let _ = entry.reply.send(Err(why.clone()));
        }
    }
}

/// The typed reply of a request already queued.
pub type Reply<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

/// A reply that has not arrived yet.
pub struct Pending {
    rx: oneshot::Receiver<Result<Response>>,
}

impl Pending {
    pub async fn response(self) -> Result<Response> {
        self.rx.await.unwrap_or(Err(SftpError::ConnectionLost))
    }
}

/// An SFTP session; cheap to share behind an `Arc`.
pub struct Session {
    shared: Arc<Shared>,
    /// Packets in submission order: the encoded head, then a WRITE's data (not copied).
    queue: mpsc::UnboundedSender<(Bytes, Bytes)>,
    features: ServerFeatures,
    /// The first line a login shell printed before the server started, if it printed any.
    shell_output: Option<String>,
}

/// The first line of text in `bytes` that has something to show, as a log line may quote it:
/// lossy, control characters dropped, at most 80 characters.
fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(80).collect())
        .unwrap_or_default()
}

impl Session {
    /// Starts SFTP over `transport` (the subsystem, over SSH), exchanges versions and discovers
    /// extensions.
    /// `gate`: the connection's, shared by all its channels.
    pub async fn start(
        transport: Transport,
        timeout: Duration,
        gate: Arc<WireGate>,
    ) -> Result<Session> {
        // Each step is bounded: a server that says nothing must not hang a mount.
        let (mut incoming, mut outgoing, mut inbox) =
            tokio::time::timeout(timeout, transport.open())
                .await
                .map_err(|_| SftpError::Timeout(timeout))?
                .map_err(|e| match e {
                    OpenError::NoSubsystem => SftpError::NoSftpServer,
                    OpenError::Other(why) => SftpError::Protocol(why),
                })?;
        let mut init = BytesMut::new();
        proto::encode_init(&mut init);
        outgoing
            .send(init.freeze())
            .await
            .map_err(|()| SftpError::ConnectionLost)?;

        let (version, preamble) = tokio::time::timeout(timeout, async {
            loop {
                match proto::find_version(&mut inbox) {
                    Ok(StreamStart::Version { version, preamble }) => {
                        return Ok((version, preamble));
                    }
                    Ok(StreamStart::NeedMore) => {}
                    Err(_) => return Err(SftpError::ShellOutput(first_line(&inbox))),
                }
                if !incoming.receive(&mut inbox).await {
                    return Err(if inbox.is_empty() {
                        SftpError::Protocol(
                            "the server closed the sftp subsystem (is SFTP enabled?)".into(),
                        )
                    } else {
                        SftpError::ShellOutput(first_line(&inbox))
                    });
                }
            }
        })
        .await
        .map_err(|_| SftpError::Timeout(timeout))??;
        let shell_output = (!preamble.is_empty()).then(|| first_line(&preamble));
        if version.version != proto::VERSION {
            return Err(SftpError::Protocol(format!(
                "server speaks SFTP version {}, we need 3",
                version.version
            )));
        }
        let mut features = ServerFeatures {
            max_read: DEFAULT_IO_LEN,
            max_write: DEFAULT_IO_LEN,
            ..Default::default()
        };
        let mut has_limits = false;
        let mut has_vendor_id = false;
        for (name, value) in &version.extensions {
            match std::str::from_utf8(name).unwrap_or("") {
                proto::ext::SYMLINK_ORDER => {
                    features.symlink_draft_order = &value[..] == b"linkpath-targetpath"
                }
                proto::ext::VENDOR_ID => has_vendor_id = true,
                proto::ext::POSIX_RENAME => features.posix_rename = true,
                proto::ext::STATVFS => features.statvfs = true,
                proto::ext::FSYNC => features.fsync = true,
                proto::ext::HARDLINK => features.hardlink = true,
                proto::ext::LSETSTAT => features.lsetstat = true,
                proto::ext::COPY_DATA => features.copy_data = true,
                proto::ext::EXPAND_PATH => features.expand_path = true,
                proto::ext::HOME_DIRECTORY => features.home_directory = true,
                proto::ext::USERS_GROUPS_BY_ID => features.users_groups_by_id = true,
                proto::ext::LIMITS => has_limits = true,
                _ => {}
            }
        }
        features.in_order = has_limits && !has_vendor_id;

        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            gate,
            timeout,
            dead: tokio::sync::watch::channel(false).0,
            stalls: tokio::sync::watch::channel(0).0,
        });
        let (queue, queue_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(outgoing, queue_rx, shared.clone()));
        tokio::spawn(read_loop(incoming, inbox, shared.clone()));
        tokio::spawn(timeout_sweeper(Arc::downgrade(&shared)));

        let mut session = Session {
            shared,
            queue,
            features,
            shell_output,
        };
        if has_limits {
            let reply = session.submit(&Request::limits()).response().await?;
            let Response::ExtendedReply(data) = reply else {
                return Err(SftpError::UnexpectedReply("limits"));
            };
            let limits = Limits::decode(data)?;
            session.features.max_read = io_len(limits.max_read_len, limits.max_packet_len);
            session.features.max_write = io_len(limits.max_write_len, limits.max_packet_len);
        }
        Ok(session)
    }

    pub fn features(&self) -> &ServerFeatures {
        &self.features
    }

    /// What the login shell printed before the server started (skipped), if anything.
    pub fn shell_output(&self) -> Option<&str> {
        self.shell_output.as_deref()
    }

    /// Resolves once the session is unusable: its channel or connection is gone.
    pub async fn closed(&self) {
        let mut dead = self.shared.dead.subscribe();
        let _ = dead.wait_for(|&dead| dead).await;
    }

    /// How large a bulk request going `direction` should be on this connection's link, at
    /// most (see [`super::gate::WireGate::bulk_request`]); `None` until the link is learnt.
    pub fn bulk_request(&self, direction: super::gate::Direction) -> Option<usize> {
        self.shared.gate.bulk_request(direction)
    }

    /// The connection's lowest round trip lately, once a small request was answered (the
    /// start's limits@openssh.com, on OpenSSH).
    pub fn round_trip(&self) -> Option<Duration> {
        self.shared.gate.round_trip()
    }

    /// The rate this connection's bulk is delivered at going `direction`, bytes a second, once
    /// learnt.
    pub fn delivery_rate(&self, direction: super::gate::Direction) -> Option<f64> {
        self.shared.gate.delivery_rate(direction)
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.dead.borrow()
    }

    /// Changes each time requests go past their timeout. They are not failed at once: a
    /// stalled request is the server's trouble, or the connection's (a black hole: no FIN,
    /// nothing answered), and only a look at the connection tells which. Whoever watches this
    /// answers with [`Session::fail_expired`] or [`Session::abandon`]; without an answer they
    /// fail with a timeout after a while.
    pub fn stalls(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.stalls.subscribe()
    }

    /// The connection answers: the requests past their timeout fail with a timeout, alone.
    pub fn fail_expired(&self) {
        let mut table = self.shared.table.lock().unwrap();
        let expired: Vec<u32> = table
            .in_flight
            .iter()
            .filter(|(_, e)| e.expired_at.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(entry) = table.in_flight.remove(&id) {
                warn!(id, "SFTP request timed out");
                let _ = entry
                    .reply
                    .send(Err(SftpError::Timeout(self.shared.timeout)));
            }
        }
    }

    /// The connection is dead: every request fails with [`SftpError::ConnectionLost`] (so
    /// that what can be is sent again on the next connection), and the session ends.
    pub fn abandon(&self) {
        self.shared.kill(SftpError::ConnectionLost);
    }

    /// Queues `request` for sending; requests leave in the order they were submitted.
    pub fn submit(&self, request: &Request) -> Pending {
        let (tx, rx) = oneshot::channel();
        let mut table = self.shared.table.lock().unwrap();
        if let Some(why) = &table.dead {
            let _ = tx.send(Err(why.clone()));
            return Pending { rx };
        }
        let id = table.next_id;
        table.next_id = table.next_id.wrapping_add(1);
        super::traffic::count_request();
        let mut head = BytesMut::with_capacity(256);
        let tail = request.encode_head(id, &mut head);
        // Queue under the table lock so that queue order is id order.
        if self.queue.send((head.freeze(), tail)).is_err() {
            let _ = tx.send(Err(SftpError::ConnectionLost));
            return Pending { rx };
        }
        let logged = tracing::enabled!(target: REQUEST_LOG, tracing::Level::DEBUG);
        let logged_as = logged.then(|| request.describe(|h| table.handle_paths.get(h).cloned()));
        if let (true, Request::Close { handle }) = (logged, request) {
            table.handle_paths.remove(handle);
        }
        let opens = request
            .opens()
            .filter(|_| logged)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        table.in_flight.insert(
            id,
            InFlight {
                reply: tx,
                on_wire: None,
                submitted_at: Instant::now(),
                logged_as,
                opens,
                sent_at: None,
                expired_at: None,
            },
        );
        Pending { rx }
    }

    pub async fn call(&self, request: &Request) -> Result<Response> {
        self.submit(request).response().await
    }

    /// Queued at the call, as are the other requests whose methods are not `async`: what is
    /// called next on this channel reaches the server after it.
    pub fn open(&self, path: &[u8], pflags: u32, attrs: Attrs) -> Reply<Bytes> {
        let req = Request::Open {
            path: Bytes::copy_from_slice(path),
            pflags,
            attrs,
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_handle(pending.response().await, "open") })
    }

    pub async fn opendir(&self, path: &[u8]) -> Result<Bytes> {
        let req = Request::Opendir {
            path: Bytes::copy_from_slice(path),
        };
        expect_handle(self.call(&req).await, "opendir")
    }

    pub async fn close(&self, handle: Bytes) -> Result<()> {
        expect_ok(self.call(&Request::Close { handle }).await, "close")
    }

    /// Reads up to `len` bytes; an empty result means end of file.
    pub async fn read(&self, handle: Bytes, offset: u64, len: u32) -> Result<Bytes> {
        self.submit_read(handle, offset, len).await
    }

    /// Queues a READ now (so several can be in flight); the future gives its data, empty at
    /// end of file.
    pub fn submit_read(
        &self,
        handle: Bytes,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes>> + Send + 'static + use<> {
        let pending = self.submit(&Request::Read {
            handle,
            offset,
            len,
        });
        async move {
            match pending.response().await? {
                // More than asked is no short-read-and-more: which bytes would be which?
                Response::Data(data) if data.len() > len as usize => Err(SftpError::Protocol(
                    format!("READ of {len} bytes answered with {}", data.len()),
                )),
                Response::Data(data) => Ok(data),
                Response::Status { code, .. } if code == StatusCode::EOF => Ok(Bytes::new()),
                other => Err(unexpected(other, "read")),
            }
        }
    }

    /// Returns the next batch of directory entries, or `None` at the end.
    pub async fn readdir(&self, handle: Bytes) -> Result<Option<Vec<NameEntry>>> {
        self.submit_readdir(handle).await
    }

    /// Queues a READDIR now: the server answers READDIRs on one handle in order, so several
    /// may be in flight, each giving the next batch (`None` once the listing is done).
    pub fn submit_readdir(
        &self,
        handle: Bytes,
    ) -> impl Future<Output = Result<Option<Vec<NameEntry>>>> + Send + 'static + use<> {
        let pending = self.submit(&Request::Readdir { handle });
        async move {
            match pending.response().await? {
                Response::Name(entries) => Ok(Some(entries)),
                Response::Status { code, .. } if code == StatusCode::EOF => Ok(None),
                other => Err(unexpected(other, "readdir")),
            }
        }
    }

    /// Sends a CLOSE and does not wait for it: for handles whose close can fail no caller
    /// (directory handles, read-only files).
    pub fn close_unawaited(&self, handle: Bytes) {
        drop(self.submit(&Request::Close { handle }));
    }

    pub fn lstat(&self, path: &[u8]) -> Reply<Attrs> {
        let req = Request::Lstat {
            path: Bytes::copy_from_slice(path),
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_attrs(pending.response().await, "lstat") })
    }

    pub fn stat(&self, path: &[u8]) -> Reply<Attrs> {
        let req = Request::Stat {
            path: Bytes::copy_from_slice(path),
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_attrs(pending.response().await, "stat") })
    }

    pub fn fstat(&self, handle: Bytes) -> Reply<Attrs> {
        let pending = self.submit(&Request::Fstat { handle });
        Box::pin(async move { expect_attrs(pending.response().await, "fstat") })
    }

    pub fn setstat(&self, path: &[u8], attrs: Attrs) -> Reply<()> {
        let req = Request::Setstat {
            path: Bytes::copy_from_slice(path),
            attrs,
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_ok(pending.response().await, "setstat") })
    }

    pub fn fsetstat(&self, handle: Bytes, attrs: Attrs) -> Reply<()> {
        let pending = self.submit(&Request::Fsetstat { handle, attrs });
        Box::pin(async move { expect_ok(pending.response().await, "fsetstat") })
    }

    /// setstat that does not follow a final symlink (lsetstat@openssh.com).
    pub fn lsetstat(&self, path: &[u8], attrs: Attrs) -> Reply<()> {
        let pending = self
            .features
            .lsetstat
            .then(|| self.submit(&Request::lsetstat(path, &attrs)));
        Box::pin(async move {
            match pending {
                Some(pending) => expect_ok(pending.response().await, "lsetstat"),
                None => Err(SftpError::not_offered()),
            }
        })
    }

    pub fn remove(&self, path: &[u8]) -> Reply<()> {
        let req = Request::Remove {
            path: Bytes::copy_from_slice(path),
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_ok(pending.response().await, "remove") })
    }

    pub fn mkdir(&self, path: &[u8], attrs: Attrs) -> Reply<()> {
        let req = Request::Mkdir {
            path: Bytes::copy_from_slice(path),
            attrs,
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_ok(pending.response().await, "mkdir") })
    }

    pub fn rmdir(&self, path: &[u8]) -> Reply<()> {
        let req = Request::Rmdir {
            path: Bytes::copy_from_slice(path),
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_ok(pending.response().await, "rmdir") })
    }

    pub async fn realpath(&self, path: &[u8]) -> Result<Bytes> {
        let req = Request::Realpath {
            path: Bytes::copy_from_slice(path),
        };
        self.one_name(&req, true, "realpath").await
    }

    /// `path` with a leading `~` or `~user` expanded by the server (expand-path@openssh.com),
    /// as `sftp host:~/dir` has it.
    pub async fn expand_path(&self, path: &[u8]) -> Result<Bytes> {
        self.one_name(
            &Request::expand_path(path),
            self.features.expand_path,
            "expand-path",
        )
        .await
    }

    /// `user`'s home directory (home-directory).
    pub async fn home_directory(&self, user: &[u8]) -> Result<Bytes> {
        let offered = self.features.home_directory;
        self.one_name(&Request::home_directory(user), offered, "home-directory")
            .await
    }

    /// The server's user names for `uids` and group names for `gids`
    /// (users-groups-by-id@openssh.com), in the same order, empty where it has none.
    pub fn users_groups_by_id(&self, uids: &[u32], gids: &[u32]) -> Reply<IdNames> {
        if !self.features.users_groups_by_id {
            return Box::pin(async { Err(SftpError::not_offered()) });
        }
        let (asked_users, asked_groups) = (uids.len(), gids.len());
        let pending = self.submit(&Request::users_groups_by_id(uids, gids));
        Box::pin(async move {
            match pending.response().await? {
                Response::ExtendedReply(data) => {
                    let names = IdNames::decode(data)?;
                    if names.users.len() != asked_users || names.groups.len() != asked_groups {
                        return Err(SftpError::Protocol(format!(
                            "users-groups-by-id: {} user and {} group names for {asked_users} \
                             and {asked_groups} ids",
                            names.users.len(),
                            names.groups.len()
                        )));
                    }
                    Ok(names)
                }
                other => Err(unexpected(other, "users-groups-by-id")),
            }
        })
    }

    /// A request answered by one name (REALPATH, READLINK, an extension's), if the server
    /// offers it.
    async fn one_name(&self, req: &Request, offered: bool, what: &'static str) -> Result<Bytes> {
        if !offered {
            return Err(SftpError::not_offered());
        }
        match self.call(req).await? {
            Response::Name(mut entries) if !entries.is_empty() => {
                Ok(entries.swap_remove(0).filename)
            }
            other => Err(unexpected(other, what)),
        }
    }

    pub async fn readlink(&self, path: &[u8]) -> Result<Bytes> {
        let req = Request::Readlink {
            path: Bytes::copy_from_slice(path),
        };
        self.one_name(&req, true, "readlink").await
    }

    pub fn symlink(&self, link: &[u8], target: &[u8]) -> Reply<()> {
        let req = Request::Symlink {
            link: Bytes::copy_from_slice(link),
            target: Bytes::copy_from_slice(target),
            draft_order: self.features.symlink_draft_order,
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_ok(pending.response().await, "symlink") })
    }

    /// Renames, replacing an existing `to` atomically when the server has posix-rename.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Reply<()> {
        let req = if self.features.posix_rename {
            Request::posix_rename(from, to)
        } else {
            Request::Rename {
                from: Bytes::copy_from_slice(from),
                to: Bytes::copy_from_slice(to),
            }
        };
        let pending = self.submit(&req);
        Box::pin(async move { expect_ok(pending.response().await, "rename") })
    }

    /// The plain v3 RENAME, which never replaces an existing `to` (OpenSSH links, then unlinks).
    pub fn rename_exclusive(&self, from: &[u8], to: &[u8]) -> Reply<()> {
        let pending = self.submit(&Request::Rename {
            from: Bytes::copy_from_slice(from),
            to: Bytes::copy_from_slice(to),
        });
        Box::pin(async move { expect_ok(pending.response().await, "rename") })
    }

    /// Copies `len` bytes of the file open as `from` at `from_offset` into the one open as
    /// `to` at `to_offset`, on the server (copy-data): both handles of this channel. The reply
    /// carries no count; a source that ends before `len` answers EOF (or OK), taken as done.
    /// The server answers nothing else on the channel while it copies.
    pub fn copy_data(
        &self,
        from: &[u8],
        from_offset: u64,
        len: u64,
        to: &[u8],
        to_offset: u64,
    ) -> Reply<()> {
        if !self.features.copy_data {
            return Box::pin(async { Err(SftpError::not_offered()) });
        }
        let pending = self.submit(&Request::copy_data(from, from_offset, len, to, to_offset));
        Box::pin(async move {
            match pending.response().await? {
                Response::Status { code, .. } if code == StatusCode::EOF => Ok(()),
                other => expect_ok(Ok(other), "copy-data"),
            }
        })
    }

    pub fn hardlink(&self, existing: &[u8], new: &[u8]) -> Reply<()> {
        if !self.features.hardlink {
            return Box::pin(async { Err(SftpError::not_offered()) });
        }
        let pending = self.submit(&Request::hardlink(existing, new));
        Box::pin(async move { expect_ok(pending.response().await, "hardlink") })
    }

    pub async fn statvfs(&self, path: &[u8]) -> Result<StatVfs> {
        if !self.features.statvfs {
            return Err(SftpError::not_offered());
        }
        match self.call(&Request::statvfs(path)).await? {
            Response::ExtendedReply(data) => Ok(StatVfs::decode(data)?),
            other => Err(unexpected(other, "statvfs")),
        }
    }

    /// Asks the server to fsync the file; a no-op when it cannot.
    pub async fn fsync(&self, handle: &[u8]) -> Result<()> {
        if !self.features.fsync {
            return Ok(());
        }
        expect_ok(self.call(&Request::fsync(handle)).await, "fsync")
    }

    /// Queues a WRITE; the caller awaits the ack when it needs it.
    pub fn write(&self, handle: Bytes, offset: u64, data: Bytes) -> Pending {
        self.submit(&Request::Write {
            handle,
            offset,
            data,
        })
    }
}

/// Checks the status reply of a request that answers with a bare status.
pub fn expect_ok(reply: Result<Response>, what: &'static str) -> Result<()> {
    match reply? {
        Response::Status { code, .. } if code == StatusCode::OK => Ok(()),
        other => Err(unexpected(other, what)),
    }
}

/// The draft's bound on a handle's length.
const MAX_HANDLE_LEN: usize = 256;

fn expect_handle(reply: Result<Response>, what: &'static str) -> Result<Bytes> {
    match reply? {
        Response::Handle(handle) if handle.len() > MAX_HANDLE_LEN => Err(SftpError::Protocol(
            format!("{what}: a handle of {} bytes (256 at most)", handle.len()),
        )),
        Response::Handle(handle) => Ok(handle),
        other => Err(unexpected(other, what)),
    }
}

fn expect_attrs(reply: Result<Response>, what: &'static str) -> Result<Attrs> {
    match reply? {
        Response::Attrs(attrs) => match attrs.check() {
            Ok(()) => Ok(attrs),
            Err(why) => Err(SftpError::Protocol(format!("{what}: {why}"))),
        },
        other => Err(unexpected(other, what)),
    }
}

fn unexpected(reply: Response, what: &'static str) -> SftpError {
    match reply {
        Response::Status { code, message } => SftpError::from_status(code, &message),
        _ => SftpError::UnexpectedReply(what),
    }
}

fn io_len(stated: u64, max_packet: u64) -> u32 {
    let mut len = if stated == 0 {
        DEFAULT_IO_LEN as u64
    } else {
        stated
    };
    if max_packet > WRITE_HEADER_ROOM {
        len = len.min(max_packet - WRITE_HEADER_ROOM);
    }
    len.clamp(1024, 16 * 1024 * 1024) as u32
}

async fn write_loop(
    mut outgoing: Outgoing,
    mut queue: mpsc::UnboundedReceiver<(Bytes, Bytes)>,
    shared: Arc<Shared>,
) {
    while let Some((head, tail)) = queue.recv().await {
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        // A READ whose caller stopped waiting before it left (read-ahead the reader no longer
        // wants) is not sent: it only changes what is on the wire.
        let read = head.get(4) == Some(&proto::packet_type::READ);
        let unwanted = |shared: &Shared| {
            let mut table = shared.table.lock().unwrap();
            let gone = table
                .in_flight
                .get(&id)
                .is_some_and(|e| e.reply.is_closed());
            if read && gone {
                table.in_flight.remove(&id);
            }
            read && gone
        };
        if unwanted(&shared) {
            continue;
        }
        // Bulk goes out only when the connection has room for it on the wire: a WRITE's data,
        // and the reply a large READ asks for.
        let on_wire = match bulk(&head, &tail) {
            Some((direction, len)) => Some(shared.gate.admit(direction, len).await),
            None => None,
        };
        if on_wire.is_some() && unwanted(&shared) {
            continue;
        }
        {
            let mut table = shared.table.lock().unwrap();
            match table.in_flight.get_mut(&id) {
                Some(entry) => entry.on_wire = on_wire,
                // Timed out while queued: its caller has its error; never sending it keeps its
                // fate known.
                None => continue,
            }
        }
        let sent = match outgoing.send(head).await {
            Ok(()) if !tail.is_empty() => outgoing.send(tail).await,
            other => other,
        };
        if sent.is_err() {
            shared.kill(SftpError::ConnectionLost);
            return;
        }
        let mut table = shared.table.lock().unwrap();
        let now = Instant::now();
        table.last_progress = now;
        if let Some(entry) = table.in_flight.get_mut(&id) {
            entry.sent_at = Some(now);
        }
    }
}

/// A READ asking for at least this much is bulk (read-ahead, a large file's reads): it waits
/// for room on the wire; smaller ones go first, as lookups do. A little below the least bulk
/// request, so that the pieces a large READ is split into all count.
const BULK_READ: u32 = (super::gate::MIN_BULK_REQUEST - 1024) as u32;

/// The bulk a queued request (its `head`, and `tail`: a WRITE's data) puts on the wire, and
/// which way.
fn bulk(head: &[u8], tail: &[u8]) -> Option<(Direction, usize)> {
    if !tail.is_empty() {
        return Some((Direction::Up, tail.len()));
    }
    // A READ ends with its length.
    if head.get(4) == Some(&proto::packet_type::READ) && head.len() >= 13 {
        let len = u32::from_be_bytes(head[head.len() - 4..].try_into().expect("4 bytes"));
        return (len >= BULK_READ).then_some((Direction::Down, len as usize));
    }
    None
}

/// The longest reply past the packet limit that is read and dropped; a longer length is garbage.
const MAX_DRAINED_REPLY: usize = 16 * proto::MAX_PACKET_LEN;

/// Replies are framed by their length: a reply that cannot be used (too long to hold, or with
/// a body that does not decode) fails the request it answers, and the session goes on with the
/// next frame. Only a stream that cannot be framed any more ends the session.
async fn read_loop(mut incoming: Incoming, mut inbox: BytesMut, shared: Arc<Shared>) {
    // Bytes of an oversized reply still to be dropped.
    let mut skip = 0usize;
    loop {
        loop {
            if skip > 0 {
                let n = skip.min(inbox.len());
                inbox.advance(n);
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let packet = match proto::split_packet(&mut inbox) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                // Past what could be drained: the length is garbage, the stream cannot be
                // framed any more (waiting for gigabytes that never come would swallow every
                // later reply). The session goes; the connection is replaced.
                Err(DecodeError::TooLong(len)) if len > MAX_DRAINED_REPLY => {
                    warn!("the server sent a reply of {len} bytes: the SFTP stream is lost");
                    return shared.kill(SftpError::ConnectionLost);
                }
                Err(DecodeError::TooLong(len)) if inbox.len() >= 9 => {
                    let id = u32::from_be_bytes([inbox[5], inbox[6], inbox[7], inbox[8]]);
                    shared.fail(
                        id,
                        SftpError::Protocol(format!(
                            "reply of {len} bytes exceeds the packet limit"
                        )),
                    );
                    skip = 4 + len;
                    continue;
                }
                // Its request id has not arrived yet.
                Err(DecodeError::TooLong(_)) => break,
                Err(e) => return shared.kill(e.into()),
            };
            match proto::decode_response(packet.clone()) {
                Ok((id, response)) => {
                    let entry = {
                        let mut table = shared.table.lock().unwrap();
                        let entry = table.in_flight.remove(&id);
                        if let (
                            Some(InFlight {
                                opens: Some(path), ..
                            }),
                            Response::Handle(h),
                        ) = (&entry, &response)
                        {
                            table.handle_paths.insert(h.clone(), path.clone());
                        }
                        entry
                    };
                    match entry {
                        Some(entry) => {
                            if let Some(what) = &entry.logged_as {
                                debug!(
                                    target: REQUEST_LOG,
                                    "{what} -> {} in {:.1} ms",
                                    response.describe(),
                                    entry.submitted_at.elapsed().as_secs_f64() * 1000.0
                                );
                            }
                            if entry.on_wire.is_none()
                                && let Some(sent) = entry.sent_at
                            {
                                shared.gate.sample(sent.elapsed());
                            }
                            match (&response, &entry.on_wire) {
                                (Response::Status { code, .. }, Some(permit))
                                    if *code == StatusCode::OK =>
                                {
                                    permit.delivered(permit.bytes());
                                    super::traffic::count_written(permit.bytes())
                                }
                                (Response::Data(data), on_wire) => {
                                    if let Some(permit) = on_wire {
                                        permit.delivered(data.len());
                                    }
                                    super::traffic::count_read(data.len())
                                }
                                _ => {}
                            }
                            let _ = entry.reply.send(Ok(response));
                        }
                        None => debug!(id, "reply to a request that is no longer waited for"),
                    }
                }
                Err(e) if packet.len() >= 5 => {
                    let id = u32::from_be_bytes([packet[1], packet[2], packet[3], packet[4]]);
                    shared.fail(id, e.into());
                }
                Err(e) => return shared.kill(e.into()),
            }
        }
        if !incoming.receive(&mut inbox).await {
            return shared.kill(SftpError::ConnectionLost);
        }
        shared.table.lock().unwrap().last_progress = Instant::now();
    }
}

async fn timeout_sweeper(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut table = shared.table.lock().unwrap();
        let newly: Vec<u32> = table
            .in_flight
            .iter()
            .filter(|(_, e)| e.expired_at.is_none() && table.expired(e, now, shared.timeout))
            .map(|(id, _)| *id)
            .collect();
        for id in &newly {
            if let Some(entry) = table.in_flight.get_mut(id) {
                entry.expired_at = Some(now);
            }
        }
        let unanswered: Vec<u32> = table
            .in_flight
            .iter()
            .filter(|(_, e)| e.expired_at.is_some_and(|t| now - t > VERDICT_WAIT))
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            if let Some(entry) = table.in_flight.remove(&id) {
                warn!(id, "SFTP request timed out");
                let _ = entry.reply.send(Err(SftpError::Timeout(shared.timeout)));
            }
        }
        drop(table);
        if !newly.is_empty() {
            shared.stalls.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(submitted_ago: Duration, sent_ago: Option<Duration>, now: Instant) -> InFlight {
        InFlight {
            reply: oneshot::channel().0,
            on_wire: None,
            submitted_at: now - submitted_ago,
            logged_as: None,
            opens: None,
            sent_at: sent_ago.map(|ago| now - ago),
            expired_at: None,
        }
    }

    #[test]
    fn a_sent_request_expires_after_the_timeout_a_queued_one_only_on_a_stalled_channel() {
        let now = Instant::now() + Duration::from_secs(3600);
        let timeout = Duration::from_secs(10);
        let s = Duration::from_secs;
        let mut table = Table {
            last_progress: now - s(1),
            ..Table::default()
        };
        // Sent: its own clock.
        assert!(!table.expired(&entry(s(9), Some(s(9)), now), now, timeout));
        assert!(table.expired(&entry(s(11), Some(s(11)), now), now, timeout));
        // Queued behind a full window for long, but the channel moves: not a failure.
        assert!(!table.expired(&entry(s(60), None, now), now, timeout));
        // Queued, and the channel has not moved for longer than the timeout: a stall.
        table.last_progress = now - s(11);
        assert!(table.expired(&entry(s(60), None, now), now, timeout));
        assert!(!table.expired(&entry(s(5), None, now), now, timeout));
    }
}
