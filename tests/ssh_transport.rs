//! The ssh transport against real OpenSSH servers on loopback (`scripts/sshd.sh`, started by
//! `scripts/test.sh`, which exports `SKYFORM_TEST_SSH_DIR`). Ignored by a plain `cargo
//! test`; with `--include-ignored` a missing server is a failure, not a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use skyform::providers::ErrorKind;
use skyform::providers::ssh::{Access, Host, probe};
use std::path::PathBuf;
use std::time::Duration;

fn servers() -> (PathBuf, Vec<Host>) {
    let (dir, hosts) = support::servers::ssh_servers();
    let hosts = hosts
        .iter()
        .map(|h| format!("root@{h}").parse().unwrap())
        .collect();
    (dir, hosts)
}

fn access(dir: &std::path::Path, home: &std::path::Path) -> Access {
    Access {
        user: None,
        port: None,
        identity_file: Some(dir.join("id_ed25519")),
        config_file: None,
        known_hosts: home.join("known_hosts"),
        control_dir: home.join("c"),
        connect_timeout: Duration::from_secs(5),
    }
}

/// A short directory: multiplexing sockets have a path limit.
fn home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sk")
        .tempdir_in("/tmp")
        .unwrap()
}

#[tokio::test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
async fn first_contact_records_the_key_and_reads_the_host() {
    let (dir, hosts) = servers();
    let home = home();
    let a = access(&dir, home.path());
    std::fs::write(dir.join("host-1/gpus"), "A100-80GB 8\nT4 0.5\n").unwrap();
    let c = a.connect(&hosts[0]).await.unwrap();
    let recorded = std::fs::read_to_string(a.known_hosts.clone()).unwrap();
    // The entry may be hashed (Debian's default): ask ssh-keygen to find it.
    let name = format!("[{}]:{}", hosts[0].address, hosts[0].port.unwrap());
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", &name, "-f"])
        .arg(&a.known_hosts)
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "trust on first use records the key: {recorded}"
    );
    let facts = probe(&c).await.unwrap();
    assert!(facts.cpus >= 1.0 && facts.memory_gib > 0.0, "{facts:?}");
    assert_eq!(facts.gpus.get("A100-80GB"), Some(&8.0));
    assert_eq!(facts.gpus.get("T4"), Some(&0.5));
    c.close().await;
    // The second contact checks the recorded key and does not add it again.
    let again = a.connect(&hosts[0]).await.unwrap();
    again.close().await;
    assert_eq!(std::fs::read_to_string(&a.known_hosts).unwrap(), recorded);
    std::fs::remove_file(dir.join("host-1/gpus")).unwrap();
}

/// A value such as `'; rm -rf /` reaches the remote program as literal text.
#[tokio::test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
async fn arguments_arrive_as_literal_text() {
    let (dir, hosts) = servers();
    let home = home();
    let c = access(&dir, home.path()).connect(&hosts[0]).await.unwrap();
    let nasty = [
        "'; rm -rf /",
        "$(touch /tmp/skyform-pwned)",
        "a b\tc\nd",
        "\"quoted\" and `ticks`",
        "",
        "*",
    ];
    let out = c
        .run("printf", &[&["%s\\0"], &nasty[..]].concat())
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    let got: Vec<&str> = out.stdout.split('\0').collect();
    assert_eq!(&got[..nasty.len()], &nasty[..]);
    let out = c.script("printf '%s' \"$1\"", &[nasty[1]]).await.unwrap();
    assert_eq!(out.stdout, nasty[1]);
    assert!(!std::path::Path::new("/tmp/skyform-pwned").exists());
    c.close().await;
}

/// A host whose key changed since first contact is refused, with the way out.
#[tokio::test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
async fn a_changed_host_key_is_refused() {
    let (dir, hosts) = servers();
    let home = home();
    let a = access(&dir, home.path());
    let host = &hosts[1];
    a.connect(host).await.unwrap().close().await;
    // Another key for the same name: what a reinstalled machine, or a man in the middle,
    // would present.
    let other = home.path().join("other");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    let name = format!("[{}]:{}", host.address, host.port.unwrap());
    std::fs::write(&a.known_hosts, format!("{name} {} {}\n", key[0], key[1])).unwrap();
    let err = a.connect(host).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config, "{err:?}");
    assert!(
        err.message.contains("is not the one recorded"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&format!("ssh-keygen -R '{name}'")),
        "{}",
        err.message
    );
}

/// Nothing listening: the host is unreachable (a capacity problem for the pool, not a
/// configuration one).
#[tokio::test]
#[ignore = "needs sshd: run ./scripts/test.sh"]
async fn an_unreachable_host_says_so() {
    let (dir, _) = servers();
    let home = home();
    let port = std::net::TcpListener::bind("127.0.0.9:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host: Host = format!("root@127.0.0.9:{port}").parse().unwrap();
    let err = access(&dir, home.path()).connect(&host).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Capacity, "{err:?}");
    assert!(err.message.contains("cannot reach"), "{}", err.message);
}
