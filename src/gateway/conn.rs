//! The caller's side of the gateway: one task per client connection.
//!
//! The common call — HTTP/1.1, origin-form target, no body and no framing
//! headers — is read and answered here: the head parsed by `httparse` into
//! the request the handler takes, the response head written from the
//! handler's response, the body streamed after it. Nothing else is: the
//! first request that is not such a call (a body of any framing, `Expect`,
//! `Upgrade`, HTTP/1.0, `CONNECT`, a `Connection` option other than
//! `close`/`keep-alive`, a head the parser rejects or over
//! [`MAX_FAST_HEAD`]) hands the connection, with the bytes already read, to
//! hyper's HTTP/1.1 server for the rest of its life. So every framing
//! decision about a request body, and every error answer to a malformed
//! request, is still hyper's; this loop never has to find where a body
//! ends, because the calls it takes have none.
//!
//! What the loop saves over hyper's dispatcher for each call: its message
//! and body bookkeeping, the service future, and a second pass over the
//! response's headers.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::{ClientBody, GatewayBody, HeadWatch, ProxiedHead};
use super::h1::{self, CallHeaders, InBuf, Span};
use super::timer::{ConnectionTimer, KeptTimer};
use super::upstream::ConnectionUpstreams;
use super::{Call, Gateway, Malformed, Refusal};
use crate::error::ApiError;

/// Largest head this loop answers; a larger one goes to hyper (one over
/// hyper's own limit, [`h1::MAX_HEAD`], is refused here: 431).
pub const MAX_FAST_HEAD: usize = 16 * 1024;
/// Most headers in a request head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Response bytes gathered before they are written.
const MAX_GATHERED: usize = 64 * 1024;

/// What the start of the connection's buffer holds.
enum Parsed {
    /// Not a whole head yet: read more.
    Partial,
    /// A call this loop answers, and whether the caller asked to close after it.
    Call(Call, bool),
    /// A head that is no request (what hyper would answer with 400 or
    /// 431), or one the target of which is not a valid URI: refused here.
    Refused(Malformed),
    /// Anything else: hyper's.
    Other,
}

/// Serves one client connection until it closes, the caller stops sending,
/// or the gateway shuts down (an idle connection closes at once; a call
/// under way is answered first).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let upstreams = Arc::new(ConnectionUpstreams::new(gateway.upstreams.clone(), peer));
    let probe = shutdown.clone();
    let head_timeout = gateway.head_timeout;
    let mut conn = Client {
        head_timeout,
        stream,
        inbuf: InBuf::default(),
        out: Vec::new(),
        timer: KeptTimer::default(),
        stop_registered: false,
        probe,
    };
    let mut stop = pin!(shutdown.changed());
    loop {
        let (req, close) = match conn.next_call(stop.as_mut()).await {
            Next::Call(req, close) => (req, close),
            Next::Refused(malformed) => {
                let refusal = malformed.refusal();
                let request_id = gateway.record_malformed(peer, malformed);
                // Under `durability = "sync"`, the answer after the events' commit.
                gateway.audit.flush_if_sync().await;
                let _ = conn.answer_refusal(&refusal, &request_id).await;
                return;
            }
            Next::Slow => {
                // Closed unanswered, as hyper does; an idle connection
                // (nothing of a head sent) is not recorded.
                gateway.record_malformed(peer, Malformed::Slow { received: conn.inbuf.len() });
                return;
            }
            Next::Other => break,
            Next::Done => return,
        };
        let head_request = req.method == Method::HEAD;
        let response = gateway.handle(peer, &upstreams, req).await;
        let kept = conn.respond(response, head_request, close).await;
        if !kept || close {
            return;
        }
    }
    // The rest of the connection is hyper's, starting with the bytes read.
    let prefix = conn.inbuf.take(conn.inbuf.len());
    let head_watch = Arc::new(HeadWatch::default());
    let io = Prefixed { prefix, stream: conn.stream, watch: head_watch.clone() };
    let recorder = gateway.clone();
    let watch = head_watch.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (gateway, upstreams, watch) = (gateway.clone(), upstreams.clone(), watch.clone());
        async move {
            let head_request = req.method() == Method::HEAD;
            watch.call(!req.body().is_end_stream());
            let host_problem = super::host_problem(req.version(), req.headers());
            let call = Call::from_request(req.map(|body| ClientBody::Hyper(body, watch)));
            let mut response = match host_problem {
                Some(message) => {
                    let mut refusal = gateway.refuse_host(peer, &upstreams, &call, message);
                    // Closed after the answer, as the loop's refusals of a
                    // head it cannot take are: hyper sees to it.
                    refusal.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    refusal
                }
                None => gateway.handle(peer, &upstreams, call).await,
            };
            let status = response.status();
            response.body_mut().settle_if_bodiless(super::body::no_body(head_request, status)).await;
            // hyper writes the header map only: a proxied answer's headers join it.
            if let Some(head) = response.body_mut().take_proxied_head() {
                head.into_header_map(response.headers_mut());
                // Never a length on a 1xx or 204 (RFC 9110 §8.6), as the loop answers.
                if status.is_informational() || status == StatusCode::NO_CONTENT {
                    response.headers_mut().remove(header::CONTENT_LENGTH);
                }
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // The header-read timeout on one kept timer, not one per request.
        .timer(ConnectionTimer::default())
        .header_read_timeout(head_timeout)
        // A request head gets the room an upstream's response head gets;
        // a larger one is refused (431) rather than buffered and proxied.
        .max_buf_size(h1::MAX_HEAD)
        // A caller that closed its side after its request still waits for
        // the answer, as on this loop (hyper would take it for gone).
        .half_close(true)
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "gateway connection ended with an error");
        // hyper answered a request it could not read (400 or 431) without
        // asking the gateway: the trail hears of it here.
        if error.is_parse_too_large() {
            recorder.record_malformed(peer, Malformed::TooLarge);
        } else if error.is_parse() {
            recorder.record_malformed(peer, Malformed::Http);
        } else if error.is_timeout() {
            // hyper's header-read timeout: a slow head as the loop records
            // one; an idle connection (nothing of a head came) is not.
            if let Some(received) = head_watch.partial_head() {
                recorder.record_malformed(peer, Malformed::Slow { received });
            }
        }
    }
}

