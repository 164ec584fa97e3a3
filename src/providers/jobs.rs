//! What every backend hands the cluster runtime for a job, and reads back: the queue record
//! made from a spec, the job's id in private data, and its status as computed attributes.

use crate::model::{Address, Spec};
use crate::runtime::{self, JobRecord};
use serde_json::json;
use std::collections::BTreeMap;

/// What a job, managed job or service submits to its cluster's queue.
pub fn record(
    address: &Address,
    spec: &Spec,
    id: &str,
    after: Vec<runtime::Dependency>,
) -> Option<JobRecord> {
    let (run, nodes, resources, envs, teardown) = match spec {
        Spec::Job(j) => (
            &j.run,
            j.num_nodes,
            &*j.resources,
            j.envs
                .iter()
                .chain(j.secrets.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            false,
        ),
        Spec::ManagedJob(m) => (
            &m.run,
            m.num_nodes,
            &m.resources,
            m.envs
                .iter()
                .chain(m.secrets.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            true,
        ),
        Spec::Service(s) => (
            &s.run,
            s.replica_policy.min_replicas.max(1),
            &s.resources,
            s.envs
                .iter()
                .chain(s.secrets.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            false,
        ),
        Spec::Cluster(_) | Spec::Controller(_) => return None,
    };
    let gpus = resources
        .accelerators
        .as_ref()
        .and_then(|a| a.choices().first().map(|c| c.count))
        .unwrap_or(0.0);
    let cpus = resources.cpus.map_or(0.5, |c| c.value);
    Some(JobRecord {
        id: id.to_string(),
        name: address.to_string(),
        run: run.clone(),
        num_nodes: nodes,
        cpus,
        gpus,
        envs,
        after,
        teardown,
        submitted: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    })
}

/// A job's status as computed attributes (`status`, `exit_code`, `reason`).
pub fn computed(status: &runtime::JobStatus) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::from([("status".to_string(), json!(status.state.as_str()))]);
    m.insert(
        "exit_code".into(),
        status
            .exit_code
            .map_or(serde_json::Value::Null, |c| json!(c)),
    );
    if let Some(r) = &status.reason {
        m.insert("reason".into(), json!(r));
    }
    m
}

/// The job id recorded in a resource's private data.
pub fn job_id(private: &serde_json::Value) -> Option<&str> {
    private.get("job_id").and_then(serde_json::Value::as_str)
}

/// The private identifiers of a new job on a cluster reached over ssh: its id in the head's
/// queue, recorded before it is submitted.
pub fn new_private() -> serde_json::Value {
    let id = uuid::Uuid::new_v4().simple().to_string();
    serde_json::json!({ "job_id": format!("job-{}", &id[..12]) })
}
