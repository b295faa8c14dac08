use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::*;

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vduse-net-statelog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample(status: u8) -> ControlRecord {
    ControlRecord {
        name: "vdn-test".into(),
        api: 1,
        pairs: 2,
        has_cvq: true,
        ngroups: 3,
        nas: 2,
        offered: 0x1_3000_0020,
        vduse_features: 3,
        max_queue_size: 256,
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
        status,
        negotiated: 0x1_0002_0000,
        suspended: false,
        group_asid: vec![0, 0, 1],
        config_mac: [2, 0, 0, 0, 0, 9],
        config_status: 1,
        queues: (0..5)
            .map(|i| QueueRecord { started: i != 3, size: 256, desc: i * 4096, driver: 7, device: 8 })
            .collect(),
        ctrl: vec![vec![0, 0, 1], vec![1, 1, 2, 0, 0, 0, 0, 9]],
    }
}

/// Overwrite `bytes` at `off` of the log file, as a crash or another
/// program would leave them.
fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(bytes).unwrap();
}

fn peek(path: &Path, off: u64, n: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0; n];
    f.read_exact(&mut b).unwrap();
    b
}

fn slot_off(nvqs: u32, i: usize) -> u64 {
    (HEADER_LEN + nvqs as usize * POSITION_STRIDE + i * slot_len(CONTROL_CAPACITY)) as u64
}

#[test]
fn a_record_round_trips_and_every_truncation_is_refused() {
    let r = sample(0x0f);
    let b = r.encode();
    assert_eq!(ControlRecord::decode(&b).unwrap(), r);
    for cut in 0..b.len() {
        assert!(ControlRecord::decode(&b[..cut]).is_err(), "truncated at {cut} accepted");
    }
    let mut long = b.clone();
    long.push(0);
    assert_eq!(ControlRecord::decode(&long), Err(DecodeError::Trailing(1)));
    // A count far beyond the bytes present is refused before allocating.
    let mut huge = 0u32.to_le_bytes().to_vec(); // empty name
    huge.extend_from_slice(&[0; 8 + 2 + 1 + 4 + 4 + 8 + 8 + 2 + 6 + 2 + 1 + 8 + 1]);
    huge.extend_from_slice(&u32::MAX.to_le_bytes()); // group count
    assert_eq!(ControlRecord::decode(&huge), Err(DecodeError::OutOfRange("group count")));
}

#[test]
fn positions_pack_into_one_word() {
    let p = Position { last_avail: 0xfffe, used: 0x8001 };
    assert_eq!(Position::unpack(p.pack()), Some(p));
    assert_eq!(Position::unpack(0), None, "a word never written is no position");
}

#[test]
fn the_newest_record_and_positions_survive_a_reopen() {
    let d = Dir::new("reopen");
    {
        let log = StateLog::create(&d.0, "vdn0", 5).unwrap();
        assert_eq!(log.read_control().unwrap(), None);
        log.write_control(&sample(1)).unwrap();
        log.write_control(&sample(3)).unwrap();
        log.write_control(&sample(0x0f)).unwrap();
        let slot = PositionSlot::new(Some(&Arc::new(log)), 2);
        slot.record((17, 17));
        // Dropped here: the file stays, like after kill -9.
    }
    let log = StateLog::open(&d.0, "vdn0").unwrap().expect("log present");
    assert_eq!(log.read_control().unwrap(), Some(sample(0x0f)));
    assert_eq!(log.position(2), Some(Position { last_avail: 17, used: 17 }));
    assert_eq!(log.position(1), None);
    assert_eq!(log.position(9), None, "beyond the vq count");
    // The reopened writer continues the generations: the next write goes
    // to the other slot and is the newest.
    log.write_control(&sample(0x07)).unwrap();
    drop(log);
    let log = StateLog::open(&d.0, "vdn0").unwrap().unwrap();
    assert_eq!(log.read_control().unwrap(), Some(sample(0x07)));
    log.remove();
    assert!(StateLog::open(&d.0, "vdn0").unwrap().is_none());
}

