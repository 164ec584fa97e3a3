//! GCP Compute Engine: clusters as instances in one zone, made with the official
//! `google-cloud-compute-v1` client.
//!
//! Every insert carries a `requestId` fixed by the attempt, zone and node, so a retried
//! call never makes a second machine, and labels (`skyform-address`, `skyform-lineage`,
//! `skyform-token`) that let refresh find what an interrupted apply made (the full address
//! is in the instance's metadata: labels are lowercase and at most 63 characters). Each
//! attempt owns a firewall rule named after it; destroy removes it with the instances.
//!
//! Errors are classified for the failover engine (`errors`), whether they come on the HTTP
//! answer or inside the finished operation. The client's own retries are off.

mod compute;
pub mod errors;
mod names;

pub use errors::{classify, kind_of};

use super::machines::{self, Fleet, Machine, SetUp, cleaned_up};
use super::{Created, ErrorKind, Observed, Provider, ProviderError, Request, within_attempt};
use crate::model::{Address, Spec};
use crate::optimizer::{Candidate, Offering};
use crate::state::{ResourceState, Status};
use compute::{request_id, short};
use google_cloud_compute_v1::model;
use names::{accelerator_type, default_image, gpus_built_in, label_value, stem};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What managed jobs and services on gcp get: the controller composes them from a cluster
/// and a job (`runs_managed_jobs` is false), so this is said only to a direct call.
const NO_MANAGED: &str = "the gcp backend keeps clusters and jobs only";

/// The default image when the catalogs have none: Ubuntu 22.04 LTS, newest of its family.
const UBUNTU: &str = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts";

/// The labels skyform puts on what it makes.
mod label {
    pub const TOKEN: &str = "skyform-token";
    pub const LINEAGE: &str = "skyform-lineage";
    pub const ADDRESS: &str = "skyform-address";
}

/// Settings of `infra "gcp" { … }` that the backend uses.
#[derive(Debug, Clone, Default)]
pub struct GcpSettings {
    pub project: Option<String>,
    /// A Compute Engine endpoint of its own (the project's fake): anonymous credentials.
    pub endpoint: Option<String>,
    /// A credentials file instead of Application Default Credentials.
    pub credentials_file: Option<PathBuf>,
    /// The ssh public key put in the instances' metadata: `ssh_public_key`, else the
    /// user's `~/.ssh/id_ed25519.pub` or `~/.ssh/id_rsa.pub`; none: skyform's own key.
    pub public_key: Option<PathBuf>,
    /// Where the catalogs are (`gcp/images.csv` names the default images).
    pub catalog_dir: Option<PathBuf>,
}

impl GcpSettings {
    pub fn from_infra(
        settings: Option<&serde_json::Map<String, serde_json::Value>>,
        home: &Path,
    ) -> Self {
        let get = |k: &str| {
            settings
                .and_then(|s| s.get(k))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        let path = |p: String| match p.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => PathBuf::from(p),
        };
        GcpSettings {
            project: get("project"),
            endpoint: get("endpoint"),
            credentials_file: get("credentials_file").map(path),
            public_key: get("ssh_public_key").map(path).or_else(|| {
                ["id_ed25519.pub", "id_rsa.pub"]
                    .iter()
                    .map(|f| home.join(".ssh").join(f))
                    .find(|p| p.is_file())
            }),
            catalog_dir: std::env::var_os("SKYFORM_CATALOG_DIR")
                .map(PathBuf::from)
                .or_else(|| Some(home.join(".skyform/catalogs"))),
        }
    }
}

#[derive(Debug)]
pub struct GcpProvider {
    settings: GcpSettings,
    /// Where skyform keeps its ssh key and the clusters' known_hosts files.
    key_dir: PathBuf,
    clients: tokio::sync::OnceCell<compute::Clients>,
    key: tokio::sync::OnceCell<String>,
    /// Images known to exist.
    images_seen: std::sync::Mutex<BTreeSet<String>>,
    /// Between two looks at an operation or at instances that are starting or stopping.
    pub poll: Duration,
    /// The skyform binary installed on the instances as their agent (this program by
    /// default).
    pub agent_exe: PathBuf,
}

