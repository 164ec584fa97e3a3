//! Tests of reading catalogs and building offerings, with the offerings as they were built
//! before the index as the reference the faster build must equal.

use super::*;

/// The offerings as they were built before the index and the faster build, to check
/// that both give exactly the same offerings in the same order.
mod reference {
    use super::super::*;

    pub fn offerings_of_kinds(
        catalog: &Catalog,
        cloud: &str,
        multiplier: f64,
        regions: &[String],
        kinds: Kinds,
    ) -> Vec<Offering> {
        let Some(cc) = catalog.clouds.get(cloud) else {
            return Vec::new();
        };
        let (vms, gpus) = (cc.vms(), cc.gpus());
        let in_scope =
            |r: &str| regions.is_empty() || regions.iter().any(|x| x.eq_ignore_ascii_case(r));
        let mut out = Vec::new();
        // On demand: one offering per (region, instance type); spot: per zone.
        let mut on_demand: BTreeMap<(&str, &str), (&Vm, f64)> = BTreeMap::new();
        // Hosts of separately priced GPUs (GCP's a2, a3, a4, g2) come only with their GPUs.
        let gpu_host = |vm: &Vm| {
            !gpus.is_empty()
                && vm.accelerator.is_none()
                && GPU_HOST_FAMILIES
                    .iter()
                    .any(|f| vm.instance_type.starts_with(f))
        };
        for vm in vms.iter().filter(|v| in_scope(&v.region) && !gpu_host(v)) {
            let wanted = if vm.accelerator.is_some() {
                kinds.gpu
            } else {
                kinds.cpu
            };
            if !wanted {
                continue;
            }
            if let Some(p) = vm.price.filter(|_| kinds.on_demand) {
                on_demand
                    .entry((vm.region.as_str(), vm.instance_type.as_str()))
                    .and_modify(|e| {
                        if p < e.1 {
                            *e = (vm, p);
                        }
                    })
                    .or_insert((vm, p));
            }
            if let Some(sp) = vm.spot_price.filter(|_| kinds.spot) {
                out.push(offering(cloud, vm, vm.zone.clone(), true, sp, multiplier));
            }
        }
        for ((_, _), (vm, p)) in on_demand {
            out.push(offering(cloud, vm, None, false, p, multiplier));
        }
        if !gpus.is_empty() && kinds.gpu {
            out.extend(old_join_gpus(
                cloud, &vms, &gpus, multiplier, &in_scope, kinds,
            ));
        }
        out
    }

    /// Offerings for separately priced accelerators: GPU row + host VM in the same zone.
    fn old_join_gpus(
        cloud: &str,
        vms: &[Vm],
        gpus: &[Vm],
        multiplier: f64,
        in_scope: &dyn Fn(&str) -> bool,
        kinds: Kinds,
    ) -> Vec<Offering> {
        // Host VMs by zone, then by instance type.
        let mut hosts: BTreeMap<&str, Vec<&Vm>> = BTreeMap::new();
        for vm in vms.iter().filter(|v| v.accelerator.is_none()) {
            if let Some(z) = &vm.zone {
                hosts.entry(z.as_str()).or_default().push(vm);
            }
        }
        let mut spot = Vec::new();
        let mut on_demand: BTreeMap<(String, String, String, u64), (Offering, Micros)> =
            BTreeMap::new();
        for gpu in gpus.iter().filter(|g| in_scope(&g.region)) {
            let Some((name, count)) = &gpu.accelerator else {
                continue;
            };
            if name.starts_with("tpu-") {
                continue;
            }
            let Some(zone) = &gpu.zone else { continue };
            let Some(zone_hosts) = hosts.get(zone.as_str()) else {
                continue;
            };
            let candidates: Vec<&Vm> = match fixed_hosts(name, *count) {
                Some(types) => zone_hosts
                    .iter()
                    .filter(|h| types.contains(&h.instance_type))
                    .copied()
                    .collect(),
                None => {
                    // Every n1 host with at least the default vCPUs for the GPUs; the optimizer
                    // applies SkyPilot's 4 GiB per vCPU when the request says neither cpus nor
                    // memory (T4:1 → n1-highmem-4), and the request's own numbers otherwise.
                    let need = n1_default_cpus(name, *count);
                    zone_hosts
                        .iter()
                        // Up to four times the default: enough room for a `cpus` request
                        // without multiplying the offerings by every n1 size.
                        .filter(|h| {
                            h.instance_type.starts_with("n1-")
                                && h.vcpus >= need
                                && h.vcpus <= 4.0 * need
                        })
                        .copied()
                        .collect()
                }
            };
            for host in candidates {
                let joined = Vm {
                    instance_type: host.instance_type.clone(),
                    accelerator: Some((name.clone(), *count)),
                    vcpus: host.vcpus,
                    memory_gib: host.memory_gib,
                    price: None,
                    spot_price: None,
                    region: gpu.region.clone(),
                    zone: None,
                };
                if let (Some(hp), Some(gp), true) = (host.spot_price, gpu.spot_price, kinds.spot) {
                    spot.push(offering(
                        cloud,
                        &joined,
                        Some(zone.clone()),
                        true,
                        hp + gp,
                        multiplier,
                    ));
                }
                if let (Some(hp), Some(gp), true) = (host.price, gpu.price, kinds.on_demand) {
                    let o = offering(cloud, &joined, None, false, hp + gp, multiplier);
                    let key = (
                        gpu.region.clone(),
                        host.instance_type.clone(),
                        name.clone(),
                        *count as u64,
                    );
                    match on_demand.get(&key) {
                        Some((_, p)) if *p <= o.price => {}
                        _ => {
                            let p = o.price;
                            on_demand.insert(key, (o, p));
                        }
                    }
                }
            }
        }
        spot.extend(on_demand.into_values().map(|(o, _)| o));
        spot
    }

