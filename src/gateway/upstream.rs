//! Upstream connections and the lean HTTP/1.1 client that uses them.
//!
//! Each downstream (client) connection keeps the upstream connections it
//! has used, one per upstream authority, and sends its next call on the same
//! one: a keep-alive client's calls take no pool lock and no pool lookup on
//! the request path. When the client connection ends, its upstream
//! connections go to a shared idle pool (a short lock), from which the next
//! client connection takes one before dialling a new one.
//!
//! The request's own task drives the exchange on the kept `TcpStream`: it
//! writes the head and streams the body, reads the response head
//! ([`h1::parse_head`]), and the response body ([`UpstreamBody`]) reads the
//! rest as the client takes it. No connection task, no channel, no
//! wake-up between tasks. A connection goes back to its slot only when the
//! response was read to its end, nothing followed it, the request was
//! written whole and the upstream did not ask to close; a small response
//! read with its head gives the connection back before the handler returns.
//!
//! A kept connection is checked before use (a read attempt that costs no
//! system call unless the reactor saw the socket become readable: the
//! upstream closed it or sent something unasked, and it is dropped). A call
//! whose first write fails on a kept connection is sent once more on a new
//! one, and so is an idempotent call without a body when the kept
//! connection ends before any of its answer came (the upstream closed it as
//! the call went out); any other call that was written (even in part) is
//! never repeated.
//!
//! The api's timeout bounds the wait for the response head and, once the
//! head has come, each wait for more of the body (nginx's
//! `proxy_read_timeout`: an idle timeout, so an answer that keeps coming is
//! never cut). It is timed on the client connection's one [`KeptTimer`],
//! and only while a body read finds nothing: an answer that came whole with
//! its head never touches it. A body that stalls longer fails with
//! [`IdleTimeout`], and its connection is closed, never reused.
//!
//! Connections in the shared pool that no call has taken for
//! [`MAX_POOLED_IDLE`] are closed by [`Upstreams::close_idle_every`], a task
//! of its own: an upstream no one calls any more is not held open.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::uri::Authority;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h1::{self, Decoder, InBuf, Invalid, Span, Step};
use super::timer::KeptTimer;
use crate::protection::UpstreamGuard;

/// Most idle connections kept per upstream in the shared pool.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// Request body bytes gathered before they are written.
const MAX_QUEUED: usize = 64 * 1024;
/// Pieces written with one `writev`.
const MAX_SLICES: usize = 16;
/// How long a connection may wait in the shared pool for a call: nginx's
/// default for its upstreams' idle connections (`keepalive_timeout 60s`).
/// Most upstream servers close an idle connection sooner (5 s for Node's
/// and Apache's defaults, where the check at take finds it closed); this
/// bounds the rest, and a client connection that ends still finds its
/// upstream's connection warm for a minute.
pub const MAX_POOLED_IDLE: Duration = Duration::from_secs(60);
/// How often the pool is swept: a pooled connection closes between
/// [`MAX_POOLED_IDLE`] and this much later.
pub const POOL_SWEEP_EVERY: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an answer's body failed: nothing more of it came within the api's
/// timeout (the io error's inner error, kind `TimedOut`).
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing more of the response body for {} ms", .0.as_millis())]
pub struct IdleTimeout(pub Duration);

impl IdleTimeout {
    /// Whether `error` is a body's idle timeout.
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>())
    }
}

/// Why a call did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    /// Every address of the upstream is one the guard refuses.
    #[error("will not connect to {authority}: {reason}")]
    Refused { authority: String, reason: String },
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
}

/// One upstream connection and its buffers.
pub struct Conn {
    stream: TcpStream,
    inbuf: InBuf,
    /// Scratch for the response head's header positions.
    spans: Vec<Span>,
    /// The request head's buffer, kept for the next call.
    head: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn { stream, inbuf: InBuf::default(), spans: Vec::new(), head: Vec::new() }
    }

    /// Whether an idle connection can carry a call: the upstream has neither
    /// closed it nor sent anything unasked. No system call unless the
    /// reactor saw it become readable.
    fn is_idle(&self) -> bool {
        if !self.inbuf.is_empty() {
            return false;
        }
        matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(self.inbuf.spare(want));
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.inbuf.filled(n);
        Poll::Ready(Ok(n))
    }
}

