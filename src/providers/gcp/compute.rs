//! The calls to Compute Engine: clients made once on first use (Application Default
//! Credentials, a credentials file, or anonymous ones for an `endpoint` such as the fake),
//! operations polled to DONE with a bounded wait, instances read by label across zones.

use super::errors::{classify, of_operation};
use super::{GcpProvider, Node, Private, label};
use crate::providers::{ErrorKind, ProviderError};
use google_cloud_auth::credentials::{self, Credentials};
use google_cloud_compute_v1::client::{
    Firewalls, GlobalOperations, Images, Instances, ZoneOperations, Zones,
};
use google_cloud_compute_v1::model::{self, Operation};
use google_cloud_gax::retry_policy::NeverRetry;
use std::time::{Duration, Instant};

/// The clients of one project, made together.
#[derive(Debug)]
pub(super) struct Clients {
    pub instances: Instances,
    pub zone_ops: ZoneOperations,
    pub global_ops: GlobalOperations,
    pub firewalls: Firewalls,
    pub images: Images,
    pub zones: Zones,
}

/// How long one operation may take to finish (an instance insert takes seconds to a
/// minute on GCE).
const OP_WAIT: Duration = Duration::from_secs(600);

fn config(message: String) -> ProviderError {
    ProviderError {
        kind: ErrorKind::Config,
        message,
    }
}

