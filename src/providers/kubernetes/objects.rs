//! The Kubernetes objects skyform makes, as server-side-apply bodies. Pure: each builder takes
//! names and a spec and answers JSON; nothing here talks to a server.
//!
//! Only fields that Kubernetes 1.20 knows are ever set: an older apiserver rejects a
//! server-side apply that names a field it does not have (see docs/kubernetes.md).

use crate::model::{Address, Resources};
use crate::optimizer::Offering;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const LABEL_LINEAGE: &str = "skyform.dev/lineage";
pub const LABEL_ADDRESS: &str = "skyform.dev/address";
pub const LABEL_CLUSTER: &str = "skyform.dev/cluster";
pub const LABEL_JOB: &str = "skyform.dev/job";
pub const LABEL_RANK: &str = "skyform.dev/rank";
/// The exact address (labels cannot hold brackets or quotes).
pub const ANNOTATION_ADDRESS: &str = "skyform.dev/address";

/// The image pods run when `image_id` names none.
pub const DEFAULT_IMAGE: &str = "ubuntu:22.04";

/// An address as a label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending with a letter or digit.
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// A DNS-1123 name for a resource: `sky-train-3f9a1c` (prefix, the resource's name, a
/// token). Pod names add `-RANK`, so the whole stays within 63 characters.
pub fn object_name(address: &Address, token: &str) -> String {
    let mut base: String = address
        .name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(40);
    let base = base.trim_matches('-');
    let token: String = token
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect();
    if base.is_empty() {
        format!("sky-{}", token.to_lowercase())
    } else {
        format!("sky-{base}-{}", token.to_lowercase())
    }
}

/// The container image of `image_id = "docker:IMAGE"`, or the default.
pub fn image(resources: &Resources) -> Result<String, String> {
    match resources.image_id.as_deref() {
        None => Ok(DEFAULT_IMAGE.into()),
        Some(id) => match id.strip_prefix("docker:") {
            Some(img) if !img.is_empty() => Ok(img.into()),
            _ => Err(format!(
                "image_id {id:?} is not a container image; on Kubernetes write image_id = \"docker:IMAGE\""
            )),
        },
    }
}

/// What each pod asks of its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodShape {
    pub cpus: f64,
    pub memory_gib: Option<f64>,
    pub gpus: u32,
    /// Node labels that select the GPU model: the label key and the values that name it.
    pub gpu_affinity: Option<(String, Vec<String>)>,
}

impl PodShape {
    /// The share of a node that `resources` (the candidate that chose `offering`) asks for.
    /// CPUs default to 1 and memory to none (the pod may use what the node has).
    pub fn for_request(resources: &Resources, offering: &Offering) -> Result<PodShape, String> {
        let candidates = resources.candidates();
        let chosen = candidates
            .iter()
            .find(|c| {
                c.accelerators.as_ref().is_none_or(|a| {
                    a.choices().iter().any(|want| {
                        offering
                            .accelerators
                            .iter()
                            .any(|(n, _)| n.eq_ignore_ascii_case(&want.name))
                    })
                })
            })
            .unwrap_or(resources);
        let cpus = chosen.cpus.map_or(1.0, |c| c.value);
        let memory_gib = chosen.memory.map(|m| match m {
            crate::model::request::Memory::Exact(v) | crate::model::request::Memory::AtLeast(v) => {
                v
            }
            crate::model::request::Memory::PerCpu(v) => v * cpus,
        });
        let gpus = match chosen.accelerators.as_ref().and_then(|a| {
            a.choices().iter().find(|want| {
                offering
                    .accelerators
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(&want.name))
            })
        }) {
            None => 0,
            Some(want) if want.count.fract() != 0.0 => {
                return Err(format!(
                    "{}:{} asks for a fraction of a GPU; Kubernetes hands out whole GPUs (nvidia.com/gpu)",
                    want.name, want.count
                ));
            }
            Some(want) => want.count as u32,
        };
        Ok(PodShape {
            cpus,
            memory_gib,
            gpus,
            gpu_affinity: None,
        })
    }

    fn resources(&self) -> Value {
        let mut requests = serde_json::Map::new();
        requests.insert(
            "cpu".into(),
            json!(format!("{}m", (self.cpus * 1000.0).round() as u64)),
        );
        if let Some(m) = self.memory_gib {
            requests.insert(
                "memory".into(),
                json!(format!("{}Mi", (m * 1024.0).round() as u64)),
            );
        }
        let mut limits = serde_json::Map::new();
        if self.gpus > 0 {
            // Extended resources: the request must equal the limit.
            requests.insert(
                super::capacity::GPU_RESOURCE.into(),
                json!(self.gpus.to_string()),
            );
            limits.insert(
                super::capacity::GPU_RESOURCE.into(),
                json!(self.gpus.to_string()),
            );
        }
        if let Some(m) = requests.get("memory") {
            limits.insert("memory".into(), m.clone());
        }
        json!({ "requests": requests, "limits": limits })
    }

    fn affinity(&self) -> Option<Value> {
        let (key, values) = self.gpu_affinity.as_ref()?;
        Some(
            json!({ "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchExpressions": [{
                    "key": key, "operator": "In", "values": values
                }]}]
            }}}),
        )
    }
}

