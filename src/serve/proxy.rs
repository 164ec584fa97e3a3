//! Forwarding one request: choose a replica, get a connection, send, and pass the response
//! back as it streams in. Only a request that has not gone out is tried again elsewhere —
//! a failed connect, or a pooled connection that closed before taking it — plus, after a
//! replica broke the connection with no answer, a request that is safe to repeat (an
//! idempotent method with no body, RFC 9110 §9.2.2: what nginx does too). A request whose
//! body was streamed to a replica is never sent twice.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::Shared;
use super::pool::{InFlight, Sender, key};

/// How often a request is handed back by pooled connections that closed under it before it
/// moves on to the next replica.
const STALE_TRIES: u32 = 3;

/// A request body on its way to a replica.
#[derive(Debug)]
pub(crate) enum ReqBody {
    /// Known to be empty: such a request can be rebuilt for a retry.
    Empty,
    Stream(Incoming),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream(body) => body.size_hint(),
        }
    }
}

/// A response body on its way to the client: a replica's, frame by frame as it arrives, or
/// the balancer's own short text.
#[derive(Debug)]
pub(crate) struct RespBody(Kind);

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Incoming,
        claim: Option<Claim>,
    },
    Text(Option<Bytes>),
}

/// What a response holds until its last frame: the replica's in-flight count, and the
/// connection, which goes back to the pool only once its response ended (a connection
/// dropped mid-response is closed, never reused).
#[derive(Debug)]
struct Claim {
    in_flight: InFlight,
    sender: Sender,
}

impl Claim {
    fn finish(self) {
        let Claim { in_flight, sender } = self;
        in_flight.0.put_idle(sender);
        drop(in_flight);
    }
}

impl RespBody {
    fn upstream(body: Incoming, in_flight: InFlight, sender: Sender) -> Self {
        let claim = Claim { in_flight, sender };
        if body.is_end_stream() {
            // The server may never poll an empty body: end the claim now.
            claim.finish();
            return RespBody(Kind::Upstream { body, claim: None });
        }
        RespBody(Kind::Upstream {
            body,
            claim: Some(claim),
        })
    }

    fn text(msg: String) -> Self {
        RespBody(Kind::Text(Some(Bytes::from(msg))))
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Text(text) => Poll::Ready(text.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, claim } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => claim.take().map_or((), Claim::finish),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        claim.take().map_or((), Claim::finish)
                    }
                    // A broken response: the connection is not reusable.
                    Poll::Ready(Some(Err(_))) => drop(claim.take()),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Text(text) => text.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            Kind::Text(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

fn text(status: StatusCode, msg: String) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::text(msg));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and so are not
/// forwarded; plus whatever the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        let listed: Vec<String> = listed
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        for name in listed {
            headers.remove(name.as_str());
        }
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The request as a replica should see it: HTTP/1.1 in origin form with a Host header
/// (an HTTP/2 request carries its authority in the URI instead), no hop-by-hop headers, and
/// the client's address appended to X-Forwarded-For.
fn prepare_head(parts: &mut hyper::http::request::Parts, peer: SocketAddr) {
    parts.version = Version::HTTP_11;
    if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
        if !parts.headers.contains_key(header::HOST)
            && let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, host);
        }
        let origin = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = origin
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
    }
    strip_hop_by_hop(&mut parts.headers);
    let ip = peer.ip().to_string();
    let forwarded = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert("x-forwarded-for", v);
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A bodiless request kept aside so it can be sent again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn request(&self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<RespBody> {
    shared.rate.record();
    let arrived = Instant::now();
    let deadline = tokio::time::Instant::from_std(arrived + shared.config.queue_timeout);
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    prepare_head(&mut parts, peer);
    let empty = body.is_end_stream();
    let replay = (empty && idempotent(&parts.method)).then(|| Replay {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    let body = if empty {
        ReqBody::Empty
    } else {
        ReqBody::Stream(body)
    };
    let mut pending = Some(Request::from_parts(parts, body));
    let mut tried: Vec<usize> = Vec::new();
    let mut stale = 0;
    loop {
        let ready = shared.ready_set();
        let Some(slot) = shared.picker.pick(&ready, &tried) else {
            // Nothing (left) to try: hold the request until the owner changes the ready set.
            // (The deadline is checked first: a set that keeps changing must not hold the
            // request past it.)
            if tokio::time::Instant::now() >= deadline
                || !shared.wait_for_change(&ready, deadline).await
            {
                let waited = arrived.elapsed().as_secs_f64();
                let why = if ready.is_empty() {
                    "no ready replica"
                } else {
                    "no replica reachable"
                };
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{why} after waiting {waited:.1}s\n"),
                );
            }
            tried.clear();
            continue;
        };
        // Claimed before connecting, so that concurrent requests see the load.
        let in_flight = InFlight::new(slot.clone());
        let mut sender = match slot.connection(shared.config.connect_timeout).await {
            Ok(sender) => sender,
            Err(e) => {
                tracing::debug!(replica = %slot.upstream.id, "connect failed: {e}");
                slot.eject(shared.config.eject_for);
                tried.push(key(&slot));
                continue;
            }
        };
        let Some(req) = pending.take() else {
            return text(
                StatusCode::BAD_GATEWAY,
                "request lost before sending\n".into(),
            );
        };
        match sender.try_send_request(req).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                *resp.version_mut() = client_version;
                return resp.map(|body| RespBody::upstream(body, in_flight, sender));
            }
            Err(mut err) => {
                if let Some(req) = err.take_message() {
                    // The connection closed before taking the request: nothing was sent.
                    pending = Some(req);
                    stale += 1;
                    if stale >= STALE_TRIES {
                        tried.push(key(&slot));
                        stale = 0;
                    }
                    continue;
                }
                tracing::debug!(replica = %slot.upstream.id, "request failed: {}", err.error());
                match &replay {
                    Some(replay) => {
                        pending = Some(replay.request());
                        tried.push(key(&slot));
                    }
                    None => {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "replica {} failed: {}\n",
                                slot.upstream.id,
                                err.into_error()
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_requests_reach_replicas_in_origin_form_with_a_host() {
        let req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://svc.example:8080/v1/models?x=1")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "1")
            .header("te", "trailers")
            .header("x-forwarded-for", "10.1.1.1")
            .body(())
            .expect("request");
        let (mut parts, ()) = req.into_parts();
        prepare_head(&mut parts, "127.0.0.9:5555".parse().expect("addr"));
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.uri, "/v1/models?x=1");
        assert_eq!(parts.headers["host"], "svc.example:8080");
        assert_eq!(parts.headers["x-forwarded-for"], "10.1.1.1, 127.0.0.9");
        for gone in ["connection", "x-private", "te"] {
            assert!(!parts.headers.contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn only_safe_methods_are_replayed() {
        assert!(idempotent(&Method::GET));
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
    }
}
