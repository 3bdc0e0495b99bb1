//! Where and how to connect: the command line's settings over ssh_config, read into a
//! [`Target`] as ssh would (tokens, defaults, algorithm lists, the route through jump hosts or
//! a proxy command). Every value is checked here, once, whichever of the two it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::Algorithm;
use russh::{Preferred, cipher, compression, kex, mac};

use super::config::{self, HostConfig, Lookup};
use super::{SecretCache, SshError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    Yes,
    /// ssh's default: a person at a terminal is asked (yes, no or the fingerprint); with
    /// nobody to ask, as `Yes`.
    Ask,
    AcceptNew,
    No,
}

impl StrictHostKeyChecking {
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "yes" => Some(Self::Yes),
            "ask" => Some(Self::Ask),
            "accept-new" => Some(Self::AcceptNew),
            "no" | "off" => Some(Self::No),
            _ => None,
        }
    }
}

/// How the SSH stream reaches the server.
#[derive(Debug, Clone)]
pub enum Route {
    /// A TCP connection to host:port.
    Direct,
    /// A direct-tcpip channel of an SSH connection to this jump host (itself routed).
    Jump(Arc<Target>),
    /// A command's stdin and stdout (ProxyCommand, tokens expanded), run by /bin/sh.
    Command(String),
}

/// Which agent to ask for keys (IdentityAgent).
#[derive(Debug, Clone)]
pub enum Agent {
    /// `$SSH_AUTH_SOCK`, when set.
    Env,
    None,
    Socket(PathBuf),
}

/// Where and how to connect, after the command line and ssh_config are merged.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name to connect to (HostName).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub route: Route,
    /// HostKeyAlias: the name looked up and recorded in known_hosts instead of host:port.
    pub host_key_alias: Option<String>,
    pub identity_files: Vec<PathBuf>,
    /// Explicit identity files must exist; defaults are tried when present.
    pub identity_files_explicit: bool,
    /// CertificateFile: user certificates offered with the key they certify.
    pub certificate_files: Vec<PathBuf>,
    /// IdentitiesOnly: only the agent's keys that an identity file names.
    pub identities_only: bool,
    pub agent: Agent,
    pub known_hosts_files: Vec<PathBuf>,
    /// Where a learned host key is written; `None` (`UserKnownHostsFile=none`) or a device
    /// such as /dev/null: accepted for this mount, recorded nowhere.
    pub learn_into: Option<PathBuf>,
    /// HashKnownHosts: a learned host's name is recorded hashed (Debian's ssh_config sets it).
    pub hash_known_hosts: bool,
    /// RevokedHostKeys: a file of public keys never accepted for any host.
    pub revoked_host_keys: Option<PathBuf>,
    pub strict: StrictHostKeyChecking,
    /// Ciphers, KexAlgorithms, HostKeyAlgorithms, MACs, Compression.
    pub algorithms: Preferred,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_max: u32,
    pub methods: Methods,
    /// BatchMode: never ask anybody for a password or passphrase.
    pub batch_mode: bool,
    /// Times a password or passphrase is asked (NumberOfPasswordPrompts).
    pub password_prompts: u32,
    pub password_stdin: bool,
    /// What the first connection was given, for the reconnections.
    pub secrets: Arc<SecretCache>,
}

/// The authentication methods ssh_config leaves on.
#[derive(Debug, Clone, Copy)]
pub struct Methods {
    pub publickey: bool,
    pub keyboard_interactive: bool,
    pub password: bool,
}

/// A host to resolve: as typed on the command line, or one hop of a ProxyJump list.
struct HostSpec {
    name: String,
    /// Settings read before any ssh_config file (the command line's, a hop's user and port).
    first: Vec<(String, String)>,
}

/// What the mount asks for: the host and user as given, the ssh_config keywords given on the
/// command line (lower-cased, in order), the config file to read instead of ~/.ssh/config.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub host: String,
    pub user: Option<String>,
    pub ssh_options: Vec<(String, String)>,
    pub ssh_config: Option<std::path::PathBuf>,
    /// The password is read from standard input (`password_stdin`).
    pub password_stdin: bool,
}

/// Jump hosts within jump hosts, at most (ssh has no limit, but a loop must end).
const MAX_HOPS: usize = 8;

