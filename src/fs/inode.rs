//! The inode table: kernel inode numbers <-> (parent, name), with the kernel's lookup counts so
//! that `forget` can free entries. Paths are derived by walking parents, so a rename moves a
//! whole subtree by changing one entry.
//!
//! A path is not a file: once a name is removed or replaced through the mount, its inode has no
//! [`Place`] and so no path at all (nothing can reach the old file by a name that may now be
//! another's), unless it was still open: then the mount moved it to a hidden name of its own
//! first (as libfuse does for sshfs), which is its path until its last close.
//!
//! An inode's number is a hash of its path within the mount, so that it is the same in every
//! mount of the same directory: git's index, and the caches of restic, rsync and make, compare
//! `st_ino`, and numbers handed out in order made every file look changed after a remount. A
//! number a live inode already has (a file renamed keeps its number, so a new file at its old
//! path finds it taken; or, once in about 2^32 files, two paths hashing alike) goes on to the
//! next free one, and that file's number differs between mounts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::FsResult;
use super::write::InodeWrites;
use crate::sftp::proto::Attrs;

pub const ROOT: u64 = 1;

/// `dir/name`: the one way remote paths are built.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    push_name(&mut path, name);
    path
}

fn push_name(path: &mut Vec<u8>, name: &[u8]) {
    if path.last() != Some(&b'/') {
        path.push(b'/');
    }
    path.extend_from_slice(name);
}

/// The number the path `relative` (within the mount, without a leading `/`) is given when it
/// is free: FNV-1a over the bytes, then a 64-bit finalizer (splitmix64's) so that paths
/// differing in their last byte differ in every bit. Fixed here for good: a change renumbers
/// every file of every mount.
fn path_number(relative: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in relative {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which node of a number: numbers come back (a path's, after the kernel forgot its inode),
/// serials do not, so a listing can tell the file it saw from a later one with its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub ino: u64,
    serial: u64,
}

/// Where a node is on the server.
#[derive(Debug, Clone)]
struct Place {
    parent: u64,
    name: Bytes,
    /// A hidden name the mount gave an open file whose name was removed or replaced: its path
    /// for the mount's own requests, never a name the kernel looks up or the cache keys.
    hidden: bool,
}

/// A file's size and mtime at an open, and whether that mtime was "racy" then (git's word for
/// its index): SFTP v3 times are whole seconds, so a file modified within the second its
/// contents were read can change again without its size or mtime changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentsSeen {
    pub size: u64,
    pub mtime: u32,
    pub racy: bool,
}

/// Whether contents read at `now` (seconds) under `mtime` may change again unseen: the mtime is
/// no older than the second before, one second of margin for the server's clock being ahead.
pub fn racy(mtime: u32, now: u64) -> bool {
    u64::from(mtime) + 1 >= now
}

/// The local clock in whole seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ContentsSeen {
    /// `size` and `mtime` seen at `now` (seconds).
    pub fn at(size: u64, mtime: u32, now: u64) -> Self {
        ContentsSeen {
            size,
            mtime,
            racy: racy(mtime, now),
        }
    }

    /// Whether pages read under `self` are still the file's contents when it is seen as `now`:
    /// the same size and mtime, and that mtime was already old when they were read.
    pub fn still(&self, now: &ContentsSeen) -> bool {
        !self.racy && (self.size, self.mtime) == (now.size, now.mtime)
    }
}

struct Node {
    /// `None` once no name reaches it any more: it lives on for open files only, through their
    /// handles.
    place: Option<Place>,
    /// See [`Identity`].
    serial: u64,
    lookups: u64,
    /// Symlinks need the non-following lsetstat: setstat would change their target.
    symlink: bool,
    /// What only opened or changed files have: most inodes are only ever looked at, and a
    /// listing's hundred thousand would each carry room for it for nothing.
    used: Option<Box<Used>>,
    /// The attributes last shown to the kernel: a change of one time keeps the other without
    /// asking the server (SFTP v3 sets both at once), and an attribute change carried out in
    /// the background is answered from them.
    shown: Option<Attrs>,
    /// Its other names, hard links made through the mount: (parent, name).
    aliases: Vec<(u64, Bytes)>,
    /// The link count the last listing showed, until a link or unlink through the mount.
    listed_nlink: Option<u32>,
}

