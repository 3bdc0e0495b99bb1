//! Authentication and host keys against a real sshd: ssh-agent, key files, an encrypted key,
//! a password; unknown host keys refused, accept-new learning, changed keys refused, hashed
//! known_hosts entries, and ~/.ssh/config host aliases.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

fn assert_works(sshd: &Sshd, m: &Mount) {
    fs::write(m.join("probe"), b"through the mount").unwrap();
    assert_eq!(
        fs::read(sshd.remote_root().join("probe")).unwrap(),
        b"through the mount"
    );
}

#[test]
fn agent_key() {
    let sshd = Sshd::start();
    let agent = SshAgent::start(&sshd.user_key_path());
    let m = Mount::try_with_env(
        &sshd,
        &sshd.source(),
        &sshd.ssh_opts_without_key(),
        None,
        &[("SSH_AUTH_SOCK", agent.socket.as_os_str())],
    )
    .expect("mount with the agent's key");
    assert_works(&sshd, &m);
    // Without the agent and without a key, nothing works.
    let out =
        Mount::try_with(&sshd, &sshd.source(), &sshd.ssh_opts_without_key(), None).unwrap_err();
    assert!(refusal(out).contains("authentication refused"));
}

#[test]
fn key_file_and_default_key_location() {
    let sshd = Sshd::start();
    let m = Mount::new(&sshd, &[]);
    assert_works(&sshd, &m);
    drop(m);
    // ~/.ssh/id_ed25519 is tried when no IdentityFile is given.
    let ssh_dir = sshd.client_home().join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    fs::copy(sshd.user_key_path(), ssh_dir.join("id_ed25519")).unwrap();
    fs::set_permissions(
        ssh_dir.join("id_ed25519"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let m = Mount::try_with(&sshd, &sshd.source(), &sshd.ssh_opts_without_key(), None)
        .expect("mount with the default key");
    assert_works(&sshd, &m);
    fs::remove_file(ssh_dir.join("id_ed25519")).unwrap();
}

#[test]
fn encrypted_key_asks_for_its_passphrase() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("enc_key");
    fs::copy(sshd.user_key_path(), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    run(
        "ssh-keygen",
        &[
            OsStr::new("-p"),
            OsStr::new("-q"),
            OsStr::new("-N"),
            OsStr::new("s3cret phrase"),
            OsStr::new("-f"),
            key.as_os_str(),
        ],
        "/",
    );
    // The passphrase comes from SSH_ASKPASS, as OpenSSH asks it without a terminal.
    let askpass = dir.path().join("askpass");
    fs::write(&askpass, "#!/bin/sh\necho 's3cret phrase'\n").unwrap();
    fs::set_permissions(&askpass, fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = sshd.ssh_opts_without_key();
    args.extend(["-o".into(), format!("IdentityFile={}", key.display())]);
    let envs = [
        ("SSH_ASKPASS", askpass.as_os_str()),
        ("SSH_ASKPASS_REQUIRE", OsStr::new("force")),
    ];
    let m = Mount::try_with_env(&sshd, &sshd.source(), &args, None, &envs).expect("mount");
    assert_works(&sshd, &m);
    drop(m);
    // A wrong passphrase is refused with the key named.
    fs::write(&askpass, "#!/bin/sh\necho wrong\n").unwrap();
    let out = Mount::try_with_env(&sshd, &sshd.source(), &args, None, &envs).unwrap_err();
    let line = refusal(out);
    assert!(
        line.contains("enc_key") && line.contains("passphrase"),
        "{line}"
    );
    // Nobody to ask (no terminal, no askpass; or BatchMode): the one line says why the key was
    // not used, and nothing else is printed.
    let out = Mount::try_with_env(&sshd, &sshd.source(), &args, None, &[]).unwrap_err();
    let line = refusal(out);
    assert!(
        line.contains("authentication refused")
            && line.contains(&format!("skipped encrypted key {}", key.display()))
            && line.contains("ssh-agent")
            && !line.contains('\x1b'),
        "{line}"
    );
    args.extend(["-o".into(), "BatchMode=yes".into()]);
    let out = Mount::try_with_env(&sshd, &sshd.source(), &args, None, &envs).unwrap_err();
    assert!(refusal(out).contains("skipped encrypted key"));
}

#[test]
fn password_from_stdin() {
    let sshd = Sshd::start_with_password_auth();
    let password = "pw-Zz9!long enough";
    let m = sshd.mount_with_password(password);
    fs::write(m.join("by-password"), b"x").unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(sshd.remote_root().join("by-password")).unwrap();
    let uid = String::from_utf8(run("id", &["-u", PASSWORD_USER], "/").stdout).unwrap();
    assert_eq!(
        meta.uid().to_string(),
        uid.trim(),
        "file is owned by the password user"
    );
    drop(m);
    let (source, args) = sshd.password_login(password);
    let out = Mount::try_with(&sshd, &source, &args, Some(b"wrong password\n")).unwrap_err();
    let line = refusal(out);
    assert!(
        line.contains("authentication refused") && line.contains("password"),
        "{line}"
    );
    assert!(
        !line.contains("wrong password"),
        "the password must never be printed"
    );
}

/// Options for a mount with the user key, `known` as the only known_hosts and `strict` checking.
fn host_key_args(sshd: &Sshd, known: &std::path::Path, strict: &str) -> Vec<String> {
    vec![
        "-p".into(),
        sshd.port().to_string(),
        "-o".into(),
        format!("IdentityFile={}", sshd.user_key_path().display()),
        "-o".into(),
        format!("UserKnownHostsFile={}", known.display()),
        "-o".into(),
        format!("StrictHostKeyChecking={strict}"),
    ]
}

#[test]
fn unknown_host_key_is_refused_then_learned_with_accept_new() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let args = |strict: &str| host_key_args(&sshd, &known, strict);
    let out = Mount::try_with(&sshd, &sshd.source(), &args("yes"), None).unwrap_err();
    let line = refusal(out);
    assert!(line.contains("not known"), "{line}");
    assert!(line.contains("SHA256:"), "fingerprint shown: {line}");
    assert!(line.contains("accept-new"), "says how to accept: {line}");
    assert!(!known.exists() || fs::read_to_string(&known).unwrap().is_empty());

    let host_key_body = sshd
        .host_key_pub()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let host = format!("[127.0.0.1]:{}", sshd.port());
    // Learned as ssh would record it, the name hashed or not as HashKnownHosts says (Debian's
    // /etc/ssh/ssh_config says yes); OpenSSH's own ssh-keygen -F finds it either way.
    for hash in ["no", "yes"] {
        let _ = fs::remove_file(&known);
        let mut with = args("accept-new");
        with.extend(["-o".into(), format!("HashKnownHosts={hash}")]);
        let m = Mount::try_with(&sshd, &sshd.source(), &with, None).expect("accept-new");
        assert_works(&sshd, &m);
        drop(m);
        let learned = fs::read_to_string(&known).unwrap();
        assert_eq!(learned.lines().count(), 1, "{learned}");
        assert!(learned.contains(&host_key_body), "{learned}");
        assert_eq!(learned.starts_with("|1|"), hash == "yes", "{learned}");
        assert_eq!(learned.contains(&host), hash == "no", "{learned}");
        let found = run(
            "ssh-keygen",
            &["-F", &host, "-f", known.to_str().unwrap()],
            "/",
        );
        assert!(
            String::from_utf8_lossy(&found.stdout).contains(&host_key_body),
            "ssh-keygen -F does not find the learned line: {learned}"
        );
        // Now known: strict checking passes.
        let m = Mount::try_with(&sshd, &sshd.source(), &args("yes"), None).expect("learned key");
        drop(m);
    }
}

/// The public half of a host key that is not the test sshd's, made in `dir`.
fn impostor_key(dir: &std::path::Path) -> String {
    let other = dir.join("other_host_key");
    keygen(&other, "impostor");
    fs::read_to_string(other.with_extension("pub")).unwrap()
}

#[test]
fn changed_host_key_is_always_refused() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let other_pub = impostor_key(dir.path());
    let known = dir.path().join("known_hosts");
    fs::write(&known, format!("[127.0.0.1]:{} {}", sshd.port(), other_pub)).unwrap();
    for strict in ["yes", "accept-new", "no"] {
        let args = host_key_args(&sshd, &known, strict);
        let out = Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err();
        let line = refusal(out);
        assert!(
            line.contains("CHANGED") && line.contains("line 1"),
            "{strict}: {line}"
        );
    }
    assert_eq!(
        fs::read_to_string(&known).unwrap().lines().count(),
        1,
        "nothing learned"
    );
}

#[test]
fn hashed_known_hosts_entries_match() {
    let sshd = Sshd::start();
    run(
        "ssh-keygen",
        &[
            OsStr::new("-H"),
            OsStr::new("-f"),
            sshd.known_hosts_path().as_os_str(),
        ],
        "/",
    );
    let text = fs::read_to_string(sshd.known_hosts_path()).unwrap();
    assert!(text.starts_with("|1|"), "{text}");
    let m = Mount::new(&sshd, &[]);
    assert_works(&sshd, &m);
}

#[test]
fn ssh_config_host_alias() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    fs::write(
        &config,
        format!(
            "Host other\n  HostName 192.0.2.1\n\nHost myserver\n  HostName 127.0.0.1\n  Port {}\n  User root\n  \
             IdentityFile {}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n\nHost *\n  Port 1\n",
            sshd.port(),
            sshd.user_key_path().display(),
            sshd.known_hosts_path().display()
        ),
    )
    .unwrap();
    let source = format!("myserver:{}", sshd.remote_root().display());
    let m = Mount::try_with(
        &sshd,
        &source,
        &[OsStr::new("-F"), config.as_os_str()],
        None,
    )
    .expect("mount through the alias");
    assert_works(&sshd, &m);
    drop(m);
    // ~/.ssh/config is read by default.
    let ssh_dir = sshd.client_home().join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    fs::copy(&config, ssh_dir.join("config")).unwrap();
    let m = Mount::try_with(&sshd, &source, &[] as &[&str], None).expect("default config");
    assert_works(&sshd, &m);
    drop(m);
    fs::remove_file(ssh_dir.join("config")).unwrap();
}

