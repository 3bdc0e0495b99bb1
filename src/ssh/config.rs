//! ssh_config(5) as OpenSSH reads it for one host: `Host` and `Match` blocks, `Include`, first
//! value wins (IdentityFile, CertificateFile and UserKnownHostsFile accumulate; ProxyJump and
//! ProxyCommand exclude each other, the first given wins), and `-o Keyword=value` from the
//! command line read before any file, as ssh reads its `-o`. Which keywords a mount acts on is
//! [`keyword`]'s table, one place for the command line's validation and the README.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read ssh config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ssh config {path} line {line}: {why}")]
    Bad {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// What a mount does with an ssh_config keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordUse {
    /// Acted on as ssh does.
    Used,
    /// Accepted (ssh's own behaviour, nothing a mount can do with it), no effect.
    NoEffect,
}

/// The ssh_config keywords a mount reads, and those it accepts without effect. Any other
/// keyword given with `-o` is an error (ssh says "Bad configuration option" for it too); in a
/// config file it is ignored, since the file also serves ssh.
pub fn keyword(name: &str) -> Option<KeywordUse> {
    const USED: &[&str] = &[
        "hostname",
        "user",
        "port",
        "identityfile",
        "identitiesonly",
        "identityagent",
        "certificatefile",
        "userknownhostsfile",
        "globalknownhostsfile",
        "stricthostkeychecking",
        "hashknownhosts",
        "revokedhostkeys",
        "hostkeyalias",
        "hostkeyalgorithms",
        "ciphers",
        "kexalgorithms",
        "macs",
        "compression",
        "connecttimeout",
        "serveraliveinterval",
        "serveralivecountmax",
        "proxyjump",
        "proxycommand",
        "batchmode",
        "numberofpasswordprompts",
        "passwordauthentication",
        "pubkeyauthentication",
        "kbdinteractiveauthentication",
        "challengeresponseauthentication",
    ];
    // Interactive ssh's business (terminals, forwarding, multiplexing, logging), or choices
    // whose effect a mount has anyway.
    const NO_EFFECT: &[&str] = &[
        "addkeystoagent",
        "addressfamily",
        "canonicaldomains",
        "canonicalizefallbacklocal",
        "canonicalizehostname",
        "canonicalizemaxdots",
        "canonicalizepermittedcnames",
        "checkhostip",
        "controlmaster",
        "controlpath",
        "controlpersist",
        "escapechar",
        "exitonforwardfailure",
        "forwardagent",
        "forwardx11",
        "forwardx11timeout",
        "forwardx11trusted",
        "gssapiauthentication",
        "gssapidelegatecredentials",
        "ipqos",
        "loglevel",
        "nohostauthenticationforlocalhost",
        "preferredauthentications",
        "protocol",
        "requesttty",
        "sendenv",
        "setenv",
        "tcpkeepalive",
        "updatehostkeys",
        "verifyhostkeydns",
        "visualhostkey",
    ];
    let name = name.to_ascii_lowercase();
    if USED.contains(&name.as_str()) {
        Some(KeywordUse::Used)
    } else if NO_EFFECT.contains(&name.as_str()) {
        Some(KeywordUse::NoEffect)
    } else {
        None
    }
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

    /// Sets `key` as ssh does: the first value given wins.
    pub fn set(&mut self, key: &str, value: String) {
        let key = key.to_ascii_lowercase();
        // "whichever is specified first will prevent later instances of the other from
        // taking effect" (ssh_config(5), ProxyJump).
        let rival = match key.as_str() {
            "proxyjump" => Some("proxycommand"),
            "proxycommand" => Some("proxyjump"),
            _ => None,
        };
        if rival.is_some_and(|r| self.values.contains_key(r)) {
            return;
        }
        let accumulates = matches!(
            key.as_str(),
            "identityfile" | "userknownhostsfile" | "certificatefile"
        );
        let entry = self.values.entry(key).or_default();
        if accumulates || entry.is_empty() {
            entry.push(value);
        }
    }
}

/// Who is asking, for `Match` criteria and `%` tokens.
pub struct Lookup<'a> {
    /// The host as given on the command line (or in a ProxyJump list).
    pub host: &'a str,
    pub local_user: &'a str,
}

