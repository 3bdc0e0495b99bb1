//! Names: lookup, create of directories and symlinks, unlink, rmdir, rename (with the
//! replacement a server without posix-rename cannot do in one request), hard links. Names change
//! under the namespace lock, so that a file reopened by its path is never another file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{error, warn};

use super::cache::{DirAfter, Known, Ticket};
use super::inode::join;
use super::{Core, Entry, Errno, FsResult, errno, is_dir};
use crate::sftp::client::Reply;
use crate::sftp::proto::Attrs;
use crate::sftp::{Session, SftpError, StatusCode};

/// Attributes of a new file or directory, as the kernel asked for them.
#[derive(Debug, Clone, Copy)]
pub struct CreateMode {
    pub mode: u32,
    pub umask: u32,
    /// The creating process's uid and gid (local ids).
    pub owner: (u32, u32),
}

impl CreateMode {
    /// The permission bits asked for.
    fn permissions(&self) -> u32 {
        self.mode & !self.umask & 0o7777
    }
}

/// What a creation by path makes: sent, sent again after a lost connection, and recognized
/// as made by the first sending (see [`Core::change_once`]).
enum Making<'a> {
    Dir(Attrs),
    Symlink { target: &'a [u8] },
    HardLink { existing: &'a [u8] },
}

impl Making<'_> {
    fn send(&self, session: &Session, path: &[u8]) -> Reply<()> {
        match self {
            Making::Dir(attrs) => session.mkdir(path, attrs.clone()),
            Making::Symlink { target } => session.symlink(path, target),
            Making::HardLink { existing } => session.hardlink(existing, path),
        }
    }

    /// Whether `path` is what the first sending made, the second one having failed with `e`
    /// (OpenSSH's bare FAILURE for a name that exists).
    async fn made_before(&self, session: &Session, path: &[u8], e: &SftpError) -> bool {
        if e.status() != Some(StatusCode::FAILURE) {
            return false;
        }
        match self {
            Making::Dir(_) => session.lstat(path).await.is_ok_and(|a| is_dir(&a)),
            Making::Symlink { target } => session
                .readlink(path)
                .await
                .is_ok_and(|t| t.as_ref() == *target),
            Making::HardLink { existing } => {
                let (made, first) = tokio::join!(session.lstat(path), session.lstat(existing));
                matches!((made, first), (Ok(m), Ok(f)) if m == f)
            }
        }
    }
}

/// Why a rename failed: the server's status (refined by the caller), or an errno found out.
enum RenameError {
    Sftp(SftpError),
    Errno(Errno),
}

impl Core {
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Entry> {
        let path = self.inodes.child_path(parent, name)?;
        self.entry(parent, name, &path).await
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.table().forget(ino, count);
    }

    /// Inodes the mount keeps (the root and those the kernel holds references to).
    pub fn known_inodes(&self) -> usize {
        self.inodes.table().len()
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let (path, linked) = self.inodes.path_and_linked(ino)?;
        if linked && let Some(target) = self.cache.link(&path) {
            return Ok(target);
        }
        let ticket = self.cache.ticket();
        let mut target = self.meta().await?.readlink(&path).await.map_err(errno)?;
        let mut transformed = false;
        if self.config.symlinks.transform
            && let Some(relative) = relative_target(&self.root, &path, &target)
        {
            target = relative;
            transformed = true;
        }
        // A target transform_symlinks made stays inside the mount by construction; any other
        // is judged by its text alone, as sshfs does: the server controls every component.
        if self.config.symlinks.contain && !transformed && !contained(&target) {
            return Err(libc::EPERM);
        }
        if linked {
            self.cache.put_link(ticket, path, target.clone());
        }
        Ok(target)
    }

    pub async fn mkdir(&self, parent: u64, name: &[u8], mode: CreateMode) -> FsResult<Entry> {
        let path = self.inodes.child_path(parent, name)?;
        let attrs = Attrs {
            permissions: Some(mode.mode & !mode.umask & 0o7777),
            ..Default::default()
        };
        let session = self.meta().await?;
        let ticket = self.cache.ticket();
        let attrs = self
            .made(parent, &path, &session, ticket, Making::Dir(attrs))
            .await?;
        let attrs = self
            .as_created(&session, parent, &path, attrs, &mode, false)
            .await;
        Ok(self.remember_entry(parent, name, &attrs))
    }

