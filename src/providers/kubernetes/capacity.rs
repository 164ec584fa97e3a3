//! What a Kubernetes cluster can still hold: each schedulable node's allocatable CPUs,
//! memory and GPUs, minus what the non-terminal pods bound to it request. Pure: the
//! provider lists nodes and pods, this module does the arithmetic.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// The extended resource NVIDIA's device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Node labels that name the GPU model, most specific first. skyform's own label takes the
/// canonical name as is (for clusters whose nodes carry neither of the others).
pub const GPU_LABELS: [&str; 3] = [
    "skyform.dev/accelerator",
    "nvidia.com/gpu.product",
    "cloud.google.com/gke-accelerator",
];

/// What is left on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Free {
    pub node: String,
    pub cpus: f64,
    pub memory_gib: f64,
    /// Canonical GPU name and the free count, when the node has GPUs.
    pub gpu: Option<(String, u32)>,
}

impl Free {
    /// `16cpu-64GiB` or `16cpu-64GiB-A100x8`: the offering's instance type.
    pub fn shape(&self) -> String {
        let mut s = format!(
            "{}cpu-{}GiB",
            crate::model::request::fmt_num(self.cpus.floor()),
            crate::model::request::fmt_num(self.memory_gib.floor())
        );
        if let Some((g, n)) = &self.gpu
            && *n > 0
        {
            s.push_str(&format!("-{g}x{n}"));
        }
        s
    }
}

/// A quantity as a number: `500m` → 0.5, `64Gi` → 68719476736, `1e3` → 1000.
pub fn quantity(q: &Quantity) -> Option<f64> {
    parse_quantity(&q.0)
}

pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    const BINARY: [(&str, f64); 6] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
    ];
    for (suffix, factor) in BINARY {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| v * factor);
        }
    }
    const DECIMAL: [(char, f64); 7] = [
        ('m', 1e-3),
        ('k', 1e3),
        ('M', 1e6),
        ('G', 1e9),
        ('T', 1e12),
        ('P', 1e15),
        ('E', 1e18),
    ];
    if let Some(last) = s.chars().last() {
        for (suffix, factor) in DECIMAL {
            if last == suffix {
                let n = &s[..s.len() - 1];
                // `1E` is an exa; `1E3` (a digit after the E) is an exponent, parsed below.
                return n.parse::<f64>().ok().map(|v| v * factor);
            }
        }
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The canonical accelerator name for a GPU label value, as the catalogs and `accelerators`
/// spell it: `NVIDIA-A100-SXM4-80GB` → `A100-80GB`, `nvidia-tesla-t4` → `T4`,
/// `NVIDIA-H100-80GB-HBM3` → `H100`. Unknown models keep their text without the vendor.
pub fn canonical_gpu(label: &str) -> String {
    let upper = label.to_uppercase().replace(['_', ' '], "-");
    let parts: Vec<&str> = upper
        .split('-')
        .filter(|p| !p.is_empty() && *p != "NVIDIA" && *p != "TESLA" && *p != "GEFORCE")
        .collect();
    let has = |t: &str| parts.contains(&t);
    // Models sold in two memory sizes the catalogs tell apart.
    for (model, big, name) in [("A100", "80GB", "A100-80GB"), ("V100", "32GB", "V100-32GB")] {
        if has(model) {
            return if has(big) { name.into() } else { model.into() };
        }
    }
    const MODELS: [&str; 16] = [
        "B200", "H200", "H100", "GH200", "L40S", "L40", "L4", "A10G", "A10", "A40", "A6000", "T4",
        "P100", "P4", "K80", "M60",
    ];
    for m in MODELS {
        if has(m) {
            return m.into();
        }
    }
    if parts.is_empty() {
        label.to_string()
    } else {
        parts.join("-")
    }
}

/// The GPU model a node advertises, with the label it came from and that label's value (for
/// node affinity).
pub fn node_gpu(node: &Node) -> Option<(String, &'static str, String)> {
    let labels = node.metadata.labels.as_ref()?;
    GPU_LABELS.iter().find_map(|key| {
        let v = labels.get(*key)?;
        let name = if *key == GPU_LABELS[0] {
            v.clone()
        } else {
            canonical_gpu(v)
        };
        Some((name, *key, v.clone()))
    })
}

/// Whether new pods can land on the node: Ready, not cordoned, no NoSchedule taint.
pub fn schedulable(node: &Node) -> bool {
    let cordoned = node
        .spec
        .as_ref()
        .is_some_and(|s| s.unschedulable == Some(true));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        });
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !cordoned && !tainted
}