enum Next {
    Call(Call, bool),
    Refused(Malformed),
    Other,
    /// Part of a head, and the head timeout passed.
    Slow,
    /// Closed, timed out while idle, or shutting down.
    Done,
}

/// The client connection while this loop serves it.
struct Client {
    /// The gateway's head timeout (see [`super::Gateway`]).
    head_timeout: Duration,
    stream: TcpStream,
    inbuf: InBuf,
    /// The response's head (and small body), kept for the next call.
    out: Vec<u8>,
    /// The head-read timeout's timer, kept across calls.
    timer: KeptTimer,
    /// The shutdown signal's future was polled once: it has the task's
    /// waker and wakes it at shutdown. Later waits only look at `probe`,
    /// which costs an atomic load instead of a poll.
    stop_registered: bool,
    probe: watch::Receiver<bool>,
}

impl Client {
    /// Reads until the buffer starts with a whole head, and says what it is.
    async fn next_call<F: Future>(&mut self, mut stop: Pin<&mut F>) -> Next {
        let mut deadline = None;
        loop {
            match parse(&mut self.inbuf) {
                Parsed::Call(req, close) => return Next::Call(req, close),
                Parsed::Refused(malformed) => return Next::Refused(malformed),
                Parsed::Other => return Next::Other,
                Parsed::Partial => {}
            }
            let deadline = *deadline.get_or_insert_with(|| {
                let at = Instant::now() + self.head_timeout;
                self.timer.arm(at);
                at
            });
            let read = poll_fn(|cx| {
                // Between calls the gateway's shutdown closes the connection.
                if self.inbuf.is_empty() {
                    let stopping = if self.stop_registered {
                        self.probe.has_changed().unwrap_or(true)
                    } else {
                        self.stop_registered = true;
                        stop.as_mut().poll(cx).is_ready()
                    };
                    if stopping {
                        return Poll::Ready(Ok(0));
                    }
                }
                if let Poll::Ready(read) = self.poll_fill(cx) {
                    return Poll::Ready(read);
                }
                ready!(self.timer.poll_until(cx, deadline));
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            })
            .await;
            match read {
                // Empty lines alone are no head begun: an idle connection.
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !super::body::skip_empty_lines(self.inbuf.data()).is_empty() => return Next::Slow,
                Ok(0) | Err(_) => return Next::Done,
                Ok(_) => {}
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // A head not whole within 16 KiB is read on, up to hyper's limit,
        // only to tell whether it is too large.
        let len = self.inbuf.len();
        let want = if len < MAX_FAST_HEAD { MAX_FAST_HEAD - len } else { h1::MAX_HEAD - len.min(h1::MAX_HEAD - 1) };
        let mut buf = ReadBuf::new(self.inbuf.spare(want));
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.inbuf.filled(n);
        Poll::Ready(Ok(n))
    }

    /// Answers a refused head with its JSON error and the request id its
    /// events are recorded under.
    async fn answer_refusal(&mut self, refusal: &Refusal, request_id: &str) -> io::Result<()> {
        let error = ApiError::new(refusal.code, refusal.message);
        let body = error.body_bytes();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(super::X_REQUEST_ID.clone(), id);
        }
        self.out.clear();
        let framing = Framing { length: Some(body.len() as u64), chunked: false, close: true };
        encode_head(&mut self.out, refusal.status, &headers, None, framing);
        self.out.extend_from_slice(&body);
        self.stream.write_all(&self.out).await
    }

    /// Writes the response; `false` when the connection cannot carry
    /// another call (the client went away, or the body failed midway).
    async fn respond(&mut self, mut response: Response<GatewayBody>, head_request: bool, close: bool) -> bool {
        let proxied = response.body_mut().take_proxied_head();
        let (parts, mut body) = response.into_parts();
        let status = parts.status.as_u16();
        // Never a body nor a length (RFC 9110 §8.6).
        let no_content = (100..200).contains(&status) || status == 204;
        let bodiless = super::body::no_body(head_request, parts.status);
        // A `HEAD` answer and a 304 tell the length of the body they leave out.
        let declared = proxied.as_ref().and_then(|p| p.upstream.content_length()).filter(|_| !no_content);
        let length = if bodiless { declared } else { declared.or(body.size_hint().exact()) };
        let framing = Framing { length, chunked: !bodiless && length.is_none(), close };
        body.settle_if_bodiless(bodiless).await;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        encode_head(&mut out, parts.status, &parts.headers, proxied.as_ref(), framing);
        let written = if bodiless {
            drop(body);
            self.stream.write_all(&out).await.is_ok()
        } else {
            self.send_body(&mut out, &mut body, framing).await
        };
        self.out = out;
        written
    }

    /// Streams the body after the head in `out`: what is ready goes out
    /// with the head in one write, the rest as it comes.
    async fn send_body(&mut self, out: &mut Vec<u8>, body: &mut GatewayBody, framing: Framing) -> bool {
        let mut sent = 0u64;
        loop {
            let frame = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                // Nothing more for now: what is gathered goes out first.
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                polled => polled.map(Some),
            })
            .await;
            let frame = match frame {
                None => {
                    if self.stream.write_all(out).await.is_err() {
                        return false;
                    }
                    out.clear();
                    continue;
                }
                Some(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    sent += data.len() as u64;
                    if framing.chunked {
                        use std::io::Write as _;
                        let _ = write!(out, "{:x}\r\n", data.len());
                    }
                    if out.len() + data.len() <= MAX_GATHERED {
                        out.extend_from_slice(&data);
                    } else {
                        // A large piece goes out as it is, behind what was gathered.
                        if write_both(&mut self.stream, out, &data).await.is_err() {
                            return false;
                        }
                        out.clear();
                    }
                    if framing.chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    if out.len() >= MAX_GATHERED {
                        if self.stream.write_all(out).await.is_err() {
                            return false;
                        }
                        out.clear();
                    }
                }
                // The body failed (its event says so): the client must not
                // take what it got for a whole answer, so the connection ends.
                Some(Err(_)) => {
                    let _ = self.stream.write_all(out).await;
                    return false;
                }
                None => {
                    if framing.chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    let whole = framing.length.is_none_or(|n| n == sent);
                    return self.stream.write_all(out).await.is_ok() && whole;
                }
            }
        }
    }
}

