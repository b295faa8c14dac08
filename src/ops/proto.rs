//! The stats socket's protocol: one JSON object per line each way.
//!
//! Request: `{"version":1,"command":"stats","devices":["vn0"]}` (`devices`
//! optional: all when absent). Commands: `hello` (who is there), `stats`
//! (one [`Sample`]), `prometheus` (the exposition text of one sample),
//! `announce` (ask the drivers to announce themselves, GUEST_ANNOUNCE; the
//! reply's `text` names the devices asked).
//! Reply: `{"version":1,"ok":true,...}` with `hello`, `sample` or `text`,
//! or `{"version":1,"ok":false,"error":"..."}`. A connection may carry any
//! number of requests, one after the other. A request with a `version`
//! this server does not speak gets an error naming the versions it does.

use serde::{Deserialize, Serialize};

use super::sample::Sample;

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl Request {
    pub fn new(command: &str) -> Self {
        Request { version: PROTOCOL_VERSION, command: command.into(), devices: Vec::new() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub program: String,
    pub version: String,
    /// Protocol versions this server speaks.
    pub protocols: Vec<u32>,
    pub pid: u32,
    pub command: String,
    pub instance: String,
    pub devices: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<Hello>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Reply {
    pub fn error(msg: impl Into<String>) -> Self {
        Reply { version: PROTOCOL_VERSION, ok: false, error: Some(msg.into()), ..Reply::default() }
    }
}
