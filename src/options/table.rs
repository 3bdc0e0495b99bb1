//! The one table of what every option does here, sshfs's and FUSE's and ssh_config's included:
//! `--help`, the man page and README.md's options section are all rendered from it (a unit
//! test keeps README.md in step), so that none of them can promise what another denies.

/// Where an option comes from, which is also the section it is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Arguments before or after the mount's two.
    Flags,
    /// ssh_config keywords, given with -o as sshfs passes them to ssh.
    Ssh,
    /// sshfs's own -o options.
    Sshfs,
    /// FUSE's and mount(8)'s options.
    Mount,
    /// Options sshfs does not have.
    Own,
}

impl Section {
    pub const ALL: [Section; 5] = [
        Section::Flags,
        Section::Ssh,
        Section::Sshfs,
        Section::Mount,
        Section::Own,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Section::Flags => "Arguments",
            Section::Ssh => {
                "SSH options (ssh_config keywords, with -o as sshfs passes them to ssh)"
            }
            Section::Sshfs => "sshfs's options",
            Section::Mount => "FUSE and mount(8) options",
            Section::Own => "sftpmount's own options",
        }
    }
}

/// One row: how it is written, and what it does here.
pub struct OptionDoc {
    pub section: Section,
    pub syntax: &'static str,
    pub what: &'static str,
}

const fn row(section: Section, syntax: &'static str, what: &'static str) -> OptionDoc {
    OptionDoc {
        section,
        syntax,
        what,
    }
}

use Section::{Flags, Mount, Own, Ssh, Sshfs};

