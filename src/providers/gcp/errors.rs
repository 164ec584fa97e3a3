//! Compute Engine's errors, sorted into what the failover engine does with them: capacity
//! (next zone), quota (next region; the whole cloud for a global quota), configuration
//! (the whole cloud), transient (retry), not found. They arrive two ways — on the HTTP
//! answer (status, `error.errors[].reason`, message) and inside a finished operation
//! (`error.errors[].code`, message) — and both are read the same way here.

use crate::providers::{ErrorKind, ProviderError};
use google_cloud_gax::error::Error;
use google_cloud_gax::error::rpc::StatusDetails;

/// What one error says: its HTTP status (if any), its codes or reasons, and its message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Said {
    pub http: Option<u16>,
    pub codes: Vec<String>,
    pub message: String,
}

/// The failover kind of what an error says.
pub fn kind_of(said: &Said) -> ErrorKind {
    let has = |names: &[&str]| {
        said.codes
            .iter()
            .any(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))
    };
    let text = said.message.to_ascii_lowercase();
    if has(&[
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "resourceExhausted",
    ]) || text.contains("does not have enough resources")
        || text.contains("does not exist in zone")
    {
        return ErrorKind::Capacity;
    }
    if has(&["QUOTA_EXCEEDED", "quotaExceeded"]) || text.contains("quota '") {
        // A project-wide quota (GPUS_ALL_REGIONS, say) is the same in every region.
        return if text.contains("globally") || text.contains("all_regions") {
            ErrorKind::Config
        } else {
            ErrorKind::Quota
        };
    }
    if has(&[
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "RATE_LIMIT_EXCEEDED",
        "backendError",
        "internalError",
        "TOO_MANY_REQUESTS",
    ]) {
        return ErrorKind::Transient;
    }
    if has(&[
        "forbidden",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "authError",
        "accessNotConfigured",
        "SERVICE_DISABLED",
        "billingNotEnabled",
        "projectNotFound",
    ]) {
        return ErrorKind::Config;
    }
    if has(&["notFound", "NOT_FOUND", "RESOURCE_NOT_FOUND"]) {
        return ErrorKind::NotFound;
    }
    match said.http {
        Some(429 | 500..) => ErrorKind::Transient,
        Some(401 | 403) => ErrorKind::Config,
        Some(404) => ErrorKind::NotFound,
        // A request GCE refuses as written (an image that does not exist, a bad field) is
        // refused the same way in every zone of this cloud.
        Some(400) => ErrorKind::Config,
        _ => ErrorKind::Other,
    }
}

/// What an error of the client says (an HTTP answer, or no answer at all).
pub fn said_of(e: &Error) -> Said {
    let mut said = Said {
        http: e.http_status_code(),
        ..Said::default()
    };
    if let Some(status) = e.status() {
        said.message = status.message.clone();
        let code = format!("{:?}", status.code);
        if code != "Unknown" && code != "Ok" {
            said.codes.push(to_screaming(&code));
        }
        for d in &status.details {
            if let StatusDetails::ErrorInfo(info) = d
                && !info.reason.is_empty()
            {
                said.codes.push(info.reason.clone());
            }
        }
    } else if let Some(body) = e.http_payload() {
        said.message = String::from_utf8_lossy(body).trim().to_string();
    } else {
        said.message = e.to_string();
    }
    said
}

/// Sorts an error of the client into what the failover engine does with it.
pub fn classify(op: &str, e: Error) -> ProviderError {
    if e.is_timeout() {
        return ProviderError {
            kind: ErrorKind::Timeout,
            message: format!("{op}: no answer in time"),
        };
    }
    if e.is_connect() || e.is_io() || e.is_transport() {
        return ProviderError {
            kind: ErrorKind::Transient,
            message: format!("{op}: cannot reach Compute Engine: {e}"),
        };
    }
    if e.is_authentication() {
        return ProviderError {
            kind: ErrorKind::Config,
            message: format!("{op}: no usable Google Cloud credentials: {e}"),
        };
    }
    let said = said_of(&e);
    error(op, &said)
}

/// The error a finished operation carries, if it failed.
pub fn of_operation(
    op: &str,
    done: &google_cloud_compute_v1::model::Operation,
) -> Option<ProviderError> {
    let errors = &done.error.as_ref()?.errors;
    if errors.is_empty() {
        return None;
    }
    let said = Said {
        http: done
            .http_error_status_code
            .and_then(|c| u16::try_from(c).ok()),
        codes: errors.iter().filter_map(|e| e.code.clone()).collect(),
        message: errors
            .iter()
            .filter_map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; "),
    };
    Some(error(op, &said))
}

fn error(op: &str, said: &Said) -> ProviderError {
    let code = said.codes.first().map(String::as_str).unwrap_or_default();
    let mut message = format!("{op}: ");
    if !code.is_empty() {
        message.push_str(code);
        message.push_str(": ");
    }
    message.push_str(&said.message);
    ProviderError {
        kind: kind_of(said),
        message: message.trim_end_matches([' ', ':']).to_string(),
    }
}

