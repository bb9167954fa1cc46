//! The HTTP/1.1 side (hyper, keep-alive): POST on `/RPC2` (XML-RPC) and `/jsonrpc`
//! (JSON-RPC 2.0), HTTP Basic logins, and the error statuses for everything else.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_runtime::log::End;
use inetkit_runtime::server::{Login, Peer};

use crate::access::SessionText;
use crate::jsonrpc;
use crate::login::{login, Logins};
use crate::methods::{calls_in, Caller, Params};
use crate::tally::Tally;
use crate::value::Fault;
use crate::xmlrpc;
use crate::Rpcd;

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body in bytes; a larger one is answered 413.
    pub max_body: usize,
    /// Largest request body without credentials: anyone can send one, so it stays small.
    pub max_anonymous_body: usize,
    /// Deepest nesting of arrays and structs in an XML-RPC request.
    pub max_depth: usize,
    /// Most calls one request may make: requests in a JSON-RPC batch, and the calls inside
    /// each `system.multicall`, all counted together.
    pub max_batch: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body: 1 << 20,
            max_anonymous_body: 8 << 10,
            max_depth: 32,
            max_batch: 100,
        }
    }
}

/// Bodies up to this size are parsed on the async worker that read them; larger ones on the
/// blocking pool, so that parsing a megabyte does not hold up other connections.
const INLINE_PARSE_MAX: usize = 16 << 10;

pub(crate) type Reply = Response<Full<Bytes>>;

/// One client connection.
struct Conn {
    peer: Peer,
    tls: bool,
    logins: Logins,
    /// Its requests' log lines' session part.
    log_text: SessionText,
}

const REALM: &str = "Basic realm=\"inetkit-rpcd\", charset=\"UTF-8\"";

/// Serves one connection (already TLS-wrapped on `rpcs`) until the client closes it, it
/// stays idle past the idle timeout, it has not logged in by the login deadline, or the
/// daemon shuts down.
pub(crate) async fn serve<S>(rpcd: Arc<Rpcd>, io: S, peer: Peer, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = peer.shutdown.clone();
    let login = peer.login.clone();
    let log = peer.log.clone();
    let idle = peer.idle_timeout;
    let write_timeout = peer.write_timeout;
    let conn = Arc::new(Conn {
        peer,
        tls,
        logins: Logins::default(),
        log_text: SessionText::default(),
    });
    let service = service_fn(move |req| {
        let rpcd = rpcd.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&rpcd, req, &conn).await) }
    });
    // A client that stops reading its replies is let go after the write timeout.
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_write_timeout(Some(write_timeout));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true)
        .serve_connection(TokioIo::new(Box::pin(io)), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            log.ended(End::Shutdown);
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = login_deadline(&login) => {
            tracing::debug!("no login in the time allowed: closing the connection");
            log.ended(End::LoginTimeout);
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    log.ended(match result {
        Ok(()) => End::Disconnected,
        Err(err) => end_of(&err),
    });
}

/// Why hyper ended a connection, for the session's end line.
fn end_of(err: &hyper::Error) -> End {
    if err.is_timeout() {
        return End::IdleTimeout;
    }
    if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
        return End::Disconnected;
    }
    // The I/O error underneath (a reset, our write timeout), if that is what it was.
    let io = std::error::Error::source(err).and_then(|e| e.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => End::from_io(io),
        None => End::Error(err.to_string()),
    }
}

/// Returns when the connection's login deadline has passed without a login; never once it
/// has logged in (a keep-alive connection of anonymous calls only is let go at the deadline).
async fn login_deadline(login: &Login) {
    while let Some(at) = login.deadline() {
        tokio::time::sleep_until(at).await;
        if !login.is_logged_in() {
            return;
        }
    }
    std::future::pending().await
}

