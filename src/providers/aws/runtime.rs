//! The cluster runtime on a cluster's instances: the runtime of rented machines
//! (`providers::machines`), reached at the instances' public addresses as the image's user
//! with the imported key.

use super::instances::Node;
use super::{AwsProvider, Private};
use crate::providers::ProviderError;
use crate::providers::machines::{self, Fleet, Machine};
use std::path::PathBuf;

pub(super) use machines::SetUp;

impl AwsProvider {
    /// How skyform reaches this backend's instances (and the jobs on them).
    pub(super) fn fleet(&self) -> Fleet {
        Fleet {
            key_dir: self.key_dir.clone(),
            identity: self.private_key(),
            agent_exe: self.agent_exe.clone(),
        }
    }

    fn machines(nodes: &[Node]) -> Vec<Machine> {
        nodes
            .iter()
            .map(|n| Machine {
                id: n.id.clone(),
                running: n.state == "running",
                public_ip: n.public_ip.clone(),
                private_ip: n.private_ip.clone(),
            })
            .collect()
    }

    /// Where a cluster's host keys are kept.
    pub(super) fn known_hosts(&self, token: &str) -> PathBuf {
        self.fleet().known_hosts(token)
    }

    /// Sets up running instances as the cluster: waits for ssh, syncs the workdir and runs
    /// setup (with a configuration directory; without, as after a start, the machines keep
    /// what they had), and starts the runtime; records the build it runs.
    pub(super) async fn set_up(
        &self,
        p: &mut Private,
        nodes: &[Node],
        how: &SetUp<'_>,
    ) -> Result<(), ProviderError> {
        let build = self
            .fleet()
            .set_up(&p.token, &Self::machines(nodes), how)
            .await?;
        p.build = Some(build);
        p.cluster = Some(how.name.to_string());
        Ok(())
    }

    /// The build whose runtime runs on every node, when it does (a creation that was
    /// killed before its runtime started has none).
    pub(super) async fn runtime_of(&self, p: &Private, nodes: &[Node]) -> Option<String> {
        self.fleet()
            .runtime_of(&p.token, &Self::machines(nodes))
            .await
    }

    /// Why the runtime of a set-up cluster does not run on some running node, if it does
    /// not: a node that does not answer ssh, or whose agent is gone (the instance restarted).
    pub(super) async fn runtime_down(&self, p: &Private, nodes: &[Node]) -> Option<String> {
        self.fleet()
            .runtime_down(&p.token, &Self::machines(nodes))
            .await
    }
}
