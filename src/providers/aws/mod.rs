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
mod instances;
mod runtime;

pub use errors::{classify, kind_of};

use super::machines::cleaned_up;
use super::{Created, ErrorKind, Observed, Provider, ProviderError, Request, within_attempt};
use crate::model::{Address, Spec};
use crate::optimizer::Offering;
use crate::state::{ResourceState, Status};
use aws_sdk_ec2 as ec2;
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
            let launch = self.launch(&req, &mut p, &placement);
            let nodes = within_attempt(req.capacity_timeout, launch).await?;
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
            // Nothing of a failed attempt stays behind.
            Err(e) => Err(cleaned_up(e, req.capacity_timeout, self.remove(&p)).await),
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

#[cfg(test)]
mod tests {
    use super::instances::client_token;
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
