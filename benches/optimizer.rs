//! How fast the optimizer is over the shared catalogs (about 38,000 rows): loading (from the
//! CSVs and through the prebuilt index), building offerings, ranking one request, and whole
//! CLI runs of `skyform offers` and `skyform plan`.
//! Prints figures for docs/benchmarks.md. Run: `cargo bench --bench optimizer`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skyform::model::{Accelerators, Resources};
use skyform::optimizer::catalog::Catalog;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_skyform");

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/catalogs/skypilot");
    if !dir.join("gcp/vms.csv").exists() {
        println!("SKIPPED: the shared catalogs are not at {}", dir.display());
        return;
    }
    let load = best_of(5, || Catalog::load_csv(&dir).unwrap());
    // The first load writes the index (next to the CSVs, or in the cache for a read-only
    // directory such as the shared one); the timed ones read it.
    let catalog = Catalog::load(&dir).unwrap();
    let load_index = best_of(5, || Catalog::load(&dir).unwrap());
    let rows: usize = catalog.files.iter().map(|f| f.rows).sum();
    let clouds: Vec<String> = catalog.clouds.keys().cloned().collect();
    let build = best_of(5, || {
        clouds
            .iter()
            .flat_map(|c| catalog.offerings(c, 1.0, &[]))
            .count()
    });
    let offerings: Vec<_> = clouds
        .iter()
        .flat_map(|c| catalog.offerings(c, 1.0, &[]))
        .collect();
    let requests: Vec<Resources> = ["A100:8", "L4:1", "H100:8", "T4:1", "A10G:4"]
        .iter()
        .map(|a| Resources {
            accelerators: Some(Accelerators::One(a.parse().unwrap())),
            ..Resources::default()
        })
        .chain([
            Resources::default(),
            Resources {
                cpus: Some("32+".parse().unwrap()),
                ..Resources::default()
            },
        ])
        .collect();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < 1.0 {
        for r in &requests {
            std::hint::black_box(skyform::optimizer::rank(r, 1, &offerings, &BTreeSet::new()).ok());
            n += 1;
        }
    }
    let per_request = t.elapsed().as_secs_f64() / n as f64;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        "infra \"aws\" {}\ninfra \"gcp\" {}\ninfra \"lambda\" {}\n\ncluster \"train\" {\n  resources {\n    accelerators = toset([\"A10G:8\", \"L4:8\", \"A100:8\"])\n  }\n}\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        best_of(5, || {
            let out = Command::new(BIN)
                .arg(format!("-chdir={}", tmp.path().display()))
                .args(args)
                .env("SKYFORM_CATALOG_DIR", &dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };
    let offers = cli(&["offers", "A100:8"]);
    let plan = cli(&["plan"]);
    // The same cluster on spot: every spot price per zone is built as well.
    std::fs::write(
        tmp.path().join("main.sky.hcl"),
        "infra \"aws\" {}\ninfra \"gcp\" {}\ninfra \"lambda\" {}\n\ncluster \"train\" {\n  resources {\n    use_spot     = true\n    accelerators = toset([\"A10G:8\", \"L4:8\", \"A100:8\"])\n  }\n}\n",
    )
    .unwrap();
    let plan_spot = cli(&["plan"]);
    println!("catalog rows: {rows}, offerings built: {}", offerings.len());
    println!("load CSVs:            {:>8.1} ms", load * 1e3);
    println!("load via the index:   {:>8.1} ms", load_index * 1e3);
    println!("build offerings:      {:>8.1} ms", build * 1e3);
    println!("rank one request:     {:>8.3} ms", per_request * 1e3);
    println!("skyform offers (CLI): {:>8.1} ms", offers * 1e3);
    println!("skyform plan (CLI):   {:>8.1} ms", plan * 1e3);
    println!("skyform plan, spot:   {:>8.1} ms", plan_spot * 1e3);
}
