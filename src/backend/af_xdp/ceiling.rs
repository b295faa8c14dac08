//! The AF_XDP ceiling of an interface: what a bare XDP socket moves
//! through it and back (a reflector on the far end), without a device in
//! the way. The benchmark reports vduse-net's AF_XDP rate as a share of it.
//!
//! Like `xdpsock` in txonly + rxdrop mode: TX frames are written once and
//! sent again and again (no per-frame copy), received frames are counted
//! by length and handed straight back to the fill ring. One thread, one
//! socket on queue 0, the same program and rings the port uses. (Debian's
//! xdp-tools 1.3 would be the obvious tool, but its programs reference
//! tracepoints newer kernels dropped, so they fail to load on 6.x.)

use std::time::{Duration, Instant};

use serde::Serialize;

use super::ring::XdpDesc;
use super::{open_sides, AfXdpError, XdpOptions};

/// What [`reflect_ceiling`] measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ceiling {
    pub iface: String,
    pub size: usize,
    pub duration_s: f64,
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub mpps_rx: f64,
    pub gbps_rx: f64,
    /// Frames the kernel dropped for the socket (RX ring full etc.).
    pub kernel_dropped: u64,
}

/// Send `size`-byte frames out of `iface` as fast as the socket takes them
/// for `warmup + duration`, counting what comes back in the measured part.
pub fn reflect_ceiling(
    iface: &str,
    opts: &XdpOptions,
    size: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Ceiling, AfXdpError> {
    let (mut sides, _) = open_sides(iface, 1, opts)?;
    let side = sides.pop().expect("one socket");
    let mut x = side.xsk;
    let g = x.geometry;
    let frame = g.frame as u64;
    let size = size.clamp(60, frame as usize);
    let rx_end = g.rx_frames as u64 * frame;
    // Every TX frame holds the same test frame: written once.
    let mut free: Vec<u64> = (0..g.tx_frames as u64).map(|i| rx_end + i * frame).collect();
    for &a in &free {
        // SAFETY: each TX frame lies inside the UMEM and nothing else uses
        // it yet (the socket has sent nothing).
        let f = unsafe { std::slice::from_raw_parts_mut(x.umem.as_ptr().add(a as usize), size) };
        f.fill(0);
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    }
    let start = Instant::now();
    let (t_measure, t_end) = (start + warmup, start + warmup + duration);
    let (mut tx, mut rx, mut rx_base, mut measuring) = (0u64, 0u64, 0u64, false);
    loop {
        let now = Instant::now();
        if !measuring && now >= t_measure {
            measuring = true;
            rx_base = rx;
        }
        if now >= t_end {
            break;
        }
        for _ in 0..64 {
            // TX: as many frames as are free, one kick per batch.
            let n = (free.len() as u32).min(x.tx.free(64)).min(64);
            for _ in 0..n {
                let a = free.pop().expect("counted");
                x.tx.push(XdpDesc { addr: a, len: size as u32, options: 0 });
            }
            tx += n as u64;
            if x.tx.submit() && x.tx.needs_wakeup() {
                let _ = x.kick_tx();
            }
            let c = x.comp.available();
            for i in 0..c {
                free.push(x.comp.get(i) & !(frame - 1));
            }
            x.comp.advance(c);
            x.comp.release();
            // RX: count and refill.
            let r = x.rx.available();
            for i in 0..r {
                let d = x.rx.get(i);
                if d.len as usize == size {
                    rx += 1;
                }
                x.fill.push(d.addr & !(frame - 1));
            }
            x.rx.advance(r);
            x.rx.release();
            if x.fill.submit() && x.fill.needs_wakeup() {
                let _ = x.kick_rx();
            }
        }
    }
    let secs = duration.as_secs_f64();
    let got = rx - rx_base;
    let kernel_dropped = x.statistics().map(|s| s.rx_dropped + s.rx_ring_full).unwrap_or(0);
    Ok(Ceiling {
        iface: iface.to_string(),
        size,
        duration_s: secs,
        tx_frames: tx,
        rx_frames: got,
        mpps_rx: got as f64 / secs / 1e6,
        gbps_rx: (got * size as u64) as f64 * 8.0 / secs / 1e9,
        kernel_dropped,
    })
}
