//! The per-open-file write pipeline: a kernel WRITE is accepted into a bounded buffer of unacked
//! data and answered at once; SFTP WRITEs go out in the background; acks free the buffer; the
//! first failure is latched with its errno and returned by the next write, flush or fsync.
//!
//! [`InodeWrites`] tracks, across every open file of one inode, which writes are still unacked,
//! so that reads and attribute fetches can wait for (or account for) data not yet on the server.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::warn;

use crate::sftp::{Session, SftpError, StatusCode};

/// Unacked writes of one inode, whichever open file issued them.
#[derive(Debug)]
pub struct InodeWrites {
    state: Mutex<InodeWritesState>,
    changed: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct InodeWritesState {
    next_seq: u64,
    unacked: BTreeSet<u64>,
    /// Highest end offset written while writes were unacked: the size the server will have.
    unacked_end: u64,
}

impl Default for InodeWrites {
    fn default() -> Self {
        InodeWrites {
            state: Mutex::default(),
            changed: watch::channel(()).0,
        }
    }
}

impl InodeWrites {
    fn begin(&self, end: u64) -> u64 {
        let mut s = self.state.lock().unwrap();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.unacked.insert(seq);
        s.unacked_end = s.unacked_end.max(end);
        seq
    }

    fn finish(&self, seq: u64) {
        let mut s = self.state.lock().unwrap();
        s.unacked.remove(&seq);
        if s.unacked.is_empty() {
            s.unacked_end = 0;
        }
        drop(s);
        self.changed.send_replace(());
    }

    /// The size to report while writes are in flight: the server's size does not know them yet.
    pub fn size_floor(&self) -> u64 {
        self.state.lock().unwrap().unacked_end
    }

    /// Waits until every write issued before this call has been acked (or has failed).
    pub async fn settle(&self) {
        let mut rx = self.changed.subscribe();
        let horizon = self.state.lock().unwrap().next_seq;
        loop {
            let done = {
                let s = self.state.lock().unwrap();
                s.unacked.first().is_none_or(|&oldest| oldest >= horizon)
            };
            if done || rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Limits shared by every writer.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimits {
    /// Unacked bytes one open file may hold.
    pub per_file: usize,
    /// Largest SFTP WRITE payload the server takes.
    pub max_write: usize,
}

#[derive(Debug, Default)]
struct WriterState {
    buffered: usize,
    latched: Option<i32>,
}

/// The write side of one open file.
pub struct FileWriter {
    session: Arc<Session>,
    handle: Bytes,
    limits: WriteLimits,
    inode: Arc<InodeWrites>,
    state: Mutex<WriterState>,
    changed: watch::Sender<()>,
    /// Where the server's free space can be asked, to tell ENOSPC from other failures.
    statvfs_path: Bytes,
}

impl FileWriter {
    pub fn new(
        session: Arc<Session>,
        handle: Bytes,
        limits: WriteLimits,
        inode: Arc<InodeWrites>,
        statvfs_path: Bytes,
    ) -> Arc<Self> {
        Arc::new(FileWriter {
            session,
            handle,
            limits,
            inode,
            state: Mutex::default(),
            changed: watch::channel(()).0,
            statvfs_path,
        })
    }

    /// Accepts `data` at `offset` once it fits in the buffer; returns when it is queued, not
    /// when the server has it. A latched failure is returned instead.
    pub async fn write(self: &Arc<Self>, offset: u64, data: Bytes) -> Result<u32, i32> {
        let len = data.len();
        let mut rx = self.changed.subscribe();
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some(errno) = s.latched {
                    return Err(errno);
                }
                // A request larger than the whole buffer goes alone into an empty buffer.
                if s.buffered == 0 || s.buffered + len <= self.limits.per_file {
                    s.buffered += len;
                    break;
                }
            }
            if rx.changed().await.is_err() {
                return Err(libc::EIO);
            }
        }
        let seq = self.inode.begin(offset + len as u64);
        let mut acks = Vec::with_capacity(len.div_ceil(self.limits.max_write));
        let mut pos = 0;
        while pos < len {
            let end = (pos + self.limits.max_write).min(len);
            let chunk = data.slice(pos..end);
            acks.push((
                chunk.len(),
                self.session
                    .write(self.handle.clone(), offset + pos as u64, chunk),
            ));
            pos = end;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for (chunk_len, ack) in acks {
                let result = crate::sftp::client::expect_ok(ack.response().await, "write");
                if let Err(e) = result {
                    let errno = this.failure_errno(&e).await;
                    warn!("write failed: {e}; reporting errno {errno}");
                    let mut s = this.state.lock().unwrap();
                    s.latched.get_or_insert(errno);
                }
                this.state.lock().unwrap().buffered -= chunk_len;
                this.changed.send_replace(());
            }
            this.inode.finish(seq);
        });
        Ok(len as u32)
    }

    /// OpenSSH reports a full disk as a bare FAILURE; the server's free space tells them apart.
    async fn failure_errno(&self, e: &SftpError) -> i32 {
        if e.status() != Some(StatusCode::FAILURE) {
            return e.errno();
        }
        match self.session.statvfs(&self.statvfs_path).await {
            Ok(vfs)
                if vfs.bavail.saturating_mul(vfs.frsize.max(1))
                    < self.limits.max_write as u64 * 2 =>
            {
                libc::ENOSPC
            }
            _ => libc::EIO,
        }
    }

    /// Waits until every accepted write is acked; returns the latched failure, if any.
    pub async fn settle(&self) -> Result<(), i32> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let s = self.state.lock().unwrap();
                if s.buffered == 0 {
                    return s.latched.map_or(Ok(()), Err);
                }
            }
            if rx.changed().await.is_err() {
                return Err(libc::EIO);
            }
        }
    }

    pub fn handle(&self) -> &Bytes {
        &self.handle
    }
}