/// What applies to `lookup.host`: `first` (the command line's `-o` settings, keys as given)
/// over the file at `path` (a missing file is an empty config).
pub fn load(
    first: &[(String, String)],
    paths: &[PathBuf],
    lookup: &Lookup,
) -> Result<HostConfig, ConfigError> {
    let mut config = HostConfig::default();
    for (key, value) in first {
        config.set(key, value.clone());
    }
    for path in paths {
        // A relative Include is in /etc/ssh from the system's file, else in ~/.ssh.
        let includes = match path == Path::new(SYSTEM_PATH) {
            true => PathBuf::from("/etc/ssh"),
            false => user_dir(),
        };
        apply_file(path, lookup, &mut config, 0, &includes)?;
    }
    Ok(config)
}

/// The system-wide file ssh reads after the user's (Debian's includes ssh_config.d/*.conf).
pub const SYSTEM_PATH: &str = "/etc/ssh/ssh_config";

/// What ssh reads without -F: the user's ~/.ssh/config (when there is a home), then the
/// system's; the first value obtained for a keyword wins.
pub fn default_paths() -> Vec<PathBuf> {
    let user = std::env::home_dir().map(|h| h.join(".ssh/config"));
    user.into_iter()
        .chain([PathBuf::from(SYSTEM_PATH)])
        .collect()
}

fn user_dir() -> PathBuf {
    std::env::home_dir()
        .map(|h| h.join(".ssh"))
        .unwrap_or_default()
}

fn apply_file(
    path: &Path,
    lookup: &Lookup,
    config: &mut HostConfig,
    depth: usize,
    includes: &Path,
) -> Result<(), ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth == 0 => return Ok(()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    apply_text(&text, path, lookup, config, depth, includes)
}

fn apply_text(
    text: &str,
    path: &Path,
    lookup: &Lookup,
    config: &mut HostConfig,
    depth: usize,
    includes: &Path,
) -> Result<(), ConfigError> {
    let mut active = true;
    for (number, line) in text.lines().enumerate() {
        let Some((key, value)) = split_line(line) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "host" => active = host_matches(lookup.host, &value),
            "match" => {
                active = match_block(&value, lookup, config).map_err(|why| ConfigError::Bad {
                    path: path.to_owned(),
                    line: number + 1,
                    why,
                })?
            }
            "include" if active && depth < 16 => {
                for pattern in value.split_whitespace() {
                    for file in include_files(pattern, includes) {
                        apply_file(&file, lookup, config, depth + 1, includes)?;
                    }
                }
            }
            _ if active => config.set(&key, unquote(&value)),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a `Match` line's criteria all hold. One pass is made, as OpenSSH's final one (so
/// `canonical` and `final` hold); `host` is the HostName so far, `user` the remote user so far.
fn match_block(value: &str, lookup: &Lookup, config: &HostConfig) -> Result<bool, String> {
    let words = split_words(value);
    let mut words = words.iter();
    let mut all = true;
    while let Some(word) = words.next() {
        let (negate, criterion) = match word.strip_prefix('!') {
            Some(c) => (true, c.to_ascii_lowercase()),
            None => (false, word.to_ascii_lowercase()),
        };
        let mut argument = || {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("Match {criterion} needs an argument"))
        };
        let hostname = || {
            config
                .get("hostname")
                .map(|h| expand_percent_h(h, lookup.host))
                .unwrap_or_else(|| lookup.host.to_string())
        };
        let user = || config.get("user").unwrap_or(lookup.local_user).to_string();
        let holds = match criterion.as_str() {
            "all" | "canonical" | "final" => true,
            "host" => pattern_list_matches(&hostname(), &argument()?),
            "originalhost" => pattern_list_matches(lookup.host, &argument()?),
            "user" => pattern_list_matches(&user(), &argument()?),
            "localuser" => pattern_list_matches(lookup.local_user, &argument()?),
            "tagged" => pattern_list_matches(config.get("tag").unwrap_or(""), &argument()?),
            "exec" => {
                let command = argument()?;
                // ssh skips an exec once the line cannot match any more.
                all && {
                    let port = config.get("port").unwrap_or("22");
                    let command = expand_tokens(
                        &command,
                        &[
                            ('h', &hostname()),
                            ('n', lookup.host),
                            ('p', port),
                            ('r', &user()),
                            ('u', lookup.local_user),
                        ],
                    );
                    std::process::Command::new("/bin/sh")
                        .arg("-c")
                        .arg(&command)
                        .stdin(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                }
            }
            other => {
                return Err(format!(
                    "Match {other} is not supported (supported: all, host, originalhost, user, \
                     localuser, exec, tagged, canonical, final)"
                ));
            }
        };
        all &= holds != negate;
    }
    Ok(all)
}

/// Words of a line, `"quoted words"` kept whole.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// `%h` (and `%%`) in HostName.
pub fn expand_percent_h(value: &str, host: &str) -> String {
    expand_tokens(value, &[('h', host)])
}

/// ssh_config's `%` tokens: each `%c` in `tokens` replaced, `%%` a percent sign, others kept.
pub fn expand_tokens(value: &str, tokens: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(t) => match tokens.iter().find(|(k, _)| *k == t) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push('%');
                    out.push(t);
                }
            },
            None => out.push('%'),
        }
    }
    out
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