pub const TABLE: &[OptionDoc] = &[
    row(Flags, "-p PORT", "SSH port (same as -o Port=PORT)"),
    row(
        Flags,
        "-F SSH_CONFIG",
        "read this ssh_config instead of ~/.ssh/config and /etc/ssh/ssh_config (read in that order, with their Includes, as ssh reads them)",
    ),
    row(Flags, "-f", "stay in the foreground"),
    row(
        Flags,
        "-d, --debug",
        "foreground, with a debug log on stderr: connecting, logging in, and one line per SFTP request with its answer and latency (SFTPMOUNT_LOG takes a tracing filter)",
    ),
    row(
        Flags,
        "-C",
        "compress the SSH stream (same as -o Compression=yes)",
    ),
    row(
        Flags,
        "-s",
        "sshfs's single-threaded mode: accepted, no effect",
    ),
    row(
        Flags,
        "-1",
        "refused: SSH protocol 1 is insecure and gone from OpenSSH since 7.6",
    ),
    row(
        Flags,
        "-o OPT[,OPT=VALUE...]",
        "options, repeatable; the same as fstab's fourth field",
    ),
    row(
        Flags,
        "-h, --help / -V, --version",
        "this help / the version",
    ),
    row(
        Flags,
        "status [MOUNTPOINT]",
        "as a first argument: the state of this user's mounts (see sftpmount status --help)",
    ),
    // ssh_config keywords.
    row(Ssh, "Port=N, port=N", "SSH port"),
    row(
        Ssh,
        "User=NAME",
        "remote user (user@ in the source wins; else ssh_config's, else the local user)",
    ),
    row(
        Ssh,
        "HostName=NAME",
        "the host to connect to (%h is the name given)",
    ),
    row(
        Ssh,
        "IdentityFile=PATH",
        "private key to try, repeatable (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa); ~ and %d %u %r %h expanded; an encrypted one's passphrase is asked on the terminal or through SSH_ASKPASS",
    ),
    row(
        Ssh,
        "CertificateFile=PATH",
        "an OpenSSH user certificate offered with the key it certifies (default: KEY-cert.pub beside the key)",
    ),
    row(
        Ssh,
        "IdentitiesOnly=yes|no",
        "yes: of the agent's keys, only those an IdentityFile names",
    ),
    row(
        Ssh,
        "IdentityAgent=SOCKET|none",
        "the ssh-agent to ask (default $SSH_AUTH_SOCK)",
    ),
    row(
        Ssh,
        "UserKnownHostsFile=PATH",
        "known_hosts file, repeatable; replaces ~/.ssh/known_hosts as in OpenSSH; none or /dev/null with StrictHostKeyChecking=accept-new or no: accepted and recorded nowhere",
    ),
    row(
        Ssh,
        "GlobalKnownHostsFile=PATH",
        "replaces /etc/ssh/ssh_known_hosts and /etc/ssh/ssh_known_hosts2 (the defaults, as in ssh)",
    ),
    row(
        Ssh,
        "StrictHostKeyChecking=ask|yes|accept-new|no",
        "unknown host key: ask at the terminal as ssh does (ask, the default: yes or the fingerprint records it; with no terminal or in BatchMode, refused), refuse (yes), or learn it; a changed key is always refused",
    ),
    row(
        Ssh,
        "RevokedHostKeys=PATH",
        "a file of public keys (one a line) never accepted for any host; a file that cannot be read, or a binary KRL, refuses the connection",
    ),
    row(
        Ssh,
        "HashKnownHosts=yes|no",
        "a learned host key's line names the host hashed (|1|salt|hash), as ssh writes it (Debian's /etc/ssh/ssh_config says yes)",
    ),
    row(
        Ssh,
        "HostKeyAlias=NAME",
        "the name the host key is looked up and recorded under",
    ),
    row(
        Ssh,
        "ProxyJump=[user@]host[:port][,...]",
        "reach the server through jump hosts, in process over direct-tcpip channels, each hop configured by ssh_config (none: directly)",
    ),
    row(
        Ssh,
        "ProxyCommand=COMMAND",
        "reach the server through a command's stdin and stdout, run by /bin/sh (%h %p %r %n expanded; e.g. ssh -W %h:%p gateway)",
    ),
    row(
        Ssh,
        "Ciphers=, KexAlgorithms=, HostKeyAlgorithms=, MACs=",
        "algorithm lists as in ssh_config: a list, +list to append, -patterns to remove, ^list to put first; one sftpmount lacks is named in the error",
    ),
    row(
        Ssh,
        "Compression=yes|no",
        "zlib compression of the SSH stream (default no)",
    ),
    row(
        Ssh,
        "ConnectTimeout=SECONDS",
        "give up connecting after this long (default 15)",
    ),
    row(
        Ssh,
        "ServerAliveInterval=SECONDS, ServerAliveCountMax=N",
        "SSH keepalives: the connection counts as lost after N unanswered (default 15 s, 3)",
    ),
    row(
        Ssh,
        "BatchMode=yes",
        "never ask for a password, a passphrase or a host key's trust",
    ),
    row(
        Ssh,
        "NumberOfPasswordPrompts=N",
        "times a password or a key's passphrase is asked before going on (default 3)",
    ),
    row(
        Ssh,
        "PubkeyAuthentication=, PasswordAuthentication=, KbdInteractiveAuthentication=",
        "no: that method is not tried",
    ),
    row(
        Ssh,
        "LogLevel=, ControlPath=, ...",
        "interactive ssh's settings, accepted with no effect: AddKeysToAgent, AddressFamily, Canonical*, CheckHostIP, ControlMaster, ControlPath, ControlPersist, EscapeChar, ExitOnForwardFailure, ForwardAgent, ForwardX11*, GSSAPI*, IPQoS, LogLevel, NoHostAuthenticationForLocalhost, PreferredAuthentications, Protocol, RequestTTY, SendEnv, SetEnv, TCPKeepAlive, UpdateHostKeys, VerifyHostKeyDNS, VisualHostKey",
    ),
    row(
        Ssh,
        "any other keyword",
        "refused with -o, as ssh refuses it; ignored in a config file, which also serves ssh",
    ),
    // sshfs's options.
    row(
        Sshfs,
        "reconnect, reconnect=no",
        "re-establish a lost connection (default yes): open files carry on (see RECONNECTING in sftpmount(1))",
    ),
    row(
        Sshfs,
        "delay_connect",
        "accepted with a note: sftpmount connects when mounting, so that a wrong host, key or password fails the mount at once",
    ),
    row(
        Sshfs,
        "sshfs_sync",
        "a write returns once the server has it, and its error to that write",
    ),
    row(
        Sshfs,
        "no_readahead",
        "read only what programs ask: no read-ahead of a file's next bytes or of a directory's next small files",
    ),
    row(
        Sshfs,
        "sync_readdir",
        "accepted: a listing is always read whole and in order",
    ),
    row(
        Sshfs,
        "sshfs_debug",
        "log one line per SFTP request with its answer and latency, also in the background (to logfile=)",
    ),
    row(
        Sshfs,
        "dir_cache=yes|no, cache=yes|no",
        "cache attributes, listings, symlink targets and missing names (default yes)",
    ),
    row(
        Sshfs,
        "dcache_timeout=SECONDS, cache_timeout=",
        "how long the cache trusts what the server said (default 20)",
    ),
    row(
        Sshfs,
        "dcache_stat_timeout=, dcache_dir_timeout=, dcache_link_timeout= (also cache_*_timeout=)",
        "the same for attributes, listings, symlink targets only",
    ),
    row(
        Sshfs,
        "dcache_max_size=N, cache_max_size=N",
        "names kept at most (default 10000)",
    ),
    row(
        Sshfs,
        "dcache_clean_interval=, dcache_min_clean_interval= (also cache_*)",
        "accepted: expired entries are dropped when met, the LRU bounds the rest",
    ),
    row(
        Sshfs,
        "workaround=LIST",
        "colon-separated: renamexdev (a rename the server fails without a reason is EXDEV, so mv copies instead), all, none; rename (always done: a rename over a file works without posix-rename), truncate, fstat, buflimit, createmode are accepted, none needed",
    ),
    row(
        Sshfs,
        "idmap=none|user|file|names",
        "user: the login's uid/gid on the server (its home's) shown as the local user's; file: by name, from uidfile= and gidfile=; names: by name, as the server names its ids (users-groups-by-id@openssh.com, OpenSSH 9.1; ids below 65536, asked once at mount): a remote user whose name exists here shows as the local user of that name, and chown maps back",
    ),
    row(
        Sshfs,
        "uidfile=FILE, gidfile=FILE",
        "idmap=file's maps: lines of name:remote-id; the id is shown as the local id of that name",
    ),
    row(
        Sshfs,
        "nomap=ignore|error",
        "idmap=file or names, an id with no mapping: shown as it is (ignore), or as nobody/nogroup (error, the default; sshfs fails the stat)",
    ),
    row(
        Sshfs,
        "follow_symlinks",
        "show what a symlink on the server points to (a dangling one as the symlink it is)",
    ),
    row(
        Sshfs,
        "transform_symlinks",
        "an absolute symlink target inside the mounted directory is shown relative to the link, so it resolves inside the mount; other targets are shown as they are",
    ),
    row(
        Sshfs,
        "contain_symlinks, no_contain_symlinks",
        "a symlink whose target could lead out of the mount (absolute, or with a .. component) reads as EPERM, so nothing follows it to a file of this machine, as sshfs 3.7.6 does (a target transform_symlinks made is kept); off by default, unlike sshfs 3.7.6: see Symlinks below",
    ),
    row(
        Sshfs,
        "disable_hardlink",
        "link(2) fails (EPERM, as for any filesystem without hard links)",
    ),
    row(
        Sshfs,
        "max_conns=N",
        "N SSH connections (1 to 32), the SFTP channels spread over them: each has its own TCP window and sshd process (default 1; 2, with 16 channels, on a link of 200 ms or more unless this or sftp_channels= is given)",
    ),
    row(
        Sshfs,
        "password_stdin",
        "read the password from standard input",
    ),
    row(
        Sshfs,
        "no_check_root",
        "accepted: the directory is always checked, so a wrong path fails the mount",
    ),
    row(
        Sshfs,
        "ssh_command=, sftp_server=, directport=, slave, passive",
        "refused: sftpmount speaks SSH and SFTP itself and runs no ssh or sftp-server program (ssh_config is read as ssh reads it; ProxyCommand runs a command for the transport)",
    ),
    row(Sshfs, "ssh_protocol=N", "refused: protocol 2 only"),
    // FUSE and mount(8).
    row(Mount, "allow_other", "let other users use the mount"),
    row(Mount, "allow_root", "let root use the mount too"),
    row(
        Mount,
        "default_permissions",
        "let the kernel check permissions from the modes",
    ),
    row(
        Mount,
        "auto_unmount",
        "if the daemon dies, fusermount3 unmounts (as for allow_root, a non-root user needs user_allow_other in /etc/fuse.conf)",
    ),
    row(Mount, "ro, rw", "read-only / read-write"),
    row(
        Mount,
        "uid=N, gid=N",
        "show every file as owned by this uid / gid",
    ),
    row(
        Mount,
        "umask=OCTAL",
        "remove these permission bits from every file shown",
    ),
    row(
        Mount,
        "fsname=NAME, subtype=TYPE",
        "the source and type mount(8) and df show (default: the remote, fuse.sftpmount)",
    ),
    row(
        Mount,
        "attr_timeout=SECONDS, entry_timeout=SECONDS",
        "how long the kernel trusts attributes and names (default 1, fractions allowed)",
    ),
    row(
        Mount,
        "negative_timeout=SECONDS",
        "how long the kernel trusts that a name does not exist (default 0: it asks sftpmount, whose cache answers)",
    ),
    row(
        Mount,
        "auto_cache, kernel_cache, noauto_cache",
        "keep the kernel's cached pages of a file across opens while its size and mtime are unchanged (auto_cache, the default), always, or never",
    ),
    row(
        Mount,
        "direct_io",
        "bypass the kernel's page cache: every read and write goes to sftpmount",
    ),
    row(
        Mount,
        "max_read=N",
        "the largest read the kernel sends (bytes)",
    ),
    row(
        Mount,
        "nonempty",
        "accepted: FUSE 3 mounts over a non-empty directory anyway",
    ),
    row(
        Mount,
        "use_ino, hard_remove, ...",
        "libfuse's high-level and tuning options, accepted with no effect (sftpmount speaks FUSE's low-level protocol with its own inode numbers): ac_attr_timeout, async_dio, async_read, atomic_o_trunc, auto_inval_data, big_writes, blksize, congestion_threshold, hard_remove, intr, intr_signal, large_read, max_background, max_readahead, max_write, noforget, nopath, readdir_ino, remember, splice_*, sync_read, use_ino, writeback_cache (and their no_ forms)",
    ),
    row(
        Mount,
        "modules=",
        "refused: subdir and iconv are libfuse's; mount the subdirectory itself",
    ),
    row(
        Mount,
        "dev, nodev, suid, nosuid, exec, noexec, atime, noatime",
        "passed to the kernel (default nodev,nosuid; from fstab, dev and suid are ignored: a server's device files and setuid programs would act on this machine)",
    ),
    row(
        Mount,
        "auto, noauto, _netdev, user, users, nouser, nofail, defaults, x-systemd.*, comment=",
        "fstab's: accepted, ignored (mount(8) and systemd act on them)",
    ),
    // sftpmount's own.
    row(
        Own,
        "reconnect_wait=SECONDS",
        "how long an operation waits for a lost connection, counted from the loss (default 20); then EIO at once until the server is back",
    ),
    row(
        Own,
        "request_timeout=SECONDS",
        "an SFTP request the server has not answered in this long fails (default 60)",
    ),
    row(
        Own,
        "sftp_channels=N",
        "SFTP channels (default 8, 16 over 2 connections on a link of 200 ms or more; sshd's MaxSessions, default 10 a connection, caps it, and one must be left to replace a stalled channel): a large file's writes spread over all of them but the first, each with its own 2 MiB window",
    ),
    row(
        Own,
        "write_buffer=SIZE, write_buffer_total=SIZE",
        "unacknowledged data one open file, and all files together, may hold (default 32M, 64M; K, M, G suffixes)",
    ),
    row(
        Own,
        "short_writes",
        "a write that does not fit in the buffer is answered with a short count for the part that fit, instead of waiting for room (programs that ignore write(2)'s count lose the rest, where a local filesystem would have taken it all)",
    ),
    row(
        Own,
        "dir_prefetch=yes|no",
        "while a directory is read, fetch the listings below it into the cache (default yes; needs dir_cache)",
    ),
    row(
        Own,
        "logfile=PATH",
        "append the log to PATH, also in the background (else: syslog, or without one \
         ~/.local/state/sftpmount/log)",
    ),
];

