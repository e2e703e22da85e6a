//! What the gateway's and the admin API's listeners share: taking the next
//! connection, and at shutdown letting connections finish for a while
//! before cutting off those still open.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The next connection. A failed accept (out of file descriptors, a
/// connection reset before it was taken) is logged and tried again after a
/// pause, rather than spinning or stopping the listener.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(connection) => return connection,
            Err(error) => {
                tracing::warn!(%error, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// At shutdown, once the listener is closed: idle connections close at
/// once (`graceful`), the rest get `drain` to finish; those still open then
/// are cut off (their tasks aborted), and this returns when every task has
/// ended.
pub async fn drain(graceful: GracefulShutdown, connections: &mut JoinSet<()>, drain: Duration, what: &str) {
    let drained = tokio::time::timeout(drain, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("{what} shutdown: some connections did not finish in time; they are cut off");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}
