//! Post-traffic checks a driver can make of a device, on the model or on a
//! real kernel through vhost-vdpa: that a data queue cannot reach memory
//! mapped only in another address space, and that suspend + GET_VQ_STATE
//! reports the positions the driver saw.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::testbed::{BenchError, Testbed};
use crate::driver::net::QueuePair;
use crate::driver::DmaMemory;
use crate::uapi::vhost_vdpa::VHOST_ACCESS_RW;

/// IOVA used for the canary page: outside the driver's data and control
/// regions, so it is mapped in no address space but the one we pick.
pub const CANARY_IOVA: u64 = 0xc000_0000;
const CANARY: &[u8; 8] = b"CANARY!!";

fn driver(tb: &Testbed) -> Result<&crate::driver::net::NetDriver, BenchError> {
    tb.driver().ok_or_else(|| BenchError::Options("no driver".into()))
}

/// Map a canary page only in ASID 1, point one TX descriptor of pair 0 at
/// it, and report whether the device refused it: the chain never came back
/// as sent and no received frame carries the canary. Pair 0's TX queue is
/// expected to stop afterwards (a malformed chain); run this last but one.
pub fn foreign_iova(tb: &mut Testbed, pairs: &mut [QueuePair]) -> Result<Map<String, Value>, BenchError> {
    let drv = driver(tb)?;
    let t = drv.transport().clone();
    let mut out = Map::new();
    if t.as_num()? < 2 {
        out.insert("foreign_iova".into(), json!({ "skipped": "device has one address space" }));
        return Ok(out);
    }
    let q = pairs.first_mut().ok_or_else(|| BenchError::Options("no queue pair".into()))?;
    let canary = DmaMemory::new("canary", 4096).map_err(|e| BenchError::Options(e.to_string()))?;
    for i in (0..4096).step_by(CANARY.len()) {
        canary.write(i, CANARY);
    }
    t.iotlb_map(1, CANARY_IOVA, &canary, 0, 4096, VHOST_ACCESS_RW)?;
    // A frame-sized chain: 12-byte header + payload, all in ASID 1 only.
    let token = u64::MAX - 1;
    q.raw_tx().add_chain(&[(CANARY_IOVA, 512, false)], token).map_err(|e| BenchError::Options(e.to_string()))?;
    q.raw_tx().publish();
    q.kick_tx()?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let (mut completed, mut leaked) = (false, false);
    while Instant::now() < deadline {
        if let Ok(Some((tok, _))) = q.raw_tx().pop_used() {
            completed |= tok == token;
        }
        q.post_rx();
        q.rx_burst(&mut |f| leaked |= f.windows(CANARY.len()).any(|w| w == CANARY), 64);
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = t.iotlb_unmap(1, CANARY_IOVA, 4096);
    let status = t.status().unwrap_or(0);
    out.insert(
        "foreign_iova".into(),
        json!({
            "asid": 1, "iova": CANARY_IOVA, "completed": completed, "canary_in_rx": leaked,
            "refused": !completed && !leaked, "status": status,
        }),
    );
    Ok(out)
}

/// Suspend the device, then ask GET_VRING_BASE for every data vq and
/// compare it with the used position the driver sees (every chain the
/// device consumed, it returned: the device processes chains to
/// completion), in the ring format's encoding.
pub fn suspend(tb: &mut Testbed, pairs: &mut [QueuePair]) -> Result<Map<String, Value>, BenchError> {
    let drv = driver(tb)?;
    let t = drv.transport().clone();
    // Let in-flight TX finish first so positions are settled.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        for q in pairs.iter_mut() {
            q.reclaim_tx();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    t.suspend()?;
    let mut vqs = Vec::new();
    let mut all = true;
    for (i, q) in pairs.iter_mut().enumerate() {
        for vq in [2 * i as u32, 2 * i as u32 + 1] {
            let ring = if vq % 2 == 0 { q.raw_rx() } else { q.raw_tx() };
            // Split: the used index; packed: the used position (slot | wrap
            // << 15) in both halves, the device's avail position being the
            // same once every chain it took is completed.
            let (want, used, avail) = (ring.device_base(), ring.used_idx(), ring.avail_idx());
            let base = t.vring_base(vq)?;
            all &= base == want;
            vqs.push(json!({
                "vq": vq, "driver_avail": avail, "driver_used": used, "device_base": base, "expected_base": want,
            }));
        }
    }
    let mut out = Map::new();
    out.insert("suspend".into(), json!({ "vqs": vqs, "match": all }));
    Ok(out)
}