impl Target {
    /// The mount's target: `-o` ssh_config keywords win over ssh_config, as with ssh(1).
    pub fn resolve(wanted: &Wanted) -> Result<Target, SshError> {
        // -F replaces both of ssh's files, as in ssh.
        let config_paths = match &wanted.ssh_config {
            Some(path) => vec![path.clone()],
            None => config::default_paths(),
        };
        let mut first = Vec::new();
        if let Some(user) = &wanted.user {
            first.push(("user".to_string(), user.clone()));
        }
        first.extend(wanted.ssh_options.iter().cloned());
        let spec = HostSpec {
            name: wanted.host.clone(),
            first,
        };
        let mut target = resolve_host(spec, &config_paths, 0)?;
        target.password_stdin = wanted.password_stdin;
        Ok(target)
    }

    /// host:port as people write it: an IPv6 literal in brackets (`[::1]:22`).
    pub fn addr(&self) -> String {
        super::host_port(&self.host, self.port)
    }

    /// The host as known_hosts names it.
    pub fn known_hosts_name(&self) -> String {
        match &self.host_key_alias {
            Some(alias) => alias.clone(),
            None if self.port == 22 => self.host.clone(),
            None => format!("[{}]:{}", self.host, self.port),
        }
    }

    /// Whether a person may be asked something now (a secret, a host key's trust): not in
    /// BatchMode, and not once a login succeeded: a reconnection asks nobody, as whoever
    /// mounted may be long gone from that terminal.
    pub fn may_ask(&self) -> bool {
        !self.batch_mode
            && !self
                .secrets
                .logged_in
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The name and port a known_hosts lookup uses (HostKeyAlias drops the port, as in ssh).
    pub fn known_hosts_key(&self) -> (&str, u16) {
        match &self.host_key_alias {
            Some(alias) => (alias, 22),
            None => (&self.host, self.port),
        }
    }
}

/// A host name as OpenSSH 9.6+ takes it from the command line or a ProxyJump (ssh.c's
/// valid_hostname): none of a shell's special characters, no whitespace or control character,
/// no leading `-` (it would read as an option to a ProxyCommand's program).
fn valid_hostname(name: &str) -> bool {
    !name.starts_with('-')
        && !name
            .chars()
            .any(|c| "'`\"$\\;&<>|(){}".contains(c) || c.is_whitespace() || c.is_control())
}

/// A user name as OpenSSH takes it from the command line (ssh.c's valid_ruser).
fn valid_user(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.starts_with('-')
        && !name
            .chars()
            .any(|c| "'`\";&<>|(){}".contains(c) || c.is_control())
        && !bytes
            .windows(2)
            .any(|w| w[0].is_ascii_whitespace() && w[1] == b'-')
        && !name.ends_with('\\')
}

fn resolve_host(spec: HostSpec, config_paths: &[PathBuf], hops: usize) -> Result<Target, SshError> {
    // Before the name reaches anything that may run a command (Match exec, ProxyCommand).
    if !valid_hostname(&spec.name) {
        return Err(SshError::InvalidName {
            what: "host name",
            name: spec.name.escape_debug().to_string(),
        });
    }
    if let Some((_, user)) = spec.first.iter().find(|(k, _)| k == "user")
        && !valid_user(user)
    {
        return Err(SshError::InvalidName {
            what: "user name",
            name: user.escape_debug().to_string(),
        });
    }
    let local_user = super::local_user_name();
    let lookup = Lookup {
        host: &spec.name,
        local_user: &local_user,
    };
    let c = config::load(&spec.first, config_paths, &lookup)?;
    let bad = |key: &str, value: &str, why: String| SshError::BadSetting {
        key: key.to_string(),
        value: value.to_string(),
        why,
    };
    let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    let host = c
        .get("hostname")
        .map(|h| config::expand_percent_h(h, &spec.name))
        .unwrap_or_else(|| spec.name.clone());
    let port = match c.get("port") {
        Some(p) => p
            .parse()
            .map_err(|_| bad("Port", p, "expected a port number".into()))?,
        None => 22,
    };
    let user = c
        .get("user")
        .map(str::to_string)
        .unwrap_or_else(|| local_user.clone());
    let port_text = port.to_string();
    let tokens = [
        ('d', home.to_str().unwrap_or("/")),
        ('u', local_user.as_str()),
        ('r', user.as_str()),
        ('h', host.as_str()),
        ('n', spec.name.as_str()),
        ('p', port_text.as_str()),
    ];
    let path = |p: &str| config::expand_tilde(&config::expand_tokens(p, &tokens));

    let route = match (c.get("proxyjump"), c.get("proxycommand")) {
        (Some(jump), _) if !jump.eq_ignore_ascii_case("none") => {
            if hops >= MAX_HOPS {
                return Err(bad(
                    "ProxyJump",
                    jump,
                    format!("more than {MAX_HOPS} jump hosts: is there a loop in ssh_config?"),
                ));
            }
            let mut hosts: Vec<&str> = jump.split(',').map(str::trim).collect();
            let last = hosts.pop().unwrap_or_default();
            let mut hop = jump_spec(last).map_err(|why| bad("ProxyJump", jump, why))?;
            // ssh -J a,b reaches b through a: the earlier hops are b's ProxyJump.
            if !hosts.is_empty() {
                hop.first.push(("proxyjump".into(), hosts.join(",")));
            }
            Route::Jump(Arc::new(resolve_host(hop, config_paths, hops + 1)?))
        }
        (_, Some(command)) if !command.eq_ignore_ascii_case("none") => {
            Route::Command(config::expand_tokens(command, &tokens))
        }
        _ => Route::Direct,
    };

    let mut identity_files: Vec<PathBuf> =
        c.get_all("identityfile").iter().map(|p| path(p)).collect();
    identity_files.retain(|p| p != Path::new("none"));
    let identity_files_explicit = !identity_files.is_empty();
    if !identity_files_explicit {
        identity_files = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| home.join(".ssh").join(n))
            .collect();
    }
    let certificate_files = c
        .get_all("certificatefile")
        .iter()
        .map(|p| path(p))
        .collect();
    let agent = match c.get("identityagent") {
        None => Agent::Env,
        Some(v) if v.eq_ignore_ascii_case("none") => Agent::None,
        Some("SSH_AUTH_SOCK") => Agent::Env,
        Some(v) => match v.strip_prefix('$') {
            Some(var) => std::env::var_os(var)
                .map(|s| Agent::Socket(PathBuf::from(s)))
                .unwrap_or(Agent::None),
            None => Agent::Socket(path(v)),
        },
    };