/// The shared idle pool and connection settings.
pub struct Upstreams {
    /// Each with the time it was pooled, oldest first.
    idle: Mutex<HashMap<Authority, Vec<(Instant, Conn)>>>,
    connect_timeout: Duration,
    /// Addresses no connection is made to, whatever a name resolves to.
    guard: UpstreamGuard,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, guard: UpstreamGuard) -> Arc<Upstreams> {
        Arc::new(Upstreams { idle: Mutex::new(HashMap::new()), connect_timeout, guard })
    }

    fn take_idle(&self, authority: &Authority) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(authority)?;
        while let Some((_, conn)) = list.pop() {
            if conn.is_idle() {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, authority: Authority, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(authority).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push((Instant::now(), conn));
        }
    }

    /// Closes the pooled connections pooled before `before`, and those
    /// the upstream has closed.
    fn close_idle(&self, before: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|(since, conn)| *since >= before && conn.is_idle());
            !list.is_empty()
        });
    }

    /// A task that closes, every `every`, the pooled connections idle for
    /// longer than `max_idle`. It takes no lock on the request path (the
    /// pool's lock, a moment each sweep) and ends with the last other
    /// holder of the pool.
    pub fn close_idle_every(self: &Arc<Self>, max_idle: Duration, every: Duration) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                if let Some(before) = Instant::now().checked_sub(max_idle) {
                    pool.close_idle(before);
                }
            }
        })
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, UpstreamError> {
        let failed = |reason: String| UpstreamError::Connect { authority: authority.to_string(), reason };
        let stream = tokio::time::timeout(self.connect_timeout, connect_allowed(&self.guard, authority))
            .await
            .map_err(|_| failed(format!("no connection within {} ms", self.connect_timeout.as_millis())))??;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }
}

/// Connects to the first address `authority`'s host resolves to that
/// answers (as `TcpStream::connect` tries them all), of those `guard`
/// allows (the gateway's upstreams; alerts' webhooks).
pub(crate) async fn connect_allowed(guard: &UpstreamGuard, authority: &Authority) -> Result<TcpStream, UpstreamError> {
    let failed = |reason: String| UpstreamError::Connect { authority: authority.to_string(), reason };
    let port = authority.port_u16().unwrap_or(80);
    // An IPv6 literal comes bracketed (`[::1]`); the resolver wants it bare.
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let (mut refused, mut last_error) = (None, None);
    for addr in tokio::net::lookup_host((host, port)).await.map_err(|e| failed(e.to_string()))? {
        if let Some(why) = guard.refuses(addr) {
            refused.get_or_insert(why);
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match (last_error, refused) {
        (Some(e), _) => failed(e.to_string()),
        (None, Some(reason)) => UpstreamError::Refused { authority: authority.to_string(), reason },
        (None, None) => failed("the name resolves to no address".into()),
    })
}

/// The idle connections of one client connection; shared with the response
/// bodies still reading from one of its connections, which give it back.
struct Slot {
    shared: Arc<Upstreams>,
    /// Usually one entry; a client calling several upstreams has one each.
    conns: Mutex<Vec<(Authority, Conn)>>,
    /// The timer of every wait on an upstream's answer (its head in
    /// [`ConnectionUpstreams::send_within`], then its body's idle waits),
    /// kept between calls. Its waits never overlap: a connection's calls
    /// are answered one after the other.
    timer: Mutex<KeptTimer>,
}

impl Slot {
    fn timer(&self) -> std::sync::MutexGuard<'_, KeptTimer> {
        self.timer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, authority: &Authority) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(at) = conns.iter().position(|(a, _)| a == authority) {
            let (_, conn) = conns.swap_remove(at);
            if conn.is_idle() {
                return Some(conn);
            }
        }
        None
    }

    fn keep(&self, authority: Authority, conn: Conn) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.push((authority, conn));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let conns = std::mem::take(self.conns.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (authority, conn) in conns {
            self.shared.give_back(authority, conn);
        }
    }
}

/// The upstream connections of one client connection.
pub struct ConnectionUpstreams {
    slot: Arc<Slot>,
    /// The peer's address as text and as an `X-Forwarded-For` value, made
    /// once per connection rather than once per request.
    peer_text: crate::text::Text,
    peer_header: http::HeaderValue,
}

impl ConnectionUpstreams {
    pub fn new(shared: Arc<Upstreams>, peer: std::net::SocketAddr) -> ConnectionUpstreams {
        let peer_text = peer.ip().to_string();
        let peer_header = http::HeaderValue::from_str(&peer_text).expect("an IP address is a valid header value");
        ConnectionUpstreams {
            slot: Arc::new(Slot { shared, conns: Mutex::new(Vec::new()), timer: Mutex::default() }),
            peer_text: peer_text.into(),
            peer_header,
        }
    }

    pub fn peer_text(&self) -> &crate::text::Text {
        &self.peer_text
    }

    pub fn peer_header(&self) -> &http::HeaderValue {
        &self.peer_header
    }

