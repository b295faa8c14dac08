//! RSS control commands and steering: `MQ_RSS_CONFIG` / `MQ_HASH_CONFIG`
//! (and `VQ_PAIRS_SET`, which replaces them) parsed from raw driver bytes
//! and from hand-built commands, applied under arbitrary features and queue
//! counts. What parses re-encodes to the same bytes; a refused command
//! changes nothing; an accepted one leaves only queues that exist. The
//! resulting `Steering` then hashes arbitrary and well-formed frames: the
//! value equals the bit-by-bit Toeplitz reference over the selected fields,
//! the report names an enabled hash type, and the queue exists.

#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::net::ctrl::{
    CtrlCommand, CtrlEffect, CtrlState, HashConfig, RssConfig, CLASS_MQ, CMD_MQ_HASH_CONFIG, CMD_MQ_RSS_CONFIG,
};
use vduse_net::net::features as f;
use vduse_net::net::rss::{self, HashReport, Steering};
use vduse_net::net::wire::build::FrameSpec;

fn key(u: &mut Unstructured) -> ArbResult<Vec<u8>> {
    let n = if u.ratio(7, 8)? { u.int_in_range(0..=rss::MAX_KEY_SIZE)? } else { u.int_in_range(0..=255)? };
    (0..n).map(|_| u.arbitrary()).collect()
}

fn command(u: &mut Unstructured, max_pairs: u16) -> ArbResult<CtrlCommand> {
    let queue = |u: &mut Unstructured| -> ArbResult<u16> {
        if u.ratio(7, 8)? {
            u.int_in_range(0..=max_pairs.max(1))
        } else {
            u.arbitrary()
        }
    };
    Ok(match u.int_in_range(0..=2)? {
        0 => {
            let len = if u.ratio(7, 8)? { 1 << u.int_in_range(0..=7)? } else { u.int_in_range(0..=300)? };
            let table = (0..len).map(|_| queue(u)).collect::<ArbResult<Vec<u16>>>()?;
            CtrlCommand::RssConfig(RssConfig {
                hash_types: if u.ratio(7, 8)? { u.arbitrary::<u32>()? & rss::SUPPORTED_HASH_TYPES } else { u.arbitrary()? },
                indirection_table: table,
                unclassified_queue: queue(u)?,
                max_tx_vq: queue(u)?,
                key: key(u)?,
            })
        }
        1 => CtrlCommand::HashConfig(HashConfig {
            hash_types: if u.ratio(7, 8)? { u.arbitrary::<u32>()? & rss::SUPPORTED_HASH_TYPES } else { u.arbitrary()? },
            reserved: u.arbitrary()?,
            key: key(u)?,
        }),
        _ => CtrlCommand::MqPairsSet(queue(u)?),
    })
}

