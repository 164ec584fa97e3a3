//! The behaviour every backend must have for clusters. Each backend's tests call [`run`]
//! with a fixture it can place; it is part of the library (not `cfg(test)`) so tests
//! against real servers (moto, sshd, a kube-apiserver) use it too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{Observed, Provider, Request};
use crate::model::{Address, Spec};
use crate::optimizer::Candidate;
use crate::state::{ResourceState, Status};
use std::path::PathBuf;

/// A cluster the backend under test can make.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub address: Address,
    /// A `Spec::Cluster`.
    pub spec: Spec,
    pub placement: Option<Candidate>,
    pub root: PathBuf,
    pub lineage: String,
}

impl Fixture {
    /// `cluster.conform` with `nodes` nodes, placed on `offering` (None: the backend needs
    /// no placement), working in `root`.
    pub fn cluster(
        nodes: u32,
        offering: Option<crate::optimizer::Offering>,
        root: &std::path::Path,
    ) -> Fixture {
        Fixture {
            address: "cluster.conform".parse().expect("a valid address"),
            spec: Spec::Cluster(Box::new(crate::model::ClusterSpec {
                num_nodes: nodes,
                ..Default::default()
            })),
            placement: offering.map(|offering| Candidate {
                offering,
                num_nodes: nodes,
                hourly: 0,
            }),
            root: root.to_path_buf(),
            lineage: "conformance".into(),
        }
    }

    fn state(&self, status: Status, private: serde_json::Value) -> ResourceState {
        ResourceState {
            private,
            placement: self.placement.clone().map(Box::new),
            ..ResourceState::new(
                status,
                self.placement
                    .as_ref()
                    .map_or_else(|| "local".to_string(), |p| p.offering.cloud.clone()),
                std::sync::Arc::new(self.spec.clone()),
            )
        }
    }

    fn nodes(&self) -> usize {
        match &self.spec {
            Spec::Cluster(c) => c.num_nodes.max(1) as usize,
            _ => panic!("the fixture must be a cluster"),
        }
    }
}

/// Runs the whole suite.
pub async fn run(p: &dyn Provider, f: &Fixture) {
    fresh_identifiers(p, f);
    intent_without_machines_is_gone(p, f).await;
    lifecycle(p, f).await;
}

/// Every attempt gets identifiers of its own, so a retried create is found, never doubled.
fn fresh_identifiers(p: &dyn Provider, f: &Fixture) {
    let a = p.new_private(&f.address, &f.spec, &f.lineage);
    let b = p.new_private(&f.address, &f.spec, &f.lineage);
    assert_ne!(a, b, "{}: two attempts share identifiers", p.name());
}

/// An intent recorded just before skyform died, with nothing made: refresh says gone, and
/// deleting it is harmless.
async fn intent_without_machines_is_gone(p: &dyn Provider, f: &Fixture) {
    let private = p.new_private(&f.address, &f.spec, &f.lineage);
    let res = f.state(Status::Creating, private);
    let seen = p.refresh(&f.address, &res, None).await.expect("refresh");
    assert!(
        matches!(seen, Observed::Gone { .. }),
        "{}: an intent with nothing made is gone, not {seen:?}",
        p.name()
    );
    p.delete(&f.address, &res, None)
        .await
        .expect("deleting what was never made succeeds");
}

/// Create, find it up (also when the state write was lost), delete, find it gone; deleting
/// twice is fine.
async fn lifecycle(p: &dyn Provider, f: &Fixture) {
    let private = p.new_private(&f.address, &f.spec, &f.lineage);
    let intent = f.state(Status::Creating, private.clone());
    let made = p
        .create(Request {
            address: &f.address,
            spec: &f.spec,
            private: &private,
            placement: f.placement.as_ref(),
            cluster: None,
            after: Vec::new(),
            root: f.root.clone(),
            capacity_timeout: std::time::Duration::from_secs(120),
            progress: super::Progress::default(),
        })
        .await
        .expect("create");
    let ips = made
        .computed
        .get("ips")
        .and_then(|v| v.as_array())
        .map(Vec::len);
    assert_eq!(ips, Some(f.nodes()), "{}: one address per node", p.name());
    assert!(made.computed.contains_key("head_ip"));
    assert_eq!(
        made.computed.get("status").and_then(|v| v.as_str()),
        Some("UP")
    );

    // The state write after create was lost: what was made is still found, not leaked.
    let lost = p.refresh(&f.address, &intent, None).await.expect("refresh");
    assert!(
        !matches!(lost, Observed::Gone { .. }),
        "{}: a finished create whose state write was lost must be found",
        p.name()
    );

    let ready = f.state(Status::Ready, made.private.clone());
    match p.refresh(&f.address, &ready, None).await.expect("refresh") {
        Observed::Up(c) => {
            assert_eq!(c.get("status").and_then(|v| v.as_str()), Some("UP"));
        }
        other => panic!("{}: a new cluster is up, not {other:?}", p.name()),
    }

    p.delete(&f.address, &ready, None).await.expect("delete");
    let seen = p.refresh(&f.address, &ready, None).await.expect("refresh");
    assert!(
        matches!(seen, Observed::Gone { .. }),
        "{}: a deleted cluster is gone: {seen:?}",
        p.name()
    );
    p.delete(&f.address, &ready, None)
        .await
        .expect("deleting twice is fine");
}
