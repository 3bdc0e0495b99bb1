//! Bringing a mount up and down: checks of the mount point, the SSH and SFTP connection, the
//! FUSE session with its dispatch threads, going to the background only once the mount is live,
//! and a clean unmount on umount, SIGTERM, SIGINT or SIGHUP that writes everything in flight
//! first.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use fuser::{MountOption, SessionACL};
use tracing::{error, info, warn};

use crate::fs::{Core, CoreConfig, IdMapping, SymlinkMode};
use crate::fuse::{FuseAdapter, KernelTtl};
use crate::options::{IdMap, Options};
use crate::remote::ssh::SshConnector;
use crate::remote::{ConnectError, FarLink, Remote, RemoteSettings};
use crate::ssh::Target;

/// FUSE dispatch threads: replies come from tokio tasks, so few are needed.
const DISPATCH_THREADS: usize = 4;

/// Refuses a mount point that cannot work, before any network traffic.
/// An error and its causes on one line, each cause once: an error that already names its cause
/// in its own message (`cannot connect to h:22: Connection refused`) does not repeat it.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

pub fn check_local(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    if !Path::new("/dev/fuse").exists() {
        bail!("no /dev/fuse: install fuse3 and load the module (modprobe fuse)");
    }
    // SAFETY: access(2) with a valid C string.
    if unsafe { libc::access(c"/dev/fuse".as_ptr(), libc::R_OK | libc::W_OK) } != 0 {
        bail!(
            "cannot open /dev/fuse: {}: this user may not use FUSE (as root: chmod 0666 \
             /dev/fuse, Debian's default)",
            std::io::Error::last_os_error()
        );
    }
    let meta = std::fs::metadata(mountpoint).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "mount point {} does not exist: create it first (mkdir -p {})",
            mountpoint.display(),
            mountpoint.display()
        ),
        // What a FUSE mount whose daemon died (kill -9, a crash) answers.
        _ if e.raw_os_error() == Some(libc::ENOTCONN) => anyhow!(
            "{} is a mount whose daemon is gone: unmount it first (umount {}, or fusermount3 -u \
             {} as its user)",
            mountpoint.display(),
            mountpoint.display(),
            mountpoint.display()
        ),
        _ => anyhow!("cannot use mount point {}: {e}", mountpoint.display()),
    })?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let canonical = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("cannot resolve mount point {}", mountpoint.display()))?;
    if crate::mount_table::fs_type_at(&canonical).is_some() {
        bail!(
            "{} is already a mount point: unmount it first (umount {})",
            canonical.display(),
            canonical.display()
        );
    }
    Ok(canonical)
}

/// Tells the foreground process how the mount went, when we went to the background.
pub struct ReadyPipe(OwnedFd);

impl ReadyPipe {
    fn send(self, message: &[u8]) {
        let mut file = std::fs::File::from(self.0);
        let _ = file.write_all(message);
    }
}

/// Forks: the parent waits for the child's word and exits with it; the child returns its end
/// of the pipe. Must run before any thread is started.
pub fn daemonize() -> anyhow::Result<ReadyPipe> {
    let mut fds = [0; 2];
    // SAFETY: plain pipe(2)/fork(2); no other thread exists yet, so the child may go on.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        let (read_end, write_end) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        match libc::fork() {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                drop(read_end);
                Ok(ReadyPipe(write_end))
            }
            _ => {
                drop(write_end);
                let mut message = Vec::new();
                let _ = std::fs::File::from(read_end).read_to_end(&mut message);
                match message.first() {
                    Some(0) => std::process::exit(0),
                    Some(_) => {
                        eprintln!(
                            "sftpmount: {}",
                            String::from_utf8_lossy(&message).trim_end()
                        );
                        std::process::exit(1)
                    }
                    None => {
                        eprintln!("sftpmount: the mount process died before the mount was ready");
                        std::process::exit(1)
                    }
                }
            }
        }
    }
}

/// Detaches from the terminal once the foreground process has exited.
fn detach() {
    crate::logging::detached();
    // SAFETY: setsid/open/dup2 on our own descriptors.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    let _ = std::env::set_current_dir("/");
}