    let mut user_files: Vec<PathBuf> = Vec::new();
    for value in c.get_all("userknownhostsfile") {
        user_files.extend(value.split_whitespace().map(path));
    }
    // As in OpenSSH: UserKnownHostsFile replaces ~/.ssh/known_hosts, `none` names no file.
    if user_files.is_empty() {
        user_files.push(home.join(".ssh/known_hosts"));
    }
    user_files.retain(|p| p != Path::new("none"));
    let learn_into = user_files.first().cloned();
    let mut known_hosts_files = user_files;
    match c.get("globalknownhostsfile") {
        Some(files) => {
            known_hosts_files.extend(files.split_whitespace().filter(|f| *f != "none").map(path))
        }
        None => known_hosts_files
            .extend(["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"].map(PathBuf::from)),
    }
    known_hosts_files.dedup();

    let yes_no = |key: &str, default: bool| -> Result<bool, SshError> {
        match c.get(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "yes" | "true" => Ok(true),
                "no" | "false" => Ok(false),
                _ => Err(bad(key, v, "expected yes or no".into())),
            },
        }
    };
    let secs = |key: &str, default: u64| -> Result<Duration, SshError> {
        match c.get(key) {
            None => Ok(Duration::from_secs(default)),
            Some(v) if v.eq_ignore_ascii_case("none") => Ok(Duration::from_secs(default)),
            Some(v) => v
                .parse()
                .map(Duration::from_secs)
                .map_err(|_| bad(key, v, "expected whole seconds".into())),
        }
    };
    let strict = match c.get("stricthostkeychecking") {
        None => StrictHostKeyChecking::Ask,
        Some(v) => StrictHostKeyChecking::parse(v).ok_or_else(|| {
            bad(
                "StrictHostKeyChecking",
                v,
                "expected yes, ask, accept-new or no".into(),
            )
        })?,
    };
    let keepalive_max = match c.get("serveralivecountmax") {
        None => 3,
        Some(v) => v
            .parse()
            .map_err(|_| bad("ServerAliveCountMax", v, "expected a count".into()))?,
    };
    let kbd = yes_no(
        "kbdinteractiveauthentication",
        yes_no("challengeresponseauthentication", true)?,
    )?;
    Ok(Target {
        route,
        host_key_alias: c.get("hostkeyalias").map(str::to_string),
        identity_files,
        identity_files_explicit,
        certificate_files,
        identities_only: yes_no("identitiesonly", false)?,
        agent,
        known_hosts_files,
        learn_into,
        hash_known_hosts: yes_no("hashknownhosts", false)?,
        revoked_host_keys: c
            .get("revokedhostkeys")
            .filter(|v| !v.eq_ignore_ascii_case("none"))
            .map(path),
        strict,
        algorithms: algorithms(&c)?,
        connect_timeout: secs("connecttimeout", 15)?,
        keepalive_interval: secs("serveraliveinterval", 15)?,
        keepalive_max,
        methods: Methods {
            publickey: yes_no("pubkeyauthentication", true)?,
            keyboard_interactive: kbd,
            password: yes_no("passwordauthentication", true)?,
        },
        batch_mode: yes_no("batchmode", false)?,
        password_prompts: match c.get("numberofpasswordprompts") {
            None => 3,
            Some(v) => v
                .parse()
                .map_err(|_| bad("NumberOfPasswordPrompts", v, "expected a number".into()))?,
        },
        password_stdin: false,
        secrets: Arc::default(),
        host,
        port,
        user,
    })
}

