//! The descriptor table: the files open through the mount with a server handle, by the number
//! the kernel knows each by, and those numbers themselves (directories and files served from
//! memory draw theirs here too, so that no two descriptors share one).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::open_file::OpenFile;

pub(super) struct OpenFiles {
    table: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
}

impl Default for OpenFiles {
    fn default() -> Self {
        OpenFiles {
            table: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl OpenFiles {
    /// A descriptor number no other descriptor has.
    pub(super) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn insert(&self, fh: u64, file: Arc<OpenFile>) {
        self.table.lock().unwrap().insert(fh, file);
    }

    pub(super) fn get(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.table.lock().unwrap().get(&fh).cloned()
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.table.lock().unwrap().remove(&fh)
    }

    /// Every open file, as of now.
    pub(super) fn all(&self) -> Vec<Arc<OpenFile>> {
        self.table.lock().unwrap().values().cloned().collect()
    }

    /// The open files of `ino`.
    pub(super) fn of_inode(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        let table = self.table.lock().unwrap();
        table.values().filter(|f| f.ino == ino).cloned().collect()
    }

    /// Whether a file of `ino` is open.
    pub(super) fn has_inode(&self, ino: u64) -> bool {
        self.table.lock().unwrap().values().any(|f| f.ino == ino)
    }

    /// A file of `ino` open for writing and not closed since its last write (its handle may be
    /// closing), if there is one.
    pub(super) fn writing(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let table = self.table.lock().unwrap();
        table
            .values()
            .find(|f| f.ino == ino && f.writer.is_some() && !f.flushed.load(Ordering::Acquire))
            .cloned()
    }

    /// Whether a descriptor of `ino` other than `fh` may write to it.
    pub(super) fn other_writers(&self, ino: u64, fh: u64) -> bool {
        let table = self.table.lock().unwrap();
        table
            .iter()
            .any(|(&other, f)| other != fh && f.ino == ino && f.writer.is_some())
    }
}
