//! Host key verification: known_hosts files in order, a changed key always refused, an unknown
//! one learned only as StrictHostKeyChecking allows, and every refusal explained.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::{HashAlg, PublicKey};
use tracing::{info, warn};

use super::target::StrictHostKeyChecking;
use super::{SshError, Target};

/// What the host key check concluded; kept so a refusal can be explained.
#[derive(Debug, Clone)]
pub(super) enum HostKeyVerdict {
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

fn fingerprint(key: &PublicKey) -> String {
    format!(
        "{} key {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

pub(super) fn check_host_key(target: &Target, key: &PublicKey) -> HostKeyVerdict {
    let fingerprint = fingerprint(key);
    let (name, port) = target.known_hosts_key();
    for file in &target.known_hosts_files {
        match russh::keys::check_known_hosts_path(name, port, key, file) {
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
    match russh::keys::known_hosts::learn_known_hosts_path(name, port, key, learn_into) {
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
