//! The inode table: kernel inode numbers <-> (parent, name), with the kernel's lookup counts so
//! that `forget` can free entries. Paths are derived by walking parents, so a rename moves a
//! whole subtree by changing one entry.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

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

struct Node {
    parent: u64,
    name: Bytes,
    lookups: u64,
    /// Symlinks need the non-following lsetstat: setstat would change their target.
    symlink: bool,
    /// False once the name was unlinked or renamed over: the node lives on for open files only.
    linked: bool,
    writes: Arc<InodeWrites>,
    /// Size and mtime when the file was last opened: the kernel's cached pages are kept across
    /// opens only while these stay the same.
    contents_seen: Option<(u64, u32)>,
    /// The attributes last shown to the kernel: a change of one time keeps the other without
    /// asking the server (SFTP v3 sets both at once), and an attribute change carried out in
    /// the background is answered from them.
    shown: Option<Attrs>,
    /// When the inode's status last changed through the mount (SFTP v3 has no ctime).
    ctime: Option<std::time::SystemTime>,
    /// Its other names, hard links made through the mount: (parent, name).
    aliases: Vec<(u64, Bytes)>,
    /// The link count the last listing showed, until a link or unlink through the mount.
    listed_nlink: Option<u32>,
}

pub struct InodeTable {
    root_path: Bytes,
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, Bytes), u64>,
    next_ino: u64,
}

impl InodeTable {
    pub fn new(root_path: Bytes) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: Bytes::new(),
                lookups: 1,
                symlink: false,
                linked: true,
                writes: Arc::default(),
                contents_seen: None,
                shown: None,
                ctime: None,
                aliases: Vec::new(),
                listed_nlink: None,
            },
        );
        InodeTable {
            root_path,
            nodes,
            children: HashMap::new(),
            next_ino: ROOT + 1,
        }
    }

    /// The remote path of `ino`, or `None` if the kernel asked about an inode we forgot.
    pub fn path(&self, ino: u64) -> Option<Vec<u8>> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.nodes.get(&cur)?;
            names.push(&node.name);
            cur = node.parent;
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
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: key.1.clone(),
                lookups: 1,
                symlink,
                linked: true,
                writes: Arc::default(),
                contents_seen: None,
                shown: None,
                ctime: None,
                aliases: Vec::new(),
                listed_nlink: None,
            },
        );
        self.children.insert(key, ino);
        ino
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
            if node.linked {
                self.children.remove(&(node.parent, node.name));
            }
            for alias in node.aliases {
                self.children.remove(&alias);
            }
        }
    }

    /// The path of `ino`, and whether a name still reaches it: an unlinked open file's old
    /// path may name another file by now.
    pub fn path_and_linked(&self, ino: u64) -> Option<(Vec<u8>, bool)> {
        let linked = self.nodes.get(&ino)?.linked;
        Some((self.path(ino)?, linked))
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
            node.ctime = Some(at);
        }
    }

    pub fn ctime(&self, ino: u64) -> Option<std::time::SystemTime> {
        self.nodes.get(&ino)?.ctime
    }

    /// Whether `ino` lost its name through the mount (it lives on for open descriptors).
    pub fn is_unlinked(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| !n.linked)
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

    pub fn swap_contents_seen(&mut self, ino: u64, seen: Option<(u64, u32)>) -> Option<(u64, u32)> {
        let node = self.nodes.get_mut(&ino)?;
        std::mem::replace(&mut node.contents_seen, seen)
    }

    pub fn is_symlink(&self, ino: u64) -> bool {
        self.nodes.get(&ino).is_some_and(|n| n.symlink)
    }

    pub fn writes(&self, ino: u64) -> Option<Arc<InodeWrites>> {
        self.nodes.get(&ino).map(|n| n.writes.clone())
    }

    /// The name is gone on the server; the inode stays for whoever still holds it open, and
    /// under its other names, if it has any.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) {
        let key = (parent, Bytes::copy_from_slice(name));
        if let Some(ino) = self.children.remove(&key)
            && let Some(node) = self.nodes.get_mut(&ino)
        {
            node.listed_nlink = None;
            if (node.parent, &node.name) != (key.0, &key.1) {
                node.aliases.retain(|alias| *alias != key);
            } else if let Some((parent, name)) = node.aliases.pop() {
                node.parent = parent;
                node.name = name;
            } else {
                node.linked = false;
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
            Some(node) if node.linked => 1 + node.aliases.len() as u32,
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
                if (node.parent, &node.name) == (old_key.0, &old_key.1) {
                    node.parent = new_parent;
                    node.name = new_key.1.clone();
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
        assert_ne!(t.remember(ROOT, b"x\xff", false), f);
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
