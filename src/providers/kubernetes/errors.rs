//! Error classes: which [`ErrorKind`] an answer of the Kubernetes API is, so the failover
//! engine knows what to block, and retrying what is worth retrying.

use crate::providers::{ErrorKind, ProviderError};
use std::time::Duration;

/// Turns an API error into the kind the failover engine acts on.
pub(super) fn classify(e: kube::Error, doing: &str, at: &str) -> ProviderError {
    let (kind, text) = match &e {
        kube::Error::Api(s) => {
            let m = s.message.as_str();
            let kind = if s.code == 403 && m.contains("exceeded quota") {
                ErrorKind::Quota
            } else if (s.code == 403 && m.contains("error looking up service account"))
                || (s.code == 500 && (s.reason == "ServerTimeout" || m.contains("No API token")))
                || matches!(s.code, 429 | 502 | 503 | 504)
            {
                ErrorKind::Transient
            } else if s.code == 401 || s.code == 403 {
                ErrorKind::Config
            } else if s.code == 404 {
                ErrorKind::NotFound
            } else {
                ErrorKind::Other
            };
            (kind, format!("{} {}: {}", s.code, s.reason, s.message))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            (ErrorKind::Transient, error_chain(&e))
        }
        _ => (ErrorKind::Other, error_chain(&e)),
    };
    ProviderError {
        kind,
        message: format!("{at}: cannot {doing}: {text}"),
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Runs `call` again while it fails with a transient error, for about ten seconds (a fresh
/// namespace answers 403 or 500 until its service account exists).
pub(super) async fn retrying<T, F, Fut>(mut call: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Err(e) if e.kind == ErrorKind::Transient && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, reason).with_code(code),
        ))
    }

    #[test]
    fn errors_steer_the_failover_engine() {
        let kind = |e| classify(e, "apply pod p", "k8s/a (namespace n)").kind;
        assert_eq!(
            kind(api(
                403,
                "Forbidden",
                "pods \"p\" is forbidden: exceeded quota: q, requested: requests.nvidia.com/gpu=4"
            )),
            ErrorKind::Quota
        );
        assert_eq!(
            kind(api(
                403,
                "Forbidden",
                "error looking up service account n/default: serviceaccount \"default\" not found"
            )),
            ErrorKind::Transient
        );
        assert_eq!(
            kind(api(
                500,
                "ServerTimeout",
                "No API token found for service account \"default\""
            )),
            ErrorKind::Transient
        );
        assert_eq!(
            kind(api(
                403,
                "Forbidden",
                "pods is forbidden: User \"bob\" cannot create resource"
            )),
            ErrorKind::Config
        );
        // A body the server cannot read is a bug here, never retried.
        assert_eq!(
            kind(api(
                500,
                "InternalError",
                "failed to create typed patch object: .spec.os: field not declared in schema"
            )),
            ErrorKind::Other
        );
        let e = classify(
            api(403, "Forbidden", "exceeded quota: q"),
            "apply pod p",
            "k8s/a (namespace n)",
        );
        assert!(
            e.message
                .starts_with("k8s/a (namespace n): cannot apply pod p: 403 Forbidden"),
            "{}",
            e.message
        );
    }
}
