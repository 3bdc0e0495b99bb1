//! Test harness for integration tests: real parts, as users run them.
//!
//! - [`Sshd`] starts a real OpenSSH `sshd` (with the real `sftp-server`) on 127.0.0.1 on a free
//!   port, with throwaway host and user keys in a fresh temp directory, and a `remote_root`
//!   directory that tests mount and inspect directly from the "server" side.
//! - [`Mount`] mounts that directory through FUSE with the built `sftpmount` binary (which
//!   daemonizes) and unmounts it on drop, even when the test panicked.
//! - Helpers: running commands with a timeout, deterministic pseudo-random files, file comparison.
//!
//! Nothing is skipped: when sshd or /dev/fuse is missing the test panics and says to run
//! `./scripts/test`, which installs them. Only processes started here are ever signalled, by pid.

#![allow(dead_code)]

pub mod local_server;
pub mod proxy;

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sftpmount");
/// OpenSSH's server (Debian package openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";
/// OpenSSH's SFTP server binary (Debian package openssh-sftp-server).
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// Names another SFTP server for the tests' sshd (`scripts/test` runs the POSIX and programs
/// tests again with Green End's `/usr/libexec/gesftpserver`).
pub const SFTP_SERVER_ENV: &str = "SFTPMOUNT_TEST_SFTP_SERVER";

/// Whether the server the tests run against can set a symlink's own times and mode
/// (OpenSSH's lsetstat@openssh.com). Green End's cannot: EOPNOTSUPP, as its documented limit.
pub fn server_sets_symlink_attributes() -> bool {
    !default_sftp_server().contains("gesftpserver")
}

/// The server sshd runs when a test does not choose one: [`SFTP_SERVER`] unless
/// [`SFTP_SERVER_ENV`] names another.
pub fn default_sftp_server() -> String {
    std::env::var(SFTP_SERVER_ENV).unwrap_or_else(|_| SFTP_SERVER.to_string())
}
/// OpenSSH's key generator (Debian package openssh-client).
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
/// User that [`ensure_password_user`] creates for password-authentication tests.
pub const PASSWORD_USER: &str = "sftpmount-test";

/// How long a run of the binary (mounting included) may take.
pub const BIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command started by [`run`] or [`try_run`] may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long sshd may take to accept connections.
const SSHD_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop for Mount` waits for the daemon to exit after unmounting.
const DROP_DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Mount::unmount`] waits for the daemon to exit (it must flush everything first).
const UNMOUNT_DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

const SETUP_HINT: &str = "run ./scripts/test, which installs the test dependencies \
     (openssh-server, openssh-client, fuse3, ...) and then runs the tests";

fn require(path: &str, what: &str) {
    if !Path::new(path).exists() {
        panic!("{what} not found at {path}: {SETUP_HINT}");
    }
}

/// Panics with a clear message unless /dev/fuse exists.
pub fn require_fuse() {
    require("/dev/fuse", "the FUSE device");
}

// ---------------------------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------------------------

/// How to configure the throwaway sshd.
#[derive(Clone, Debug, Default)]
pub struct SshdOptions {
    /// `PasswordAuthentication yes` (otherwise public keys only). See [`ensure_password_user`].
    pub password_auth: bool,
    /// The `Subsystem sftp` command; default [`default_sftp_server`]. E.g. `"/usr/lib/openssh/sftp-server
    /// -l DEBUG3"` or a wrapper script.
    pub sftp_server: Option<String>,
    /// Extra sshd_config lines, written before the harness's own lines. sshd takes the first
    /// value it reads for most keywords, so these override the defaults (e.g. `MaxSessions 2`).
    pub extra_config: Vec<String>,
    /// No `Subsystem sftp` line: sshd refuses the subsystem, as a server with SFTP turned off.
    pub without_sftp: bool,
}

/// A real OpenSSH sshd on 127.0.0.1, with throwaway keys. Killed (by pid) on drop.
pub struct Sshd {
    child: Option<Child>,
    port: u16,
    opts: SshdOptions,
    /// Keys, config, known_hosts, log and the client's HOME.
    dir: TempDir,
    /// The directory tests mount.
    remote: TempDir,
    remote_root: PathBuf,
    host_key_pub: String,
}

impl Sshd {
    /// Starts sshd with public-key authentication only.
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    /// Starts sshd with `PasswordAuthentication yes` as well.
    pub fn start_with_password_auth() -> Sshd {
        Sshd::start_with(SshdOptions {
            password_auth: true,
            ..SshdOptions::default()
        })
    }

