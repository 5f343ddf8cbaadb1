//! The HTTP/1.1 server under `--listen`, hardened against slow and stalled
//! clients: anyone who can reach the port must not be able to starve the
//! kubelet's probes (and get a healthy agent restarted) nor grow the agent.
//!
//! One thread runs a single-threaded tokio runtime; each connection is a task,
//! not a thread, so an idle or stalled client costs a few kilobytes, not a
//! worker. Every connection serves one request (`Connection: close`), must send
//! its request head within [`Limits::head`] and is closed when
//! [`Limits::connection`] has passed, whatever it is doing (a client that stops
//! reading a response cannot hold it longer). At most [`Limits::connections`] are
//! open; a new one beyond that closes the oldest, which is the one most likely
//! to be stalled, so a probe always gets in. Answers are computed by a plain
//! function from a request to a response: it must not block.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// How long and how many clients may hold the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; beyond that the oldest is closed.
    pub connections: usize,
    /// Time from accepting a connection to having read its request head.
    pub head: Duration,
    /// Time from accepting a connection to having written its whole response.
    pub connection: Duration,
    /// Largest request head read, in bytes (hyper's minimum is 8 KiB).
    pub head_bytes: usize,
}

impl Limits {
    /// What `gilscope run --listen` uses (documented in README and SECURITY.md):
    /// probes come with a 1 s timeout and Prometheus' default scrape timeout is
    /// 10 s, so nothing legitimate needs longer; a kubelet, a scraper or two and
    /// a curl need far fewer connections.
    pub const LISTEN: Limits = Limits {
        connections: 128,
        head: Duration::from_secs(5),
        connection: Duration::from_secs(10),
        head_bytes: 16 * 1024,
    };
}

/// What answers a request.
pub type Handler = dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync;

/// The running server; dropping it stops accepting and closes every connection.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Serves `listener` on a new thread named `name`. Errors (no runtime, no
    /// thread) come back here, once, not from the thread.
    pub fn start(
        listener: std::net::TcpListener,
        limits: Limits,
        name: &str,
        handler: Arc<Handler>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _inside = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let accepting = tokio::spawn(accept(listener, limits, handler));
                    // The sender dropped or sent: either way, stop.
                    let _ = stopped.await;
                    accepting.abort();
                });
                // Dropping the runtime drops every connection's task.
            })?;
        Ok(Self { stop: Some(stop) })
    }
}

impl Drop for Server {
    /// Does not wait for the thread: it only has to drop its tasks.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Accepts connections until aborted, at most `limits.connections` open at once.
async fn accept(listener: TcpListener, limits: Limits, handler: Arc<Handler>) {
    let mut open: VecDeque<AbortHandle> = VecDeque::with_capacity(limits.connections);
    let mut warned: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, mostly: say so once a minute, retry gently.
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        "http: cannot accept a connection: {e}; retrying (raise the open files limit?)"
                    );
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|task| !task.is_finished());
        while open.len() >= limits.connections.max(1) {
            if let Some(oldest) = open.pop_front() {
                tracing::debug!(
                    "http: {} connections open, closing the oldest",
                    open.len() + 1
                );
                oldest.abort();
            }
        }
        let task = tokio::spawn(serve(stream, limits, Arc::clone(&handler)));
        open.push_back(task.abort_handle());
    }
}

/// One connection, one request, closed at `limits.connection` at the latest.
async fn serve(stream: TcpStream, limits: Limits, handler: Arc<Handler>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = handler(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .keep_alive(false)
        .max_buf_size(limits.head_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection, connection).await {
        Ok(Ok(())) => {}
        // A client that went away or sent garbage: nothing the operator can act on.
        Ok(Err(e)) => tracing::debug!("http: {e}"),
        Err(_) => tracing::debug!(
            "http: a client held a connection for {} s, closed it",
            limits.connection.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::Instant;

    fn hello(_: &Request<Incoming>) -> Response<Full<Bytes>> {
        Response::new(Full::new(Bytes::from_static(b"hello")))
    }

    /// How long until the server closes `s` (reading and discarding), at most `limit`.
    fn closed_after(mut s: &TcpStream, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            let left = limit.checked_sub(start.elapsed())?;
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            match s.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(start.elapsed())
                }
                Err(_) => return None,
            }
        }
    }

    fn ask(port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    fn serve(limits: Limits, handler: Arc<Handler>) -> (Server, u16) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = Server::start(listener, limits, "test-http", handler).expect("server");
        (server, port)
    }

    #[test]
    fn half_a_request_is_closed_at_the_head_timeout() {
        let limits = Limits {
            connections: 4,
            head: Duration::from_millis(300),
            connection: Duration::from_secs(3),
            head_bytes: 8192,
        };
        let (_server, port) = serve(limits, Arc::new(hello));
        let answer = ask(port);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        let mut half = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        half.write_all(b"GET / HT").expect("half");
        let took = closed_after(&half, Duration::from_secs(5));
        assert!(
            took.is_some_and(|t| t >= Duration::from_millis(250) && t < Duration::from_millis(1500)),
            "half a request closed after {took:?}"
        );
    }

    #[test]
    fn a_connection_beyond_the_limit_closes_the_oldest_and_is_answered() {
        let limits = Limits {
            connections: 4,
            head: Duration::from_secs(5),
            connection: Duration::from_secs(10),
            head_bytes: 8192,
        };
        let (_server, port) = serve(limits, Arc::new(hello));
        let silent: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let answer = ask(port);
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(
            closed_after(&silent[0], Duration::from_secs(1)).is_some(),
            "the oldest connection was not closed"
        );
        assert!(
            closed_after(&silent[3], Duration::from_millis(300)).is_none(),
            "the newest silent connection was closed too"
        );
    }

    #[test]
    fn a_client_that_never_reads_is_closed_at_the_connection_limit() {
        let limits = Limits {
            connections: 4,
            head: Duration::from_millis(300),
            connection: Duration::from_millis(800),
            head_bytes: 8192,
        };
        let big = Bytes::from(vec![b'x'; 32 << 20]);
        let (_server, port) = serve(
            limits,
            Arc::new(move |_: &Request<Incoming>| Response::new(Full::new(big.clone()))),
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        // 32 MiB do not fit in the socket buffers: the server is stuck writing
        // until it gives up at 800 ms.
        std::thread::sleep(Duration::from_millis(1200));
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(ended, "still open after {got} bytes");
        assert!(got < 32 << 20, "the whole {got} bytes were sent");
    }
}
