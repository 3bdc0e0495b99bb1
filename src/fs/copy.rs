//! Copies within the mount done by the server: `copy_file_range(2)` (cp, install, Python's
//! shutil) becomes OpenSSH's `copy-data`, which copies between two handles of one channel, so
//! no byte of the file crosses the link. Where it cannot be used (a server without it, a
//! source served from memory, a file copied onto itself) the kernel is told so and copies
//! through reads and writes, as it does without copy_file_range.

use super::{Core, FsResult, errno};
use crate::sftp::SftpError;
use crate::sftp::proto::{Attrs, StatusCode, open_flags};

/// Bytes one copy-data request copies: the server copies it before it answers anything else
/// on that channel. Two are in flight at most (the next waits on the server while one is
/// copied), so that a request is answered within two steps of the server's disk, far within
/// the request timeout even on a slow one.
const COPY_STEP: u64 = 64 << 20;
const STEPS_IN_FLIGHT: usize = 2;
/// Bytes one copy_file_range copies at most: the kernel's reply counts in 32 bits, and the
/// program asks again for the rest.
const COPY_MAX: u64 = 1 << 30;

impl Core {
    /// Copies `len` bytes of the file open as `fh_in` at `offset_in` into the one open as
    /// `fh_out` at `offset_out`; the bytes copied (fewer where the source ends first).
    /// EOPNOTSUPP and ENOSYS (no copy-data at all: the kernel stops asking) send the kernel to
    /// its own copy through reads and writes.
    pub async fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        if !self.features.copy_data {
            return Err(libc::ENOSYS);
        }
        // A small file opened from memory has no server handle.
        let source = self.file(fh_in).map_err(|_| libc::EOPNOTSUPP)?;
        let target = self.file(fh_out)?;
        let writer = target.writer.clone().ok_or(libc::EBADF)?;
        // The server refuses a file onto itself.
        if source.ino == target.ino {
            return Err(libc::EOPNOTSUPP);
        }
        let len = len.min(COPY_MAX);
        if len == 0 {
            return Ok(0);
        }
        // Writes in flight to either file go first: the copy reads what they wrote, and its
        // bytes land after them. A write failure latched on the target is reported as the
        // next write would report it.
        source.inode_writes.settle().await;
        writer.settle().await?;
        // The source may be opened again by its name; both must still have theirs.
        let Some(source_path) = self.inodes.linked_path(source.ino) else {
            return Err(libc::EOPNOTSUPP);
        };
        if self.inodes.linked_path(target.ino).is_none() {
            return Err(libc::EOPNOTSUPP);
        }
        let to = target.handle.live().await?;
        let from = source.handle.live().await?;
        let session = to.session.clone();
        // copy-data takes two handles of one channel: unless the source is open on the
        // target's, it is opened again there, and must be the file the program has open: both
        // handles show the same size, mtime, mode and owner, or the kernel copies instead.
        let (from_handle, size, reopened) =
            if from.channel == to.channel && from.generation == to.generation {
                let attrs = session.fstat(from.handle.clone()).await.map_err(errno)?;
                (from.handle.clone(), attrs.size, None)
            } else {
                let again = session.open(&source_path, open_flags::READ, Attrs::default());
                let known = from.session.fstat(from.handle.clone());
                let (again, known) = tokio::join!(again, known);
                let again = again.map_err(|_| libc::EOPNOTSUPP)?;
                let now = session.fstat(again.clone()).await;
                let key = |a: &Attrs| {
                    let mtime = a.atime_mtime.map(|t| t.1);
                    (a.size, mtime, a.permissions, a.uid_gid)
                };
                match (known, now) {
                    (Ok(known), Ok(now)) if key(&known) == key(&now) => {
                        (again.clone(), now.size, Some(again))
                    }
                    _ => {
                        session.close_unawaited(again);
                        return Err(libc::EOPNOTSUPP);
                    }
                }
            };
        let close_reopened = || {
            if let Some(again) = reopened.clone() {
                session.close_unawaited(again);
            }
        };
        let Some(size) = size else {
            close_reopened();
            return Err(libc::EOPNOTSUPP);
        };
        let count = len.min(size.saturating_sub(offset_in));
        let mut steps = (0..count).step_by(COPY_STEP as usize).map(|at| {
            let step = (count - at).min(COPY_STEP);
            let (from_at, to_at) = (offset_in + at, offset_out + at);
            session.copy_data(&from_handle, from_at, step, &to.handle, to_at)
        });
        let mut in_flight: std::collections::VecDeque<_> =
            steps.by_ref().take(STEPS_IN_FLIGHT).collect();
        let mut copied = Ok(());
        while let Some(step) = in_flight.pop_front() {
            copied = step.await;
            if copied.is_err() {
                break;
            }
            in_flight.extend(steps.next());
        }
        // Those sent already are answered before anything else on the channel; nothing waits
        // for them.
        drop(in_flight);
        close_reopened();
        if count > 0 {
            // The target changed other than through its writes: what was read or kept of it,
            // and its attributes, are stale.
            target.inode_writes.copied_in(offset_out + count);
            *target.written.lock().unwrap() = None;
            self.changed_attrs(target.ino);
        }
        copied.map_err(|e| match e {
            // Not taken, or a link lost or stalled midway: the kernel copies the range itself,
            // through reads and writes, which go on across a reconnection (copying again what
            // the server had copied, the same bytes).
            SftpError::ConnectionLost | SftpError::Timeout(_) => libc::EOPNOTSUPP,
            e if e.status() == Some(StatusCode::OP_UNSUPPORTED) => libc::EOPNOTSUPP,
            e => errno(e),
        })?;
        Ok(count as u32)
    }
}