    /// Starts sshd on a free port and returns once it accepts connections.
    pub fn start_with(opts: SshdOptions) -> Sshd {
        require(SSHD, "OpenSSH's sshd");
        require(SSH_KEYGEN, "ssh-keygen");
        if opts.sftp_server.is_none() {
            require(&default_sftp_server(), "the SFTP server");
        }
        ensure_privsep_dir();

        let dir = tempfile::Builder::new()
            .prefix("sftpmount-sshd-")
            .tempdir()
            .expect("create sshd temp dir");
        let remote = tempfile::Builder::new()
            .prefix("sftpmount-remote-")
            .tempdir()
            .expect("create remote temp dir");
        let remote_root = remote
            .path()
            .canonicalize()
            .expect("canonicalize remote root");
        keygen(&dir.path().join("host_ed25519"), "sftpmount-test-host");
        keygen(&dir.path().join("id_ed25519"), "sftpmount-test-user");
        let host_key_pub = fs::read_to_string(dir.path().join("host_ed25519.pub"))
            .expect("read host key")
            .trim()
            .to_string();
        let user_pub = fs::read(dir.path().join("id_ed25519.pub")).expect("read user key");
        let authorized_keys = dir.path().join("authorized_keys");
        fs::write(&authorized_keys, user_pub).expect("write authorized_keys");
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o600))
            .expect("chmod authorized_keys");
        fs::create_dir(dir.path().join("home")).expect("create client home");

        let mut sshd = Sshd {
            child: None,
            port: 0,
            opts,
            dir,
            remote,
            remote_root,
            host_key_pub,
        };
        let mut failures = Vec::new();
        for _ in 0..10 {
            let port = free_port();
            match sshd.launch(port) {
                Ok(()) => return sshd,
                // Most likely someone else took the port between our probe and sshd's bind.
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!("sshd did not start:\n{}", failures.join("\n"));
    }

    /// Writes the config for `port` and starts sshd. Err when sshd exited early (typically: the
    /// port was taken); panics when sshd neither listens nor exits within the timeout.
    fn launch(&mut self, port: u16) -> Result<(), String> {
        assert!(self.child.is_none(), "sshd already running");
        fs::write(self.config_path(), self.config(port)).expect("write sshd_config");
        fs::write(
            self.known_hosts_path(),
            format!("[127.0.0.1]:{port} {}\n", self.host_key_pub),
        )
        .expect("write known_hosts");
        let log = File::create(self.log_path()).expect("create sshd log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup sshd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + SSHD_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for sshd") {
                return Err(format!("sshd exited ({status}): {}", self.log()));
            }
            // The listener must be sshd's own, not another process's that took the port.
            if owns_listener(child.id(), port)
                && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            {
                self.child = Some(child);
                self.port = port;
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sshd did not accept connections on {addr} within {SSHD_READY_TIMEOUT:?}; \
                     its stderr:\n{}",
                    self.log()
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    fn config(&self, port: u16) -> String {
        let dir = self.dir.path().display();
        let mut cfg =
            String::from("# Throwaway sshd for sftpmount's tests (tests/common/mod.rs)\n");
        for line in &self.opts.extra_config {
            cfg.push_str(line);
            cfg.push('\n');
        }
        let password = if self.opts.password_auth { "yes" } else { "no" };
        let sftp_server = self
            .opts
            .sftp_server
            .clone()
            .unwrap_or_else(default_sftp_server);
        let cert = self.dir.path().join("host_ed25519-cert.pub");
        let certificate = if cert.exists() {
            format!("HostCertificate {}\n", cert.display())
        } else {
            String::new()
        };
        let subsystem = if self.opts.without_sftp {
            String::new()
        } else {
            format!("Subsystem sftp {sftp_server}\n")
        };
        cfg.push_str(&format!(
            "ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {dir}/host_ed25519\n\
             {certificate}\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile none\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin yes\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication {password}\n\
             KbdInteractiveAuthentication no\n\
             PermitEmptyPasswords no\n\
             PrintMotd no\n\
             {subsystem}\
             LogLevel ERROR\n"
        ));
        cfg
    }

    /// Signs the host key with the authority `ca` (`ssh-keygen -s CA -h -I test-host ARGS`, e.g.
    /// `-n PRINCIPALS`, `-V VALIDITY`) and restarts sshd presenting that host certificate.
    pub fn certify_host_key(&mut self, ca: &Path, args: &[&str]) {
        let host_pub = self.dir.path().join("host_ed25519.pub");
        let mut sign = vec!["-q", "-s", ca.to_str().unwrap(), "-h", "-I", "test-host"];
        sign.extend(args);
        sign.push(host_pub.to_str().unwrap());
        run(SSH_KEYGEN, &sign, "/");
        self.restart();
    }

    /// Whether OpenSSH's own client logs in with `known_hosts` and StrictHostKeyChecking=yes
    /// (no config file, no agent, nothing of the machine's): what our checks must agree with.
    pub fn ssh_client_accepts(&self, known_hosts: &Path) -> bool {
        let out = output_with_timeout(
            Command::new("ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                ])
                .arg("-i")
                .arg(self.user_key_path())
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "GlobalKnownHostsFile=/dev/null"])
                .args(["-o", "StrictHostKeyChecking=yes", "-p"])
                .arg(self.port.to_string())
                .args(["root@127.0.0.1", "true"])
                .env_remove("SSH_AUTH_SOCK"),
            None,
            Duration::from_secs(30),
        );
        out.status.success()
    }

    /// Kills the listening sshd (by its pid) and waits for it. Sessions already connected live
    /// on in their own processes; see [`Sshd::kill_connections`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts sshd again on the same port, with the same keys and remote root (after
    /// [`Sshd::stop`]; stops it first if it is running).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + SSHD_READY_TIMEOUT;
        loop {
            match self.launch(self.port) {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => {
                    panic!("sshd did not restart on port {}: {why}", self.port)
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Kills (SIGKILL, by pid) every process descended from our sshd: the per-connection sshd
    /// processes and their sftp-servers. Every client connection drops at once. Returns how
    /// many processes were killed.
    pub fn kill_connections(&self) -> usize {
        let Some(pid) = self.pid() else { return 0 };
        let children = children_by_parent();
        let mut pending = vec![pid];
        let mut killed = 0;
        while let Some(parent) = pending.pop() {
            for &child in children.get(&parent).into_iter().flatten() {
                pending.push(child);
                if send_signal(child, libc::SIGKILL) {
                    killed += 1;
                }
            }
        }
        killed
    }

    /// The pid of the listening sshd, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host's public key line, e.g. `ssh-ed25519 AAAA... sftpmount-test-host`.
    pub fn host_key_pub(&self) -> &str {
        &self.host_key_pub
    }

    /// The host's private key (sshd's `HostKey`).
    pub fn host_key_path(&self) -> PathBuf {
        self.dir.path().join("host_ed25519")
    }

    /// The user's private key (unencrypted ed25519), authorized for every user.
    pub fn user_key_path(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// sshd's `AuthorizedKeysFile` (one file for all users).
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    /// A known_hosts file with the single line `[127.0.0.1]:PORT <host key>`.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    /// What sshd printed on stderr so far (LogLevel ERROR).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// An empty directory that [`Mount`] passes to the binary as `HOME`, so that the tests do
    /// not read or write the real ~/.ssh.
    pub fn client_home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The directory tests mount (absolute, canonical). Check server-side content here.
    pub fn remote_root(&self) -> PathBuf {
        self.remote_root.clone()
    }

    /// `root@127.0.0.1:<remote_root>`.
    pub fn source(&self) -> String {
        self.source_as("root", &self.remote_root)
    }

    /// `<user>@127.0.0.1:<dir>`.
    pub fn source_as(&self, user: &str, dir: &Path) -> String {
        format!("{user}@127.0.0.1:{}", dir.display())
    }

    /// `-p PORT -o IdentityFile=<key> -o UserKnownHostsFile=<known_hosts>
    /// -o StrictHostKeyChecking=yes`.
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.port.to_string(),
            "-o".into(),
            format!("IdentityFile={}", self.user_key_path().display()),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
        ]
    }

    /// [`Sshd::ssh_opts`] without the IdentityFile (for password or host-key tests).
    pub fn ssh_opts_without_key(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.port.to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
        ]
    }

    /// Gives the remote root to `user` (for tests that log in as another user).
    pub fn chown_remote_root(&self, user: &str) {
        run(
            "chown",
            &[OsStr::new(user), self.remote_root.as_os_str()],
            "/",
        );
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An ssh-agent of our own, holding the user key; killed by its pid on drop.
pub struct SshAgent {
    pid: u32,
    pub socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SshAgent {
    pub fn start(key: &std::path::Path) -> SshAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let out = run(
            "ssh-agent",
            &[OsStr::new("-a"), socket.as_os_str(), OsStr::new("-s")],
            "/",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .split("SSH_AGENT_PID=")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.parse().ok())
            .expect("agent pid");
        let agent = SshAgent {
            pid,
            socket,
            _dir: dir,
        };
        let out = output_with_timeout(
            Command::new("ssh-add")
                .env("SSH_AUTH_SOCK", &agent.socket)
                .arg(key),
            None,
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "ssh-add: {out:?}");
        agent
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        send_signal(self.pid, libc::SIGTERM);
    }
}

/// Creates an unencrypted ed25519 key pair at `path` and `path.pub`.
pub fn keygen(path: &Path, comment: &str) {
    run(
        SSH_KEYGEN,
        &[
            OsStr::new("-q"),
            OsStr::new("-t"),
            OsStr::new("ed25519"),
            OsStr::new("-N"),
            OsStr::new(""),
            OsStr::new("-C"),
            OsStr::new(comment),
            OsStr::new("-f"),
            path.as_os_str(),
        ],
        "/",
    );
}

/// Makes sure the local user `user` exists (created with a home and /bin/sh); returns its uid
/// and gid.
pub fn ensure_user(user: &str) -> (u32, u32) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(user).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let out = try_run(
            "useradd",
            &["--create-home", "--shell", "/bin/sh", user],
            "/",
        );
        // Another test process may have created it meanwhile.
        assert!(
            out.status.success() || id("-u").is_some(),
            "useradd {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (id("-u").expect("uid"), id("-g").expect("gid"))
}

/// Makes sure the local user `user` exists (created with a home and /bin/sh) and has the
/// password `password`, for tests of password authentication (see
/// [`Sshd::start_with_password_auth`], [`PASSWORD_USER`], [`Sshd::chown_remote_root`]).
pub fn ensure_password_user(user: &str, password: &str) {
    ensure_user(user);
    let input = format!("{user}:{password}\n");
    let mut last = None;
    for _ in 0..20 {
        let out = output_with_timeout(
            &mut Command::new("chpasswd"),
            Some(input.as_bytes()),
            RUN_TIMEOUT,
        );
        if out.status.success() {
            return;
        }
        // /etc/shadow may be locked by a concurrent chpasswd.
        last = Some(out);
        sleep(Duration::from_millis(100));
    }
    let out = last.expect("chpasswd ran");
    panic!("chpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// sshd refuses to start without its privilege separation directory.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create /run/sshd: {e}"));
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod /run/sshd");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4).
fn owns_listener(pid: u32, port: u16) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let listening = *fields.get(3)? == "0A";
            let this_port = u16::from_str_radix(local_port, 16).ok()? == port;
            let inode = fields.get(9)?;
            (listening && this_port).then(|| format!("socket:[{inode}]"))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == OsStr::new(inode))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Mount
// ---------------------------------------------------------------------------------------------

/// A live `fuse.sftpmount` mount made by the binary under test, unmounted on drop.
#[derive(Debug)]
pub struct Mount {
    mountpoint: PathBuf,
    /// The temp dir that is the mount point; removed on drop once unmounted.
    dir: Option<TempDir>,
    pid: Option<u32>,
    output: Output,
    cleaned: bool,
}

/// What [`Mount::unmount`] saw.
#[derive(Debug)]
pub struct Unmount {
    /// The output of `umount <mountpoint>`.
    pub umount: Output,
    /// Whether the daemon exited (within 60 s) after the umount.
    pub daemon_exited: bool,
}

impl Unmount {
    /// `umount` succeeded and the daemon exited.
    pub fn success(&self) -> bool {
        self.umount.status.success() && self.daemon_exited
    }
}

impl Mount {
    /// Mounts `sshd.remote_root()` as root with key authentication
    /// (`sftpmount <sshd.source()> <mountpoint> <sshd.ssh_opts()...> <extra_args...>`); panics
    /// (with the binary's stderr) if the binary fails.
    pub fn new(sshd: &Sshd, extra_args: &[&str]) -> Mount {
        Mount::try_new(sshd, extra_args).unwrap_or_else(|out| panic_mount_failed(&out))
    }

    /// Like [`Mount::new`], with another source (see [`Sshd::source_as`]).
    pub fn with_source(sshd: &Sshd, source: &str, extra_args: &[&str]) -> Mount {
        let mut args = sshd.ssh_opts();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Mount::try_with(sshd, source, &args, None).unwrap_or_else(|out| panic_mount_failed(&out))
    }

    /// Like [`Mount::new`], for tests that expect failure: Err with the binary's output when it
    /// exits non-zero.
    pub fn try_new(sshd: &Sshd, extra_args: &[&str]) -> Result<Mount, Output> {
        let mut args = sshd.ssh_opts();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        Mount::try_with(sshd, &sshd.source(), &args, None)
    }

    /// Runs `sftpmount <source> <mountpoint> <args...>` on a fresh temp mount point with
    /// `HOME=sshd.client_home()`, no ssh-agent, and `stdin` (or /dev/null) as standard input.
    /// `args` are all the options: start from [`Sshd::ssh_opts`], or from
    /// [`Sshd::ssh_opts_without_key`] for password tests (the user key is authorized for every
    /// user). Err with the output when the binary exits non-zero; panics when it exits 0 but no
    /// `fuse.sftpmount` mount is live at the mount point.
    pub fn try_with<S: AsRef<OsStr>>(
        sshd: &Sshd,
        source: &str,
        args: &[S],
        stdin: Option<&[u8]>,
    ) -> Result<Mount, Output> {
        Self::try_with_env(sshd, source, args, stdin, &[])
    }

    /// [`Mount::try_with`] with extra environment variables for the binary (SSH_AUTH_SOCK,
    /// SSH_ASKPASS, ...).
    pub fn try_with_env<S: AsRef<OsStr>>(
        sshd: &Sshd,
        source: &str,
        args: &[S],
        stdin: Option<&[u8]>,
        envs: &[(&str, &OsStr)],
    ) -> Result<Mount, Output> {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("sftpmount-mnt-")
            .tempdir()
            .expect("create mount point");
        let mountpoint = dir.path().canonicalize().expect("canonicalize mount point");
        let mut cmd = sftpmount_command();
        cmd.env("HOME", sshd.client_home())
            .envs(envs.iter().copied())
            .arg(source)
            .arg(&mountpoint)
            .args(args);
        let output = output_with_timeout(&mut cmd, stdin, BIN_TIMEOUT);
        let mut mount = Mount {
            pid: find_daemon_pid(&mountpoint),
            mountpoint,
            dir: Some(dir),
            output,
            cleaned: false,
        };
        if !mount.output.status.success() {
            let output = mount.output.clone();
            // Drop unmounts and reaps whatever a failed run may have left behind.
            drop(mount);
            return Err(output);
        }
        match mount_info(&mount.mountpoint) {
            // fuse.sftpmount, or the subtype= a test asked for.
            Some(info) if info.fs_type.starts_with("fuse.") => {}
            other => panic!(
                "sftpmount exited 0 but no fuse mount is live at {} (found: {other:?}); \
                 stderr: {}",
                mount.mountpoint.display(),
                String::from_utf8_lossy(&mount.output.stderr)
            ),
        }
        if mount.pid.is_none() {
            mount.pid = find_daemon_pid(&mount.mountpoint);
        }
        Ok(mount)
    }

    /// A mount that reaches `sshd` through the delay line of [`proxy`]: `delay_ms` each way
    /// (the round trip gains twice that). `extra` are more options for the binary.
    pub fn far(sshd: &Sshd, delay_ms: u64, extra: &[&str]) -> Mount {
        Mount::far_with_link(sshd, delay_ms, extra).0
    }

    /// [`Mount::far`], with the [`proxy::Link`] that cuts or black-holes the connection.
    pub fn far_with_link(
        sshd: &Sshd,
        delay_ms: u64,
        extra: &[&str],
    ) -> (Mount, std::sync::Arc<proxy::Link>) {
        let shape = proxy::Shape::delay(Duration::from_millis(delay_ms));
        Mount::shaped(sshd, shape, extra)
    }

    /// A mount that reaches `sshd` through a delay line of any [`proxy::Shape`] (a rate
    /// limit too), with its [`proxy::Link`].
    pub fn shaped(
        sshd: &Sshd,
        shape: proxy::Shape,
        extra: &[&str],
    ) -> (Mount, std::sync::Arc<proxy::Link>) {
        let (port, link) =
            proxy::start_shaped(0, sshd.port(), shape).expect("start the delay line");
        let mut known = fs::OpenOptions::new()
            .append(true)
            .open(sshd.known_hosts_path())
            .expect("open known_hosts");
        writeln!(known, "[127.0.0.1]:{port} {}", sshd.host_key_pub().trim())
            .expect("write known_hosts");
        let mut args = sshd.ssh_opts();
        args[1] = port.to_string();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mount = Mount::try_with(sshd, &sshd.source(), &args, None)
            .unwrap_or_else(|out| panic!("far mount failed: {out:?}"));
        (mount, link)
    }

    /// The mount point (absolute, canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// What the mounting run of the binary printed and returned.
    pub fn mount_output(&self) -> &Output {
        &self.output
    }

    /// The mount's line in /proc/self/mountinfo, if still mounted.
    pub fn info(&self) -> Option<MountInfo> {
        mount_info(&self.mountpoint)
    }

    /// The daemon serving this mount: the process running [`BIN`] with the mount point among
    /// its arguments. Panics if there is none.
    pub fn daemon_pid(&self) -> u32 {
        self.pid.unwrap_or_else(|| {
            panic!(
                "no {BIN} process with {} in its arguments",
                self.mountpoint.display()
            )
        })
    }

    /// Whether the daemon is still running (not exited, not a zombie).
    pub fn daemon_alive(&self) -> bool {
        self.pid
            .is_some_and(|pid| is_our_daemon(pid, &self.mountpoint))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the daemon, if it is still ours. Returns whether
    /// it was sent.
    pub fn signal_daemon(&self, signal: i32) -> bool {
        match self.pid {
            Some(pid) if is_our_daemon(pid, &self.mountpoint) => send_signal(pid, signal),
            _ => false,
        }
    }

    /// Waits up to `timeout` for the daemon to exit; returns whether it did.
    pub fn wait_daemon_exit(&self, timeout: Duration) -> bool {
        wait_until(timeout, || !self.daemon_alive())
    }

    /// The daemon's peak resident memory (`VmHWM` in /proc/PID/status), in KiB.
    pub fn daemon_vm_hwm_kib(&self) -> u64 {
        proc_status_kib(self.daemon_pid(), "VmHWM")
            .unwrap_or_else(|| panic!("no VmHWM for daemon pid {}", self.daemon_pid()))
    }

    /// The daemon's current resident memory (`VmRSS`), in KiB.
    pub fn daemon_vm_rss_kib(&self) -> u64 {
        proc_status_kib(self.daemon_pid(), "VmRSS")
            .unwrap_or_else(|| panic!("no VmRSS for daemon pid {}", self.daemon_pid()))
    }

    /// `umount <mountpoint>`, then waits (up to 60 s) for the daemon to exit, and reports both.
    /// Whatever is left (still mounted, daemon still running) is then cleaned up as Drop does.
    pub fn unmount(mut self) -> Unmount {
        let umount = output_with_timeout(
            Command::new("umount").arg(&self.mountpoint),
            None,
            BIN_TIMEOUT,
        );
        let daemon_exited = self.wait_daemon_exit(UNMOUNT_DAEMON_TIMEOUT);
        self.cleanup();
        Unmount {
            umount,
            daemon_exited,
        }
    }

    /// Unmounts (umount, falling back to lazy umount), waits for the daemon and kills it (by
    /// pid) if it would not exit, and removes the mount point if nothing is mounted there any
    /// more. Never panics: it runs in Drop, possibly while a test unwinds.
    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let mnt = self.mountpoint.clone();
        if mount_info(&mnt).is_some() {
            quiet(Command::new("umount").arg(&mnt), Duration::from_secs(10));
        }
        if mount_info(&mnt).is_some() {
            quiet(
                Command::new("umount").arg("-l").arg(&mnt),
                Duration::from_secs(5),
            );
        }
        if mount_info(&mnt).is_some() {
            detach(&mnt);
        }
        if !self.wait_daemon_exit(DROP_DAEMON_TIMEOUT)
            && let Some(pid) = self.pid
        {
            eprintln!(
                "sftpmount daemon {pid} for {} did not exit: killing it",
                mnt.display()
            );
            if self.signal_daemon(libc::SIGKILL) {
                self.wait_daemon_exit(Duration::from_secs(5));
            }
        }
        if mount_info(&mnt).is_some() {
            detach(&mnt);
        }
        if mount_info(&mnt).is_some() {
            // Never let TempDir's cleanup recurse into a live mount: leave the directory.
            eprintln!("{} is still mounted: leaving it", mnt.display());
            std::mem::forget(self.dir.take());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn panic_mount_failed(out: &Output) -> ! {
    panic!(
        "sftpmount failed to mount ({}); stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a cleanup command, ignoring its outcome.
fn quiet(cmd: &mut Command, timeout: Duration) {
    let _ = exec(cmd, None, timeout);
}

/// umount2(MNT_DETACH): no path canonicalization, so it cannot hang on a wedged daemon.
fn detach(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// The one line a refused mount printed (exit status 1, one line on stderr).
pub fn refusal(out: Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    text
}

/// Removes a file the test made outside its own directories when the test ends, also when it
/// fails midway.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Unmounts a mount made with mount(8) when the test ends, also when it fails midway.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if mount_info(&self.0).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    /// e.g. `fuse.sftpmount`.
    pub fs_type: String,
    /// e.g. `root@127.0.0.1:/tmp/...`.
    pub source: String,
    /// Per-mount options, e.g. `rw,nosuid,nodev,relatime`.
    pub mount_options: String,
    /// Superblock options, e.g. `rw,user_id=0,group_id=0`.
    pub super_options: String,
    /// `major:minor` of the mounted filesystem.
    pub dev: String,
}

/// The topmost mount at `path` (compared as given: pass a canonical path), if any.
pub fn mount_info(path: &Path) -> Option<MountInfo> {
    let table = fs::read("/proc/self/mountinfo").ok()?;
    table
        .split(|&b| b == b'\n')
        .filter_map(parse_mountinfo_line)
        .rfind(|info| info.mount_point == path)
}

fn parse_mountinfo_line(line: &[u8]) -> Option<MountInfo> {
    let line = String::from_utf8_lossy(line);
    let (head, tail) = line.split_once(" - ")?;
    let head: Vec<&str> = head.split(' ').collect();
    let mut tail = tail.split(' ');
    Some(MountInfo {
        dev: head.get(2)?.to_string(),
        mount_point: PathBuf::from(OsString::from_vec(unescape_mountinfo(head.get(4)?))),
        mount_options: head.get(5)?.to_string(),
        fs_type: tail.next()?.to_string(),
        source: String::from_utf8_lossy(&unescape_mountinfo(tail.next()?)).into_owned(),
        super_options: tail.next().unwrap_or("").to_string(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for space, ...).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = field
                .get(i + 1..i + 4)
                .and_then(|octal| u8::from_str_radix(octal, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A `Command` for the binary under test, with no ssh-agent.
pub fn sftpmount_command() -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.env_remove("SSH_AUTH_SOCK");
    // No controlling terminal, as in CI, wherever the tests run: a prompt for a password or a
    // passphrase must never wait for someone at the developer's terminal.
    // SAFETY: setsid(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd
}

/// Runs the binary with `args` (stdin /dev/null, no ssh-agent); panics if it takes longer than
/// 30 s (after killing it).
pub fn run_sftpmount<S: AsRef<OsStr>>(args: &[S]) -> Output {
    output_with_timeout(sftpmount_command().args(args), None, BIN_TIMEOUT)
}

/// Runs `cmd` with `stdin` (or /dev/null) as standard input, capturing stdout and stderr in
/// files (so a daemon that keeps them open cannot block us). Panics, after killing it (by its
/// pid, only it), if it runs longer than `timeout`.
pub fn output_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    match exec(cmd, stdin, timeout) {
        Ok(Exec::Exited(out)) => out,
        Ok(Exec::TimedOut(out)) => panic!(
            "{what} did not finish within {timeout:?} and was killed; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run {what}: {e}"),
    }
}

enum Exec {
    Exited(Output),
    /// Killed after the timeout; the output so far.
    TimedOut(Output),
}

fn exec(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> io::Result<Exec> {
    let mut stdout = tempfile::tempfile()?;
    let mut stderr = tempfile::tempfile()?;
    cmd.stdout(stdout.try_clone()?).stderr(stderr.try_clone()?);
    match stdin {
        Some(bytes) => {
            let mut input = tempfile::tempfile()?;
            input.write_all(bytes)?;
            input.seek(SeekFrom::Start(0))?;
            cmd.stdin(input);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait()?, true);
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    fn read_back(f: &mut File) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }
    let out = Output {
        status,
        stdout: read_back(&mut stdout)?,
        stderr: read_back(&mut stderr)?,
    };
    Ok(if timed_out {
        Exec::TimedOut(out)
    } else {
        Exec::Exited(out)
    })
}

/// Runs `cmd args` in `cwd` (timeout 300 s) and asserts it succeeded; the panic message shows
/// its stderr and stdout.
pub fn run<S: AsRef<OsStr>>(cmd: &str, args: &[S], cwd: impl AsRef<Path>) -> Output {
    let out = try_run(cmd, args, cwd.as_ref());
    if !out.status.success() {
        panic!(
            "`{}` in {} failed ({}); stderr:\n{}\nstdout:\n{}",
            command_line(cmd, args),
            cwd.as_ref().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(tail(&out.stdout, 4096)),
        );
    }
    out
}

/// Like [`run`] without asserting success (still panics on timeout).
pub fn try_run<S: AsRef<OsStr>>(cmd: &str, args: &[S], cwd: impl AsRef<Path>) -> Output {
    output_with_timeout(
        Command::new(cmd).args(args).current_dir(cwd),
        None,
        RUN_TIMEOUT,
    )
}

fn command_line<S: AsRef<OsStr>>(cmd: &str, args: &[S]) -> String {
    let mut line = cmd.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

fn tail(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(max)..]
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`: a hang is a bug.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("hung")
}

/// Polls `done` (every 10 ms) until it returns true or `timeout` passes; returns the last answer.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// The process running [`BIN`] with `mountpoint` among its arguments (the topmost if several).
pub fn find_daemon_pid(mountpoint: &Path) -> Option<u32> {
    let pids: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| is_our_daemon(pid, mountpoint))
        .collect();
    pids.iter()
        .copied()
        .find(|&pid| parent_pid(pid).is_none_or(|ppid| !pids.contains(&ppid)))
}

/// Whether `pid` is a live (not zombie) process of [`BIN`] with `mountpoint` as an argument.
fn is_our_daemon(pid: u32, mountpoint: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let wanted = mountpoint.as_os_str().as_bytes();
    let has_arg = cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == wanted || arg.strip_suffix(b"/") == Some(wanted));
    has_arg && runs_bin(pid) && !is_zombie(pid)
}

fn runs_bin(pid: u32) -> bool {
    let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let bin = Path::new(BIN)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(BIN));
    let exe = exe.as_os_str().as_bytes();
    let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
    exe == bin.as_os_str().as_bytes()
}

/// The fields after the command name in /proc/PID/stat: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_none_or(|f| f.first().is_some_and(|s| s == "Z" || s == "X"))
}

fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn children_by_parent() -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(ppid) = parent_pid(pid) {
            map.entry(ppid).or_default().push(pid);
        }
    }
    map
}

/// `kill(pid, signal)`; whether it was delivered.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// A `kB` field of /proc/PID/status, e.g. `VmHWM`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*): the same `seed` gives the same stream, and
/// [`random_file`] writes exactly these bytes.
pub struct RandomBytes(u64);

impl RandomBytes {
    pub fn new(seed: u64) -> RandomBytes {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams (and 0 works).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        RandomBytes((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf`; the stream continues in whole 8-byte words, so fill only the last chunk
    /// with a length that is not a multiple of 8.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// `len` deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0; len];
    RandomBytes::new(seed).fill(&mut buf);
    buf
}

/// Writes `len` deterministic pseudo-random bytes (the same as [`random_bytes`]) to `path`, in
/// 1 MiB writes, then closes it (no fsync).
pub fn random_file(path: impl AsRef<Path>, len: u64, seed: u64) {
    let path = path.as_ref();
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut rng = RandomBytes::new(seed);
    let mut buf = vec![0; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).expect("chunk fits usize");
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
}

/// Whether two files have the same bytes.
pub fn files_equal(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
    first_difference(a.as_ref(), b.as_ref()).is_none()
}

/// Panics, naming the first differing offset, unless two files have the same bytes.
pub fn assert_files_equal(a: impl AsRef<Path>, b: impl AsRef<Path>) {
    let (a, b) = (a.as_ref(), b.as_ref());
    if let Some(why) = first_difference(a, b) {
        panic!("{} and {} differ: {why}", a.display(), b.display());
    }
}

fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0; 1 << 20], vec![0; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na =
            read_full(&mut fa, &mut ba).unwrap_or_else(|e| panic!("read {}: {e}", a.display()));
        let nb =
            read_full(&mut fb, &mut bb).unwrap_or_else(|e| panic!("read {}: {e}", b.display()));
        let common = na.min(nb);
        if let Some(i) = (0..common).find(|&i| ba[i] != bb[i]) {
            return Some(format!("first difference at byte {}", offset + i as u64));
        }
        if na != nb {
            return Some(format!(
                "sizes differ: one ends at byte {}",
                offset + common as u64
            ));
        }
        if na == 0 {
            return None;
        }
        offset += na as u64;
    }
}

/// Reads until `buf` is full or end of file (a read may return less than asked).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// What the server received
// ---------------------------------------------------------------------------------------------

/// Records every SFTP request the server receives: `Subsystem sftp` runs a wrapper that copies
/// each session's incoming stream to a file (with `tee`) on its way to the real sftp-server.
/// Counting there shows what a mount really costs, whatever the client believes it sent.
pub struct SftpRecorder {
    dir: TempDir,
}

/// SFTP requests by type, the bytes READ requests asked for, and the directories opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SftpRequests {
    pub by_type: HashMap<&'static str, u64>,
    pub read_bytes: u64,
    /// OPENDIR paths (as sent: absolute), with how often each was opened.
    pub opened_dirs: HashMap<String, u64>,
    /// LSTAT paths, with how often each was asked.
    pub lstat_paths: HashMap<String, u64>,
    /// OPEN paths (files), with how often each was opened.
    pub opened_files: HashMap<String, u64>,
    /// EXTENDED requests by name, and the bytes WRITE requests carried.
    pub extended: HashMap<String, u64>,
    pub written_bytes: u64,
}

impl SftpRequests {
    pub fn count(&self, kind: &str) -> u64 {
        self.by_type.get(kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.by_type.values().sum()
    }

    /// What was received after `earlier` was taken.
    pub fn since(&self, earlier: &SftpRequests) -> SftpRequests {
        let by_type = self
            .by_type
            .iter()
            .map(|(k, v)| (*k, v - earlier.count(k)))
            .filter(|(_, v)| *v > 0)
            .collect();
        let since = |now: &HashMap<String, u64>, then: &HashMap<String, u64>| {
            now.iter()
                .map(|(k, v)| (k.clone(), v - then.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        SftpRequests {
            by_type,
            read_bytes: self.read_bytes - earlier.read_bytes,
            opened_dirs: since(&self.opened_dirs, &earlier.opened_dirs),
            lstat_paths: since(&self.lstat_paths, &earlier.lstat_paths),
            opened_files: since(&self.opened_files, &earlier.opened_files),
            extended: since(&self.extended, &earlier.extended),
            written_bytes: self.written_bytes - earlier.written_bytes,
        }
    }
}

fn sftp_request_name(kind: u8) -> &'static str {
    match kind {
        1 => "INIT",
        3 => "OPEN",
        4 => "CLOSE",
        5 => "READ",
        6 => "WRITE",
        7 => "LSTAT",
        8 => "FSTAT",
        9 => "SETSTAT",
        10 => "FSETSTAT",
        11 => "OPENDIR",
        12 => "READDIR",
        13 => "REMOVE",
        14 => "MKDIR",
        15 => "RMDIR",
        16 => "REALPATH",
        17 => "STAT",
        18 => "RENAME",
        19 => "READLINK",
        20 => "SYMLINK",
        200 => "EXTENDED",
        _ => "OTHER",
    }
}

impl SftpRecorder {
    pub fn new() -> SftpRecorder {
        require(SFTP_SERVER, "OpenSSH's sftp-server");
        let dir = tempfile::Builder::new()
            .prefix("sftpmount-recorder-")
            .tempdir()
            .expect("recorder dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let script = dir.path().join("sftp-server");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\ntee '{}/session.'$$ | {SFTP_SERVER}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        SftpRecorder { dir }
    }

    /// The `Subsystem sftp` command for [`SshdOptions::sftp_server`].
    pub fn subsystem(&self) -> String {
        self.dir.path().join("sftp-server").display().to_string()
    }

    /// The body of every request received so far, all sessions together. A packet still
    /// arriving is left for the next call.
    fn packets(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("session.")
            {
                continue;
            }
            let data = fs::read(&path).unwrap();
            let mut pos = 0usize;
            while pos + 5 <= data.len() {
                let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
                if pos + 4 + len > data.len() {
                    break;
                }
                out.push(data[pos + 4..pos + 4 + len].to_vec());
                pos += 4 + len;
            }
        }
        out
    }

    /// A READ's offset and length (after its id and handle).
    fn read_of(body: &[u8]) -> (u64, u32) {
        let hlen = u32::from_be_bytes(body[5..9].try_into().unwrap()) as usize;
        let at = 9 + hlen;
        let offset = u64::from_be_bytes(body[at..at + 8].try_into().unwrap());
        let len = u32::from_be_bytes(body[at + 8..at + 12].try_into().unwrap());
        (offset, len)
    }

    /// Every request received so far, all sessions together.
    pub fn requests(&self) -> SftpRequests {
        let mut out = SftpRequests::default();
        for body in self.packets() {
            let kind = sftp_request_name(body[0]);
            *out.by_type.entry(kind).or_default() += 1;
            if kind == "OPENDIR" || kind == "LSTAT" || kind == "OPEN" || kind == "EXTENDED" {
                let plen = u32::from_be_bytes(body[5..9].try_into().unwrap()) as usize;
                let path = String::from_utf8_lossy(&body[9..9 + plen]).into_owned();
                let paths = match kind {
                    "LSTAT" => &mut out.lstat_paths,
                    "OPEN" => &mut out.opened_files,
                    "EXTENDED" => &mut out.extended,
                    _ => &mut out.opened_dirs,
                };
                *paths.entry(path).or_default() += 1;
            }
            if kind == "READ" {
                out.read_bytes += u64::from(Self::read_of(&body).1);
            }
            if kind == "WRITE" {
                // id, handle, offset, then the data's length.
                let hlen = u32::from_be_bytes(body[5..9].try_into().unwrap()) as usize;
                let at = 9 + hlen + 8;
                let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                out.written_bytes += u64::from(len);
            }
        }
        out
    }

    /// Every READ's offset and length, all sessions together, for failure messages.
    pub fn reads(&self) -> Vec<(u64, u32)> {
        self.packets()
            .iter()
            .filter(|body| sftp_request_name(body[0]) == "READ")
            .map(|body| Self::read_of(body))
            .collect()
    }

    /// Waits until the counts stop changing (requests still on their way have arrived).
    pub fn settled(&self) -> SftpRequests {
        let mut last = self.requests();
        loop {
            sleep(Duration::from_millis(300));
            let now = self.requests();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Sshd {
    /// An sshd whose sftp-server sessions are recorded by `recorder`.
    pub fn start_recorded(recorder: &SftpRecorder) -> Sshd {
        Sshd::start_with(SshdOptions {
            sftp_server: Some(recorder.subsystem()),
            ..SshdOptions::default()
        })
    }
}

/// A small tmpfs as a directory of the server, unmounted (lazily) on drop.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn new(path: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(path).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
            "/",
        );
        SmallDisk(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// A server that misbehaves
// ---------------------------------------------------------------------------------------------

/// The `Subsystem sftp` command of our faulty server (`examples/faulty_sftp_server.rs`, which
/// `cargo test` builds beside the tests) relaying to OpenSSH's sftp-server with `faults`.
pub fn faulty_server_command(faults: &[&str]) -> String {
    // target/<profile>/deps/<test> -> target/<profile>/examples/faulty_sftp_server
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples/faulty_sftp_server"))
        .expect("target directory");
    require(
        bin.to_str().unwrap(),
        "the faulty SFTP server (cargo test builds it with the examples; \
         cargo build --release --examples builds it alone)",
    );
    let mut cmd = bin.display().to_string();
    for fault in faults {
        cmd.push_str(" --fault ");
        cmd.push_str(fault);
    }
    cmd
}

impl Sshd {
    /// The source and options of a mount as [`PASSWORD_USER`] (made to have `password`, and
    /// given the remote root) with the password on standard input (`password_stdin`).
    pub fn password_login(&self, password: &str) -> (String, Vec<String>) {
        ensure_password_user(PASSWORD_USER, password);
        self.chown_remote_root(PASSWORD_USER);
        let source = self.source_as(PASSWORD_USER, &self.remote_root());
        let mut args = self.ssh_opts_without_key();
        args.extend(["-o".into(), "password_stdin".into()]);
        (source, args)
    }

    /// Mounts as [`PASSWORD_USER`] (see [`Sshd::password_login`]), typing `password`.
    pub fn mount_with_password(&self, password: &str) -> Mount {
        let (source, args) = self.password_login(password);
        Mount::try_with(
            self,
            &source,
            &args,
            Some(format!("{password}\n").as_bytes()),
        )
        .expect("mount with a password")
    }

    /// An sshd whose SFTP sessions go through the faulty server with `faults`.
    pub fn start_faulty(faults: &[&str]) -> Sshd {
        Sshd::start_with(SshdOptions {
            sftp_server: Some(faulty_server_command(faults)),
            ..SshdOptions::default()
        })
    }
}
