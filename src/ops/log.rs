//! Log lines for operators: every line a device thread writes names its
//! device, and the level can change at run time (`--log-level`, SIGHUP).
//!
//! A device's threads set their device once ([`set_device`]); the format
//! puts `NAME: ` in front of their lines unless the message already starts
//! with it. Under systemd (`$JOURNAL_STREAM`) lines carry a `<N>` syslog
//! priority instead of a timestamp, so the journal keeps their levels.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

use log::{Level, LevelFilter};

thread_local! {
    static DEVICE: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// This thread serves device `name` (for the rest of its life).
pub fn set_device(name: &str) {
    DEVICE.with(|d| *d.borrow_mut() = Some(Arc::from(name)));
}

/// Lines of this thread name `name` until the guard is dropped.
pub fn scope(name: &str) -> Scope {
    let prev = DEVICE.with(|d| d.borrow_mut().replace(Arc::from(name)));
    Scope { prev }
}

pub struct Scope {
    prev: Option<Arc<str>>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let prev = self.prev.take();
        DEVICE.with(|d| *d.borrow_mut() = prev);
    }
}

fn current_device() -> Option<Arc<str>> {
    DEVICE.with(|d| d.borrow().clone())
}

/// `msg` with the device name in front, unless it already names it first.
pub fn with_device(device: Option<&str>, msg: &str) -> String {
    let Some(d) = device else { return msg.to_string() };
    let named =
        (msg.starts_with(d) && msg[d.len()..].starts_with([':', ' '])) || msg.starts_with(&format!("device {d}"));
    if named {
        msg.to_string()
    } else {
        format!("{d}: {msg}")
    }
}

fn syslog_priority(l: Level) -> u8 {
    match l {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Install the logger. `RUST_LOG` (module filters) wins when set; otherwise
/// every level passes the logger and `log::max_level` (set here to
/// `default`, later by [`set_level`]) decides.
pub fn init(default: LevelFilter) {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut b = if from_env {
        env_logger::Builder::from_env(env_logger::Env::default())
    } else {
        let mut b = env_logger::Builder::new();
        b.filter_level(LevelFilter::Trace);
        b
    };
    b.format(move |buf, r| {
        let dev = current_device();
        let msg = with_device(dev.as_deref(), &r.args().to_string());
        if journal {
            writeln!(buf, "<{}>{msg}", syslog_priority(r.level()))
        } else {
            writeln!(buf, "[{} {:<5} {}] {msg}", buf.timestamp(), r.level(), r.target())
        }
    });
    let _ = b.try_init();
    if !from_env {
        log::set_max_level(default);
    }
}

/// Change the level at run time (ignored when `RUST_LOG` is set: it rules).
pub fn set_level(level: LevelFilter) -> bool {
    if std::env::var_os("RUST_LOG").is_some() {
        return false;
    }
    log::set_max_level(level);
    true
}

/// `error`, `warn`, `info`, `debug`, `trace`, `off`.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse::<LevelFilter>().map_err(|_| format!("{s:?} is not a log level (error, warn, info, debug, trace, off)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_prefix_only_when_missing() {
        assert_eq!(with_device(Some("vn0"), "reset"), "vn0: reset");
        assert_eq!(with_device(Some("vn0"), "vn0: reset"), "vn0: reset");
        assert_eq!(with_device(Some("vn0"), "device vn0 ready"), "device vn0 ready");
        assert_eq!(with_device(Some("vn"), "vn0: x"), "vn: vn0: x");
        assert_eq!(with_device(None, "x"), "x");
    }

    #[test]
    fn scopes_restore_the_previous_device() {
        set_device("a");
        {
            let _s = scope("b");
            assert_eq!(current_device().as_deref(), Some("b"));
        }
        assert_eq!(current_device().as_deref(), Some("a"));
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("loud").unwrap_err().contains("not a log level"));
    }
}