/// A crash in the middle of a control write: the slot being written reads
/// as invalid (generation 0, or a checksum that does not match), and the
/// previous record is used.
#[test]
fn a_torn_control_write_falls_back_to_the_previous_record() {
    let d = Dir::new("torn");
    let path;
    {
        let log = StateLog::create(&d.0, "vdn1", 3).unwrap();
        path = log.path().to_path_buf();
        log.write_control(&sample(1)).unwrap(); // gen 1 -> slot 1
        log.write_control(&sample(3)).unwrap(); // gen 2 -> slot 0
    }
    // (a) died after invalidating slot 0, before its generation store.
    let gen_before = peek(&path, slot_off(3, 0), 8);
    poke(&path, slot_off(3, 0), &0u64.to_le_bytes());
    assert_eq!(StateLog::open(&d.0, "vdn1").unwrap().unwrap().read_control().unwrap(), Some(sample(1)));
    // (b) generation in place but a byte of the record differs (a write
    // the checksum does not cover).
    poke(&path, slot_off(3, 0), &gen_before);
    assert_eq!(StateLog::open(&d.0, "vdn1").unwrap().unwrap().read_control().unwrap(), Some(sample(3)));
    let body = slot_off(3, 0) + SLOT_HEADER as u64 + 5;
    let b = peek(&path, body, 1)[0];
    poke(&path, body, &[b ^ 0x40]);
    let log = StateLog::open(&d.0, "vdn1").unwrap().unwrap();
    assert_eq!(log.read_control().unwrap(), Some(sample(1)));
    // The next write replaces the torn slot, not the good one.
    log.write_control(&sample(0x0b)).unwrap();
    drop(log);
    assert_eq!(StateLog::open(&d.0, "vdn1").unwrap().unwrap().read_control().unwrap(), Some(sample(0x0b)));
    // (c) both slots torn: no record at all (never a half one).
    poke(&path, slot_off(3, 0), &0u64.to_le_bytes());
    poke(&path, slot_off(3, 1), &0u64.to_le_bytes());
    assert_eq!(StateLog::open(&d.0, "vdn1").unwrap().unwrap().read_control().unwrap(), None);
}

#[test]
fn a_log_of_another_version_or_kind_is_refused_by_name() {
    let d = Dir::new("version");
    let path = StateLog::create(&d.0, "vdn2", 3).unwrap().path().to_path_buf();
    poke(&path, 8, &2u32.to_le_bytes());
    match StateLog::open(&d.0, "vdn2") {
        Err(e @ LogError::Version { found: 2, .. }) => {
            assert!(e.to_string().contains("format version 2; this binary reads version 1"), "{e}")
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a version-2 log was accepted"),
    }
    poke(&path, 0, b"NOTALOG!");
    assert!(matches!(StateLog::open(&d.0, "vdn2"), Err(LogError::BadMagic(_))));
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(StateLog::open(&d.0, "vdn2"), Err(LogError::BadMagic(_))));
    // Right magic and version, wrong size for its vq count.
    let log = StateLog::create(&d.0, "vdn2", 3).unwrap();
    drop(log);
    poke(&path, 12, &4u32.to_le_bytes());
    assert!(matches!(StateLog::open(&d.0, "vdn2"), Err(LogError::Corrupt { .. })));
}

#[test]
fn a_log_in_use_is_not_opened_twice() {
    let d = Dir::new("lock");
    let log = StateLog::create(&d.0, "vdn3", 3).unwrap();
    assert!(matches!(StateLog::open(&d.0, "vdn3"), Err(LogError::Locked(_))));
    assert!(matches!(StateLog::create(&d.0, "vdn3", 3), Err(LogError::Locked(_))));
    drop(log);
    assert!(StateLog::open(&d.0, "vdn3").unwrap().is_some());
}

#[test]
fn a_record_too_large_invalidates_the_log() {
    let d = Dir::new("large");
    let log = StateLog::create(&d.0, "vdn4", 3).unwrap();
    log.write_control(&sample(1)).unwrap();
    let big = ControlRecord { ctrl: vec![vec![0; CONTROL_CAPACITY]], ..sample(1) };
    assert!(matches!(log.write_control(&big), Err(LogError::TooLarge(_))));
    assert_eq!(log.read_control().unwrap(), None, "no stale record left behind");
    log.write_control(&sample(3)).unwrap();
    assert_eq!(log.read_control().unwrap(), Some(sample(3)));
}