#[test]
fn user_known_hosts_file_replaces_the_default_and_dev_null_remembers_nothing() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    // The host's key in ~/.ssh/known_hosts: read when no UserKnownHostsFile is given...
    let ssh_dir = sshd.client_home().join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let default = ssh_dir.join("known_hosts");
    fs::write(
        &default,
        format!("[127.0.0.1]:{} {}\n", sshd.port(), sshd.host_key_pub()),
    )
    .unwrap();
    // ... and with `~` in IdentityFile, expanded as ssh_config's would be.
    fs::copy(sshd.user_key_path(), ssh_dir.join("key")).unwrap();
    let without = vec![
        "-p".to_string(),
        sshd.port().to_string(),
        "-o".into(),
        "IdentityFile=~/.ssh/key".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
    ];
    let m = Mount::try_with(&sshd, &sshd.source(), &without, None).expect("default file");
    assert_works(&sshd, &m);
    drop(m);

    // ... but not once UserKnownHostsFile names another file, as with OpenSSH.
    let empty = dir.path().join("empty");
    fs::write(&empty, "").unwrap();
    let args = host_key_args(&sshd, &empty, "yes");
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err());
    assert!(line.contains("not known"), "{line}");

    // /dev/null, the usual way to say "a throwaway host": accepted with accept-new and no,
    // recorded nowhere, refused with yes.
    let null = std::path::Path::new("/dev/null");
    for strict in ["accept-new", "no"] {
        let args = host_key_args(&sshd, null, strict);
        let m = Mount::try_with(&sshd, &sshd.source(), &args, None).expect(strict);
        assert_works(&sshd, &m);
    }
    let args = host_key_args(&sshd, null, "yes");
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err());
    assert!(line.contains("not known"), "{line}");
    assert_eq!(fs::metadata(null).unwrap().len(), 0);
    assert_eq!(fs::read_to_string(&empty).unwrap(), "", "nothing learned");
}

