//! The command line, as sshfs users type it: `[user@]host:[dir] MOUNTPOINT` plus `-o` options,
//! the same line fstab produces through mount.fuse3. Every option is parsed here, once, into
//! [`Options`]; an unknown option is an error that names it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{FromArgMatches, Parser};

pub mod table;

use crate::fs::KeepCache;
use crate::fs::cache::CacheConfig;

#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    #[error("unknown option '{0}' (see sftpmount --help for the options)")]
    Unknown(String),
    #[error("option '{name}' needs a value: -o {name}=VALUE")]
    MissingValue { name: String },
    #[error("bad value '{value}' for option '{name}': {why}")]
    BadValue {
        name: String,
        value: String,
        why: &'static str,
    },
    #[error("bad remote '{0}': expected [user@]host:[dir], e.g. alice@example.com:/srv/data")]
    BadSource(String),
    #[error("option '{name}' cannot work here: {why}")]
    Unsupported { name: String, why: &'static str },
}

/// sftpmount — mount a directory of a remote SFTP server.
#[derive(Debug, Parser)]
#[command(
    name = "sftpmount",
    version,
    about = "Mount a directory of a remote SFTP server (OpenSSH) through FUSE"
)]
struct Cli {
    /// Remote directory: [user@]host:[dir] (a relative dir is under the remote home)
    source: String,
    /// Local directory to mount on
    mountpoint: PathBuf,
    /// SSH port
    #[arg(short = 'p', value_name = "PORT")]
    port: Option<u16>,
    /// Compress the SSH stream (same as -o Compression=yes)
    #[arg(short = 'C')]
    compression: bool,
    /// sshfs's single-threaded mode: accepted, no effect (requests never wait on each other)
    #[arg(short = 's', hide = true)]
    single_threaded: bool,
    /// SSH protocol 1: refused (insecure, gone from OpenSSH)
    #[arg(short = '1', hide = true)]
    protocol_1: bool,
    /// ssh_config file to read instead of ~/.ssh/config
    #[arg(short = 'F', value_name = "SSH_CONFIG")]
    ssh_config: Option<PathBuf>,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Stay in the foreground and log debug messages
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Mount options, see below
    #[arg(short = 'o', value_name = "OPT[,OPT=VALUE...]")]
    options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdMap {
    #[default]
    None,
    User,
    /// uidfile= and gidfile=: `name:remote id` lines, shown as the local ids of those names.
    File,
    /// By name, as the server names its ids (users-groups-by-id@openssh.com).
    Names,
}

/// Remote location as typed: `[user@]host:[dir]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub user: Option<String>,
    pub host: String,
    pub dir: String,
}

impl Source {
    pub fn parse(text: &str) -> Result<Self, OptionError> {
        let bad = || OptionError::BadSource(text.to_string());
        let (user, rest) = match text.rfind('@') {
            Some(at) if !text[..at].contains(':') => (Some(&text[..at]), &text[at + 1..]),
            _ => (None, text),
        };
        let (host, dir) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':').ok_or_else(bad)?)
        } else {
            rest.split_once(':').ok_or_else(bad)?
        };
        if host.is_empty() || user.is_some_and(str::is_empty) {
            return Err(bad());
        }
        Ok(Source {
            user: user.map(str::to_string),
            host: host.to_string(),
            dir: dir.to_string(),
        })
    }
}

