//! The optimizer: which offering each request should run on, and the ranked failover list.
//!
//! Pure and synchronous: offerings (gathered by providers and catalogs beforehand), the
//! request and the set of blocked placements in; a ranked candidate list out. Prices are
//! integer micro-dollars per hour so the order is total and stable.

pub mod catalog;

use crate::model::{Accelerators, Resources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Micro-dollars per hour.
pub type Micros = u64;

/// `$7.98` — rounded to the cent.
pub fn dollars(m: Micros) -> String {
    let cents = m.saturating_add(5_000) / 10_000;
    format!("${}.{:02}", cents / 100, cents % 100)
}

pub fn micros_from_dollars(d: f64) -> Micros {
    if d.is_finite() && d > 0.0 {
        (d * 1_000_000.0).round() as Micros
    } else {
        0
    }
}

/// Something that can be rented or used: one node's shape at one place and price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offering {
    /// `local`, `aws`, `gcp`, `k8s`, `ssh`.
    pub cloud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub instance_type: String,
    /// GPU name → count per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accelerators: Vec<(String, f64)>,
    pub cpus: f64,
    pub memory_gib: f64,
    pub spot: bool,
    pub price: Micros,
    /// How many nodes of this shape can be had at once (None: as many as asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<u32>,
}

impl Offering {
    /// GPUs per node, of every accelerator together.
    pub fn gpus(&self) -> f64 {
        // + 0.0: an empty sum of floats is -0.0, which would show as "-0".
        self.accelerators.iter().map(|(_, n)| n).sum::<f64>() + 0.0
    }

    /// `aws/us-east-1/us-east-1a`, `local`.
    pub fn infra(&self) -> String {
        let mut s = self.cloud.clone();
        if let Some(r) = &self.region {
            s.push('/');
            s.push_str(r);
            if let Some(z) = &self.zone {
                s.push('/');
                s.push_str(z);
            }
        }
        s
    }
}

/// A placement chosen for a request: an offering, the accelerator it satisfies, and the cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub offering: Offering,
    pub num_nodes: u32,
    /// Hourly cost for all nodes.
    pub hourly: Micros,
}

impl Candidate {
    pub fn key(&self) -> String {
        format!(
            "{}:{}{}",
            self.offering.infra(),
            self.offering.instance_type,
            if self.offering.spot { ":spot" } else { "" }
        )
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.offering;
        write!(f, "{}", o.infra())?;
        if o.instance_type != o.cloud {
            write!(f, " {}", o.instance_type)?;
        }
        if let Some((name, n)) = o.accelerators.first() {
            write!(f, "  {name}:{}", crate::model::request::fmt_num(*n))?;
        }
        write!(
            f,
            "  {} vCPU  {} GiB  ",
            crate::model::request::fmt_num(o.cpus),
            crate::model::request::fmt_size(o.memory_gib),
        )?;
        // Machines one already has (this one, a pool, a Kubernetes cluster) have no market.
        if !is_capacity(&o.cloud) {
            write!(f, "{}  ", if o.spot { "spot" } else { "on-demand" })?;
        }
        write!(f, "{}/h", dollars(self.hourly))
    }
}

/// Why no candidate was left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMatch {
    /// The constraint that removed the last candidates, e.g. "cpus = 64+ (largest: 2 vCPU)".
    pub reason: String,
}

fn matches_infra(pattern: &str, o: &Offering) -> bool {
    let want: Vec<&str> = pattern.split('/').collect();
    let cloud = crate::model::backend::canonical(want[0]);
    let have = [
        Some(o.cloud.as_str()),
        o.region.as_deref(),
        o.zone.as_deref(),
    ];
    if cloud != "*" && cloud != o.cloud {
        return false;
    }
    for (i, w) in want.iter().enumerate().skip(1) {
        if *w == "*" {
            continue;
        }
        match have.get(i).copied().flatten() {
            Some(h) if h.eq_ignore_ascii_case(w) => {}
            // An on-demand offering stands for every zone of its region: a zone asked for
            // narrows it (see `pin_zone`).
            None if i == 2 && o.region.is_some() => {}
            _ => return false,
        }
    }
    true
}

/// The concrete zone an infra pattern names, if any (`aws/us-east-1/us-east-1a`).
fn pattern_zone(pattern: &str) -> Option<&str> {
    pattern.split('/').nth(2).filter(|z| *z != "*")
}