/// Who made an object and for which resource.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    pub address: &'a Address,
    pub lineage: &'a str,
}

impl Owner<'_> {
    fn labels(&self, extra: &[(&str, String)]) -> Value {
        let mut m = serde_json::Map::new();
        m.insert(LABEL_LINEAGE.into(), json!(label_value(self.lineage)));
        m.insert(
            LABEL_ADDRESS.into(),
            json!(label_value(&self.address.to_string())),
        );
        for (k, v) in extra {
            m.insert((*k).into(), json!(v));
        }
        Value::Object(m)
    }

    fn metadata(&self, name: &str, namespace: &str, extra: &[(&str, String)]) -> Value {
        json!({
            "name": name,
            "namespace": namespace,
            "labels": self.labels(extra),
            "annotations": { ANNOTATION_ADDRESS: self.address.to_string() },
        })
    }
}

pub fn namespace(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } })
}

/// The headless Service that gives a cluster's pods stable names (`NAME-RANK.NAME`).
pub fn headless_service(owner: &Owner, name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(name, namespace, &[(LABEL_CLUSTER, name.to_string())]),
        "spec": {
            "clusterIP": "None",
            "selector": { LABEL_CLUSTER: name },
            "publishNotReadyAddresses": true,
        }
    })
}

/// `envs` and the variables that tell a rank who it is (SkyPilot's names too).
fn with_rank(
    envs: &BTreeMap<String, String>,
    rank: u32,
    n: u32,
    phase: crate::runtime::skypilot::Phase,
    gpus: u32,
    hosts: Option<&[String]>,
) -> BTreeMap<String, String> {
    let mut out = envs.clone();
    out.insert("SKYFORM_NODE_RANK".into(), rank.to_string());
    out.insert("SKYFORM_NUM_NODES".into(), n.to_string());
    crate::runtime::skypilot::add_vars(&mut out, phase, hosts, Some(f64::from(gpus)));
    out
}

/// The stable names of a cluster's pods, in rank order: SkyPilot's node "IPs" here (a
/// script that takes the first as the head's address works with a name as well).
pub fn pod_hosts(cluster: &str, n: u32) -> Vec<String> {
    (0..n)
        .map(|r| format!("{}.{cluster}", pod_name(cluster, r)))
        .collect()
}

/// The spec of every pod skyform makes: one container `main` running `script` with `sh`,
/// asking for `shape`'s share of a node; no restarts behind skyform's back (an ended pod is
/// reported), no service account token, no service links, a short grace period.
fn pod_spec(image: &str, script: &str, env: Vec<Value>, shape: &PodShape) -> Value {
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": 10,
        "containers": [{
            "name": "main",
            "image": image,
            "command": ["/bin/sh", "-c", script],
            "env": env,
            "resources": shape.resources(),
        }],
    });
    if let Some(a) = shape.affinity() {
        spec["affinity"] = a;
    }
    spec
}

fn env_list(envs: &BTreeMap<String, String>) -> Vec<Value> {
    envs.iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect()
}

/// One pod of a cluster: runs `setup`, then holds its share of the node until deleted.
#[derive(Debug)]
pub struct ClusterPod<'a> {
    pub owner: Owner<'a>,
    pub name: &'a str,
    pub namespace: &'a str,
    pub rank: u32,
    pub num_nodes: u32,
    pub image: &'a str,
    pub shape: &'a PodShape,
    pub envs: &'a BTreeMap<String, String>,
    pub setup: Option<&'a str>,
}

