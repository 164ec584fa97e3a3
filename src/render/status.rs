//! `skyform status`: the resources in state, a table per kind (clusters, jobs, managed
//! jobs, services with their replicas), and what they cost now.

use super::human::table;
use crate::model::{Address, UNKNOWN};
use crate::optimizer::dollars;
use serde_json::Value;
use std::fmt::Write;

/// `skyform status`: a table of clusters (and managed jobs and services) with placement,
/// nodes, status and cost; a table of jobs; the total cost.
pub fn status(state: &crate::state::State) -> String {
    use crate::model::Spec;
    let get = |r: &crate::state::ResourceState, k: &str| {
        r.computed
            .get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
            .unwrap_or_else(|| "-".into())
    };
    let mut total = 0;
    let mut clusters = Vec::new();
    let mut jobs = Vec::new();
    let mut managed = Vec::new();
    let mut services = Vec::new();
    for (a, r) in &state.resources {
        let nodes = match r.spec.as_ref() {
            Spec::Cluster(c) => c.num_nodes,
            Spec::ManagedJob(m) if r.provider == crate::controller::handoff::NAME => {
                // Where it runs now, which recovery may have changed.
                let status = get(r, "status");
                let live = !matches!(
                    status.as_str(),
                    "SUCCEEDED"
                        | "FAILED"
                        | "FAILED_SETUP"
                        | "FAILED_NO_RESOURCE"
                        | "FAILED_CONTROLLER"
                        | "CANCELLED"
                );
                let cost = r
                    .computed
                    .get("hourly")
                    .and_then(serde_json::Value::as_u64)
                    .filter(|_| live)
                    .unwrap_or(0);
                total += cost;
                managed.push(vec![
                    a.to_string(),
                    get(r, "placement"),
                    m.num_nodes.to_string(),
                    status,
                    get(r, "attempt"),
                    dollars(cost).trim_start_matches('$').to_string(),
                ]);
                continue;
            }
            Spec::ManagedJob(m) => m.num_nodes,
            Spec::Service(_) if let Some(svc) = ServiceStatus::of(r) => {
                total += svc.hourly;
                services.push((a, svc));
                continue;
            }
            Spec::Service(s) => s.replica_policy.min_replicas,
            // The controller's own line says where it runs and whether it answers.
            Spec::Controller(_) => continue,
            Spec::Job(j) => {
                jobs.push(vec![
                    a.to_string(),
                    j.cluster.to_string(),
                    get(r, "status"),
                    get(r, "exit_code").replace("null", "-"),
                ]);
                continue;
            }
        };
        let cost = r.placement.as_ref().map_or(0, |p| p.hourly);
        total += cost;
        clusters.push(vec![
            a.to_string(),
            r.placement
                .as_ref()
                .map_or("-".into(), |p| p.offering.infra()),
            nodes.to_string(),
            get(r, "status"),
            dollars(cost).trim_start_matches('$').to_string(),
        ]);
    }
    // Each kind's table when it has rows (the clusters' header alone when nothing does).
    let mut sections = Vec::new();
    if !clusters.is_empty() || (jobs.is_empty() && managed.is_empty() && services.is_empty()) {
        sections.push(table(&["CLUSTER", "INFRA", "NODES", "STATUS", "$/h"], &clusters) + "\n");
    }
    if !jobs.is_empty() {
        sections.push(table(&["JOB", "CLUSTER", "STATUS", "EXIT"], &jobs) + "\n");
    }
    if !managed.is_empty() {
        sections.push(
            table(
                &["MANAGED JOB", "INFRA", "NODES", "STATUS", "ATTEMPT", "$/h"],
                &managed,
            ) + "\n",
        );
    }
    if !services.is_empty() {
        sections.push(services_table(&services));
    }
    let mut out = sections.join("\n");
    let _ = writeln!(out, "\nTotal: {}/h", dollars(total));
    out
}

/// A service as the controller reports it in state (`computed`): its endpoint, load and
/// replicas. `None` for a service whose state holds none of this (written before there was
/// a controller to run services), which `status` shows as before.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub status: String,
    pub endpoint: Option<String>,
    /// Requests per second over the last minute.
    pub qps: Option<f64>,
    /// The newest version.
    pub version: Option<u64>,
    pub replicas: Vec<ReplicaStatus>,
    /// What its replicas cost now.
    pub hourly: crate::optimizer::Micros,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    pub id: String,
    pub version: String,
    pub state: String,
    pub infra: String,
    pub port: String,
    pub hourly: crate::optimizer::Micros,
}

/// Replica states that are records of what happened, not replicas that run or will.
const ENDED_REPLICA_STATES: [&str; 4] = [
    "FAILED",
    "FAILED_PROBING",
    "FAILED_INITIAL_DELAY",
    "PREEMPTED",
];

