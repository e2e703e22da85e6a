//! Streaming bodies that count bytes, and the response body that records the
//! request's audit event when the last byte has gone out (or the client left).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::h1::RawHeaders;
use super::upstream::{IdleTimeout, UpstreamBody};
use crate::audit::AuditPipeline;
use crate::event::{Event, Text};

/// A caller's request body: hyper's, or none at all for a call the
/// gateway's own connection loop read (it takes only calls without a body;
/// see [`super::conn`]).
pub enum ClientBody {
    /// hyper's, and the watch its connection keeps (told when it ends).
    Hyper(Incoming, Arc<HeadWatch>),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(body, watch) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                watch.waiting.store(polled.is_pending(), Ordering::Relaxed);
                if matches!(polled, Poll::Ready(None)) || (matches!(polled, Poll::Ready(Some(Ok(_)))) && body.is_end_stream()) {
                    watch.body_ended();
                }
                polled
            }
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body, _) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body, _) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// On a connection hyper serves: how many bytes of a next request head
/// have come since the last request's body ended, so that when hyper's
/// header-read timeout closes the connection a slow head (some came) is
/// told from an idle connection (none did) and recorded as the gateway's
/// own loop records it. Bytes of the next head that came in one read with
/// the last call's head are not seen, and while a body is left unread
/// (where it ends is hyper's to know) nothing is counted: a slow head may
/// go unrecorded then, but an idle connection is never recorded as one.
/// It also tells whether the gateway, at its last look at the call's
/// body, found nothing of it ready: waited on the caller, not the upstream.
#[derive(Default)]
pub struct HeadWatch {
    received: AtomicUsize,
    in_body: AtomicBool,
    waiting: AtomicBool,
}

impl HeadWatch {
    /// `bytes` came from the client. Empty lines before a head are not a
    /// head begun (RFC 9112 §2.2 lets a client send them; hyper skips them).
    pub fn read(&self, bytes: &[u8]) {
        if self.in_body.load(Ordering::Relaxed) {
            return;
        }
        let counted = if self.received.load(Ordering::Relaxed) == 0 { skip_empty_lines(bytes) } else { bytes };
        self.received.fetch_add(counted.len(), Ordering::Relaxed);
    }

