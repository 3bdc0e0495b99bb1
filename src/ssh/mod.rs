//! SSH transport: resolving the target through ssh_config, connecting within ConnectTimeout,
//! verifying the host key against known_hosts, and authenticating in OpenSSH's order (agent,
//! key files, keyboard-interactive, password). Secrets are never logged or printed.

pub mod config;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};
use russh::{MethodKind, cipher};
use tracing::{debug, info, warn};

use crate::options::{Options, StrictHostKeyChecking};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {secs} s (ConnectTimeout)")]
    Timeout { addr: String, secs: u64 },
    #[error(
        "host key for {host} is not known ({fingerprint}); check it, then mount once with -o StrictHostKeyChecking=accept-new to trust it"
    )]
    UnknownHostKey { host: String, fingerprint: String },
    #[error(
        "HOST KEY FOR {host} HAS CHANGED (now {fingerprint}), refusing to connect; if you expected this, remove line {line} of {file}"
    )]
    ChangedHostKey {
        host: String,
        fingerprint: String,
        file: String,
        line: usize,
    },
    #[error("cannot record the host key in {file}: {why}")]
    LearnHostKey { file: String, why: String },
    #[error("authentication refused for {user}@{host} (tried: {tried})")]
    AuthRefused {
        user: String,
        host: String,
        tried: String,
    },
    #[error("cannot read key {path}: {why}")]
    KeyFile { path: String, why: String },
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("SSH error: {0}")]
    Protocol(#[from] russh::Error),
    #[error("SSH session with {addr} failed: {why}")]
    Session { addr: String, why: String },
    #[error(
        "{key} {value} (ssh_config, host {host}) is not supported yet: sftpmount would connect to {host} directly instead; mount from a host that reaches it directly, or use sshfs for now"
    )]
    Unsupported {
        key: &'static str,
        value: String,
        host: String,
    },
}

impl SshError {
    /// The error, naming the server where it does not yet.
    fn at(self, addr: &str) -> SshError {
        match self {
            SshError::Protocol(e) => SshError::Session {
                addr: addr.to_string(),
                why: e.to_string(),
            },
            other => other,
        }
    }
}

/// Where and how to connect, after the command line and ssh_config are merged.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name to connect to (HostName), also the name checked in known_hosts.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    /// Explicit identity files must exist; defaults are tried when present.
    pub identity_files_explicit: bool,
    pub known_hosts_files: Vec<PathBuf>,
    /// Where a learned host key is written; `None` (`UserKnownHostsFile=none`) or a device
    /// such as /dev/null: accepted for this mount, recorded nowhere.
    pub learn_into: Option<PathBuf>,
    pub strict: StrictHostKeyChecking,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_max: u32,
    pub password_stdin: bool,
    /// What the first connection was given, for the reconnections.
    pub secrets: Arc<SecretCache>,
}

/// The password and the decrypted keys the first connection obtained, kept in memory only, so
/// that a reconnection asks nobody again (nobody may be there to answer; sshfs's ssh process
/// keeps them the same way). Never printed: its Debug shows nothing of them.
#[derive(Default)]
pub struct SecretCache {
    password: Mutex<Option<String>>,
    keys: Mutex<std::collections::HashMap<PathBuf, russh::keys::PrivateKey>>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCache(..)")
    }
}