/// `Host` patterns: whitespace-separated, any positive match without a negated one.
fn host_matches(host: &str, patterns: &str) -> bool {
    list_matches(host, patterns.split_whitespace())
}

/// `Match` arguments: comma-separated patterns, the same rule.
fn pattern_list_matches(text: &str, patterns: &str) -> bool {
    list_matches(text, patterns.split(','))
}

fn list_matches<'a>(text: &str, patterns: impl Iterator<Item = &'a str>) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, text) {
                return false;
            }
        } else if wildcard_match(pattern, text) {
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

fn include_files(pattern: &str, relative_to: &Path) -> Vec<PathBuf> {
    let path = expand_tilde(pattern);
    let path = match path.is_relative() {
        true => relative_to.join(&path),
        false => path,
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

    fn resolve_as(text: &str, host: &str, first: &[(&str, &str)]) -> HostConfig {
        let mut config = HostConfig::default();
        for (k, v) in first {
            config.set(k, v.to_string());
        }
        let lookup = Lookup {
            host,
            local_user: "me",
        };
        apply_text(
            text,
            Path::new("cfg"),
            &lookup,
            &mut config,
            0,
            Path::new("/nonexistent"),
        )
        .unwrap();
        config
    }

    fn resolve(text: &str, host: &str) -> HostConfig {
        resolve_as(text, host, &[])
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
        // The command line's -o comes first.
        let c = resolve_as(text, "box", &[("Port", "7")]);
        assert_eq!(c.get("port"), Some("7"));
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
    fn match_blocks_apply_as_in_openssh() {
        let text = "Host short\n  HostName long.example.com\n\
                    Match host *.example.com user alice\n  Port 2200\n\
                    Match originalhost short !localuser me\n  Port 2300\n\
                    Match localuser me\n  Compression yes\n\
                    Match all\n  User nobody\n";
        let c = resolve_as(text, "short", &[("user", "alice")]);
        assert_eq!(c.get("port"), Some("2200"));
        assert_eq!(c.get("compression"), Some("yes"));
        let c = resolve_as(text, "short", &[("user", "bob")]);
        assert_eq!(c.get("port"), None, "user bob, localuser me: neither block");
        assert_eq!(c.get("user"), Some("bob"));
        assert_eq!(resolve(text, "x").get("user"), Some("nobody"));
        let c = resolve("Match exec \"test %h = x\"\n  Port 1\n", "x");
        assert_eq!(c.get("port"), Some("1"));
        let c = resolve("Match exec \"test %h = x\"\n  Port 1\n", "y");
        assert_eq!(c.get("port"), None);
        let mut config = HostConfig::default();
        let lookup = Lookup {
            host: "h",
            local_user: "me",
        };
        let e = apply_text(
            "Match localnetwork 10.0.0.0/8\n",
            Path::new("f"),
            &lookup,
            &mut config,
            0,
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("f line 1: Match localnetwork"),
            "{e}"
        );
    }

    #[test]
    fn proxy_jump_and_command_exclude_each_other() {
        let c = resolve("ProxyCommand nc %h %p\nProxyJump j\n", "h");
        assert_eq!(c.get("proxycommand"), Some("nc %h %p"));
        assert_eq!(c.get("proxyjump"), None);
    }

    #[test]
    fn tokens() {
        assert_eq!(expand_percent_h("%h.lan%%", "a"), "a.lan%");
        assert_eq!(expand_tokens("%x %p", &[('p', "22")]), "%x 22");
    }
}
