//! The thin FUSE adapter: each kernel request becomes a tokio task that calls the core and
//! sends the reply, so no dispatch thread ever waits on the network.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Core, CreateMode, SetAttr};

/// How long the kernel may trust what we tell it (`attr_timeout`, `entry_timeout`,
/// `negative_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct KernelTtl {
    pub attr: Duration,
    pub entry: Duration,
    /// That a name does not exist; zero: not at all.
    pub negative: Duration,
}

impl KernelTtl {
    /// For replies that carry one time for both.
    fn both(&self) -> Duration {
        self.attr.min(self.entry)
    }

    fn reply_entry(&self, reply: ReplyEntry, attr: &FileAttr, core: &Core) {
        let attr_ttl = self.attr_ttl(attr, core);
        reply.entry_with_ttls(&attr_ttl, &self.entry, attr, GENERATION);
    }

    /// Attributes ahead of the server (a change still on its way, see `Core::provisional`)
    /// are not kept: the kernel asks again, and hears the server's truth once it is there.
    fn attr_ttl(&self, attr: &FileAttr, core: &Core) -> Duration {
        if core.provisional(attr.ino.0) {
            Duration::ZERO
        } else {
            self.attr
        }
    }
}

pub struct FuseAdapter {
    core: Arc<Core>,
    rt: tokio::runtime::Handle,
    ttl: KernelTtl,
    /// Flags every open file gets (`direct_io`: FOPEN_DIRECT_IO).
    open_flags: FopenFlags,
    kernel: KernelNotices,
}

/// Notices to the kernel about what it caches, once the session is up (see
/// [`FuseAdapter::kernel_notices`]).
#[derive(Clone, Default)]
pub struct KernelNotices(Arc<std::sync::OnceLock<fuser::Notifier>>);

impl KernelNotices {
    pub fn set(&self, notifier: fuser::Notifier) {
        let _ = self.0.set(notifier);
    }

    /// The kernel asks `ino`'s attributes again before it uses them (an offset of -1: not
    /// its pages). Lost if the kernel does not know the inode any more: nothing to forget.
    fn forget_attrs(&self, ino: INodeNo) {
        if let Some(notifier) = self.0.get() {
            let _ = notifier.inval_inode(ino, -1, 0);
        }
    }
}

impl FuseAdapter {
    pub fn new(
        core: Arc<Core>,
        rt: tokio::runtime::Handle,
        ttl: KernelTtl,
        direct_io: bool,
    ) -> Self {
        let open_flags = if direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        FuseAdapter {
            core,
            rt,
            ttl,
            open_flags,
            kernel: KernelNotices::default(),
        }
    }

    /// Where to hand the session's notifier once it exists (it is made with the adapter).
    pub fn kernel_notices(&self) -> KernelNotices {
        self.kernel.clone()
    }

