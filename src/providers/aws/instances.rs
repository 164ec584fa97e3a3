//! The EC2 calls of one attempt: launching its instances with their key pair and
//! security group, finding them again by tag, starting, stopping and removing them.

use super::errors::classify;
use super::{AwsProvider, NO_MANAGED, Private};
use crate::model::Spec;
use crate::optimizer::Candidate;
use crate::providers::{ErrorKind, ProviderError, Request};
use crate::state::ResourceState;
use aws_sdk_ec2 as ec2;
use ec2::error::ProvideErrorMetadata;
use ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceType, MarketType, Placement, ResourceType,
    ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeType,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// One instance as refresh sees it.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) id: String,
    pub(super) state: String,
    pub(super) zone: Option<String>,
    pub(super) private_ip: Option<String>,
    pub(super) public_ip: Option<String>,
    pub(super) launched: Option<String>,
}

impl AwsProvider {
    /// Instances of an attempt (by its token tag), plus any recorded ids, not yet terminated.
    pub(super) async fn nodes(
        &self,
        client: &ec2::Client,
        p: &Private,
    ) -> Result<Vec<Node>, ProviderError> {
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
    pub(super) async fn find_group(
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
    pub(super) async fn leftovers(
        &self,
        client: &ec2::Client,
        p: &Private,
    ) -> Result<bool, ProviderError> {
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
    pub(super) async fn wait_running(
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
    pub(super) async fn remove(&self, p: &Private) -> Result<(), ProviderError> {
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
    pub(super) async fn launch(
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

    pub(super) fn computed(
        nodes: &[Node],
        p: &Private,
        stopped: bool,
    ) -> BTreeMap<String, serde_json::Value> {
        crate::providers::machines::computed(
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

    pub(super) async fn set_running(
        &self,
        res: &ResourceState,
        run: bool,
    ) -> Result<(), ProviderError> {
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

/// One token per attempt and zone (EC2 allows 64 ASCII characters).
pub(super) fn client_token(token: &str, zone: &str) -> String {
    let mut t = format!("{token}-{zone}");
    t.truncate(64);
    t
}

pub(super) fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}

pub(super) fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

pub(super) fn tag_spec(kind: ResourceType, tags: &[Tag]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags.to_vec()))
        .build()
}
