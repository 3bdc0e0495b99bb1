//! What the process's SFTP sessions moved: file bytes the server acknowledged writing, and file
//! bytes it sent in answer to READs, for `sftpmount status`; requests sent, to tell idle from
//! busy. Process-wide: one process serves
//! one mount, and the counts must outlive each connection the mount goes through.

use std::sync::atomic::{AtomicU64, Ordering};

static WRITTEN: AtomicU64 = AtomicU64::new(0);
static READ: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Requests sent so far: whether the mount was busy lately.
pub fn requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

pub(super) fn count_request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// Bytes of WRITEs the server answered OK.
pub fn written() -> u64 {
    WRITTEN.load(Ordering::Relaxed)
}

/// Bytes of DATA the server sent.
pub fn read() -> u64 {
    READ.load(Ordering::Relaxed)
}

pub(super) fn count_written(bytes: usize) {
    WRITTEN.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub(super) fn count_read(bytes: usize) {
    READ.fetch_add(bytes as u64, Ordering::Relaxed);
}