/// What a node has once it was opened or changed through the mount.
#[derive(Default)]
struct Used {
    /// Made at the first open or truncate.
    writes: Option<Arc<InodeWrites>>,
    /// What the file was when it was last opened: the kernel's cached pages are kept across
    /// opens only while it stays the same.
    contents_seen: Option<ContentsSeen>,
    /// When the inode's status last changed through the mount (SFTP v3 has no ctime).
    ctime: Option<std::time::SystemTime>,
}

impl Node {
    fn used(&mut self) -> &mut Used {
        self.used.get_or_insert_with(Box::default)
    }

    /// A node the kernel has one reference to.
    fn new(place: Option<Place>, serial: u64, symlink: bool) -> Box<Node> {
        Box::new(Node {
            place,
            serial,
            lookups: 1,
            symlink,
            used: None,
            shown: None,
            aliases: Vec::new(),
            listed_nlink: None,
        })
    }
}

/// The core's inodes part: the table (each inode's names, what the kernel was shown of it, its
/// write state) under its one lock, the lock that names change under, and the hidden names
/// still to remove.
pub struct Inodes {
    table: Mutex<InodeTable>,
    /// Held shared while a path is used to reach an open file again (an open, a reopen, a write
    /// lane), and exclusively while a name is removed or replaced: such a path names the same
    /// file until the guard goes.
    names: tokio::sync::RwLock<()>,
    /// Hidden names whose file's last descriptor closed while the server could not be told:
    /// removed after the next reconnection.
    hidden_to_remove: Mutex<Vec<Vec<u8>>>,
    /// The longest name the server's filesystem takes.
    name_max: usize,
}

impl Inodes {
    pub fn new(root_path: Bytes, name_max: usize) -> Self {
        Inodes {
            table: Mutex::new(InodeTable::new(root_path)),
            names: tokio::sync::RwLock::new(()),
            hidden_to_remove: Mutex::default(),
            name_max,
        }
    }

    /// The table, for what must be read or changed under one lock.
    pub fn table(&self) -> MutexGuard<'_, InodeTable> {
        self.table.lock().unwrap()
    }

    /// Paths keep naming the files they name while this is held.
    pub async fn names_kept(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.names.read().await
    }

    /// For a removal or a replacement of a name: no path is being used to reach a file meanwhile.
    pub async fn names_changing(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.names.write().await
    }

    pub fn path(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.table().path(ino).ok_or(libc::ESTALE)
    }

    pub fn child_path(&self, parent: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if name.contains(&b'/') {
            return Err(libc::EINVAL);
        }
        // OpenSSH answers a name over the limit with BAD_MESSAGE (EINVAL): every operation,
        // lookup included, says what a local filesystem says.
        if name.len() > self.name_max {
            return Err(libc::ENAMETOOLONG);
        }
        self.table().child_path(parent, name).ok_or(libc::ESTALE)
    }

    /// The path of `ino` while a name still reaches it (it was not unlinked): the cache's key.
    pub fn linked_path(&self, ino: u64) -> Option<Vec<u8>> {
        self.table().linked_path(ino)
    }

    /// The path of `ino`, and whether it may be cached under it (see [`Inodes::linked_path`]).
    pub fn path_and_linked(&self, ino: u64) -> FsResult<(Vec<u8>, bool)> {
        self.table().path_and_linked(ino).ok_or(libc::ESTALE)
    }

    /// `ino`'s write state if it has one: none means nothing of it is in flight.
    pub fn writes(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.table().writes(ino)
    }

    /// `ino`'s write state, made if it has none (an open, a truncate); `None`: a forgotten
    /// inode.
    pub fn writes_or_new(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.table().writes_or_new(ino)
    }

    /// The hidden name of `ino`, which is gone from the table from now on (its last descriptor
    /// closed).
    pub fn take_hidden(&self, ino: u64) -> Option<Vec<u8>> {
        let mut table = self.table();
        let hidden = table.hidden_path(ino)?;
        table.gone(ino);
        Some(hidden)
    }

    /// A hidden name the server could not be told to remove: tried again after the next
    /// reconnection.
    pub fn remove_later(&self, hidden: Vec<u8>) {
        self.hidden_to_remove.lock().unwrap().push(hidden);
    }

    /// The hidden names left to remove (see [`Inodes::remove_later`]).
    pub fn take_hidden_to_remove(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.hidden_to_remove.lock().unwrap())
    }
}

