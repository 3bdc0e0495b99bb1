//! ssh_config as a user of ssh brings it: jump hosts (ProxyJump, one and two hops, and
//! ProxyCommand with OpenSSH's own `ssh -W`) through other real sshds, Include and Match files,
//! and ssh_config keywords given with -o (algorithms, compression, HostKeyAlias,
//! IdentitiesOnly, BatchMode), each checked in the server's own log or on the server's disk.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

fn assert_works(target: &Sshd, m: &Mount, name: &str) {
    fs::write(m.join(name), name.as_bytes()).unwrap();
    assert_eq!(
        fs::read(target.remote_root().join(name)).unwrap(),
        name.as_bytes()
    );
}

/// An sshd whose log shows each connection's key exchange and forwarded channels.
fn verbose_sshd(extra: &[&str]) -> Sshd {
    let mut extra_config = vec!["LogLevel DEBUG1".to_string()];
    extra_config.extend(extra.iter().map(|l| l.to_string()));
    Sshd::start_with(SshdOptions {
        extra_config,
        ..SshdOptions::default()
    })
}

/// A `Host NAME` block that reaches `sshd` with its own key and known_hosts.
fn host_block(name: &str, sshd: &Sshd, extra: &str) -> String {
    format!(
        "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  \
         UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n{extra}",
        sshd.port(),
        sshd.user_key_path().display(),
        sshd.known_hosts_path().display()
    )
}

fn mount_with_config(
    target: &Sshd,
    config: &Path,
    source_host: &str,
) -> Result<Mount, std::process::Output> {
    let source = format!("{source_host}:{}", target.remote_root().display());
    let config = config.display().to_string();
    Mount::try_with(target, &source, &["-F", config.as_str()], None)
}

/// Forwarded channels the jump host opened to `port`, from its debug log.
fn forwards_to(jump: &Sshd, port: u16) -> usize {
    jump.log()
        .lines()
        .filter(|l| {
            l.contains("server_request_direct_tcpip") && l.contains(&format!("port {port}"))
        })
        .count()
}

