//! known_hosts files as sshd(8) describes them, read by a parser of our own: markers
//! (`@revoked`, `@cert-authority`), hashed names (`|1|salt|hash`), patterns (`*`, `?`, `!`),
//! `[host]:port`, comma lists, any whitespace, bytes that are not UTF-8. One bad line is skipped
//! alone (with its file and line in a warning); it never hides the lines around it.

use std::path::Path;

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Certificate, HashAlg, PublicKey};

use super::config::wildcard_match;

/// What a line says of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The host's own key.
    Plain,
    /// Never to be accepted for the hosts it names.
    Revoked,
    /// A certificate authority whose signed host certificates are accepted for the hosts.
    CertAuthority,
}

#[derive(Debug, Clone)]
enum Hosts {
    /// Patterns, each possibly negated.
    Patterns(Vec<String>),
    /// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// One usable line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub marker: Marker,
    hosts: Hosts,
    pub key: PublicKey,
    /// 1-based, as editors count.
    pub line: usize,
}

/// The usable lines of a file, and why the others were skipped.
#[derive(Debug, Default)]
pub struct KnownHosts {
    pub entries: Vec<Entry>,
    pub skipped: Vec<String>,
}

/// The name a host is looked up by: `host` on port 22, else `[host]:port` (as ssh records it).
pub fn lookup_name(host: &str, port: u16) -> String {
    match port {
        22 => host.to_ascii_lowercase(),
        _ => format!("[{}]:{port}", host.to_ascii_lowercase()),
    }
}

/// Parses the contents of a known_hosts file (`file` only names it in the reasons).
pub fn parse(contents: &[u8], file: &Path) -> KnownHosts {
    let mut out = KnownHosts::default();
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        match parse_line(raw) {
            Ok(Some((marker, hosts, key))) => out.entries.push(Entry {
                marker,
                hosts,
                key,
                line,
            }),
            Ok(None) => {}
            Err(why) => out
                .skipped
                .push(format!("{}:{line}: {why}, line skipped", file.display())),
        }
    }
    out
}

fn parse_line(raw: &[u8]) -> Result<Option<(Marker, Hosts, PublicKey)>, String> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut fields = raw
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let Some(mut first) = fields.next() else {
        return Ok(None);
    };
    if first.starts_with(b"#") {
        return Ok(None);
    }
    let marker = match first {
        b"@revoked" => Marker::Revoked,
        b"@cert-authority" => Marker::CertAuthority,
        m if m.starts_with(b"@") => {
            return Err(format!("unknown marker {}", String::from_utf8_lossy(m)));
        }
        _ => Marker::Plain,
    };
    if marker != Marker::Plain {
        first = fields.next().ok_or("a marker without host names")?;
    }
    let hosts = parse_hosts(first)?;
    let kind = fields.next().ok_or("no key type")?;
    let blob = fields.next().ok_or("no key")?;
    // The comment (the rest) is not looked at: it may hold any bytes.
    Ok(Some((marker, hosts, parse_key(kind, blob)?)))
}

/// A public key from its type and base64 fields, as known_hosts and .pub files write it.
fn parse_key(kind: &[u8], blob: &[u8]) -> Result<PublicKey, String> {
    let (kind, blob) = (ascii(kind, "key type")?, ascii(blob, "key")?);
    PublicKey::from_openssh(&format!("{kind} {blob}"))
        .map_err(|e| format!("a {kind} key that cannot be read ({e})"))
}

/// A name hashed as ssh hashes it for known_hosts: HMAC-SHA1 keyed with the salt.
fn name_hash(salt: &[u8], name: &str) -> Vec<u8> {
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).expect("HMAC takes a key of any length");
    mac.update(name.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn ascii<'a>(field: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(field)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(format!("a {what} that is not ASCII"))
}

fn parse_hosts(field: &[u8]) -> Result<Hosts, String> {
    let field = ascii(field, "host name")?;
    if let Some(hashed) = field.strip_prefix("|1|") {
        let (salt, hash) = hashed
            .split_once('|')
            .ok_or("a hashed name without its hash")?;
        let decode = |s: &str| data_encoding::BASE64.decode(s.as_bytes()).ok();
        let (Some(salt), Some(hash)) = (decode(salt), decode(hash)) else {
            return Err("a hashed name that is not base64".into());
        };
        if salt.len() != 20 || hash.len() != 20 {
            return Err("a hashed name of the wrong length".into());
        }
        return Ok(Hosts::Hashed { salt, hash });
    }
    if field.starts_with('|') {
        return Err("a hashed name of an unknown kind".into());
    }
    Ok(Hosts::Patterns(
        field
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_ascii_lowercase)
            .collect(),
    ))
}

