//! Probing: what a host has to offer (CPUs, memory, GPUs), read in one round trip, and
//! its shape as an instance type.

use super::transport::Connection;
use crate::providers::ProviderError;
use std::collections::BTreeMap;

/// What a host has to offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub cpus: f64,
    pub memory_gib: f64,
    /// GPU name → count, from `nvidia-smi` where present, plus the host's inventory file
    /// (`$SKYFORM_GPUS_FILE`, else `~/.skyform/gpus`; lines `NAME COUNT`) for GPUs skyform
    /// cannot see.
    pub gpus: BTreeMap<String, f64>,
}

const PROBE: &str = r#"
nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
awk '/^MemTotal:/ {print $2; exit}' /proc/meminfo
echo '--gpus'
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sed 's/^/1 /'
fi
inventory="${SKYFORM_GPUS_FILE:-$HOME/.skyform/gpus}"
if [ -f "$inventory" ]; then
  awk 'NF == 2 {print $2, $1}' "$inventory"
fi
"#;

/// Reads a host's CPUs, memory and GPUs in one round trip.
pub async fn probe(c: &Connection) -> Result<Facts, ProviderError> {
    let out = c.script(PROBE, &[]).await?;
    if out.code != Some(0) {
        return Err(ProviderError::other(format!(
            "{}: reading its CPUs and memory failed: {}",
            c.host,
            out.stderr.trim()
        )));
    }
    parse_facts(&out.stdout).ok_or_else(|| {
        ProviderError::other(format!(
            "{}: unexpected answer when reading its CPUs and memory: {:?}",
            c.host, out.stdout
        ))
    })
}

pub(super) fn parse_facts(text: &str) -> Option<Facts> {
    let mut lines = text.lines().map(str::trim);
    let cpus: f64 = lines.next()?.parse().ok()?;
    let kib: f64 = lines.next()?.parse().ok()?;
    if lines.next()? != "--gpus" {
        return None;
    }
    let mut gpus = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, name) = l.split_once(' ')?;
        let n: f64 = n.parse().ok()?;
        // "NVIDIA A100-SXM4-80GB" → "A100-SXM4-80GB": the name the catalogs use starts
        // after the vendor.
        let name = name.trim().trim_start_matches("NVIDIA ").trim();
        *gpus.entry(name.to_string()).or_insert(0.0) += n;
    }
    Some(Facts {
        cpus,
        memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        gpus,
    })
}

/// The shape of a host as an instance type: `8cpu-31GiB` or `8cpu-31GiB-A100x8`.
pub(super) fn shape(f: &Facts) -> String {
    let mut s = format!("{}cpu-{}GiB", f.cpus, f.memory_gib.floor());
    for (g, n) in &f.gpus {
        s.push_str(&format!("-{g}x{n}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_parse() {
        let f = parse_facts(
            "8\n32794676\n--gpus\n1 NVIDIA A100-SXM4-80GB\n1 NVIDIA A100-SXM4-80GB\n4 L4\n",
        )
        .unwrap_or_else(|| panic!("parses"));
        assert_eq!(f.cpus, 8.0);
        assert_eq!(f.memory_gib, 31.3);
        assert_eq!(f.gpus.get("A100-SXM4-80GB"), Some(&2.0));
        assert_eq!(f.gpus.get("L4"), Some(&4.0));
        assert!(parse_facts("eight\n1\n--gpus\n").is_none());
    }
}