pub struct InodeTable {
    root_path: Bytes,
    /// Boxed: the map of a directory's hundred thousand entries then grows by moving pointers,
    /// not nodes (a rehash holds the old table and the new at once).
    nodes: HashMap<u64, Box<Node>>,
    children: HashMap<(u64, Bytes), u64>,
    /// The nodes with a hidden place: asked of at every rmdir, so not found by a scan.
    hidden: std::collections::HashSet<u64>,
    /// Numbers of forgotten inodes that were opened or changed: never given again in this
    /// mount. The kernel may forget an inode while its last release is still on its way, and
    /// what the core keeps of open files is keyed by number: a new file with the number would
    /// be taken for the old one.
    retired: std::collections::HashSet<u64>,
    next_serial: u64,
}

impl InodeTable {
    pub fn new(root_path: Bytes) -> Self {
        let mut nodes = HashMap::new();
        let place = Place {
            parent: ROOT,
            name: Bytes::new(),
            hidden: false,
        };
        nodes.insert(ROOT, Node::new(Some(place), 0, false));
        InodeTable {
            root_path,
            nodes,
            children: HashMap::new(),
            hidden: Default::default(),
            retired: Default::default(),
            next_serial: 1,
        }
    }

    /// The number for a new inode at `parent/name`: its path's (see [`path_number`]), or the
    /// next free one after it.
    pub fn number_for(&self, parent: u64, name: &[u8]) -> u64 {
        let relative = self.path(parent).map(|dir| {
            let within = dir.strip_prefix(&self.root_path[..]).unwrap_or(&dir);
            let mut relative = within.strip_prefix(b"/").unwrap_or(within).to_vec();
            if !relative.is_empty() {
                relative.push(b'/');
            }
            relative.extend_from_slice(name);
            relative
        });
        self.free_number(path_number(&relative.unwrap_or_default()))
    }

