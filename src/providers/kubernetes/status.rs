//! Pure status functions: what a pod's or a job's state means, read from API objects
//! without asking anything.

use super::exec;
use super::objects::LABEL_RANK;
use crate::model::Spec;
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) fn pod_rank(p: &Pod) -> Option<u32> {
    p.metadata.labels.as_ref()?.get(LABEL_RANK)?.parse().ok()
}

pub(super) fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Why the scheduler left a pod unplaced, if it did.
pub(super) fn unschedulable(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find_map(|c| {
            (c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable"))
            .then(|| c.message.clone().unwrap_or_else(|| "unschedulable".into()))
        })
}

/// Why a placed pod will not start by waiting longer: its image cannot be had, or its
/// container cannot be made. A first failed pull (`ErrImagePull`) may be a registry's
/// hiccup, so it counts only once it lasted 30 s (`pulling` remembers when each pod's began).
pub(super) fn cannot_start(
    p: &Pod,
    pulling: &mut BTreeMap<String, std::time::Instant>,
) -> Option<String> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    let waiting = statuses
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref())?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    let said = || {
        format!(
            "{reason}: {}",
            waiting.message.as_deref().unwrap_or("no message")
        )
    };
    match reason {
        "ImagePullBackOff"
        | "InvalidImageName"
        | "ErrImageNeverPull"
        | "CreateContainerConfigError"
        | "CreateContainerError" => Some(said()),
        "ErrImagePull" => {
            let name = p.metadata.name.clone().unwrap_or_default();
            let since = *pulling.entry(name).or_insert_with(std::time::Instant::now);
            (since.elapsed() >= Duration::from_secs(30)).then(said)
        }
        _ => None,
    }
}

/// The main container's exit code, once it ended.
pub(super) fn exit_code(p: &Pod) -> Option<i32> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
}

/// Why a pod that should be running is not (evicted, deleted, failed), if so.
pub(super) fn pod_failure(p: &Pod) -> Option<String> {
    let name = p.metadata.name.as_deref().unwrap_or("?");
    if p.metadata.deletion_timestamp.is_some() {
        return Some(format!("pod {name} is being deleted"));
    }
    match phase(p) {
        "Running" => None,
        "Failed" | "Succeeded" => {
            let s = p.status.as_ref();
            let reason = s.and_then(|s| s.reason.clone()).unwrap_or_default();
            let message = s.and_then(|s| s.message.clone()).unwrap_or_default();
            Some(match (reason.as_str(), exit_code(p)) {
                ("Evicted", _) => format!("pod {name} was evicted: {message}"),
                (_, Some(c)) => format!("pod {name} ended with exit code {c}"),
                _ => format!("pod {name} ended ({reason} {message})"),
            })
        }
        other => Some(format!("pod {name} is {other}")),
    }
}

/// Why a managed job's placement is lost, if it is: the node took its pod away (eviction,
/// not a failure of its program). What to do about its exit codes is the controller's to
/// decide from the status.
pub(super) fn lost(s: &crate::runtime::JobStatus) -> Option<String> {
    if s.state != crate::runtime::JobState::Failed {
        return None;
    }
    let reason = s.reason.clone().unwrap_or_default();
    reason.contains("evicted").then_some(reason)
}

/// Where a managed job's rank is, from its pod: an evicted pod (or one that ended without an
/// exit code) is lost, not failed by its program.
pub(super) fn rank_of_pod(p: &Pod) -> exec::Rank {
    let evicted = p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted");
    match phase(p) {
        "Succeeded" => exec::Rank::Ended(0),
        "Failed" => match exit_code(p) {
            Some(c) if !evicted => exec::Rank::Ended(c),
            _ => exec::Rank::Lost(pod_failure(p).unwrap_or_default()),
        },
        "Running" => exec::Rank::Running,
        _ => exec::Rank::NotThere,
    }
}

/// How many ranks (one Kubernetes Job each) a job or managed job has; None for others.
pub(super) fn ranks_of(spec: &Spec) -> Option<u32> {
    match spec {
        Spec::Job(j) => Some(j.num_nodes.max(1)),
        Spec::ManagedJob(m) => Some(m.num_nodes.max(1)),
        _ => None,
    }
}

pub(super) fn cluster_computed(pods: &[Pod]) -> BTreeMap<String, serde_json::Value> {
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| pod_rank(p));
    let ips: Vec<String> = sorted
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default()
        })
        .collect();
    let names: Vec<String> = sorted
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    BTreeMap::from([
        (
            "head_ip".into(),
            serde_json::json!(ips.first().cloned().unwrap_or_default()),
        ),
        ("ips".into(), serde_json::json!(ips)),
        ("pods".into(), serde_json::json!(names)),
        ("status".into(), serde_json::json!("UP")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn an_evicted_managed_job_is_lost_and_an_exit_code_is_left_to_the_controller() {
        use crate::runtime::{JobState, JobStatus};
        let failed = |code: i32, reason: &str| JobStatus {
            state: JobState::Failed,
            exit_code: Some(code),
            reason: Some(reason.into()),
            nodes: vec![0],
            started: None,
            ended: None,
            devices: Vec::new(),
        };
        assert!(lost(&failed(137, "pod p was evicted: memory pressure")).is_some());
        // An exit code is the program's: the controller decides (recover_on_exit_codes).
        assert_eq!(lost(&failed(33, "pod p ended with exit code 33")), None);
        let mut ok = failed(0, "");
        ok.state = JobState::Succeeded;
        assert_eq!(lost(&ok), None);
    }

    #[test]
    fn pods_that_cannot_start_say_why() {
        let waiting = |reason: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "p" },
                "status": { "phase": "Pending", "containerStatuses": [{
                    "name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": { "waiting": { "reason": reason, "message": "no such image" } }
                }]}
            }))
            .unwrap()
        };
        let mut pulling = BTreeMap::new();
        assert_eq!(
            cannot_start(&waiting("ImagePullBackOff"), &mut pulling).unwrap(),
            "ImagePullBackOff: no such image"
        );
        // A first failed pull gets time; a container being made is fine.
        assert_eq!(cannot_start(&waiting("ErrImagePull"), &mut pulling), None);
        assert!(pulling.contains_key("p"));
        assert_eq!(
            cannot_start(&waiting("ContainerCreating"), &mut pulling),
            None
        );
    }

    #[test]
    fn pod_troubles_name_the_pod_and_the_cause() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "sky-x-1", "labels": { LABEL_RANK: "1" } },
            "status": { "phase": "Failed", "reason": "Evicted", "message": "memory pressure" }
        }))
        .unwrap();
        assert_eq!(
            pod_failure(&pod).unwrap(),
            "pod sky-x-1 was evicted: memory pressure"
        );
        let pending: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p" },
            "status": { "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
            }]}
        }))
        .unwrap();
        assert_eq!(
            unschedulable(&pending).unwrap(),
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
        );
        assert_eq!(pod_rank(&pod), Some(1));
    }
}