pub fn pod_name(cluster: &str, rank: u32) -> String {
    format!("{cluster}-{rank}")
}

impl ClusterPod<'_> {
    pub fn build(&self) -> Value {
        let pod = pod_name(self.name, self.rank);
        let mut envs = with_rank(
            self.envs,
            self.rank,
            self.num_nodes,
            crate::runtime::skypilot::Phase::Setup,
            self.shape.gpus,
            Some(&pod_hosts(self.name, self.num_nodes)),
        );
        envs.insert("SKYFORM_CLUSTER".into(), self.owner.address.to_string());
        envs.insert(
            "SKYFORM_HEAD_HOST".into(),
            format!("{}.{}", pod_name(self.name, 0), self.name),
        );
        let mut script = String::from("set -e\n");
        if let Some(s) = self.setup {
            script.push_str(s);
            script.push('\n');
        }
        // Holds the pod (and its share of the node) until skyform deletes it.
        script.push_str("exec sleep infinity\n");
        let mut spec = pod_spec(self.image, &script, env_list(&envs), self.shape);
        spec["hostname"] = json!(pod);
        spec["subdomain"] = json!(self.name);
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.owner.metadata(&pod, self.namespace, &[
                (LABEL_CLUSTER, self.name.to_string()),
                (LABEL_RANK, self.rank.to_string()),
            ]),
            "spec": spec,
        })
    }
}

/// A Secret holding a job's `secrets`; pods read them with `secretKeyRef`, so their values
/// never appear in a pod or Job spec.
pub fn secret(
    owner: &Owner,
    name: &str,
    namespace: &str,
    data: &BTreeMap<String, String>,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(name, namespace, &[(LABEL_JOB, name.to_string())]),
        "type": "Opaque",
        "stringData": data,
    })
}

/// One rank of a managed job as a Kubernetes Job: a single pod with its own share of a node,
/// placed by the scheduler, never retried (skyform decides about recovery).
#[derive(Debug, Clone)]
pub struct JobRank<'a> {
    pub owner: Owner<'a>,
    /// The job's name; the Job object is `NAME-RANK`, its Secret `NAME`.
    pub name: &'a str,
    pub namespace: &'a str,
    pub rank: u32,
    pub num_nodes: u32,
    pub image: &'a str,
    pub run: &'a str,
    pub envs: &'a BTreeMap<String, String>,
    pub secret_keys: Vec<&'a str>,
    pub shape: &'a PodShape,
}

pub fn job_object_name(job: &str, rank: u32) -> String {
    format!("{job}-{rank}")
}

