//! What Compute Engine objects are called: instance and firewall names, label values,
//! accelerator types, and which image a cluster boots — pure functions of the address, the
//! placement and the catalogs.

use super::UBUNTU;
use crate::model::Address;
use std::path::Path;

/// The name of a cluster's firewall rule and its instances' stem:
/// `skyform-<name>-<token8>`, lowercase, short enough for `-<rank>` within 63 characters.
pub(super) fn stem(address: &Address, token: &str) -> String {
    let mut name: String = address
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(36)
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() {
        name = "cluster".into();
    }
    format!("skyform-{name}-{}", token.get(..8).unwrap_or(token))
}

/// An address as a label value (lowercase letters, digits, `-` and `_`, at most 63): kept
/// as it is when it fits, else shortened with a hash of the whole, which metadata keeps.
pub(super) fn label_value(address: &str) -> String {
    let plain: String = address
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if plain == address && plain.len() <= 63 {
        return plain;
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(address.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let head: String = plain.to_ascii_lowercase().chars().take(54).collect();
    format!("{head}-{hex}")
}

/// GCE's accelerator type of a catalog GPU name.
pub(super) fn accelerator_type(gpu: &str) -> String {
    match gpu.to_ascii_uppercase().as_str() {
        "T4" => "nvidia-tesla-t4".into(),
        "V100" => "nvidia-tesla-v100".into(),
        "P100" => "nvidia-tesla-p100".into(),
        "P4" => "nvidia-tesla-p4".into(),
        "K80" => "nvidia-tesla-k80".into(),
        "A100" => "nvidia-tesla-a100".into(),
        "A100-80GB" => "nvidia-a100-80gb".into(),
        "L4" => "nvidia-l4".into(),
        "H100" => "nvidia-h100-80gb".into(),
        "H100-MEGA" => "nvidia-h100-mega-80gb".into(),
        "H200" => "nvidia-h200-141gb".into(),
        other => format!("nvidia-{}", other.to_ascii_lowercase()),
    }
}

/// Whether a machine type comes with its GPUs (A2, A3, A4, G2, G4): N1 hosts get them
/// attached as guest accelerators instead.
pub(super) fn gpus_built_in(machine_type: &str) -> bool {
    let family = machine_type.split('-').next().unwrap_or_default();
    matches!(family, "a2" | "a3" | "a4" | "g2" | "g4")
}

/// The default image for an offering: the newest Ubuntu image of the catalogs'
/// `gcp/images.csv` for GPUs or CPUs (x86), else Ubuntu 22.04 LTS.
pub(super) fn default_image(catalog_dir: Option<&Path>, gpus: bool) -> String {
    let Some(dir) = catalog_dir else {
        return UBUNTU.into();
    };
    let Ok(mut reader) = csv::Reader::from_path(dir.join("gcp/images.csv")) else {
        return UBUNTU.into();
    };
    let prefix = if gpus {
        "skypilot:custom-gpu-ubuntu"
    } else {
        "skypilot:custom-cpu-ubuntu"
    };
    let mut best: Option<(String, String)> = None;
    for row in reader.records().flatten() {
        let (Some(tag), Some(image), Some(date)) = (row.get(0), row.get(4), row.get(5)) else {
            continue;
        };
        if !tag.starts_with(prefix) || tag.contains("arm64") || image.is_empty() {
            continue;
        }
        if best.as_ref().is_none_or(|(d, _)| date > d.as_str()) {
            best = Some((date.to_string(), image.to_string()));
        }
    }
    best.map_or_else(|| UBUNTU.into(), |(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_fit_gce() {
        let a: Address = "cluster.Train_Big".parse().expect("an address");
        let s = stem(&a, "0123456789abcdef");
        assert!(s.len() + 4 <= 63, "{s}");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{s}"
        );
        assert_eq!(label_value("cluster-train"), "cluster-train");
        let long = format!("module.{}.cluster.train[3]", "x".repeat(80));
        let v = label_value(&long);
        assert!(v.len() <= 63, "{v}");
        assert!(
            v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
            "{v}"
        );
        assert_ne!(label_value("cluster.a"), label_value("cluster_a"));
    }

    #[test]
    fn gpus_attach_only_to_hosts_without_them() {
        assert!(gpus_built_in("a2-highgpu-8g"));
        assert!(gpus_built_in("g2-standard-4"));
        assert!(gpus_built_in("a3-highgpu-8g"));
        assert!(!gpus_built_in("n1-highmem-4"));
        assert_eq!(accelerator_type("T4"), "nvidia-tesla-t4");
        assert_eq!(accelerator_type("A100-80GB"), "nvidia-a100-80gb");
    }

    #[test]
    fn the_default_image_comes_from_the_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(default_image(Some(dir.path()), false), UBUNTU);
        std::fs::create_dir_all(dir.path().join("gcp")).expect("mkdir");
        std::fs::write(
            dir.path().join("gcp/images.csv"),
            "Tag,Region,OS,OSVersion,ImageId,CreationDate,BaseImageId\n\
             skypilot:custom-cpu-ubuntu-2204,,ubuntu,22.04,projects/a/global/images/cpu-old,20241030,\n\
             skypilot:custom-cpu-ubuntu-2204-250813,,ubuntu,22.04,projects/a/global/images/cpu-new,20250813,\n\
             skypilot:custom-cpu-ubuntu-2204-arm64,,ubuntu,22.04,projects/a/global/images/arm,20260923,\n\
             skypilot:custom-gpu-ubuntu-2204,,ubuntu,22.04,projects/a/global/images/gpu,20241030,\n",
        )
        .expect("write");
        assert_eq!(
            default_image(Some(dir.path()), false),
            "projects/a/global/images/cpu-new"
        );
        assert_eq!(
            default_image(Some(dir.path()), true),
            "projects/a/global/images/gpu"
        );
    }
}
