//! Upstream connections.
//!
//! Each downstream (client) connection keeps the upstream connections it
//! has used, one per upstream authority, and sends its next call on the same
//! one: a keep-alive client's calls take no pool lock and no pool lookup on
//! the request path. When the client connection ends, its upstream
//! connections go to a shared idle pool (a short lock), from which the next
//! client connection takes one before dialling a new one.
//!
//! A call that could not be written (the kept connection had been closed by
//! the upstream meanwhile) is sent again once on a fresh connection; a call
//! that was written is never repeated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::CountingBody;

/// Most idle connections kept per upstream in the shared pool.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

type Sender = SendRequest<CountingBody>;

/// Why a call did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("upstream request failed: {0}")]
    Request(#[from] hyper::Error),
}

/// The shared idle pool and connection settings.
pub struct Upstreams {
    idle: Mutex<HashMap<Authority, Vec<Sender>>>,
    connect_timeout: Duration,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration) -> Arc<Upstreams> {
        Arc::new(Upstreams { idle: Mutex::new(HashMap::new()), connect_timeout })
    }

    fn take_idle(&self, authority: &Authority) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(authority)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, authority: Authority, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(authority).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(sender);
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, UpstreamError> {
        let failed = |reason: String| UpstreamError::Connect { authority: authority.to_string(), reason };
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((authority.host(), port)))
            .await
            .map_err(|_| failed(format!("no connection within {} ms", self.connect_timeout.as_millis())))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The upstream connections of one client connection.
pub struct ConnectionUpstreams {
    shared: Arc<Upstreams>,
    /// The peer's address as text and as an `X-Forwarded-For` value, made
    /// once per connection rather than once per request.
    peer_text: String,
    peer_header: http::HeaderValue,
    /// Usually one entry; a client calling several upstreams has one each.
    mine: Mutex<Vec<(Authority, Sender)>>,
}

impl ConnectionUpstreams {
    pub fn new(shared: Arc<Upstreams>, peer: std::net::SocketAddr) -> ConnectionUpstreams {
        let peer_text = peer.ip().to_string();
        let peer_header = http::HeaderValue::from_str(&peer_text).expect("an IP address is a valid header value");
        ConnectionUpstreams { shared, peer_text, peer_header, mine: Mutex::new(Vec::new()) }
    }

    pub fn peer_text(&self) -> &str {
        &self.peer_text
    }

    pub fn peer_header(&self) -> &http::HeaderValue {
        &self.peer_header
    }

    fn take_mine(&self, authority: &Authority) -> Option<Sender> {
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        let at = mine.iter().position(|(a, _)| a == authority)?;
        Some(mine.swap_remove(at).1)
    }

    fn keep(&self, authority: &Authority, sender: Sender) {
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        mine.push((authority.clone(), sender));
    }

    /// A connection ready for a call: this client connection's own, one from
    /// the shared pool, or a new one.
    async fn checkout(&self, authority: &Authority, fresh: bool) -> Result<Sender, UpstreamError> {
        if !fresh {
            while let Some(mut sender) = self.take_mine(authority).or_else(|| self.shared.take_idle(authority)) {
                // An HTTP/1 connection is ready once the previous response
                // has been read to its end; a closed one errors.
                if sender.ready().await.is_ok() {
                    return Ok(sender);
                }
            }
        }
        let mut sender = self.shared.connect(authority).await?;
        sender.ready().await?;
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` and waits
    /// for the response head.
    pub async fn send(&self, authority: &Authority, req: Request<CountingBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = req;
        let mut fresh = false;
        loop {
            let mut sender = self.checkout(authority, fresh).await?;
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.keep(authority, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // Not written: the connection was gone. Once more, on a new one.
                    Some(unsent) if !fresh => {
                        req = unsent;
                        fresh = true;
                    }
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }
}

impl Drop for ConnectionUpstreams {
    fn drop(&mut self) {
        let mine = std::mem::take(self.mine.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (authority, sender) in mine {
            self.shared.give_back(authority, sender);
        }
    }
}
