//! Host key verification: known_hosts files in order, a changed key always refused, an unknown
//! one learned only as StrictHostKeyChecking allows, and every refusal explained.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::{HashAlg, PublicKey};
use tracing::{info, warn};

use super::known_hosts::{self, KnownHosts, Verdict};
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

/// Every known_hosts file of `target` that can be read, parsed (see `known_hosts.rs`); a bad
/// line is reported alone, a missing file is no news.
fn read_known_hosts(target: &Target) -> Vec<(PathBuf, KnownHosts)> {
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

pub(super) fn check_host_key(target: &Target, key: &PublicKey) -> HostKeyVerdict {
    let fingerprint = fingerprint(key);
    let (name, port) = target.known_hosts_key();
    // Revoked for every host, whatever known_hosts says; a file that cannot be read refuses
    // the host rather than let a revoked key through (as ssh).
    if let Some(file) = &target.revoked_host_keys {
        let revoked = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|contents| known_hosts::revoked_in(&contents, key));
        match revoked {
            Ok(None) => {}
            Ok(Some(line)) => {
                return HostKeyVerdict::Revoked {
                    fingerprint,
                    file: file.display().to_string(),
                    line,
                };
            }
            Err(why) => {
                return HostKeyVerdict::RevokedUnreadable {
                    file: file.display().to_string(),
                    why,
                };
            }
        }
    }
    let files = read_known_hosts(target);
    let lookup = known_hosts::lookup_name(name, port);
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