/// What an attempt made, kept in state as the resource's private identifiers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Private {
    lineage: String,
    /// Unique per attempt: the `skyform-token` label and the request ids' seed.
    token: String,
    /// The firewall rule's name, its target tag, and the instances' name stem.
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    /// Instance names, head first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    instances: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firewall: Option<String>,
    /// The skyform build the cluster's runtime runs; none until it was set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build: Option<String>,
    /// The cluster's address, for its runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
}

impl Private {
    fn read(res: &ResourceState) -> Option<Private> {
        let mut p: Private = serde_json::from_value(res.private.clone()).ok()?;
        if p.region.is_none() {
            p.region = res
                .placement
                .as_ref()
                .and_then(|c| c.offering.region.clone());
        }
        Some(p)
    }

    fn value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// One instance as refresh sees it.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    zone: String,
    /// GCE's status: PROVISIONING, STAGING, RUNNING, STOPPING, TERMINATED, …
    status: String,
    private_ip: Option<String>,
    public_ip: Option<String>,
    /// When GCE last started it (RFC 3339): a preemption before that is an old one.
    last_start: Option<String>,
}

impl Node {
    fn of(i: &model::Instance) -> Node {
        let nic = i.network_interfaces.first();
        Node {
            name: i.name.clone().unwrap_or_default(),
            zone: i.zone.as_deref().map(short).unwrap_or_default().to_string(),
            status: i
                .status
                .as_ref()
                .and_then(|s| s.name())
                .unwrap_or_default()
                .to_string(),
            private_ip: nic.and_then(|n| n.network_ip.clone()),
            public_ip: nic
                .and_then(|n| n.access_configs.iter().find_map(|a| a.nat_ip.clone()))
                .filter(|a| !a.is_empty()),
            last_start: i.last_start_timestamp.clone(),
        }
    }

    fn running(&self) -> bool {
        self.status == "RUNNING"
    }
}

impl GcpProvider {
    pub fn new(settings: GcpSettings, key_dir: PathBuf) -> Self {
        GcpProvider {
            settings,
            key_dir,
            clients: tokio::sync::OnceCell::new(),
            key: tokio::sync::OnceCell::new(),
            images_seen: std::sync::Mutex::new(BTreeSet::new()),
            poll: Duration::from_secs(2),
            agent_exe: crate::runtime::link::agent_exe(),
        }
    }

    /// The private key that goes with the public one in the instances' metadata.
    fn private_key(&self) -> PathBuf {
        match &self.settings.public_key {
            Some(p) => p.with_extension(""),
            None => self.key_dir.join("skyform-key"),
        }
    }

    /// The public key: the configured or the user's, else skyform's own, made with
    /// ssh-keygen on first use.
    async fn public_key(&self) -> Result<String, ProviderError> {
        self.key
            .get_or_try_init(|| async {
                match &self.settings.public_key {
                    Some(p) => std::fs::read_to_string(p)
                        .map(|k| k.trim().to_string())
                        .map_err(|e| ProviderError {
                            kind: ErrorKind::Config,
                            message: format!("cannot read the ssh public key {}: {e}", p.display()),
                        }),
                    None => machines::own_key(&self.key_dir).await,
                }
            })
            .await
            .cloned()
    }

    fn fleet(&self) -> Fleet {
        Fleet {
            key_dir: self.key_dir.clone(),
            identity: self.private_key(),
            agent_exe: self.agent_exe.clone(),
        }
    }

    fn machines(nodes: &[Node]) -> Vec<Machine> {
        nodes
            .iter()
            .map(|n| Machine {
                id: n.name.clone(),
                running: n.running(),
                public_ip: n.public_ip.clone(),
                private_ip: n.private_ip.clone(),
            })
            .collect()
    }

    async fn set_up(
        &self,
        p: &mut Private,
        nodes: &[Node],
        how: &SetUp<'_>,
    ) -> Result<(), ProviderError> {
        let build = self
            .fleet()
            .set_up(&p.token, &Self::machines(nodes), how)
            .await?;
        p.build = Some(build);
        p.cluster = Some(how.name.to_string());
        Ok(())
    }