pub(crate) fn plain(status: StatusCode, text: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

pub(crate) fn unauthorized(text: &str) -> Reply {
    let mut reply = plain(StatusCode::UNAUTHORIZED, text);
    reply
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    reply
}

fn body(content_type: &'static str, text: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(text.into()));
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Xml,
    Json,
}

/// The media type of a request, without parameters (as sent: compare it ignoring case).
fn media_type(req: &Request<Incoming>) -> &str {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
}

/// Is `media` one of `types` (lower-case), in any case?
fn media_is(media: &str, types: &[&str]) -> bool {
    types.iter().any(|t| media.eq_ignore_ascii_case(t))
}

async fn handle(rpcd: &Rpcd, req: Request<Incoming>, conn: &Conn) -> Reply {
    match route(rpcd, req, conn).await {
        Ok(reply) => reply,
        Err(refused) => match *refused {
            (reply, Some(body)) => {
                // Read what the client sent, so the connection stays usable for its next
                // request; only as much as anyone may send, and as fast as a request must
                // come. Past either, the connection closes after the reply.
                let drain = Limited::new(body, rpcd.http.max_anonymous_body).collect();
                let _ = tokio::time::timeout(conn.peer.idle_timeout, drain).await;
                reply
            }
            (reply, None) => reply,
        },
    }
}

/// The reply, or an early refusal with the body still to be drained (if it may be).
async fn route(
    rpcd: &Rpcd,
    req: Request<Incoming>,
    conn: &Conn,
) -> Result<Reply, Box<(Reply, Option<Incoming>)>> {
    let refuse =
        |reply: Reply, req: Request<Incoming>| Err(Box::new((reply, Some(req.into_body()))));
    let protocol = match req.uri().path() {
        "/RPC2" => Protocol::Xml,
        "/jsonrpc" => Protocol::Json,
        _ => {
            let reply = plain(
                StatusCode::NOT_FOUND,
                "not found: XML-RPC is at /RPC2, JSON-RPC at /jsonrpc",
            );
            return refuse(reply, req);
        }
    };
    if req.method() != Method::POST {
        let mut reply = plain(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed here");
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return refuse(reply, req);
    }
    let media = media_type(&req);
    let media_ok = match protocol {
        Protocol::Xml => media_is(media, &["text/xml", "application/xml"]),
        Protocol::Json => media_is(
            media,
            &[
                "application/json",
                "application/json-rpc",
                "application/jsonrequest",
            ],
        ),
    };
    if !media_ok {
        let expected = match protocol {
            Protocol::Xml => "text/xml",
            Protocol::Json => "application/json",
        };
        let reply = plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("unsupported content type {media:?}: send {expected}"),
        );
        return refuse(reply, req);
    }
    // The limit for everyone first, before a password is checked.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > rpcd.http.max_body as u64) {
        // Not drained: the connection closes after this reply.
        return Err(Box::new((too_large(rpcd.http.max_body, true), None)));
    }

    let user = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            match login(rpcd, value, &conn.logins, conn.peer.addr.ip(), conn.tls).await {
                Ok(user) => {
                    conn.peer.logged_in(&user.name);
                    Some(user)
                }
                Err(reply) => return refuse(reply, req),
            }
        }
    };
    let max = if user.is_some() {
        rpcd.http.max_body
    } else {
        rpcd.http.max_anonymous_body.min(rpcd.http.max_body)
    };
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Box::new((too_large(max, user.is_some()), None)));
    }
    let caller = Caller {
        peer: conn.peer.addr.ip(),
        user,
    };

    // The whole body within the idle timeout: a client dribbling it byte by byte must not
    // hold the connection (and its slot in the limits) for ever.
    let reading = Limited::new(req.into_body(), max).collect();
    let Ok(collected) = tokio::time::timeout(conn.peer.idle_timeout, reading).await else {
        let reply = plain(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
        );
        return Err(Box::new((reply, None)));
    };
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new((too_large(max, caller.user.is_some()), None)))
        }
        Err(err) => {
            tracing::debug!("reading the request body: {err}");
            let reply = plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
            return Err(Box::new((reply, None)));
        }
    };
    Ok(match protocol {
        Protocol::Xml => xml(rpcd, &caller, conn, bytes).await,
        Protocol::Json => json(rpcd, &caller, conn, bytes).await,
    })
}

/// 413, saying which limit the body passed.
fn too_large(max: usize, logged_in: bool) -> Reply {
    let text = if logged_in {
        format!("the request body is larger than {max} bytes")
    } else {
        format!(
            "a request body without credentials may be at most {max} bytes: log in to send more"
        )
    };
    plain(StatusCode::PAYLOAD_TOO_LARGE, &text)
}

/// Runs `parse` on `body`: inline when it is small, else on the blocking pool. `None` if the
/// parser panicked (it is not meant to).
async fn parse_body<T, F>(body: Bytes, parse: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(&[u8]) -> T + Send + 'static,
{
    if body.len() <= INLINE_PARSE_MAX {
        return Some(parse(&body));
    }
    match tokio::task::spawn_blocking(move || parse(&body)).await {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            tracing::error!("parsing a request failed: {err}");
            None
        }
    }
}

/// Anonymous requests for anything not public are answered 401, so HTTP clients know to
/// send credentials (and anonymous callers learn nothing about which methods exist).
fn needs_login(rpcd: &Rpcd, caller: &Caller, method: &str, params: &Params) -> bool {
    caller.user.is_none()
        && rpcd
            .registry
            .names_in(method, params)
            .iter()
            .any(|n| !rpcd.registry.is_public(n))
}