/// Whether a blocked placement (an infra prefix like `gcp/us-east4` or `aws/us-east-1/
/// us-east-1a`, or a candidate key) covers `c`. Whole path segments only: blocking
/// `gcp/europe-west1` leaves `gcp/europe-west10` alone.
pub fn is_blocked(blocked: &BTreeSet<String>, c: &Candidate) -> bool {
    let infra = c.offering.infra();
    let key = c.key();
    blocked.iter().any(|b| {
        key == *b
            || infra == *b
            || infra.starts_with(&format!("{b}/"))
            // A zone blocked blocks its region's on-demand offering only for that zone; the
            // offering stands for the other zones too, so it stays.
            || key.starts_with(&format!("{b}:"))
    })
}

/// Clouds whose offerings are pools of capacity (a request takes a share of a machine),
/// rather than catalogs of machine shapes (a request rents whole machines).
pub fn is_capacity(cloud: &str) -> bool {
    crate::model::backend::is_capacity(cloud)
}

/// General-purpose families searched when a request names no accelerator and no instance
/// type (as SkyPilot does): `None` means any family.
fn default_families(cloud: &str) -> Option<&'static [&'static str]> {
    match cloud {
        "aws" => Some(&[
            "m6i.", "m6id.", "r6i.", "r6id.", "c6i.", "c6id.", "m7i.", "m7id.", "r7i.", "r7id.",
            "c7i.", "c7id.",
        ]),
        "gcp" => Some(&[
            "n2-standard-",
            "n2-highmem-",
            "n2-highcpu-",
            "n4-standard-",
            "n4-highmem-",
            "n4-highcpu-",
        ]),
        _ => None,
    }
}

fn fits_accelerator(o: &Offering, want: &crate::model::Accelerator) -> bool {
    o.accelerators.iter().any(|(n, have)| {
        n.eq_ignore_ascii_case(&want.name)
            && if is_capacity(&o.cloud) {
                *have + 1e-9 >= want.count
            } else {
                (*have - want.count).abs() < 1e-9
            }
    })
}

/// The accelerators on offer that look like `wanted` (same or similar name), as
/// "NAME:COUNT" — for "did you mean".
pub fn similar_accelerators(offerings: &[Offering], wanted: &str) -> Vec<String> {
    let mut names: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for o in offerings {
        for (n, c) in &o.accelerators {
            names
                .entry(n.clone())
                .or_default()
                .insert((*c * 1000.0) as u64);
        }
    }
    let w = wanted.to_lowercase();
    let mut scored: Vec<(f64, String, u64)> = Vec::new();
    for (name, counts) in names {
        let l = name.to_lowercase();
        let score = if l == w {
            2.0
        } else if l.starts_with(&w) || w.starts_with(&l) {
            1.5
        } else {
            strsim::jaro_winkler(&l, &w)
        };
        if score >= 0.85 {
            for c in counts {
                scored.push((score, name.clone(), c));
            }
        }
    }
    // Best names first; counts in numeric order.
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    scored
        .into_iter()
        .map(|(_, n, c)| format!("{n}:{}", crate::model::request::fmt_num(c as f64 / 1000.0)))
        .take(6)
        .collect()
}

/// A placement that would fit the machine asked for but is outside the request's search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    pub candidate: Candidate,
    pub reason: String,
}