/// Writes `first` then `second`, with one system call when the socket takes both.
async fn write_both(stream: &mut TcpStream, first: &[u8], second: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (first, second);
    while !a.is_empty() {
        let n = stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    stream.write_all(b).await
}

/// How a response's body is delimited on the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Framing {
    /// The `Content-Length` to send (also after `HEAD` and for a 304).
    length: Option<u64>,
    /// The body goes in chunks (its length is not known).
    chunked: bool,
    /// The connection ends after this response.
    close: bool,
}

/// Writes the status line and headers: a proxied answer's (the upstream's
/// as they came, less those the gateway sets itself, then the gateway's),
/// the response's own map, `Date` when none of them has one, and the
/// framing headers of this connection.
fn encode_head(out: &mut Vec<u8>, status: StatusCode, own: &HeaderMap, proxied: Option<&ProxiedHead>, framing: Framing) {
    let line = h1::header_line;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    if let Some(proxied) = proxied {
        for (name, value) in proxied.upstream.iter() {
            if proxied.sets(name) {
                continue;
            }
            dated |= name.eq_ignore_ascii_case(b"date");
            line(out, name, value);
        }
        proxied.own(|name, value| line(out, name.as_str().as_bytes(), value));
    }
    for (name, value) in own {
        // Framing is this connection's to set.
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION || name == header::CONTENT_LENGTH {
            continue;
        }
        dated |= name == header::DATE;
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        http_date(|date| line(out, b"date", date));
    }
    if let Some(n) = framing.length {
        line(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
    } else if framing.chunked {
        line(out, b"transfer-encoding", b"chunked");
    }
    if framing.close {
        line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes());
    });
}