impl Target {
    /// Command-line options win over ssh_config, as with ssh(1).
    pub fn resolve(opts: &Options) -> Result<Target, SshError> {
        let config_path = opts.ssh_config.clone().or_else(config::default_path);
        let host_config = match &config_path {
            Some(path) => config::load(path, &opts.source.host)?,
            None => config::HostConfig::default(),
        };
        let home = std::env::home_dir().unwrap_or_else(|| PathBuf::from("/"));
        // Never connect directly to a host that the user's ssh reaches another way.
        for (key, lower) in [("ProxyJump", "proxyjump"), ("ProxyCommand", "proxycommand")] {
            if let Some(value) = host_config.get(lower)
                && !value.eq_ignore_ascii_case("none")
            {
                return Err(SshError::Unsupported {
                    key,
                    value: value.to_string(),
                    host: opts.source.host.clone(),
                });
            }
        }
        let host = host_config
            .get("hostname")
            .map(|h| h.replace("%h", &opts.source.host))
            .unwrap_or_else(|| opts.source.host.clone());
        let port = opts
            .port
            .or_else(|| host_config.get("port").and_then(|p| p.parse().ok()))
            .unwrap_or(22);
        let user = opts
            .source
            .user
            .clone()
            .or_else(|| opts.user.clone())
            .or_else(|| host_config.get("user").map(str::to_string))
            .unwrap_or_else(local_user_name);
        let expand = |p: &str| {
            config::expand_tilde(
                &p.replace("%d", &home.to_string_lossy())
                    .replace("%u", &local_user_name())
                    .replace("%r", &user)
                    .replace("%h", &host),
            )
        };
        // Command-line values take the same `~` and %-tokens as ssh_config's, as with ssh(1).
        let expand_all = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths.iter().map(|p| expand(&p.to_string_lossy())).collect()
        };
        let mut identity_files = expand_all(&opts.identity_files);
        identity_files.extend(
            host_config
                .get_all("identityfile")
                .iter()
                .map(|p| expand(p)),
        );
        let identity_files_explicit = !identity_files.is_empty();
        if !identity_files_explicit {
            identity_files = ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|n| home.join(".ssh").join(n))
                .collect();
        }
        let mut user_files = expand_all(&opts.user_known_hosts_files);
        for value in host_config.get_all("userknownhostsfile") {
            user_files.extend(value.split_whitespace().map(expand));
        }
        // As in OpenSSH: UserKnownHostsFile replaces ~/.ssh/known_hosts, `none` names no file,
        // and the system-wide file is read as well.
        if user_files.is_empty() {
            user_files.push(home.join(".ssh/known_hosts"));
        }
        user_files.retain(|p| p != Path::new("none"));
        let learn_into = user_files.first().cloned();
        let mut known_hosts_files = user_files;
        known_hosts_files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
        known_hosts_files.dedup();
        let secs = |o: Option<Duration>, key: &str, default: u64| {
            o.or_else(|| {
                host_config
                    .get(key)
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs)
            })
            .unwrap_or(Duration::from_secs(default))
        };
        Ok(Target {
            host,
            port,
            identity_files,
            identity_files_explicit,
            known_hosts_files,
            learn_into,
            strict: opts
                .strict_host_key_checking
                .or_else(|| {
                    host_config
                        .get("stricthostkeychecking")
                        .and_then(StrictHostKeyChecking::parse)
                })
                .unwrap_or(StrictHostKeyChecking::Yes),
            connect_timeout: secs(opts.connect_timeout, "connecttimeout", 15),
            keepalive_interval: secs(opts.server_alive_interval, "serveraliveinterval", 15),
            keepalive_max: opts
                .server_alive_count_max
                .or_else(|| host_config.get("serveralivecountmax")?.parse().ok())
                .unwrap_or(3),
            password_stdin: opts.password_stdin,
            secrets: Arc::default(),
            user,
        })
    }

    /// host:port as people write it: an IPv6 literal in brackets (`[::1]:22`).
    pub fn addr(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// The host as known_hosts names it.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

fn local_user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getpwuid returns a pointer into static storage or null.
            unsafe {
                let pw = libc::getpwuid(libc::geteuid());
                if pw.is_null() {
                    return "root".to_string();
                }
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned()
            }
        })
}

/// What the host key check concluded; kept so a refusal can be explained.
#[derive(Debug, Clone)]
enum HostKeyVerdict {
    Known,
    Unknown {
        fingerprint: String,
    },
    Changed {
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },
    LearnFailed {
        file: PathBuf,
        why: String,
    },
}