/// The cheapest placements (at most `limit`) that fit but were left out by `infra` or
/// `max_hourly_cost`, each with the constraint that excluded it — so a reviewer sees what the
/// search space cost.
pub fn excluded(
    request: &Resources,
    num_nodes: u32,
    offerings: &[Offering],
    chosen: &[Candidate],
    limit: usize,
) -> Vec<Excluded> {
    // Without infra or a price cap nothing is left out: skip the second ranking.
    let constrained = |r: &Resources| r.infra.is_some() || r.max_hourly_cost.is_some();
    if !constrained(request)
        && !request
            .any_of
            .iter()
            .chain(&request.ordered)
            .any(constrained)
    {
        return Vec::new();
    }
    let relax = |r: &Resources| Resources {
        infra: None,
        max_hourly_cost: None,
        ..r.clone()
    };
    let mut relaxed = relax(request);
    relaxed.any_of = request.any_of.iter().map(relax).collect();
    relaxed.ordered = request.ordered.iter().map(relax).collect();
    let Ok(all) = rank(&relaxed, num_nodes, offerings, &BTreeSet::new()) else {
        return Vec::new();
    };
    let kept: BTreeSet<String> = chosen.iter().map(Candidate::key).collect();
    let candidates = request.candidates();
    all.into_iter()
        .filter(|c| !kept.contains(&c.key()))
        .take(limit)
        .map(|c| {
            let reason = candidates
                .iter()
                .find_map(|r| match (&r.infra, r.max_hourly_cost) {
                    (Some(i), _) if !matches_infra(i, &c.offering) => {
                        Some(format!("outside infra = {i:?}"))
                    }
                    (_, Some(max)) if c.hourly > micros_from_dollars(max) => {
                        Some(format!("over max_hourly_cost = {max}"))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "outside the search space".into());
            Excluded {
                candidate: c,
                reason,
            }
        })
        .collect()
}

/// Keeps the offerings `keep` accepts; if that removes the last ones, records why.
fn narrow(
    pool: &mut Vec<&Offering>,
    last: &mut String,
    why: impl FnOnce() -> String,
    keep: impl Fn(&Offering) -> bool,
) {
    if pool.is_empty() {
        return;
    }
    pool.retain(|o| keep(o));
    if pool.is_empty() {
        *last = why();
    }
}

/// The candidates for `request` × `num_nodes`, cheapest first (or in the written order for
/// `ordered` requests), skipping blocked placements. Deterministic: ties break on infra,
/// instance type and spot.
///
/// Catalog clouds rent whole machines: the accelerator count must match exactly, and a
/// request without accelerators, instance type, `cpus` or `memory` gets general-purpose
/// machines with at least 8 vCPUs and 4 GiB per vCPU. Capacity (local, ssh, Kubernetes) is
/// shared: a request fits when the machine has at least what it asks for.
pub fn rank(
    request: &Resources,
    num_nodes: u32,
    offerings: &[Offering],
    blocked: &BTreeSet<String>,
) -> Result<Vec<Candidate>, NoMatch> {
    let ordered = !request.ordered.is_empty();
    let mut out: Vec<(usize, Candidate)> = Vec::new();
    let mut last_reason = String::from("no offerings are available");
    for (group, req) in request.candidates().iter().enumerate() {
        let mut pool: Vec<&Offering> = offerings.iter().collect();
        if let Some(infra) = &req.infra {
            narrow(
                &mut pool,
                &mut last_reason,
                || format!("infra = {infra:?} matches no available infra"),
                |o: &Offering| matches_infra(infra, o),
            );
        }
        if let Some(it) = &req.instance_type {
            narrow(
                &mut pool,
                &mut last_reason,
                || format!("instance_type = {it:?} is not offered"),
                |o: &Offering| &o.instance_type == it,
            );
        }
        narrow(
            &mut pool,
            &mut last_reason,
            || {
                if req.spot() {
                    "use_spot = true: nothing is offered as spot here".into()
                } else {
                    "nothing is offered on demand here".into()
                }
            },
            |o: &Offering| o.spot == req.spot() || (is_capacity(&o.cloud) && !o.spot),
        );
        if let Some(acc) = &req.accelerators {
            let choices = acc.choices().to_vec();
            let infra = req.infra.clone();
            narrow(
                &mut pool,
                &mut last_reason,
                || {
                    // Suggest what the same infra does offer under a similar name.
                    let scope: Vec<Offering> = offerings
                        .iter()
                        .filter(|o| infra.as_ref().is_none_or(|i| matches_infra(i, o)))
                        .cloned()
                        .collect();
                    let similar: Vec<String> = choices
                        .iter()
                        .flat_map(|c| similar_accelerators(&scope, &c.name))
                        .collect();
                    if similar.is_empty() {
                        format!("accelerators = {acc}: no such accelerator is offered")
                    } else {
                        format!(
                            "accelerators = {acc} is not offered; did you mean {}?",
                            similar.join(", ")
                        )
                    }
                },
                |o: &Offering| choices.iter().any(|c| fits_accelerator(o, c)),
            );
        } else if req.instance_type.is_none() {
            narrow(
                &mut pool,
                &mut last_reason,
                || "no general-purpose machine matches".into(),
                |o: &Offering| {
                    is_capacity(&o.cloud)
                        || (o.accelerators.is_empty()
                            && default_families(&o.cloud)
                                .is_none_or(|f| f.iter().any(|p| o.instance_type.starts_with(p)))
                            && (req.cpus.is_some() || req.memory.is_some() || o.cpus >= 8.0)
                            && (req.memory.is_some() || o.memory_gib + 1e-9 >= 4.0 * o.cpus))
                },
            );
        }
        if req.accelerators.is_some() && req.cpus.is_none() && req.memory.is_none() {
            // GPUs on general hosts (GCP's n1): SkyPilot's default of 4 GiB per vCPU.
            narrow(
                &mut pool,
                &mut last_reason,
                || "no host with 4 GiB per vCPU".into(),
                |o: &Offering| {
                    !(o.cloud == "gcp"
                        && o.instance_type.starts_with("n1-")
                        && !o.accelerators.is_empty())
                        || o.memory_gib + 1e-9 >= 4.0 * o.cpus
                },
            );
        }
        if let Some(c) = req.cpus {
            let most = pool.iter().map(|o| o.cpus).fold(0.0, f64::max);
            narrow(
                &mut pool,
                &mut last_reason,
                || {
                    format!(
                        "cpus = {c} (the largest offer has {} vCPU)",
                        crate::model::request::fmt_num(most)
                    )
                },
                |o: &Offering| {
                    c.satisfied_by(o.cpus) || (is_capacity(&o.cloud) && o.cpus + 1e-9 >= c.value)
                },
            );
        }
        if let Some(m) = req.memory {
            let most = pool.iter().map(|o| o.memory_gib).fold(0.0, f64::max);
            narrow(
                &mut pool,
                &mut last_reason,
                || {
                    format!(
                        "memory = {m} (the largest offer has {} GiB)",
                        crate::model::request::fmt_num(most)
                    )
                },
                |o: &Offering| {
                    m.satisfied_by(o.memory_gib, o.cpus)
                        || (is_capacity(&o.cloud)
                            && matches!(m, crate::model::Memory::Exact(v) if o.memory_gib >= v))
                },
            );
        }
        narrow(
            &mut pool,
            &mut last_reason,
            || format!("num_nodes = {num_nodes} exceeds what is available"),
            |o: &Offering| o.max_nodes.is_none_or(|m| m >= num_nodes),
        );
        if let Some(max) = req.max_hourly_cost {
            let cap = micros_from_dollars(max);
            let cheapest = pool
                .iter()
                .map(|o| o.price.saturating_mul(u64::from(num_nodes)))
                .min()
                .unwrap_or(0);
            narrow(
                &mut pool,
                &mut last_reason,
                || {
                    format!(
                        "max_hourly_cost = {max} (the cheapest match costs {}/h)",
                        dollars(cheapest)
                    )
                },
                |o: &Offering| o.price.saturating_mul(u64::from(num_nodes)) <= cap,
            );
        }
        for o in pool {
            let c = Candidate {
                offering: o.clone(),
                num_nodes,
                hourly: o.price.saturating_mul(u64::from(num_nodes)),
            };
            let c = match req.infra.as_deref().and_then(pattern_zone) {
                Some(z) if c.offering.zone.is_none() && !is_capacity(&c.offering.cloud) => {
                    let mut c = c;
                    c.offering.zone = Some(z.to_string());
                    c
                }
                _ => c,
            };
            if is_blocked(blocked, &c) {
                last_reason = "every matching placement is blocked by earlier failures".into();
                continue;
            }
            // Accelerator list order: earlier names rank first within an ordered list.
            let acc_rank = match &req.accelerators {
                Some(Accelerators::Ordered(list)) => list
                    .iter()
                    .position(|a| fits_accelerator(o, a))
                    .unwrap_or(0),
                _ => 0,
            };
            out.push((
                if ordered {
                    group * 1000 + acc_rank
                } else {
                    acc_rank
                },
                c,
            ));
        }
    }
    if out.is_empty() {
        return Err(NoMatch {
            reason: last_reason,
        });
    }
    out.sort_by(|(ga, a), (gb, b)| {
        ga.cmp(gb)
            .then(a.hourly.cmp(&b.hourly))
            .then_with(|| a.offering.infra().cmp(&b.offering.infra()))
            .then_with(|| a.offering.instance_type.cmp(&b.offering.instance_type))
            .then(a.offering.spot.cmp(&b.offering.spot))
    });
    let mut seen = BTreeSet::new();
    Ok(out
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| seen.insert(c.key()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(
        cloud: &str,
        region: Option<&str>,
        it: &str,
        gpus: &[(&str, f64)],
        cpus: f64,
        price: f64,
    ) -> Offering {
        Offering {
            cloud: cloud.into(),
            region: region.map(String::from),
            zone: None,
            instance_type: it.into(),
            accelerators: gpus.iter().map(|(n, c)| ((*n).to_string(), *c)).collect(),
            cpus,
            memory_gib: cpus * 4.0,
            spot: false,
            price: micros_from_dollars(price),
            max_nodes: None,
        }
    }

    #[test]
    fn cheapest_first_and_filters() {
        let offers = vec![
            offer(
                "aws",
                Some("us-east-1"),
                "p4d.24xlarge",
                &[("A100", 8.0)],
                96.0,
                32.77,
            ),
            offer(
                "gcp",
                Some("us-central1"),
                "a2-highgpu-8g",
                &[("A100", 8.0)],
                96.0,
                29.39,
            ),
            offer("local", None, "local", &[], 2.0, 0.0),
        ];
        let req = Resources {
            accelerators: Some(Accelerators::One("a100:8".parse().unwrap())),
            ..Resources::default()
        };
        let ranked = rank(&req, 1, &offers, &BTreeSet::new()).unwrap();
        assert_eq!(ranked.len(), 2);
        assert_eq!(ranked[0].offering.cloud, "gcp");
        let only_aws = Resources {
            infra: Some("aws/*".into()),
            ..req.clone()
        };
        assert_eq!(
            rank(&only_aws, 2, &offers, &BTreeSet::new()).unwrap()[0].hourly,
            2 * 32_770_000
        );
        let blocked: BTreeSet<String> = ["gcp/us-central1".to_string()].into();
        assert_eq!(
            rank(&req, 1, &offers, &blocked).unwrap()[0].offering.cloud,
            "aws"
        );
        let too_big = Resources {
            cpus: Some("500+".parse().unwrap()),
            ..Resources::default()
        };
        let err = rank(&too_big, 1, &offers, &BTreeSet::new()).unwrap_err();
        assert!(err.reason.contains("cpus = 500+"), "{}", err.reason);
    }

    #[test]
    fn inner_blocks_can_turn_spot_off() {
        let mut spot = offer(
            "aws",
            Some("us-east-1"),
            "p4d.24xlarge",
            &[("A100", 8.0)],
            96.0,
            10.0,
        );
        spot.spot = true;
        let od = offer(
            "aws",
            Some("us-east-1"),
            "p4d.24xlarge",
            &[("A100", 8.0)],
            96.0,
            32.0,
        );
        let req = Resources {
            accelerators: Some(Accelerators::One("A100:8".parse().unwrap())),
            use_spot: Some(true),
            ordered: vec![
                Resources {
                    use_spot: Some(false),
                    ..Resources::default()
                },
                Resources::default(),
            ],
            ..Resources::default()
        };
        let ranked = rank(&req, 1, &[spot, od], &BTreeSet::new()).unwrap();
        assert!(
            !ranked[0].offering.spot,
            "the first ordered block asks for on-demand"
        );
        assert!(
            ranked[1].offering.spot,
            "the second inherits use_spot = true"
        );
    }

    #[test]
    fn blocking_takes_whole_segments() {
        let mut a = offer("gcp", Some("europe-west1"), "n2-standard-8", &[], 8.0, 1.0);
        a.memory_gib = 32.0;
        let mut b = a.clone();
        b.region = Some("europe-west10".into());
        let mut c = a.clone();
        c.instance_type = "n2-standard-80".into();
        c.cpus = 80.0;
        c.memory_gib = 320.0;
        let offers = vec![a, b, c];
        let req = Resources {
            cpus: Some("8+".parse().unwrap()),
            ..Resources::default()
        };
        let keys = |blocked: &[&str]| -> Vec<String> {
            let blocked: BTreeSet<String> = blocked.iter().map(|s| (*s).to_string()).collect();
            rank(&req, 1, &offers, &blocked)
                .map(|v| v.iter().map(Candidate::key).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            keys(&["gcp/europe-west1"]),
            vec!["gcp/europe-west10:n2-standard-8"]
        );
        assert_eq!(
            keys(&["gcp/europe-west1:n2-standard-8"]).len(),
            2,
            "the key blocks one type only"
        );
        // A zone asked for narrows an on-demand offering to that zone.
        let zoned = Resources {
            infra: Some("gcp/europe-west1/europe-west1-b".into()),
            ..req.clone()
        };
        let r = rank(&zoned, 1, &offers, &BTreeSet::new()).unwrap();
        assert!(
            r.iter()
                .all(|c| c.offering.zone.as_deref() == Some("europe-west1-b")),
            "{r:?}"
        );
    }

    proptest! {
        #[test]
        fn ranked_in_price_order_and_matching(prices in proptest::collection::vec(0.0f64..100.0, 1..20), need in 1u32..16) {
            let offers: Vec<Offering> = prices.iter().enumerate()
                .map(|(i, p)| offer("aws", Some(&format!("r{i}")), "t", &[], f64::from((i % 5) as u32 * 4 + 1), *p))
                .collect();
            let req = Resources { cpus: Some(format!("{need}+").parse().unwrap()), ..Resources::default() };
            if let Ok(ranked) = rank(&req, 1, &offers, &BTreeSet::new()) {
                for w in ranked.windows(2) {
                    prop_assert!(w[0].hourly <= w[1].hourly);
                }
                for c in &ranked {
                    prop_assert!(c.offering.cpus >= f64::from(need));
                }
            }
        }
    }
}