    /// A creation by path (mkdir, symlink, link) on `session` (`ticket`: taken before): right
    /// behind it, on a server that runs a channel in order, the new name's attributes (or, if
    /// it failed, whether the name exists) and its directory's, without a round trip of their
    /// own; the directory's cached listing gains the name. Returns the new name's attributes.
    async fn made(
        &self,
        parent: u64,
        path: &[u8],
        session: &Session,
        ticket: Ticket,
        making: Making<'_>,
    ) -> FsResult<Attrs> {
        let dir = self.inodes.path(parent)?;
        let made = making.send(session, path);
        let mut after = self.features.in_order.then(|| session.lstat(path));
        let parent_after = self.features.in_order.then(|| session.lstat(&dir));
        let made = made.await;
        let lost = matches!(made, Err(SftpError::ConnectionLost));
        let making = &making;
        let made = self
            .change_once(
                made,
                |again| making.send(&again, path),
                |again, e| async move { making.made_before(&again, path, &e).await },
            )
            .await;
        if lost {
            after = None;
        }
        if let Err(e) = made {
            self.changed_path(path);
            return Err(self.refine_exists(e, path, after).await);
        }
        let attrs = match after {
            Some(after) => after.await,
            None => self.meta().await?.lstat(path).await,
        };
        match attrs {
            Ok(attrs) => {
                let dir_after = dir_after(ticket, parent_after).await;
                self.cache.created(path, attrs.clone(), dir_after);
                Ok(attrs)
            }
            Err(e) => {
                self.changed_path(path);
                Err(errno(e))
            }
        }
    }

    /// A new file, directory or symlink as a local filesystem would have made it, where the
    /// server did otherwise: owned by its creator (when the login may give files away and
    /// others use the mount: `allow_other` with a root login), in the parent's group when the
    /// parent is setgid; then with the mode asked (the server's umask strips bits, and a chown
    /// clears setuid and setgid, so the mode comes last). A round trip only for what differs;
    /// a change the server refuses leaves what it made.
    pub(super) async fn as_created(
        &self,
        session: &Session,
        parent: u64,
        path: &[u8],
        mut attrs: Attrs,
        mode: &CreateMode,
        symlink: bool,
    ) -> Attrs {
        let mut changed_here = false;
        if self.config.owner_from_caller && mode.owner.0 != 0 {
            let (uid, mut gid) = self.config.ids.remote(mode.owner.0, mode.owner.1);
            if let Ok(dir) = self.inodes.path(parent)
                && let Ok(parent_attrs) = self.stat_cached(Some(parent), &dir).await
                && parent_attrs.permissions.unwrap_or(0) & libc::S_ISGID != 0
                && let Some((_, dir_gid)) = parent_attrs.uid_gid
            {
                gid = dir_gid;
            }
            if attrs.uid_gid != Some((uid, gid)) {
                let owner = Attrs {
                    uid_gid: Some((uid, gid)),
                    ..Default::default()
                };
                let changed = if symlink {
                    session.lsetstat(path, owner).await
                } else {
                    session.setstat(path, owner).await
                };
                match changed {
                    Ok(()) => {
                        changed_here = true;
                        attrs.uid_gid = Some((uid, gid));
                        // chown(2) by root clears setuid and setgid, of a directory's neither.
                        if let Some(p) = attrs.permissions.as_mut()
                            && *p & libc::S_IFMT != libc::S_IFDIR
                        {
                            *p &= !(libc::S_ISUID | libc::S_ISGID);
                        }
                    }
                    Err(e) => warn!(
                        "{} stays the login's: giving it to uid {uid} failed: {e}",
                        String::from_utf8_lossy(path)
                    ),
                }
            }
        }
        let mut wanted = mode.permissions();
        // A directory made in a setgid directory inherits the bit (mkdir(2) cannot ask for it:
        // on the server too, it can only have come from there).
        let made = attrs.permissions.unwrap_or(0);
        if made & libc::S_IFMT == libc::S_IFDIR {
            wanted |= made & libc::S_ISGID;
        }
        if !symlink && attrs.permissions.map(|p| p & 0o7777) != Some(wanted) {
            let change = Attrs {
                permissions: Some(wanted),
                ..Default::default()
            };
            if session.setstat(path, change).await.is_ok() {
                changed_here = true;
                let kind = attrs.permissions.unwrap_or(0) & libc::S_IFMT;
                attrs.permissions = Some(kind | wanted);
            }
        }
        if changed_here {
            // What the creation cached is the server's first answer.
            let ticket = self.cache.ticket();
            self.cache
                .put_name(ticket, path.to_vec(), Known::Attrs(attrs.clone()));
        }
        attrs
    }