impl ServiceStatus {
    pub fn of(r: &crate::state::ResourceState) -> Option<ServiceStatus> {
        if !matches!(*r.spec, crate::model::Spec::Service(_)) {
            return None;
        }
        let list = r.computed.get("replicas")?.as_array()?;
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        };
        let replicas: Vec<ReplicaStatus> = list
            .iter()
            .map(|x| ReplicaStatus {
                id: text(x.get("id")),
                version: text(x.get("version")),
                state: text(x.get("state")),
                infra: text(x.get("infra")),
                port: text(x.get("port")),
                hourly: x.get("hourly").and_then(Value::as_u64).unwrap_or(0),
            })
            .collect();
        Some(ServiceStatus {
            status: text(r.computed.get("status")),
            endpoint: r
                .computed
                .get("endpoint")
                .and_then(Value::as_str)
                .filter(|e| !e.contains(UNKNOWN))
                .map(String::from),
            qps: r.computed.get("qps").and_then(Value::as_f64),
            version: r.computed.get("version").and_then(Value::as_u64),
            hourly: replicas
                .iter()
                .filter(|x| !ENDED_REPLICA_STATES.contains(&x.state.as_str()))
                .map(|x| x.hourly)
                .sum(),
            replicas,
        })
    }

    /// Replicas that take requests.
    pub fn ready(&self) -> usize {
        self.replicas.iter().filter(|x| x.state == "READY").count()
    }

    /// Replicas that run or are on their way (ended ones are history).
    pub fn live(&self) -> usize {
        self.replicas
            .iter()
            .filter(|x| !ENDED_REPLICA_STATES.contains(&x.state.as_str()))
            .count()
    }
}

/// The SERVICE table, each service followed by its replicas, one a line.
fn services_table(services: &[(&Address, ServiceStatus)]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|(a, s)| {
            vec![
                a.to_string(),
                s.status.clone(),
                s.endpoint.clone().unwrap_or_else(|| "-".into()),
                s.qps.map_or("-".into(), |q| format!("{q:.1}")),
                format!("{}/{}", s.ready(), s.live()),
                s.version.map_or("-".into(), |v| v.to_string()),
                dollars(s.hourly).trim_start_matches('$').to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVICE", "STATUS", "ENDPOINT", "QPS", "READY", "VERSION", "$/h",
        ],
        &rows,
    );
    out.push('\n');
    for (a, s) in services {
        if s.replicas.is_empty() {
            continue;
        }
        let rows: Vec<Vec<String>> = s
            .replicas
            .iter()
            .map(|x| {
                vec![
                    x.id.clone(),
                    x.version.clone(),
                    x.state.clone(),
                    x.infra.clone(),
                    x.port.clone(),
                    dollars(x.hourly).trim_start_matches('$').to_string(),
                ]
            })
            .collect();
        let _ = writeln!(out, "\n{a} replicas:");
        for line in table(&["ID", "VERSION", "STATE", "INFRA", "PORT", "$/h"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn state_with(resources: Value) -> crate::state::State {
        let mut state = crate::state::State::new();
        let map: BTreeMap<String, Value> = serde_json::from_value(resources).unwrap();
        for (addr, r) in map {
            state
                .resources
                .insert(addr.parse().unwrap(), serde_json::from_value(r).unwrap());
        }
        state
    }

    #[test]
    fn status_shows_services_with_their_replicas() {
        let state = state_with(json!({
            "service.web": {
                "status": "ready",
                "provider": "local",
                "spec": {"kind": "service", "run": "serve", "replica_policy": {"min_replicas": 2}},
                "computed": {
                    "status": "READY",
                    "endpoint": "http://127.0.0.1:30001",
                    "qps": 12.5,
                    "version": 2,
                    "replicas": [
                        {"id": 1, "version": 1, "state": "READY", "infra": "local", "port": 31001, "hourly": 0},
                        {"id": 2, "version": 2, "state": "STARTING", "infra": "local", "port": 31002, "hourly": 500000},
                        {"id": 3, "version": 1, "state": "FAILED_PROBING", "infra": "local", "port": 31003, "hourly": 500000}
                    ]
                }
            },
            "service.old": {
                "status": "ready",
                "provider": "local",
                "spec": {"kind": "service", "run": "serve", "replica_policy": {"min_replicas": 2}},
                "computed": {"status": "RUNNING", "endpoint": "http://127.0.0.1:8000"}
            }
        }));
        let out = status(&state);
        assert_eq!(
            out,
            "\
CLUSTER      INFRA  NODES  STATUS   $/h
service.old  -      2      RUNNING  0.00

SERVICE      STATUS  ENDPOINT                QPS   READY  VERSION  $/h
service.web  READY   http://127.0.0.1:30001  12.5  1/2    2        0.50

service.web replicas:
  ID  VERSION  STATE           INFRA  PORT   $/h
  1   1        READY           local  31001  0.00
  2   2        STARTING        local  31002  0.50
  3   1        FAILED_PROBING  local  31003  0.50

Total: $0.50/h
"
        );
        let j = crate::render::json::status(&state);
        let web = j
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == "service.web")
            .unwrap();
        assert_eq!(web["endpoint"], "http://127.0.0.1:30001");
        assert_eq!(web["ready_replicas"], 1);
        assert_eq!(web["live_replicas"], 2);
        assert_eq!(web["hourly_cost_micros"], 500000);
        assert_eq!(web["replicas"][1]["state"], "STARTING");
        let old = j
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == "service.old")
            .unwrap();
        assert!(old.get("replicas").is_none(), "{old}");
    }
}
