//! What a launch needs from the account, made or found once per region: the Ubuntu image
//! for the instance's architecture, the cluster's security group, the imported key pair and
//! the ssh keys behind it, and the region's zones.

use super::instances::{filter, tag_spec};
use super::{AwsProvider, Image, Private, classify};
use crate::optimizer::Offering;
use crate::providers::{ErrorKind, ProviderError};
use aws_sdk_ec2 as ec2;
use ec2::error::ProvideErrorMetadata;
use ec2::types::{IpPermission, IpRange, ResourceType, Tag};
use std::path::PathBuf;

/// Canonical's account: the owner of the official Ubuntu images.
const CANONICAL: &str = "099720109477";

impl AwsProvider {
    /// The private key that goes with the imported public one.
    pub(super) fn private_key(&self) -> PathBuf {
        match &self.settings.public_key {
            Some(p) => p.with_extension(""),
            None => self.key_dir.join("skyform-key"),
        }
    }

    /// The public key to import: the configured or the user's, else skyform's own, made
    /// with ssh-keygen on first use (`machines::own_key`).
    pub(super) async fn public_key(&self) -> Result<String, ProviderError> {
        self.key
            .get_or_try_init(|| async {
                if let Some(p) = &self.settings.public_key {
                    return std::fs::read_to_string(p)
                        .map(|k| k.trim().to_string())
                        .map_err(|e| ProviderError {
                            kind: ErrorKind::Config,
                            message: format!("cannot read the ssh public key {}: {e}", p.display()),
                        });
                }
                crate::providers::machines::own_key(&self.key_dir).await
            })
            .await
            .cloned()
    }

