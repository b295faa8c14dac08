//! The RX filter against a reference model: a state built by a sequence of
//! control commands, then frames (addresses from a pool that hits the
//! tables, optional 802.1Q tags, any length) checked by `RxFilter::accepts`
//! and by the spec's decision order written out plainly here.

#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::net::ctrl::CtrlState;
use vduse_net::net::features as f;
use vduse_net::net::filter::{FilterCell, RxFilter};
use vduse_net_fuzz::{command, mac, negotiated, CtrlModel};

const MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// Spec 1.3 §5.1.6.5.1-3 as the module documents its decisions.
fn reference(m: &CtrlModel, vlan_filter: bool, frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    if m.promisc {
        return true;
    }
    if vlan_filter && frame[12] == 0x81 && frame[13] == 0x00 {
        if frame.len() < 16 {
            return false;
        }
        let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
        if !m.vlans.contains(&vid) {
            return false;
        }
    }
    let dst: [u8; 6] = frame[..6].try_into().unwrap();
    if dst == [0xff; 6] {
        return !m.nobcast;
    }
    if dst[0] & 1 != 0 {
        return !m.nomulti && (m.allmulti || m.multi_overflow || m.multicast.contains(&dst));
    }
    !m.nouni && (m.alluni || m.uni_overflow || dst == m.mac || m.unicast.contains(&dst))
}

fn frame(u: &mut Unstructured<'_>) -> ArbResult<Vec<u8>> {
    let mut fr = mac(u)?.to_vec();
    fr.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    if u.ratio(1, 2)? {
        let vid: u16 = if u.ratio(3, 4)? { u.int_in_range(0..=9)? } else { u.arbitrary()? };
        fr.extend_from_slice(&[0x81, 0x00]);
        fr.extend_from_slice(&vid.to_be_bytes());
    }
    fr.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    let len = if u.ratio(3, 4)? { fr.len() } else { u.int_in_range(0..=fr.len())? };
    fr.truncate(len);
    Ok(fr)
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let neg = negotiated(&mut u)?;
    let mut state = CtrlState::new(MAC0, neg);
    let mut model = CtrlModel::new(MAC0, neg);
    let cell = FilterCell::new(RxFilter::from_state(&state, neg));
    let mut reader = cell.reader();
    let vlan_filter = neg & f::CTRL_VLAN != 0;
    while !u.is_empty() {
        if u.ratio(1, 3)? {
            let c = command(&mut u)?;
            let ok = state.apply(c.clone(), neg, 8).is_ok();
            assert_eq!(ok, model.apply(&c, neg, 8).is_ok(), "{c:?}");
            cell.publish(RxFilter::from_state(&state, neg));
            continue;
        }
        let fr = frame(&mut u)?;
        let direct = RxFilter::from_state(&state, neg);
        let want = reference(&model, vlan_filter, &fr);
        assert_eq!(direct.accepts(&fr), want, "frame {fr:02x?} with {model:?}, vlan filtering {vlan_filter}");
        // What a poll thread sees through the cell is the same filter.
        let seen = reader.current();
        assert_eq!(seen, &direct);
        assert_eq!(seen.promisc(), model.promisc);
        assert_eq!(RxFilter::accept_all().accepts(&fr), fr.len() >= 14);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
