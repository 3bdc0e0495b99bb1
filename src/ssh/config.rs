//! The subset of ssh_config(5) a mount needs: `Host` blocks with wildcard and negated patterns,
//! first value wins (IdentityFile and UserKnownHostsFile accumulate), `Include`, and the keys
//! HostName, User, Port, IdentityFile, UserKnownHostsFile, StrictHostKeyChecking, ConnectTimeout,
//! ServerAliveInterval, ServerAliveCountMax. Unknown keys are ignored, as ssh itself must,
//! except ProxyJump and ProxyCommand: a host reached through them is refused (see `Target`),
//! never connected to directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot read ssh config {path}: {source}")]
pub struct ConfigError {
    path: PathBuf,
    source: std::io::Error,
}

/// Settings that apply to one host, keys lower-cased.
#[derive(Debug, Default, Clone)]
pub struct HostConfig {
    values: HashMap<String, Vec<String>>,
}

impl HostConfig {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(&key.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn get_all(&self, key: &str) -> &[String] {
        self.values
            .get(&key.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn set(&mut self, key: &str, value: String) {
        let entry = self.values.entry(key.to_string()).or_default();
        let accumulates = matches!(key, "identityfile" | "userknownhostsfile");
        if accumulates || entry.is_empty() {
            entry.push(value);
        }
    }
}

/// Reads `path` (a missing file is an empty config) and returns what applies to `host`.
pub fn load(path: &Path, host: &str) -> Result<HostConfig, ConfigError> {
    let mut config = HostConfig::default();
    apply_file(path, host, &mut config, 0)?;
    Ok(config)
}

/// The user's ~/.ssh/config, or nothing when there is no home.
pub fn default_path() -> Option<PathBuf> {
    std::env::home_dir().map(|h| h.join(".ssh/config"))
}

fn apply_file(
    path: &Path,
    host: &str,
    config: &mut HostConfig,
    depth: usize,
) -> Result<(), ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth == 0 => return Ok(()),
        Err(source) => {
            return Err(ConfigError {
                path: path.to_owned(),
                source,
            });
        }
    };
    apply_text(&text, host, config, depth)
}

fn apply_text(
    text: &str,
    host: &str,
    config: &mut HostConfig,
    depth: usize,
) -> Result<(), ConfigError> {
    let mut active = true;
    for line in text.lines() {
        let Some((key, value)) = split_line(line) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "host" => active = host_matches(host, &value),
            // Match needs the full rule engine; treating its block as not matching is the
            // conservative reading (it never applies settings the user did not mean here).
            "match" => active = false,
            "include" if active && depth < 8 => {
                for pattern in value.split_whitespace() {
                    for file in include_files(pattern) {
                        apply_file(&file, host, config, depth + 1)?;
                    }
                }
            }
            _ if active => config.set(&key, unquote(&value)),
            _ => {}
        }
    }
    Ok(())
}

fn split_line(line: &str) -> Option<(&str, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let split_at = line.find(|c: char| c.is_whitespace() || c == '=')?;
    let key = &line[..split_at];
    let rest = line[split_at..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    Some((key, rest.to_string()))
}

fn unquote(value: &str) -> String {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
        .to_string()
}

fn host_matches(host: &str, patterns: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split_whitespace() {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, host) {
                return false;
            }
        } else if wildcard_match(pattern, host) {
            matched = true;
        }
    }
    matched
}

/// Glob with `*` and `?`, as ssh_config patterns use them.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn include_files(pattern: &str) -> Vec<PathBuf> {
    let path = expand_tilde(pattern);
    let path = if path.is_relative() {
        std::env::home_dir()
            .map(|h| h.join(".ssh").join(&path))
            .unwrap_or(path)
    } else {
        path
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return vec![path];
    };
    if !name.contains(['*', '?']) {
        return vec![path];
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wildcard_match(name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Expands a leading `~/` to the home directory.
pub fn expand_tilde(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ if path == "~" => std::env::home_dir().unwrap_or_else(|| PathBuf::from(path)),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, host: &str) -> HostConfig {
        let mut config = HostConfig::default();
        apply_text(text, host, &mut config, 0).unwrap();
        config
    }

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let text = "Host box\n  HostName 10.1.2.3\n  Port=2222\n  IdentityFile ~/.ssh/a\n\
                    Host *\n  Port 22\n  User alice\n  IdentityFile \"/k b\"\n";
        let c = resolve(text, "box");
        assert_eq!(c.get("hostname"), Some("10.1.2.3"));
        assert_eq!(c.get("Port"), Some("2222"));
        assert_eq!(c.get("user"), Some("alice"));
        assert_eq!(c.get_all("identityfile"), ["~/.ssh/a", "/k b"]);
        let other = resolve(text, "elsewhere");
        assert_eq!(other.get("hostname"), None);
        assert_eq!(other.get("port"), Some("22"));
    }

    #[test]
    fn patterns_wildcards_and_negation() {
        assert!(host_matches("web1.example.com", "*.example.com"));
        assert!(host_matches("web1", "web? db?"));
        assert!(!host_matches("web10", "web?"));
        assert!(!host_matches("bad.example.com", "*.example.com !bad.*"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*b", "ac"));
    }

    #[test]
    fn match_blocks_do_not_apply() {
        let c = resolve("Match all\n  User nobody\nHost *\n  User me\n", "h");
        assert_eq!(c.get("user"), Some("me"));
    }
}
