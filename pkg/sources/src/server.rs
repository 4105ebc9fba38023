//! Serving an axum app over HTTP/1.1 with bounds that no client can outlast: a connection
//! limit, a header read timeout, an idle timeout between requests, and a shutdown that closes
//! whatever is still open when the grace period ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head (request line and headers); larger ones get 431.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Read buffer per connection: bounds the memory a connection holds beyond its request body.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Connection limits and timeouts of a server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the socket's backlog until one closes.
    pub max_connections: usize,
    /// Time for a request's head to arrive, from when the server starts waiting for it (the
    /// connection opened, or the previous answer was sent).
    pub header_timeout: Duration,
    /// A kept-alive connection is closed when no new request arrived this long after the
    /// previous answer.
    pub idle_timeout: Duration,
    /// After a stop, time given to requests in flight; then every connection is closed.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What a server has seen since start, for metrics.
#[derive(Debug, Default)]
pub struct ServerCounters {
    open: AtomicUsize,
    header_timeouts: AtomicU64,
}

impl ServerCounters {
    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed because a request's headers did not arrive in time.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }
}

/// Counts a connection as open while it lives.
struct Open(Arc<ServerCounters>);

impl Open {
    fn new(counters: Arc<ServerCounters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Open(counters)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `socket` until `cancel` fires, then stops accepting, closes idle connections,
/// lets requests in flight finish for up to `limits.shutdown_grace` and closes the rest.
pub async fn serve(
    socket: TcpListener,
    app: Router,
    limits: ServerLimits,
    counters: Arc<ServerCounters>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: give the process a moment.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            limits: limits.clone(),
            stop: cancel.clone(),
            closing: closing.clone(),
            open: Open::new(counters.clone()),
        };
        connections.spawn(connection.serve(stream, app.clone(), slot));
    }
    drop(socket);
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait()).await.is_err() {
        tracing::warn!(open = connections.len(), "shutdown grace over; closing the connections still open");
        closing.cancel();
        connections.wait().await;
    }
}

/// One accepted connection and the signals that end it.
struct Connection {
    limits: ServerLimits,
    /// The server stops: finish the request in flight, accept no further one.
    stop: CancellationToken,
    /// The grace period is over: close now.
    closing: CancellationToken,
    /// Counts the connection while it lives.
    open: Open,
}

impl Connection {
    async fn serve(self, stream: TcpStream, app: Router, _slot: OwnedSemaphorePermit) {
        let activity = Activity::default();
        let app = TowerToHyperService::new(app);
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            move |request| {
                let busy = activity.begin();
                let response = hyper::service::Service::call(&app, request);
                async move {
                    let response = response.await;
                    drop(busy);
                    response
                }
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_READ_BUFFER);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        if error.is_timeout() {
                            self.open.0.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(%error, "connection closed");
                    }
                    return;
                }
                _ = self.closing.cancelled() => return,
                _ = self.stop.cancelled(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = activity.idle_for(self.limits.idle_timeout), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Whether a connection is handling a request, and since when it has been idle after one.
#[derive(Clone)]
struct Activity(Arc<watch::Sender<State>>);

#[derive(Clone, Copy, Default)]
struct State {
    in_flight: usize,
    /// Set when the last request in flight was answered; `None` before the first request, whose
    /// wait is bounded by the header timeout.
    idle_since: Option<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(watch::Sender::new(State::default())))
    }
}

/// Marks a request in flight until dropped.
struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.send_modify(|state| {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.idle_since = Some(Instant::now());
            }
        });
    }
}

impl Activity {
    fn begin(&self) -> Busy {
        self.0.send_modify(|state| {
            state.in_flight = state.in_flight.saturating_add(1);
            state.idle_since = None;
        });
        Busy(self.clone())
    }

    /// Resolves once the connection has been idle for `limit` after answering a request.
    async fn idle_for(&self, limit: Duration) {
        let mut state = self.0.subscribe();
        loop {
            let idle_since = state.borrow_and_update().idle_since;
            match idle_since {
                Some(since) => {
                    let Some(deadline) = since.checked_add(limit) else { return std::future::pending().await };
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return,
                        _ = state.changed() => {}
                    }
                }
                None => {
                    if state.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        cancel: CancellationToken,
        counters: Arc<ServerCounters>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(limits: ServerLimits) -> Server {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let counters = Arc::new(ServerCounters::default());
        let task = tokio::spawn(serve(socket, app, limits, counters.clone(), cancel.clone()));
        Server { addr, cancel, counters, task }
    }

    fn limits(header: u64, idle: u64) -> ServerLimits {
        ServerLimits {
            max_connections: 8,
            header_timeout: Duration::from_millis(header),
            idle_timeout: Duration::from_millis(idle),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// Reads until the peer closes the connection (or `WAIT` passes); returns what was read.
    async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
        let mut text = Vec::new();
        let read = tokio::time::timeout(WAIT, async {
            let mut buffer = [0u8; 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => text.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        read.ok().map(|()| String::from_utf8_lossy(&text).into_owned())
    }

    async fn get_once(stream: &mut TcpStream) -> String {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buffer = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buffer)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    #[tokio::test]
    async fn a_slow_header_is_cut_by_the_header_timeout() {
        let server = start(limits(300, 5000)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let started = Instant::now();
        let answer = read_until_closed(&mut stream).await.expect("the server closes the connection");
        assert!(started.elapsed() >= Duration::from_millis(250), "closed after the timeout, not before");
        assert!(!answer.contains("200 OK"), "{answer}");
        for _ in 0..100 {
            if server.counters.header_timeouts() == 1 && server.counters.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((server.counters.header_timeouts(), server.counters.open()), (1, 0), "counted");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
        let server = start(limits(5000, 200)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(get_once(&mut stream).await.starts_with("HTTP/1.1 200"));
        let answered = Instant::now();
        assert_eq!(read_until_closed(&mut stream).await.as_deref(), Some(""));
        let waited = answered.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(4), "{waited:?}");
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_for_a_free_slot() {
        let server = start(ServerLimits { max_connections: 2, ..limits(5000, 5000) }).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            assert!(get_once(&mut stream).await.starts_with("HTTP/1.1 200"));
            held.push(stream);
        }
        assert_eq!(server.counters.open(), 2);
        let mut third = TcpStream::connect(server.addr).await.unwrap();
        third.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buffer = [0u8; 256];
        let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buffer)).await;
        assert!(early.is_err(), "a third connection is not served while two are open");
        drop(held.pop());
        let n = tokio::time::timeout(WAIT, third.read(&mut buffer)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"), "served once a slot is free");
    }

    #[tokio::test]
    async fn shutdown_closes_connections_still_open_when_the_grace_ends() {
        let grace = Duration::from_millis(300);
        let server = start(ServerLimits { shutdown_grace: grace, ..limits(60_000, 60_000) }).await;
        let (addr, cancel) = (server.addr, server.cancel.clone());
        let mut slow = Vec::new();
        for _ in 0..5 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
            slow.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = Instant::now();
        cancel.cancel();
        tokio::time::timeout(WAIT, server.task).await.expect("the server ends").unwrap();
        assert!(stopped.elapsed() < Duration::from_secs(3), "{:?}", stopped.elapsed());
        for stream in &mut slow {
            assert!(read_until_closed(stream).await.is_some(), "every slow connection is closed");
        }
        assert!(TcpStream::connect(addr).await.is_err(), "no new connection is accepted");
    }
}