fn log_refused(caller: &Caller, fault: &Fault) {
    tracing::info!(
        peer = %caller.peer,
        user = caller.user.as_ref().map_or("-", |u| u.name.as_str()),
        code = fault.code,
        "request refused: {}: {}",
        fault.outcome(),
        fault.message
    );
}

/// The fault for a request that would make more calls than allowed, if it would.
fn too_many_calls(rpcd: &Rpcd, calls: usize) -> Option<Fault> {
    let max = rpcd.http.max_batch;
    (calls > max).then(|| {
        Fault::new(
            Fault::INVALID_REQUEST,
            format!(
                "a request may make at most {max} calls (batch members and multicall entries \
                 together), not {calls}"
            ),
        )
    })
}

fn internal_error() -> Reply {
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the request could not be handled",
    )
}

async fn xml(rpcd: &Rpcd, caller: &Caller, conn: &Conn, bytes: Bytes) -> Reply {
    let max_depth = rpcd.http.max_depth;
    let Some(parsed) = parse_body(bytes, move |b| xmlrpc::parse_call(b, max_depth)).await else {
        return internal_error();
    };
    let call = match parsed {
        Ok(call) => call,
        Err(fault) => {
            log_refused(caller, &fault);
            return body("text/xml", xmlrpc::fault(&fault));
        }
    };
    let params = Params::Positional(call.params);
    if let Some(fault) = too_many_calls(rpcd, calls_in(&call.method, &params)) {
        log_refused(caller, &fault);
        return body("text/xml", xmlrpc::fault(&fault));
    }
    if needs_login(rpcd, caller, &call.method, &params) {
        return unauthorized("authentication required");
    }
    let mut tally = Tally::new();
    let result = rpcd
        .registry
        .call(caller, &call.method, params, &mut tally)
        .await;
    tally.log(caller, &conn.peer, &conn.log_text);
    let text = match result {
        Ok(value) => xmlrpc::response(&value),
        Err(fault) => xmlrpc::fault(&fault),
    };
    body("text/xml", text)
}

async fn json(rpcd: &Rpcd, caller: &Caller, conn: &Conn, bytes: Bytes) -> Reply {
    let max_batch = rpcd.http.max_batch;
    let Some(parsed) = parse_body(bytes, move |b| jsonrpc::parse(b, max_batch)).await else {
        return internal_error();
    };
    let (requests, batch) = match parsed {
        jsonrpc::Body::Error(fault) | jsonrpc::Body::Single(Err(fault)) => {
            log_refused(caller, &fault);
            return json_reply(&[jsonrpc::Answer::null(fault)], false);
        }
        jsonrpc::Body::Single(request) => (vec![request], false),
        jsonrpc::Body::Batch(requests) => (requests, true),
    };
    let calls = requests
        .iter()
        .map(|r| r.as_ref().map_or(1, |r| calls_in(&r.method, &r.params)))
        .sum();
    if let Some(fault) = too_many_calls(rpcd, calls) {
        log_refused(caller, &fault);
        return json_reply(&[jsonrpc::Answer::null(fault)], false);
    }
    let answers = match run_json(rpcd, caller, conn, requests).await {
        Ok(answers) => answers,
        Err(reply) => return reply,
    };
    if answers.is_empty() {
        no_content()
    } else {
        json_reply(&answers, batch)
    }
}

/// Runs JSON-RPC requests in order; answers all but the notifications.
async fn run_json(
    rpcd: &Rpcd,
    caller: &Caller,
    conn: &Conn,
    requests: Vec<Result<jsonrpc::Request, Fault>>,
) -> Result<Vec<jsonrpc::Answer>, Reply> {
    let anonymous_needs_login = requests.iter().any(|r| match r {
        Ok(r) => needs_login(rpcd, caller, &r.method, &r.params),
        Err(_) => false,
    });
    if anonymous_needs_login {
        return Err(unauthorized("authentication required"));
    }
    let mut tally = Tally::new();
    let mut answers = Vec::new();
    for request in requests {
        match request {
            Err(fault) => {
                tally.add(None, Some(&fault));
                answers.push(jsonrpc::Answer::null(fault));
            }
            Ok(request) => {
                let result = rpcd
                    .registry
                    .call(caller, &request.method, request.params, &mut tally)
                    .await;
                if let Some(id) = request.id {
                    answers.push(jsonrpc::Answer {
                        id,
                        outcome: result,
                    });
                }
            }
        }
    }
    tally.log(caller, &conn.peer, &conn.log_text);
    Ok(answers)
}

fn json_reply(answers: &[jsonrpc::Answer], batch: bool) -> Reply {
    body("application/json", jsonrpc::reply_body(answers, batch))
}

/// What a notification (or a batch of them) gets: nothing.
fn no_content() -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::NO_CONTENT;
    reply
}