    /// [`send`](Self::send), given up (`None`) when no response head has
    /// come `timeout` after `started` — or after the request body last made
    /// progress (`sent`, its bytes so far): a caller's upload still coming
    /// is not the upstream's delay. The connection's calls share one
    /// [`KeptTimer`], so a call that answers in time sets no timer of its own.
    /// The answer's body then fails ([`IdleTimeout`]) when a read of it
    /// waits `timeout` with nothing coming.
    pub async fn send_within<B>(
        &self,
        authority: &Authority,
        req: Outgoing<'_, B>,
        forwarded: h1::Forwarded<'_>,
        (started, timeout): (std::time::Instant, Duration),
        sent: &std::sync::atomic::AtomicU64,
    ) -> Option<Result<Answer<B>, UpstreamError>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut deadline = started + timeout;
        let mut seen = sent.load(std::sync::atomic::Ordering::Relaxed);
        let timer = || self.slot.timer();
        timer().arm(deadline);
        let mut send = std::pin::pin!(self.send(authority, req, forwarded));
        poll_fn(|cx| {
            if let Poll::Ready(mut answer) = send.as_mut().poll(cx) {
                if let Ok(answer) = &mut answer {
                    answer.body.idle_timeout(timeout);
                }
                return Poll::Ready(Some(answer));
            }
            loop {
                ready!(timer().poll_until(cx, deadline));
                let now = sent.load(std::sync::atomic::Ordering::Relaxed);
                if now == seen {
                    return Poll::Ready(None);
                }
                seen = now;
                deadline = std::time::Instant::now() + timeout;
                timer().arm(deadline);
            }
        })
        .await
    }

    /// Sends `req` to `authority`, with the gateway's changes to its
    /// headers applied as the head is written, and waits for the response
    /// head. The response body streams the rest.
    pub async fn send<B>(&self, authority: &Authority, req: Outgoing<'_, B>, forwarded: h1::Forwarded<'_>) -> Result<Answer<B>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let Outgoing { method, target, headers, body } = req;
        let kept = self.slot.take(authority).or_else(|| self.slot.shared.take_idle(authority));
        let (mut conn, mut reused) = match kept {
            Some(conn) => (conn, true),
            None => (self.slot.shared.connect(authority).await?, false),
        };
        let chunked = !body.is_end_stream() && !headers.contains("content-length");
        let mut head = std::mem::take(&mut conn.head);
        head.clear();
        h1::encode_head(&mut head, method, target, headers, forwarded, chunked);
        let head_request = *method == Method::HEAD;
        // Only the head goes out, and sending it twice does what sending it once does.
        let replayable = method.is_idempotent() && body.is_end_stream();
        let mut out = Sending::new(head, body, chunked);
        let head = loop {
            match poll_fn(|cx| exchange_head(cx, &mut conn, &mut out, head_request)).await {
                Ok(head) => break head,
                // Nothing of it reached the kept connection: once more, on a new one.
                Err(Failed::Unwritten(_)) if reused => {
                    conn = self.slot.shared.connect(authority).await?;
                    reused = false;
                }
                // The kept connection ended with no byte of an answer (the
                // upstream closed it as the call went out, its keep-alive
                // timeout crossing the call): an idempotent call without a
                // body goes once more, on a new one (RFC 9110 §9.2.2).
                Err(Failed::Other(UpstreamError::Closed | UpstreamError::Io(_))) if reused && replayable && conn.inbuf.is_empty() => {
                    conn = self.slot.shared.connect(authority).await?;
                    reused = false;
                    out.rewind();
                }
                Err(Failed::Unwritten(e)) => return Err(e.into()),
                Err(Failed::Other(e)) => return Err(e),
            }
        };
        let decoder = head.body;
        let mut keep_alive = head.keep_alive;
        // The usual small answer came whole with its head: the connection
        // is free before the handler returns.
        let complete = decoder.remaining().is_some_and(|n| n <= conn.inbuf.len() as u64);
        let body = if complete {
            let n = decoder.remaining().unwrap_or(0) as usize;
            let bytes = (n > 0).then(|| conn.inbuf.take(n));
            keep_alive &= out.is_done() && out.failed.is_none() && conn.inbuf.is_empty();
            if keep_alive {
                conn.head = out.into_head();
                self.slot.keep(authority.clone(), conn);
            }
            UpstreamBody { inner: Inner::Whole(bytes) }
        } else {
            let request = if out.failed.is_some() {
                // Part of the request could not be written: the upstream
                // answered anyway, but the connection cannot carry more.
                keep_alive = false;
                None
            } else if out.is_done() {
                conn.head = out.into_head();
                None
            } else {
                Some(out)
            };
            let streaming = Streaming {
                conn: Some(conn),
                request,
                decoder,
                keep_alive,
                slot: self.slot.clone(),
                authority: authority.clone(),
                idle: None,
                deadline: None,
            };
            UpstreamBody { inner: Inner::Streaming(Box::new(streaming)) }
        };
        Ok(Answer { status: head.status, headers: head.headers, body })
    }
}

/// A request on its way upstream: the caller's method, target (origin
/// form) and headers, and the body.
pub struct Outgoing<'a, B> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a h1::CallHeaders,
    pub body: B,
}

/// The upstream's answer: its status, its headers as they came, and the
/// body that streams the rest.
pub struct Answer<B> {
    pub status: http::StatusCode,
    pub headers: h1::RawHeaders,
    pub body: UpstreamBody<B>,
}

/// Why an exchange ended before a response head.
enum Failed {
    /// The first write failed: nothing was sent.
    Unwritten(io::Error),
    Other(UpstreamError),
}

