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

impl ReadSource for SftpSource {
    fn read(&self, offset: u64, len: u32) -> ReadFuture {
        let file = self.file.clone();
        let first = file.now().map(|h| {
            let reply = h.session.submit_read(h.handle.clone(), offset, len);
            (h, reply)
        });
        Box::pin(async move {
            let (mut handle, reply) = first?;
            let mut result = reply.await;
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
        // Sent now, in the order the pipeline submits, unless the lane's connection is gone.
        let first = (!lane.lost()).then(|| {
            lane.session
                .write(lane.handle.clone(), offset, data.clone())
        });
        Box::pin(async move {
            let mut on = lane;
            let mut reply = match first {
                Some(pending) => pending.response().await,
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