/// Everything the command line said.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
    pub ssh_config: Option<PathBuf>,
    /// ssh_config keywords given on the command line (`-o Port=22`, `-p`, `-C`), lower-cased,
    /// in order: read before any ssh_config file, as ssh reads its `-o`.
    pub ssh_options: Vec<(String, String)>,
    pub reconnect: bool,
    /// How long an operation waits for a lost connection to come back.
    pub reconnect_wait: Duration,
    pub password_stdin: bool,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: u32,
    pub idmap: IdMap,
    pub uidfile: Option<PathBuf>,
    pub gidfile: Option<PathBuf>,
    /// idmap=file, nomap=error (sshfs's default): ids without a mapping shown as nobody.
    pub nomap_error: bool,
    pub request_timeout: Duration,
    /// max_conns=N: SSH connections, the SFTP channels spread over them.
    pub max_conns: usize,
    pub sftp_channels: usize,
    /// max_conns= or sftp_channels= was given: a far link gets no more channels than that.
    pub channels_chosen: bool,
    pub write_buffer: usize,
    pub write_buffer_total: usize,
    pub short_writes: bool,
    /// `dir_cache=no` turns off the metadata cache.
    pub dir_cache: bool,
    /// `dcache_timeout`, and the per-kind timeouts that override it.
    pub dcache_timeout: Duration,
    pub dcache_stat_timeout: Option<Duration>,
    pub dcache_dir_timeout: Option<Duration>,
    pub dcache_link_timeout: Option<Duration>,
    pub dcache_max_size: usize,
    /// How long the kernel trusts attributes and names.
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// `auto_cache`, `kernel_cache`, `noauto_cache`.
    pub keep_cache: KeepCache,
    /// How long the kernel trusts that a name does not exist.
    pub negative_timeout: Duration,
    /// `dir_prefetch=no` turns off fetching subdirectory listings ahead.
    pub dir_prefetch: bool,
    /// Generic mount flags passed on to the kernel (nodev, noexec, ...).
    pub kernel_flags: Vec<fuser::MountOption>,
    /// `logfile=PATH`: the log goes (appended) to this file, also in the background.
    pub logfile: Option<PathBuf>,
    /// `fsname=`, `subtype=`: what mount(8) and df show as the source and the type.
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    /// One-line notes on options accepted that do not do here what they did in sshfs.
    pub notes: Vec<String>,
    /// `no_readahead` turns reading ahead off.
    pub readahead: bool,
    /// `sshfs_sync`.
    pub sync_writes: bool,
    pub follow_symlinks: bool,
    pub transform_symlinks: bool,
    /// `contain_symlinks`: a symlink whose target could lead out of the mount reads as EPERM.
    pub contain_symlinks: bool,
    /// `disable_hardlink` turns link(2) off.
    pub hardlinks: bool,
    /// `workaround=renamexdev`.
    pub rename_failure_is_exdev: bool,
    /// Every open bypasses the kernel's page cache (`direct_io`).
    pub direct_io: bool,
    /// `auto_unmount`: fusermount3 unmounts if the daemon dies.
    pub auto_unmount: bool,
    /// `allow_root`: root may use the mount too.
    pub allow_root: bool,
    /// `max_read=N`, passed to the kernel.
    pub max_read: Option<u32>,
    /// `sshfs_debug`: log each SFTP request, also in the background (to logfile=).
    pub debug_requests: bool,
}

impl Options {
    /// Forgets `suid` and `dev`: started by mount(8), they are mount.fuse3's (it appends them
    /// unless told `nosuid`/`nodev`), never the user's (mount(8) passes neither: they are its
    /// defaults). A server's setuid files and device nodes must not act as such here.
    pub fn drop_suid_dev(&mut self) {
        use fuser::MountOption as M;
        self.kernel_flags
            .retain(|flag| !matches!(flag, M::Suid | M::Dev));
    }
}

/// Both ways to call the program.
pub const USAGE: &str = "sftpmount [OPTIONS] [user@]host:[dir] MOUNTPOINT\n       \
                         sftpmount status [MOUNTPOINT]";

/// The command line's definition, with the option table as its help's epilogue (also what the
/// man page is made from).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .override_usage(USAGE)
        .after_help(table::help_text(100))
}

/// What parsing the command line asks the program to do.
pub enum Parsed {
    Mount(Box<Options>),
    /// --help or --version: print this on stdout and exit 0.
    Print(String),
}