    fn spawn<F>(&self, task: impl FnOnce(Arc<Core>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(task(self.core.clone()));
    }
}

/// ENOTCONN from a FUSE filesystem reads as "the daemon is gone" (that is what the kernel
/// answers once it is); a lost SFTP connection is an I/O error of that one operation.
fn errno(e: i32) -> Errno {
    Errno::from_i32(if e == libc::ENOTCONN { libc::EIO } else { e })
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn bytes(name: &OsStr) -> Bytes {
    Bytes::copy_from_slice(name.as_bytes())
}

const GENERATION: Generation = Generation(0);

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // readdirplus makes `ls -l` one listing instead of a stat per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // A file whose mtime or size changed (seen on a later getattr) loses its cached pages.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        // Inode numbers last only while the kernel holds them: a handle from
        // name_to_handle_at(2) would fail later with ESTALE (after drop_caches, a remount).
        // Programs are told EOPNOTSUPP at once instead, and fall back to paths.
        let _ = config.add_capabilities(InitFlags::FUSE_NO_EXPORT_SUPPORT);
        let _ = config.set_max_write(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = bytes(name);
        let ttl = self.ttl;
        self.spawn(|core| async move {
            match core.lookup(parent.0, &name).await {
                Ok(e) => ttl.reply_entry(reply, &e.attr, &core),
                // Inode 0 is the kernel's "no such name", kept for the entry time.
                Err(libc::ENOENT) if !ttl.negative.is_zero() => {
                    reply.entry_with_ttls(&Duration::ZERO, &ttl.negative, &dot_attr(0), GENERATION)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl;
        self.spawn(|core| async move {
            match core.getattr(ino.0, fh.map(|f| f.0)).await {
                Ok(attr) => reply.attr(&ttl.attr_ttl(&attr, &core), &attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        let ttl = self.ttl;
        let caller = req.pid();
        self.spawn(|core| async move {
            match core.setattr(ino.0, fh.map(|f| f.0), set, caller).await {
                Ok(attr) => reply.attr(&ttl.attr_ttl(&attr, &core), &attr),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(|core| async move {
            match core.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = bytes(name);
        let ttl = self.ttl;
        let owner = (req.uid(), req.gid());
        self.spawn(|core| async move {
            match core
                .mkdir(parent.0, &name, CreateMode { mode, umask, owner })
                .await
            {
                Ok(e) => ttl.reply_entry(reply, &e.attr, &core),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = bytes(name);
        let ttl = self.ttl;
        let owner = (req.uid(), req.gid());
        let caller = req.pid();
        self.spawn(|core| async move {
            match core
                .mknod(parent.0, &name, CreateMode { mode, umask, owner }, caller)
                .await
            {
                Ok(e) => ttl.reply_entry(reply, &e.attr, &core),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(|core| async move {
            match core.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(|core| async move {
            match core.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = bytes(link_name);
        let target = bytes(target.as_os_str());
        let ttl = self.ttl;
        let owner = (req.uid(), req.gid());
        self.spawn(|core| async move {
            match core.symlink(parent.0, &name, &target, owner).await {
                Ok(e) => ttl.reply_entry(reply, &e.attr, &core),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname) = (bytes(name), bytes(newname));
        self.spawn(|core| async move {
            match core
                .rename(parent.0, &name, newparent.0, &newname, no_replace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = bytes(newname);
        let ttl = self.ttl;
        self.spawn(|core| async move {
            match core.link(ino.0, newparent.0, &name).await {
                Ok(e) => ttl.reply_entry(reply, &e.attr, &core),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let caller = req.pid();
        let open_flags = self.open_flags;
        let kernel = self.kernel.clone();
        self.spawn(|core| async move {
            match core.open(ino.0, flags.0, caller).await {
                Ok(opened) => {
                    // Before the reply: the kernel reads once it has it.
                    if opened.shown_stale {
                        kernel.forget_attrs(ino);
                    }
                    let flags = if opened.keep_cache {
                        open_flags | FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        open_flags
                    };
                    reply.opened(FileHandle(opened.fh), flags);
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = bytes(name);
        let ttl = self.ttl;
        let caller = req.pid();
        let owner = (req.uid(), req.gid());
        let open_flags = self.open_flags;
        self.spawn(|core| async move {
            match core
                .create(
                    parent.0,
                    &name,
                    CreateMode { mode, umask, owner },
                    flags,
                    caller,
                )
                .await
            {
                Ok((e, fh)) => {
                    reply.created(&ttl.both(), &e.attr, GENERATION, FileHandle(fh), open_flags)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|core| async move {
            match core.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = Bytes::copy_from_slice(data);
        // Page-cache writeback (shared mmap) ignores a short reply: that data must all be taken.
        let whole = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        self.spawn(|core| async move {
            match core.write(fh.0, offset, data, whole).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.spawn(|core| async move {
            match core
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                .await
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(|core| async move {
            match core.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|core| async move {
            match core.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|core| async move {
            match core.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|core| async move {
            match core.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(|core| async move {
            let added = core
                .readdir(fh.0, offset, false, |e| {
                    reply.add(INodeNo(e.ino), e.offset, e.kind, OsStr::from_bytes(&e.name))
                })
                .await;
            match added {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl.both();
        self.spawn(|core| async move {
            let mut subdirs = Vec::new();
            let added = core
                .readdir(fh.0, offset, true, |e| match &e.attr {
                    // The kernel takes no reference for "." and ".."; their attributes are
                    // unused.
                    None => {
                        let attr = dot_attr(e.ino);
                        let name = OsStr::from_bytes(&e.name);
                        reply.add(
                            INodeNo(e.ino),
                            e.offset,
                            name,
                            &Duration::ZERO,
                            &attr,
                            GENERATION,
                        )
                    }
                    Some(attr) => {
                        let ttl = if e.gone { Duration::ZERO } else { ttl };
                        let name = OsStr::from_bytes(&e.name);
                        let full =
                            reply.add(INodeNo(e.ino), e.offset, name, &ttl, attr, GENERATION);
                        if !full && attr.kind == fuser::FileType::Directory && !e.gone {
                            subdirs.push(e.name.clone());
                        }
                        full
                    }
                })
                .await;
            if let Err(e) = added {
                return reply.error(errno(e));
            }
            reply.ok();
            if !subdirs.is_empty() {
                core.prefetch_listings(ino.0, subdirs);
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    // Extended attributes are not carried (SFTP v3 has none): ENOSYS makes the kernel stop
    // asking (it asks for security.capability at every write otherwise), without fuser's
    // warning per call in the log.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    // SFTP v3 has no extended attributes. ENOSYS, once, and the kernel answers EOPNOTSUPP
    // itself from then on (fuser's default would log a warning for each).
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(|core| async move {
            match core.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.bfree,
                    s.bavail,
                    s.files,
                    s.ffree,
                    s.bsize.min(u32::MAX as u64) as u32,
                    s.namemax.min(u32::MAX as u64) as u32,
                    s.frsize.min(u32::MAX as u64) as u32,
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

fn dot_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::Directory,
        perm: 0o755,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
