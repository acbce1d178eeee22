//! Prometheus metrics and the tiny HTTP endpoint that serves them at `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A session's traffic since it was last added to the shared counters. Each session counts
/// into its own atomics (no cache line shared with other sessions on the hot path); the
/// counts move to the Prometheus counters when `/metrics` is read and when the session ends.
#[derive(Default)]
pub struct Traffic {
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

impl Traffic {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct Metrics {
    registry: Registry,
    pub clients: IntGauge,
    pub startup_connections: IntGauge,
    pub server_connections: IntGaugeVec,
    pub transactions: IntCounter,
    pub queries: IntCounter,
    pub bytes_from_clients: IntCounter,
    pub bytes_to_clients: IntCounter,
    pub auth_failures: IntCounter,
    pub errors: IntCounterVec,
    pub held_seconds: Histogram,
    pub cutover_phase_seconds: prometheus::HistogramVec,
    pub cutovers: IntCounterVec,
    pub rejected_clients: IntCounterVec,
    pub buffered_bytes: IntGauge,
    pub verify_rows: IntCounterVec,
    pub verify_bytes: IntCounterVec,
    pub verify_chunks: IntCounterVec,
    pub verify_tables: IntCounterVec,
    pub verify_running: IntGauge,
    /// The epoch the current route follows (0: no cutover was ever started).
    pub decision_epoch: IntGauge,
    /// 1 while the route is known, 0 while sessions are held or refused for want of it.
    pub routing_known: IntGauge,
    pub decision_reads: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Registration fails only on duplicate names, which would be a programming error caught by tests.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::expect_used)] // metric definitions are static; a bad one is a bug found at the first start
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("pgcutover".into()), None).expect("metrics registry");
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("counter"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| register(&r, IntCounterVec::new(Opts::new(name, help), labels).expect("counter vec"));
        Self {
            clients: register(&r, IntGauge::new("client_connections", "Client connections open").expect("gauge")),
            startup_connections: register(
                &r,
                IntGauge::new("startup_connections", "Client connections accepted and not yet authenticated (limit: max_startup_connections)").expect("gauge"),
            ),
            server_connections: register(&r, IntGaugeVec::new(Opts::new("server_connections", "Server connections open"), &["server"]).expect("gauge vec")),
            transactions: counter("transactions_total", "Transactions forwarded (ReadyForQuery back to idle)"),
            queries: counter("queries_total", "Queries forwarded (simple Query, Execute, FunctionCall)"),
            bytes_from_clients: counter("client_bytes_received_total", "Bytes received from clients"),
            bytes_to_clients: counter("client_bytes_sent_total", "Bytes sent to clients"),
            auth_failures: counter("auth_failures_total", "Failed client authentications"),
            errors: counter_vec("errors_total", "Errors sent to clients, by SQLSTATE class", &["class"]),
            held_seconds: register(&r, Histogram::with_opts(HistogramOpts::new("session_held_seconds", "Time sessions spent held by PAUSE or CUTOVER").buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])).expect("histogram")),
            cutover_phase_seconds: register(&r, prometheus::HistogramVec::new(HistogramOpts::new("cutover_phase_seconds", "Duration of each cutover phase"), &["phase"]).expect("histogram vec")),
            cutovers: counter_vec("cutovers_total", "Cutovers by outcome", &["outcome"]),
            rejected_clients: counter_vec("rejected_clients_total", "Client connections refused, by reason", &["reason"]),
            buffered_bytes: register(&r, IntGauge::new("buffered_bytes", "Bytes sessions buffer beyond their own allowance, out of max_buffered_bytes").expect("gauge")),
            verify_rows: counter_vec("verify_rows_total", "Rows VERIFY read, by server (old, new)", &["side"]),
            verify_bytes: counter_vec("verify_bytes_total", "Bytes of row text VERIFY digested, by server (old, new)", &["side"]),
            verify_chunks: counter_vec("verify_chunks_total", "Chunks VERIFY compared, by outcome", &["outcome"]),
            verify_tables: counter_vec("verify_tables_total", "Tables VERIFY compared, by result", &["result"]),
            verify_running: register(&r, IntGauge::new("verify_running", "1 while a VERIFY runs").expect("gauge")),
            decision_epoch: register(&r, IntGauge::new("decision_epoch", "Cutover epoch the current route follows (0: none started)").expect("gauge")),
            routing_known: register(&r, IntGauge::new("routing_known", "1 while the route is known from the cutover decision, 0 while sessions are held or refused").expect("gauge")),
            decision_reads: counter_vec("decision_reads_total", "Reads of the cutover decision on the servers, by result", &["result"]),
            registry: r,
        }
    }

    pub fn error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??");
        self.errors.with_label_values(&[class]).inc();
    }

    /// Moves a session's pending traffic counts into the shared counters.
    pub fn collect(&self, traffic: &Traffic) {
        self.transactions.inc_by(traffic.transactions.swap(0, Ordering::Relaxed));
        self.queries.inc_by(traffic.queries.swap(0, Ordering::Relaxed));
        self.bytes_from_clients.inc_by(traffic.bytes_from_client.swap(0, Ordering::Relaxed));
        self.bytes_to_clients.inc_by(traffic.bytes_to_client.swap(0, Ordering::Relaxed));
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Serves `GET /metrics` (anything else: 404) until the listener task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<crate::proxy::Shared>) {
    let mut backoff = crate::listener::AcceptBackoff::new("metrics");
    loop {
        let mut socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.succeeded();
        let shared = shared.clone();
        tokio::spawn(async move {
            // Read the whole request head: a client may send it in several segments, and
            // closing with unread bytes would reset the connection before the response arrives.
            let mut request = Vec::with_capacity(1024);
            let read_head = async {
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await.is_err() || request.is_empty() {
                return;
            }
            let head = String::from_utf8_lossy(&request);
            let (status, body) = if asks_for_metrics(&head) {
                for session in shared.registry.all() {
                    shared.metrics.collect(&session.traffic);
                }
                shared.metrics.startup_connections.set(shared.startup_slots.used() as i64);
                shared.metrics.buffered_bytes.set(shared.budget.used() as i64);
                ("200 OK", shared.metrics.render())
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

/// Whether a request head is `GET /metrics` (a query string allowed): exactly that path, not
/// `/metricsXYZ` or `/metrics/../x`.
fn asks_for_metrics(head: &str) -> bool {
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let (Some("GET"), Some(target), Some(version)) = (request_line.next(), request_line.next(), request_line.next()) else {
        return false;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    path == "/metrics" && version.starts_with("HTTP/") && request_line.next().is_none()
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::asks_for_metrics;

    #[test]
    fn only_the_exact_metrics_path_is_served() {
        for ok in ["GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "GET /metrics?name[]=x HTTP/1.0\r\n\r\n", "GET /metrics? HTTP/1.1\r\n"] {
            assert!(asks_for_metrics(ok), "{ok:?}");
        }
        for bad in [
            "GET /metricsXYZ HTTP/1.1\r\n",
            "GET /metrics/../.. HTTP/1.1\r\n",
            "GET /metrics/ HTTP/1.1\r\n",
            "GET /metrics#x HTTP/1.1\r\n",
            "POST /metrics HTTP/1.1\r\n",
            "GET  /metrics HTTP/1.1\r\n",
            "GET /metrics\r\n",
            "GET /metrics HTTP/1.1 extra\r\n",
            "get /metrics HTTP/1.1\r\n",
            "",
        ] {
            assert!(!asks_for_metrics(bad), "{bad:?}");
        }
    }
}