/// Parses the process arguments; errors are one line, meant for the user.
pub fn parse<I, T>(args: I) -> Result<Parsed, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match command()
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(Parsed::Print(e.render().to_string()))
                }
                ErrorKind::MissingRequiredArgument => {
                    // clap lists them on the lines after its first.
                    let text = e.render().to_string();
                    let missing: Vec<&str> = text
                        .lines()
                        .skip(1)
                        .take_while(|l| !l.trim().is_empty())
                        .map(str::trim)
                        .collect();
                    Err(format!(
                        "missing {}: usage: sftpmount [user@]host:[dir] MOUNTPOINT [-o OPTIONS] \
                         (see sftpmount --help)",
                        missing.join(" and ")
                    ))
                }
                _ => {
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("bad arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    Err(format!("{first} (see sftpmount --help)"))
                }
            };
        }
    };
    let mut options = Options {
        source: Source::parse(&cli.source).map_err(|e| e.to_string())?,
        mountpoint: cli.mountpoint,
        foreground: cli.foreground || cli.debug,
        debug: cli.debug,
        ssh_config: cli.ssh_config,
        ssh_options: Vec::new(),
        reconnect: true,
        reconnect_wait: Duration::from_secs(20),
        password_stdin: false,
        allow_other: false,
        default_permissions: false,
        read_only: false,
        uid: None,
        gid: None,
        umask: 0,
        idmap: IdMap::None,
        uidfile: None,
        gidfile: None,
        nomap_error: true,
        max_conns: 1,
        request_timeout: Duration::from_secs(60),
        sftp_channels: DEFAULT_SFTP_CHANNELS,
        channels_chosen: false,
        write_buffer: DEFAULT_WRITE_BUFFER,
        write_buffer_total: DEFAULT_WRITE_BUFFER_TOTAL,
        short_writes: false,
        dir_cache: true,
        dcache_timeout: DEFAULT_DCACHE_TIMEOUT,
        dcache_stat_timeout: None,
        dcache_dir_timeout: None,
        dcache_link_timeout: None,
        dcache_max_size: DEFAULT_DCACHE_MAX_SIZE,
        attr_timeout: DEFAULT_KERNEL_TIMEOUT,
        entry_timeout: DEFAULT_KERNEL_TIMEOUT,
        keep_cache: KeepCache::WhileUnchanged,
        negative_timeout: Duration::ZERO,
        dir_prefetch: true,
        logfile: None,
        kernel_flags: Vec::new(),
        fsname: None,
        subtype: None,
        notes: Vec::new(),
        readahead: true,
        sync_writes: false,
        follow_symlinks: false,
        transform_symlinks: false,
        contain_symlinks: false,
        hardlinks: true,
        rename_failure_is_exdev: false,
        direct_io: false,
        auto_unmount: false,
        allow_root: false,
        max_read: None,
        debug_requests: false,
    };
    if cli.protocol_1 {
        return Err(OptionError::Unsupported {
            name: "-1".into(),
            why: "SSH protocol 1 is insecure and gone from OpenSSH since 7.6; sftpmount speaks \
                  protocol 2 only: remove the option",
        }
        .to_string());
    }
    if let Some(port) = cli.port {
        options.ssh_options.push(("port".into(), port.to_string()));
    }
    if cli.compression {
        options
            .ssh_options
            .push(("compression".into(), "yes".into()));
    }
    for group in &cli.options {
        for opt in group.split(',').filter(|o| !o.is_empty()) {
            options.apply(opt).map_err(|e| e.to_string())?;
        }
    }
    if options.idmap == IdMap::File && options.uidfile.is_none() && options.gidfile.is_none() {
        return Err("idmap=file needs uidfile=FILE and/or gidfile=FILE (lines of name:id)".into());
    }
    if options.allow_other && options.allow_root {
        return Err("allow_other and allow_root exclude each other: give one".into());
    }
    if options.allow_other && !options.default_permissions {
        options.notes.push(
            "allow_other without default_permissions: every local user acts on the server with \
             the login's rights (nothing checks the files' modes here); add \
             -o default_permissions to have the kernel check them"
                .into(),
        );
    }
    if options.write_buffer_total < options.write_buffer {
        return Err(format!(
            "write_buffer_total ({}) must be at least write_buffer ({})",
            options.write_buffer_total, options.write_buffer
        ));
    }
    Ok(Parsed::Mount(Box::new(options)))
}

/// Defaults chosen by measurement (scripts/bench; see README.md).
/// Every channel has its own 2 MiB window, and a far link's writes need many (at 300 ms RTT,
/// 256 MiB: 38 MB/s with 8 channels, 42 with 9, 46 with 10). But not 10, sshd's MaxSessions
/// default: one must be left to replace a stalled channel (faults.rs got EIO, not ETIMEDOUT).
/// 9 was tried: `ls -l` + `cat` during a 5 Mbit/s upload at 150 ms took 2.0-3.4 s in three
/// runs, against 1.25-2.2 s with 8 in five (the spread is the link's, either way).
pub const DEFAULT_SFTP_CHANNELS: usize = 8;
pub const DEFAULT_WRITE_BUFFER: usize = 32 << 20;
pub const DEFAULT_WRITE_BUFFER_TOTAL: usize = 64 << 20;
/// sshfs's defaults, so that a mount behaves as its users expect.
pub const DEFAULT_DCACHE_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_DCACHE_MAX_SIZE: usize = 10_000;
/// libfuse's default for attr_timeout and entry_timeout.
pub const DEFAULT_KERNEL_TIMEOUT: Duration = Duration::from_secs(1);
/// A buffer must take the kernel's largest WRITE (1 MiB) whole.
const MIN_WRITE_BUFFER: usize = 1 << 20;