impl JobRank<'_> {
    pub fn build(&self) -> Value {
        let object = job_object_name(self.name, self.rank);
        let mut with_id = self.envs.clone();
        with_id.insert("SKYFORM_JOB_ID".into(), self.name.to_string());
        let envs = with_rank(
            &with_id,
            self.rank,
            self.num_nodes,
            crate::runtime::skypilot::Phase::Run,
            self.shape.gpus,
            None,
        );
        let mut env = env_list(&envs);
        for key in &self.secret_keys {
            env.push(json!({ "name": key, "valueFrom": { "secretKeyRef": { "name": self.name, "key": key } } }));
        }
        let spec = pod_spec(self.image, self.run, env, self.shape);
        let labels = [
            (LABEL_JOB, self.name.to_string()),
            (LABEL_RANK, self.rank.to_string()),
        ];
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self.owner.metadata(&object, self.namespace, &labels),
            "spec": {
                "backoffLimit": 0,
                "completions": 1,
                "parallelism": 1,
                "template": {
                    "metadata": { "labels": self.owner.labels(&labels) },
                    "spec": spec,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn shape() -> PodShape {
        PodShape {
            cpus: 2.0,
            memory_gib: Some(8.0),
            gpus: 4,
            gpu_affinity: Some((
                "nvidia.com/gpu.product".into(),
                vec!["NVIDIA-A100-SXM4-80GB".into()],
            )),
        }
    }

    #[test]
    fn names_fit_dns_labels() {
        let a = Address::new(Kind::Cluster, "Train_Big");
        assert_eq!(object_name(&a, "3F9A1Cdeadbeef"), "sky-train-big-3f9a1c");
        let long = Address::new(Kind::Cluster, "x".repeat(80));
        let n = object_name(&long, "abcdef0123");
        assert!(pod_name(&n, 999).len() <= 63, "{n}");
        assert_eq!(label_value("cluster.x[\"a b\"]"), "cluster.x__a_b");
    }

    #[test]
    fn cluster_pod_asks_for_its_share_and_carries_its_labels() {
        let a = Address::new(Kind::Cluster, "train");
        let envs = BTreeMap::from([("MODEL".to_string(), "llama".to_string())]);
        let s = shape();
        let pod = ClusterPod {
            owner: Owner {
                address: &a,
                lineage: "lin-1",
            },
            name: "sky-train-abc",
            namespace: "ns",
            rank: 1,
            num_nodes: 2,
            image: "ubuntu:22.04",
            shape: &s,
            envs: &envs,
            setup: Some("echo hi"),
        }
        .build();
        assert_eq!(pod["metadata"]["name"], "sky-train-abc-1");
        assert_eq!(pod["metadata"]["labels"][LABEL_LINEAGE], "lin-1");
        assert_eq!(pod["metadata"]["labels"][LABEL_ADDRESS], "cluster.train");
        assert_eq!(pod["spec"]["subdomain"], "sky-train-abc");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["resources"]["requests"]["cpu"], "2000m");
        assert_eq!(c["resources"]["requests"]["memory"], "8192Mi");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "4");
        assert!(c["command"][2].as_str().unwrap().contains("echo hi"));
        let env = c["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "SKYFORM_NODE_RANK", "value": "1"})));
        assert!(env.contains(&json!({"name": "MODEL", "value": "llama"})));
        // SkyPilot's names for setup, with the same values.
        assert!(env.contains(&json!({"name": "SKYPILOT_SETUP_NODE_RANK", "value": "1"})));
        assert!(env.contains(&json!({"name": "SKYPILOT_NUM_NODES", "value": "2"})));
        assert!(env.contains(&json!({"name": "SKYPILOT_NUM_GPUS_PER_NODE", "value": "4"})));
        assert!(env.contains(&json!({"name": "SKYPILOT_SETUP_NODE_IPS", "value": "sky-train-abc-0.sky-train-abc\nsky-train-abc-1.sky-train-abc"})));
        let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        assert_eq!(
            terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            "NVIDIA-A100-SXM4-80GB"
        );
    }

    #[test]
    fn secrets_are_referenced_never_inlined() {
        let a = Address::new(Kind::Job, "train");
        let envs = BTreeMap::new();
        let job = JobRank {
            owner: Owner {
                address: &a,
                lineage: "l",
            },
            name: "sky-job-1",
            namespace: "ns",
            rank: 0,
            num_nodes: 1,
            image: "ubuntu:22.04",
            run: "echo $TOKEN",
            envs: &envs,
            secret_keys: vec!["TOKEN"],
            shape: &shape(),
        }
        .build();
        let text = job.to_string();
        assert!(!text.contains("s3cret"));
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            "4"
        );
        assert_eq!(job["spec"]["backoffLimit"], 0);
        let env = pod["containers"][0]["env"].as_array().unwrap();
        for (k, v) in [
            ("SKYPILOT_NODE_RANK", "0"),
            ("SKYPILOT_NUM_NODES", "1"),
            ("SKYPILOT_TASK_ID", "sky-job-1"),
            ("SKYPILOT_NUM_GPUS_PER_NODE", "4"),
        ] {
            assert!(env.contains(&json!({"name": k, "value": v})), "{k}");
        }
        assert!(env.contains(&json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sky-job-1", "key": "TOKEN"}}})));
        let data = BTreeMap::from([("TOKEN".to_string(), "s3cret".to_string())]);
        let s = secret(
            &Owner {
                address: &a,
                lineage: "l",
            },
            "sky-job-1",
            "ns",
            &data,
        );
        assert_eq!(s["stringData"]["TOKEN"], "s3cret");
    }

    #[test]
    fn images() {
        let mut r = Resources::default();
        assert_eq!(image(&r).unwrap(), DEFAULT_IMAGE);
        r.image_id = Some("docker:pytorch/pytorch:2.3".into());
        assert_eq!(image(&r).unwrap(), "pytorch/pytorch:2.3");
        r.image_id = Some("ami-123".into());
        assert!(image(&r).unwrap_err().contains("docker:IMAGE"));
    }
}