    /// The offering of a row as it was built before the compact rows.
    fn offering(
        cloud: &str,
        vm: &Vm,
        zone: Option<String>,
        spot: bool,
        price: f64,
        multiplier: f64,
    ) -> Offering {
        Offering {
            cloud: cloud.to_string(),
            region: Some(vm.region.clone()),
            zone,
            instance_type: vm.instance_type.clone(),
            accelerators: vm.accelerator.iter().cloned().collect(),
            cpus: vm.vcpus,
            memory_gib: vm.memory_gib,
            spot,
            price: micros_from_dollars(price * multiplier),
            max_nodes: None,
        }
    }
}

const GCP: &str = "InstanceType,vCPUs,MemoryGiB,AcceleratorName,AcceleratorCount,GpuInfo,Region,AvailabilityZone,Price,SpotPrice
g2-standard-4,4.0,16.0,,,,us-east4,us-east4-a,0.14631,0.05851
g2-standard-96,96.0,384.0,,,,us-east4,us-east4-a,3.51147,1.40429
n1-standard-4,4.0,15.0,,,,us-east4,us-east4-a,0.2,0.05
n1-highmem-4,4.0,26.0,,,,us-east4,us-east4-a,0.25,0.06
,,,L4,1,{'Gpus': []},us-east4,us-east4-a,0.55821,0.2
,,,L4,8,{'Gpus': []},us-east4,us-east4-a,4.46565,1.6
,,,T4,1,{'Gpus': []},us-east4,us-east4-a,0.35,0.1
";

#[test]
fn joins_gcp_gpus_with_their_hosts() {
    let cc = parse_vms(GCP.as_bytes()).unwrap();
    let mut c = Catalog::default();
    c.clouds.insert("gcp".into(), cc);
    let offers = c.offerings("gcp", 1.0, &[]);
    let od = |name: &str, n: f64| {
        offers
            .iter()
            .filter(|o| {
                !o.spot
                    && o.accelerators
                        .first()
                        .is_some_and(|a| a.0 == name && a.1 == n)
            })
            .map(|o| (o.instance_type.clone(), o.price))
            .collect::<Vec<_>>()
    };
    assert_eq!(od("L4", 1.0), vec![("g2-standard-4".to_string(), 704_520)]);
    assert_eq!(
        od("L4", 8.0),
        vec![("g2-standard-96".to_string(), 7_977_120)]
    );
    // T4 rides on any n1 host with at least 4 vCPUs; the optimizer's default of 4 GiB per
    // vCPU then prefers n1-highmem-4 to the cheaper n1-standard-4 (15 GiB).
    let mut t4 = od("T4", 1.0);
    t4.sort();
    assert_eq!(
        t4,
        vec![
            ("n1-highmem-4".to_string(), 600_000),
            ("n1-standard-4".to_string(), 550_000)
        ]
    );
    let req = crate::model::Resources {
        accelerators: Some(crate::model::Accelerators::One("T4:1".parse().unwrap())),
        ..Default::default()
    };
    let best = &super::super::rank(&req, 1, &offers, &Default::default()).unwrap()[0];
    assert_eq!(best.offering.instance_type, "n1-highmem-4");
    let spot: Vec<_> = offers
        .iter()
        .filter(|o| o.spot && o.instance_type == "g2-standard-96")
        .collect();
    assert_eq!(spot.len(), 1);
    assert_eq!(spot[0].zone.as_deref(), Some("us-east4-a"));
    assert_eq!(spot[0].price, 3_004_290);
}