#[test]
fn a_revoked_host_key_is_refused_wherever_else_it_is_listed() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let host = format!("[127.0.0.1]:{}", sshd.port());
    let key = sshd.host_key_pub();
    let key = key.trim();
    fs::write(&known, format!("{host} {key}\n@revoked {host} {key}\n")).unwrap();
    for strict in ["yes", "accept-new", "no"] {
        let args = host_key_args(&sshd, &known, strict);
        let out = Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err();
        let line = refusal(out);
        assert!(
            line.contains("REVOKED") && line.contains("line 2"),
            "{strict}: {line}"
        );
    }
    // A wildcard revocation, in a file of its own after the user's.
    fs::write(&known, format!("{host} {key}\n")).unwrap();
    let global = dir.path().join("global_known_hosts");
    fs::write(&global, format!("@revoked * {key}\n")).unwrap();
    let mut args = host_key_args(&sshd, &known, "yes");
    args.extend([
        "-o".into(),
        format!("GlobalKnownHostsFile={}", global.display()),
    ]);
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err());
    assert!(line.contains("REVOKED"), "{line}");
}

#[test]
fn one_bad_line_never_hides_a_changed_key() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let other_pub = impostor_key(dir.path());
    let known = dir.path().join("known_hosts");
    let mut text = b"# owner: Ren\xe9e\n".to_vec();
    text.extend_from_slice(b"broken line\n");
    text.extend_from_slice(format!("[127.0.0.1]:{} {}", sshd.port(), other_pub).as_bytes());
    fs::write(&known, &text).unwrap();
    let args = host_key_args(&sshd, &known, "accept-new");
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &args, None).unwrap_err());
    assert!(
        line.contains("CHANGED") && line.contains("line 3"),
        "{line}"
    );
    assert_eq!(fs::read(&known).unwrap(), text, "nothing learned");
}