impl Entry {
    /// Whether the line names `name` (see [`lookup_name`]): as OpenSSH's match_hostname, a
    /// negated pattern that matches excludes the host whatever else matches.
    pub fn names(&self, name: &str) -> bool {
        match &self.hosts {
            Hosts::Hashed { salt, hash } => name_hash(salt, name) == *hash,
            Hosts::Patterns(patterns) => {
                let mut named = false;
                for pattern in patterns {
                    match pattern.strip_prefix('!') {
                        Some(negated) if wildcard_match(negated, name) => {
                            return false;
                        }
                        Some(_) => {}
                        None => named |= wildcard_match(pattern, name),
                    }
                }
                named
            }
        }
    }
}

/// Appends the line recording `key` for `name` (see [`lookup_name`]) to `file`, as ssh does
/// when it learns a host: the name hashed (`|1|salt|hash`) with `hashed`, the file and its
/// directory made when missing (the directory private, as ~/.ssh is).
pub fn learn(file: &Path, name: &str, key: &PublicKey, hashed: bool) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let host = match hashed {
        true => {
            let mut salt = [0u8; 20];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
            let b64 = |b: &[u8]| data_encoding::BASE64.encode(b);
            format!("|1|{}|{}", b64(&salt), b64(&name_hash(&salt, name)))
        }
        false => name.to_string(),
    };
    let bare = PublicKey::new(key.key_data().clone(), "");
    let key = bare
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .open(file)?;
    // A last line without its newline must not swallow ours.
    let mut last = [0u8; 1];
    let len = f.seek(SeekFrom::End(0))?;
    let mut text = String::new();
    if len > 0 {
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    text.push_str(&format!("{host} {}\n", key.trim_end()));
    f.write_all(text.as_bytes())
}

/// Where `key` is listed in a RevokedHostKeys file (`contents`, one public key a line): its
/// line, if it is. A Key Revocation List (OpenSSH's binary format) is not read: an error, so
/// that the caller refuses rather than take the host for not revoked.
pub fn revoked_in(contents: &[u8], key: &PublicKey) -> Result<Option<usize>, String> {
    if contents.starts_with(b"SSHKRL\n") {
        return Err(
            "an OpenSSH key revocation list (KRL), which sftpmount cannot read: \
                    list the revoked public keys one a line instead"
                .into(),
        );
    }
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let mut fields = raw
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !kind.starts_with(b"#")
            && parse_key(kind, blob).is_ok_and(|listed| listed.key_data() == key.key_data())
        {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

/// What the lines of every file say of `key` for the host `name`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A line names the host with this key.
    Known,
    /// A `@revoked` line names the host with this key (file, line).
    Revoked(String, usize),
    /// The host is recorded with another key of the same type (file, line).
    Changed(String, usize),
    /// Nothing recorded for the host with a key of this type.
    Unknown,
}

/// The verdict for `key` offered by `name`, over files in order. A revocation wins over
/// everything; then the key recorded for the host (it may have several lines); then another
/// key of its type recorded for the host: changed.
pub fn verdict<'a>(
    files: impl IntoIterator<Item = (&'a Path, &'a KnownHosts)>,
    name: &str,
    key: &PublicKey,
) -> Verdict {
    let mut known = false;
    let mut changed = None;
    for (file, hosts) in files {
        for entry in hosts.entries.iter().filter(|e| e.names(name)) {
            let same = entry.key.key_data() == key.key_data();
            match entry.marker {
                Marker::Revoked if same => {
                    return Verdict::Revoked(file.display().to_string(), entry.line);
                }
                Marker::Plain if same => known = true,
                Marker::Plain if entry.key.algorithm() == key.algorithm() => {
                    changed.get_or_insert((file.display().to_string(), entry.line));
                }
                _ => {}
            }
        }
    }
    match (known, changed) {
        (true, _) => Verdict::Known,
        (false, Some((file, line))) => Verdict::Changed(file, line),
        (false, None) => Verdict::Unknown,
    }
}

/// What the lines of every file say of a host certificate for `name`: its key and the key of
/// the authority that signed it.
#[derive(Debug, PartialEq, Eq)]
pub enum CertVerdict {
    /// A `@revoked` line names the host with the certificate's key or its authority's (file, line).
    Revoked(String, usize),
    /// A `@cert-authority` line names the host with the signer's key (file, line).
    Authority(String, usize),
    /// No authority recorded for the host signed it.
    NoAuthority,
}

