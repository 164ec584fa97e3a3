//! AWS EC2: clusters as instances launched with RunInstances.
//!
//! Every launch carries a client token derived from the attempt, so a retried call never
//! makes a second machine, and tags (`skyform:address`, `skyform:lineage`, `skyform:token`)
//! that let refresh find what an interrupted apply made. Each attempt owns a security group
//! and a key pair named after it; destroy removes them with the instances.
//!
//! Errors are classified for the failover engine (`classify`): capacity, quota,
//! configuration, transient. The SDK's own retries are off: the engine decides.

mod account;
mod errors;
mod runtime;

pub use errors::{classify, kind_of};

use super::{Created, ErrorKind, Observed, Provider, ProviderError, Request};
use crate::model::{Address, Spec};
use crate::optimizer::{Candidate, Offering};
use crate::state::{ResourceState, Status};
use aws_sdk_ec2 as ec2;
use ec2::error::ProvideErrorMetadata;
use ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceType, MarketType, Placement, ResourceType,
    ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeType,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What managed jobs and services on aws get for now.
const NO_MANAGED: &str = "managed jobs and services on aws are not in this build yet: declare a cluster on aws and run a job on it";

/// Settings of `infra "aws" { … }` that the backend uses.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    pub profile: Option<String>,
    pub endpoint: Option<String>,
    /// Fixed keys instead of the credential chain (for embedding and tests; the HCL block
    /// has no such setting, so keys never sit in configuration files).
    pub static_keys: Option<(String, String)>,
    /// The ssh public key imported into each region: `ssh_public_key`, else the user's
    /// `~/.ssh/id_ed25519.pub` or `~/.ssh/id_rsa.pub`; none: skyform's own key.
    pub public_key: Option<PathBuf>,
}

impl AwsSettings {
    pub fn from_infra(
        settings: Option<&serde_json::Map<String, serde_json::Value>>,
        home: &std::path::Path,
    ) -> Self {
        let get = |k: &str| {
            settings
                .and_then(|s| s.get(k))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        AwsSettings {
            profile: get("profile"),
            endpoint: get("endpoint"),
            static_keys: None,
            public_key: get("ssh_public_key")
                .map(|p| match p.strip_prefix("~/") {
                    Some(rest) => home.join(rest),
                    None => PathBuf::from(p),
                })
                .or_else(|| {
                    ["id_ed25519.pub", "id_rsa.pub"]
                        .iter()
                        .map(|f| home.join(".ssh").join(f))
                        .find(|p| p.is_file())
                }),
        }
    }
}

#[derive(Debug)]
pub struct AwsProvider {
    settings: AwsSettings,
    /// Where skyform keeps the ssh key it imports into each region.
    key_dir: PathBuf,
    sdk: tokio::sync::OnceCell<aws_config::SdkConfig>,
    clients: std::sync::Mutex<BTreeMap<String, ec2::Client>>,
    /// Default images found, per (region, architecture).
    images: tokio::sync::Mutex<BTreeMap<(String, &'static str), Image>>,
    key: tokio::sync::OnceCell<String>,
    /// Between two looks at instances that are starting or stopping.
    pub poll: Duration,
    /// The skyform binary installed on the instances as their agent (this program by
    /// default).
    pub agent_exe: PathBuf,
}

#[derive(Debug, Clone)]
struct Image {
    id: String,
    root_device: String,
}

/// What an attempt made, kept in state as the resource's private identifiers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Private {
    lineage: String,
    /// Unique per attempt: the client token's stem and the `skyform:token` tag.
    token: String,
    /// Security group and key pair name.
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    instances: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    security_group: Option<String>,
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
    id: String,
    state: String,
    zone: Option<String>,
    private_ip: Option<String>,
    public_ip: Option<String>,
    launched: Option<String>,
}

/// The name of a cluster's security group and key pair: `skyform-<name>-<token8>`.
fn group_name(address: &Address, token: &str) -> String {
    let stem: String = address
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("skyform-{stem}-{}", token.get(..8).unwrap_or(token))
}

impl AwsProvider {
    pub fn new(settings: AwsSettings, key_dir: PathBuf) -> Self {
        AwsProvider {
            settings,
            key_dir,
            sdk: tokio::sync::OnceCell::new(),
            clients: std::sync::Mutex::new(BTreeMap::new()),
            images: tokio::sync::Mutex::new(BTreeMap::new()),
            key: tokio::sync::OnceCell::new(),
            poll: Duration::from_secs(2),
            agent_exe: crate::runtime::link::agent_exe(),
        }
    }

