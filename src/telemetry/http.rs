//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics`, nothing else.
//!
//! One request per connection, answered with `Connection: close`, which Prometheus handles
//! fine and keeps this free of keep-alive state. It is meant for localhost (the default
//! bind) but still defends itself, because a scraper that misbehaves must not disturb
//! ingest: the request head is capped at [`MAX_REQUEST_BYTES`], a connection gets
//! [`IO_TIMEOUT`] to send it and to take the answer, and at most [`MAX_CONNECTIONS`] are
//! served at once (extra ones are closed right away rather than queued).
//! A web framework would bring all of this and far more; this file is the whole server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::metrics::{Metrics, CONTENT_TYPE};

/// Largest request head accepted; a scrape request is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client gets to send its request, and again to read the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served concurrently.
pub const MAX_CONNECTIONS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for metrics scrapes on {addr}: {source} (is another process using the port? set a different metrics address or disable metrics in the config)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound metrics listener. Binding first and serving later lets the runtime fail startup
/// on a taken port before it tells systemd it is ready, and lets tests bind port 0.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        Ok(MetricsServer { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes. Connections in progress finish on their own
    /// (they are bounded by [`IO_TIMEOUT`]).
    pub async fn serve(self, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tracing::info!(addr = %self.addr, "serving Prometheus metrics on /metrics");
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "metrics: too many scrapes at once, closing");
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &metrics).await {
                    tracing::debug!(%peer, error = %e, "metrics: connection ended with an error");
                }
                drop(permit);
            });
        }
        tracing::debug!(addr = %self.addr, "metrics server stopped");
    }
}

/// Binds `addr` and serves `metrics` until `shutdown` completes.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpError> {
    MetricsServer::bind(addr)
        .await?
        .serve(metrics, shutdown)
        .await;
    Ok(())
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                false,
            )
            .await
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, "408 Request Timeout", "", false).await,
    };
    let mut parts = head.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let head_only = method == b"HEAD";
    match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => {
            let body = metrics.render();
            respond(&mut stream, "200 OK", &body, head_only).await
        }
        (b"GET" | b"HEAD", _) => {
            respond(&mut stream, "404 Not Found", "see /metrics\n", head_only).await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "", false).await,
    }
}

/// Reads until the end of the request head; returns its first line, or `None` when the head
/// exceeds [`MAX_REQUEST_BYTES`]. A GET has no body, so nothing after the head is read.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client closed before finishing its request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            let head = &buf[..end];
            let line_end = find(head, b"\n").unwrap_or(head.len());
            let line = head[..line_end]
                .strip_suffix(b"\r")
                .unwrap_or(&head[..line_end]);
            return Ok(Some(line.to_vec()));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow to read"))?
}
