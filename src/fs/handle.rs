//! An open file's handle on the server, which a lost connection takes along: [`FileHandle`] is
//! the stable thing the open file holds, [`ServerHandle`] the handle of one connection, swapped
//! for a new one once the file is reopened on the next connection (see `open_file.rs`). Reads
//! lost with their connection are asked again on the new handle; WRITEs lost with it are sent
//! again there, in the order they were first sent, since their data is still held until acked.
//!
//! The sources and lanes the read-ahead and the write pipeline use are here too: they send on
//! a handle and know what to do when its connection goes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::read::{ReadFuture, ReadSource};
use super::write::{AckFuture, WriteLane};
use super::{Errno, errno};
use crate::sftp::client::Pending;
use crate::sftp::gate::Direction;
use crate::sftp::proto::Response;
use crate::sftp::{Session, SftpError, StatusCode};

/// A handle on one connection's channel.
#[derive(Clone)]
pub struct ServerHandle {
    /// The connection it belongs to (see `remote::Generation::id`).
    pub generation: u64,
    /// Index of `session` among its connection's channels.
    pub channel: usize,
    pub session: Arc<Session>,
    pub handle: Bytes,
}

impl ServerHandle {
    fn lost(&self) -> bool {
        self.session.is_closed()
    }

    /// Its channel among those of every connection: a WRITE re-sent after a reconnection is
    /// not in the new connection's channel order, so the same index on another connection is
    /// another channel.
    pub fn ordering_channel(&self) -> usize {
        ordering_channel(self.generation, self.channel)
    }
}

/// Channel `index` of connection `generation`, as the write ordering names channels.
pub fn ordering_channel(generation: u64, index: usize) -> usize {
    ((generation as usize) << 16) | index
}

/// An open file's handle as of now; `Err` once it cannot be reopened (the file is gone, or it is
/// another file now): every later use fails with that errno.
type Current = Result<ServerHandle, Errno>;

/// The handle an open file reaches the server through, across connections.
pub struct FileHandle {
    current: watch::Sender<Current>,
    /// WRITEs lost with a connection, by chunk id, until sent again: they go out in that order.
    resending: Mutex<BTreeSet<u64>>,
    turn: watch::Sender<()>,
    /// How long a user of a lost handle waits for the reopened one.
    wait: Duration,
}

impl FileHandle {
    pub fn new(first: ServerHandle, wait: Duration) -> Arc<FileHandle> {
        Arc::new(FileHandle {
            current: watch::channel(Ok(first)).0,
            resending: Mutex::default(),
            turn: watch::channel(()).0,
            wait,
        })
    }

    /// The handle now, whether or not its connection still stands.
    pub fn now(&self) -> Current {
        self.current.borrow().clone()
    }

    /// The handle to use: the current one, or, when its connection is gone, the one that
    /// replaces it (waited for a bounded time).
    pub async fn live(&self) -> Current {
        let now = self.now()?;
        if now.lost() {
            return self.after(now.generation).await;
        }
        Ok(now)
    }

    /// Runs a request that may be sent twice (fstat, fsync) on the live handle; one lost with
    /// its connection is sent again on the reopened handle.
    pub async fn idempotent<T, F>(&self, request: F) -> Result<T, Errno>
    where
        F: Fn(&ServerHandle) -> crate::sftp::client::Reply<T>,
    {
        let mut own = self.live().await?;
        loop {
            match request(&own).await {
                Err(SftpError::ConnectionLost) => own = self.after(own.generation).await?,
                other => return other.map_err(errno),
            }
        }
    }

    /// Installs the handle reopened on a new connection, or the reason it could not be.
    pub fn replace(&self, next: Current) {
        let _ = self.current.send_replace(next);
    }

    /// Waits for a handle on a connection newer than `lost`.
    pub async fn after(&self, lost: u64) -> Current {
        let mut rx = self.current.subscribe();
        let waited = tokio::time::timeout(
            self.wait,
            rx.wait_for(|c| {
                c.as_ref()
                    .map_or(true, |h| h.generation > lost && !h.lost())
            }),
        )
        .await;
        match waited {
            Ok(Ok(current)) => current.clone(),
            _ => Err(libc::EIO),
        }
    }

    /// Sends a WRITE lost with connection `lost` again once the file is reopened, after every
    /// lost WRITE with a lower id was sent again (ids are the order they were first sent in).
    async fn resend(
        &self,
        chunk: u64,
        lost: u64,
        offset: u64,
        data: &Bytes,
    ) -> Result<(ServerHandle, crate::sftp::client::Pending), Errno> {
        self.resending.lock().unwrap().insert(chunk);
        let outcome = async {
            let handle = self.after(lost).await?;
            let mut turn = self.turn.subscribe();
            loop {
                let first = self.resending.lock().unwrap().first().copied();
                if first == Some(chunk) {
                    break;
                }
                if turn.changed().await.is_err() {
                    return Err(libc::EIO);
                }
            }
            let pending = handle
                .session
                .write(handle.handle.clone(), offset, data.clone());
            Ok((handle, pending))
        }
        .await;
        self.resending.lock().unwrap().remove(&chunk);
        self.turn.send_replace(());
        outcome
    }
}