    /// The instance a node of the cluster is, as inserted.
    fn instance(
        req: &Request<'_>,
        p: &Private,
        o: &Offering,
        zone: &str,
        image: &str,
        key: &str,
        rank: usize,
    ) -> Result<model::Instance, ProviderError> {
        let Spec::Cluster(spec) = req.spec else {
            return Err(ProviderError::other(NO_MANAGED));
        };
        let mut i = model::Instance::default();
        i.name = Some(format!("{}-{rank}", p.name));
        i.description = Some(format!("skyform {} node {rank}", req.address));
        i.machine_type = Some(format!("zones/{zone}/machineTypes/{}", o.instance_type));
        let mut params = model::AttachedDiskInitializeParams::default();
        params.source_image = Some(image.to_string());
        params.disk_size_gb = spec.resources.disk_size.map(i64::from);
        params.disk_type = Some(format!("zones/{zone}/diskTypes/pd-balanced"));
        let mut disk = model::AttachedDisk::default();
        disk.boot = Some(true);
        disk.auto_delete = Some(true);
        disk.initialize_params = Some(params);
        i.disks = vec![disk];
        let mut nat = model::AccessConfig::default();
        nat.name = Some("External NAT".into());
        nat.r#type = Some(model::access_config::Type::OneToOneNat);
        let mut nic = model::NetworkInterface::default();
        nic.network = Some("global/networks/default".into());
        nic.access_configs = vec![nat];
        i.network_interfaces = vec![nic];
        i.labels = [
            (label::TOKEN, p.token.clone()),
            (label::LINEAGE, label_value(&p.lineage.to_ascii_lowercase())),
            (label::ADDRESS, label_value(&req.address.to_string())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let item = |k: &str, v: String| {
            let mut it = model::metadata::Items::default();
            it.key = Some(k.into());
            it.value = Some(v);
            it
        };
        let mut meta = model::Metadata::default();
        meta.items = vec![
            // As GCE's guest agent reads it: the user it makes and the key it lets in.
            item("ssh-keys", format!("{}:{key}", machines::USER)),
            item(label::ADDRESS, req.address.to_string()),
        ];
        i.metadata = Some(meta);
        let mut tags = model::Tags::default();
        tags.items = vec![p.name.clone()];
        i.tags = Some(tags);
        let gpus = o.gpus() > 0.0;
        let mut sched = model::Scheduling::default();
        if o.spot {
            sched.provisioning_model = Some(model::scheduling::ProvisioningModel::Spot);
            sched.instance_termination_action =
                Some(model::scheduling::InstanceTerminationAction::Delete);
            sched.automatic_restart = Some(false);
            sched.on_host_maintenance = Some(model::scheduling::OnHostMaintenance::Terminate);
        } else if gpus {
            // GPU machines cannot live-migrate.
            sched.on_host_maintenance = Some(model::scheduling::OnHostMaintenance::Terminate);
            sched.automatic_restart = Some(true);
        }
        i.scheduling = Some(sched);
        if gpus && !gpus_built_in(&o.instance_type) {
            i.guest_accelerators = o
                .accelerators
                .iter()
                .map(|(name, count)| {
                    let mut a = model::AcceleratorConfig::default();
                    a.accelerator_type = Some(format!(
                        "zones/{zone}/acceleratorTypes/{}",
                        accelerator_type(name)
                    ));
                    a.accelerator_count = Some(count.round() as i32);
                    a
                })
                .collect();
        }
        Ok(i)
    }

    /// Inserts the cluster's instances in one zone and waits until they all run; an
    /// instance that ends while starting is a capacity failure.
    async fn launch_in(
        &self,
        req: &Request<'_>,
        p: &Private,
        o: &Offering,
        zone: &str,
        image: &str,
        count: usize,
    ) -> Result<Vec<Node>, ProviderError> {
        let c = self.clients().await?;
        let project = self.project()?;
        let key = self.public_key().await?;
        let mut ops = Vec::new();
        for rank in 0..count {
            let body = Self::instance(req, p, o, zone, image, &key, rank)?;
            let rid = request_id(&p.token, zone, rank);
            let mut tries = 0;
            let op = loop {
                let sent = c
                    .instances
                    .insert()
                    .set_project(&project)
                    .set_zone(zone)
                    .set_request_id(&rid)
                    .set_body(body.clone())
                    .send()
                    .await;
                crate::faults::passed(crate::faults::Point::Cloud);
                match sent {
                    Ok(op) => break Some(op),
                    // Made by an earlier call whose request id GCE no longer remembers.
                    Err(e) if e.http_status_code() == Some(409) => break None,
                    Err(e) => {
                        let err = classify("instances.insert", e);
                        if err.kind == ErrorKind::Transient && tries < 3 {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(500 << tries)).await;
                            continue;
                        }
                        return Err(err);
                    }
                }
            };
            ops.extend(op);
        }
        for op in ops {
            self.wait("instances.insert", op).await?;
        }
        let mut pause = self.poll.min(Duration::from_millis(250));
        loop {
            let nodes = self.nodes(p).await?;
            if let Some(gone) = p.instances.iter().find(|name| {
                nodes
                    .iter()
                    .find(|n| &&n.name == name)
                    .is_none_or(|n| matches!(n.status.as_str(), "TERMINATED" | "STOPPING"))
            }) {
                return Err(ProviderError {
                    kind: ErrorKind::Capacity,
                    message: format!(
                        "instance {gone} ended while starting (capacity was taken back)"
                    ),
                });
            }
            if nodes.len() >= count && nodes.iter().all(Node::running) {
                return Ok(nodes);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.poll);
        }
    }

    /// Launches the cluster in the placement, trying each zone of a regional placement in
    /// turn (what a refused zone made is deleted before the next).
    async fn launch(
        &self,
        req: &Request<'_>,
        p: &mut Private,
        placement: &Candidate,
    ) -> Result<Vec<Node>, ProviderError> {
        let Spec::Cluster(spec) = req.spec else {
            return Err(ProviderError::other(NO_MANAGED));
        };
        let o = &placement.offering;
        let region = o
            .region
            .clone()
            .ok_or_else(|| ProviderError::other("a gcp placement needs a region"))?;
        p.region = Some(region.clone());
        // Nothing is asked of GCP without a project and credentials.
        self.project()?;
        self.clients().await?;
        let image = match &spec.resources.image_id {
            Some(id) => id.clone(),
            None => default_image(self.settings.catalog_dir.as_deref(), o.gpus() > 0.0),
        };
        self.check_image(&image).await?;
        p.firewall = Some(p.name.clone());
        self.firewall(p, &spec.resources.ports).await?;
        let zones = match &o.zone {
            Some(z) => vec![z.clone()],
            None => self.zones_of(&region).await?,
        };
        let count = placement.num_nodes.max(1) as usize;
        let mut refused = Vec::new();
        for zone in zones {
            p.zone = Some(zone.clone());
            p.instances = (0..count).map(|r| format!("{}-{r}", p.name)).collect();
            match self.launch_in(req, p, o, &zone, &image, count).await {
                Ok(nodes) => return Ok(nodes),
                Err(e) if e.kind == ErrorKind::Capacity && o.zone.is_none() => {
                    refused.push(format!("{zone}: {}", e.message));
                    self.remove_instances(p).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError {
            kind: ErrorKind::Capacity,
            message: if refused.is_empty() {
                format!("no zone of {region} is up")
            } else {
                refused.join("; ")
            },
        })
    }

    fn computed(nodes: &[Node], p: &Private, stopped: bool) -> BTreeMap<String, serde_json::Value> {
        machines::computed(
            nodes.iter().map(|n| {
                (
                    n.name.as_str(),
                    n.public_ip.as_deref(),
                    n.private_ip.as_deref(),
                )
            }),
            nodes
                .first()
                .map(|n| n.zone.clone())
                .or_else(|| p.zone.clone()),
            p.build.is_some(),
            stopped,
        )
    }
}

#[async_trait::async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &'static str {
        "gcp"
    }

    /// A create also sets the machines up (workdir, setup), which may rightly take long: it
    /// bounds its wait for capacity itself.
    fn create_is_bounded(&self) -> bool {
        false
    }

    /// Managed jobs come as a cluster and a job on it (the controller composes them).
    fn runs_managed_jobs(&self) -> bool {
        false
    }

    /// Placements on GCP come from the catalogs.
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(Vec::new())
    }