    /// `wanted` if no live inode has it (nor a retired one), else the next free number after
    /// it. ROOT and 0 (no inode to FUSE) are never given, nor u64::MAX (-1 as an `ino_t`).
    fn free_number(&self, wanted: u64) -> u64 {
        let mut ino = wanted;
        while ino <= ROOT
            || ino == u64::MAX
            || self.nodes.contains_key(&ino)
            || self.retired.contains(&ino)
        {
            ino = mix(ino.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        ino
    }

    fn new_serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// The identity of the inode `parent/name` names now, if the mount knows one.
    pub fn child_identity(&self, parent: u64, name: &[u8]) -> Option<Identity> {
        let ino = self.child(parent, name)?;
        let serial = self.nodes.get(&ino)?.serial;
        Some(Identity { ino, serial })
    }

    /// The remote path of `ino` (its hidden name, if it has one), or `None` when no name
    /// reaches it any more or the kernel asked about an inode we forgot.
    pub fn path(&self, ino: u64) -> Option<Vec<u8>> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let place = self.nodes.get(&cur)?.place.as_ref()?;
            names.push(&place.name);
            cur = place.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        let mut path = self.root_path.to_vec();
        for name in names.iter().rev() {
            push_name(&mut path, name);
        }
        Some(path)
    }

    pub fn child_path(&self, parent: u64, name: &[u8]) -> Option<Vec<u8>> {
        self.path(parent).map(|dir| join(&dir, name))
    }

    /// Records one more kernel reference to `parent/name`, creating the inode if needed.
    pub fn remember(&mut self, parent: u64, name: &[u8], symlink: bool) -> u64 {
        let key = (parent, Bytes::copy_from_slice(name));
        if let Some(&ino) = self.children.get(&key)
            && let Some(node) = self.nodes.get_mut(&ino)
        {
            node.lookups += 1;
            node.symlink = symlink;
            return ino;
        }
        let ino = self.number_for(parent, name);
        let place = Place {
            parent,
            name: key.1.clone(),
            hidden: false,
        };
        let serial = self.new_serial();
        self.nodes
            .insert(ino, Node::new(Some(place), serial, symlink));
        self.children.insert(key, ino);
        ino
    }

    /// The kernel is given the file `seen` again, not through a name: a file a listing showed
    /// before its name went. Its number, if no other inode took it since (the kernel forgot it:
    /// it comes back as the nameless file it last was), else a free one.
    pub fn remember_nameless(&mut self, seen: Identity, symlink: bool) -> u64 {
        match self.nodes.get_mut(&seen.ino) {
            Some(node) if node.serial == seen.serial => {
                node.lookups += 1;
                seen.ino
            }
            Some(_) => {
                let ino = self.free_number(seen.ino);
                let serial = self.new_serial();
                self.nodes.insert(ino, Node::new(None, serial, symlink));
                ino
            }
            // Forgotten: the same file again, under its own number (retired or not: nothing
            // can be taken for it that is not it).
            None => {
                self.nodes
                    .insert(seen.ino, Node::new(None, seen.serial, symlink));
                seen.ino
            }
        }
    }

    pub fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            let node = self.nodes.remove(&ino).expect("present");
            self.hidden.remove(&ino);
            if node.used.is_some() {
                self.retired.insert(ino);
            }
            if let Some(place) = node.place.filter(|p| !p.hidden) {
                self.children.remove(&(place.parent, place.name));
            }
            for alias in node.aliases {
                self.children.remove(&alias);
            }
        }
    }

    /// The path of `ino`, and whether it is a name of the directory tree (not a hidden one):
    /// only those are cached and read ahead.
    pub fn path_and_linked(&self, ino: u64) -> Option<(Vec<u8>, bool)> {
        let hidden = self.nodes.get(&ino)?.place.as_ref()?.hidden;
        Some((self.path(ino)?, !hidden))
    }

    /// The hidden path of `ino`, if the mount moved it to one (see the module's notes).
    pub fn hidden_path(&self, ino: u64) -> Option<Vec<u8>> {
        match self.path_and_linked(ino)? {
            (path, false) => Some(path),
            _ => None,
        }
    }

    /// Whether a hidden file is in the directory `dir`.
    pub fn has_hidden_in(&self, dir: u64) -> bool {
        self.hidden.iter().any(|ino| {
            self.nodes
                .get(ino)
                .and_then(|n| n.place.as_ref())
                .is_some_and(|p| p.parent == dir)
        })
    }

    /// The paths of every hidden file.
    pub fn hidden(&self) -> Vec<Vec<u8>> {
        self.hidden
            .iter()
            .filter_map(|&ino| self.hidden_path(ino))
            .collect()
    }

    /// `parent/name` is no longer a name of `ino`'s: the mount moved it to `hidden` in the same
    /// directory (it is open). Its other names, if it has any, stay.
    pub fn hide(&mut self, parent: u64, name: &[u8], hidden: &[u8]) {
        let Some(ino) = self.child(parent, name) else {
            return;
        };
        self.unlink(parent, name);
        if let Some(node) = self.nodes.get_mut(&ino)
            && node.place.is_none()
        {
            node.place = Some(Place {
                parent,
                name: Bytes::copy_from_slice(hidden),
                hidden: true,
            });
            self.hidden.insert(ino);
        }
    }

    /// The hidden name of `ino` was removed (its last descriptor closed): no name reaches it.
    pub fn gone(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino)
            && node.place.as_ref().is_some_and(|p| p.hidden)
        {
            node.place = None;
            self.hidden.remove(&ino);
        }
    }

    /// The path of `ino`, unless it was unlinked.
    pub fn linked_path(&self, ino: u64) -> Option<Vec<u8>> {
        self.path_and_linked(ino)
            .and_then(|(path, linked)| linked.then_some(path))
    }

    /// Link counts from listings are out of date (a name of a file linked elsewhere went).
    pub fn forget_listed_nlinks(&mut self) {
        for node in self.nodes.values_mut() {
            node.listed_nlink = None;
        }
    }

    pub fn listed_nlink(&self, ino: u64) -> Option<u32> {
        self.nodes.get(&ino)?.listed_nlink
    }

    pub fn set_ctime(&mut self, ino: u64, at: std::time::SystemTime) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.used().ctime = Some(at);
        }
    }

    pub fn ctime(&self, ino: u64) -> Option<std::time::SystemTime> {
        self.nodes.get(&ino)?.used.as_ref()?.ctime
    }

    /// Whether `ino` lost its name through the mount (it lives on for open descriptors).
    pub fn is_unlinked(&self, ino: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|n| n.place.as_ref().is_none_or(|p| p.hidden))
    }

    /// The inode of `parent/name`, if the kernel holds one.
    pub fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.children
            .get(&(parent, Bytes::copy_from_slice(name)))
            .copied()
    }

    /// Records the size and mtime seen at an open; returns those of the open before.
    /// Records what the kernel is told of `ino`; a listing's link count is kept until a link
    /// or unlink through the mount (LSTAT's attributes carry none).
    pub fn show(&mut self, ino: u64, attrs: &Attrs) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.shown = Some(attrs.clone());
            if attrs.nlink.is_some() {
                node.listed_nlink = attrs.nlink;
            }
        }
    }

    pub fn shown(&self, ino: u64) -> Option<Attrs> {
        self.nodes.get(&ino)?.shown.clone()
    }

    pub fn swap_contents_seen(
        &mut self,
        ino: u64,
        seen: Option<ContentsSeen>,
    ) -> Option<ContentsSeen> {
        let node = self.nodes.get_mut(&ino)?;
        std::mem::replace(&mut node.used().contents_seen, seen)
    }

    pub fn is_symlink(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.symlink)
    }

    /// The write state of `ino`, if it was ever opened or truncated (else it has none to
    /// wait for).
    pub fn writes(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.nodes.get(&ino)?.used.as_ref()?.writes.clone()
    }

    /// The write state of `ino`, made now if it has none; `None` for an inode we forgot.
    pub fn writes_or_new(&mut self, ino: u64) -> Option<Arc<InodeWrites>> {
        let node = self.nodes.get_mut(&ino)?;
        Some(node.used().writes.get_or_insert_with(Arc::default).clone())
    }

    /// The name is gone on the server; the inode stays for whoever still holds it open, and
    /// under its other names, if it has any.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) {
        let key = (parent, Bytes::copy_from_slice(name));
        if let Some(ino) = self.children.remove(&key)
            && let Some(node) = self.nodes.get_mut(&ino)
        {
            node.listed_nlink = None;
            let primary = node
                .place
                .as_ref()
                .is_some_and(|p| (p.parent, &p.name) == (key.0, &key.1));
            if !primary {
                node.aliases.retain(|alias| *alias != key);
            } else if let Some((parent, name)) = node.aliases.pop() {
                node.place = Some(Place {
                    parent,
                    name,
                    hidden: false,
                });
            } else {
                node.place = None;
            }
        }
    }

    /// `new_parent/new_name` is a new name of `ino` (a hard link made through the mount); the
    /// kernel counts the link's reply as a lookup.
    pub fn link(&mut self, ino: u64, new_parent: u64, new_name: &[u8]) {
        let key = (new_parent, Bytes::copy_from_slice(new_name));
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
            node.listed_nlink = None;
            node.aliases.push(key.clone());
            self.children.insert(key, ino);
        }
    }

    /// The names the mount knows `ino` by: its link count as shown.
    pub fn names(&self, ino: u64) -> u32 {
        match self.nodes.get(&ino) {
            Some(node) if node.place.as_ref().is_some_and(|p| !p.hidden) => {
                1 + node.aliases.len() as u32
            }
            Some(_) => 0,
            None => 1,
        }
    }

    /// The paths of `ino`'s other names.
    pub fn alias_paths(&self, ino: u64) -> Vec<Vec<u8>> {
        let Some(node) = self.nodes.get(&ino) else {
            return Vec::new();
        };
        node.aliases
            .iter()
            .filter_map(|(parent, name)| self.child_path(*parent, name))
            .collect()
    }

    pub fn rename(&mut self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8]) {
        let old_key = (parent, Bytes::copy_from_slice(name));
        let new_key = (new_parent, Bytes::copy_from_slice(new_name));
        // rename(2) of one name of a file onto another name of it does nothing.
        if self.children.contains_key(&old_key)
            && self.children.get(&old_key) == self.children.get(&new_key)
        {
            return;
        }
        self.unlink(new_parent, new_name);
        if let Some(ino) = self.children.remove(&old_key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                let primary = node
                    .place
                    .as_mut()
                    .filter(|p| !p.hidden && (p.parent, &p.name) == (old_key.0, &old_key.1));
                if let Some(place) = primary {
                    place.parent = new_parent;
                    place.name = new_key.1.clone();
                } else if let Some(alias) = node.aliases.iter_mut().find(|a| **a == old_key) {
                    *alias = new_key.clone();
                }
            }
            self.children.insert(new_key, ino);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_of_ancestors() {
        let mut t = InodeTable::new(Bytes::from_static(b"/srv"));
        let dir = t.remember(ROOT, b"a", false);
        let file = t.remember(dir, b"f", false);
        assert_eq!(t.path(file).unwrap(), b"/srv/a/f");
        t.rename(ROOT, b"a", ROOT, b"b");
        assert_eq!(t.path(file).unwrap(), b"/srv/b/f");
        assert_eq!(t.remember(ROOT, b"b", false), dir);
    }

    #[test]
    fn root_slash_and_forget() {
        let mut t = InodeTable::new(Bytes::from_static(b"/"));
        let f = t.remember(ROOT, b"x\xff", false);
        assert_eq!(t.path(f).unwrap(), b"/x\xff");
        assert_eq!(t.remember(ROOT, b"x\xff", false), f);
        t.forget(f, 2);
        assert!(t.path(f).is_none());
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.remember(ROOT, b"x\xff", false),
            f,
            "a path's number comes back"
        );
    }

    #[test]
    fn numbers_follow_paths_within_the_mount_and_a_taken_one_is_not_given_twice() {
        let mut a = InodeTable::new(Bytes::from_static(b"/srv/one"));
        let mut b = InodeTable::new(Bytes::from_static(b"/home/u/one/"));
        let (da, db) = (a.remember(ROOT, b"d", false), b.remember(ROOT, b"d", false));
        assert_eq!(da, db, "same path within the mount, same number");
        let (fa, fb) = (a.remember(da, b"f", false), b.remember(db, b"f", false));
        assert_eq!(fa, fb);
        assert_ne!(fa, da);
        assert_eq!(fa, path_number(b"d/f"), "fixed for good");
        // Renamed, a file keeps its number; a new file at its old path gets another.
        a.rename(da, b"f", da, b"g");
        assert_eq!(a.child(da, b"g"), Some(fa));
        let new = a.remember(da, b"f", false);
        assert_ne!(new, fa);
        assert!(new > ROOT && new != u64::MAX);
    }

    #[test]
    fn the_number_of_a_forgotten_file_that_was_opened_is_not_given_again() {
        let mut t = InodeTable::new(Bytes::from_static(b"/r"));
        let looked_at = t.remember(ROOT, b"a", false);
        let opened = t.remember(ROOT, b"b", false);
        t.writes_or_new(opened);
        t.forget(looked_at, 1);
        t.forget(opened, 1);
        assert_eq!(t.remember(ROOT, b"a", false), looked_at);
        // Its release may still be on its way: a new file must not be taken for it.
        assert_ne!(t.remember(ROOT, b"b", false), opened);
        // A listing taken before it went still shows it as itself.
        let c = t.remember(ROOT, b"c", false);
        let seen = t.child_identity(ROOT, b"c").unwrap();
        t.writes_or_new(c);
        t.unlink(ROOT, b"c");
        t.forget(c, 1);
        assert_eq!(t.remember_nameless(seen, false), c);
    }

    #[test]
    fn a_listed_file_whose_number_another_took_is_not_given_as_that_one() {
        let mut t = InodeTable::new(Bytes::from_static(b"/r"));
        let f = t.remember(ROOT, b"f", false);
        let seen = t.child_identity(ROOT, b"f").unwrap();
        assert_eq!(seen.ino, f);
        t.unlink(ROOT, b"f");
        // Still held: the same node.
        assert_eq!(t.remember_nameless(seen, false), f);
        t.forget(f, 2);
        // Forgotten, then a new file at the path takes the number: the listed one is another.
        let again = t.remember(ROOT, b"f", false);
        assert_eq!(again, f);
        let other = t.remember_nameless(seen, false);
        assert_ne!(other, f);
        assert_eq!(t.child(ROOT, b"f"), Some(f));
    }

    #[test]
    fn hard_links_are_names_of_one_inode() {
        let mut t = InodeTable::new(Bytes::from_static(b"/r"));
        let a = t.remember(ROOT, b"a", false);
        t.link(a, ROOT, b"b");
        t.link(a, ROOT, b"c");
        assert_eq!(t.child(ROOT, b"b"), Some(a));
        assert_eq!(t.names(a), 3);
        t.unlink(ROOT, b"a");
        assert_eq!(t.names(a), 2);
        assert!(!t.is_unlinked(a));
        assert_eq!(t.path(a).unwrap(), b"/r/c", "another name took over");
        t.rename(ROOT, b"b", ROOT, b"d");
        assert_eq!(t.alias_paths(a), vec![b"/r/d".to_vec()]);
        t.unlink(ROOT, b"c");
        t.unlink(ROOT, b"d");
        assert!(t.is_unlinked(a));
        assert_eq!(t.names(a), 0);
        t.forget(a, 3);
        assert!(t.path(a).is_none());
    }

    #[test]
    fn a_removed_name_leaves_no_path_and_a_hidden_one_only_its_own() {
        let mut t = InodeTable::new(Bytes::from_static(b"/r"));
        let dir = t.remember(ROOT, b"d", false);
        let gone = t.remember(dir, b"gone", false);
        let open = t.remember(dir, b"open", false);
        t.unlink(dir, b"gone");
        assert_eq!(t.path(gone), None, "no path once its name is removed");
        t.hide(dir, b"open", b".hidden");
        assert_eq!(t.path(open).unwrap(), b"/r/d/.hidden");
        assert_eq!(t.linked_path(open), None, "never a cache key");
        assert_eq!(t.child(dir, b"open"), None);
        assert_eq!((t.names(open), t.is_unlinked(open)), (0, true));
        // A directory renamed takes the hidden file along.
        t.rename(ROOT, b"d", ROOT, b"e");
        assert_eq!(t.hidden(), vec![b"/r/e/.hidden".to_vec()]);
        t.gone(open);
        assert_eq!(t.path(open), None);
        assert!(t.hidden().is_empty());
    }

    #[test]
    fn pages_read_while_the_mtime_was_racy_are_not_kept() {
        let old = ContentsSeen::at(10, 1000, 1005);
        assert!(!old.racy);
        assert!(old.still(&ContentsSeen::at(10, 1000, 1300)));
        assert!(!old.still(&ContentsSeen::at(11, 1000, 1300)), "size");
        assert!(!old.still(&ContentsSeen::at(10, 1001, 1300)), "mtime");
        // Read within the second of its mtime (or the next): it may have changed unseen.
        for now in [1000, 1001] {
            let racy = ContentsSeen::at(10, 1000, now);
            assert!(racy.racy);
            assert!(!racy.still(&ContentsSeen::at(10, 1000, 1300)));
        }
    }

    #[test]
    fn rename_over_detaches_the_old_target() {
        let mut t = InodeTable::new(Bytes::from_static(b"/r"));
        let a = t.remember(ROOT, b"a", false);
        let b = t.remember(ROOT, b"b", false);
        t.rename(ROOT, b"a", ROOT, b"b");
        assert_eq!(t.remember(ROOT, b"b", false), a);
        t.forget(b, 1);
        assert_eq!(t.path(a).unwrap(), b"/r/b");
    }
}
