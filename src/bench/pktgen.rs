//! The traffic generator: one generator thread per queue pair owns that
//! pair's driver queues, sends numbered frames, and checks every frame
//! that comes back.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::frame::{self, Check};
use crate::driver::net::QueuePair;

/// Frame sizes to cycle through.
#[derive(Clone, Debug)]
pub struct Sizes(pub Vec<usize>);

impl Sizes {
    /// `64`, `64,1518` or `imix` (7:4:1 of 64/570/1518).
    pub fn parse(s: &str) -> Result<Sizes, String> {
        if s == "imix" {
            let mut v = vec![64; 7];
            v.extend([570; 4]);
            v.push(1518);
            return Ok(Sizes(v));
        }
        let v: Result<Vec<usize>, _> = s.split(',').map(|x| x.trim().parse::<usize>()).collect();
        let v = v.map_err(|_| format!("--size {s:?}: expected 64, 64,1518 or imix"))?;
        if v.is_empty() || v.iter().any(|&n| !(frame::MIN_FRAME..=1518).contains(&n)) {
            return Err(format!("--size {s:?}: sizes must be in {}..=1518", frame::MIN_FRAME));
        }
        Ok(Sizes(v))
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueReport {
    pub pair: u16,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub lost: u64,
    pub integrity_errors: u64,
    pub duplicates_or_reordered: u64,
}

/// Send `frames` frames on `q` and check what comes back, within `limit`.
pub fn run_pair(mut q: QueuePair, pair: u16, frames: u64, sizes: &Sizes, burst: usize, limit: Duration) -> QueueReport {
    let mut r = QueueReport { pair, ..Default::default() };
    let (dst, src) = ([0x02, 0, 0, 0, 0, 0xfe], [0x02, 0, 0, 0, 0, 0x01]);
    let start = Instant::now();
    let mut next_rx = 0u64;
    let mut last_progress = Instant::now();
    while r.rx_frames + r.integrity_errors < frames {
        let mut progress = 0;
        if r.tx_frames < frames {
            let want = burst.min((frames - r.tx_frames) as usize);
            let mut seq = r.tx_frames;
            let mut bytes = 0u64;
            let n = q.tx_burst(
                &mut |_, buf| {
                    let len = sizes.0[(seq % sizes.0.len() as u64) as usize];
                    let n = frame::build(buf, len, dst, src, pair, seq);
                    seq += 1;
                    bytes += n as u64;
                    n
                },
                want,
            );
            r.tx_frames += n as u64;
            r.tx_bytes += bytes;
            progress += n;
        }
        q.post_rx();
        let got = q.rx_burst(
            &mut |f| match frame::check(f) {
                Check::Ok { pair: p, seq } if p == pair && seq == next_rx => {
                    next_rx += 1;
                    r.rx_frames += 1;
                    r.rx_bytes += f.len() as u64;
                }
                Check::Ok { seq, .. } if seq > next_rx => {
                    // A gap: the frames in between are lost (counted at the end).
                    next_rx = seq + 1;
                    r.rx_frames += 1;
                    r.rx_bytes += f.len() as u64;
                }
                Check::Ok { .. } => r.duplicates_or_reordered += 1,
                Check::Corrupt => r.integrity_errors += 1,
            },
            burst,
        );
        progress += got;
        if progress > 0 {
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > Duration::from_secs(2) || start.elapsed() > limit {
                break;
            }
            std::thread::yield_now();
        }
    }
    r.lost = r.tx_frames.saturating_sub(r.rx_frames + r.integrity_errors + r.duplicates_or_reordered);
    r
}