/// An open file's handle as the read-ahead's (and direct reads') source of bytes: a READ lost
/// with its connection is asked again on the reopened handle.
pub struct SftpSource {
    pub file: Arc<FileHandle>,
}

/// Read-ahead beyond this much of the link's delivery rate only waits (see
/// [`ReadSource::ahead_limit`]).
const AHEAD_TIME: f64 = 1.0;
/// A file's unacked writes, in seconds of the link's delivery rate (see
/// [`WriteLane::buffer_limit`]), and at least this many bytes.
const BUFFER_TIME: f64 = 2.0;
const MIN_BUFFER_LIMIT: usize = 1 << 20;
/// Before the link's rate is known (a round trip, on a fast link).
const UNKNOWN_BUFFER_LIMIT: usize = 4 << 20;

impl ReadSource for SftpSource {
    fn ahead_limit(&self) -> usize {
        let rate = self
            .file
            .now()
            .ok()
            .and_then(|h| h.session.delivery_rate(Direction::Down));
        rate.map_or(usize::MAX, |rate| (rate * AHEAD_TIME) as usize)
    }

    fn read(&self, offset: u64, len: u32) -> ReadFuture {
        let file = self.file.clone();
        // In pieces of the size the link wants (see `WireGate::bulk_request`), all asked at once.
        let first = file.now().map(|h| {
            let pieces = pieces(len as usize, h.session.bulk_request(Direction::Down));
            let replies: Vec<_> = pieces
                .map(|(at, piece)| {
                    let reply =
                        h.session
                            .submit_read(h.handle.clone(), offset + at as u64, piece as u32);
                    (piece, reply)
                })
                .collect();
            (h, replies)
        });
        Box::pin(async move {
            let (mut handle, replies) = first?;
            let mut result = joined_reads(replies).await;
            // A read may be asked twice: it changes nothing. Once per connection lost.
            while matches!(result, Err(SftpError::ConnectionLost)) {
                handle = file.after(handle.generation).await?;
                result = handle
                    .session
                    .submit_read(handle.handle.clone(), offset, len)
                    .await;
            }
            result.map_err(errno)
        })
    }
}

/// `len` bytes in equal pieces of about `piece` (all of them in one when `None`), none much
/// smaller (the gate counts only large READs as bulk): each piece's offset within them, and
/// its length.
fn pieces(len: usize, piece: Option<usize>) -> impl Iterator<Item = (usize, usize)> {
    let count = piece.map_or(1, |piece| (len / piece.max(1)).max(1));
    let piece = len.div_ceil(count).max(1);
    (0..len.max(1))
        .step_by(piece)
        .map(move |at| (at, piece.min(len - at)))
}

/// The replies to the pieces of one READ, as one reply: the pieces in order up to the first
/// short one (a server may answer short anywhere: the caller asks again from there). A piece
/// that failed after others brought data shortens the reply; the caller's next READ meets the
/// failure, or, for a lost connection, carries on on the next one.
async fn joined_reads<F>(replies: Vec<(usize, F)>) -> Result<Bytes, SftpError>
where
    F: std::future::Future<Output = Result<Bytes, SftpError>>,
{
    let mut joined = bytes::BytesMut::new();
    let count = replies.len();
    for (asked, reply) in replies {
        let data = match reply.await {
            Ok(data) if count == 1 => return Ok(data),
            Ok(data) => data,
            Err(e) if joined.is_empty() => return Err(e),
            Err(_) => break,
        };
        joined.extend_from_slice(&data);
        if data.len() < asked {
            break;
        }
    }
    Ok(joined.freeze())
}

/// One handle on one SFTP channel, as a write pipeline lane. A WRITE lost with the connection
/// (or placed on a lane whose connection is gone) is sent again on the file's reopened handle.
pub struct SftpLane {
    pub handle: ServerHandle,
    pub file: Arc<FileHandle>,
    /// Where the server's free space can be asked, to tell ENOSPC from other failures.
    pub statvfs_path: Bytes,
}