/// `123`, `64K`, `32M`, `1G` (powers of 1024).
fn parse_size(text: &str) -> Option<usize> {
    let (digits, shift) = match text.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&text[..text.len() - 1], 10),
        b'M' => (&text[..text.len() - 1], 20),
        b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

impl Options {
    /// The metadata cache's settings: each kind's own timeout, else `dcache_timeout`.
    pub fn cache_config(&self) -> CacheConfig {
        CacheConfig {
            enabled: self.dir_cache,
            stat_timeout: self.dcache_stat_timeout.unwrap_or(self.dcache_timeout),
            dir_timeout: self.dcache_dir_timeout.unwrap_or(self.dcache_timeout),
            link_timeout: self.dcache_link_timeout.unwrap_or(self.dcache_timeout),
            max_entries: self.dcache_max_size,
        }
    }

    fn apply(&mut self, opt: &str) -> Result<(), OptionError> {
        use fuser::MountOption as M;
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let need = || {
            value.ok_or_else(|| OptionError::MissingValue {
                name: name.to_string(),
            })
        };
        let bad = |why: &'static str| OptionError::BadValue {
            name: name.to_string(),
            value: value.unwrap_or("").to_string(),
            why,
        };
        let number = |why| need()?.parse::<u32>().map_err(|_| bad(why));
        let seconds = || -> Result<Duration, OptionError> {
            let secs: u64 = need()?.parse().map_err(|_| bad("expected whole seconds"))?;
            Ok(Duration::from_secs(secs))
        };
        let fraction = || -> Result<Duration, OptionError> {
            need()?
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| d.as_secs() <= 1_000_000)
                .ok_or_else(|| bad("expected seconds, such as 20 or 0.5"))
        };
        let yes_no = || match need()?.to_ascii_lowercase().as_str() {
            "yes" | "1" | "true" => Ok(true),
            "no" | "0" | "false" => Ok(false),
            _ => Err(bad("expected yes or no")),
        };
        match name.to_ascii_lowercase().as_str() {
            // sshfs passes ssh_config keywords to ssh; they are read here as ssh reads `-o`.
            "user" if value.is_none() => {}
            n if crate::ssh::config::keyword(n).is_some() => {
                self.ssh_options.push((n.to_string(), need()?.to_string()))
            }
            "ssh_protocol" => {
                return Err(OptionError::Unsupported {
                    name: name.to_string(),
                    why: "SSH protocol 1 is insecure and gone from OpenSSH since 7.6; \
                          sftpmount speaks protocol 2 only: remove the option",
                });
            }
            "request_timeout" => self.request_timeout = seconds()?,
            "sftp_channels" => {
                self.channels_chosen = true;
                self.sftp_channels = need()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| bad("expected a count from 1 to 64"))?
            }
            "write_buffer" | "write_buffer_total" => {
                let size = parse_size(need()?)
                    .filter(|&s| s >= MIN_WRITE_BUFFER)
                    .ok_or_else(|| bad("expected a size of at least 1M, such as 32M"))?;
                if name.eq_ignore_ascii_case("write_buffer") {
                    self.write_buffer = size;
                } else {
                    self.write_buffer_total = size;
                }
            }
            "short_writes" => self.short_writes = true,
            // The default now; the spelling of when it was not.
            "no_short_writes" => self.short_writes = false,
            // The cache_* spellings are sshfs's older names for the same options.
            "dir_cache" | "cache" => self.dir_cache = yes_no()?,
            "dcache_timeout" | "cache_timeout" => self.dcache_timeout = fraction()?,
            "dcache_stat_timeout" | "cache_stat_timeout" => {
                self.dcache_stat_timeout = Some(fraction()?)
            }
            "dcache_dir_timeout" | "cache_dir_timeout" => {
                self.dcache_dir_timeout = Some(fraction()?)
            }
            "dcache_link_timeout" | "cache_link_timeout" => {
                self.dcache_link_timeout = Some(fraction()?)
            }
            "dcache_max_size" | "cache_max_size" => {
                self.dcache_max_size = need()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000_000).contains(n))
                    .ok_or_else(|| bad("expected a count from 1 to 10000000"))?
            }
            // Expired entries are dropped when met and the LRU bounds the rest: no sweeps.
            "dcache_clean_interval"
            | "dcache_min_clean_interval"
            | "cache_clean_interval"
            | "cache_min_clean_interval" => {
                fraction()?;
            }
            "attr_timeout" => self.attr_timeout = fraction()?,
            "entry_timeout" => self.entry_timeout = fraction()?,
            "kernel_cache" => self.keep_cache = KeepCache::Always,
            "noauto_cache" => self.keep_cache = KeepCache::Never,
            "negative_timeout" => self.negative_timeout = fraction()?,
            "dir_prefetch" => self.dir_prefetch = yes_no()?,
            "auto_cache" => self.keep_cache = KeepCache::WhileUnchanged,
            "reconnect" => self.reconnect = value.is_none() || yes_no()?,
            "noreconnect" => self.reconnect = false,
            "reconnect_wait" => self.reconnect_wait = fraction()?,
            "logfile" => self.logfile = Some(need()?.into()),
            "password_stdin" => self.password_stdin = true,
            "allow_other" => self.allow_other = true,
            "default_permissions" => self.default_permissions = true,
            "ro" => self.read_only = true,
            "rw" => self.read_only = false,
            "uid" => self.uid = Some(number("expected a numeric uid")?),
            "gid" => self.gid = Some(number("expected a numeric gid")?),
            "umask" => {
                self.umask = u32::from_str_radix(need()?, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad("expected an octal mask such as 022"))?
            }
            "idmap" => {
                self.idmap = match need()? {
                    "none" => IdMap::None,
                    "user" => IdMap::User,
                    "file" => IdMap::File,
                    "names" => IdMap::Names,
                    _ => return Err(bad("expected none, user, file or names")),
                }
            }
            "uidfile" => self.uidfile = Some(need()?.into()),
            "gidfile" => self.gidfile = Some(need()?.into()),
            "nomap" => {
                self.nomap_error = match need()? {
                    "ignore" => false,
                    "error" => true,
                    _ => return Err(bad("expected ignore or error")),
                }
            }
            "max_conns" => {
                self.channels_chosen = true;
                self.max_conns = need()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=32).contains(n))
                    .ok_or_else(|| bad("expected a count from 1 to 32"))?
            }
            "no_readahead" => self.readahead = false,
            "sshfs_sync" => self.sync_writes = true,
            "follow_symlinks" => self.follow_symlinks = true,
            "transform_symlinks" => self.transform_symlinks = true,
            "contain_symlinks" => self.contain_symlinks = true,
            "no_contain_symlinks" => self.contain_symlinks = false,
            "disable_hardlink" => self.hardlinks = false,
            "workaround" => {
                for item in need()?.split(':') {
                    match item {
                        "none" => self.rename_failure_is_exdev = false,
                        "renamexdev" | "all" => self.rename_failure_is_exdev = true,
                        "rename" | "truncate" | "fstat" | "buflimit" | "createmode"
                        | "nobuflimit" | "nofstat" | "norename" | "notruncate" | "nocreatemode"
                        | "norenamexdev" => {}
                        _ => {
                            return Err(bad(
                                "expected none, all, rename, renamexdev, truncate, fstat, \
                                 buflimit or createmode (separated by :)",
                            ));
                        }
                    }
                }
            }
            "direct_io" => self.direct_io = true,
            "auto_unmount" => self.auto_unmount = true,
            "allow_root" => self.allow_root = true,
            "max_read" => {
                self.max_read = Some(
                    need()?
                        .parse()
                        .ok()
                        .filter(|n| *n >= 4096)
                        .ok_or_else(|| bad("expected a size in bytes, at least 4096"))?,
                )
            }
            "sshfs_debug" | "debug" => self.debug_requests = true,
            // libfuse's high-level options: sftpmount speaks FUSE's low-level protocol, with
            // its own inode numbers, and these have nothing to change there.
            "hard_remove"
            | "use_ino"
            | "readdir_ino"
            | "noforget"
            | "nopath"
            | "intr"
            | "large_read"
            | "async_read"
            | "sync_read"
            | "no_remote_lock"
            | "no_remote_posix_lock"
            | "no_remote_flock"
            | "splice_read"
            | "splice_write"
            | "splice_move"
            | "no_splice_read"
            | "no_splice_write"
            | "no_splice_move"
            | "no_check_root"
            | "remember"
            | "intr_signal"
            | "ac_attr_timeout"
            | "max_background"
            | "congestion_threshold"
            | "max_readahead"
            | "max_write"
            | "blksize"
            | "writeback_cache"
            | "no_writeback_cache"
            | "async_dio"
            | "no_async_dio"
            | "auto_inval_data"
            | "no_auto_inval_data"
            | "atomic_o_trunc"
            | "big_writes" => {}
            "modules" => {
                return Err(OptionError::Unsupported {
                    name: name.to_string(),
                    why: "FUSE modules (subdir, iconv) are libfuse's; mount the subdirectory \
                          itself (host:/dir/sub); file names are passed as the server has them",
                });
            }
            "dev" => self.kernel_flags.push(M::Dev),
            "nodev" => self.kernel_flags.push(M::NoDev),
            "suid" => self.kernel_flags.push(M::Suid),
            "nosuid" => self.kernel_flags.push(M::NoSuid),
            "exec" => self.kernel_flags.push(M::Exec),
            "noexec" => self.kernel_flags.push(M::NoExec),
            "atime" => self.kernel_flags.push(M::Atime),
            "noatime" => self.kernel_flags.push(M::NoAtime),
            "auto" | "noauto" | "_netdev" | "users" | "nouser" | "nofail" | "defaults"
            | "comment" => {}
            "fsname" => self.fsname = Some(need()?.to_string()),
            "subtype" => self.subtype = Some(need()?.to_string()),
            // FUSE 3 mounts over a non-empty directory anyway; a listing is always read whole
            // and in order.
            "nonempty" | "sync_readdir" => {}
            "delay_connect" => self.notes.push(
                "delay_connect: sftpmount connects when mounting (a wrong host, key or \
                 password fails the mount at once) and reconnects by itself after a loss"
                    .into(),
            ),
            "ssh_command" | "sftp_server" | "directport" | "slave" | "passive" => {
                return Err(OptionError::Unsupported {
                    name: name.to_string(),
                    why: "sftpmount speaks SSH and SFTP itself and runs no ssh or sftp-server \
                          program; remove the option (ssh_config's settings are read as ssh \
                          reads them)",
                });
            }
            n if n.starts_with("x-systemd.") || n.starts_with("x-") => {}
            _ => return Err(OptionError::Unknown(opt.to_string())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(args: &[&str]) -> Options {
        match parse(std::iter::once("sftpmount").chain(args.iter().copied())) {
            Ok(Parsed::Mount(o)) => *o,
            Ok(Parsed::Print(_)) => panic!("printed"),
            Err(e) => panic!("{e}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse(std::iter::once("sftpmount").chain(args.iter().copied())) {
            Err(e) => e,
            Ok(_) => panic!("accepted {args:?}"),
        }
    }

    #[test]
    fn sources() {
        let s = Source::parse("alice@host:/srv").unwrap();
        assert_eq!(
            (s.user.as_deref(), s.host.as_str(), s.dir.as_str()),
            (Some("alice"), "host", "/srv")
        );
        let s = Source::parse("host:").unwrap();
        assert_eq!(
            (s.user, s.host.as_str(), s.dir.as_str()),
            (None, "host", "")
        );
        let s = Source::parse("bob@[::1]:data").unwrap();
        assert_eq!((s.host.as_str(), s.dir.as_str()), ("::1", "data"));
        assert!(Source::parse("hostonly").is_err());
        assert!(Source::parse(":/x").is_err());
    }

    #[test]
    fn sshfs_style_options() {
        let o = mount(&[
            "u@h:d",
            "/mnt",
            "-p",
            "2200",
            "-o",
            "IdentityFile=/a,IdentityFile=/b,StrictHostKeyChecking=accept-new",
            "-o",
            "ro,uid=5,umask=027,idmap=user,_netdev,x-systemd.automount,nodev,reconnect",
        ]);
        let ssh: Vec<(&str, &str)> = o
            .ssh_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            ssh,
            [
                ("port", "2200"),
                ("identityfile", "/a"),
                ("identityfile", "/b"),
                ("stricthostkeychecking", "accept-new")
            ]
        );
        assert!(o.read_only && o.reconnect);
        assert_eq!((o.uid, o.umask, o.idmap), (Some(5), 0o27, IdMap::User));
        assert_eq!(o.kernel_flags, vec![fuser::MountOption::NoDev]);
        assert!(!o.foreground);
        assert!(mount(&["h:", "/m", "-d"]).foreground);
    }

    #[test]
    fn reconnect_is_on_unless_turned_off() {
        let o = mount(&["h:", "/m"]);
        assert!(o.reconnect);
        assert_eq!(o.reconnect_wait, Duration::from_secs(20));
        assert!(!mount(&["h:", "/m", "-o", "reconnect=no"]).reconnect);
        assert!(!mount(&["h:", "/m", "-o", "noreconnect"]).reconnect);
        let o = mount(&["h:", "/m", "-o", "reconnect,reconnect_wait=2.5"]);
        assert!(o.reconnect);
        assert_eq!(o.reconnect_wait, Duration::from_millis(2500));
        assert!(error(&["h:", "/m", "-o", "reconnect=maybe"]).contains("reconnect"));
    }

    #[test]
    fn write_engine_options() {
        let o = mount(&[
            "h:",
            "/m",
            "-o",
            "sftp_channels=3,write_buffer=4M,write_buffer_total=1G,short_writes",
        ]);
        assert_eq!(o.sftp_channels, 3);
        assert_eq!(o.write_buffer, 4 << 20);
        assert_eq!(o.write_buffer_total, 1 << 30);
        assert!(o.short_writes);
        assert!(
            !mount(&["h:", "/m"]).short_writes,
            "writes are taken whole by default"
        );
        assert!(error(&["h:", "/m", "-o", "write_buffer=10K"]).contains("at least 1M"));
        assert!(error(&["h:", "/m", "-o", "sftp_channels=0"]).contains("sftp_channels"));
        assert!(
            error(&["h:", "/m", "-o", "write_buffer=64M,write_buffer_total=32M"])
                .contains("write_buffer_total")
        );
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn cache_options_keep_sshfs_names() {
        let d = mount(&["h:", "/m"]).cache_config();
        assert_eq!(d, CacheConfig::default());
        let o = mount(&[
            "h:",
            "/m",
            "-o",
            "dcache_link_timeout=7,dcache_timeout=3,cache_dir_timeout=0.5,dcache_max_size=99",
            "-o",
            "attr_timeout=2.5,entry_timeout=0,kernel_cache,dcache_clean_interval=60",
            "-o",
            "negative_timeout=3",
        ]);
        let c = o.cache_config();
        assert!(c.enabled);
        assert_eq!(c.stat_timeout, Duration::from_secs(3));
        assert_eq!(c.dir_timeout, Duration::from_millis(500));
        assert_eq!(
            c.link_timeout,
            Duration::from_secs(7),
            "order does not matter"
        );
        assert_eq!(c.max_entries, 99);
        assert_eq!(o.attr_timeout, Duration::from_millis(2500));
        assert_eq!(o.entry_timeout, Duration::ZERO);
        assert_eq!(o.keep_cache, KeepCache::Always);
        assert_eq!(o.negative_timeout, Duration::from_secs(3));
        let o = mount(&["h:", "/m", "-o", "kernel_cache,noauto_cache"]);
        assert_eq!(o.keep_cache, KeepCache::Never);
        assert!(
            !mount(&["h:", "/m", "-o", "dir_cache=no"])
                .cache_config()
                .enabled
        );
        assert!(
            !mount(&["h:", "/m", "-o", "cache=no"])
                .cache_config()
                .enabled
        );
        assert!(error(&["h:", "/m", "-o", "dir_cache=maybe"]).contains("yes or no"));
        assert!(error(&["h:", "/m", "-o", "attr_timeout=-1"]).contains("attr_timeout"));
        assert!(error(&["h:", "/m", "-o", "dcache_max_size=0"]).contains("dcache_max_size"));
    }

    #[test]
    fn bad_options_are_named_in_one_line() {
        let e = error(&["h:", "/m", "-o", "frobnicate"]);
        assert!(e.contains("'frobnicate'"), "{e}");
        assert!(!e.contains('\n'));
        let e = error(&["h:", "/m", "-o", "umask=9z"]);
        assert!(e.contains("umask"), "{e}");
        let e = error(&["h:", "/m", "-o", "Frobnicate=yes"]);
        assert!(e.contains("'Frobnicate=yes'"), "{e}");
        let e = error(&["h:", "/m", "-1"]);
        assert!(e.contains("protocol 1"), "{e}");
        let e = error(&["h:"]);
        assert!(!e.contains('\n'), "{e}");
        let e = error(&["nohost", "/m"]);
        assert!(e.contains("[user@]host:[dir]"), "{e}");
    }

    /// Every option sshfs 3.7 documents (sshfs.rst, its --help, and the FUSE options it passes
    /// on) is either taken or refused with its reason, never "unknown".
    #[test]
    fn every_sshfs_option_is_known() {
        let taken = [
            "reconnect",
            "delay_connect",
            "sshfs_sync",
            "no_readahead",
            "sync_readdir",
            "sshfs_debug",
            "cache=yes",
            "cache_timeout=5",
            "cache_stat_timeout=5",
            "cache_dir_timeout=5",
            "cache_link_timeout=5",
            "cache_max_size=10",
            "cache_clean_interval=5",
            "cache_min_clean_interval=5",
            "dir_cache=no",
            "dcache_max_size=10",
            "dcache_timeout=5",
            "dcache_stat_timeout=5",
            "dcache_link_timeout=5",
            "dcache_dir_timeout=5",
            "dcache_clean_interval=5",
            "dcache_min_clean_interval=5",
            "workaround=none",
            "workaround=all",
            "workaround=rename:renamexdev:truncate:fstat:buflimit:createmode",
            "idmap=none",
            "idmap=user",
            "idmap=file,uidfile=/u",
            "gidfile=/g,idmap=file",
            "nomap=ignore",
            "nomap=error",
            "disable_hardlink",
            "transform_symlinks",
            "follow_symlinks",
            "contain_symlinks",
            "no_contain_symlinks",
            "no_check_root",
            "password_stdin",
            "max_conns=4",
            "port=22",
            "compression=yes",
            "ServerAliveInterval=15",
            "IdentityFile=/k",
            "allow_other",
            "allow_root",
            "auto_unmount",
            "default_permissions",
            "kernel_cache",
            "auto_cache",
            "noauto_cache",
            "umask=022",
            "uid=1",
            "gid=1",
            "entry_timeout=1",
            "negative_timeout=1",
            "attr_timeout=1",
            "ac_attr_timeout=1",
            "direct_io",
            "max_read=65536",
            "fsname=x",
            "subtype=y",
            "nonempty",
            "large_read",
            "hard_remove",
            "use_ino",
            "readdir_ino",
            "max_write=131072",
            "max_readahead=131072",
            "async_read",
            "sync_read",
            "big_writes",
            "noforget",
            "remember=5",
            "intr",
            "intr_signal=10",
            "blksize=4096",
        ];
        for opt in taken {
            mount(&["h:", "/m", "-o", opt]);
        }
        for flags in [
            &["-C"][..],
            &["-s"],
            &["-p", "22"],
            &["-F", "/c"],
            &["-f"],
            &["-d"],
        ] {
            let mut args = vec!["h:", "/m"];
            args.extend_from_slice(flags);
            mount(&args);
        }
        for opt in [
            "ssh_command=ssh",
            "sftp_server=/x",
            "directport=22",
            "slave",
            "passive",
            "ssh_protocol=1",
            "modules=subdir",
        ] {
            let e = error(&["h:", "/m", "-o", opt]);
            assert!(e.contains("cannot work here"), "{opt}: {e}");
        }
        assert!(error(&["h:", "/m", "-1"]).contains("protocol 1"));
    }

    #[test]
    fn help_documents_every_option() {
        let Ok(Parsed::Print(help)) = parse(["sftpmount", "--help"]) else {
            panic!("no help")
        };
        for opt in [
            "IdentityFile",
            "UserKnownHostsFile",
            "StrictHostKeyChecking",
            "ConnectTimeout",
            "password_stdin",
            "allow_other",
            "idmap",
            "-p <PORT>",
            "-F",
        ] {
            assert!(help.contains(opt), "help lacks {opt}");
        }
    }
}
