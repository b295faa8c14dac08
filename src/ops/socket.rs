//! The stats socket: a Unix stream socket served by a thread of its own.
//!
//! The acceptor polls with a timeout so that dropping the server ends it
//! promptly; each connection gets a short-lived thread (at most
//! [`MAX_CONNECTIONS`] at once) with read and write timeouts, so a slow or
//! stuck client costs one idle thread and never touches the device threads.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::proto::{Hello, Reply, Request, MAX_REQUEST, PROTOCOL_VERSION};
use super::sample::Sample;
use super::source::Registry;
use super::OpsError;

/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 8;
/// A connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StatsServer {
    path: PathBuf,
    /// Device and inode of the socket we bound, so we never remove another's.
    ino: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::Socket { path: path.display().to_string(), source }
}

impl StatsServer {
    /// Bind `path` (creating its directory) and serve `registry` on it. A
    /// stale socket left by a dead process is replaced; a live one is an error.
    pub fn start(path: &Path, registry: Arc<Registry>) -> Result<StatsServer, OpsError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(OpsError::Socket {
                    path: path.display().to_string(),
                    source: std::io::Error::new(ErrorKind::AlreadyExists, "exists and is not a socket"),
                });
            }
            match UnixStream::connect(path) {
                Ok(s) => {
                    let pid = StatsClient::from_stream(s).ok().and_then(|mut c| c.hello().ok()).map(|h| h.pid);
                    return Err(OpsError::SocketInUse { path: path.display().to_string(), pid });
                }
                // Nobody listens: a leftover of a process that died.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io_err(path))?;
                }
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        let listener = UnixListener::bind(path).map_err(io_err(path))?;
        // Readable by root and the service's group only.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        listener.set_nonblocking(true).map_err(io_err(path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("vduse-stats".into())
                .spawn(move || accept_loop(listener, registry, stop))
                .map_err(OpsError::Thread)?
        };
        log::info!("stats socket {} ready", path.display());
        Ok(StatsServer { path: path.to_path_buf(), ino: (meta.dev(), meta.ino()), stop, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn accept_loop(listener: UnixListener, registry: Arc<Registry>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                    let _ = reply_line(&stream, &Reply::error("busy: too many stats connections"));
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (registry, active2, stop2) = (registry.clone(), active.clone(), stop.clone());
                let spawned = std::thread::Builder::new().name("vduse-stats-conn".into()).spawn(move || {
                    serve_connection(stream, &registry, &stop2);
                    active2.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(200u16));
            }
            Err(e) => {
                log::warn!("stats socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn reply_line(mut stream: &UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).map_err(std::io::Error::other)?;
    s.push('\n');
    stream.write_all(s.as_bytes())
}

fn serve_connection(stream: UnixStream, registry: &Registry, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.by_ref().take(MAX_REQUEST as u64 + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_REQUEST => {
                let _ = reply_line(&stream, &Reply::error(format!("request longer than {MAX_REQUEST} bytes")));
                return;
            }
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        if reply_line(&stream, &answer(line.trim(), registry)).is_err() {
            return;
        }
    }
}

/// The reply to one request line.
pub fn answer(line: &str, registry: &Registry) -> Reply {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Reply::error(format!("bad request: {e}")),
    };
    if req.version != PROTOCOL_VERSION {
        return Reply::error(format!(
            "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
            req.version
        ));
    }
    let known = registry.device_names();
    if let Some(missing) = req.devices.iter().find(|d| !known.contains(d)) {
        return Reply::error(format!("no device {missing:?} here (devices: {})", known.join(", ")));
    }
    let ok = |r: Reply| Reply { version: PROTOCOL_VERSION, ok: true, ..r };
    match req.command.as_str() {
        "hello" => ok(Reply {
            hello: Some(Hello {
                program: "vduse-net".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                protocols: vec![PROTOCOL_VERSION],
                pid: std::process::id(),
                command: registry.command().into(),
                instance: registry.instance().into(),
                devices: known,
            }),
            ..Reply::default()
        }),
        "stats" => ok(Reply { sample: Some(registry.sample(&req.devices)), ..Reply::default() }),
        "prometheus" => {
            ok(Reply { text: Some(super::prom::render(&registry.sample(&req.devices))), ..Reply::default() })
        }
        // Asks the drivers to announce themselves (GUEST_ANNOUNCE); the text
        // names the devices asked.
        "announce" => match registry.announce(&req.devices) {
            Ok(names) => ok(Reply { text: Some(names.join(" ")), ..Reply::default() }),
            Err(e) => Reply::error(e),
        },
        other => Reply::error(format!("unknown command {other:?} (hello, stats, prometheus, announce)")),
    }
}

/// A client of the stats socket.
pub struct StatsClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    path: String,
}

impl StatsClient {
    pub fn connect(path: &Path) -> Result<StatsClient, OpsError> {
        let s = UnixStream::connect(path).map_err(io_err(path))?;
        let mut c = StatsClient::from_stream(s).map_err(io_err(path))?;
        c.path = path.display().to_string();
        Ok(c)
    }

    fn from_stream(s: UnixStream) -> std::io::Result<StatsClient> {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let reader = BufReader::new(s.try_clone()?);
        Ok(StatsClient { stream: s, reader, path: String::new() })
    }

    /// Send one request and read its reply; `ok: false` becomes an error.
    pub fn call(&mut self, req: &Request) -> Result<Reply, OpsError> {
        let io = |source| OpsError::Socket { path: self.path.clone(), source };
        let mut s = serde_json::to_string(req).map_err(|e| OpsError::Protocol(e.to_string()))?;
        s.push('\n');
        self.stream.write_all(s.as_bytes()).map_err(io)?;
        let mut line = String::new();
        let n =
            self.reader.read_line(&mut line).map_err(|source| OpsError::Socket { path: self.path.clone(), source })?;
        if n == 0 {
            return Err(OpsError::Protocol("the server closed the connection".into()));
        }
        let r: Reply = serde_json::from_str(&line).map_err(|e| OpsError::Protocol(format!("unreadable reply: {e}")))?;
        if !r.ok {
            return Err(OpsError::Protocol(r.error.unwrap_or_else(|| "request refused".into())));
        }
        Ok(r)
    }

    pub fn hello(&mut self) -> Result<Hello, OpsError> {
        self.call(&Request::new("hello"))?.hello.ok_or_else(|| OpsError::Protocol("reply without hello".into()))
    }

    /// Ask the drivers of `devices` (all when empty) to announce
    /// themselves; the names of the devices asked.
    pub fn announce(&mut self, devices: &[String]) -> Result<Vec<String>, OpsError> {
        let req = Request { devices: devices.to_vec(), ..Request::new("announce") };
        let text = self.call(&req)?.text.unwrap_or_default();
        Ok(text.split_whitespace().map(str::to_string).collect())
    }

    pub fn sample(&mut self, devices: &[String]) -> Result<Sample, OpsError> {
        let req = Request { devices: devices.to_vec(), ..Request::new("stats") };
        self.call(&req)?.sample.ok_or_else(|| OpsError::Protocol("reply without sample".into()))
    }
}