/// What a pod holds on its node: CPUs, bytes of memory, GPUs. A pod asks for the larger of
/// the sum over its containers and the largest init container, plus its overhead.
pub fn requests(pod: &Pod) -> (f64, f64, f64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0.0, 0.0, 0.0);
    };
    let of = |c: &k8s_openapi::api::core::v1::Container, key: &str| -> f64 {
        let r = c.resources.as_ref();
        r.and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(key))
            // A limit without a request is a request of the same size.
            .or_else(|| r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(key)))
            .and_then(quantity)
            .unwrap_or(0.0)
    };
    let mut out = [0.0f64; 3];
    for (i, key) in ["cpu", "memory", GPU_RESOURCE].iter().enumerate() {
        let sum: f64 = spec.containers.iter().map(|c| of(c, key)).sum();
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| of(c, key))
            .fold(0.0, f64::max);
        let overhead = spec
            .overhead
            .as_ref()
            .and_then(|o| o.get(*key))
            .and_then(quantity)
            .unwrap_or(0.0);
        out[i] = sum.max(init) + overhead;
    }
    (out[0], out[1], out[2])
}

/// Whether a pod still holds its node's resources (not Succeeded or Failed).
pub fn holds(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

const GIB: f64 = 1073741824.0;

/// Each schedulable node's free resources, in node-name order.
pub fn free(nodes: &[Node], pods: &[Pod]) -> Vec<Free> {
    let mut used: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for p in pods.iter().filter(|p| holds(p)) {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            let (c, m, g) = requests(p);
            let u = used.entry(n).or_default();
            u.0 += c;
            u.1 += m;
            u.2 += g;
        }
    }
    let mut out: Vec<Free> = nodes
        .iter()
        .filter(|n| schedulable(n))
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let alloc = n.status.as_ref()?.allocatable.as_ref()?;
            let get = |k: &str| alloc.get(k).and_then(quantity).unwrap_or(0.0);
            let (uc, um, ug) = used.get(name.as_str()).copied().unwrap_or_default();
            let gpus = (get(GPU_RESOURCE) - ug).max(0.0).floor() as u32;
            let gpu = node_gpu(n)
                .map(|(g, _, _)| g)
                .or_else(|| (get(GPU_RESOURCE) > 0.0).then(|| "GPU".to_string()))
                .map(|g| (g, gpus));
            Some(Free {
                node: name,
                cpus: (get("cpu") - uc).max(0.0),
                memory_gib: ((get("memory") - um) / GIB).max(0.0),
                gpu,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, mem: &str, gpus: u32, product: Option<&str>) -> Node {
        let mut labels = json!({ "kubernetes.io/hostname": name });
        if let Some(p) = product {
            labels["nvidia.com/gpu.product"] = json!(p);
        }
        serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "status": {
                "allocatable": { "cpu": cpu, "memory": mem, "nvidia.com/gpu": gpus.to_string() },
                "conditions": [{ "type": "Ready", "status": "True" }]
            }
        }))
        .unwrap()
    }

    fn pod(node: &str, cpu: &str, mem: &str, gpus: u32, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p" },
            "spec": {
                "nodeName": node,
                "containers": [{ "name": "main", "resources": {
                    "requests": { "cpu": cpu, "memory": mem },
                    "limits": { "nvidia.com/gpu": gpus.to_string() }
                }}]
            },
            "status": { "phase": phase }
        }))
        .unwrap()
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("16"), Some(16.0));
        assert_eq!(parse_quantity("64Gi"), Some(64.0 * GIB));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("2k"), Some(2000.0));
        assert_eq!(parse_quantity("1.5M"), Some(1.5e6));
        assert_eq!(parse_quantity("lots"), None);
    }

    #[test]
    fn gpu_names() {
        assert_eq!(canonical_gpu("NVIDIA-A100-SXM4-80GB"), "A100-80GB");
        assert_eq!(canonical_gpu("NVIDIA-A100-SXM4-40GB"), "A100");
        assert_eq!(canonical_gpu("nvidia-tesla-a100"), "A100");
        assert_eq!(canonical_gpu("nvidia-tesla-t4"), "T4");
        assert_eq!(canonical_gpu("NVIDIA-H100-80GB-HBM3"), "H100");
        assert_eq!(canonical_gpu("nvidia-l4"), "L4");
        assert_eq!(canonical_gpu("NVIDIA-L40S"), "L40S");
        assert_eq!(canonical_gpu("Tesla-V100-SXM2-32GB"), "V100-32GB");
        assert_eq!(canonical_gpu("NVIDIA-A10G"), "A10G");
        assert_eq!(canonical_gpu("NVIDIA-RTX-9000"), "RTX-9000");
    }

    #[test]
    fn free_is_allocatable_minus_running_requests() {
        let nodes = [
            node("n2", "16", "64Gi", 8, Some("NVIDIA-A100-SXM4-80GB")),
            node("n1", "8", "32Gi", 0, None),
        ];
        let pods = [
            pod("n2", "4", "16Gi", 6, "Running"),
            pod("n2", "500m", "1Gi", 0, "Pending"),
            // Finished pods hold nothing.
            pod("n2", "8", "8Gi", 2, "Succeeded"),
            pod("n1", "2", "2Gi", 0, "Failed"),
        ];
        let f = free(&nodes, &pods);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].node, "n1");
        assert_eq!(f[0].shape(), "8cpu-32GiB");
        assert_eq!(f[1].gpu, Some(("A100-80GB".into(), 2)));
        assert!((f[1].cpus - 11.5).abs() < 1e-9);
        assert!((f[1].memory_gib - 47.0).abs() < 1e-9);
        assert_eq!(f[1].shape(), "11cpu-47GiB-A100-80GBx2");
    }

    #[test]
    fn unready_cordoned_and_tainted_nodes_offer_nothing() {
        let mut cordoned = node("c", "8", "8Gi", 0, None);
        cordoned.spec = Some(serde_json::from_value(json!({ "unschedulable": true })).unwrap());
        let mut tainted = node("t", "8", "8Gi", 0, None);
        tainted.spec = Some(
            serde_json::from_value(json!({ "taints": [{ "key": "k", "effect": "NoSchedule" }] }))
                .unwrap(),
        );
        let mut unready = node("u", "8", "8Gi", 0, None);
        unready.status.as_mut().unwrap().conditions = None;
        assert!(free(&[cordoned, tainted, unready], &[]).is_empty());
    }

    #[test]
    fn init_containers_and_overhead_count() {
        let p: Pod = serde_json::from_value(json!({
            "spec": {
                "containers": [
                    { "name": "a", "resources": { "requests": { "cpu": "1" } } },
                    { "name": "b", "resources": { "requests": { "cpu": "1" } } }
                ],
                "initContainers": [{ "name": "i", "resources": { "requests": { "cpu": "3" } } }],
                "overhead": { "cpu": "250m" }
            }
        }))
        .unwrap();
        assert_eq!(requests(&p).0, 3.25);
    }
}