pub struct ClientHandler {
    target: Arc<Target>,
    verdict: Arc<Mutex<Option<HostKeyVerdict>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().unwrap() = Some(HostKeyVerdict::Unknown {
                fingerprint: "a host certificate".into(),
            });
            return Ok(false);
        };
        let verdict = check_host_key(&self.target, key);
        let accept = matches!(verdict, HostKeyVerdict::Known);
        *self.verdict.lock().unwrap() = Some(verdict);
        Ok(accept)
    }
}

fn fingerprint(key: &PublicKey) -> String {
    format!(
        "{} key {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

fn check_host_key(target: &Target, key: &PublicKey) -> HostKeyVerdict {
    let fingerprint = fingerprint(key);
    for file in &target.known_hosts_files {
        match russh::keys::check_known_hosts_path(&target.host, target.port, key, file) {
            Ok(true) => return HostKeyVerdict::Known,
            Ok(false) => {}
            Err(russh::keys::Error::KeyChanged { line }) => {
                return HostKeyVerdict::Changed {
                    fingerprint,
                    file: file.clone(),
                    line,
                };
            }
            Err(e) => warn!("skipping known_hosts file {}: {e}", file.display()),
        }
    }
    if target.strict == StrictHostKeyChecking::Yes {
        return HostKeyVerdict::Unknown { fingerprint };
    }
    // /dev/null (the usual way to say "a throwaway host, remember nothing") cannot be appended
    // to as a file: accept the key for this mount only, as ssh does in effect.
    let Some(learn_into) = target.learn_into.as_ref().filter(|f| !is_device(f)) else {
        info!(
            "accepted host key for {} ({fingerprint}) for this mount only: UserKnownHostsFile \
             names no file to record it in",
            target.known_hosts_name()
        );
        return HostKeyVerdict::Known;
    };
    match russh::keys::known_hosts::learn_known_hosts_path(
        &target.host,
        target.port,
        key,
        learn_into,
    ) {
        Ok(()) => {
            info!(
                "learned host key for {} ({fingerprint}) into {}",
                target.known_hosts_name(),
                learn_into.display()
            );
            HostKeyVerdict::Known
        }
        Err(e) => HostKeyVerdict::LearnFailed {
            file: learn_into.clone(),
            why: e.to_string(),
        },
    }
}

/// A character or block device, such as /dev/null.
fn is_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_block_device())
}

/// Connects, verifies the host and authenticates, all within the connect timeout (prompts for
/// secrets excluded: a person typing is not a network wait).
pub async fn connect(target: Arc<Target>) -> Result<Handle<ClientHandler>, SshError> {
    let addr = target.addr();
    connect_to(target).await.map_err(|e: SshError| e.at(&addr))
}

async fn connect_to(target: Arc<Target>) -> Result<Handle<ClientHandler>, SshError> {
    let addr = target.addr();
    let verdict = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        target: target.clone(),
        verdict: verdict.clone(),
    };
    let config = Arc::new(client_config(&target));
    let tcp = tokio::time::timeout(target.connect_timeout, async {
        let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|source| SshError::Unreachable {
                addr: addr.clone(),
                source,
            })?;
        stream.set_nodelay(true).ok();
        limit_unsent(&stream);
        let handle = client::connect_stream(config, stream, handler).await;
        handle.map_err(|e| host_key_error(&target, &verdict, e))
    })
    .await;
    let mut handle = tcp.map_err(|_| SshError::Timeout {
        addr: addr.clone(),
        secs: target.connect_timeout.as_secs(),
    })??;
    authenticate(&mut handle, &target).await?;
    Ok(handle)
}

/// Bytes the kernel may hold unsent for the socket. Unsent bytes are a queue every channel
/// shares: a lookup sent during an upload waits behind all of them (measured: 3 MB queued, a
/// `stat` 20 ms instead of 0.5 at RTT 0). Bulk data waits in its own channel's queue instead,
/// where the next small request need not. Enough to keep the link busy between writes.
const UNSENT_LIMIT: libc::c_int = 128 * 1024;