    /// Finds credentials and a project, and says where the credentials come from (no call
    /// to GCP is made).
    async fn check(&self) -> Result<String, ProviderError> {
        let project = self.project()?;
        self.clients().await?;
        let adc = compute::adc_file();
        let source = if let Some(e) = &self.settings.endpoint {
            format!("anonymous, endpoint {e}")
        } else if let Some(f) = &self.settings.credentials_file {
            format!("from {}", f.display())
        } else if let Some(f) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            format!(
                "from GOOGLE_APPLICATION_CREDENTIALS ({})",
                PathBuf::from(f).display()
            )
        } else if adc.as_ref().is_some_and(|p| p.is_file()) {
            "gcloud's application-default login".to_string()
        } else {
            "the metadata server's (this is a GCP machine)".to_string()
        };
        Ok(format!("project {project}, credentials {source}"))
    }

    fn new_private(&self, address: &Address, spec: &Spec, lineage: &str) -> serde_json::Value {
        if matches!(spec, Spec::Job(_)) {
            return super::jobs::new_private();
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        Private {
            lineage: lineage.to_string(),
            name: stem(address, &token),
            token,
            ..Private::default()
        }
        .value()
    }

    /// Imports the instances labelled with a token: `TOKEN` (the `skyform-token` label of
    /// a cluster skyform made), in the configured project. Its firewall rule is found by the
    /// name skyform gave it, which comes from the cluster's name: import it under that name.
    async fn import(&self, address: &Address, id: &str) -> Result<Created, ProviderError> {
        let token = id.rsplit('/').next().unwrap_or(id);
        let mut p = Private {
            name: stem(address, token),
            token: token.to_string(),
            ..Private::default()
        };
        let nodes = self.nodes(&p).await?;
        if nodes.is_empty() {
            return Err(ProviderError {
                kind: ErrorKind::NotFound,
                message: format!("no instance is labelled {}={token}", label::TOKEN),
            });
        }
        p.instances = nodes.iter().map(|n| n.name.clone()).collect();
        p.zone = Some(nodes[0].zone.clone());
        p.region = p
            .zone
            .as_deref()
            .and_then(|z| z.rsplit_once('-'))
            .map(|(r, _)| r.to_string());
        p.firewall = Some(p.name.clone());
        let stopped = nodes.iter().all(|n| !n.running());
        if !stopped {
            p.build = self
                .fleet()
                .runtime_of(&p.token, &Self::machines(&nodes))
                .await;
        }
        Ok(Created {
            computed: Self::computed(&nodes, &p, stopped),
            private: p.value(),
        })
    }

    async fn refresh(
        &self,
        _address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        let spec = match res.spec.as_ref() {
            Spec::Cluster(spec) => spec,
            Spec::Job(_) => return self.fleet().refresh_job(res, cluster).await,
            _ => {
                return Ok(Observed::Gone {
                    reason: NO_MANAGED.into(),
                });
            }
        };
        let Some(mut p) = Private::read(res) else {
            return Ok(Observed::Gone {
                reason: "no instances recorded".into(),
            });
        };
        let nodes = self.nodes(&p).await?;
        let want = spec.num_nodes.max(1) as usize;
        if res.status == Status::Creating {
            // An apply stopped between the inserts and its state write: adopt what it made.
            if nodes.is_empty() {
                // Killed after making its firewall rule but before any insert: a replace
                // removes the rule (a forgotten intent would leak it).
                let reason = "its creation did not start any instance";
                if self.firewall_exists(&p).await? || self.firewall_on_its_way(&p).await?.is_some()
                {
                    return Ok(Observed::Degraded {
                        reason: format!("{reason}, and its firewall rule remains"),
                        computed: BTreeMap::new(),
                    });
                }
                return Ok(Observed::Gone {
                    reason: reason.into(),
                });
            }
            if nodes.len() == want && nodes.iter().all(Node::running) {
                p.instances = nodes.iter().map(|n| n.name.clone()).collect();
                p.zone = Some(nodes[0].zone.clone());
                p.firewall = Some(p.name.clone());
                // Its runtime may have started before the kill; if not, the machines are
                // kept and the plan sets them up (status INIT).
                p.build = self
                    .fleet()
                    .runtime_of(&p.token, &Self::machines(&nodes))
                    .await;
                return Ok(Observed::Adopted(Created {
                    computed: Self::computed(&nodes, &p, false),
                    private: p.value(),
                }));
            }
            return Ok(Observed::Degraded {
                reason: format!(
                    "its creation was interrupted with {} of {want} node(s) running",
                    nodes.iter().filter(|n| n.running()).count()
                ),
                computed: Self::computed(&nodes, &p, false),
            });
        }
        // A spot node GCE took back is said so (not "stopped" or "deleted outside skyform"):
        // GCE records it as a system event in the zone's operations.
        let spot = res.placement.as_ref().is_some_and(|c| c.offering.spot);
        let preempted = if spot {
            self.preempted(&p, &nodes).await
        } else {
            None
        };
        if let (Some(reason), false) = (&preempted, nodes.is_empty()) {
            return Ok(Observed::Degraded {
                reason: reason.clone(),
                computed: Self::computed(&nodes, &p, false),
            });
        }
        if nodes.is_empty() {
            let reason = preempted
                .unwrap_or_else(|| "all its instances were deleted outside skyform".to_string());
            // While its firewall rule remains, a replace removes it.
            if self.firewall_exists(&p).await? {
                return Ok(Observed::Degraded {
                    reason,
                    computed: Self::computed(&nodes, &p, false),
                });
            }
            return Ok(Observed::Gone { reason });
        }
        if let Some((rank, name)) = p
            .instances
            .iter()
            .enumerate()
            .find(|(_, name)| !nodes.iter().any(|n| &n.name == *name))
        {
            return Ok(Observed::Degraded {
                reason: format!("node {rank} ({name}) was deleted outside skyform"),
                computed: Self::computed(&nodes, &p, false),
            });
        }
        let stopped = nodes.iter().all(|n| !n.running());
        if stopped && spec.autostop.as_ref().is_some_and(|a| a.down) {
            // GCE stops a machine that shuts itself down; `down` wants it gone.
            return Ok(Observed::Degraded {
                reason: "it autostopped with down = true: its instances are removed".into(),
                computed: Self::computed(&nodes, &p, true),
            });
        }
        // Running machines whose agents do not run (restarted outside skyform) run no job.
        if !stopped
            && p.build.is_some()
            && let Some(reason) = self
                .fleet()
                .runtime_down(&p.token, &Self::machines(&nodes))
                .await
        {
            return Ok(Observed::Degraded {
                reason,
                computed: Self::computed(&nodes, &p, false),
            });
        }
        Ok(Observed::Up(Self::computed(&nodes, &p, stopped)))
    }

    async fn create(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        let spec = match req.spec {
            Spec::Cluster(spec) => spec,
            Spec::Job(j) => return self.fleet().submit_job(&req, &j.cluster).await,
            _ => {
                return Err(ProviderError {
                    kind: ErrorKind::Config,
                    message: NO_MANAGED.into(),
                });
            }
        };
        let placement = req
            .placement
            .cloned()
            .ok_or_else(|| ProviderError::other("a gcp cluster needs a placement"))?;
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        let made = async {
            // Capacity is bounded by the attempt timeout; setup that follows is not.
            let launch = self.launch(&req, &mut p, &placement);
            let nodes = within_attempt(req.capacity_timeout, launch).await?;
            let name = req.address.to_string();
            let how = SetUp {
                spec,
                placement: Some(&placement),
                name: &name,
                root: Some(&req.root),
                progress: &req.progress,
            };
            self.set_up(&mut p, &nodes, &how).await?;
            Ok::<_, ProviderError>(nodes)
        }
        .await;
        match made {
            Ok(nodes) => Ok(Created {
                computed: Self::computed(&nodes, &p, false),
                private: p.value(),
            }),
            // Nothing of a failed attempt stays behind.
            Err(e) => Err(cleaned_up(e, req.capacity_timeout, self.remove(&p)).await),
        }
    }

    /// Workdir, setup or envs changed, or the setup never finished (status INIT): the
    /// machines stay, and are set up again.
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        let Spec::Cluster(spec) = req.spec else {
            return Ok(Created {
                computed: BTreeMap::new(),
                private: req.private.clone(),
            });
        };
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        let nodes = self.nodes(&p).await?;
        if nodes.is_empty() || nodes.iter().any(|n| !n.running()) {
            return Err(ProviderError::other(
                "the cluster's instances are not all running: `skyform start` it first",
            ));
        }
        let name = req.address.to_string();
        let how = SetUp {
            spec,
            placement: req.placement,
            name: &name,
            root: Some(&req.root),
            progress: &req.progress,
        };
        self.set_up(&mut p, &nodes, &how).await?;
        Ok(Created {
            computed: Self::computed(&nodes, &p, false),
            private: p.value(),
        })
    }

    async fn delete(
        &self,
        _address: &Address,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        if matches!(*res.spec, Spec::Job(_)) {
            return self.fleet().cancel_job(res, cluster).await;
        }
        match Private::read(res) {
            Some(p) => {
                self.remove(&p).await?;
                // Its machines' host keys go with it: their addresses will be someone else's.
                let _ = std::fs::remove_file(self.fleet().known_hosts(&p.token));
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn stop(&self, res: &ResourceState) -> Result<(), ProviderError> {
        let p = Private::read(res).ok_or_else(|| ProviderError::other("no instances recorded"))?;
        self.set_running(&p, false).await
    }

    /// Starts the instances (with new external addresses) and the runtime on them again.
    async fn start(&self, res: &ResourceState) -> Result<serde_json::Value, ProviderError> {
        let Spec::Cluster(spec) = res.spec.as_ref() else {
            return Err(ProviderError::other("only clusters start"));
        };
        let mut p =
            Private::read(res).ok_or_else(|| ProviderError::other("no instances recorded"))?;
        self.set_running(&p, true).await?;
        if p.build.is_some() {
            let nodes = self.nodes(&p).await?;
            let name = p.cluster.clone().unwrap_or_default();
            let quiet = super::Progress::default();
            let how = SetUp {
                spec,
                placement: res.placement.as_deref(),
                name: &name,
                root: None,
                progress: &quiet,
            };
            self.set_up(&mut p, &nodes, &how).await?;
        }
        Ok(p.value())
    }

    /// ssh to the head's external address as `ubuntu` with the key in the instances'
    /// metadata, trusting its host key on first contact (the cluster's own known_hosts).
    fn ssh_entry(&self, res: &ResourceState) -> Result<super::SshEntry, ProviderError> {
        self.fleet().ssh_entry(res)
    }

    fn log_paths(&self, _res: &ResourceState, _cluster: Option<&ResourceState>) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Each rank's log is read on the instance that ran it.
    async fn read_logs(
        &self,
        res: &ResourceState,
        cluster: Option<&ResourceState>,
        offsets: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        self.fleet().job_logs(res, cluster, offsets).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuids_fixed_by_the_call() {
        let a = request_id("tok", "us-central1-a", 0);
        assert_eq!(a, request_id("tok", "us-central1-a", 0));
        assert_ne!(a, request_id("tok", "us-central1-a", 1));
        assert_ne!(a, request_id("tok", "us-central1-b", 0));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn gce_times_are_read_with_their_offsets() {
        use compute::epoch_ms;
        assert_eq!(epoch_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            epoch_ms("2026-12-05T06:01:02.345-08:00"),
            Some(1_796_479_262_345)
        );
        assert_eq!(
            epoch_ms("2024-02-29T23:59:59.000-00:00"),
            Some(1_709_251_199_000)
        );
        assert_eq!(epoch_ms("yesterday"), None);
    }
}