impl WriteLane for SftpLane {
    fn submit(&self, chunk: u64, offset: u64, data: Bytes) -> AckFuture {
        let lane = self.handle.clone();
        let file = self.file.clone();
        let statvfs_path = self.statvfs_path.clone();
        // Sent now, in the order the pipeline submits, unless the lane's connection is gone; in
        // pieces of the size the link wants (see `WireGate::bulk_request`).
        let first = (!lane.lost()).then(|| {
            let piece = lane.session.bulk_request(Direction::Up);
            pieces(data.len(), piece)
                .map(|(at, len)| {
                    let piece = data.slice(at..at + len);
                    lane.session
                        .write(lane.handle.clone(), offset + at as u64, piece)
                })
                .collect::<Vec<_>>()
        });
        Box::pin(async move {
            let mut on = lane;
            let mut reply = match first {
                Some(pending) => joined_writes(pending).await,
                None => Err(SftpError::ConnectionLost),
            };
            while matches!(reply, Err(SftpError::ConnectionLost)) {
                let (handle, pending) = file.resend(chunk, on.generation, offset, &data).await?;
                on = handle;
                reply = pending.response().await;
            }
            match crate::sftp::client::expect_ok(reply, "write") {
                Ok(()) => Ok(()),
                Err(e) => Err(write_failure_errno(&on.session, &statvfs_path, e).await),
            }
        })
    }

    fn channel(&self) -> usize {
        self.handle.ordering_channel()
    }

    fn usable(&self) -> bool {
        !self.handle.lost()
    }

    fn buffer_limit(&self) -> usize {
        let rate = self.handle.session.delivery_rate(Direction::Up);
        rate.map_or(UNKNOWN_BUFFER_LIMIT, |rate| {
            ((rate * BUFFER_TIME) as usize).max(MIN_BUFFER_LIMIT)
        })
    }
}

/// The replies to the pieces of one WRITE, as one reply: OK when every piece is; lost when one
/// was lost with its connection (the whole WRITE is sent again); else the first failure.
async fn joined_writes(pending: Vec<Pending>) -> Result<Response, SftpError> {
    let (mut lost, mut failure, mut ok) = (false, None, None);
    for piece in pending {
        match piece.response().await {
            Err(SftpError::ConnectionLost) => lost = true,
            Ok(reply @ Response::Status { code, .. }) if code == StatusCode::OK => ok = Some(reply),
            other => {
                failure.get_or_insert(other);
            }
        }
    }
    match (lost, failure, ok) {
        (false, Some(failure), _) => failure,
        (false, None, Some(ok)) => Ok(ok),
        _ => Err(SftpError::ConnectionLost),
    }
}

/// OpenSSH reports a full disk as a bare FAILURE; the server's free space tells them apart.
async fn write_failure_errno(session: &Session, statvfs_path: &[u8], e: SftpError) -> Errno {
    if e.status() != Some(StatusCode::FAILURE) {
        return e.errno();
    }
    match session.statvfs(statvfs_path).await {
        Ok(vfs) if vfs.bavail.saturating_mul(vfs.frsize.max(1)) < 2 * 1024 * 1024 => libc::ENOSPC,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_cut_into_pieces_of_the_size_asked() {
        let cut = |len, piece| pieces(len, piece).collect::<Vec<_>>();
        assert_eq!(cut(10, Some(4)), [(0, 5), (5, 5)]);
        assert_eq!(cut(8, Some(4)), [(0, 4), (4, 4)]);
        assert_eq!(cut(3, Some(4)), [(0, 3)]);
        let kib = |n: usize| n << 10;
        assert_eq!(
            cut(kib(255), Some(kib(64))),
            [(0, kib(85)), (kib(85), kib(85)), (kib(170), kib(85))]
        );
        assert_eq!(cut(10, None), [(0, 10)]);
        assert_eq!(cut(0, Some(4)), [(0, 0)], "an empty request is still one");
    }

    #[tokio::test]
    async fn the_pieces_of_a_read_end_at_the_first_short_one() {
        let reply = |data: &'static [u8]| async move { Ok(Bytes::from_static(data)) };
        let replies = vec![(3, reply(b"abc")), (3, reply(b"de")), (3, reply(b"fgh"))];
        assert_eq!(&joined_reads(replies).await.unwrap()[..], b"abcde");
        let failed = |e: SftpError| async move { Err::<Bytes, _>(e) };
        let replies: Vec<(
            usize,
            std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
        )> = vec![
            (3, Box::pin(reply(b"abc"))),
            (3, Box::pin(failed(SftpError::ConnectionLost))),
        ];
        assert_eq!(
            &joined_reads(replies).await.unwrap()[..],
            b"abc",
            "what came before a lost piece"
        );
        let replies = vec![(3, failed(SftpError::ConnectionLost))];
        assert!(matches!(
            joined_reads(replies).await,
            Err(SftpError::ConnectionLost)
        ));
    }
}