/// Checks `st` on `frame` against the reference.
fn check_hash(st: &Steering, types: u32, key: &[u8], frame: &[u8], max_pairs: u16) {
    let h = st.hash(frame);
    match rss::hash_input(frame, types) {
        None => assert_eq!((h.value, h.report), (0, HashReport::None)),
        Some(i) => {
            assert_eq!(h.report, i.report);
            assert_ne!(i.report, HashReport::None);
            assert!(i.report.hash_type() & types != 0, "{:?} not enabled in {types:#x}", i.report);
            assert!(i.bytes().len() <= rss::MAX_INPUT);
            assert_eq!(h.value, rss::toeplitz_reference(key, i.bytes()));
        }
    }
    if st.steers() {
        let q = st.queue(&h).expect("RSS picks a queue");
        assert!(q < max_pairs, "queue {q} of {max_pairs}");
    } else {
        assert_eq!(st.queue(&h), None);
    }
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let neg = f::VERSION_1 | f::CTRL_VQ | (u.arbitrary::<u64>()? & (f::RSS | f::HASH_REPORT | f::MQ));
    let max_pairs: u16 = u.int_in_range(1..=16)?;
    let mut state = CtrlState::new([2, 0, 0, 0, 0, 1], neg);
    for _ in 0..u.int_in_range(1..=4)? {
        let cmd = if u.ratio(1, 2)? {
            let sub = u.int_in_range(0u8..=3)?;
            let len = u.int_in_range(0..=u.len().min(400))?;
            let msg: Vec<u8> = [CLASS_MQ, sub].iter().copied().chain(u.bytes(len)?.iter().copied()).collect();
            match CtrlCommand::parse_message(&msg) {
                Ok(c) => {
                    // RSS/HASH_CONFIG ignore bytes after the key (Linux pads one).
                    let enc = c.encode_message();
                    let padded = matches!(c, CtrlCommand::RssConfig(_) | CtrlCommand::HashConfig(_));
                    let n = if padded { enc.len().min(msg.len()) } else { msg.len() };
                    assert_eq!(enc, msg[..n], "{c:?}: canonical encoding");
                    c
                }
                Err(e) => {
                    let _ = e.to_string();
                    let before = state.clone();
                    assert!(state.handle_message(&msg, neg, max_pairs).is_err());
                    assert_eq!(state, before);
                    continue;
                }
            }
        } else {
            command(&mut u, max_pairs)?
        };
        // Hand-built commands within the wire format's limits re-parse to
        // themselves.
        let encodable = match &cmd {
            CtrlCommand::RssConfig(r) => {
                let n = r.indirection_table.len();
                n.is_power_of_two()
                    && n <= rss::MAX_INDIRECTION_TABLE_LEN
                    && r.key.len() <= rss::MAX_KEY_SIZE
                    && r.indirection_table.iter().chain([&r.unclassified_queue]).all(|&q| q < 0x8000)
            }
            CtrlCommand::HashConfig(h) => h.key.len() <= rss::MAX_KEY_SIZE,
            CtrlCommand::MqPairsSet(n) => (1..=0x8000).contains(n),
            _ => true,
        };
        if encodable {
            let msg = cmd.encode_message();
            assert_eq!(CtrlCommand::parse_message(&msg).as_ref(), Ok(&cmd));
            if !matches!(cmd, CtrlCommand::MqPairsSet(_)) {
                assert!(matches!(msg[1], CMD_MQ_RSS_CONFIG | CMD_MQ_HASH_CONFIG));
            }
        }
        let before = state.clone();
        match state.apply(cmd.clone(), neg, max_pairs) {
            Err(_) => assert_eq!(state, before, "{cmd:?} refused but changed the state"),
            Ok(CtrlEffect::RssChanged(n)) => {
                let r = state.rss().expect("RSS set");
                assert!(neg & f::RSS != 0);
                assert_eq!(state.queue_pairs(), n);
                assert!(n >= 1 && n <= max_pairs);
                assert!(r.indirection_table.len().is_power_of_two());
                assert!(r.indirection_table.len() <= rss::MAX_INDIRECTION_TABLE_LEN);
                assert!(r.indirection_table.iter().all(|&q| q < max_pairs) && r.unclassified_queue < max_pairs);
                assert!(r.key.len() <= rss::MAX_KEY_SIZE && r.hash_types & !rss::SUPPORTED_HASH_TYPES == 0);
                assert!(state.hash_config().is_none());
            }
            Ok(CtrlEffect::HashChanged) => {
                assert!(neg & f::HASH_REPORT != 0 && state.rss().is_none());
                assert!(state.hash_config().is_some());
            }
            Ok(CtrlEffect::PairsChanged(_)) => assert!(state.rss().is_none() && state.hash_config().is_none()),
            Ok(e) => panic!("{cmd:?}: unexpected effect {e:?}"),
        }
    }
    let Some(st) = Steering::from_ctrl(&state) else {
        assert!(state.rss().is_none() && state.hash_config().is_none());
        return Ok(());
    };
    let (types, key) = match (state.rss(), state.hash_config()) {
        (Some(r), _) => (r.hash_types, r.key.clone()),
        (None, Some(h)) => (h.hash_types, h.key.clone()),
        _ => unreachable!("from_ctrl returned Some"),
    };
    while !u.is_empty() {
        if u.ratio(1, 2)? {
            let s = FrameSpec {
                vlans: u.int_in_range(0..=2)?,
                v6: u.arbitrary()?,
                tcp: u.arbitrary()?,
                ipv6_ext: u.arbitrary()?,
                payload: u.int_in_range(0..=64)?,
                src_port: u.arbitrary()?,
                dst_port: u.arbitrary()?,
                ..FrameSpec::default()
            };
            let mut frame = s.build();
            if u.ratio(1, 2)? {
                let i = u.choose_index(frame.len())?;
                frame[i] = u.arbitrary()?;
            }
            check_hash(&st, types, &key, &frame, max_pairs);
        } else {
            let len = u.int_in_range(0..=u.len().min(200))?;
            let frame = u.bytes(len)?.to_vec();
            check_hash(&st, types, &key, &frame, max_pairs);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
