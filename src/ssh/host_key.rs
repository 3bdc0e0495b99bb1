//! Host key verification: known_hosts files in order, a changed key always refused, an unknown
//! one learned only as StrictHostKeyChecking allows, and every refusal explained.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::{Certificate, HashAlg, PublicKey, PublicKeyOrCertificate};
use tracing::{info, warn};

use super::known_hosts::{self, CertVerdict, KnownHosts, Verdict};
use super::target::StrictHostKeyChecking;
use super::{SshError, Target};

/// What the host key check concluded; kept so a refusal can be explained.
#[derive(Debug, Clone)]
pub(super) enum HostKeyVerdict {
    Known,
    Revoked {
        fingerprint: String,
        file: String,
        line: usize,
    },
    Unknown {
        fingerprint: String,
    },
    /// Unknown, and StrictHostKeyChecking=ask: a person may be asked.
    AskUser {
        key: PublicKey,
        fingerprint: String,
    },
    Changed {
        fingerprint: String,
        file: String,
        line: usize,
    },
    LearnFailed {
        file: PathBuf,
        why: String,
    },
    RevokedUnreadable {
        file: String,
        why: String,
    },
}

fn fingerprint(key: &PublicKey) -> String {
    format!(
        "{} key {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

/// The known_hosts files of a target, parsed once a connection: they decide both which host
/// key algorithms are asked for and what the key offered is worth.
pub(super) type KnownHostsFiles = Vec<(PathBuf, KnownHosts)>;

/// Every known_hosts file of `target` that can be read, parsed (see `known_hosts.rs`); a bad
/// line is reported alone, a missing file is no news.
pub(super) fn read_known_hosts(target: &Target) -> KnownHostsFiles {
    let mut files = Vec::new();
    for file in &target.known_hosts_files {
        match std::fs::read(file) {
            Ok(contents) => {
                let parsed = known_hosts::parse(&contents, file);
                for skipped in &parsed.skipped {
                    warn!("known_hosts {skipped}");
                }
                files.push((file.clone(), parsed));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot read known_hosts file {}: {e}", file.display()),
        }
    }
    files
}

/// The key a server presented, or the key inside its host certificate, with the certificate.
fn presented_key(presented: &PublicKeyOrCertificate) -> (PublicKey, Option<&Certificate>) {
    match presented {
        PublicKeyOrCertificate::PublicKey { key, .. } => (key.clone(), None),
        PublicKeyOrCertificate::Certificate(cert) => {
            (PublicKey::new(cert.public_key().clone(), ""), Some(cert))
        }
    }
}

/// Whether a `@cert-authority` line names the host: then host certificates are asked for.
pub(super) fn wants_certificates(target: &Target, files: &KnownHostsFiles) -> bool {
    let (name, port) = target.known_hosts_key();
    known_hosts::names_an_authority(
        files.iter().map(|(f, k)| (f.as_path(), k)),
        &known_hosts::lookup_name(name, port),
    )
}

/// The line of RevokedHostKeys that lists one of `keys`, or why the file cannot be read.
fn revoked_by_file(target: &Target, keys: &[&PublicKey]) -> Option<HostKeyVerdict> {
    let file = target.revoked_host_keys.as_ref()?;
    let contents = match std::fs::read(file) {
        Ok(contents) => contents,
        Err(e) => {
            return Some(HostKeyVerdict::RevokedUnreadable {
                file: file.display().to_string(),
                why: e.to_string(),
            });
        }
    };
    for key in keys {
        match known_hosts::revoked_in(&contents, key) {
            Ok(None) => {}
            Ok(Some(line)) => {
                return Some(HostKeyVerdict::Revoked {
                    fingerprint: fingerprint(key),
                    file: file.display().to_string(),
                    line,
                });
            }
            Err(why) => {
                return Some(HostKeyVerdict::RevokedUnreadable {
                    file: file.display().to_string(),
                    why,
                });
            }
        }
    }
    None
}

pub(super) fn check_host_key(
    target: &Target,
    files: &KnownHostsFiles,
    presented: &PublicKeyOrCertificate,
) -> HostKeyVerdict {
    let (key, cert) = presented_key(presented);
    let key = &key;
    let ca = cert.map(|c| PublicKey::new(c.signature_key().clone(), ""));
    let fingerprint = fingerprint(key);
    let (name, port) = target.known_hosts_key();
    // Revoked for every host, whatever known_hosts says (a certificate's signer too); a file
    // that cannot be read refuses the host rather than let a revoked key through (as ssh).
    let mut keys = vec![key];
    keys.extend(ca.as_ref());
    if let Some(refusal) = revoked_by_file(target, &keys) {
        return refusal;
    }
    let lookup = known_hosts::lookup_name(name, port);
    // A certificate is accepted on a trusted authority's word; failing that, its key is
    // checked as a plain host key (as ssh: "No matching CA found. Retry with plain key").
    if let (Some(cert), Some(ca)) = (cert, &ca) {
        let lines = files.iter().map(|(f, k)| (f.as_path(), k));
        match known_hosts::cert_verdict(lines, &lookup, key.key_data(), ca.key_data()) {
            CertVerdict::Revoked(file, line) => {
                return HostKeyVerdict::Revoked {
                    fingerprint: format!("{fingerprint}, certified by {}", self::fingerprint(ca)),
                    file,
                    line,
                };
            }
            CertVerdict::Authority(file, line) => {
                match known_hosts::certificate_refusal(cert, ca, name) {
                    None => {
                        info!(
                            "host certificate of {} accepted: signed by the authority in \
                             {file} line {line}",
                            target.known_hosts_name()
                        );
                        return HostKeyVerdict::Known;
                    }
                    Some(why) => warn!(
                        "host certificate of {} ({fingerprint}) not accepted although signed \
                         by the authority in {file} line {line}: {why}; checking its key as a \
                         plain host key",
                        target.known_hosts_name()
                    ),
                }
            }
            CertVerdict::NoAuthority => warn!(
                "host certificate of {} signed by {}, which no @cert-authority line names for \
                 it; checking its key as a plain host key",
                target.known_hosts_name(),
                self::fingerprint(ca)
            ),
        }
    }
    match known_hosts::verdict(files.iter().map(|(f, k)| (f.as_path(), k)), &lookup, key) {
        Verdict::Known => return HostKeyVerdict::Known,
        Verdict::Revoked(file, line) => {
            return HostKeyVerdict::Revoked {
                fingerprint,
                file,
                line,
            };
        }
        Verdict::Changed(file, line) => {
            return HostKeyVerdict::Changed {
                fingerprint,
                file,
                line,
            };
        }
        Verdict::Unknown => {}
    }
    match target.strict {
        StrictHostKeyChecking::Yes => return HostKeyVerdict::Unknown { fingerprint },
        StrictHostKeyChecking::Ask => {
            return HostKeyVerdict::AskUser {
                key: key.clone(),
                fingerprint,
            };
        }
        StrictHostKeyChecking::AcceptNew | StrictHostKeyChecking::No => {}
    }
    learn(target, key)
}

/// Records `key` for the target's host where UserKnownHostsFile says (the first file).
pub(super) fn learn(target: &Target, key: &PublicKey) -> HostKeyVerdict {
    let fingerprint = fingerprint(key);
    let (name, port) = target.known_hosts_key();
    let lookup = known_hosts::lookup_name(name, port);
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
    match known_hosts::learn(learn_into, &lookup, key, target.hash_known_hosts) {
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

/// Asks at the terminal, as ssh does, whether an unknown host key is to be trusted: `yes` or
/// its fingerprint trusts it, `no` does not. `None` when there is no terminal to ask at.
pub(super) fn ask_user(target: &Target, key: &PublicKey) -> Option<bool> {
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let mut out = tty.try_clone().ok()?;
    let mut answers = std::io::BufReader::new(tty);
    let name = target.known_hosts_name();
    let sha256 = key.fingerprint(HashAlg::Sha256).to_string();
    write!(
        out,
        "The authenticity of host '{name}' can't be established.\r\n{} key fingerprint is \
         {sha256}.\r\nAre you sure you want to continue connecting (yes/no/[fingerprint])? ",
        key_type_name(key)
    )
    .ok()?;
    loop {
        let mut line = String::new();
        if answers.read_line(&mut line).ok()? == 0 {
            return Some(false);
        }
        match line.trim() {
            "yes" => return Some(true),
            "no" => return Some(false),
            answer if answer == sha256 => return Some(true),
            _ => write!(out, "Please type 'yes', 'no' or the fingerprint: ").ok()?,
        }
    }
}

/// The key type as ssh names it in its prompt (ED25519, ECDSA, RSA).
fn key_type_name(key: &PublicKey) -> String {
    let name = key.algorithm().as_str().to_string();
    let name = name.strip_prefix("ssh-").unwrap_or(&name);
    let name = name.split('-').next().unwrap_or(name);
    name.to_ascii_uppercase()
}

/// A character or block device, such as /dev/null.
fn is_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_block_device())
}

/// The refusal the host key check explains, else the connection error as it came.
pub(super) fn host_key_error(
    target: &Target,
    verdict: &Mutex<Option<HostKeyVerdict>>,
    error: russh::Error,
) -> SshError {
    let host = target.known_hosts_name();
    match verdict.lock().unwrap().take() {
        Some(
            HostKeyVerdict::Unknown { fingerprint } | HostKeyVerdict::AskUser { fingerprint, .. },
        ) => SshError::UnknownHostKey { host, fingerprint },
        Some(HostKeyVerdict::Changed {
            fingerprint,
            file,
            line,
        }) => SshError::ChangedHostKey {
            host,
            fingerprint,
            file,
            line,
        },
        Some(HostKeyVerdict::Revoked {
            fingerprint,
            file,
            line,
        }) => SshError::RevokedHostKey {
            host,
            fingerprint,
            file,
            line,
        },
        Some(HostKeyVerdict::RevokedUnreadable { file, why }) => {
            SshError::RevokedHostKeysUnreadable { file, why }
        }
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
