//! One timer per client connection for each kind of wait on it.
//!
//! A connection waits many times with the same timeout (for the next
//! request head, for the upstream's answer), and nearly every wait ends long
//! before its deadline. A fresh timer per wait costs an insertion into the
//! runtime's timer wheel and a removal from it. A [`KeptTimer`] instead stays
//! set at the deadline of the wait that last moved it, and is moved only
//! when it lies beyond the current wait's deadline, or when it fires before
//! that deadline (it had passed, or belonged to an earlier wait): then it is
//! set to the current deadline and waited on again. About one change per
//! timeout period instead of two per wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use tokio::time::Sleep;

/// A timer kept across waits (see the module's documentation).
#[derive(Default)]
pub struct KeptTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl KeptTimer {
    /// Prepares a wait that ends at `deadline`.
    pub fn arm(&mut self, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        match &mut self.sleep {
            Some(sleep) if sleep.deadline() > deadline => sleep.as_mut().reset(deadline),
            Some(_) => {}
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Ready once `deadline` (the one given to [`arm`](Self::arm)) has come.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier deadline: on to this wait's own.
            sleep.as_mut().reset(deadline);
        }
    }
}

/// hyper's timer for one connection (its header-read timeout), backed by
/// one [`KeptTimer`]: no timer of its own per request head.
#[derive(Clone, Default)]
pub struct ConnectionTimer {
    kept: Arc<Mutex<KeptTimer>>,
}

impl ConnectionTimer {
    fn lock(&self) -> std::sync::MutexGuard<'_, KeptTimer> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.lock().arm(deadline);
        Box::pin(KeptSleep { timer: self.clone(), deadline })
    }
}

/// One wait on a [`ConnectionTimer`].
struct KeptSleep {
    timer: ConnectionTimer,
    deadline: Instant,
}

impl Future for KeptSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.lock().poll_until(cx, self.deadline)
    }
}

impl hyper::rt::Sleep for KeptSleep {}

#[cfg(test)]
mod tests {
    //! On the real clock (hyper's deadlines are `std` instants), in
    //! milliseconds.

    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Waits on `timer` until `deadline`, or gives up after `limit`: whether it fired.
    async fn fires(timer: &mut KeptTimer, deadline: Instant, limit: Duration) -> bool {
        timer.arm(deadline);
        let wait = std::future::poll_fn(|cx| timer.poll_until(cx, deadline));
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    #[tokio::test]
    async fn each_wait_ends_at_its_own_deadline() {
        let mut timer = KeptTimer::default();
        // A long wait that ends early (its caller stops waiting) leaves the timer far ahead.
        assert!(!fires(&mut timer, Instant::now() + Duration::from_secs(30), ms(5)).await);
        // A shorter wait is not held to it.
        let now = Instant::now();
        assert!(fires(&mut timer, now + ms(50), Duration::from_secs(2)).await);
        assert!(now.elapsed() >= ms(50));
        // The timer has passed: a later, longer wait is not ended by it.
        let now = Instant::now();
        assert!(!fires(&mut timer, now + ms(400), ms(250)).await, "not before its deadline");
        assert!(fires(&mut timer, now + ms(400), Duration::from_secs(2)).await, "at its deadline");
        assert!(now.elapsed() >= ms(400));
    }

    #[tokio::test]
    async fn hyper_sleeps_share_the_connections_timer() {
        use hyper::rt::Timer;
        let timer = ConnectionTimer::default();
        let now = Instant::now();
        drop(timer.sleep_until(now + Duration::from_secs(30)));
        assert!(tokio::time::timeout(Duration::from_secs(2), timer.sleep(ms(20))).await.is_ok());
        assert!(now.elapsed() >= ms(20));
        let now = Instant::now();
        assert!(tokio::time::timeout(ms(250), timer.sleep(ms(400))).await.is_err(), "not before its deadline");
        assert!(tokio::time::timeout(Duration::from_secs(2), timer.sleep_until(now + ms(400))).await.is_ok());
        assert!(now.elapsed() >= ms(400));
    }

    /// A hyper connection with this timer and a 200 ms header-read timeout
    /// on a real socket; the client's side of it.
    async fn served() -> tokio::net::TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(ConnectionTimer::default())
                .header_read_timeout(ms(200))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        tokio::net::TcpStream::connect(addr).await.unwrap()
    }

    /// Sends one request and reads its whole (2-byte) answer.
    async fn call(client: &mut tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let mut buf = [0u8; 512];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed while a call was answered: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn hypers_header_read_timeout_still_closes_a_slow_head_and_spares_busy_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut client = served().await;
        // Calls 80 ms apart for 600 ms: each head came in time, so none is
        // cut off by a deadline an earlier head left on the timer.
        let started = Instant::now();
        let mut answered = started;
        while started.elapsed() < ms(600) {
            call(&mut client).await;
            answered = Instant::now();
            tokio::time::sleep(ms(80)).await;
        }
        // A head that never ends: the connection is closed at the timeout,
        // counted (as hyper does) from when it began to wait for this head.
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.expect("closed, not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"), "{read:?}");
        assert!(answered.elapsed() >= ms(150), "not before the timeout: {:?}", answered.elapsed());
    }
}
