//! How to reach a cluster's head node with ssh, whichever backend made it: the one type the
//! `Provider` trait answers for `skyform ssh` and the generated ssh config file.

use std::path::PathBuf;

/// How to reach a cluster's head node with ssh: for `skyform ssh` and the generated ssh
/// config file.
#[derive(Debug, Clone, PartialEq)]
pub struct SshEntry {
    pub user: Option<String>,
    pub address: String,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// Record an unknown host key (a new cloud machine) rather than refuse it.
    pub accept_new: bool,
    /// An ssh config file that says how to reach `address` (a pool's `ssh_config`).
    pub config_file: Option<PathBuf>,
}

impl SshEntry {
    fn strict(&self) -> &'static str {
        if self.accept_new { "accept-new" } else { "yes" }
    }

    /// An `ssh` command line: the host key must be the recorded one (or, with
    /// `accept_new`, is recorded now); `command` goes as one quoted string, so the remote
    /// shell sees each argument as written. No command: an interactive shell.
    pub fn argv(&self, command: &[String]) -> Vec<String> {
        let mut v: Vec<String> = vec!["ssh".into()];
        if let Some(f) = &self.config_file {
            v.extend(["-F".into(), f.display().to_string()]);
        }
        if let Some(i) = &self.identity {
            v.extend(["-i".into(), i.display().to_string()]);
        }
        v.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            format!("StrictHostKeyChecking={}", self.strict()),
        ]);
        if let Some(p) = self.port {
            v.extend(["-p".into(), p.to_string()]);
        }
        if let Some(u) = &self.user {
            v.extend(["-l".into(), u.clone()]);
        }
        if command.is_empty() {
            v.push("-t".into());
        }
        v.push(self.address.clone());
        if !command.is_empty() {
            v.push("--".into());
            let quoted: Vec<String> = command
                .iter()
                .map(|c| shell_escape::unix::escape(c.as_str().into()).into_owned())
                .collect();
            v.push(quoted.join(" "));
        }
        v
    }

    /// A `Host NAME` block for an ssh config file.
    pub fn config_block(&self, name: &str) -> String {
        let mut b = format!("Host {name}\n  HostName {}\n", self.address);
        if let Some(p) = self.port {
            b.push_str(&format!("  Port {p}\n"));
        }
        if let Some(u) = &self.user {
            b.push_str(&format!("  User {u}\n"));
        }
        if let Some(i) = &self.identity {
            b.push_str(&format!(
                "  IdentityFile \"{}\"\n  IdentitiesOnly yes\n",
                i.display()
            ));
        }
        b.push_str(&format!(
            "  UserKnownHostsFile \"{}\"\n  StrictHostKeyChecking {}\n",
            self.known_hosts.display(),
            self.strict()
        ));
        b
    }
}