/// One ProxyJump hop: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
fn jump_spec(text: &str) -> Result<HostSpec, String> {
    let rest = text.strip_prefix("ssh://").unwrap_or(text);
    let (user, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || user.is_some_and(str::is_empty) {
        return Err(format!(
            "bad jump host '{text}': expected [user@]host[:port]"
        ));
    }
    let mut first = Vec::new();
    if let Some(user) = user {
        first.push(("user".into(), user.to_string()));
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .map_err(|_| format!("bad port in jump host '{text}'"))?;
        first.push(("port".into(), port.to_string()));
    }
    Ok(HostSpec {
        name: host.to_string(),
        first,
    })
}

/// The algorithm lists, from ssh_config's syntax: a list replaces the default, `+list` appends
/// to it, `-patterns` removes from it, `^list` puts first.
fn algorithms(c: &HostConfig) -> Result<Preferred, SshError> {
    let mut preferred = Preferred::default();
    // aes256-gcm is about twice as fast as chacha20-poly1305 on machines with AES-NI (DESIGN.md).
    let mut ciphers = vec![cipher::AES_256_GCM, cipher::AES_128_GCM];
    ciphers.extend(
        preferred
            .cipher
            .iter()
            .filter(|c| !ciphers.contains(c))
            .copied()
            .collect::<Vec<_>>(),
    );
    preferred.cipher = ciphers.into();
    if let Some(v) = c.get("ciphers") {
        preferred.cipher = edit_list(
            "Ciphers",
            v,
            &preferred.cipher,
            cipher::ALL_CIPHERS.iter().map(|n| **n),
            |n| n.as_ref().to_string(),
        )?
        .into();
    }
    if let Some(v) = c.get("macs") {
        preferred.mac = edit_list(
            "MACs",
            v,
            &preferred.mac,
            mac::ALL_MAC_ALGORITHMS.iter().map(|n| **n),
            |n| n.as_ref().to_string(),
        )?
        .into();
    }
    if let Some(v) = c.get("kexalgorithms") {
        // The extension markers (strict key exchange against Terrapin, ext-info) are not key
        // exchange methods: they stay whatever the user lists.
        let (markers, methods): (Vec<kex::Name>, Vec<kex::Name>) =
            preferred.kex.iter().partition(|k| {
                k.as_ref().starts_with("ext-info") || k.as_ref().starts_with("kex-strict")
            });
        let mut list = edit_list(
            "KexAlgorithms",
            v,
            &methods,
            kex::ALL_KEX_ALGORITHMS.iter().map(|n| **n),
            |n| n.as_ref().to_string(),
        )?;
        list.extend(markers);
        preferred.kex = list.into();
    }
    if let Some(v) = c.get("hostkeyalgorithms") {
        let all = [
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "rsa-sha2-512",
            "rsa-sha2-256",
            "ssh-rsa",
        ]
        .iter()
        .filter_map(|n| Algorithm::new(n).ok())
        .collect::<Vec<_>>();
        // Host certificates are not verified (no CA is trusted for hosts): their names are
        // passed over, as a server without them would.
        let names: Vec<&str> = v
            .split(',')
            .filter(|n| !n.contains("-cert-v01@openssh.com"))
            .collect();
        preferred.key = edit_list(
            "HostKeyAlgorithms",
            &names.join(","),
            &preferred.key,
            all.into_iter(),
            |a| a.as_str().to_string(),
        )?
        .into();
    }
    match c.get("compression").map(str::to_ascii_lowercase).as_deref() {
        None | Some("no") => preferred.compression = vec![compression::NONE].into(),
        Some("yes") => {
            preferred.compression = vec![
                compression::ZLIB_LEGACY,
                compression::ZLIB,
                compression::NONE,
            ]
            .into()
        }
        Some(other) => {
            return Err(SshError::BadSetting {
                key: "Compression".into(),
                value: other.into(),
                why: "expected yes or no".into(),
            });
        }
    }
    Ok(preferred)
}

fn edit_list<T: Clone + PartialEq>(
    key: &str,
    value: &str,
    default: &[T],
    supported: impl Iterator<Item = T>,
    name: impl Fn(&T) -> String,
) -> Result<Vec<T>, SshError> {
    let supported: Vec<T> = supported.collect();
    let bad = |why: String| SshError::BadSetting {
        key: key.to_string(),
        value: value.to_string(),
        why,
    };
    let lookup = |list: &str| -> Result<Vec<T>, SshError> {
        let mut out = Vec::new();
        for wanted in list.split(',').filter(|n| !n.is_empty()) {
            let found: Vec<T> = supported
                .iter()
                .filter(|s| config::wildcard_match(wanted, &name(s)))
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(bad(format!(
                    "sftpmount does not support '{wanted}' (it does: {})",
                    supported.iter().map(&name).collect::<Vec<_>>().join(",")
                )));
            }
            out.extend(
                found
                    .into_iter()
                    .filter(|f| !out.contains(f))
                    .collect::<Vec<_>>(),
            );
        }
        Ok(out)
    };
    let list = if let Some(rest) = value.strip_prefix('+') {
        let mut list = default.to_vec();
        list.extend(lookup(rest)?.into_iter().filter(|a| !default.contains(a)));
        list
    } else if let Some(rest) = value.strip_prefix('-') {
        default
            .iter()
            .filter(|a| !rest.split(',').any(|p| config::wildcard_match(p, &name(a))))
            .cloned()
            .collect()
    } else if let Some(rest) = value.strip_prefix('^') {
        let mut list = lookup(rest)?;
        list.extend(
            default
                .iter()
                .filter(|a| !list.contains(a))
                .cloned()
                .collect::<Vec<_>>(),
        );
        list
    } else {
        lookup(value)?
    };
    if list.is_empty() {
        return Err(bad("leaves no algorithm to use".into()));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hosts_as_ssh_writes_them() {
        let h = jump_spec("ssh://alice@bastion:2222").unwrap();
        assert_eq!(h.name, "bastion");
        assert_eq!(
            h.first,
            [
                ("user".into(), "alice".into()),
                ("port".into(), "2222".into())
            ]
        );
        assert_eq!(jump_spec("[::1]:22").unwrap().name, "::1");
        assert!(jump_spec("@x").is_err());
        assert!(jump_spec("x:port").is_err());
    }

    #[test]
    fn algorithm_lists_edit_the_default() {
        let mut c = HostConfig::default();
        c.set("ciphers", "aes128-ctr".into());
        c.set("kexalgorithms", "-mlkem*,diffie-hellman*".into());
        c.set(
            "hostkeyalgorithms",
            "ssh-ed25519-cert-v01@openssh.com,ssh-ed25519".into(),
        );
        c.set("compression", "yes".into());
        let p = algorithms(&c).unwrap();
        assert_eq!(p.cipher.as_ref(), [cipher::AES_128_CTR]);
        assert!(!p.kex.iter().any(|k| k.as_ref().starts_with("mlkem")));
        assert!(p.kex.contains(&kex::CURVE25519));
        assert!(p.kex.iter().any(|k| k.as_ref().starts_with("kex-strict")));
        assert_eq!(p.key.as_ref(), [Algorithm::Ed25519]);
        assert_eq!(p.compression[0], compression::ZLIB_LEGACY);
        let mut c = HostConfig::default();
        c.set("ciphers", "+3des-cbc".into());
        let e = algorithms(&c).unwrap_err().to_string();
        assert!(e.contains("'3des-cbc'") && e.contains("aes128-ctr"), "{e}");
        let mut c = HostConfig::default();
        c.set("ciphers", "^aes128-ctr".into());
        assert_eq!(algorithms(&c).unwrap().cipher[0], cipher::AES_128_CTR);
        assert_eq!(
            algorithms(&HostConfig::default())
                .unwrap()
                .compression
                .as_ref(),
            [compression::NONE]
        );
    }
}