    /// hyper has read a request head; `has_body`: a body follows it.
    pub fn call(&self, has_body: bool) {
        self.received.store(0, Ordering::Relaxed);
        self.in_body.store(has_body, Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// The last poll of the call's body found nothing ready: the rest of
    /// it is the caller's to send (not stuck behind an upstream that
    /// stopped reading, where the body is not polled).
    pub fn waiting_for_body(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    fn body_ended(&self) {
        self.in_body.store(false, Ordering::Relaxed);
    }

    /// The bytes of an unfinished head, when some came and they are known.
    pub fn partial_head(&self) -> Option<usize> {
        let received = self.received.load(Ordering::Relaxed);
        (received > 0 && !self.in_body.load(Ordering::Relaxed)).then_some(received)
    }
}

/// `bytes` without the CR and LF bytes it starts with.
pub fn skip_empty_lines(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Passes a body through unchanged, adding the size of each data frame to a
/// shared counter. Used for the request body on its way to the upstream.
pub struct CountingBody {
    inner: ClientBody,
    counter: Arc<AtomicU64>,
}

impl CountingBody {
    pub fn new(inner: ClientBody, counter: Arc<AtomicU64>) -> Self {
        CountingBody { inner, counter }
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Everything needed to complete and record a request's event once its
/// response is finished.
pub struct Finisher {
    pub event: Event,
    pub started: Instant,
    pub request_bytes: Option<Arc<AtomicU64>>,
    pub audit: Arc<AuditPipeline>,
}

/// Why an answer's body ended before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyFailure {
    /// The upstream's body broke (bad framing, the connection failed or closed early).
    Upstream,
    /// Nothing more of it came within the api's timeout.
    Timeout,
}

impl Finisher {
    /// Records the event; under `durability = "sync"`, with a receiver
    /// that hears when it is committed.
    pub(super) fn finish(mut self, response_bytes: u64, completed: bool, failure: Option<BodyFailure>) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let e = &mut self.event;
        e.latency_us = Some(self.started.elapsed().as_micros() as u64);
        e.response_size_bytes = Some(response_bytes);
        e.request_size_bytes = Some(self.request_bytes.map_or(0, |c| c.load(Ordering::Relaxed)));
        if let Some(failure) = failure {
            // The status stays the one the caller was sent.
            e.outcome = Text::from_static("failure");
            let (code, message) = match failure {
                BodyFailure::Upstream => ("upstream_body_error", "the upstream failed while sending the response body"),
                BodyFailure::Timeout => ("upstream_timeout", "the upstream sent nothing more of the response body within the timeout"),
            };
            e.error_code = Some(Text::from_static(code));
            e.error_message = Some(message.into());
        } else if !completed {
            e.outcome = Text::from_static("aborted");
            e.error_code.get_or_insert_with(|| Text::from_static("client_disconnected"));
            e.error_message.get_or_insert_with(|| "the client went away before the response was complete".into());
        }
        if self.audit.sync() {
            self.audit.record_committed(self.event)
        } else {
            self.audit.record(self.event);
            None
        }
    }
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(UpstreamBody<CountingBody>),
}

/// Whether an answer with `status` to a call carries no body whatever its
/// body holds: to a `HEAD`, a 1xx, 204 or 304 (RFC 9110 §6.4.1).
pub fn no_body(head_request: bool, status: http::StatusCode) -> bool {
    head_request || status.is_informational() || status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED
}

/// The body of every gateway response.
pub struct GatewayBody {
    inner: Inner,
    sent: u64,
    errored: Option<BodyFailure>,
    /// Boxed: the event is large and the body is moved through hyper several times.
    finisher: Option<Box<Finisher>>,
    /// A proxied answer's headers (see [`GatewayBody::take_proxied_head`]).
    proxied: Option<ProxiedHead>,
    /// Under `durability = "sync"`: the body's length when it is known
    /// (the data frame that reaches it is the answer's last piece).
    sync_length: Option<u64>,
    /// Under `durability = "sync"`: the answer's last piece — its last data
    /// frame, or its end — held back until its event is committed.
    held: Option<Held>,
}

struct Held {
    committed: tokio::sync::oneshot::Receiver<()>,
    last: Option<Frame<Bytes>>,
}

/// The headers of a proxied answer: the upstream's as they came, and the
/// gateway's own (request id, rate limits), which win over the upstream's
/// of the same names. The gateway's connection loop writes them straight
/// into the response head; only a connection hyper serves needs them in a
/// header map ([`ProxiedHead::into_header_map`]).
pub struct ProxiedHead {
    pub upstream: RawHeaders,
    pub request_id: HeaderValue,
    pub rate: Option<crate::ratelimit::Standing>,
}

impl ProxiedHead {
    /// The names of the headers the gateway sets on this answer.
    fn own_names(&self) -> &'static [&'static HeaderName] {
        static WITHOUT_RATE: [&HeaderName; 1] = [&super::X_REQUEST_ID];
        static WITH_RATE: [&HeaderName; 4] = [&super::X_REQUEST_ID, &super::RATELIMIT_LIMIT, &super::RATELIMIT_REMAINING, &super::RATELIMIT_RESET];
        if self.rate.is_some() {
            &WITH_RATE
        } else {
            &WITHOUT_RATE
        }
    }

    /// The gateway's headers: each name (from [`Self::own_names`]) and its value.
    pub fn own(&self, mut each: impl FnMut(&'static HeaderName, &[u8])) {
        let names = self.own_names();
        each(names[0], self.request_id.as_bytes());
        if let Some(rate) = &self.rate {
            for (name, n) in names[1..].iter().zip([rate.limit, rate.remaining, rate.reset_secs]) {
                each(name, itoa::Buffer::new().format(n).as_bytes());
            }
        }
    }

    /// Whether the gateway sets a header of this name (any case) itself.
    pub fn sets(&self, name: &[u8]) -> bool {
        self.own_names().iter().any(|own| name.eq_ignore_ascii_case(own.as_str().as_bytes()))
    }

    /// All of it in `map`, the gateway's headers winning (set as on every
    /// other answer: [`super::rate_headers`]).
    pub fn into_header_map(self, map: &mut HeaderMap) {
        self.upstream.append_to(map, self.own_names());
        map.insert(super::X_REQUEST_ID.clone(), self.request_id);
        if let Some(rate) = &self.rate {
            super::rate_headers(map, rate);
        }
    }
}

impl GatewayBody {
    pub fn full(bytes: Bytes, finisher: Finisher) -> Self {
        Self::new(Inner::Full(Some(bytes)), finisher, None)
    }

    /// A proxied answer's body, with its headers riding along (the
    /// response's own header map stays empty).
    pub(super) fn upstream(body: UpstreamBody<CountingBody>, finisher: Finisher, head: ProxiedHead) -> Self {
        Self::new(Inner::Upstream(body), finisher, Some(head))
    }

    fn new(inner: Inner, finisher: Finisher, proxied: Option<ProxiedHead>) -> Self {
        let sync = finisher.audit.sync();
        let mut body = GatewayBody { inner, sent: 0, errored: None, finisher: Some(Box::new(finisher)), proxied, sync_length: None, held: None };
        if sync {
            body.sync_length = body.size_hint().exact();
        }
        body
    }

    /// For an answer that carries no body bytes (`bodiless`, as
    /// [`no_body`] says, or an empty body): records the event as complete,
    /// and under `durability = "sync"` waits for its commit. Called before
    /// the head is sent, since the head alone completes such an answer.
    /// (The body of an answer to a `HEAD`, a 204 or 304 is then dropped
    /// unpolled, which would otherwise count as the client going away.)
    pub async fn settle_if_bodiless(&mut self, bodiless: bool) {
        if !bodiless && self.size_hint().exact() != Some(0) {
            return;
        }
        let Some(finisher) = self.finisher.take() else { return };
        if let Some(committed) = (*finisher).finish(self.sent, true, self.errored) {
            // An error means the writer stopped: the answer is not held forever.
            let _ = committed.await;
        }
    }

    /// A proxied answer's headers, once.
    pub(super) fn take_proxied_head(&mut self) -> Option<ProxiedHead> {
        self.proxied.take()
    }

    fn inner_at_end(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(f) = self.finisher.take() {
            (*f).finish(self.sent, completed, self.errored);
        }
    }

    /// The answer's last piece has come: records the event and, under
    /// `durability = "sync"`, holds the piece back until it is committed.
    fn finish_last(&mut self, last: Option<Frame<Bytes>>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let committed = self.finisher.take().and_then(|f| (*f).finish(self.sent, true, self.errored));
        match committed {
            Some(committed) => {
                self.held = Some(Held { committed, last });
                self.poll_held(cx)
            }
            None => Poll::Ready(last.map(Ok)),
        }
    }

    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let held = self.held.as_mut().expect("called with a held piece");
        // An error means the writer stopped: the answer is not held forever.
        let _ = std::task::ready!(std::future::Future::poll(Pin::new(&mut held.committed), cx));
        Poll::Ready(self.held.take().expect("checked above").last.map(Ok))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.held.is_some() {
            return this.poll_held(cx);
        }
        let polled = match &mut this.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if this.sync_length == Some(this.sent) {
                        return this.finish_last(Some(frame), cx);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.errored = Some(if IdleTimeout::is(&error) { BodyFailure::Timeout } else { BodyFailure::Upstream });
                this.finish(false);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => this.finish_last(None, cx),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Under `durability = "sync"` the end is held until the event is
        // committed: hyper must poll for it, not end the answer on its own.
        if self.held.is_some() || self.finisher.as_ref().is_some_and(|f| f.audit.sync()) {
            return false;
        }
        self.inner_at_end()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        // Hyper may drop a body it knows is finished without polling it to
        // the end; that still counts as complete.
        let completed = self.inner_at_end();
        self.finish(completed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use http_body::Body;
    use http_body_util::BodyExt;

    use super::{Finisher, GatewayBody};
    use crate::audit::AuditPipeline;
    use crate::config::{resolve, Durability, FileConfig, Overrides};
    use crate::event::{Category, Event};

    /// Under `sync`, hyper must not see the end before the event is
    /// committed: it ends an answer on its own once `is_end_stream` says so.
    #[tokio::test]
    async fn under_sync_the_end_is_not_announced_before_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = resolve(FileConfig::default(), Overrides::default()).unwrap().audit;
        config.durability = Durability::Sync;
        config.flush_interval = std::time::Duration::from_millis(1000);
        let audit = Arc::new(AuditPipeline::start(dir.path().to_path_buf(), &config).unwrap());
        let finisher = || Finisher {
            event: Event::new("acme", Category::Request, "request", "success"),
            started: Instant::now(),
            request_bytes: None,
            audit: audit.clone(),
        };
        // An answer of known length: its last data frame is held.
        let mut body = GatewayBody::full(Bytes::from_static(b"whole answer"), finisher());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"whole answer"));
        assert_eq!(audit.status().committed, 1, "the last piece came out before its event was committed");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        // A body already at its end (an upstream's whose terminator came
        // with its last piece) is not announced as ended: its end is polled
        // for, and held.
        let mut body = GatewayBody::new(super::Inner::Full(None), finisher(), None);
        assert!(!body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(audit.status().committed, 2, "the end came out before its event was committed");
        audit.shutdown().await;
    }
}