/// `PermissionDenied` → `PERMISSION_DENIED`.
fn to_screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(http: Option<u16>, codes: &[&str], message: &str) -> Said {
        Said {
            http,
            codes: codes.iter().map(|c| c.to_string()).collect(),
            message: message.into(),
        }
    }

    #[test]
    fn capacity_blocks_the_zone() {
        for s in [
            said(
                None,
                &["ZONE_RESOURCE_POOL_EXHAUSTED"],
                "The zone 'projects/p/zones/us-central1-a' does not have enough resources available to fulfill the request.",
            ),
            said(
                Some(503),
                &["ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"],
                "",
            ),
            said(Some(503), &["resourceExhausted"], ""),
            said(
                None,
                &["UNKNOWN"],
                "The zone 'x' does not have enough resources available",
            ),
            said(
                Some(400),
                &["invalid"],
                "Invalid value for field 'resource.machineType': 'a2-highgpu-1g' does not exist in zone us-west1-a",
            ),
        ] {
            assert_eq!(kind_of(&s), ErrorKind::Capacity, "{s:?}");
        }
    }

    #[test]
    fn quota_blocks_the_region_or_the_cloud() {
        assert_eq!(
            kind_of(&said(
                None,
                &["QUOTA_EXCEEDED"],
                "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-east4."
            )),
            ErrorKind::Quota
        );
        assert_eq!(
            kind_of(&said(
                Some(403),
                &["quotaExceeded"],
                "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1."
            )),
            ErrorKind::Quota
        );
        assert_eq!(
            kind_of(&said(
                Some(403),
                &["QUOTA_EXCEEDED"],
                "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
            )),
            ErrorKind::Config
        );
    }

    #[test]
    fn permissions_block_the_cloud_and_throttling_retries() {
        assert_eq!(
            kind_of(&said(
                Some(403),
                &["forbidden"],
                "Required 'compute.instances.create' permission for 'projects/p'"
            )),
            ErrorKind::Config
        );
        assert_eq!(kind_of(&said(Some(401), &[], "")), ErrorKind::Config);
        assert_eq!(
            kind_of(&said(Some(403), &["PERMISSION_DENIED"], "")),
            ErrorKind::Config
        );
        assert_eq!(
            kind_of(&said(
                Some(429),
                &["rateLimitExceeded"],
                "Rate Limit Exceeded"
            )),
            ErrorKind::Transient
        );
        assert_eq!(
            kind_of(&said(Some(503), &["backendError"], "")),
            ErrorKind::Transient
        );
        assert_eq!(kind_of(&said(Some(502), &[], "")), ErrorKind::Transient);
        assert_eq!(
            kind_of(&said(Some(404), &["notFound"], "")),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of(&said(Some(400), &["invalid"], "bad image")),
            ErrorKind::Config
        );
        assert_eq!(
            kind_of(&said(Some(409), &["alreadyExists"], "")),
            ErrorKind::Other
        );
    }

    #[test]
    fn an_operation_error_is_read_like_an_answer() {
        let v = serde_json::json!({
            "kind": "compute#operation",
            "name": "operation-1",
            "status": "DONE",
            "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                                  "message": "The zone 'projects/p/zones/us-central1-a' does not have enough resources available to fulfill the request."}]},
            "httpErrorStatusCode": 503,
            "httpErrorMessage": "SERVICE UNAVAILABLE"
        });
        let op: google_cloud_compute_v1::model::Operation =
            serde_json::from_value(v).expect("an operation");
        let e = of_operation("insert", &op).expect("an error");
        assert_eq!(e.kind, ErrorKind::Capacity);
        assert!(
            e.message
                .starts_with("insert: ZONE_RESOURCE_POOL_EXHAUSTED: The zone"),
            "{}",
            e.message
        );
        let ok: google_cloud_compute_v1::model::Operation =
            serde_json::from_value(serde_json::json!({"status": "DONE"})).expect("an operation");
        assert!(of_operation("insert", &ok).is_none());
    }

    #[test]
    fn an_http_answer_is_read_from_its_body() {
        let body = serde_json::json!({"error": {"code": 403, "message": "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-east4.",
            "errors": [{"message": "Quota 'CPUS' exceeded.", "domain": "usageLimits", "reason": "quotaExceeded"}]}});
        let bytes = bytes::Bytes::from(body.to_string());
        let status = google_cloud_gax::error::rpc::Status::try_from(&bytes).expect("a status");
        let e = Error::service_with_http_metadata(status, Some(403), None);
        let p = classify("insert", e);
        assert_eq!(p.kind, ErrorKind::Quota, "{}", p.message);
        assert!(p.message.contains("quotaExceeded"), "{}", p.message);
    }
}