fn limit_unsent(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&UNSENT_LIMIT as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        debug!(
            "TCP_NOTSENT_LOWAT not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn host_key_error(
    target: &Target,
    verdict: &Mutex<Option<HostKeyVerdict>>,
    error: russh::Error,
) -> SshError {
    let host = target.known_hosts_name();
    match verdict.lock().unwrap().take() {
        Some(HostKeyVerdict::Unknown { fingerprint }) => {
            SshError::UnknownHostKey { host, fingerprint }
        }
        Some(HostKeyVerdict::Changed {
            fingerprint,
            file,
            line,
        }) => SshError::ChangedHostKey {
            host,
            fingerprint,
            file: file.display().to_string(),
            line,
        },
        Some(HostKeyVerdict::LearnFailed { file, why }) => SshError::LearnHostKey {
            file: file.display().to_string(),
            why,
        },
        Some(HostKeyVerdict::Known) | None => match error {
            russh::Error::IO(source) => SshError::Unreachable {
                addr: target.addr(),
                source,
            },
            other => SshError::Protocol(other),
        },
    }
}

fn client_config(target: &Target) -> client::Config {
    let mut preferred = russh::Preferred::default();
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
    client::Config {
        preferred,
        // A large receive window keeps reads flowing on far links (DESIGN.md).
        window_size: 64 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 1024,
        keepalive_interval: Some(target.keepalive_interval).filter(|d| !d.is_zero()),
        keepalive_max: target.keepalive_max as usize,
        nodelay: true,
        ..Default::default()
    }
}

/// A password, asked once (per mount: see [`SecretCache`]) and kept only in memory.
struct Secrets<'a> {
    cache: &'a SecretCache,
    from_stdin: bool,
}

impl Secrets<'_> {
    fn password(&mut self, prompt: &str) -> Option<String> {
        let mut password = self.cache.password.lock().unwrap();
        if password.is_none() {
            *password = if self.from_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).ok()?;
                Some(line.trim_end_matches(['\n', '\r']).to_string())
            } else {
                ask_terminal(prompt)
            };
        }
        password.clone()
    }
}

/// Asks a person for a secret: through SSH_ASKPASS when OpenSSH would use it (forced, or no
/// terminal), else on the terminal. `None` when nobody can be asked.
fn ask_terminal(prompt: &str) -> Option<String> {
    let has_tty = std::fs::File::open("/dev/tty").is_ok();
    let askpass = std::env::var_os("SSH_ASKPASS").filter(|a| !a.is_empty());
    let forced = std::env::var("SSH_ASKPASS_REQUIRE").is_ok_and(|v| v == "force");
    if let Some(program) = askpass.filter(|_| forced || !has_tty) {
        let output = std::process::Command::new(program)
            .arg(prompt)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let answer = String::from_utf8(output.stdout).ok()?;
        return Some(answer.trim_end_matches(['\n', '\r']).to_string());
    }
    if !has_tty {
        return None;
    }
    rpassword::prompt_password(prompt).ok()
}

