//! Authentication in OpenSSH's order (agent, key files with their certificates,
//! keyboard-interactive, password), limited by what ssh_config allows, and the secrets it
//! obtained kept for the reconnections. Secrets are never logged or printed.

use std::path::Path;
use std::sync::Arc;

use russh::MethodKind;
use russh::client::{AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use tracing::debug;

use super::target::Agent;
use super::{ClientHandler, PromptClock, SecretCache, SshError, Target};

/// Asking for secrets: a password asked once (per mount: see [`SecretCache`]) and kept only
/// in memory; nobody asked in BatchMode; encrypted keys nobody could unlock remembered, so the
/// refusal can say why they were not used.
struct Secrets<'a> {
    cache: &'a SecretCache,
    /// Stopped while someone is asked: typing is not a network wait.
    clock: &'a PromptClock,
    from_stdin: bool,
    /// Someone may be asked (see `Target::may_ask`).
    may_ask: bool,
    /// Times a password or passphrase is asked (NumberOfPasswordPrompts).
    prompts: u32,
    /// Encrypted keys not used, and why.
    skipped_keys: Vec<(String, &'static str)>,
    /// The password was typed at a prompt during this login: a wrong one may be asked again.
    password_typed: bool,
}

impl Secrets<'_> {
    fn password(&mut self, prompt: &str) -> Option<String> {
        let mut password = self.cache.password.lock().unwrap();
        if password.is_none() {
            *password = if self.from_stdin {
                let _asking = self.clock.asking();
                let mut line = zeroize::Zeroizing::new(String::new());
                std::io::stdin().read_line(&mut line).ok()?;
                Some(line.trim_end_matches(['\n', '\r']).to_string())
            } else {
                let typed = self.ask(prompt);
                self.password_typed |= typed.is_some();
                typed
            }
            .map(zeroize::Zeroizing::new);
        }
        password.as_ref().map(|p| p.to_string())
    }

    /// After a refused password: forgets it and says so, when the person who typed it may
    /// type it again (not from stdin, not one kept from an earlier login).
    fn password_refused(&mut self) -> bool {
        if !self.password_typed {
            return false;
        }
        *self.cache.password.lock().unwrap() = None;
        tell_terminal("Permission denied, please try again.");
        true
    }

    fn ask(&self, prompt: &str) -> Option<String> {
        if !self.may_ask {
            return None;
        }
        let _asking = self.clock.asking();
        ask_terminal(prompt)
    }
}

