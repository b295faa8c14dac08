//! `/metrics` over HTTP (tiny_http, one thread of its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::source::Registry;
use super::OpsError;

pub struct MetricsServer {
    addr: String,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listen on `addr` (`127.0.0.1:9477`, `[::1]:9477`, `0.0.0.0:9477`).
    pub fn start(addr: &str, registry: Arc<Registry>) -> Result<MetricsServer, OpsError> {
        let err = |msg: String| OpsError::Metrics { addr: addr.into(), msg };
        let sock: std::net::SocketAddr =
            addr.parse().map_err(|e| err(format!("not an address:port ({e}); e.g. 127.0.0.1:9477")))?;
        let server = Arc::new(tiny_http::Server::http(sock).map_err(|e| err(e.to_string()))?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop) = (server.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vduse-metrics".into())
                .spawn(move || serve(&server, &registry, &stop))
                .map_err(OpsError::Thread)?
        };
        let bound = server.server_addr().to_ip().map(|a| a.to_string()).unwrap_or_else(|| addr.into());
        log::info!("metrics on http://{bound}/metrics");
        Ok(MetricsServer { addr: bound, server, stop, thread: Some(thread) })
    }

    /// The address actually bound (port 0 picks one).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    // Both are ASCII constants here.
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("ASCII header")
}

fn serve(server: &tiny_http::Server, registry: &Registry, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let req = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => break,
        };
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let resp = match (req.method(), path.as_str()) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                tiny_http::Response::from_string(super::prom::render(&registry.sample(&[])))
                    .with_header(header("Content-Type", super::prom::CONTENT_TYPE))
            }
            (tiny_http::Method::Get, "/") => tiny_http::Response::from_string("vduse-net: metrics at /metrics\n")
                .with_header(header("Content-Type", "text/plain")),
            (tiny_http::Method::Get | tiny_http::Method::Head, _) => {
                tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
            }
            _ => tiny_http::Response::from_string("method not allowed\n").with_status_code(405),
        };
        let _ = req.respond(resp);
    }
}
