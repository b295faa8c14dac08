//! Control-queue commands: the parser on raw driver bytes (exact lengths,
//! canonical re-encoding, no panic, no allocation beyond the input) and
//! `CtrlState::apply` against an independent model of the state, for a
//! sequence of raw and hand-built commands under arbitrary negotiated
//! features. A refused command must leave the state unchanged.

#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::net::ctrl::{ack, CtrlCommand, CtrlError, CtrlState, VIRTIO_NET_ERR, VIRTIO_NET_OK};
use vduse_net_fuzz::{command, negotiated, CtrlModel};

const MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// Parse raw bytes; what parses must re-encode to the same bytes (the
/// on/off byte of the RX class is normalised to 0/1) and parse back equal.
fn parse_raw(msg: &[u8]) -> Result<CtrlCommand, CtrlError> {
    let r = CtrlCommand::parse_message(msg);
    match &r {
        Ok(c) => {
            let enc = c.encode_message();
            // RSS/HASH_CONFIG ignore bytes after the key (Linux pads one).
            let padded = matches!(c, CtrlCommand::RssConfig(_) | CtrlCommand::HashConfig(_));
            let msg = if padded && msg.len() > enc.len() { &msg[..enc.len()] } else { msg };
            assert_eq!(enc.len(), msg.len(), "{c:?}: exact lengths only");
            if let CtrlCommand::Rx { on, .. } = c {
                assert_eq!(enc[..2], msg[..2]);
                assert_eq!(*on, msg[2] != 0);
            } else {
                assert_eq!(enc, msg, "{c:?}: canonical encoding");
            }
            assert_eq!(CtrlCommand::parse_message(&enc).as_ref(), Ok(c));
            let (class, cmd, data) = c.encode();
            assert_eq!((class, cmd), (msg[0], msg[1]));
            assert_eq!(CtrlCommand::parse(class, cmd, &data).as_ref(), Ok(c));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    r
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let neg = negotiated(&mut u)?;
    let max_pairs: u16 = if u.ratio(3, 4)? { u.int_in_range(0..=8)? } else { u.arbitrary()? };
    let mut state = CtrlState::new(MAC0, neg);
    let mut model = CtrlModel::new(MAC0, neg);
    model.check(&state);
    while !u.is_empty() {
        let cmd = match u.int_in_range(0u8..=3)? {
            // Raw bytes as a driver sends them.
            0 | 1 => {
                let len = u.int_in_range(0usize..=u.len().min(1024))?;
                let msg = u.bytes(len)?;
                match parse_raw(msg) {
                    Ok(c) => c,
                    Err(_) => {
                        // handle_message refuses it and changes nothing.
                        let before = state.clone();
                        let r = state.handle_message(msg, neg, max_pairs);
                        assert_eq!(ack(&r), VIRTIO_NET_ERR);
                        assert_eq!(state, before);
                        continue;
                    }
                }
            }
            2 => command(&mut u)?,
            _ => {
                // The device asks for an announcement (backend moved).
                let set = state.request_announce(neg);
                assert_eq!(set, neg & vduse_net::net::features::GUEST_ANNOUNCE != 0);
                model.announce |= set;
                model.check(&state);
                continue;
            }
        };
        let before = state.clone();
        let got = state.apply(cmd.clone(), neg, max_pairs);
        let want = model.apply(&cmd, neg, max_pairs);
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{cmd:?}"),
            (Err(_), Err(())) => assert_eq!(state, before, "{cmd:?} refused but changed the state"),
            _ => panic!("{cmd:?} with features {neg:#x}, max_pairs {max_pairs}: got {got:?}, model says {want:?}"),
        }
        assert_eq!(ack(&got), if got.is_ok() { VIRTIO_NET_OK } else { VIRTIO_NET_ERR });
        // A command refused for its feature is refused by check_negotiated too.
        if let Err(CtrlError::NotNegotiated { .. }) = got {
            assert!(cmd.check_negotiated(neg).is_err());
        }
        model.check(&state);
        let status = state.config_status(true);
        assert_eq!(status & 2 != 0, model.announce);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