fn all_kinds() -> Vec<Kinds> {
    (0..16u8)
        .map(|bits| Kinds {
            on_demand: bits & 1 != 0,
            spot: bits & 2 != 0,
            gpu: bits & 4 != 0,
            cpu: bits & 8 != 0,
        })
        .collect()
}

fn assert_as_before(catalog: &Catalog, regions: &[Vec<String>]) {
    for cloud in catalog.clouds.keys() {
        for kinds in all_kinds() {
            for r in regions {
                for m in [1.0, 0.83] {
                    assert_eq!(
                        catalog.offerings_of_kinds(cloud, m, r, kinds),
                        reference::offerings_of_kinds(catalog, cloud, m, r, kinds),
                        "{cloud} {kinds:?} {r:?} {m}"
                    );
                }
            }
        }
    }
}

#[test]
fn offerings_are_as_before_on_the_fixture_catalogs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalogs");
    let mut catalog = Catalog::load_csv(&dir).unwrap();
    catalog
        .clouds
        .insert("gcp-small".into(), parse_vms(GCP.as_bytes()).unwrap());
    // A pair listed in two separate runs, the cheaper one later, and equal prices.
    let runs = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,SpotPrice,Region,AvailabilityZone\n\
                m1,,,2,4,0.5,0.1,r1,r1a\nm1,,,2,4,0.5,0.1,r1,r1b\nm2,,,2,4,0.3,,r1,r1a\n\
                m1,,,2,4,0.4,0.1,r1,r1c\nm1,,,2,4,0.4,0.2,r1,r1d\nm1,G,1,2,4,0.2,,r1,r1e\n";
    catalog
        .clouds
        .insert("runs".into(), parse_vms(runs.as_bytes()).unwrap());
    assert_as_before(
        &catalog,
        &[
            vec![],
            vec!["us-east4".into()],
            vec!["US-EAST-1".into(), "us-west-2".into(), "r1".into()],
        ],
    );
}

/// Over the full shared catalogs, when they are there (38,000 rows).
#[test]
fn offerings_are_as_before_on_the_shared_catalogs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/catalogs/skypilot");
    if !dir.join("gcp/vms.csv").is_file() {
        return;
    }
    let catalog = Catalog::load_csv(&dir).unwrap();
    // Several clouds at once, in the order asked, one twice.
    let wanted: Vec<(String, f64, Vec<String>)> = vec![
        ("lambda".into(), 1.0, vec![]),
        ("gcp".into(), 0.9, vec![]),
        ("aws".into(), 1.0, vec!["us-east-1".into()]),
        ("gcp".into(), 1.0, vec!["us-central1".into()]),
    ];
    let kinds = Kinds {
        on_demand: true,
        spot: false,
        gpu: true,
        cpu: true,
    };
    let want: Vec<Offering> = wanted
        .iter()
        .flat_map(|(c, m, r)| reference::offerings_of_kinds(&catalog, c, *m, r, kinds))
        .collect();
    assert_eq!(catalog.offerings_of(&wanted, kinds), want);
    for cloud in catalog.clouds.keys() {
        for kinds in [
            Kinds::ALL,
            Kinds {
                on_demand: true,
                spot: false,
                gpu: true,
                cpu: true,
            },
        ] {
            assert_eq!(
                catalog.offerings_of_kinds(cloud, 1.0, &[], kinds),
                reference::offerings_of_kinds(&catalog, cloud, 1.0, &[], kinds),
                "{cloud} {kinds:?}"
            );
        }
    }
}

#[test]
fn fixed_hosts_are_in_the_host_families() {
    for name in [
        "A100",
        "A100-80GB",
        "H100",
        "H100-MEGA",
        "H200",
        "B200",
        "L4",
    ] {
        for n in [1.0, 2.0, 4.0, 8.0, 16.0] {
            for t in fixed_hosts(name, n).unwrap_or_default() {
                assert!(may_host_gpus(&t), "{t}");
            }
        }
    }
}

#[test]
fn tolerates_other_schemas() {
    let v3 = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n\
              p4de.24xlarge,A100-80GB,8,96.0,1152.0,A100-80GB,40.9657,,us-east-1,us-east-1a\n";
    let cc = parse_vms(v3.as_bytes()).unwrap().vms();
    assert_eq!(cc[0].accelerator, Some(("A100-80GB".into(), 8.0)));
    assert_eq!(cc[0].spot_price, None);
    let lambda = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice\n\
                  gpu_1x_a10,A10,1.0,30.0,200.0,0.75,us-east-1,\"{'Gpus': []}\",\n";
    let cc = parse_vms(lambda.as_bytes()).unwrap().vms();
    assert_eq!(cc[0].zone, None);
    assert_eq!(cc[0].price, Some(0.75));
    assert!(parse_vms(b"a,b\n1,2\n").is_err());
}
