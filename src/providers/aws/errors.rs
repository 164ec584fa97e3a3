//! EC2's errors, sorted into what the failover engine does with them: capacity (next zone),
//! quota (next region), configuration (the whole cloud), transient (retry), not found.

use crate::providers::{ErrorKind, ProviderError};
use aws_sdk_ec2 as ec2;
use ec2::error::{ProvideErrorMetadata, SdkError};

/// Sorts an EC2 error into what the failover engine does with it.
pub fn classify<E, R>(op: &str, e: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (kind, message) = match &e {
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, format!("{op}: no answer in time")),
        SdkError::DispatchFailure(_) => (
            ErrorKind::Transient,
            format!(
                "{op}: cannot reach EC2: {}",
                ec2::error::DisplayErrorContext(&e)
            ),
        ),
        SdkError::ResponseError(_) => (ErrorKind::Transient, format!("{op}: unreadable answer")),
        _ => {
            let code = e.code().unwrap_or("Unknown");
            let text = e.message().unwrap_or_default();
            let kind = kind_of(code);
            (
                kind,
                format!("{op}: {code}: {text}")
                    .trim_end_matches([' ', ':'])
                    .to_string(),
            )
        }
    };
    ProviderError { kind, message }
}

/// The failover kind of an EC2 error code.
pub fn kind_of(code: &str) -> ErrorKind {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "SpotMaxPriceTooLow"
        | "Unsupported"
        | "InsufficientFreeAddressesInSubnet" => ErrorKind::Capacity,
        "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "InstanceLimitExceeded"
        | "SecurityGroupLimitExceeded"
        | "KeyPairLimitExceeded"
        | "RulesPerSecurityGroupLimitExceeded" => ErrorKind::Quota,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "OptInRequired"
        | "Blocked"
        | "PendingVerification"
        | "InvalidParameterCombination" => ErrorKind::Config,
        c if c.starts_with("InvalidAMIID") || c.starts_with("AuthFailure") => ErrorKind::Config,
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "RequestTimeout" => ErrorKind::Transient,
        c if c.ends_with(".NotFound") => ErrorKind::NotFound,
        _ => ErrorKind::Other,
    }
}