/// Writes the request and reads the response head, both as far as they
/// can go, until the head is complete. Writing and reading go together, so
/// an upstream that answers before it has read the whole request (a 413,
/// an echo) is heard.
fn exchange_head<B>(cx: &mut Context<'_>, conn: &mut Conn, out: &mut Sending<B>, head_request: bool) -> Poll<Result<h1::Head, Failed>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        if !out.is_done() && out.failed.is_none() {
            match out.poll(cx, &mut conn.stream) {
                Poll::Ready(Err(WriteError::Io(e))) if out.written == 0 => return Poll::Ready(Err(Failed::Unwritten(e))),
                // Written in part: the upstream may still answer (and has
                // seen the call, so it is not sent again).
                Poll::Ready(Err(WriteError::Io(e))) => out.failed = Some(e),
                Poll::Ready(Err(WriteError::Body(e))) => return Poll::Ready(Err(Failed::Other(UpstreamError::RequestBody(e)))),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if let Some(head) = h1::parse_head(&mut conn.inbuf, &mut conn.spans, head_request).map_err(|e| Failed::Other(e.into()))? {
            return Poll::Ready(Ok(head));
        }
        match conn.poll_fill(cx, h1::HEAD_READ) {
            Poll::Ready(Ok(0)) => {
                let error = match out.failed.take() {
                    Some(e) => UpstreamError::Io(e),
                    None if conn.inbuf.is_empty() => UpstreamError::Closed,
                    None => Invalid("the upstream closed the connection inside the response head").into(),
                };
                return Poll::Ready(Err(Failed::Other(error)));
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Other(e.into()))),
            Poll::Pending => return Poll::Pending,
        }
    }
}

enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

/// The request on its way out: the head, then the body as it comes (in
/// chunks when its length is not declared).
struct Sending<B> {
    head: Vec<u8>,
    head_at: usize,
    /// Body pieces behind the head, not yet written.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The body, until it has given its last frame.
    body: Option<B>,
    chunked: bool,
    /// Bytes the socket accepted.
    written: u64,
    /// The write that failed after part of the call had gone.
    failed: Option<io::Error>,
}

impl<B> Sending<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(head: Vec<u8>, body: B, chunked: bool) -> Self {
        let body = (!body.is_end_stream()).then_some(body);
        Sending { head, head_at: 0, queue: VecDeque::new(), queued: 0, body, chunked, written: 0, failed: None }
    }

    fn is_done(&self) -> bool {
        self.body.is_none() && self.head_at == self.head.len() && self.queue.is_empty()
    }

    /// Back to before anything was written, to send a call without a body
    /// once more.
    fn rewind(&mut self) {
        debug_assert!(self.body.is_none() && self.queue.is_empty());
        self.head_at = 0;
        self.written = 0;
        self.failed = None;
    }

    /// The head's buffer, for the connection's next call.
    fn into_head(self) -> Vec<u8> {
        self.head
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.queue.push_back(bytes);
    }

    fn body_ended(&mut self) {
        self.body = None;
        if self.chunked {
            self.push(Bytes::from_static(b"0\r\n\r\n"));
        }
    }

    /// Writes as much as the socket takes; `Ready(Ok)` once all is written.
    fn poll(&mut self, cx: &mut Context<'_>, stream: &mut TcpStream) -> Poll<Result<(), WriteError>> {
        loop {
            while self.queued < MAX_QUEUED {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            if !data.is_empty() {
                                if self.chunked {
                                    self.push(h1::chunk_line(data.len()));
                                    self.push(data);
                                    self.push(Bytes::from_static(b"\r\n"));
                                } else {
                                    self.push(data);
                                }
                            }
                        }
                        // Trailers are not forwarded.
                        if self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                            self.body_ended();
                        }
                    }
                    Poll::Ready(None) => self.body_ended(),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e.into()))),
                    Poll::Pending => break,
                }
            }
            let head = &self.head[self.head_at..];
            if head.is_empty() && self.queue.is_empty() {
                return if self.body.is_none() { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            let written = if self.queue.is_empty() {
                ready!(Pin::new(&mut *stream).poll_write(cx, head))
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for piece in std::iter::once(head).chain(self.queue.iter().map(|b| &b[..])).filter(|p| !p.is_empty()).take(MAX_SLICES) {
                    slices[n] = IoSlice::new(piece);
                    n += 1;
                }
                ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n]))
            };
            let mut n = match written {
                Ok(0) => return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into()))),
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(WriteError::Io(e))),
            };
            self.written += n as u64;
            let from_head = n.min(self.head.len() - self.head_at);
            self.head_at += from_head;
            n -= from_head;
            while n > 0 {
                let front = self.queue.front_mut().expect("written bytes were queued");
                let k = n.min(front.len());
                front.advance(k);
                self.queued -= k;
                n -= k;
                if front.is_empty() {
                    self.queue.pop_front();
                }
            }
        }
    }
}

/// The response body as it comes from the upstream.
pub struct UpstreamBody<B> {
    inner: Inner<B>,
}

impl<B> UpstreamBody<B> {
    /// Fails the body when a read of it waits this long with nothing
    /// coming (a body that came whole with its head has nothing to wait for).
    fn idle_timeout(&mut self, timeout: Duration) {
        if let Inner::Streaming(streaming) = &mut self.inner {
            streaming.idle = Some(timeout);
        }
    }
}