    /// `image_id`, else the newest official Ubuntu image for the instance's architecture:
    /// 24.04 if the region has it, else any Ubuntu server release.
    pub(super) async fn image(
        &self,
        client: &ec2::Client,
        region: &str,
        spec_image: Option<&str>,
        instance_type: &str,
    ) -> Result<Image, ProviderError> {
        if let Some(id) = spec_image {
            if id.starts_with("docker:") {
                return Err(ProviderError {
                    kind: ErrorKind::Config,
                    message: format!(
                        "image_id {id:?} is a container image; EC2 needs an AMI id (ami-…)"
                    ),
                });
            }
            let out = client
                .describe_images()
                .image_ids(id)
                .send()
                .await
                .map_err(|e| classify("DescribeImages", e))?;
            let root = out
                .images()
                .first()
                .and_then(|i| i.root_device_name())
                .unwrap_or("/dev/sda1");
            return Ok(Image {
                id: id.to_string(),
                root_device: root.to_string(),
            });
        }
        let arch = architecture(instance_type);
        let mut cache = self.images.lock().await;
        if let Some(i) = cache.get(&(region.to_string(), arch)) {
            return Ok(i.clone());
        }
        let ubuntu_arch = if arch == "arm64" { "arm64" } else { "amd64" };
        let mut found = None;
        for pattern in [
            format!("ubuntu/images/hvm-ssd*/ubuntu-*-24.04-{ubuntu_arch}-server-*"),
            format!("ubuntu/images/hvm-ssd*/ubuntu-*-{ubuntu_arch}-server-*"),
        ] {
            let out = client
                .describe_images()
                .owners(CANONICAL)
                .filters(filter("name", [pattern.as_str()]))
                .filters(filter("state", ["available"]))
                .filters(filter("architecture", [arch]))
                .send()
                .await
                .map_err(|e| classify("DescribeImages", e))?;
            found = out
                .images()
                .iter()
                .filter_map(|i| {
                    let id = i.image_id()?;
                    let name = i.name().unwrap_or_default();
                    Some((
                        ubuntu_version(name),
                        i.creation_date().unwrap_or_default().to_string(),
                        name.to_string(),
                        Image {
                            id: id.to_string(),
                            root_device: i.root_device_name().unwrap_or("/dev/sda1").to_string(),
                        },
                    ))
                })
                .max_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)))
                .map(|t| t.3);
            if found.is_some() {
                break;
            }
        }
        let image = found.ok_or_else(|| ProviderError {
            kind: ErrorKind::Config,
            message: format!(
                "no Ubuntu image from Canonical found in {region} for {arch}; set image_id in the cluster's resources"
            ),
        })?;
        cache.insert((region.to_string(), arch), image.clone());
        Ok(image)
    }

    /// The security group of an attempt (made, or found if an earlier call made it), with SSH
    /// and the cluster's ports open.
    pub(super) async fn security_group(
        &self,
        client: &ec2::Client,
        p: &Private,
        tags: &[Tag],
        ports: &[u16],
    ) -> Result<String, ProviderError> {
        let made = client
            .create_security_group()
            .group_name(&p.name)
            .description("skyform cluster")
            .tag_specifications(tag_spec(ResourceType::SecurityGroup, tags))
            .send()
            .await;
        crate::faults::passed(crate::faults::Point::Cloud);
        let id = match made {
            Ok(out) => out.group_id().unwrap_or_default().to_string(),
            Err(e) if e.code() == Some("InvalidGroup.Duplicate") => {
                self.find_group(client, p).await?.unwrap_or_default()
            }
            Err(e) => return Err(classify("CreateSecurityGroup", e)),
        };
        let mut open: Vec<u16> = vec![22];
        open.extend(ports.iter().copied().filter(|p| *p != 22));
        let perms: Vec<IpPermission> = open
            .iter()
            .map(|port| {
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(i32::from(*port))
                    .to_port(i32::from(*port))
                    .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                    .build()
            })
            .collect();
        let authorized = client
            .authorize_security_group_ingress()
            .group_id(&id)
            .set_ip_permissions(Some(perms))
            .send()
            .await;
        crate::faults::passed(crate::faults::Point::Cloud);
        match authorized {
            Ok(_) => {}
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => {}
            Err(e) => return Err(classify("AuthorizeSecurityGroupIngress", e)),
        }
        Ok(id)
    }

    pub(super) async fn key_pair(
        &self,
        client: &ec2::Client,
        p: &Private,
        tags: &[Tag],
    ) -> Result<(), ProviderError> {
        let key = self.public_key().await?;
        let imported = client
            .import_key_pair()
            .key_name(&p.name)
            .public_key_material(ec2::primitives::Blob::new(key.into_bytes()))
            .tag_specifications(tag_spec(ResourceType::KeyPair, tags))
            .send()
            .await;
        crate::faults::passed(crate::faults::Point::Cloud);
        match imported {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidKeyPair.Duplicate") => Ok(()),
            Err(e) => Err(classify("ImportKeyPair", e)),
        }
    }

    /// The zones to try for a placement: its own, else the region's available zones.
    pub(super) async fn zones(
        &self,
        client: &ec2::Client,
        o: &Offering,
    ) -> Result<Vec<String>, ProviderError> {
        if let Some(z) = &o.zone {
            return Ok(vec![z.clone()]);
        }
        let out = client
            .describe_availability_zones()
            .filters(filter("state", ["available"]))
            .filters(filter("zone-type", ["availability-zone"]))
            .send()
            .await
            .map_err(|e| classify("DescribeAvailabilityZones", e))?;
        let mut zones: Vec<String> = out
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name().map(str::to_string))
            .collect();
        zones.sort();
        Ok(zones)
    }
}

/// `arm64` for Graviton families (m7g, c6gn, t4g, …), else `x86_64`.
fn architecture(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or_default();
    let after_digit = family
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .trim_start_matches(|c: char| c.is_ascii_digit());
    if after_digit.starts_with('g') {
        "arm64"
    } else {
        "x86_64"
    }
}

/// `24.04` from `ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-…`, as a
/// sortable pair.
fn ubuntu_version(name: &str) -> (u32, u32) {
    name.split('-')
        .find_map(|part| {
            let (a, b) = part.split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_is_arm() {
        assert_eq!(architecture("m7g.large"), "arm64");
        assert_eq!(architecture("c6gn.xlarge"), "arm64");
        assert_eq!(architecture("g5g.xlarge"), "arm64");
        assert_eq!(architecture("g5.xlarge"), "x86_64");
        assert_eq!(architecture("p4d.24xlarge"), "x86_64");
        assert_eq!(architecture("m5.large"), "x86_64");
    }

    #[test]
    fn newest_ubuntu_sorts_first() {
        assert!(
            ubuntu_version("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250101")
                > ubuntu_version("ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20250101")
        );
        assert_eq!(ubuntu_version("other"), (0, 0));
    }
}
