//! The self-observation endpoint (`agent.metrics_listen`): `GET /metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (every device has been polled once).
//! A deliberately tiny HTTP/1.1 responder: one request per connection, bounded request size
//! and time; three fixed pages need no web framework.

use super::metrics::Metrics;
use crate::shutdown::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Binds `address` (so a taken port is a start-up error).
pub fn bind(address: &str) -> Result<TcpListener, String> {
    let std_listener = std::net::TcpListener::bind(address)
        .map_err(|e| format!("metrics_listen {address}: {e}"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("metrics_listen {address}: {e}"))?;
    TcpListener::from_std(std_listener).map_err(|e| format!("metrics_listen {address}: {e}"))
}

/// Connections answered at once; more are closed without an answer (a scraper that opens
/// hundreds cannot make the agent hold hundreds of sockets and buffers).
pub const MAX_CONNECTIONS: usize = 16;

/// Serves until shutdown.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics endpoint: too many connections; closing one");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render_prometheus()),
        ("GET", "/healthz") => ("200 OK", "ok\n".to_string()),
        ("GET", "/readyz") => {
            let devices = metrics.devices.all();
            let waiting: Vec<&str> = devices
                .iter()
                .filter(|d| d.polls.load(Relaxed) == 0 && !d.mqtt_ready.load(Relaxed))
                .map(|d| d.name.as_str())
                .collect();
            let held: Vec<String> = metrics
                .sinks
                .all()
                .iter()
                .filter_map(|s| s.held().map(|why| format!("sink {}: {why}", s.name)))
                .collect();
            let disk = metrics.disk_error();
            if waiting.is_empty() && held.is_empty() && disk.is_none() {
                ("200 OK", "ready\n".to_string())
            } else {
                let mut body = String::new();
                if !waiting.is_empty() {
                    body.push_str(&format!("not polled yet: {}\n", waiting.join(", ")));
                }
                for h in held {
                    body.push_str(&h);
                    body.push('\n');
                }
                if let Some(why) = disk {
                    body.push_str(&format!("buffer: {why}\n"));
                }
                ("503 Service Unavailable", body)
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", String::new()),
    };
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_the_endpoint_keeps_answering() {
        let listener = bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, _) = crate::shutdown::channel();
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            trigger.subscribe(),
        ));
        // Idle connections that never send a request hold every slot.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One more is closed at once, without an answer.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
        let mut got = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut got))
            .await
            .expect("closed at once, not left hanging");
        assert!(
            n.is_err() || got.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        // Once the idle ones go, it answers again.
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.contains("200") && body.ends_with("ok\n"), "{body}");
        trigger.fire();
    }
}
