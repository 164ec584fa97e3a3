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