#[test]
fn proxy_jump_through_one_and_two_jump_hosts_and_survives_a_cut_at_the_jump() {
    let target = Sshd::start();
    let gate1 = verbose_sshd(&[]);
    let gate2 = verbose_sshd(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    fs::write(
        &config,
        [
            host_block("gate1", &gate1, ""),
            host_block("gate2", &gate2, ""),
            host_block("inside", &target, "  ProxyJump gate1\n"),
            host_block("deep", &target, "  ProxyJump gate1,gate2\n"),
        ]
        .concat(),
    )
    .unwrap();

    let m = mount_with_config(&target, &config, "inside").expect("mount through gate1");
    assert_works(&target, &m, "one-hop");
    assert_eq!(forwards_to(&gate1, target.port()), 1, "{}", gate1.log());

    // The connection through the jump host is cut: the mount reconnects through it again.
    assert!(gate1.kill_connections() > 0);
    let data = random_bytes(3 << 20, 7);
    fs::write(m.join("after-cut"), &data).unwrap();
    assert_eq!(
        fs::read(target.remote_root().join("after-cut")).unwrap(),
        data
    );
    assert!(
        wait_until(Duration::from_secs(5), || forwards_to(
            &gate1,
            target.port()
        ) == 2),
        "{}",
        gate1.log()
    );
    drop(m);

    // Two hops: gate1 forwards to gate2, gate2 to the target.
    let m = mount_with_config(&target, &config, "deep").expect("mount through gate1,gate2");
    assert_works(&target, &m, "two-hops");
    assert_eq!(forwards_to(&gate1, gate2.port()), 1, "{}", gate1.log());
    assert_eq!(forwards_to(&gate2, target.port()), 1, "{}", gate2.log());
    drop(m);

    // -o ProxyJump=, as sshfs users pass it, with user@host:port.
    let source = format!("127.0.0.1:{}", target.remote_root().display());
    let mut args = target.ssh_opts();
    args.extend([
        "-F".to_string(),
        config.display().to_string(),
        "-o".to_string(),
        format!("ProxyJump=root@gate2:{}", gate2.port()),
    ]);
    let m = Mount::try_with(&target, &source, &args, None).expect("-o ProxyJump");
    assert_works(&target, &m, "option");
    assert_eq!(forwards_to(&gate2, target.port()), 2, "{}", gate2.log());
}

#[test]
fn a_jump_host_that_refuses_to_forward_fails_the_mount_and_says_so() {
    let target = Sshd::start();
    let gate = verbose_sshd(&["AllowTcpForwarding no"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    fs::write(
        &config,
        [
            host_block("gate", &gate, ""),
            host_block("inside", &target, "  ProxyJump gate\n"),
            // A jump host whose key is not the one known: its own refusal, naming it.
            format!(
                "Host badgate\n  HostName 127.0.0.1\n  Port {}\n  User root\n  \
                 UserKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n\
                 Host behindbad\n  HostName 127.0.0.1\n  Port {}\n  ProxyJump badgate\n",
                gate.port(),
                target.port()
            ),
        ]
        .concat(),
    )
    .unwrap();
    // Were the route ignored, the mount would reach the target directly and succeed.
    let line = refusal(mount_with_config(&target, &config, "inside").unwrap_err());
    assert!(
        line.contains("through jump host") && line.contains("AllowTcpForwarding"),
        "{line}"
    );
    let line = refusal(mount_with_config(&target, &config, "behindbad").unwrap_err());
    assert!(
        line.contains(&format!("[127.0.0.1]:{}", gate.port())) && line.contains("not known"),
        "{line}"
    );
}

#[test]
fn each_jump_host_gets_the_host_key_checks_of_its_own_block() {
    let target = Sshd::start();
    let mut gate = verbose_sshd(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("host_ca");
    keygen(&ca, "test host CA");
    gate.certify_host_key(&ca, &["-n", "127.0.0.1"]);
    let gate_known = dir.path().join("gate_known_hosts");
    let ca_pub = fs::read_to_string(ca.with_extension("pub")).unwrap();
    fs::write(&gate_known, format!("@cert-authority * {ca_pub}")).unwrap();
    let revoked = dir.path().join("revoked");
    fs::write(&revoked, gate.host_key_pub()).unwrap();
    let gate_block = |name: &str, extra: &str| {
        format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n{extra}",
            gate.port(),
            gate.user_key_path().display(),
            gate_known.display()
        )
    };
    let config = dir.path().join("config");
    fs::write(
        &config,
        [
            gate_block("gate", ""),
            gate_block(
                "revokedgate",
                &format!("  RevokedHostKeys {}\n", revoked.display()),
            ),
            host_block("inside", &target, "  ProxyJump gate\n"),
            host_block("behindrevoked", &target, "  ProxyJump revokedgate\n"),
        ]
        .concat(),
    )
    .unwrap();
    // The jump host is known only through its certificate's authority.
    let m = mount_with_config(&target, &config, "inside").expect("mount through a certified gate");
    assert_works(&target, &m, "via-certified-gate");
    drop(m);
    let line = refusal(mount_with_config(&target, &config, "behindrevoked").unwrap_err());
    assert!(
        line.contains("REVOKED") && line.contains(&format!("[127.0.0.1]:{}", gate.port())),
        "{line}"
    );
}

#[test]
fn proxy_command_carries_the_connection_through_ssh_w() {
    let target = Sshd::start();
    let gate = verbose_sshd(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let ssh_w = format!(
        "ssh -F none -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes \
         -p {} -W %h:%p root@127.0.0.1",
        gate.user_key_path().display(),
        gate.known_hosts_path().display(),
        gate.port()
    );
    fs::write(
        &config,
        host_block("viacmd", &target, &format!("  ProxyCommand {ssh_w}\n")),
    )
    .unwrap();
    let m = mount_with_config(&target, &config, "viacmd").expect("mount through ProxyCommand");
    assert_works(&target, &m, "via-command");
    assert_eq!(forwards_to(&gate, target.port()), 1, "{}", gate.log());
    drop(m);

    // A command that cannot carry SSH fails the mount with one line.
    fs::write(
        &config,
        host_block("viacmd", &target, "  ProxyCommand /bin/false\n"),
    )
    .unwrap();
    let line = refusal(mount_with_config(&target, &config, "viacmd").unwrap_err());
    assert!(
        line.contains(&format!("127.0.0.1:{}", target.port())),
        "{line}"
    );
}

#[test]
fn include_and_match_blocks_choose_the_settings() {
    let target = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let included = dir.path().join("conf.d");
    fs::create_dir(&included).unwrap();
    // The real settings come from an included file's Match block; a Match that does not hold
    // (another local user) would send the mount to a closed port.
    fs::write(
        included.join("10-match.conf"),
        format!(
            "Match originalhost box localuser nobody-here\n  Port 1\n\
             Match originalhost box\n  HostName 127.0.0.1\n  Port {}\n  User root\n  \
             IdentityFile {}\n  UserKnownHostsFile {}\n\
             Match host 127.0.0.1 user root exec \"test %p = {}\"\n  StrictHostKeyChecking yes\n",
            target.port(),
            target.user_key_path().display(),
            target.known_hosts_path().display(),
            target.port()
        ),
    )
    .unwrap();
    let config = dir.path().join("config");
    fs::write(
        &config,
        format!("Include {}/*.conf\nHost *\n  Port 2\n", included.display()),
    )
    .unwrap();
    let m = mount_with_config(&target, &config, "box").expect("mount through Include + Match");
    assert_works(&target, &m, "matched");
    drop(m);

    fs::write(
        dir.path().join("bad"),
        "Match localnetwork 10.0.0.0/8\n  Port 1\n",
    )
    .unwrap();
    let line = refusal(mount_with_config(&target, &dir.path().join("bad"), "box").unwrap_err());
    assert!(
        line.contains("line 1") && line.contains("Match localnetwork"),
        "{line}"
    );
}

#[test]
fn ssh_keywords_given_with_o_reach_the_connection() {
    let sshd = verbose_sshd(&[]);
    let with = |extra: &[&str]| Mount::try_new(&sshd, extra);
    let m = with(&[
        "-o",
        "Ciphers=aes128-ctr,MACs=hmac-sha2-256,KexAlgorithms=diffie-hellman-group14-sha256",
        "-C",
    ])
    .expect("mount with chosen algorithms");
    assert_works(&sshd, &m, "algorithms");
    drop(m);
    let log = sshd.log();
    assert!(
        log.contains("kex: algorithm: diffie-hellman-group14-sha256"),
        "{log}"
    );
    assert!(
        log.contains("client->server cipher: aes128-ctr MAC: hmac-sha2-256 compression: zlib"),
        "{log}"
    );

    // Algorithms sftpmount cannot speak, and bad values, are named.
    let line = refusal(with(&["-o", "Ciphers=3des-cbc"]).unwrap_err());
    assert!(
        line.contains("Ciphers") && line.contains("'3des-cbc'"),
        "{line}"
    );
    let line = refusal(with(&["-o", "Compression=maybe"]).unwrap_err());
    assert!(line.contains("Compression"), "{line}");

    // HostKeyAlias: the key is looked up under the alias, not [127.0.0.1]:PORT.
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    fs::write(&known, format!("storage-box {}\n", sshd.host_key_pub())).unwrap();
    let alias = |extra: &[&str]| {
        let mut args = vec![
            "-p".to_string(),
            sshd.port().to_string(),
            "-o".to_string(),
            format!("IdentityFile={}", sshd.user_key_path().display()),
            "-o".to_string(),
            format!("UserKnownHostsFile={}", known.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Mount::try_with(&sshd, &sshd.source(), &args, None)
    };
    let line = refusal(alias(&[]).unwrap_err());
    assert!(line.contains("not known"), "{line}");
    let m = alias(&["-o", "HostKeyAlias=storage-box"]).expect("alias");
    assert_works(&sshd, &m, "alias");
    drop(m);

    // IdentitiesOnly: an agent's key that no IdentityFile names is not offered.
    let agent = SshAgent::start(&sshd.user_key_path());
    let other = dir.path().join("other");
    keygen(&other, "other");
    let source = sshd.source();
    let args = |only: &str| {
        let mut a = sshd.ssh_opts_without_key();
        a.extend([
            "-o".to_string(),
            format!("IdentityFile={}", other.display()),
            "-o".to_string(),
            format!("IdentitiesOnly={only}"),
            "-o".to_string(),
            "BatchMode=yes".to_string(),
        ]);
        a
    };
    let env = [("SSH_AUTH_SOCK", agent.socket.as_os_str())];
    let m = Mount::try_with_env(&sshd, &source, &args("no"), None, &env).expect("agent key");
    assert_works(&sshd, &m, "agent");
    drop(m);
    let line = refusal(Mount::try_with_env(&sshd, &source, &args("yes"), None, &env).unwrap_err());
    assert!(line.contains("authentication refused"), "{line}");
    // IdentityAgent=none: the agent is not asked either.
    let mut a = args("no");
    a.extend(["-o".to_string(), "IdentityAgent=none".to_string()]);
    let line = refusal(Mount::try_with_env(&sshd, &source, &a, None, &env).unwrap_err());
    assert!(line.contains("authentication refused"), "{line}");
}

#[test]
fn a_user_certificate_is_offered_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    keygen(&ca, "test-ca");
    let sshd = Sshd::start_with(SshdOptions {
        extra_config: vec![format!("TrustedUserCAKeys {}.pub", ca.display())],
        ..SshdOptions::default()
    });
    // A key sshd does not list, certified by the CA it trusts for the login root.
    let key = dir.path().join("certified");
    keygen(&key, "certified");
    run(
        "ssh-keygen",
        &[
            "-q",
            "-s",
            ca.to_str().unwrap(),
            "-I",
            "test-user",
            "-n",
            "root",
            &format!("{}.pub", key.display()),
        ],
        "/",
    );
    let beside = dir.path().join("certified-cert.pub");
    assert!(beside.exists());
    let args = |extra: &[String]| {
        let mut a = sshd.ssh_opts_without_key();
        a.extend(["-o".to_string(), format!("IdentityFile={}", key.display())]);
        a.extend(extra.iter().cloned());
        a
    };
    // KEY-cert.pub beside the key is found, as ssh finds it.
    let m = Mount::try_with(&sshd, &sshd.source(), &args(&[]), None).expect("certificate");
    assert_works(&sshd, &m, "cert-beside");
    drop(m);
    // CertificateFile names one elsewhere.
    let elsewhere = dir.path().join("moved.pub");
    fs::rename(&beside, &elsewhere).unwrap();
    let line = refusal(Mount::try_with(&sshd, &sshd.source(), &args(&[]), None).unwrap_err());
    assert!(line.contains("authentication refused"), "{line}");
    let cert = [
        "-o".to_string(),
        format!("CertificateFile={}", elsewhere.display()),
    ];
    let m = Mount::try_with(&sshd, &sshd.source(), &args(&cert), None).expect("CertificateFile");
    assert_works(&sshd, &m, "cert-file");
}

#[test]
fn host_and_user_names_that_would_reach_a_shell_are_refused_before_any_command_runs() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let config = dir.path().join("config");
    // Both a ProxyCommand and a Match exec would expand %h and %r into a shell command.
    fs::write(
        &config,
        format!(
            "Match exec \"true %h %r\"\n  Port {}\nHost *\n  ProxyCommand nc %h %p\n",
            sshd.port()
        ),
    )
    .unwrap();
    let inject = format!("$(touch${{IFS}}{})", marker.display());
    let cases = [
        format!("a{inject}"),
        format!("root`touch {}`@127.0.0.1", marker.display()),
        "root@-oProxyCommand=sh".to_string(),
        "a;b".to_string(),
    ];
    for host in &cases {
        let out = mount_with_config(&sshd, &config, host).unwrap_err();
        let line = refusal(out);
        assert!(
            line.contains("characters ssh refuses") || line.contains("starts with '-'"),
            "{host}: {line}"
        );
        assert!(!marker.exists(), "{host}: a command ran");
    }
}

/// Removes a file put under /etc when the test ends, also when it fails midway.
#[test]
fn the_system_ssh_config_is_read_after_the_users_and_f_replaces_both() {
    // Debian's /etc/ssh/ssh_config includes /etc/ssh/ssh_config.d/*.conf: a block for a name
    // of this test's own there (removed again at the end) reaches only this test's mounts.
    let system = fs::read_to_string("/etc/ssh/ssh_config").expect("/etc/ssh/ssh_config");
    assert!(
        system.contains("Include /etc/ssh/ssh_config.d/*.conf"),
        "this test needs Debian's /etc/ssh/ssh_config, which includes ssh_config.d"
    );
    let sshd = Sshd::start();
    let alias = format!("sftpmount-system-config-test-{}", std::process::id());
    let conf = std::path::PathBuf::from(format!("/etc/ssh/ssh_config.d/{alias}.conf"));
    fs::create_dir_all("/etc/ssh/ssh_config.d").unwrap();
    let _remove = RemoveOnDrop(conf.clone());
    fs::write(&conf, host_block(&alias, &sshd, "")).unwrap();
    let source = format!("{alias}:{}", sshd.remote_root().display());

    // No -F: the user's file (none here: HOME is a fresh directory) then the system's.
    let home = tempfile::tempdir().unwrap();
    let mount_without_f = || {
        let home = [("HOME", home.path().as_os_str())];
        Mount::try_with_env(&sshd, &source, &[] as &[&str], None, &home)
    };
    let m = mount_without_f().expect("the system config's block is used");
    assert_works(&sshd, &m, "system");
    drop(m);

    // The user's file comes first: its Port wins over the system's.
    fs::create_dir(home.path().join(".ssh")).unwrap();
    fs::write(
        home.path().join(".ssh/config"),
        format!("Host {alias}\n  Port 1\n"),
    )
    .unwrap();
    let out = mount_without_f().unwrap_err();
    assert!(refusal(out).contains(":1"), "the user's Port 1 was used");

    // -F replaces both: the alias is then no host at all.
    let empty = home.path().join("empty_config");
    fs::write(&empty, "").unwrap();
    let out = mount_with_config(&sshd, &empty, &alias).unwrap_err();
    let line = refusal(out);
    assert!(line.contains(&alias), "{line}");
}