/// The verdict for a certificate of `key` signed by `ca`, offered by `name`. A revocation of
/// either key wins (as ssh's check_key_not_revoked).
pub fn cert_verdict<'a>(
    files: impl IntoIterator<Item = (&'a Path, &'a KnownHosts)>,
    name: &str,
    key: &KeyData,
    ca: &KeyData,
) -> CertVerdict {
    let mut authority = None;
    for (file, hosts) in files {
        for entry in hosts.entries.iter().filter(|e| e.names(name)) {
            let signed_by = entry.key.key_data() == ca;
            match entry.marker {
                Marker::Revoked if signed_by || entry.key.key_data() == key => {
                    return CertVerdict::Revoked(file.display().to_string(), entry.line);
                }
                Marker::CertAuthority if signed_by => {
                    authority.get_or_insert((file.display().to_string(), entry.line));
                }
                _ => {}
            }
        }
    }
    match authority {
        Some((file, line)) => CertVerdict::Authority(file, line),
        None => CertVerdict::NoAuthority,
    }
}

/// Whether a `@cert-authority` line names the host: then its certificates are asked for.
pub fn names_an_authority<'a>(
    files: impl IntoIterator<Item = (&'a Path, &'a KnownHosts)>,
    name: &str,
) -> bool {
    files.into_iter().any(|(_, hosts)| {
        hosts
            .entries
            .iter()
            .any(|e| e.marker == Marker::CertAuthority && e.names(name))
    })
}