/// Runs the mount to its end. With `ready`, reports success or the first error through it.
pub fn run(opts: Options, mountpoint: PathBuf, ready: Option<ReadyPipe>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sftpmount-io")
        .build()
        .context("cannot start the runtime")?;
    let setup = runtime.block_on(connect(&opts));
    let core = match setup {
        Ok(ok) => ok,
        Err(e) => {
            if let Some(ready) = ready {
                ready.send(one_line(&e).as_bytes());
                std::process::exit(1);
            }
            return Err(e);
        }
    };
    let core = Arc::new(core);
    runtime.spawn(core.clone().background_work());
    runtime.spawn(give_memory_back_when_idle());
    let ttl = KernelTtl {
        attr: opts.attr_timeout,
        entry: opts.entry_timeout,
        negative: opts.negative_timeout,
    };
    let adapter = FuseAdapter::new(core.clone(), runtime.handle().clone(), ttl, opts.direct_io);
    let kernel_notices = adapter.kernel_notices();
    let mut config = fuser::Config::default();
    config.mount_options = mount_options(&opts);
    // auto_unmount goes through fusermount3, which takes it only with allow_other or
    // allow_root: allow_root's checks (fuser's) keep the mount to its owner (and root).
    config.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root || opts.auto_unmount {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(DISPATCH_THREADS);
    let session = fuser::Session::new(adapter, &mountpoint, &config);
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", mountpoint.display());
            if let Some(ready) = ready {
                ready.send(msg.as_bytes());
                std::process::exit(1);
            }
            bail!(msg);
        }
    };
    kernel_notices.set(session.notifier());
    info!("mounted {} on {}", source_name(&opts), mountpoint.display());
    let _status = {
        let _in_runtime = runtime.enter();
        crate::status::serve(
            core.clone(),
            crate::status::MountIdentity {
                mountpoint: mountpoint.clone(),
                source: opts.fsname.clone().unwrap_or_else(|| source_name(&opts)),
            },
        )
    };
    if let Some(ready) = ready {
        for line in crate::logging::said_at_mount() {
            eprintln!("sftpmount: {line}");
        }
        ready.send(&[0]);
        detach();
    }

    let signal_core = core.clone();
    let signal_mountpoint = mountpoint.clone();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // As libfuse's handlers (sshfs): a closed terminal (SIGHUP) ends a foreground mount
        // cleanly too, instead of killing it and leaving a dead mount point.
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            warn!("cannot listen for signals");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
        // Detach first so no new file can be opened, then write out what was accepted,
        // close every remote handle and leave: descriptors still open get EIO for later
        // writes, never a silently dropped write.
        info!("signal received: unmounting after writing data in flight");
        if let Err(e) = detach_mount(&signal_mountpoint) {
            warn!("unmount failed: {e}");
        }
        let losses = signal_core.shut_down().await;
        for loss in &losses {
            error!("{loss}");
        }
        std::process::exit(if losses.is_empty() { 0 } else { 1 });
    });
    let result = session.run();
    // The kernel may have released files without waiting for us: finish their writes.
    let losses = runtime.block_on(core.shut_down());
    result.context("FUSE session failed")?;
    for loss in &losses {
        error!("{loss}");
    }
    if !losses.is_empty() {
        bail!(
            "{} file(s) lost writes at unmount (see the log above)",
            losses.len()
        );
    }
    info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Returns the heap's free memory to the system once the mount has sent no request for a
/// while: a tree walk's listings and a transfer's buffers are freed when done, but the
/// allocator keeps the pages (measured: 100 MB resident after one `ls -R`, for nothing).
async fn give_memory_back_when_idle() {
    const IDLE: std::time::Duration = std::time::Duration::from_secs(10);
    let mut last = crate::sftp::traffic::requests();
    let mut trimmed = true;
    loop {
        tokio::time::sleep(IDLE).await;
        let now = crate::sftp::traffic::requests();
        if now != last {
            (last, trimmed) = (now, false);
        } else if !trimmed {
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe { libc::malloc_trim(0) };
            trimmed = true;
        }
    }
}

