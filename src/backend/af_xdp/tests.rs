//! Tests with real sockets, programs and interfaces (root; each in its own
//! network namespace, removed afterwards).

use std::time::{Duration, Instant};

use super::*;
use crate::backend::Port;
use crate::bench::netns::{self, Netns, Reflect};

/// The namespace, or why the test cannot run here.
fn rig(queues: u32, how: Reflect) -> Option<Netns> {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIP: {why}");
        return None;
    }
    let ns = Netns::new("vnxu").expect("netns");
    ns.veth("xa", "xb", queues).expect("veth");
    ns.reflector("xb", how).expect("reflector");
    Some(ns)
}

fn cfg(mode: XdpMode) -> AfXdpConfig {
    AfXdpConfig { mode, ring_size: 256, ..AfXdpConfig::new("xa", 1) }
}

/// Send `n` frames through `p` and wait for each to come back unchanged.
fn bounce(ns: &Netns, p: &mut AfXdpPort, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0u32;
    let mut got = 0u32;
    while got < n {
        if Instant::now() > deadline {
            eprintln!("{}", ns.ip(&["-s", "link"]).unwrap());
            eprintln!("{:?} {:?}", p.counters().snapshot(), p.xsk.statistics());
            eprintln!("{}", ns.exec(&["tc", "-s", "filter", "show", "dev", "xb", "ingress"]).unwrap());
            panic!("only {got} of {n} frames came back");
        }
        if sent < n && sent - got < 64 {
            let len = 60 + (sent as usize * 37) % 1400;
            let s = p.tx_slot().expect("a free TX frame");
            s[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1]);
            s[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            s[14..18].copy_from_slice(&sent.to_le_bytes());
            for (i, b) in s[18..len].iter_mut().enumerate() {
                *b = (i as u32 ^ sent) as u8;
            }
            p.tx_commit(len);
            p.tx_flush();
            sent += 1;
        }
        if let Some(f) = p.rx_peek() {
            let seq = u32::from_le_bytes(f[14..18].try_into().unwrap());
            assert_eq!(seq, got, "frames in order");
            assert_eq!(f.len(), 60 + (seq as usize * 37) % 1400);
            assert!(f[18..].iter().enumerate().all(|(i, &b)| b == (i as u32 ^ seq) as u8), "payload of {seq}");
            p.rx_consume();
            p.rx_flush();
            got += 1;
        } else {
            p.tx_flush();
        }
    }
}

#[test]
fn frames_bounce_off_the_reflector_and_the_program_goes_with_the_ports() {
    for (mode, how) in [(XdpMode::Native, Reflect::Redirect), (XdpMode::Skb, Reflect::Mirror)] {
        let Some(ns) = rig(1, how) else { return };
        let _in = ns.enter().unwrap();
        let (mut ports, rep) = open(&cfg(mode)).unwrap();
        assert_eq!(rep.replaced_stale, None);
        let progs = attached_programs("xa").unwrap();
        assert_eq!(progs.len(), 1, "{progs:?}");
        assert_eq!(progs[0].2, PROG_NAME);
        assert_eq!(progs[0].0, mode.attach_mode());
        bounce(&ns, &mut ports[0], 3000);
        let c = ports[0].counters().snapshot();
        assert_eq!((c.tx_frames, c.rx_frames, c.bad_descs, c.failed), (3000, 3000, 0, 0));
        drop(ports);
        assert_eq!(attached_programs("xa").unwrap(), vec![], "program left after the ports were dropped");
    }
}