impl GcpProvider {
    /// The credentials: anonymous ones for an endpoint of its own (a fake or an emulator),
    /// else `credentials_file`, else Application Default Credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's, the metadata server).
    fn credentials(&self) -> Result<Credentials, ProviderError> {
        if self.settings.endpoint.is_some() {
            return Ok(credentials::anonymous::Builder::new().build());
        }
        if let Some(path) = &self.settings.credentials_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config(format!(
                    "cannot read the credentials file {}: {e}",
                    path.display()
                ))
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                config(format!(
                    "the credentials file {} is not JSON: {e}",
                    path.display()
                ))
            })?;
            let built = match json.get("type").and_then(|t| t.as_str()) {
                Some("service_account") => credentials::service_account::Builder::new(json).build(),
                Some("authorized_user") => credentials::user_account::Builder::new(json).build(),
                Some("external_account") => {
                    credentials::external_account::Builder::new(json).build()
                }
                other => {
                    return Err(config(format!(
                        "the credentials file {} is of type {other:?}; service_account, authorized_user or external_account is needed",
                        path.display()
                    )));
                }
            };
            return built.map_err(|e| config(format!("credentials from {}: {e}", path.display())));
        }
        // The metadata server is the last resort of Application Default Credentials; off
        // GCP nothing answers there, so it is not asked (and the cloud is blocked at once).
        if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_none()
            && !adc_file().is_some_and(|f| f.is_file())
            && !on_gcp()
        {
            return Err(config(
                "no Google Cloud credentials found: run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or credentials_file in infra \"gcp\"".into(),
            ));
        }
        credentials::Builder::default()
            .build()
            .map_err(|e| config(format!("no Google Cloud credentials found: {e}")))
    }

    /// The clients, made on first use: plans never get here.
    pub(super) async fn clients(&self) -> Result<&Clients, ProviderError> {
        self.clients
            .get_or_try_init(|| async {
                let creds = self.credentials()?;
                let endpoint = self.settings.endpoint.clone();
                macro_rules! make {
                    ($t:ty) => {{
                        let mut b = <$t>::builder()
                            .with_credentials(creds.clone())
                            // skyform decides what to retry (the engine's failover).
                            .with_retry_policy(NeverRetry)
                            .with_attempt_timeout(Duration::from_secs(60));
                        if let Some(e) = &endpoint {
                            b = b.with_endpoint(e.clone());
                        }
                        b.build().await.map_err(|e| {
                            config(format!("cannot make a Compute Engine client: {e}"))
                        })?
                    }};
                }
                Ok(Clients {
                    instances: make!(Instances),
                    zone_ops: make!(ZoneOperations),
                    global_ops: make!(GlobalOperations),
                    firewalls: make!(Firewalls),
                    images: make!(Images),
                    zones: make!(Zones),
                })
            })
            .await
    }

    /// The project to work in.
    pub(super) fn project(&self) -> Result<String, ProviderError> {
        self.settings
            .project
            .clone()
            .ok_or_else(|| config("no GCP project: set `project` in infra \"gcp\" { … }".into()))
    }

    /// Waits until an operation is DONE; its error, if it failed, is the answer's.
    pub(super) async fn wait(&self, what: &str, op: Operation) -> Result<(), ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let name = op.name.clone().unwrap_or_default();
        let zone = op.zone.as_deref().map(short).map(str::to_string);
        let started = Instant::now();
        let mut op = op;
        // Most operations finish within a second: look soon, then every `poll`.
        let mut pause = self.poll.min(Duration::from_millis(250));
        loop {
            if op.status == Some(model::operation::Status::Done) {
                return match of_operation(what, &op) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            if started.elapsed() > OP_WAIT {
                return Err(ProviderError {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "{what}: operation {name} did not finish within {}",
                        humantime::format_duration(OP_WAIT)
                    ),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.poll);
            op = match &zone {
                Some(z) => c
                    .zone_ops
                    .get()
                    .set_project(&project)
                    .set_zone(z)
                    .set_operation(&name)
                    .send()
                    .await
                    .map_err(|e| classify("zoneOperations.get", e))?,
                None => c
                    .global_ops
                    .get()
                    .set_project(&project)
                    .set_operation(&name)
                    .send()
                    .await
                    .map_err(|e| classify("globalOperations.get", e))?,
            };
        }
    }

    /// The instances of an attempt (by its token label, across zones), head first.
    pub(super) async fn nodes(&self, p: &Private) -> Result<Vec<Node>, ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let mut nodes = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut call = c
                .instances
                .aggregated_list()
                .set_project(&project)
                .set_filter(format!("labels.{} = \"{}\"", label::TOKEN, p.token));
            if let Some(t) = &page {
                call = call.set_page_token(t);
            }
            let out = call
                .send()
                .await
                .map_err(|e| classify("instances.aggregatedList", e))?;
            for scoped in out.items.values() {
                for i in &scoped.instances {
                    // The filter is the server's; the label is checked again here.
                    if i.labels.get(label::TOKEN) != Some(&p.token) {
                        continue;
                    }
                    nodes.push(Node::of(i));
                }
            }
            page = out.next_page_token.filter(|t| !t.is_empty());
            if page.is_none() {
                break;
            }
        }
        nodes.sort_by_key(|n| {
            (
                p.instances
                    .iter()
                    .position(|i| *i == n.name)
                    .unwrap_or(usize::MAX),
                n.name.clone(),
            )
        });
        Ok(nodes)
    }

    /// Why the cluster's down or missing instances are, if GCE preempted one of them since
    /// it last started: the zone's `compute.instances.preempted` system events (GCE marks a
    /// preempted spot VM TERMINATED, and deletes it when its termination action is DELETE,
    /// as skyform's are; the instance itself does not tell a preemption from a stop). Asked
    /// only when some node is not running; a failed look says nothing.
    pub(super) async fn preempted(&self, p: &Private, nodes: &[Node]) -> Option<String> {
        let down: Vec<(usize, &String, Option<&Node>)> = p
            .instances
            .iter()
            .enumerate()
            .map(|(rank, name)| (rank, name, nodes.iter().find(|n| &n.name == name)))
            .filter(|(_, _, n)| n.is_none_or(|n| !n.running()))
            .collect();
        if down.is_empty() {
            return None;
        }
        let zone = p.zone.as_deref()?;
        let c = self.clients().await.ok()?;
        let project = self.project().ok()?;
        let mut events: Vec<(String, Option<i64>)> = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut call = c
                .zone_ops
                .list()
                .set_project(&project)
                .set_zone(zone)
                .set_filter("operationType = \"compute.instances.preempted\"");
            if let Some(t) = &page {
                call = call.set_page_token(t);
            }
            let out = match call.send().await {
                Ok(out) => out,
                Err(e) => {
                    tracing::debug!(
                        "zoneOperations.list: {}",
                        classify("zoneOperations.list", e).message
                    );
                    return None;
                }
            };
            for op in &out.items {
                if op.operation_type.as_deref() != Some("compute.instances.preempted") {
                    continue;
                }
                let target = op.target_link.as_deref().map(short).unwrap_or_default();
                events.push((
                    target.to_string(),
                    op.insert_time.as_deref().and_then(epoch_ms),
                ));
            }
            page = out.next_page_token.filter(|t| !t.is_empty());
            if page.is_none() {
                break;
            }
        }
        let hit: Vec<(usize, &String)> = down
            .iter()
            .filter(|(_, name, node)| {
                let started = node
                    .and_then(|n| n.last_start.as_deref())
                    .and_then(epoch_ms);
                events.iter().any(|(target, at)| {
                    target == *name
                        && match (started, at) {
                            (Some(s), Some(a)) => *a >= s,
                            _ => true,
                        }
                })
            })
            .map(|(rank, name, _)| (*rank, *name))
            .collect();
        match hit.as_slice() {
            [] => None,
            [(rank, name)] => Some(format!(
                "node {rank} ({name}) was preempted by GCE (spot capacity taken back)"
            )),
            many if many.len() == p.instances.len() => {
                Some("all its instances were preempted by GCE (spot capacity taken back)".into())
            }
            many => Some(format!(
                "nodes {} were preempted by GCE (spot capacity taken back)",
                many.iter()
                    .map(|(rank, name)| format!("{rank} ({name})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The zones of a region that are up, sorted.
    pub(super) async fn zones_of(&self, region: &str) -> Result<Vec<String>, ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let mut zones = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut call = c.zones.list().set_project(&project);
            if let Some(t) = &page {
                call = call.set_page_token(t);
            }
            let out = call.send().await.map_err(|e| classify("zones.list", e))?;
            for z in &out.items {
                let up = z
                    .status
                    .as_ref()
                    .and_then(|s| s.name())
                    .is_none_or(|s| s == "UP");
                if up && z.region.as_deref().map(short) == Some(region) {
                    zones.extend(z.name.clone());
                }
            }
            page = out.next_page_token.filter(|t| !t.is_empty());
            if page.is_none() {
                break;
            }
        }
        zones.sort();
        Ok(zones)
    }

    /// The cluster's firewall rule (made, or found if an earlier call made it): SSH and the
    /// cluster's ports from anywhere, to instances tagged with its name.
    pub(super) async fn firewall(&self, p: &Private, ports: &[u16]) -> Result<(), ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let mut open: Vec<String> = vec!["22".into()];
        open.extend(ports.iter().filter(|p| **p != 22).map(u16::to_string));
        let mut allowed = model::firewall::Allowed::default();
        allowed.ip_protocol = Some("tcp".into());
        allowed.ports = open;
        let mut fw = model::Firewall::default();
        fw.name = Some(p.name.clone());
        fw.description = Some(format!("skyform cluster (token {})", p.token));
        fw.network = Some("global/networks/default".into());
        fw.direction = Some(model::firewall::Direction::Ingress);
        fw.allowed = vec![allowed];
        fw.source_ranges = vec!["0.0.0.0/0".into()];
        fw.target_tags = vec![p.name.clone()];
        let sent = c
            .firewalls
            .insert()
            .set_project(&project)
            .set_request_id(request_id(&p.token, "firewall", 0))
            .set_body(fw)
            .send()
            .await;
        crate::faults::passed(crate::faults::Point::Cloud);
        match sent {
            Ok(op) => self.wait("firewalls.insert", op).await,
            Err(e) if e.http_status_code() == Some(409) => Ok(()),
            Err(e) => Err(classify("firewalls.insert", e)),
        }
    }

    /// The insert of the attempt's firewall rule that GCE has not finished, if any: a run
    /// killed right after asking for the rule leaves it on its way (a rule appears only when
    /// its operation is done), and it must not be forgotten.
    pub(super) async fn firewall_on_its_way(
        &self,
        p: &Private,
    ) -> Result<Option<Operation>, ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let target = format!("/global/firewalls/{}", p.name);
        let mut page: Option<String> = None;
        loop {
            let mut call = c
                .global_ops
                .list()
                .set_project(&project)
                .set_filter("operationType = \"insert\"");
            if let Some(t) = &page {
                call = call.set_page_token(t);
            }
            let out = call
                .send()
                .await
                .map_err(|e| classify("globalOperations.list", e))?;
            if let Some(op) = out.items.into_iter().find(|op| {
                op.status != Some(model::operation::Status::Done)
                    && op
                        .target_link
                        .as_deref()
                        .is_some_and(|l| l.ends_with(&target))
            }) {
                return Ok(Some(op));
            }
            match out.next_page_token {
                Some(t) if !t.is_empty() => page = Some(t),
                _ => return Ok(None),
            }
        }
    }

    /// Whether the attempt's firewall rule exists.
    pub(super) async fn firewall_exists(&self, p: &Private) -> Result<bool, ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        match c
            .firewalls
            .get()
            .set_project(&project)
            .set_firewall(&p.name)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.http_status_code() == Some(404) => Ok(false),
            Err(e) => Err(classify("firewalls.get", e)),
        }
    }

    /// Deletes an attempt's instances (by label and by recorded name) and its firewall rule.
    pub(super) async fn remove(&self, p: &Private) -> Result<(), ProviderError> {
        if p.region.is_none() && p.zone.is_none() && p.instances.is_empty() && p.firewall.is_none()
        {
            // Nothing was asked of GCE for this attempt: it had not even a placement. (An
            // intent with one may have made its firewall rule before a kill.)
            return Ok(());
        }
        self.remove_instances(p).await?;
        if p.firewall.is_none()
            && let Some(op) = self.firewall_on_its_way(p).await?
        {
            // Let the rule be made, to remove it below.
            self.wait("firewalls.insert", op).await?;
        }
        let c = self.clients().await?;
        let project = self.project()?;
        let sent = c
            .firewalls
            .delete()
            .set_project(&project)
            .set_firewall(&p.name)
            .send()
            .await;
        crate::faults::passed(crate::faults::Point::Cloud);
        match sent {
            Ok(op) => match self.wait("firewalls.delete", op).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            Err(e) if e.http_status_code() == Some(404) => Ok(()),
            Err(e) => Err(classify("firewalls.delete", e)),
        }
    }

    /// Deletes an attempt's instances (by label, and by recorded name in its zone) and
    /// waits until they are gone.
    pub(super) async fn remove_instances(&self, p: &Private) -> Result<(), ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let mut doomed: Vec<(String, String)> = self
            .nodes(p)
            .await?
            .into_iter()
            .map(|n| (n.zone, n.name))
            .collect();
        if let Some(z) = &p.zone {
            for name in &p.instances {
                if !doomed.iter().any(|(_, n)| n == name) {
                    doomed.push((z.clone(), name.clone()));
                }
            }
        }
        let mut ops = Vec::new();
        for (zone, name) in &doomed {
            let sent = c
                .instances
                .delete()
                .set_project(&project)
                .set_zone(zone)
                .set_instance(name)
                .set_request_id(request_id(&p.token, &format!("delete-{zone}-{name}"), 0))
                .send()
                .await;
            crate::faults::passed(crate::faults::Point::Cloud);
            match sent {
                Ok(op) => ops.push(op),
                Err(e) if e.http_status_code() == Some(404) => {}
                Err(e) => return Err(classify("instances.delete", e)),
            }
        }
        for op in ops {
            match self.wait("instances.delete", op).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts or stops every instance of a cluster and waits until they are all so.
    pub(super) async fn set_running(&self, p: &Private, run: bool) -> Result<(), ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let nodes = self.nodes(p).await?;
        let mut ops = Vec::new();
        for n in &nodes {
            let sent = if run {
                c.instances
                    .start()
                    .set_project(&project)
                    .set_zone(&n.zone)
                    .set_instance(&n.name)
                    .send()
                    .await
                    .map_err(|e| classify("instances.start", e))?
            } else {
                c.instances
                    .stop()
                    .set_project(&project)
                    .set_zone(&n.zone)
                    .set_instance(&n.name)
                    .send()
                    .await
                    .map_err(|e| classify("instances.stop", e))?
            };
            ops.push(sent);
        }
        for op in ops {
            self.wait(
                if run {
                    "instances.start"
                } else {
                    "instances.stop"
                },
                op,
            )
            .await?;
        }
        let want = if run { "RUNNING" } else { "TERMINATED" };
        let started = Instant::now();
        loop {
            let nodes = self.nodes(p).await?;
            if nodes.iter().all(|n| n.status == want) {
                return Ok(());
            }
            if started.elapsed() > OP_WAIT {
                return Err(ProviderError {
                    kind: ErrorKind::Timeout,
                    message: format!("the instances did not become {want} in time"),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Checks that an image exists (cached): `projects/P/global/images/NAME`,
    /// `projects/P/global/images/family/F`, or a URL ending so.
    pub(super) async fn check_image(&self, image: &str) -> Result<(), ProviderError> {
        if self
            .images_seen
            .lock()
            .map(|s| s.contains(image))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let c = self.clients().await?;
        let path = image
            .find("projects/")
            .map_or(image, |i| &image[i..])
            .to_string();
        let parts: Vec<&str> = path.split('/').collect();
        let found = match parts.as_slice() {
            ["projects", project, "global", "images", "family", family] => c
                .images
                .get_from_family()
                .set_project(*project)
                .set_family(*family)
                .send()
                .await
                .map(|_| ()),
            ["projects", project, "global", "images", name] => c
                .images
                .get()
                .set_project(*project)
                .set_image(*name)
                .send()
                .await
                .map(|_| ()),
            _ => {
                return Err(config(format!(
                    "image_id {image:?} is not a GCE image (projects/PROJECT/global/images/NAME or …/images/family/FAMILY)"
                )));
            }
        };
        found.map_err(|e| {
            let mut err = classify("images.get", e);
            if err.kind == ErrorKind::NotFound {
                err.kind = ErrorKind::Config;
                err.message = format!("the image {image} does not exist ({})", err.message);
            }
            err
        })?;
        if let Ok(mut s) = self.images_seen.lock() {
            s.insert(image.to_string());
        }
        Ok(())
    }
}

/// Milliseconds since the epoch of an RFC 3339 time as GCE writes them
/// (`2026-12-05T06:01:02.345-08:00`, or `Z`); none if it is not one.
pub(super) fn epoch_ms(t: &str) -> Option<i64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, rest) = t.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    // The offset: `Z`, or a sign after the seconds.
    let (clock, offset_min) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (c, sign * (num(oh)? * 60 + num(om)?))
    };
    let mut c = clock.splitn(3, ':');
    let (h, min, sec) = (num(c.next()?)?, num(c.next()?)?, c.next()?);
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let ms = num(&format!("{:0<3}", &frac[..frac.len().min(3)]))?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + min * 60 + num(whole)? - offset_min * 60;
    Some(secs * 1_000 + ms)
}

/// gcloud's application-default credentials file.
pub(super) fn adc_file() -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("CLOUDSDK_CONFIG") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config/gcloud"),
    };
    Some(dir.join("application_default_credentials.json"))
}

/// Whether this is a GCP machine (whose metadata server gives credentials): the BIOS says
/// so, as Google's own libraries check.
pub(super) fn on_gcp() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .is_ok_and(|n| n.trim().starts_with("Google"))
}

/// The last part of a resource URL: `…/zones/us-central1-a` → `us-central1-a`.
pub(super) fn short(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

/// A request id (a UUID, as GCE wants) fixed by the attempt, the call and the node: a
/// retried call carries the same one, so GCE does the work once.
pub(super) fn request_id(token: &str, what: &str, rank: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{token}/{what}/{rank}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}