    /// OpenSSH turns EEXIST into a bare FAILURE; a stat of the target says whether that was it
    /// (`stat_after`: one already sent behind the failed request).
    pub(super) async fn refine_exists(
        &self,
        e: SftpError,
        path: &[u8],
        stat_after: Option<Reply<Attrs>>,
    ) -> Errno {
        if e.status() != Some(StatusCode::FAILURE) {
            return errno(e);
        }
        if let Some(after) = stat_after
            && after.await.is_ok()
        {
            return libc::EEXIST;
        }
        if let Ok(meta) = self.meta().await
            && meta.lstat(path).await.is_ok()
        {
            return libc::EEXIST;
        }
        errno(e)
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let path = self.inodes.child_path(parent, name)?;
        let dir = self.inodes.path(parent)?;
        let _names = self.inodes.names_changing().await;
        let session = self.meta().await?;
        let ticket = self.cache.ticket();
        // An open file keeps its contents under a hidden name until its last close.
        let mut hidden = self.hidden_name_for(parent, name);
        let removed = match &hidden {
            Some(h) => session.rename_exclusive(&path, &join(&dir, h)),
            None => session.remove(&path),
        };
        let mut parent_after = self.features.in_order.then(|| session.lstat(&dir));
        let removed = removed.await;
        let no_such_file = |e: &SftpError| e.status() == Some(StatusCode::NO_SUCH_FILE);
        let mut removed = match &hidden {
            Some(h) => {
                let to = &join(&dir, h);
                let send = |again: Arc<Session>| again.rename_exclusive(&path, to);
                let made_before = |again: Arc<Session>, e: SftpError| async move {
                    no_such_file(&e) && again.lstat(to).await.is_ok()
                };
                self.change_once(removed, send, made_before).await
            }
            None => {
                let send = |again: Arc<Session>| again.remove(&path);
                let made_before = |_, e: SftpError| async move { no_such_file(&e) };
                self.change_once(removed, send, made_before).await
            }
        };
        if let (Err(e), Some(_)) = (&removed, &hidden) {
            warn!(
                "{} is open but could not be moved to a hidden name ({e}): removed; its open descriptors go on, but cannot be reopened after a reconnection",
                String::from_utf8_lossy(&path)
            );
            (hidden, parent_after) = (None, None);
            removed = session.remove(&path).await;
        }
        if let Err(e) = removed {
            self.changed_path(&path);
            if e.status() == Some(StatusCode::FAILURE)
                && let Ok(a) = self.meta().await?.lstat(&path).await
                && a.permissions.unwrap_or(0) & libc::S_IFMT == libc::S_IFDIR
            {
                return Err(libc::EISDIR);
            }
            return Err(errno(e));
        }
        let (ino, others, linked_elsewhere) = {
            let mut inodes = self.inodes.table();
            let ino = inodes.child(parent, name);
            let linked_elsewhere = ino
                .and_then(|ino| inodes.listed_nlink(ino))
                .is_some_and(|n| n > 1);
            match &hidden {
                Some(h) => inodes.hide(parent, name, h),
                None => inodes.unlink(parent, name),
            }
            if linked_elsewhere {
                inodes.forget_listed_nlinks();
            }
            // The file's other names: its link count and ctime changed.
            let others = ino.filter(|&ino| !inodes.is_unlinked(ino));
            if let Some(ino) = others {
                inodes.set_ctime(ino, std::time::SystemTime::now());
            }
            (ino, others, linked_elsewhere)
        };
        if let (Some(_), Some(ino)) = (&hidden, ino) {
            self.remove_hidden_if_closed(ino).await;
        }
        let dir_after = dir_after(ticket, parent_after).await;
        self.cache.removed(&path, dir_after);
        if let Some(ino) = others {
            self.changed_attrs(ino);
        }
        // Names the mount does not know as this file's hid its link count: what was cached
        // of any file may now be one too many.
        if linked_elsewhere {
            self.cache.invalidate_tree(&self.root);
        }
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        // A file removed from it while a descriptor's release (which the kernel sends after
        // close(2) returned) was on its way is kept under a hidden name until that release:
        // `cat d/f; rm -rf d` must not fail for it. Waited for a moment.
        let child = self.inodes.table().child(parent, name);
        if let Some(dir) = child {
            for _ in 0..100 {
                if !self.inodes.table().has_hidden_in(dir) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let path = self.inodes.child_path(parent, name)?;
        let dir = self.inodes.path(parent)?;
        let _names = self.inodes.names_changing().await;
        let session = self.meta().await?;
        let ticket = self.cache.ticket();
        let removed = session.rmdir(&path);
        let parent_after = self.features.in_order.then(|| session.lstat(&dir));
        let removed = self
            .change_once(
                removed.await,
                |again| again.rmdir(&path),
                |_, e| async move { e.status() == Some(StatusCode::NO_SUCH_FILE) },
            )
            .await;
        if let Err(e) = removed {
            self.cache.invalidate_tree(&path);
            // The common FAILURE of rmdir is a directory that is not empty.
            if e.status() == Some(StatusCode::FAILURE)
                && self.meta().await?.lstat(&path).await.is_ok()
            {
                return Err(libc::ENOTEMPTY);
            }
            return Err(errno(e));
        }
        self.inodes.table().unlink(parent, name);
        // It was empty: nothing cached below it but its own listing.
        let dir_after = dir_after(ticket, parent_after).await;
        self.cache.removed(&path, dir_after);
        Ok(())
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        owner: (u32, u32),
    ) -> FsResult<Entry> {
        let path = self.inodes.child_path(parent, name)?;
        let session = self.meta().await?;
        let ticket = self.cache.ticket();
        let attrs = self
            .made(parent, &path, &session, ticket, Making::Symlink { target })
            .await?;
        let mode = CreateMode {
            mode: 0o777,
            umask: 0,
            owner,
        };
        let attrs = self
            .as_created(&session, parent, &path, attrs, &mode, true)
            .await;
        Ok(self.remember_entry(parent, name, &attrs))
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
    ) -> FsResult<()> {
        let from = self.inodes.child_path(parent, name)?;
        let to = self.inodes.child_path(new_parent, new_name)?;
        let _names = self.inodes.names_changing().await;
        let ticket = self.cache.ticket();
        let mut parent_after = None;
        let replaced = match no_replace {
            true => None,
            false => self.hide_replaced(new_parent, new_name, &to).await?,
        };
        let result = if no_replace {
            // The plain v3 RENAME never replaces (OpenSSH does link + unlink), which is
            // exactly RENAME_NOREPLACE.
            if self.meta().await?.lstat(&to).await.is_ok() {
                return Err(libc::EEXIST);
            }
            let renamed = self.meta().await?.rename_exclusive(&from, &to).await;
            let send = |again: Arc<Session>| again.rename_exclusive(&from, &to);
            let made_before = |again, e| moved_before(again, e, &to);
            let renamed = self.change_once(renamed, send, made_before).await;
            renamed.map_err(RenameError::Sftp)
        } else if self.features.posix_rename {
            // One request; on a server that runs a channel in order, the directory's
            // attributes right behind it.
            let session = self.meta().await?;
            let renamed = session.rename(&from, &to);
            if parent == new_parent {
                let dir = self.inodes.path(parent)?;
                parent_after = self.features.in_order.then(|| session.lstat(&dir));
            }
            let send = |again: Arc<Session>| again.rename(&from, &to);
            let made_before = |again, e| moved_before(again, e, &to);
            let renamed = self.change_once(renamed.await, send, made_before).await;
            renamed.map_err(RenameError::Sftp)
        } else {
            self.rename_replacing(&from, &to).await
        };
        // A directory takes everything cached below it along; a file (known as one) only
        // its own entries, which spares a scan of the cache for each of rsync's renames. A
        // file renamed keeps its attributes, and the listings it moved between are edited, not
        // dropped: a lock file renamed into place (git, editors) leaves the names around it
        // known. A file whose attributes the cache no longer has (its writes were acked before
        // its close asked for them) is still known as a file by its inode.
        let file_attrs = match self.cache.name(&from) {
            Some(Known::Attrs(a)) if !is_dir(&a) => Some(a),
            _ => None,
        };
        let known_file = file_attrs.is_some() || {
            let inodes = self.inodes.table();
            let shown = inodes.child(parent, name).and_then(|ino| inodes.shown(ino));
            shown.is_some_and(|a| a.permissions.is_some() && !is_dir(&a))
        };
        match (&result, known_file) {
            (Ok(()), true) => {
                let dir_after = dir_after(ticket, parent_after).await;
                self.cache.renamed(&from, &to, file_attrs, dir_after);
            }
            (Err(_), true) => {
                self.changed_path(&from);
                self.changed_path(&to);
            }
            (_, false) => {
                self.cache.invalidate_tree(&from);
                self.cache.invalidate_tree(&to);
            }
        }
        if let Some(replaced) = &replaced {
            replaced.settle(self, result.is_ok()).await;
        }
        if let Err(e) = result {
            return Err(match e {
                RenameError::Sftp(e) => {
                    let failure = e.status() == Some(StatusCode::FAILURE);
                    let found = if no_replace {
                        self.refine_exists(e, &to, None).await
                    } else if failure {
                        self.refine_rename_failure(&from, &to).await
                    } else {
                        errno(e)
                    };
                    if failure && found == libc::EIO && self.config.rename_failure_is_exdev {
                        libc::EXDEV
                    } else {
                        found
                    }
                }
                RenameError::Errno(e) => e,
            });
        }
        let hidden = {
            let mut inodes = self.inodes.table();
            let hidden = replaced.as_ref().and_then(|replaced| {
                let ino = inodes.child(new_parent, new_name);
                inodes.hide(new_parent, new_name, &replaced.name);
                ino
            });
            inodes.rename(parent, name, new_parent, new_name);
            if let Some(moved) = inodes.child(new_parent, new_name) {
                inodes.set_ctime(moved, std::time::SystemTime::now());
            }
            hidden
        };
        if let Some(ino) = hidden {
            self.remove_hidden_if_closed(ino).await;
        }
        if !known_file {
            self.cache.removed(&from, None);
        }
        Ok(())
    }

    /// A hidden name for the file `parent/name` when it is open through the mount and this is
    /// the last name the mount knows it by: removing or replacing the name moves the file there
    /// instead (see `inode.rs`).
    fn hidden_name_for(&self, parent: u64, name: &[u8]) -> Option<Vec<u8>> {
        let ino = self.inodes.table().child(parent, name)?;
        if self.inodes.table().names(ino) != 1 || !self.files.is_open(ino) {
            return None;
        }
        static HIDDEN: AtomicU64 = AtomicU64::new(0);
        let n = HIDDEN.fetch_add(1, Ordering::Relaxed);
        Some(format!(".sftpmount-hidden-{:x}-{n:x}", std::process::id()).into_bytes())
    }

    /// Before `to` (`new_parent/new_name`) is renamed over: an open file there is given a
    /// hidden name first, so that it lives on for its descriptors. A hard link keeps `to`
    /// taken until the rename replaces it (atomic, as rename(2) is); a server without hard
    /// links has it moved aside (a moment without `to`). Neither possible: it is replaced as
    /// it is, and its descriptors go on through their handles.
    async fn hide_replaced(
        &self,
        new_parent: u64,
        new_name: &[u8],
        to: &[u8],
    ) -> FsResult<Option<Replaced>> {
        let Some(name) = self.hidden_name_for(new_parent, new_name) else {
            return Ok(None);
        };
        let path = join(&self.inodes.path(new_parent)?, &name);
        let meta = self.meta().await?;
        let linked = self.features.hardlink && meta.hardlink(to, &path).await.is_ok();
        if linked || meta.rename_exclusive(to, &path).await.is_ok() {
            return Ok(Some(Replaced {
                name,
                path,
                to: to.to_vec(),
                linked,
            }));
        }
        warn!(
            "{} is open but could not be given a hidden name before being replaced",
            String::from_utf8_lossy(to)
        );
        Ok(None)
    }

    /// A rename's bare FAILURE: a directory over a directory fails only when that one is not
    /// empty (ENOTEMPTY); else EIO.
    async fn refine_rename_failure(&self, from: &[u8], to: &[u8]) -> Errno {
        let Ok(meta) = self.meta().await else {
            return libc::EIO;
        };
        let (source, target) = (meta.lstat(from), meta.lstat(to));
        match (source.await, target.await) {
            (Ok(s), Ok(t)) if is_dir(&s) && is_dir(&t) => libc::ENOTEMPTY,
            _ => libc::EIO,
        }
    }

    /// rename(2), which replaces `to`: with posix-rename@openssh.com, one atomic request. The
    /// plain v3 RENAME refuses an existing target (OpenSSH and Green End's server link, then
    /// unlink); without the extension the target is then moved aside first and removed after,
    /// as sshfs's `workaround=rename` does. Not atomic (for a moment `to` is missing), but
    /// nothing is lost: when the rename fails, the target is moved back.
    async fn rename_replacing(&self, from: &[u8], to: &[u8]) -> Result<(), RenameError> {
        let meta = self.meta().await.map_err(RenameError::Errno)?;
        let e = match meta.rename(from, to).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if self.features.posix_rename || e.status() != Some(StatusCode::FAILURE) {
            return Err(RenameError::Sftp(e));
        }
        let (Ok(source), Ok(target)) = (meta.lstat(from).await, meta.lstat(to).await) else {
            return Err(RenameError::Sftp(e));
        };
        let sftp = |e: SftpError| RenameError::Errno(errno(e));
        match (is_dir(&source), is_dir(&target)) {
            (false, true) => return Err(RenameError::Errno(libc::EISDIR)),
            (true, false) => return Err(RenameError::Errno(libc::ENOTDIR)),
            (true, true) => {
                // Only over an empty directory, which rmdir checks.
                meta.rmdir(to).await.map_err(|e| match e.status() {
                    Some(StatusCode::FAILURE) => RenameError::Errno(libc::ENOTEMPTY),
                    _ => sftp(e),
                })?;
                let renamed = meta.rename(from, to).await;
                if renamed.is_err() {
                    let mode = Attrs {
                        permissions: target.permissions.map(|m| m & 0o7777),
                        ..Default::default()
                    };
                    let _ = meta.mkdir(to, mode).await;
                }
                return renamed.map_err(sftp);
            }
            (false, false) => {}
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut aside = to.to_vec();
        aside.extend_from_slice(format!(".sftpmount-{}-{nanos}", std::process::id()).as_bytes());
        meta.rename(to, &aside).await.map_err(sftp)?;
        match meta.rename(from, to).await {
            Ok(()) => {
                if let Err(e) = meta.remove(&aside).await {
                    warn!(
                        "renamed over {}, but its old file stays as {}: {e}",
                        String::from_utf8_lossy(to),
                        String::from_utf8_lossy(&aside)
                    );
                }
                Ok(())
            }
            Err(e) => {
                if let Err(back) = meta.rename(&aside, to).await {
                    error!(
                        "{} was moved aside to {} and could not be moved back: {back}",
                        String::from_utf8_lossy(to),
                        String::from_utf8_lossy(&aside)
                    );
                }
                Err(sftp(e))
            }
        }
    }

    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Entry> {
        if !self.config.hardlinks {
            return Err(libc::ENOSYS);
        }
        // A file whose last name went is not given a new one (linkat of /proc/PID/fd/N).
        if self.inodes.table().is_unlinked(ino) {
            return Err(libc::ENOENT);
        }
        let _names = self.inodes.names_kept().await;
        let existing = self.inodes.path(ino)?;
        let path = self.inodes.child_path(new_parent, new_name)?;
        let session = self.meta().await?;
        let ticket = self.cache.ticket();
        let making = Making::HardLink {
            existing: &existing,
        };
        let attrs = self
            .made(new_parent, &path, &session, ticket, making)
            .await?;
        // The new name is another name of the same inode, as on a local filesystem: one inode
        // number, the link count of the names the mount knows, a change through either name
        // seen through the other at once.
        self.inodes.table().link(ino, new_parent, new_name);
        let attr = self.shown(ino, &attrs);
        Ok(Entry {
            attr: self.status_changed(ino, attr),
        })
    }
}

/// An open file a rename replaces, given a hidden name first (see [`Core::hide_replaced`]).
struct Replaced {
    name: Vec<u8>,
    path: Vec<u8>,
    to: Vec<u8>,
    /// A second name (the file is still at `to` until the rename); else it was moved.
    linked: bool,
}

impl Replaced {
    /// Once the rename is done (`renamed`) or failed: a failed one leaves `to` as it was.
    async fn settle(&self, core: &Core, renamed: bool) {
        if renamed {
            return;
        }
        let Ok(meta) = core.meta().await else { return };
        let undone = match self.linked {
            true => meta.remove(&self.path).await,
            false => meta.rename_exclusive(&self.path, &self.to).await,
        };
        if let Err(e) = undone {
            error!(
                "a failed rename over {} leaves its file at {}: {e}",
                String::from_utf8_lossy(&self.to),
                String::from_utf8_lossy(&self.path)
            );
        }
    }
}

/// Whether a rename sent again (failing with `e`) had been made by its first sending: its
/// source is gone and its target is there.
async fn moved_before(session: Arc<Session>, e: SftpError, to: &[u8]) -> bool {
    e.status() == Some(StatusCode::NO_SUCH_FILE) && session.lstat(to).await.is_ok()
}

/// The directory's attributes asked behind a change (see [`super::cache::DirAfter`]).
pub(super) async fn dir_after(ticket: Ticket, reply: Option<Reply<Attrs>>) -> DirAfter {
    match reply {
        Some(reply) => reply.await.ok().map(|attrs| (ticket, attrs)),
        None => None,
    }
}

/// Whether a symlink target cannot lead out of the directory it is in: relative, and without
/// a `..` component (not even one a later component would undo).
fn contained(target: &[u8]) -> bool {
    !target.starts_with(b"/") && !target.split(|&b| b == b'/').any(|c| c == b"..")
}

/// `transform_symlinks`: an absolute `target` inside the mounted directory `root`, as a path
/// relative to the link at `link` (both server paths), so that it resolves inside the mount.
/// `None` for a relative target or one outside `root`: shown as the server has it.
fn relative_target(root: &[u8], link: &[u8], target: &[u8]) -> Option<Bytes> {
    let components = |p: &[u8]| -> Vec<Vec<u8>> {
        p.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(<[u8]>::to_vec)
            .collect()
    };
    if !target.starts_with(b"/") {
        return None;
    }
    let (root, target) = (components(root), components(target));
    if target.iter().any(|c| c == b"..") || !target.starts_with(&root) {
        return None;
    }
    let mut dir = components(link);
    dir.pop();
    let common = dir.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut out: Vec<u8> = Vec::new();
    for _ in common..dir.len() {
        out.extend_from_slice(b"../");
    }
    for c in &target[common..] {
        out.extend_from_slice(c);
        out.push(b'/');
    }
    out.pop();
    if out.is_empty() {
        out = b".".to_vec();
    }
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::relative_target;

    #[test]
    fn absolute_targets_inside_the_mount_become_relative() {
        let t = |link: &str, target: &str| {
            relative_target(b"/srv/data", link.as_bytes(), target.as_bytes())
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        assert_eq!(
            t("/srv/data/a/link", "/srv/data/b/f").as_deref(),
            Some("../b/f")
        );
        assert_eq!(t("/srv/data/link", "/srv/data/b/f").as_deref(), Some("b/f"));
        assert_eq!(
            t("/srv/data/a/b/link", "/srv/data/a").as_deref(),
            Some("..")
        );
        assert_eq!(t("/srv/data/a/link", "/srv/data").as_deref(), Some(".."));
        assert_eq!(t("/srv/data/link", "/srv/data").as_deref(), Some("."));
        assert_eq!(
            t("/srv/data/link", "/etc/passwd"),
            None,
            "outside: unchanged"
        );
        assert_eq!(t("/srv/data/link", "/srv/database/x"), None);
        assert_eq!(t("/srv/data/link", "/srv/data/../../etc"), None);
        assert_eq!(t("/srv/data/link", "rel/x"), None);
    }
}
