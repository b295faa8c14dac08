//! TX offload headers: `offload::validate` on well-formed frames (built,
//! then optionally mutated) and on raw bytes, under arbitrary sender
//! permissions; then the delivery decision for arbitrary receivers, applied
//! as the dataplane will (checksum completion, segmentation into a buffer).
//! Never a panic or an overflow; every segment has the promised length and
//! a header the receiver accepts; frames nobody mutated come out with
//! correct checksums (`offload::verify`).

#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::net::features as f;
use vduse_net::net::hdr::{self, NetHdr};
use vduse_net::net::offload::{csum, validate, Delivery, OffloadCaps, Sender, Segmenter, Verdict};
use vduse_net::net::wire::build::{CsumFill, FrameSpec};

const ALL_TX: u64 = f::CSUM | f::HOST_TSO4 | f::HOST_TSO6 | f::HOST_ECN | f::HOST_USO;
/// Segments written per frame (a 64 KiB frame with gso_size 1 has 64 K).
const MAX_WRITES: usize = 256;

fn caps(u: &mut Unstructured) -> ArbResult<OffloadCaps> {
    let b: u8 = u.arbitrary()?;
    Ok(OffloadCaps {
        csum: b & 1 != 0,
        tso4: b & 2 != 0,
        tso6: b & 4 != 0,
        tso_ecn: b & 8 != 0,
        uso4: b & 16 != 0,
        uso6: b & 32 != 0,
    })
}

fn spec(u: &mut Unstructured) -> ArbResult<FrameSpec> {
    Ok(FrameSpec {
        vlans: u.int_in_range(0..=2)?,
        v6: u.arbitrary()?,
        tcp: u.arbitrary()?,
        ipv4_opts: 4 * u.int_in_range(0..=10)?,
        ipv6_ext: u.arbitrary()?,
        tcp_opts: 4 * u.int_in_range(0..=10)?,
        payload: if u.ratio(1, 8)? { u.int_in_range(0..=65_000)? } else { u.int_in_range(0..=4000)? },
        seed: u.arbitrary()?,
        tcp_flags: u.arbitrary()?,
        seq: u.arbitrary()?,
        ip_id: u.arbitrary()?,
        csum: CsumFill::Partial,
        ..FrameSpec::default()
    })
}

/// What a receiver with `to` may be handed.
fn acceptable(h: &NetHdr, to: &OffloadCaps) -> bool {
    let to = to.normalized();
    let offload_flags = h.flags & (hdr::F_NEEDS_CSUM | hdr::F_DATA_VALID) != 0;
    let gso_ok = match h.gso_type & !hdr::GSO_ECN {
        hdr::GSO_NONE => h.gso_type == hdr::GSO_NONE,
        hdr::GSO_TCPV4 => to.tso4,
        hdr::GSO_TCPV6 => to.tso6,
        hdr::GSO_UDP_L4 => to.uso4 || to.uso6,
        _ => false,
    };
    let ecn_ok = h.gso_type & hdr::GSO_ECN == 0 || to.tso_ecn;
    (!offload_flags || to.csum) && gso_ok && ecn_ok
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let (frame, hdr, pristine) = if u.ratio(3, 4)? {
        let s = spec(&mut u)?;
        let mss = u.int_in_range(1..=9000)?;
        let gso = u.ratio(3, 4)?;
        let mut frame = s.build();
        let mut h = s.offload_hdr(gso.then_some(mss)).to_bytes();
        let frame_muts = if u.ratio(1, 2)? { u.int_in_range(1..=4)? } else { 0 };
        for _ in 0..frame_muts {
            let i = u.choose_index(frame.len())?;
            frame[i] = u.arbitrary()?;
        }
        let hdr_muts = if u.ratio(1, 3)? { u.int_in_range(1..=3)? } else { 0 };
        for _ in 0..hdr_muts {
            let i = u.choose_index(h.len())?;
            h[i] = u.arbitrary()?;
        }
        let whole = frame.len();
        if u.ratio(1, 8)? {
            let keep = u.int_in_range(0..=frame.len())?;
            frame.truncate(keep);
        }
        let pristine = frame_muts == 0 && hdr_muts == 0 && frame.len() == whole;
        (frame, NetHdr::parse(&h).expect("12 bytes"), pristine)
    } else {
        let h: [u8; 12] = u.arbitrary()?;
        let len = u.int_in_range(0..=u.len())?;
        (u.bytes(len)?.to_vec(), NetHdr::parse(&h).expect("12 bytes"), false)
    };
    let from = match u.int_in_range(0..=2)? {
        0 => Sender::driver(u.arbitrary::<u64>()? & (ALL_TX | f::GUEST_HDRLEN)),
        1 => Sender::port(caps(&mut u)?),
        _ => Sender { caps: caps(&mut u)?, exact_hdr_len: u.arbitrary()?, trust_data_valid: u.arbitrary()? },
    };
    let o = match validate(&frame, &hdr, &from) {
        Ok(o) => o,
        Err(e) => {
            let _ = (e.to_string(), e.code().name());
            return Ok(());
        }
    };
    // Checksums can be judged only when the driver's pseudo-header sum and
    // the frame are as built.
    let judge = pristine;
    for _ in 0..2 {
        let to = caps(&mut u)?;
        match o.deliver(&to) {
            Delivery::AsIs(h) => assert!(acceptable(&h, &to), "{h:?} to {to:?}"),
            Delivery::CompleteCsum { start, offset, hdr: h } => {
                assert!(acceptable(&h, &to) && h.flags == 0);
                let mut done = frame.clone();
                csum::complete(&mut done, start, offset).expect("validated offsets");
                if judge {
                    assert_eq!(vduse_net::net::offload::verify(&done), Verdict::Good);
                }
            }
            Delivery::Segment { mode, hdr: h } => {
                assert!(acceptable(&h, &to) && h.gso_type == hdr::GSO_NONE, "{h:?} to {to:?}");
                let g = o.gso.expect("segmenting a GSO frame");
                let s = Segmenter::new(&frame, &g, mode).expect("validated description");
                assert_eq!(s.hdr(), h);
                let mut buf = vec![0u8; s.max_len()];
                let n = s.count();
                let picks: Vec<usize> = (0..n.min(MAX_WRITES)).chain([n - 1]).collect();
                for i in picks {
                    let len = s.write(i, &mut buf).expect("buffer of max_len");
                    assert_eq!(Some(len), s.len_of(i));
                    let seg = &mut buf[..len];
                    if h.flags & hdr::F_NEEDS_CSUM != 0 {
                        csum::complete(seg, h.csum_start as usize, h.csum_offset as usize).expect("inside segment");
                    }
                    if judge {
                        assert_eq!(vduse_net::net::offload::verify(seg), Verdict::Good, "segment {i} of {n}");
                    }
                }
                assert!(s.write(n, &mut buf).is_err());
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