/// Why a host certificate signed by a trusted authority is still not accepted for `host`,
/// checked as ssh's sshkey_cert_check_host: a host certificate, within its validity, signed by
/// `ca`, listing a principal (pattern) that matches the host, with no critical option.
pub fn certificate_refusal(cert: &Certificate, ca: &PublicKey, host: &str) -> Option<String> {
    if !cert.cert_type().is_host() {
        return Some("it is not a host certificate".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now < cert.valid_after() {
        return Some("it is not yet valid".into());
    }
    if now >= cert.valid_before() {
        return Some("it has expired".into());
    }
    if cert
        .validate_at(now, [&ca.fingerprint(HashAlg::Sha256)])
        .is_err()
    {
        return Some("its signature does not verify".into());
    }
    if cert.valid_principals().is_empty() {
        return Some("it lists no principal".into());
    }
    let host = host.to_ascii_lowercase();
    if !cert
        .valid_principals()
        .iter()
        .any(|p| wildcard_match(p, &host))
    {
        return Some(format!(
            "{host} is not among its principals ({})",
            cert.valid_principals().join(", ")
        ));
    }
    if !cert.critical_options().is_empty() {
        return Some("it carries critical options".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8zFG0VYDn1mJrMBVQGIzGcg4a4CSZf1BZGXJOeoRRU";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn verdict_of(text: &[u8], name: &str, k: &str) -> Verdict {
        let parsed = parse(text, Path::new("kh"));
        verdict([(Path::new("kh"), &parsed)], name, &key(k))
    }

    #[test]
    fn lookup_names_are_as_ssh_records_them() {
        assert_eq!(lookup_name("Example.COM", 22), "example.com");
        assert_eq!(lookup_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn plain_patterns_negation_and_ports() {
        let text = format!(
            "# comment\n\nhost1,*.example.com,!bad.example.com {ED_A}\n[127.0.0.1]:2222\t{ED_A} c\n"
        );
        for (name, verdict) in [
            ("host1", Verdict::Known),
            ("a.example.com", Verdict::Known),
            ("bad.example.com", Verdict::Unknown),
            ("[127.0.0.1]:2222", Verdict::Known),
            ("127.0.0.1", Verdict::Unknown),
            ("h?st1", Verdict::Unknown),
        ] {
            assert_eq!(verdict_of(text.as_bytes(), name, ED_A), verdict, "{name}");
        }
        assert_eq!(
            verdict_of(text.as_bytes(), "host1", ED_B),
            Verdict::Changed("kh".into(), 3)
        );
    }

    #[test]
    fn a_revoked_key_is_refused_wherever_else_it_is_listed() {
        let text = format!("[h]:2 {ED_A}\n@revoked [h]:2 {ED_A}\n");
        assert_eq!(
            verdict_of(text.as_bytes(), "[h]:2", ED_A),
            Verdict::Revoked("kh".into(), 2)
        );
        let star = format!("@revoked * {ED_A}\nh {ED_A}\n");
        assert_eq!(
            verdict_of(star.as_bytes(), "h", ED_A),
            Verdict::Revoked("kh".into(), 1)
        );
        // Another host's revocation does not touch this one.
        let other = format!("@revoked g {ED_A}\nh {ED_A}\n");
        assert_eq!(verdict_of(other.as_bytes(), "h", ED_A), Verdict::Known);
    }

    #[test]
    fn hashed_names_match_their_host_only() {
        // ssh-keygen -H of "[127.0.0.1]:2222" with this salt.
        let salt = [7u8; 20];
        let hash = name_hash(&salt, "[127.0.0.1]:2222");
        let line = format!(
            "|1|{}|{} {ED_A}\n",
            data_encoding::BASE64.encode(&salt),
            data_encoding::BASE64.encode(&hash)
        );
        assert_eq!(
            verdict_of(line.as_bytes(), "[127.0.0.1]:2222", ED_A),
            Verdict::Known
        );
        assert_eq!(
            verdict_of(line.as_bytes(), "[127.0.0.1]:2223", ED_A),
            Verdict::Unknown
        );
    }

    #[test]
    fn a_bad_line_is_skipped_alone_and_bytes_that_are_not_utf8_are_tolerated() {
        let mut text = b"# caf\xe9 owner\n".to_vec();
        text.extend_from_slice(b"h ssh-ed25519 !!!notbase64\n");
        text.extend_from_slice(b"h ssh-foo AAAA\n@nonsense h x y\nonlyhost\n");
        text.extend_from_slice(format!("h {ED_A} comment ").as_bytes());
        text.extend_from_slice(b"\xff\n");
        text.extend_from_slice(b"|1|bad|bad ssh-ed25519 AAAA\n");
        let parsed = parse(&text, Path::new("/kh"));
        assert_eq!(parsed.entries.len(), 1);
        assert_eq!(parsed.entries[0].line, 6);
        assert_eq!(parsed.skipped.len(), 5, "{:?}", parsed.skipped);
        assert!(parsed.skipped[0].starts_with("/kh:2: "));
        assert_eq!(
            verdict_of(&text, "h", ED_B),
            Verdict::Changed("kh".into(), 6)
        );
    }

    #[test]
    fn mangled_files_never_panic() {
        // The fuzz target's check, run here on mutations of a real file (cargo fuzz needs
        // nightly; this runs in every test run).
        let base = format!(
            "h,*.x,!y {ED_A} c\n@revoked [h]:2 {ED_B}\n|1|BwcHBwcHBwcHBwcHBwcHBwcHBwc=|AAAAAAAAAAAAAAAAAAAAAAAAAAA= {ED_A}\n"
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut bytes = base.clone().into_bytes();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, b"*?!|,[]: \t@#\n\xff"[(next() % 14) as usize]),
                }
            }
            let parsed = parse(&bytes, Path::new("m"));
            for entry in &parsed.entries {
                for name in ["h", "[h]:2", "", "a.x", "y"] {
                    let _ = entry.names(name);
                }
                let _ = verdict([(Path::new("m"), &parsed)], "h", &entry.key);
            }
        }
    }

    #[test]
    fn learned_lines_are_found_again_plain_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        learn(&file, "[h]:2", &key(ED_A), false).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"# no newline"))
            .unwrap();
        learn(&file, "g", &key(ED_B), true).unwrap();
        let text = std::fs::read(&file).unwrap();
        let parsed = parse(&text, &file);
        assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        let files = || [(file.as_path(), &parsed)];
        assert_eq!(verdict(files(), "[h]:2", &key(ED_A)), Verdict::Known);
        assert_eq!(verdict(files(), "g", &key(ED_B)), Verdict::Known);
        assert!(String::from_utf8_lossy(&text).contains("\n|1|"));
        assert!(!String::from_utf8_lossy(&text).contains(" g "));
    }

    #[test]
    fn wildcards_follow_openssh() {
        assert!(wildcard_match("[*]:22*", "[x]:2222"));
        assert!(!wildcard_match("*.example.com", "example.com"));
        // Many stars against a long name that does not match: still quick (a known_hosts
        // file may be anyone's).
        let stars = "*a".repeat(200);
        assert!(!wildcard_match(&stars, &"a".repeat(199)));
    }

    #[test]
    fn a_certificate_is_judged_by_its_authority_and_refused_if_either_key_is_revoked() {
        let judge = |text: &str| {
            let parsed = parse(text.as_bytes(), Path::new("kh"));
            let (host_key, ca) = (key(ED_A), key(ED_B));
            cert_verdict(
                [(Path::new("kh"), &parsed)],
                "[h]:2222",
                host_key.key_data(),
                ca.key_data(),
            )
        };
        let auth = |v| matches!(v, CertVerdict::Authority(_, 1));
        assert!(auth(judge(&format!("@cert-authority [h]:2222 {ED_B}"))));
        assert!(auth(judge(&format!("@cert-authority *,!x {ED_B}"))));
        // The host's key itself listed plainly says nothing of its certificates.
        assert_eq!(judge(&format!("[h]:2222 {ED_B}")), CertVerdict::NoAuthority);
        assert_eq!(
            judge(&format!("@cert-authority [h]:2222 {ED_A}")),
            CertVerdict::NoAuthority
        );
        assert_eq!(
            judge(&format!("@cert-authority other {ED_B}")),
            CertVerdict::NoAuthority
        );
        for revoked in [ED_A, ED_B] {
            assert_eq!(
                judge(&format!("@cert-authority * {ED_B}\n@revoked * {revoked}")),
                CertVerdict::Revoked("kh".into(), 2)
            );
        }
    }
}