#[test]
fn revoked_host_keys_refuse_a_listed_key_and_an_unreadable_file_refuses_too() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known = sshd.known_hosts_path();
    let revoked = dir.path().join("revoked");
    let with = |file: &std::path::Path| {
        let mut args = host_key_args(&sshd, &known, "yes");
        args.extend(["-o".into(), format!("RevokedHostKeys={}", file.display())]);
        args
    };
    // Another key listed: the host is accepted.
    fs::write(&revoked, impostor_key(dir.path())).unwrap();
    Mount::try_with(&sshd, &sshd.source(), &with(&revoked), None).expect("not revoked");
    // Its own key listed, known_hosts notwithstanding: refused.
    let listed = format!("# revoked\n\n{}", sshd.host_key_pub());
    fs::write(&revoked, listed).unwrap();
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &with(&revoked), None).unwrap_err());
    assert!(
        line.contains("REVOKED") && line.contains("line 3"),
        "{line}"
    );
    // A KRL (OpenSSH's binary list) is not read: refused, saying so.
    let krl = dir.path().join("krl");
    let host_pub = dir.path().join("host.pub");
    fs::write(&host_pub, sshd.host_key_pub()).unwrap();
    run(
        "ssh-keygen",
        &[
            "-k",
            "-f",
            krl.to_str().unwrap(),
            host_pub.to_str().unwrap(),
        ],
        "/",
    );
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &with(&krl), None).unwrap_err());
    assert!(line.contains("KRL"), "{line}");
    // A file that is not there: refused rather than taken for "nothing revoked".
    let line = refusal(
        Mount::try_with(
            &sshd,
            &sshd.source(),
            &with(&dir.path().join("missing")),
            None,
        )
        .unwrap_err(),
    );
    assert!(line.contains("RevokedHostKeys"), "{line}");
}

#[test]
fn a_host_certificate_is_accepted_on_a_trusted_authority_s_word_and_checked_as_ssh_checks_it() {
    let mut sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("host_ca");
    keygen(&ca, "test host CA");
    let ca_pub = fs::read_to_string(ca.with_extension("pub")).unwrap();
    let other_ca_pub = impostor_key(dir.path());
    let known = dir.path().join("known_hosts");
    let port = sshd.port();
    let authority = format!("@cert-authority [127.0.0.1]:{port} {ca_pub}");
    // Each case: known_hosts, whether it mounts, what the refusal says; ssh must agree where
    // its versions agree (OpenSSH 10.3 made principals required and host patterns allowed,
    // which 9.2 here does not know: we check as 10.3 does, failing closed).
    let check_with = |sshd: &Sshd, case: &str, known_hosts: &str, accepted: bool, says: &str| {
        fs::write(&known, known_hosts).unwrap();
        let args = host_key_args(sshd, &known, "yes");
        match Mount::try_with(sshd, &sshd.source(), &args, None) {
            Ok(mount) => {
                fs::write(mount.join("through-cert"), case).unwrap();
                let server = sshd.remote_root().join("through-cert");
                assert_eq!(fs::read_to_string(server).unwrap(), case);
                assert!(accepted, "{case}: mounted");
            }
            Err(out) => {
                let line = refusal(out);
                assert!(!accepted, "{case}: refused: {line}");
                assert!(line.contains(says), "{case}: {line}");
            }
        }
    };
    let check = |sshd: &Sshd, case: &str, known_hosts: &str, accepted: bool, says: &str| {
        check_with(sshd, case, known_hosts, accepted, says);
        assert_eq!(
            sshd.ssh_client_accepts(&known),
            accepted,
            "{case}: ssh agrees"
        );
    };
    sshd.certify_host_key(&ca, &["-n", "127.0.0.1"]);
    check(&sshd, "only the authority is known", &authority, true, "");
    check(
        &sshd,
        "an authority for every host",
        &format!("@cert-authority * {ca_pub}"),
        true,
        "",
    );
    check(
        &sshd,
        "another authority",
        &format!("@cert-authority [127.0.0.1]:{port} {other_ca_pub}"),
        false,
        "not known",
    );
    check(
        &sshd,
        "the authority revoked",
        &format!("{authority}@revoked * {ca_pub}"),
        false,
        "REVOKED",
    );
    sshd.certify_host_key(&ca, &["-n", "other.example,*.example"]);
    check(&sshd, "not a principal", &authority, false, "not known");
    let plain = format!("[127.0.0.1]:{port} {}\n", sshd.host_key_pub());
    check(
        &sshd,
        "not a principal, but the plain key is known",
        &format!("{authority}{plain}"),
        true,
        "",
    );
    sshd.certify_host_key(&ca, &["-n", "127.0.0.*", "-V", "20200101:20200201"]);
    check(&sshd, "expired", &authority, false, "not known");
    sshd.certify_host_key(&ca, &["-n", "127.0.0.*"]);
    check_with(&sshd, "a principal pattern", &authority, true, "");
    sshd.certify_host_key(&ca, &[]);
    check_with(&sshd, "no principal", &authority, false, "not known");
}