enum Inner<B> {
    /// Read with the head (the connection is already free).
    Whole(Option<Bytes>),
    Streaming(Box<Streaming<B>>),
}

struct Streaming<B> {
    /// Until the body's end or an error.
    conn: Option<Conn>,
    /// The rest of the request, when the upstream answered before it had it all.
    request: Option<Sending<B>>,
    decoder: Decoder,
    keep_alive: bool,
    slot: Arc<Slot>,
    authority: Authority,
    /// How long a read may wait with nothing coming (none: for ever).
    idle: Option<Duration>,
    /// When the current wait ends: set when a read first finds nothing,
    /// cleared by every byte read or written.
    deadline: Option<Instant>,
}

impl<B> Streaming<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The body has been read to its end: the connection goes back to the
    /// client connection's slot if it can carry another call.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if self.keep_alive && self.request.is_none() && self.decoder.is_done() && conn.inbuf.is_empty() {
            // The slot may be gone with its client connection: the shared pool takes it then.
            conn.head.clear();
            self.slot.keep(self.authority.clone(), conn);
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        // Dropped, never reused; the body is not at its end.
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Nothing to read: waits on the connection's timer for the rest of
    /// the idle timeout, counted from the first read that found nothing
    /// (the upstream has sent nothing since: a byte sent meanwhile would
    /// have been read, however long the body was not polled).
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(idle) = self.idle else { return Poll::Pending };
        let slot = &self.slot;
        let deadline = *self.deadline.get_or_insert_with(|| {
            let at = Instant::now() + idle;
            slot.timer().arm(at);
            at
        });
        ready!(self.slot.timer().poll_until(cx, deadline));
        self.fail(io::Error::new(io::ErrorKind::TimedOut, IdleTimeout(idle)))
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        if let Some(request) = self.request.as_mut() {
            let written = request.written;
            let polled = request.poll(cx, &mut conn.stream);
            if request.written != written {
                // The upstream takes the rest of the call: not idle.
                self.deadline = None;
            }
            match polled {
                Poll::Ready(Ok(())) => {
                    conn.head = std::mem::take(&mut request.head);
                    self.request = None;
                }
                // The upstream has answered; the rest of the request is not needed.
                Poll::Ready(Err(_)) => {
                    self.request = None;
                    self.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let conn = self.conn.as_mut().expect("checked above");
            match self.decoder.next(&mut conn.inbuf) {
                Ok(Step::Data(data)) => {
                    if self.decoder.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(invalid) => return self.fail(io::Error::new(io::ErrorKind::InvalidData, invalid)),
            }
            let want = self.decoder.remaining().map_or(h1::MAX_READ, |n| n.clamp(h1::HEAD_READ as u64, h1::MAX_READ as u64) as usize);
            match conn.poll_fill(cx, want) {
                Poll::Ready(Ok(0)) => {
                    if let Err(invalid) = self.decoder.eof() {
                        return self.fail(io::Error::new(io::ErrorKind::UnexpectedEof, invalid));
                    }
                    // Close-delimited: the connection ends with the body.
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => self.deadline = None,
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => return self.poll_idle(cx),
            }
        }
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Streaming(streaming) => streaming.poll_data(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(bytes) => bytes.is_none(),
            Inner::Streaming(streaming) => streaming.decoder.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Streaming(streaming) => streaming.decoder.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The client against a real socket: an upstream on 127.0.0.1:0 that
    //! answers each request with the next canned bytes, often one byte per
    //! write.

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use http::{Request, Response};

    /// Sends a whole `http::Request` the way the gateway sends a call.
    async fn send_request<B>(client: &ConnectionUpstreams, authority: &Authority, req: Request<B>) -> Result<super::Answer<B>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let headers = h1::CallHeaders::Map(parts.headers);
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        client.send(authority, Outgoing { method: &parts.method, target, headers: &headers, body }, h1::Forwarded::default()).await
    }

    /// One canned answer: its bytes, the size of each write, and whether
    /// the upstream closes the connection after it.
    struct Answer {
        bytes: Vec<u8>,
        piece: usize,
        close: bool,
    }

    fn answer(bytes: &[u8]) -> Answer {
        Answer { bytes: bytes.to_vec(), piece: usize::MAX, close: false }
    }

    fn trickled(bytes: &[u8]) -> Answer {
        Answer { bytes: bytes.to_vec(), piece: 1, close: false }
    }

    fn then_close(mut a: Answer) -> Answer {
        a.close = true;
        a
    }

    struct Canned {
        authority: Authority,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Canned {
        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn request(&self, i: usize) -> String {
            String::from_utf8_lossy(&self.requests.lock().unwrap()[i]).into_owned()
        }
    }

    /// Reads one request: the head, then a body by its length or its chunks.
    async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let complete = |buf: &[u8]| -> Option<usize> {
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if let Some(at) = head.find("content-length: ") {
                let n: usize = head[at + 16..].split("\r\n").next()?.parse().ok()?;
                return (buf.len() >= end + n).then_some(end + n);
            }
            if head.contains("transfer-encoding: chunked") {
                let at = buf[end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
                return Some(end + at + 5);
            }
            Some(end)
        };
        loop {
            if let Some(n) = complete(buf) {
                return Some(buf.drain(..n).collect());
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn upstream(answers: Vec<Answer>) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                stream.set_nodelay(true).unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (answers, requests) = (answers.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(request) = read_request(&mut stream, &mut buf).await {
                        requests.lock().unwrap().push(request);
                        let Some(a) = answers.lock().unwrap().pop_front() else { return };
                        for piece in a.bytes.chunks(a.piece.min(a.bytes.len()).max(1)) {
                            if stream.write_all(piece).await.is_err() {
                                return;
                            }
                            if a.piece < a.bytes.len() {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        if a.close {
                            return;
                        }
                    }
                });
            }
        });
        Canned { authority, connections, requests }
    }

    fn client() -> ConnectionUpstreams {
        ConnectionUpstreams::new(Upstreams::new(Duration::from_secs(2), UpstreamGuard::default()), "127.0.0.1:1".parse().unwrap())
    }

    fn get(up: &Canned, method: &str) -> Request<Empty<Bytes>> {
        Request::builder().method(method).uri("/x?y=1").header("host", up.authority.as_str()).body(Empty::new()).unwrap()
    }

    /// One call, its head and whole body, or the error; never longer than 5 s.
    async fn call<B>(client: &ConnectionUpstreams, up: &Canned, req: Request<B>) -> Result<(Response<()>, Bytes), String>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let exchange = async {
            let answer = send_request(client, &up.authority, req).await.map_err(|e| format!("head: {e}"))?;
            let mut head = Response::new(());
            *head.status_mut() = answer.status;
            answer.headers.append_to(head.headers_mut(), &[]);
            let body = answer.body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok((head, body))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("an answer, not a hang")
    }

    #[tokio::test]
    async fn every_framing_in_tiny_pieces_on_one_kept_connection() {
        let up = upstream(vec![
            trickled(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"),
            trickled(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"),
            trickled(b"HTTP/1.1 204 No Content\r\n\r\n"),
            trickled(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            trickled(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
            trickled(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ])
        .await;
        let client = client();
        let (res, body) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!((res.status().as_u16(), &body[..]), (200, b"hello".as_slice()));
        assert_eq!(res.headers()["x-a"], "1");
        assert_eq!(res.headers()["content-length"], "5");
        let (res, body) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!((res.status().as_u16(), &body[..]), (200, b"abcde".as_slice()), "chunks decoded, trailers dropped");
        assert!(!res.headers().contains_key("transfer-encoding"), "re-framed by the server side");
        let (res, body) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!((res.status().as_u16(), body.len()), (204, 0));
        let (res, body) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!((res.status().as_u16(), body.len()), (304, 0));
        let (res, body) = call(&client, &up, get(&up, "HEAD")).await.unwrap();
        assert_eq!((res.status().as_u16(), body.len()), (200, 0), "no body after HEAD");
        assert_eq!(res.headers()["content-length"], "9");
        let (res, body) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!((res.status().as_u16(), &body[..]), (201, b"ok".as_slice()), "interim answers skipped");
        let (res, _) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(up.connections(), 1, "every answer was read to its end, so the connection was kept");
        assert!(up.request(0).starts_with("GET /x?y=1 HTTP/1.1\r\nhost: "), "{}", up.request(0));
        assert!(up.request(4).starts_with("HEAD /x?y=1 HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn close_delimited_http10_and_connection_close_answers_end_their_connection() {
        let up = upstream(vec![
            then_close(trickled(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end")),
            then_close(answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")),
            answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
            answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ])
        .await;
        let client = client();
        let (_, body) = call(&client, &up, get(&up, "GET")).await.unwrap();
        assert_eq!(&body[..], b"until the end");
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "ok");
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "ok");
        assert_eq!(up.connections(), 3, "each of the three ended its connection");
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "ok");
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "ok");
        assert_eq!(up.connections(), 4, "an HTTP/1.0 keep-alive answer kept its connection");
    }

    #[tokio::test]
    async fn hop_by_hop_headers_stay_behind() {
        let up = upstream(vec![answer(
            b"HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        )])
        .await;
        let (res, _) = call(&client(), &up, get(&up, "GET")).await.unwrap();
        let mut names: Vec<&str> = res.headers().keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-length", "set-cookie"]);
        assert_eq!(res.headers().get_all("set-cookie").iter().count(), 2, "repeated headers all forwarded");
    }

    /// A call through [`ConnectionUpstreams::send_within`]: `None` when it
    /// timed out, else whether a head came, and how long it took.
    async fn within(client: &ConnectionUpstreams, up: &Canned, timeout: Duration) -> (Option<bool>, Duration) {
        let started = std::time::Instant::now();
        let (parts, body) = get(up, "GET").into_parts();
        let headers = h1::CallHeaders::Map(parts.headers);
        let req = Outgoing { method: &parts.method, target: "/x?y=1", headers: &headers, body };
        let answer = client.send_within(&up.authority, req, h1::Forwarded::default(), (started, timeout), &Default::default()).await;
        (answer.map(|a| a.is_ok()), started.elapsed())
    }

    #[tokio::test]
    async fn the_connections_timer_times_out_each_call_at_its_own_deadline() {
        // A head that takes ~120 ms to arrive, one byte per millisecond.
        let slow = || trickled(format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: {}\r\n\r\nok", "s".repeat(60)).as_bytes());
        let up = upstream(vec![answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), slow(), slow(), answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), slow()])
            .await;
        let client = client();
        // A quick call leaves the timer at its deadline, 10 s away.
        let (answer, _) = within(&client, &up, Duration::from_secs(10)).await;
        assert_eq!(answer, Some(true));
        // A call with a shorter timeout is not held to that later deadline.
        let (answer, took) = within(&client, &up, Duration::from_millis(40)).await;
        assert_eq!(answer, None, "timed out");
        assert!(took >= Duration::from_millis(40) && took < Duration::from_secs(2), "at its own deadline: {took:?}");
        // The timer has passed: a call with room enough is answered.
        let (answer, took) = within(&client, &up, Duration::from_secs(3)).await;
        assert_eq!(answer, Some(true), "answered in {took:?}");
        // A timer set for 30 ms by a quick call fires during the next, slow
        // call whose deadline is later: it waits on to its own deadline.
        let (answer, _) = within(&client, &up, Duration::from_millis(30)).await;
        assert_eq!(answer, Some(true));
        let (answer, took) = within(&client, &up, Duration::from_secs(3)).await;
        assert_eq!(answer, Some(true), "answered in {took:?}");
        assert!(took > Duration::from_millis(30), "the earlier timer had fired meanwhile: {took:?}");
    }

    /// A call through [`ConnectionUpstreams::send_within`] read to its end:
    /// its body or the body's error, and how long the whole took.
    async fn whole_within(client: &ConnectionUpstreams, up: &Canned, timeout: Duration) -> (Result<Bytes, io::Error>, Duration) {
        let started = std::time::Instant::now();
        let (parts, body) = get(up, "GET").into_parts();
        let headers = h1::CallHeaders::Map(parts.headers);
        let req = Outgoing { method: &parts.method, target: "/x?y=1", headers: &headers, body };
        let exchange = async {
            let answer = client.send_within(&up.authority, req, h1::Forwarded::default(), (started, timeout), &Default::default()).await;
            let answer = answer.expect("a head in time").expect("a head");
            answer.body.collect().await.map(|b| b.to_bytes())
        };
        let body = tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("an end, not a hang");
        (body, started.elapsed())
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_the_timeout_and_one_that_keeps_coming_does_not() {
        let stalled = || answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
        let chunked = || answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        // 800 bytes at one a millisecond or slower: longer than its timeout
        // in all, never idle that long.
        let steady = format!("HTTP/1.1 200 OK\r\nContent-Length: 800\r\n\r\n{}", "s".repeat(800));
        let up = upstream(vec![stalled(), trickled(steady.as_bytes()), chunked()]).await;
        let client = client();
        let timeout = Duration::from_millis(150);
        let (body, took) = whole_within(&client, &up, timeout).await;
        let error = body.expect_err("a stalled body is no whole answer");
        assert!(IdleTimeout::is(&error), "{error}");
        assert!(took >= timeout && took < Duration::from_secs(2), "at the timeout: {took:?}");
        assert!(client.slot.conns.lock().unwrap().is_empty(), "a stalled connection is not kept");
        let steady_timeout = Duration::from_millis(400);
        let (body, took) = whole_within(&client, &up, steady_timeout).await;
        assert_eq!(body.unwrap().len(), 800, "in {took:?}");
        assert!(took > steady_timeout, "the whole took longer than the timeout: {took:?}");
        assert_eq!(up.connections(), 2, "a new connection after the stalled one");
        let (body, _) = whole_within(&client, &up, timeout).await;
        assert!(IdleTimeout::is(&body.expect_err("a stalled chunked body")));
        // Without a timeout (`send`), a body waits as long as it takes.
        let up = upstream(vec![stalled()]).await;
        let answer = send_request(&client, &up.authority, get(&up, "GET")).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), answer.body.collect()).await.is_err(), "still waiting");
    }

    #[tokio::test]
    async fn pooled_connections_idle_too_long_are_closed() {
        let ok = || answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let up = upstream(vec![ok(), ok()]).await;
        let shared = Upstreams::new(Duration::from_secs(2), UpstreamGuard::default());
        let pooled = |shared: &Upstreams| shared.idle.lock().unwrap().get(&up.authority).map_or(0, Vec::len);
        let client = ConnectionUpstreams::new(shared.clone(), "127.0.0.1:1".parse().unwrap());
        call(&client, &up, get(&up, "GET")).await.unwrap();
        // The client connection ends: its upstream connection is pooled.
        drop(client);
        assert_eq!(pooled(&shared), 1);
        shared.close_idle(Instant::now() - Duration::from_secs(60));
        assert_eq!(pooled(&shared), 1, "not idle long enough to be closed");
        let sweeper = shared.close_idle_every(Duration::from_millis(100), Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pooled(&shared), 1, "closed before its time");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pooled(&shared), 0, "closed once idle too long");
        assert!(shared.idle.lock().unwrap().is_empty(), "nor is the upstream remembered");
        sweeper.abort();
        // The next call dials anew.
        call(&ConnectionUpstreams::new(shared.clone(), "127.0.0.1:1".parse().unwrap()), &up, get(&up, "GET")).await.unwrap();
        assert_eq!(up.connections(), 2);
    }

    #[tokio::test]
    async fn broken_heads_are_errors_not_hangs() {
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() < 70 * 1024 {
            huge.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let cases: Vec<(&str, Answer)> = vec![
            ("garbage", then_close(answer(b"SSH-2.0-OpenSSH_9.2\r\n"))),
            ("garbage in pieces", trickled(b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n")),
            ("CL and TE", answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
            ("conflicting CL", answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")),
            ("non-numeric CL", answer(b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello")),
            ("gzip TE", answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello")),
            ("switching protocols", answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")),
            ("oversized head", Answer { bytes: huge, piece: 4096, close: false }),
            ("closed without an answer", then_close(answer(b""))),
            ("closed inside the head", then_close(trickled(b"HTTP/1.1 200 OK\r\nContent-"))),
        ];
        for (name, a) in cases {
            let up = upstream(vec![a]).await;
            let error = call(&client(), &up, get(&up, "GET")).await.err().unwrap_or_else(|| panic!("{name}: answered"));
            assert!(error.starts_with("head: "), "{name}: {error}");
        }
    }

    #[tokio::test]
    async fn broken_bodies_fail_the_body() {
        let cases: Vec<(&str, Answer)> = vec![
            ("bad chunk size", trickled(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")),
            ("empty chunk size", answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n\r\n\r\n")),
            ("chunk longer than said", answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n")),
            ("chunk size past 64 bits", answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n")),
            ("truncated length", then_close(trickled(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"))),
            ("truncated chunks", then_close(answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"))),
        ];
        for (name, a) in cases {
            let up = upstream(vec![a]).await;
            let error = call(&client(), &up, get(&up, "GET")).await.err().unwrap_or_else(|| panic!("{name}: answered"));
            assert!(error.starts_with("body: "), "{name}: {error}");
        }
    }

    #[tokio::test]
    async fn bytes_after_an_answer_are_never_read_as_the_next_one() {
        let up = upstream(vec![
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"),
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"),
        ])
        .await;
        let client = client();
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "ok");
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "real");
        assert_eq!(up.connections(), 2, "the connection with extra bytes was dropped");
    }

    #[tokio::test]
    async fn a_kept_connection_the_upstream_closed_is_replaced_not_failed() {
        let up = upstream(vec![
            then_close(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")),
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"),
        ])
        .await;
        let client = client();
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "first");
        // The upstream closes its side of the idle connection (as on a keep-alive timeout).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(call(&client, &up, get(&up, "GET")).await.unwrap().1, "second");
        assert_eq!(up.connections(), 2);
    }

    #[tokio::test]
    async fn request_bodies_go_with_their_length_or_in_chunks() {
        let ok = || answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let up = upstream(vec![ok(), ok()]).await;
        let client = client();
        let req = Request::post("/up").header("host", "h").header("content-length", "5").body(Full::new(Bytes::from_static(b"hello"))).unwrap();
        call(&client, &up, req).await.unwrap();
        let pieces = [Bytes::from_static(b"hello"), Bytes::new(), Bytes::from_static(b", world")];
        let stream = futures_util::stream::iter(pieces.map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))));
        let req = Request::post("/up").header("host", "h").body(StreamBody::new(stream)).unwrap();
        call(&client, &up, req).await.unwrap();
        assert_eq!(up.request(0), "POST /up HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(up.request(1), "POST /up HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n");
        assert_eq!(up.connections(), 1);
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_request_is_heard() {
        // The upstream answers after the head, reading none of the body; the
        // body never ends. The answer still comes through.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            stream.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let endless = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))), ()))
        });
        let req = Request::post("/up").header("host", "h").body(StreamBody::new(Box::pin(endless))).unwrap();
        let client = client();
        let res = tokio::time::timeout(Duration::from_secs(5), send_request(&client, &authority, req)).await.expect("no hang").unwrap();
        assert_eq!(res.status.as_u16(), 413);
        let body = tokio::time::timeout(Duration::from_secs(5), res.body.collect()).await.expect("no hang").unwrap().to_bytes();
        assert_eq!(&body[..], b"big");
        assert!(client.slot.conns.lock().unwrap().is_empty(), "a connection with half a request is not kept");
    }
}