/// The table as `--help` shows it: sections, two columns, wrapped at `width`.
pub fn help_text(width: usize) -> String {
    const LEFT: usize = 30;
    let mut out = String::new();
    for section in Section::ALL.into_iter().filter(|s| *s != Flags) {
        out.push_str(section.title());
        out.push_str(":\n");
        for doc in TABLE.iter().filter(|d| d.section == section) {
            let lines = wrap(doc.what, width.saturating_sub(LEFT + 2).max(30));
            let syntax = format!("  {}", doc.syntax);
            if syntax.len() < LEFT {
                out.push_str(&format!("{syntax:LEFT$}{}\n", lines[0]));
                for line in &lines[1..] {
                    out.push_str(&format!("{:LEFT$}{line}\n", ""));
                }
            } else {
                out.push_str(&syntax);
                out.push('\n');
                for line in &lines {
                    out.push_str(&format!("{:LEFT$}{line}\n", ""));
                }
            }
        }
        out.push('\n');
    }
    out.push_str(
        "Unmount with `umount MOUNTPOINT` or `fusermount3 -u MOUNTPOINT`: data in flight is \
         written first.\nfstab: `alice@host:/srv /mnt/srv fuse.sftpmount \
         _netdev,IdentityFile=/root/.ssh/id 0 0`\nEach mount's state (connection, \
         reconnections, traffic, files): `sftpmount status [MOUNTPOINT]`.\nMore: man \
         sftpmount.",
    );
    out
}

/// README.md's options section: a Markdown table per section.
pub fn markdown() -> String {
    let mut out = String::new();
    for section in Section::ALL {
        out.push_str(&format!(
            "**{}**\n\n| option | what it does here |\n|---|---|\n",
            section.title()
        ));
        for doc in TABLE.iter().filter(|d| d.section == section) {
            out.push_str(&format!(
                "| `{}` | {} |\n",
                doc.syntax.replace('|', "\\|"),
                doc.what.replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().unwrap();
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's options section is the table's: regenerate it with `scripts/docs`.
    #[test]
    fn readme_lists_the_table() {
        let readme = include_str!("../../README.md");
        let begin = "<!-- options: generated by scripts/docs from src/options/table.rs -->\n";
        let end = "<!-- options end -->";
        let start = readme
            .find(begin)
            .expect("README.md has the options markers")
            + begin.len();
        let stop = readme[start..].find(end).expect("the end marker") + start;
        assert!(
            readme[start..stop] == markdown(),
            "README.md's options section differs from src/options/table.rs: run scripts/docs"
        );
    }

    #[test]
    fn help_lines_fit() {
        for line in help_text(100).lines() {
            assert!(line.len() <= 100 || !line.contains(' '), "{line}");
        }
    }
}