/// A lazy unmount: busy files (a writer still holding one open) must not keep us mounted. An
/// ordinary user may not umount(2): fusermount3 (setuid) does it for the mount's owner, as for
/// sshfs.
fn detach_mount(mountpoint: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let denied = std::io::Error::last_os_error();
    if denied.raw_os_error() != Some(libc::EPERM) {
        return Err(denied);
    }
    let mut last = denied;
    for tool in ["fusermount3", "fusermount"] {
        match std::process::Command::new(tool)
            .args(["-u", "-q", "-z", "--"])
            .arg(mountpoint)
            .stdin(std::process::Stdio::null())
            .status()
        {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => {
                last = std::io::Error::other(format!("{tool} -u -z failed ({status})"));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn source_name(opts: &Options) -> String {
    match &opts.source.user {
        Some(u) => format!("{u}@{}:{}", opts.source.host, opts.source.dir),
        None => format!("{}:{}", opts.source.host, opts.source.dir),
    }
}

/// Whether mount(8) started us (through mount.fuse3 and its `sh -c`), from an fstab line or a
/// `mount -t fuse...` command. mount.fuse3 then appends `dev,suid` to the options unless they
/// say `nodev`/`nosuid`, while mount(8) itself never passes `suid` or `dev` (they are its
/// defaults): those two are never the user's, and a server's setuid files and device nodes
/// must not act as such here.
/// Call it before going to the background: the daemon's parent is our own first process.
pub fn started_by_mount8() -> bool {
    let parent_of = |pid: &str| -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (in parentheses) may hold spaces: fields follow the last ')'.
        let after = &stat[stat.rfind(')')? + 2..];
        after.split(' ').nth(1).map(str::to_string)
    };
    let comm = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default()
    };
    let mut pid = "self".to_string();
    // Our parent, or the shell's when `sh -c` did not exec us.
    for _ in 0..2 {
        let Some(parent) = parent_of(&pid) else {
            return false;
        };
        match comm(&parent).as_str() {
            "mount" => return true,
            "sh" | "dash" | "bash" => pid = parent,
            _ => return false,
        }
    }
    false
}

fn mount_options(opts: &Options) -> Vec<MountOption> {
    let mut options = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| source_name(opts))),
        // fuser drops Subtype when it mounts with mount(2) itself; as a raw option it reaches the kernel.
        MountOption::CUSTOM(format!(
            "subtype={}",
            opts.subtype.as_deref().unwrap_or("sftpmount")
        )),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.retain(|o| {
        !opts.kernel_flags.iter().any(|k| {
            matches!(
                (o, k),
                (MountOption::NoDev, MountOption::Dev) | (MountOption::NoSuid, MountOption::Suid)
            )
        })
    });
    for flag in &opts.kernel_flags {
        if !options.contains(flag) {
            options.push(flag.clone());
        }
    }
    if opts.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    options.push(if opts.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    if opts.auto_unmount {
        options.push(MountOption::AutoUnmount);
    }
    if let Some(max_read) = opts.max_read {
        options.push(MountOption::CUSTOM(format!("max_read={max_read}")));
    }
    options
}

/// Why a `~` path could not be expanded.
enum HomeError {
    Server(crate::sftp::SftpError),
    /// `~user` on a server that cannot tell users' homes.
    Unsupported(String),
}

/// `dir` with a leading `~` or `~user` expanded as `sftp host:~/dir` expands it: by the
/// server (expand-path@openssh.com, OpenSSH 8.7), else from the user's home (home-directory,
/// OpenSSH 9.1), else, for the login's own `~`, from the directory the server starts in (its
/// home, on OpenSSH and most servers). `None`: no `~` to expand.
async fn home_path(
    session: &crate::sftp::Session,
    dir: &str,
    login: &str,
) -> Result<Option<Vec<u8>>, HomeError> {
    let Some(after) = dir.strip_prefix('~') else {
        return Ok(None);
    };
    let features = session.features();
    if features.expand_path {
        let expanded = session.expand_path(dir.as_bytes()).await;
        return expanded
            .map(|p| Some(p.to_vec()))
            .map_err(HomeError::Server);
    }
    let (user, rest) = after.split_once('/').unwrap_or((after, ""));
    let home = if features.home_directory {
        let user = if user.is_empty() { login } else { user };
        let home = session.home_directory(user.as_bytes()).await;
        home.map_err(HomeError::Server)?.to_vec()
    } else if user.is_empty() {
        b".".to_vec()
    } else {
        return Err(HomeError::Unsupported(format!("~{user}")));
    };
    let mut path = home;
    if !rest.is_empty() {
        path.push(b'/');
        path.extend_from_slice(rest.as_bytes());
    }
    Ok(Some(path))
}

/// A link this far gets 16 channels over 2 connections, unless max_conns= or sftp_channels=
/// says otherwise (see [`FarLink`]): 15 data channels of 2 MiB windows keep 100 MB/s in flight
/// at 300 ms. Nearer, one connection's 7 carry 70 MB/s or more, more than most uplinks that
/// far, and a second connection is one more flow at a slow link's bottleneck.
const FAR_RTT: std::time::Duration = std::time::Duration::from_millis(200);

async fn connect(opts: &Options) -> anyhow::Result<Core> {
    let target = Arc::new(Target::resolve(&crate::ssh::Wanted {
        host: opts.source.host.clone(),
        user: opts.source.user.clone(),
        ssh_options: opts.ssh_options.clone(),
        ssh_config: opts.ssh_config.clone(),
        password_stdin: opts.password_stdin,
    })?);
    let settings = RemoteSettings {
        request_timeout: opts.request_timeout,
        // Every connection carries at least one channel.
        sftp_channels: opts.sftp_channels.max(opts.max_conns),
        reconnect: opts.reconnect,
        reconnect_wait: opts.reconnect_wait,
        far: (!opts.channels_chosen).then_some(FarLink {
            rtt: FAR_RTT,
            connections: 2,
            channels: 16,
        }),
    };
    let login = target.user.clone();
    let connector = SshConnector::new(target, opts.max_conns);
    let remote = Remote::connect(Arc::new(connector), settings)
        .await
        .map_err(|e| match e {
            ConnectError::Ssh(e) => anyhow!(e),
            other => anyhow!(other),
        })?;
    let first = remote
        .current()
        .await
        .context("the connection was lost at once")?;
    let dir = if opts.source.dir.is_empty() {
        "~"
    } else {
        opts.source.dir.as_str()
    };
    let missing = |e: crate::sftp::SftpError| {
        anyhow!(
            "remote directory {dir} on {}: {}",
            opts.source.host,
            std::io::Error::from_raw_os_error(e.errno())
        )
    };
    let session = first.meta();
    let root = match home_path(session, dir, &login).await {
        Ok(Some(expanded)) => session.realpath(&expanded).await.map_err(missing)?,
        Ok(None) => session.realpath(dir.as_bytes()).await.map_err(missing)?,
        Err(HomeError::Server(e)) => return Err(missing(e)),
        Err(HomeError::Unsupported(user)) => bail!(
            "remote directory {dir} on {}: the server cannot expand {user} (it offers \
             neither expand-path@openssh.com nor home-directory); give the directory's full path",
            opts.source.host
        ),
    };
    let attrs = session.stat(&root).await.map_err(missing)?;
    let name_max = match session.statvfs(&root).await {
        Ok(vfs) if vfs.namemax > 0 => vfs.namemax.min(4096) as usize,
        _ => 255,
    };
    if attrs.permissions.unwrap_or(0) & libc::S_IFMT != libc::S_IFDIR {
        bail!(
            "remote path {dir} on {} is not a directory",
            opts.source.host
        );
    }
    // idmap=user maps the login's ids, as sshfs does: the owner of the directory a session
    // starts in (the login's home), not of the one mounted.
    let login_ids = session.stat(b".").await.ok().and_then(|home| home.uid_gid);
    let remote_ids = login_ids.or(attrs.uid_gid).unwrap_or((0, 0));
    // SAFETY: getuid/getgid cannot fail.
    let local_ids = unsafe { (libc::getuid(), libc::getgid()) };
    let (uids, gids) = match opts.idmap {
        IdMap::User => (
            vec![(remote_ids.0, local_ids.0)],
            vec![(remote_ids.1, local_ids.1)],
        ),
        IdMap::File => (
            read_id_file(opts.uidfile.as_deref(), IdKind::User)?,
            read_id_file(opts.gidfile.as_deref(), IdKind::Group)?,
        ),
        IdMap::Names => ids_by_name(session, opts).await?,
        IdMap::None => (Vec::new(), Vec::new()),
    };
    let ids = IdMapping {
        uid: opts.uid,
        gid: opts.gid,
        uids,
        gids,
        unmapped: (matches!(opts.idmap, IdMap::File | IdMap::Names) && opts.nomap_error)
            .then_some(NOBODY),
        umask: opts.umask,
    };
    Ok(Core::new(
        remote.clone(),
        &first,
        Bytes::copy_from_slice(&root),
        CoreConfig {
            ids,
            write_buffer: opts.write_buffer,
            write_buffer_total: opts.write_buffer_total,
            short_writes: opts.short_writes,
            cache: opts.cache_config(),
            keep_cache: opts.keep_cache,
            dir_prefetch: opts.dir_prefetch,
            readahead: opts.readahead,
            sync_writes: opts.sync_writes,
            symlinks: SymlinkMode {
                follow: opts.follow_symlinks,
                transform: opts.transform_symlinks,
                contain: opts.contain_symlinks,
            },
            hardlinks: opts.hardlinks,
            rename_failure_is_exdev: opts.rename_failure_is_exdev,
            name_max,
            // Only root may give a file away (chown); others' files stay the login's.
            owner_from_caller: opts.allow_other && login_ids.is_some_and(|(uid, _)| uid == 0),
        },
    ))
}

/// The overflow ids (nobody, nogroup): what idmap=file with nomap=error shows for an id
/// without a mapping (sshfs fails the stat instead, which fails whole listings).
const NOBODY: (u32, u32) = (65534, 65534);

#[derive(Clone, Copy)]
enum IdKind {
    User,
    Group,
}

/// An idmap=file file: `name:remote id` lines; each name's local id comes from the local
/// passwd or group database. A name unknown here is skipped with a warning.
/// Ids asked of the server by idmap=names: every id below this, in requests of
/// [`IDS_PER_REQUEST`] (sftp-server takes messages of at most 256 KiB).
const NAMED_IDS: u32 = 65536;
const IDS_PER_REQUEST: u32 = 16384;

/// idmap=names: the server's user and group names for its ids (those below [`NAMED_IDS`]),
/// each remote id whose name exists here mapped to the local id of that name, as NFSv4 maps
/// owners; asked once, at mount, all requests in one round trip.
async fn ids_by_name(
    session: &crate::sftp::Session,
    opts: &Options,
) -> anyhow::Result<(Vec<(u32, u32)>, Vec<(u32, u32)>)> {
    if !session.features().users_groups_by_id {
        bail!(
            "idmap=names: {} does not tell its user and group names \
             (users-groups-by-id@openssh.com, OpenSSH 9.1 and later); use idmap=file with \
             uidfile= and gidfile=",
            opts.source.host
        );
    }
    let batches: Vec<Vec<u32>> = (0..NAMED_IDS / IDS_PER_REQUEST)
        .map(|b| (b * IDS_PER_REQUEST..(b + 1) * IDS_PER_REQUEST).collect())
        .collect();
    let asked: Vec<_> = batches
        .iter()
        .map(|ids| session.users_groups_by_id(ids, ids))
        .collect();
    let (mut uids, mut gids) = (Vec::new(), Vec::new());
    for (ids, reply) in batches.iter().zip(asked) {
        let names = reply
            .await
            .with_context(|| format!("idmap=names: {} did not name its ids", opts.source.host))?;
        for (kind, names, pairs) in [
            (IdKind::User, &names.users, &mut uids),
            (IdKind::Group, &names.groups, &mut gids),
        ] {
            for (&remote, name) in ids.iter().zip(names) {
                if let Ok(name) = std::str::from_utf8(name)
                    && !name.is_empty()
                    && let Some(local) = local_id(name, kind)
                {
                    pairs.push((remote, local));
                }
            }
        }
    }
    Ok((uids, gids))
}

fn read_id_file(path: Option<&Path>, kind: IdKind) -> anyhow::Result<Vec<(u32, u32)>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read idmap file {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(':')
            .and_then(|(name, id)| Some((name, id.trim().parse::<u32>().ok()?)));
        let Some((name, remote)) = parsed else {
            bail!(
                "{} line {}: expected name:id, found '{line}'",
                path.display(),
                n + 1
            );
        };
        match local_id(name, kind) {
            Some(local) => pairs.push((remote, local)),
            None => warn!(
                "{} line {}: no local {} named {name}; its id {remote} is not mapped",
                path.display(),
                n + 1,
                match kind {
                    IdKind::User => "user",
                    IdKind::Group => "group",
                }
            ),
        }
    }
    Ok(pairs)
}

fn local_id(name: &str, kind: IdKind) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam/getgrnam return null or a pointer into static storage, read at once.
    unsafe {
        match kind {
            IdKind::User => {
                let pw = libc::getpwnam(name.as_ptr());
                (!pw.is_null()).then(|| (*pw).pw_uid)
            }
            IdKind::Group => {
                let gr = libc::getgrnam(name.as_ptr());
                (!gr.is_null()).then(|| (*gr).gr_gid)
            }
        }
    }
}
