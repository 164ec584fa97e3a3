//! What the gated integration tests share: the servers `scripts/test.sh` starts, and
//! running skyform.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The OpenSSH servers of `scripts/sshd.sh`: their directory, and each as `ADDRESS:PORT`.
pub fn ssh_servers() -> (PathBuf, Vec<String>) {
    let dir = PathBuf::from(std::env::var("SKYFORM_TEST_SSH_DIR").expect(
        "SKYFORM_TEST_SSH_DIR is not set: these tests need sshd; run ./scripts/test.sh, \
         or eval \"$(scripts/sshd.sh start 3)\" first",
    ));
    let hosts = std::fs::read_to_string(dir.join("hosts"))
        .expect("the servers' hosts file")
        .lines()
        .map(|l| l.replacen(' ', ":", 1))
        .collect();
    (dir, hosts)
}

/// An `infra "ssh" "NAME"` block over `hosts` (`ADDRESS:PORT`) of the servers in `dir`,
/// logging in as root with their client key.
pub fn pool_block(name: &str, hosts: &[String], dir: &Path) -> String {
    let quoted: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "infra \"ssh\" \"{name}\" {{\n  hosts         = [{}]\n  user          = \"root\"\n  identity_file = \"{}\"\n}}\n",
        quoted.join(", "),
        dir.join("id_ed25519").display()
    )
}

/// Runs a prepared skyform command: whether it succeeded, and stdout then stderr.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("skyform runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The server `scripts/sshd.sh` started in a network namespace of its own, as
/// `ADDRESS:PORT`, when the machine allowed one.
#[allow(dead_code)]
pub fn netns_server() -> Option<String> {
    let dir = PathBuf::from(std::env::var("SKYFORM_TEST_SSH_DIR").ok()?);
    let text = std::fs::read_to_string(dir.join("netns-hosts")).ok()?;
    let mut parts = text.split_whitespace();
    Some(format!("{}:{}", parts.next()?, parts.next()?))
}

/// Whether `scripts/sshd.sh` could have made its network namespace here: it was not told
/// not to (`SKYFORM_TEST_NETNS=0`), iproute2 is installed, and this process may make a
/// network namespace (checked with a throwaway one, `unshare -n true`).
pub fn netns_possible() -> bool {
    let quiet = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::env::var("SKYFORM_TEST_NETNS").map_or(true, |v| v != "0")
        && quiet("ip", &["-V"])
        && quiet("unshare", &["-n", "true"])
}

/// A proxy script of `scripts/` on loopback (`ec2-proxy.py`, `faulty-proxy.py`): it prints
/// the port it listens on as its first line. Killed on drop.
pub struct Proxy {
    child: Child,
    pub url: String,
}

impl Proxy {
    /// Starts `cmd` and waits for its port.
    pub fn start(cmd: &mut Command) -> Proxy {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} printed no port: {line:?}")
        });
        Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