/// Reads the head at the start of `inbuf`, taking it only when this loop answers it.
fn parse(inbuf: &mut InBuf) -> Parsed {
    if inbuf.is_empty() {
        return Parsed::Partial;
    }
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let data = inbuf.data();
    let base = data.as_ptr() as usize;
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, data, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if data.len() < h1::MAX_HEAD => return Parsed::Partial,
        // Not whole within hyper's limit: what hyper answers 431, with the
        // gateway's JSON error.
        Ok(httparse::Status::Partial) => return Parsed::Refused(Malformed::TooLarge),
        // An HTTP/2 connection preface: hyper closes without an answer.
        Err(httparse::Error::Version) if data.starts_with(b"PRI * HTTP/2") => return Parsed::Other,
        // What hyper's parser (httparse too, the same configuration and
        // header limit) refuses: answered here as hyper would, 431 for too
        // many headers and 400 for the rest, and so after the commit of
        // its events under `durability = "sync"`.
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Malformed::TooLarge),
        Err(_) => return Parsed::Refused(Malformed::Http),
    };
    // Hyper's, unless its length is one hyper would refuse (400): that is
    // refused here, with the gateway's JSON error. (Checked only for heads
    // handed over: a call this loop answers has no length.)
    let hand_over = || if broken_length(request.headers) { Parsed::Refused(Malformed::Http) } else { Parsed::Other };
    // A head over 16 KiB: hyper's.
    if len > MAX_FAST_HEAD {
        return hand_over();
    }
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else { return hand_over() };
    if !target.starts_with('/') || method == "CONNECT" {
        return hand_over();
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return hand_over() };
    let mut close = false;
    // A call without a `Host`, or with two, is hyper's (where it is refused).
    let mut hosts = 0;
    // The positions go with the call (its headers are read from them).
    let mut spans = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        hosts += usize::from(name.eq_ignore_ascii_case(b"host"));
        // Headers that give the request a body or change the connection: hyper's.
        if [b"content-length".as_slice(), b"transfer-encoding", b"expect", b"upgrade"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return hand_over();
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for option in h1::list_items(h.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                    return hand_over();
                }
            }
        }
        let (name_at, value_at) = (h.name.as_ptr() as usize - base, h.value.as_ptr() as usize - base);
        spans.push(Span::new(name_at..name_at + h.name.len(), value_at..value_at + h.value.len()));
    }
    if hosts != 1 {
        return hand_over();
    }
    let target_at = target.as_ptr() as usize - base;
    let target_span = target_at..target_at + target.len();
    // From here on the head is this loop's. (httparse admitted only valid
    // header names and values.)
    let head = inbuf.take(len);
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target_span.clone())) else {
        let target = head.slice(target_span);
        return Parsed::Refused(Malformed::Target { method, target, headers: CallHeaders::Raw { head, spans } });
    };
    let headers = CallHeaders::Raw { head, spans };
    Parsed::Call(Call { method, uri, headers, body: ClientBody::Empty }, close)
}