/// A line to the person at the terminal, if there is one (as ssh's messages between prompts).
fn tell_terminal(message: &str) {
    use std::io::Write;
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = writeln!(tty, "{message}\r");
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

pub(super) async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    target: &Target,
    clock: &PromptClock,
) -> Result<(), SshError> {
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
    let mut secrets = Secrets {
        cache: &target.secrets,
        clock,
        from_stdin: target.password_stdin,
        may_ask: target.may_ask(),
        prompts: target.password_prompts,
        skipped_keys: Vec::new(),
        password_typed: false,
    };

    if target.methods.publickey
        && let Some(mut agent) = connect_agent(&target.agent).await
    {
        let identities = agent.request_identities().await.unwrap_or_default();
        // IdentitiesOnly: only the agent's keys whose public half an identity file names.
        let allowed: Option<Vec<PublicKey>> = target.identities_only.then(|| {
            target
                .identity_files
                .iter()
                .filter_map(|p| public_key_of(p))
                .collect()
        });
        for identity in identities {
            let AgentIdentity::PublicKey { key, .. } = identity else {
                continue;
            };
            if allowed
                .as_ref()
                .is_some_and(|a| !a.iter().any(|k| k.key_data() == key.key_data()))
            {
                continue;
            }
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

    for path in target
        .identity_files
        .iter()
        .filter(|_| target.methods.publickey)
    {
        if !offered(&methods, MethodKind::PublicKey) {
            break;
        }
        let Some(key) = load_key(path, target.identity_files_explicit, &mut secrets)? else {
            continue;
        };
        let key = Arc::new(key);
        // A certificate for the key first, as ssh offers it: CertificateFile, or KEY-cert.pub.
        for cert in certificates_for(path, &key, target)? {
            tried.push("publickey certificate");
            match handle
                .authenticate_openssh_cert(user, key.clone(), cert)
                .await?
            {
                AuthResult::Success => return Ok(()),
                // The plain key is tried next; its answer says what remains.
                AuthResult::Failure { .. } => {}
            }
        }
        tried.push("publickey");
        let key = PrivateKeyWithHashAlg::new(key, rsa_hash);
        match handle.authenticate_publickey(user, key).await? {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure {
                remaining_methods, ..
            } => methods = Some(remaining_methods.to_vec()),
        }
    }

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
    if target.methods.keyboard_interactive && offered(&methods, MethodKind::KeyboardInteractive) {
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
                            secrets.ask(&prompt.prompt)
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
    if target.methods.password && offered(&methods, MethodKind::Password) {
        let prompt = format!("{}@{}'s password: ", user, target.host);
        for _ in 0..secrets.prompts {
            let Some(password) = secrets.password(&prompt) else {
                break;
            };
            tried.push("password");
            if let AuthResult::Success = handle.authenticate_password(user, password).await? {
                return Ok(());
            }
            if !secrets.password_refused() {
                break;
            }
        }
    }
    tried.dedup();
    let mut tried = if tried.is_empty() {
        "no usable method: give a key with -o IdentityFile=, or use password_stdin".to_string()
    } else {
        tried.join(", ")
    };
    for (skipped, why) in &secrets.skipped_keys {
        tried.push_str(&format!("; skipped encrypted key {skipped}: {why}"));
    }
    Err(SshError::AuthRefused {
        user: user.to_string(),
        host: target.known_hosts_name(),
        tried,
    })
}

async fn connect_agent(agent: &Agent) -> Option<AgentClient<tokio::net::UnixStream>> {
    match agent {
        Agent::Env => AgentClient::connect_env().await.ok(),
        Agent::None => None,
        Agent::Socket(path) => match AgentClient::connect_uds(path).await {
            Ok(agent) => Some(agent),
            Err(e) => {
                debug!("no agent at {}: {e}", path.display());
                None
            }
        },
    }
}

/// The public half of an identity file, from its .pub file (readable without a passphrase).
fn public_key_of(path: &Path) -> Option<PublicKey> {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    russh::keys::load_public_key(Path::new(&pub_path)).ok()
}

/// The certificates to offer with `key`: those CertificateFile names that certify it, else
/// the KEY-cert.pub beside the key file, as ssh looks for.
fn certificates_for(
    path: &Path,
    key: &russh::keys::PrivateKey,
    target: &Target,
) -> Result<Vec<russh::keys::Certificate>, SshError> {
    let mut beside = path.as_os_str().to_owned();
    beside.push("-cert.pub");
    let beside = std::path::PathBuf::from(beside);
    let (files, explicit): (Vec<&Path>, bool) = if target.certificate_files.is_empty() {
        (vec![beside.as_path()], false)
    } else {
        (
            target
                .certificate_files
                .iter()
                .map(|p| p.as_path())
                .collect(),
            true,
        )
    };
    let mut certs = Vec::new();
    for file in files {
        let cert = match russh::keys::load_openssh_certificate(file) {
            Ok(cert) => cert,
            Err(_) if !explicit && !file.exists() => continue,
            Err(e) => {
                return Err(SshError::KeyFile {
                    path: file.display().to_string(),
                    why: format!("not an OpenSSH certificate: {e}"),
                });
            }
        };
        if cert.public_key() == key.public_key().key_data() {
            certs.push(cert);
        }
    }
    Ok(certs)
}

/// Loads a private key, asking for its passphrase on the terminal when it is encrypted.
/// A default key that does not exist is skipped; an explicit one is an error.
fn load_key(
    path: &Path,
    explicit: bool,
    secrets: &mut Secrets,
) -> Result<Option<russh::keys::PrivateKey>, SshError> {
    if let Some(key) = secrets.cache.keys.lock().unwrap().get(path) {
        return Ok(Some(key.clone()));
    }
    let key = read_key(path, explicit, secrets)?;
    if let Some(key) = &key {
        secrets
            .cache
            .keys
            .lock()
            .unwrap()
            .insert(path.to_owned(), key.clone());
    }
    Ok(key)
}

fn read_key(
    path: &Path,
    explicit: bool,
    secrets: &mut Secrets,
) -> Result<Option<russh::keys::PrivateKey>, SshError> {
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
            // As ssh: asked again after a wrong passphrase, then the key is passed over and
            // the next method tried.
            let mut prompt = format!("Enter passphrase for key '{}': ", path.display());
            for _ in 0..secrets.prompts {
                let Some(passphrase) = secrets.ask(&prompt).map(zeroize::Zeroizing::new) else {
                    secrets.skipped_keys.push((
                        path.display().to_string(),
                        "nobody to ask for its passphrase (no terminal, or BatchMode): add it \
                         to ssh-agent",
                    ));
                    return Ok(None);
                };
                if let Ok(key) = russh::keys::decode_secret_key(&text, Some(&passphrase)) {
                    return Ok(Some(key));
                }
                prompt = format!("Bad passphrase, try again for '{}': ", path.display());
            }
            secrets
                .skipped_keys
                .push((path.display().to_string(), "wrong passphrase"));
            Ok(None)
        }
        Err(e) => Err(SshError::KeyFile {
            path: path.display().to_string(),
            why: e.to_string(),
        }),
    }
}