async fn authenticate(handle: &mut Handle<ClientHandler>, target: &Target) -> Result<(), SshError> {
    let user = target.user.as_str();
    let mut tried: Vec<&str> = Vec::new();
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let mut methods: Option<Vec<MethodKind>> = None;
    let offered = |methods: &Option<Vec<MethodKind>>, kind: MethodKind| {
        methods.as_ref().is_none_or(|m| m.contains(&kind))
    };

    if let Ok(mut agent) = AgentClient::connect_env().await {
        let identities = agent.request_identities().await.unwrap_or_default();
        for identity in identities {
            let AgentIdentity::PublicKey { key, .. } = identity else {
                continue;
            };
            if !offered(&methods, MethodKind::PublicKey) {
                break;
            }
            tried.push("agent");
            match handle
                .authenticate_publickey_with(user, key, rsa_hash, &mut agent)
                .await
            {
                Ok(AuthResult::Success) => return Ok(()),
                Ok(AuthResult::Failure {
                    remaining_methods, ..
                }) => methods = Some(remaining_methods.to_vec()),
                Err(e) => debug!("agent key failed: {e:?}"),
            }
        }
    }

    for path in &target.identity_files {
        if !offered(&methods, MethodKind::PublicKey) {
            break;
        }
        let Some(key) = load_key(path, target.identity_files_explicit, &target.secrets)? else {
            continue;
        };
        tried.push("publickey");
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        match handle.authenticate_publickey(user, key).await? {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure {
                remaining_methods, ..
            } => methods = Some(remaining_methods.to_vec()),
        }
    }

    let mut secrets = Secrets {
        cache: &target.secrets,
        from_stdin: target.password_stdin,
    };
    if methods.is_none() {
        // Nothing tried yet: ask the server which methods it takes.
        if let AuthResult::Failure {
            remaining_methods, ..
        } = handle.authenticate_none(user).await?
        {
            methods = Some(remaining_methods.to_vec());
        } else {
            return Ok(());
        }
    }
    if offered(&methods, MethodKind::KeyboardInteractive) {
        tried.push("keyboard-interactive");
        let mut reply = handle
            .authenticate_keyboard_interactive_start(user, None)
            .await?;
        loop {
            match reply {
                KeyboardInteractiveAuthResponse::Success => return Ok(()),
                KeyboardInteractiveAuthResponse::Failure { .. } => break,
                KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                    let mut answers = Vec::with_capacity(prompts.len());
                    for prompt in &prompts {
                        let answer = if !prompt.echo {
                            secrets.password(&prompt.prompt)
                        } else {
                            ask_terminal(&prompt.prompt)
                        };
                        match answer {
                            Some(a) => answers.push(a),
                            None => break,
                        }
                    }
                    if answers.len() < prompts.len() {
                        break;
                    }
                    reply = handle
                        .authenticate_keyboard_interactive_respond(answers)
                        .await?;
                }
            }
        }
    }
    if offered(&methods, MethodKind::Password) {
        let prompt = format!("{}@{}'s password: ", user, target.host);
        if let Some(password) = secrets.password(&prompt) {
            tried.push("password");
            if let AuthResult::Success = handle.authenticate_password(user, password).await? {
                return Ok(());
            }
        }
    }
    tried.dedup();
    Err(SshError::AuthRefused {
        user: user.to_string(),
        host: target.known_hosts_name(),
        tried: if tried.is_empty() {
            "no usable method: give a key with -o IdentityFile=, or use password_stdin".into()
        } else {
            tried.join(", ")
        },
    })
}

/// Loads a private key, asking for its passphrase on the terminal when it is encrypted.
/// A default key that does not exist is skipped; an explicit one is an error.
fn load_key(
    path: &Path,
    explicit: bool,
    cache: &SecretCache,
) -> Result<Option<russh::keys::PrivateKey>, SshError> {
    if let Some(key) = cache.keys.lock().unwrap().get(path) {
        return Ok(Some(key.clone()));
    }
    let key = read_key(path, explicit)?;
    if let Some(key) = &key {
        cache
            .keys
            .lock()
            .unwrap()
            .insert(path.to_owned(), key.clone());
    }
    Ok(key)
}

fn read_key(path: &Path, explicit: bool) -> Result<Option<russh::keys::PrivateKey>, SshError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            return Err(SshError::KeyFile {
                path: path.display().to_string(),
                why: e.to_string(),
            });
        }
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => Ok(Some(key)),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let prompt = format!("Enter passphrase for key '{}': ", path.display());
            let Some(passphrase) = ask_terminal(&prompt) else {
                warn!(
                    "skipping encrypted key {}: no terminal to ask for its passphrase (add it to ssh-agent)",
                    path.display()
                );
                return Ok(None);
            };
            russh::keys::decode_secret_key(&text, Some(&passphrase))
                .map(Some)
                .map_err(|_| SshError::KeyFile {
                    path: path.display().to_string(),
                    why: "wrong passphrase".into(),
                })
        }
        Err(e) => Err(SshError::KeyFile {
            path: path.display().to_string(),
            why: e.to_string(),
        }),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_literals_are_written_in_brackets() {
        assert_eq!(host_port("::1", 22), "[::1]:22");
        assert_eq!(host_port("example.org", 2222), "example.org:2222");
    }
}