/// Whether the head's `Content-Length` lines are ones hyper's server
/// refuses (400): a value that is not a number (digits only, within 64
/// bits: no sign, no list) or lines that differ. Only without a
/// `Transfer-Encoding`, where hyper reads every length line; with one, the
/// framing is hyper's to judge.
fn broken_length(headers: &[httparse::Header<'_>]) -> bool {
    if headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        return false;
    }
    let mut seen: Option<u64> = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let digits = h.value;
        let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .then(|| digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))))
            .flatten();
        match n {
            Some(n) if seen.is_none_or(|s| s == n) => seen = Some(n),
            _ => return true,
        }
    }
    false
}

/// The client connection handed to hyper: the bytes this loop read and did
/// not use come first.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
    /// Told of every byte read (see [`HeadWatch`]).
    watch: Arc<HeadWatch>,
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.watch.read(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if polled.is_ready() {
            this.watch.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered(bytes: &[u8]) -> InBuf {
        let mut inbuf = InBuf::default();
        let room = inbuf.spare(bytes.len().max(64));
        room[..bytes.len()].copy_from_slice(bytes);
        inbuf.filled(bytes.len());
        inbuf
    }

    #[test]
    fn a_plain_call_is_taken_and_the_next_one_stays() {
        let mut inbuf = buffered(b"GET /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nX-API-Key: k\r\nConnection: keep-alive\r\n\r\nGET /next HTTP/1.1\r\n");
        let Parsed::Call(req, close) = parse(&mut inbuf) else { panic!("a plain call") };
        assert!(!close);
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.uri.path(), "/v1/x");
        assert_eq!(req.uri.query(), Some("a=1"));
        assert_eq!(req.headers.get("x-api-key"), Some(b"k".as_slice()));
        let names: Vec<&[u8]> = req.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![b"Host".as_slice(), b"X-API-Key", b"Connection"], "as the caller spelled them");
        assert_eq!(req.headers.names(), vec!["connection", "host", "x-api-key"]);
        assert_eq!(inbuf.data(), b"GET /next HTTP/1.1\r\n", "the pipelined call waits its turn");
        assert!(matches!(parse(&mut inbuf), Parsed::Partial));
    }

    #[test]
    fn a_target_the_parser_takes_but_no_uri_is_refused_here() {
        let mut inbuf = buffered(b"GET /a<b> HTTP/1.1\r\nHost: h\r\n\r\n");
        let Parsed::Refused(Malformed::Target { method, target, headers }) = parse(&mut inbuf) else { panic!("not refused here") };
        assert_eq!((method, &target[..]), (Method::GET, &b"/a<b>"[..]));
        assert_eq!(headers.get("host"), Some(&b"h"[..]));
        assert!(inbuf.is_empty(), "the head is consumed");
    }

    #[test]
    fn connection_close_is_honoured() {
        let mut inbuf = buffered(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert!(matches!(parse(&mut inbuf), Parsed::Call(_, true)));
    }

    #[test]
    fn anything_with_a_body_or_unusual_goes_to_hyper_untouched() {
        let others: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-other\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            // No Host, or two: hyper's, where they are refused.
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            // An HTTP/2 preface: hyper closes without an answer.
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for bytes in others {
            let mut inbuf = buffered(bytes);
            assert!(matches!(parse(&mut inbuf), Parsed::Other), "{:?}", String::from_utf8_lossy(bytes));
            assert_eq!(inbuf.data(), *bytes, "nothing consumed");
        }
    }

    #[test]
    fn heads_hyper_would_refuse_are_refused_here_as_it_would() {
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let too_many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let refused: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\r\n  folded\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
            // Lengths hyper's server refuses.
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
            // A bad byte is refused before the head is whole.
            (b"GET / HTTP/1.1\r\nBad Name", 400),
            (too_many.as_bytes(), 431),
        ];
        for (bytes, status) in refused {
            let mut inbuf = buffered(bytes);
            let Parsed::Refused(malformed) = parse(&mut inbuf) else { panic!("not refused: {:?}", String::from_utf8_lossy(bytes)) };
            assert!(matches!(malformed, Malformed::Http | Malformed::TooLarge));
            assert_eq!(malformed.refusal().status.as_u16(), *status, "{:?}", String::from_utf8_lossy(bytes));
        }
        // Empty lines before a request line are skipped, as hyper skips them.
        assert!(matches!(parse(&mut buffered(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")), Parsed::Call(..)));
        // Exactly as many headers as hyper reads is a call.
        let most: String = (1..MAX_HEADERS).map(|i| format!("X-{i}: {i}\r\n")).collect();
        assert!(matches!(parse(&mut buffered(format!("GET / HTTP/1.1\r\nHost: h\r\n{most}\r\n").as_bytes())), Parsed::Call(..)));
    }

    #[test]
    fn a_large_head_goes_to_hyper_and_a_short_one_waits() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(MAX_FAST_HEAD + 10, b'a');
        assert!(matches!(parse(&mut buffered(&big)), Parsed::Partial), "read on, up to hyper's limit");
        big.extend_from_slice(b"\r\n\r\n");
        let mut inbuf = buffered(&big);
        assert!(matches!(parse(&mut inbuf), Parsed::Other));
        assert_eq!(inbuf.len(), big.len());
        big.truncate(big.len() - 4);
        big.resize(h1::MAX_HEAD, b'a');
        assert!(matches!(parse(&mut buffered(&big)), Parsed::Refused(Malformed::TooLarge)), "over hyper's limit");
        let mut inbuf = buffered(b"GET / HTTP/1.1\r\nHost: h\r\n");
        assert!(matches!(parse(&mut inbuf), Parsed::Partial));
    }

    #[test]
    fn response_heads_carry_their_framing() {
        let mut own = HeaderMap::new();
        own.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        own.insert(header::DATE, HeaderValue::from_static("Sun, 06 Dec 2026 03:00:00 GMT"));
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, &own, None, Framing { length: Some(12), chunked: false, close: false });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Sun, 06 Dec 2026 03:00:00 GMT\r\ncontent-length: 12\r\n\r\n"
        );
        let mut own = HeaderMap::new();
        own.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::BAD_GATEWAY, &own, None, Framing { length: None, chunked: true, close: true });
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\ndate: "), "{text}");
        assert!(text.ends_with(" GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"), "{text}");
        assert!(!text.contains("gzip"), "the connection's own framing only");
    }

    #[test]
    fn upstream_headers_go_out_as_they_came_and_the_gateways_win() {
        use super::super::h1;
        let proxied = || {
            let mut inbuf = buffered(
                b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: Sun, 06 Dec 2026 03:00:00 GMT\r\nX-Request-Id: forged\r\nRateLimit-Limit: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\n\r\nabc",
            );
            let head = h1::parse_head(&mut inbuf, &mut Vec::new(), false).unwrap().unwrap();
            let rate = crate::ratelimit::Standing { limit: 100, remaining: 99, reset_secs: 60 };
            (head.status, ProxiedHead { upstream: head.headers, request_id: HeaderValue::from_static("ours"), rate: Some(rate) })
        };
        let (status, head) = proxied();
        let mut out = Vec::new();
        let length = head.upstream.content_length();
        encode_head(&mut out, status, &HeaderMap::new(), Some(&head), Framing { length, chunked: false, close: false });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Sun, 06 Dec 2026 03:00:00 GMT\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
             x-request-id: ours\r\nratelimit-limit: 100\r\nratelimit-remaining: 99\r\nratelimit-reset: 60\r\ncontent-length: 3\r\n\r\n"
        );
        // hyper's side gets the same headers in its map.
        let mut map = HeaderMap::new();
        proxied().1.into_header_map(&mut map);
        assert_eq!(map.get_all("x-request-id").iter().collect::<Vec<_>>(), vec!["ours"]);
        assert_eq!(map.get_all("ratelimit-limit").iter().collect::<Vec<_>>(), vec!["100"]);
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        assert_eq!(map["content-length"], "3");
        assert!(!map.contains_key("keep-alive"));
    }
}