    /// The region's client, made on first use from the standard credential chain.
    async fn client(&self, region: &str) -> ec2::Client {
        if let Some(c) = self
            .clients
            .lock()
            .ok()
            .and_then(|m| m.get(region).cloned())
        {
            return c;
        }
        let conf = ec2::config::Builder::from(self.sdk().await)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        let client = ec2::Client::from_conf(conf);
        if let Ok(mut m) = self.clients.lock() {
            m.insert(region.to_string(), client.clone());
        }
        client
    }

    /// The shared SDK configuration, loaded once.
    async fn sdk(&self) -> &aws_config::SdkConfig {
        self.sdk
            .get_or_init(|| async {
                // Every client names its region; a fixed one here keeps the loader from
                // asking the instance metadata service for a default.
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new("us-east-1"))
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(10))
                            .operation_attempt_timeout(Duration::from_secs(60))
                            .build(),
                    );
                if let Some(p) = &self.settings.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(e) = &self.settings.endpoint {
                    loader = loader.endpoint_url(e);
                }
                if let Some((id, secret)) = &self.settings.static_keys {
                    loader = loader.credentials_provider(ec2::config::Credentials::new(
                        id, secret, None, None, "skyform",
                    ));
                }
                loader.load().await
            })
            .await
    }

    /// Instances of an attempt (by its token tag), plus any recorded ids, not yet terminated.
    async fn nodes(&self, client: &ec2::Client, p: &Private) -> Result<Vec<Node>, ProviderError> {
        let out = client
            .describe_instances()
            .filters(filter("tag:skyform:token", [p.token.as_str()]))
            .filters(filter(
                "instance-state-name",
                ["pending", "running", "stopping", "stopped"],
            ))
            .send()
            .await
            .map_err(|e| classify("DescribeInstances", e))?;
        let mut nodes: Vec<Node> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| Node {
                id: i.instance_id().unwrap_or_default().to_string(),
                state: i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
                zone: i
                    .placement()
                    .and_then(|p| p.availability_zone())
                    .map(str::to_string),
                private_ip: i.private_ip_address().map(str::to_string),
                public_ip: i.public_ip_address().map(str::to_string),
                launched: i.ami_launch_index().map(|n| format!("{n:04}")),
            })
            .collect();
        // Head first: the order they were recorded in, then launch index.
        nodes.sort_by_key(|n| {
            (
                p.instances
                    .iter()
                    .position(|i| *i == n.id)
                    .unwrap_or(usize::MAX),
                n.launched.clone(),
                n.id.clone(),
            )
        });
        Ok(nodes)
    }

    /// The id of the attempt's security group, if it exists.
    async fn find_group(
        &self,
        client: &ec2::Client,
        p: &Private,
    ) -> Result<Option<String>, ProviderError> {
        let out = client
            .describe_security_groups()
            .filters(filter("group-name", [p.name.as_str()]))
            .send()
            .await
            .map_err(|e| classify("DescribeSecurityGroups", e))?;
        Ok(out
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(str::to_string))
    }

    /// Whether the attempt's security group or key pair exist (what `remove` removes
    /// besides instances).
    async fn leftovers(&self, client: &ec2::Client, p: &Private) -> Result<bool, ProviderError> {
        if self.find_group(client, p).await?.is_some() {
            return Ok(true);
        }
        match client.describe_key_pairs().key_names(&p.name).send().await {
            Ok(out) => Ok(!out.key_pairs().is_empty()),
            Err(e) if e.code() == Some("InvalidKeyPair.NotFound") => Ok(false),
            Err(e) => Err(classify("DescribeKeyPairs", e)),
        }
    }

    /// Waits until every instance runs; one that ends instead is a capacity failure.
    async fn wait_running(
        &self,
        client: &ec2::Client,
        p: &Private,
        count: usize,
    ) -> Result<Vec<Node>, ProviderError> {
        loop {
            let nodes = self.nodes(client, p).await?;
            let gone: Vec<&String> = p
                .instances
                .iter()
                .filter(|id| !nodes.iter().any(|n| &&n.id == id))
                .collect();
            if !gone.is_empty() {
                return Err(ProviderError {
                    kind: ErrorKind::Capacity,
                    message: format!(
                        "instance {} ended while starting (capacity was taken back)",
                        gone[0]
                    ),
                });
            }
            if nodes.len() >= count && nodes.iter().all(|n| n.state == "running") {
                return Ok(nodes);
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Terminates an attempt's instances and removes its security group and key pair.
    async fn remove(&self, p: &Private) -> Result<(), ProviderError> {
        let Some(region) = &p.region else {
            return Ok(());
        };
        let client = self.client(region).await;
        let mut ids: Vec<String> = self
            .nodes(&client, p)
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        for id in &p.instances {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        if !ids.is_empty() {
            let terminated = client
                .terminate_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await;
            crate::faults::passed(crate::faults::Point::Cloud);
            match terminated {
                Ok(_) => {}
                Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")) => {
                    // Some were gone already: terminate the rest one by one.
                    for id in &ids {
                        match client.terminate_instances().instance_ids(id).send().await {
                            Ok(_) => {}
                            Err(e)
                                if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")) => {
                            }
                            Err(e) => return Err(classify("TerminateInstances", e)),
                        }
                    }
                }
                Err(e) => return Err(classify("TerminateInstances", e)),
            }
        }
        // The group can go once no instance uses it.
        let mut tries = 0;
        loop {
            let req = client.delete_security_group();
            let req = match &p.security_group {
                Some(id) => req.group_id(id),
                None => req.group_name(&p.name),
            };
            let deleted = req.send().await;
            crate::faults::passed(crate::faults::Point::Cloud);
            match deleted {
                Ok(_) => break,
                Err(e)
                    if e.code().is_some_and(|c| {
                        c.starts_with("InvalidGroup.NotFound") || c == "InvalidGroupId.NotFound"
                    }) =>
                {
                    break;
                }
                Err(e) if e.code() == Some("DependencyViolation") && tries < 60 => {
                    tries += 1;
                    tokio::time::sleep(self.poll.max(Duration::from_millis(500))).await;
                }
                Err(e) => return Err(classify("DeleteSecurityGroup", e)),
            }
        }
        let deleted = client.delete_key_pair().key_name(&p.name).send().await;
        crate::faults::passed(crate::faults::Point::Cloud);
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidKeyPair.NotFound") => Ok(()),
            Err(e) => Err(classify("DeleteKeyPair", e)),
        }
    }

    /// Launches the cluster in the placement, trying each zone of a regional placement in
    /// turn; on failure, what was made is removed again.
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
            .ok_or_else(|| ProviderError::other("an aws placement needs a region"))?;
        p.region = Some(region.clone());
        let client = self.client(&region).await;
        let count = placement.num_nodes.max(1) as usize;
        let tags = vec![
            tag("Name", &format!("{}", req.address)),
            tag("skyform:address", &req.address.to_string()),
            tag("skyform:lineage", &p.lineage),
            tag("skyform:token", &p.token),
        ];
        let image = self
            .image(
                &client,
                &region,
                spec.resources.image_id.as_deref(),
                &o.instance_type,
            )
            .await?;
        self.key_pair(&client, p, &tags).await?;
        let sg = self
            .security_group(&client, p, &tags, &spec.resources.ports)
            .await?;
        p.security_group = Some(sg.clone());
        let mut refused = Vec::new();
        for zone in self.zones(&client, o).await? {
            let mut run = client
                .run_instances()
                .image_id(&image.id)
                .instance_type(InstanceType::from(o.instance_type.as_str()))
                .min_count(count as i32)
                .max_count(count as i32)
                .client_token(client_token(&p.token, &zone))
                .key_name(&p.name)
                .security_group_ids(&sg)
                .placement(Placement::builder().availability_zone(&zone).build())
                .tag_specifications(tag_spec(ResourceType::Instance, &tags))
                .tag_specifications(tag_spec(ResourceType::Volume, &tags))
                // Autostop shuts the machines down from inside: with `down` that ends them.
                .instance_initiated_shutdown_behavior(
                    if spec.autostop.as_ref().is_some_and(|a| a.down) {
                        ShutdownBehavior::Terminate
                    } else {
                        ShutdownBehavior::Stop
                    },
                );
            if o.spot {
                run = run.instance_market_options(
                    InstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::Spot)
                        .spot_options(
                            SpotMarketOptions::builder()
                                .spot_instance_type(SpotInstanceType::OneTime)
                                .instance_interruption_behavior(
                                    InstanceInterruptionBehavior::Terminate,
                                )
                                .build(),
                        )
                        .build(),
                );
            }
            if let Some(gb) = spec.resources.disk_size {
                run = run.block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(&image.root_device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(gb as i32)
                                .volume_type(VolumeType::Gp3)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                );
            }
            let ran = run.send().await;
            crate::faults::passed(crate::faults::Point::Cloud);
            match ran {
                Ok(out) => {
                    p.zone = Some(zone.clone());
                    p.instances = out
                        .instances()
                        .iter()
                        .filter_map(|i| i.instance_id().map(str::to_string))
                        .collect();
                    return self.wait_running(&client, p, count).await;
                }
                Err(e) => {
                    let err = classify("RunInstances", e);
                    if err.kind == ErrorKind::Capacity && o.zone.is_none() {
                        refused.push(format!("{zone}: {}", err.message));
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        Err(ProviderError {
            kind: ErrorKind::Capacity,
            message: if refused.is_empty() {
                format!("no availability zone in {region}")
            } else {
                refused.join("; ")
            },
        })
    }

    fn computed(nodes: &[Node], p: &Private, stopped: bool) -> BTreeMap<String, serde_json::Value> {
        super::machines::computed(
            nodes.iter().map(|n| {
                (
                    n.id.as_str(),
                    n.public_ip.as_deref(),
                    n.private_ip.as_deref(),
                )
            }),
            nodes
                .first()
                .and_then(|n| n.zone.clone())
                .or_else(|| p.zone.clone()),
            p.build.is_some(),
            stopped,
        )
    }

    async fn set_running(&self, res: &ResourceState, run: bool) -> Result<(), ProviderError> {
        let p = Private::read(res).ok_or_else(|| ProviderError::other("no instances recorded"))?;
        let region = p
            .region
            .clone()
            .ok_or_else(|| ProviderError::other("no region recorded"))?;
        let client = self.client(&region).await;
        let ids = p.instances.clone();
        if run {
            client
                .start_instances()
                .set_instance_ids(Some(ids))
                .send()
                .await
                .map_err(|e| classify("StartInstances", e))?;
        } else {
            client
                .stop_instances()
                .set_instance_ids(Some(ids))
                .send()
                .await
                .map_err(|e| classify("StopInstances", e))?;
        }
        let want = if run { "running" } else { "stopped" };
        loop {
            let nodes = self.nodes(&client, &p).await?;
            if nodes.iter().all(|n| n.state == want) {
                return Ok(());
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[async_trait::async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
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

    /// Placements on AWS come from the catalogs.
    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        Ok(Vec::new())
    }

    /// Resolves credentials through the chain (no call to AWS is made).
    async fn check(&self) -> Result<String, ProviderError> {
        use ec2::config::ProvideCredentials;
        let sdk = self.sdk().await;
        let Some(provider) = sdk.credentials_provider() else {
            return Err(ProviderError {
                kind: ErrorKind::Config,
                message: "no credential provider is configured".into(),
            });
        };
        match provider.provide_credentials().await {
            Ok(c) => {
                let id = c.access_key_id();
                let shown: String = id.chars().take(4).collect();
                let mut text = format!("credentials found (key {shown}…)");
                if let Some(e) = &self.settings.endpoint {
                    text.push_str(&format!(", endpoint {e}"));
                }
                Ok(text)
            }
            Err(e) => {
                tracing::debug!(error = %ec2::error::DisplayErrorContext(&e), "no AWS credentials");
                Err(ProviderError {
                    kind: ErrorKind::Config,
                    message: "no credentials found (environment, profile, SSO, or instance role)"
                        .into(),
                })
            }
        }
    }

    fn new_private(&self, address: &Address, spec: &Spec, lineage: &str) -> serde_json::Value {
        if matches!(spec, Spec::Job(_)) {
            return super::jobs::new_private();
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        Private {
            lineage: lineage.to_string(),
            name: group_name(address, &token),
            token,
            ..Private::default()
        }
        .value()
    }

    /// Imports the instances tagged with a token: `REGION/TOKEN` (the `skyform:token` tag of
    /// a cluster skyform made). Its security group and key pair are found by the name
    /// skyform gave them, which comes from the cluster's name: import it under that name.
    async fn import(&self, address: &Address, id: &str) -> Result<Created, ProviderError> {
        let (region, token) = id.split_once('/').ok_or_else(|| ProviderError {
            kind: ErrorKind::Config,
            message: format!("{id:?} is not REGION/TOKEN"),
        })?;
        let mut p = Private {
            name: group_name(address, token),
            token: token.to_string(),
            region: Some(region.to_string()),
            ..Private::default()
        };
        let client = self.client(region).await;
        let nodes = self.nodes(&client, &p).await?;
        if nodes.is_empty() {
            return Err(ProviderError {
                kind: ErrorKind::NotFound,
                message: format!("no instance in {region} is tagged skyform:token={token}"),
            });
        }
        p.instances = nodes.iter().map(|n| n.id.clone()).collect();
        p.zone = nodes[0].zone.clone();
        let stopped = nodes.iter().all(|n| n.state != "running");
        if !stopped {
            p.build = self.runtime_of(&p, &nodes).await;
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
        _cluster: Option<&ResourceState>,
    ) -> Result<Observed, ProviderError> {
        let spec = match res.spec.as_ref() {
            Spec::Cluster(spec) => spec,
            Spec::Job(_) => return self.fleet().refresh_job(res, _cluster).await,
            _ => {
                return Ok(Observed::Gone {
                    reason: "the aws backend keeps clusters and jobs only".into(),
                });
            }
        };
        let Some(mut p) = Private::read(res) else {
            return Ok(Observed::Gone {
                reason: "no instances recorded".into(),
            });
        };
        let Some(region) = p.region.clone() else {
            return Ok(Observed::Gone {
                reason: "no region recorded".into(),
            });
        };
        let client = self.client(&region).await;
        let nodes = self.nodes(&client, &p).await?;
        let want = spec.num_nodes.max(1) as usize;
        if res.status == Status::Creating {
            // An apply stopped between RunInstances and its state write: adopt what it made.
            if nodes.is_empty() {
                // Killed after making its key pair or group but before RunInstances: a
                // replace removes them (a forgotten intent would leak them).
                let reason = "its creation did not start any instance";
                if self.leftovers(&client, &p).await? {
                    return Ok(Observed::Degraded {
                        reason: format!("{reason}, and its security group or key pair remain"),
                        computed: BTreeMap::new(),
                    });
                }
                return Ok(Observed::Gone {
                    reason: reason.into(),
                });
            }
            if nodes.len() == want && nodes.iter().all(|n| n.state == "running") {
                p.instances = nodes.iter().map(|n| n.id.clone()).collect();
                p.zone = nodes[0].zone.clone();
                p.security_group = None;
                // Its runtime may have started before the kill; if not, the machines are
                // kept and the plan sets them up (status INIT).
                p.build = self.runtime_of(&p, &nodes).await;
                return Ok(Observed::Adopted(Created {
                    computed: Self::computed(&nodes, &p, false),
                    private: p.value(),
                }));
            }
            return Ok(Observed::Degraded {
                reason: format!(
                    "its creation was interrupted with {} of {want} node(s) running",
                    nodes.iter().filter(|n| n.state == "running").count()
                ),
                computed: Self::computed(&nodes, &p, false),
            });
        }
        if nodes.is_empty() {
            let reason = "all its instances were terminated outside skyform".to_string();
            // While its security group or key pair remain, a replace removes them.
            if self.leftovers(&client, &p).await? {
                return Ok(Observed::Degraded {
                    reason,
                    computed: Self::computed(&nodes, &p, false),
                });
            }
            return Ok(Observed::Gone { reason });
        }
        if let Some((rank, id)) = p
            .instances
            .iter()
            .enumerate()
            .find(|(_, id)| !nodes.iter().any(|n| &n.id == *id))
        {
            return Ok(Observed::Degraded {
                reason: format!("node {rank} ({id}) was terminated outside skyform"),
                computed: Self::computed(&nodes, &p, false),
            });
        }
        let stopped = !nodes.is_empty() && nodes.iter().all(|n| n.state != "running");
        // Running machines whose agents do not run (restarted outside skyform) run no job.
        if !stopped
            && p.build.is_some()
            && let Some(reason) = self.runtime_down(&p, &nodes).await
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
            .ok_or_else(|| ProviderError::other("an aws cluster needs a placement"))?;
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        let made = async {
            // Capacity is bounded by the attempt timeout; setup that follows is not.
            let nodes =
                tokio::time::timeout(req.capacity_timeout, self.launch(&req, &mut p, &placement))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ProviderError {
                            kind: ErrorKind::Timeout,
                            message: format!(
                                "no answer within {} (the attempt timeout)",
                                humantime::format_duration(req.capacity_timeout)
                            ),
                        })
                    })?;
            let name = req.address.to_string();
            let how = runtime::SetUp {
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
            Err(e) => {
                // Nothing of a failed attempt stays behind; a region that does not answer
                // is left to the engine, which records what it could not remove.
                let cleaned = tokio::time::timeout(req.capacity_timeout, self.remove(&p)).await;
                match cleaned {
                    Ok(Err(c)) => Err(ProviderError {
                        kind: e.kind,
                        message: format!("{}; and cleaning up failed: {}", e.message, c.message),
                    }),
                    _ => Err(e),
                }
            }
        }
    }

    /// Workdir, setup or envs changed, or the setup never finished (status INIT): the
    /// machines stay, and are set up again.
    async fn update(&self, req: Request<'_>) -> Result<Created, ProviderError> {
        let Spec::Cluster(spec) = req.spec else {
            // Jobs change by replacement only.
            return Ok(Created {
                computed: BTreeMap::new(),
                private: req.private.clone(),
            });
        };
        let mut p: Private = serde_json::from_value(req.private.clone())
            .map_err(|e| ProviderError::other(format!("bad private state: {e}")))?;
        let region = p
            .region
            .clone()
            .or_else(|| req.placement.and_then(|c| c.offering.region.clone()))
            .ok_or_else(|| ProviderError::other("no region recorded"))?;
        let client = self.client(&region).await;
        let nodes = self.nodes(&client, &p).await?;
        if nodes.is_empty() || nodes.iter().any(|n| n.state != "running") {
            return Err(ProviderError::other(
                "the cluster's instances are not all running: `skyform start` it first",
            ));
        }
        let name = req.address.to_string();
        let how = runtime::SetUp {
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
        _cluster: Option<&ResourceState>,
    ) -> Result<(), ProviderError> {
        if matches!(*res.spec, Spec::Job(_)) {
            return self.fleet().cancel_job(res, _cluster).await;
        }
        match Private::read(res) {
            Some(p) => {
                self.remove(&p).await?;
                // Its machines' host keys go with it: their addresses will be someone else's.
                let _ = std::fs::remove_file(self.known_hosts(&p.token));
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn stop(&self, res: &ResourceState) -> Result<(), ProviderError> {
        self.set_running(res, false).await
    }

    /// Starts the instances (with new public addresses) and the runtime on them again.
    async fn start(&self, res: &ResourceState) -> Result<serde_json::Value, ProviderError> {
        let Spec::Cluster(spec) = res.spec.as_ref() else {
            return Err(ProviderError::other("only clusters start"));
        };
        self.set_running(res, true).await?;
        let mut p =
            Private::read(res).ok_or_else(|| ProviderError::other("no instances recorded"))?;
        if p.build.is_some() {
            let region = p.region.clone().unwrap_or_default();
            let nodes = self.nodes(&self.client(&region).await, &p).await?;
            let name = p.cluster.clone().unwrap_or_default();
            let quiet = super::Progress::default();
            let how = runtime::SetUp {
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

    /// ssh to the head's public address as `ubuntu` (the default image's user) with the
    /// imported key, trusting its host key on first contact (the cluster's own known_hosts).
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

/// One token per attempt and zone (EC2 allows 64 ASCII characters).
fn client_token(token: &str, zone: &str) -> String {
    let mut t = format!("{token}-{zone}");
    t.truncate(64);
    t
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn tag_spec(kind: ResourceType, tags: &[Tag]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags.to_vec()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_steer_failover() {
        assert_eq!(kind_of("InsufficientInstanceCapacity"), ErrorKind::Capacity);
        assert_eq!(kind_of("SpotMaxPriceTooLow"), ErrorKind::Capacity);
        assert_eq!(kind_of("VcpuLimitExceeded"), ErrorKind::Quota);
        assert_eq!(kind_of("MaxSpotInstanceCountExceeded"), ErrorKind::Quota);
        assert_eq!(kind_of("AuthFailure"), ErrorKind::Config);
        assert_eq!(kind_of("InvalidAMIID.NotFound"), ErrorKind::Config);
        assert_eq!(kind_of("RequestLimitExceeded"), ErrorKind::Transient);
        assert_eq!(kind_of("InvalidGroup.NotFound"), ErrorKind::NotFound);
        assert_eq!(kind_of("Whatever"), ErrorKind::Other);
    }

    #[test]
    fn tokens_fit_ec2() {
        let t = client_token(&"a".repeat(32), "ap-southeast-2-akl-1a");
        assert!(t.len() <= 64);
    }
}
