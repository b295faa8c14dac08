//! Property tests for the SPSC slot rings (`backend::slots`) that carry
//! frames between poll threads: order, no loss, no duplicate, capacity and
//! the publication rules (a frame is visible only after the producer's
//! flush; a slot is reused only after the consumer's flush), against a
//! plain model, single-threaded op by op and across two threads.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vduse_net::backend::slots::channel;
use vduse_net::backend::{FrameMeta, SLOT_SIZE};

#[derive(Clone, Debug)]
enum Op {
    /// Producer: write a frame of this length (if a slot is free) and commit.
    Produce(usize),
    ProducerFlush,
    /// Consumer: peek and, if there is a frame, consume it.
    Consume,
    /// Consumer: peek only (must not advance).
    Peek,
    ConsumerFlush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..=SLOT_SIZE + 64).prop_map(Op::Produce),
        2 => Just(Op::ProducerFlush),
        4 => Just(Op::Consume),
        1 => Just(Op::Peek),
        2 => Just(Op::ConsumerFlush),
    ]
}

/// Frame `seq` of `len` bytes: the sequence number, then a byte pattern.
fn fill(buf: &mut [u8], seq: u32, len: usize) {
    let len = len.min(buf.len());
    for (i, b) in buf[..len].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    if len >= 4 {
        buf[..4].copy_from_slice(&seq.to_le_bytes());
    }
}

fn expected(seq: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(&mut v, seq, len);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Op by op against a model: the frames come out in order, intact, each
    /// once; a free slot exists exactly while fewer than `capacity` frames
    /// are produced and not yet freed by a consumer flush.
    #[test]
    fn single_thread_matches_the_model(cap in 1usize..=40, ops in prop::collection::vec(op(), 0..300)) {
        let (mut p, mut c) = channel(cap);
        let capacity = cap.max(2).next_power_of_two();
        prop_assert_eq!(p.ring().capacity(), capacity);
        // Model: produced but unpublished, published, consumed not freed.
        let mut unpublished: VecDeque<(u32, usize)> = VecDeque::new();
        let mut published: VecDeque<(u32, usize)> = VecDeque::new();
        let mut consumed_unfreed = 0usize;
        let mut next_seq = 0u32;
        let mut next_out = 0u32;
        for op in ops {
            let in_ring = unpublished.len() + published.len() + consumed_unfreed;
            match op {
                Op::Produce(len) => {
                    let slot = p.slot();
                    prop_assert_eq!(slot.is_some(), in_ring < capacity, "free slot with {} of {} in the ring", in_ring, capacity);
                    if let Some(s) = slot {
                        prop_assert_eq!(s.len(), SLOT_SIZE);
                        fill(s, next_seq, len);
                        p.commit(len, FrameMeta::PLAIN);
                        unpublished.push_back((next_seq, len.min(SLOT_SIZE)));
                        next_seq += 1;
                    }
                }
                Op::ProducerFlush => {
                    p.flush();
                    published.extend(unpublished.drain(..));
                }
                Op::Consume | Op::Peek => {
                    prop_assert_eq!(c.pending(), published.len());
                    let want = published.front().copied();
                    match (c.peek(), want) {
                        (None, None) => {}
                        (Some(f), Some((seq, len))) => {
                            prop_assert_eq!(seq, next_out, "order");
                            prop_assert_eq!(f.bytes, &expected(seq, len)[..], "frame {} intact", seq);
                        }
                        (got, want) => prop_assert!(false, "peek {:?} but model has {:?}", got.map(|f| f.bytes.len()), want),
                    }
                    if matches!(op, Op::Consume) && want.is_some() {
                        c.consume();
                        published.pop_front();
                        consumed_unfreed += 1;
                        next_out += 1;
                    }
                }
                Op::ConsumerFlush => {
                    c.flush();
                    consumed_unfreed = 0;
                }
            }
        }
        // Drain: everything published comes out exactly once, then nothing.
        p.flush();
        published.extend(unpublished.drain(..));
        while let Some((seq, len)) = published.pop_front() {
            let f = c.peek().expect("published frame present");
            prop_assert_eq!(f.bytes, &expected(seq, len)[..]);
            c.consume();
        }
        prop_assert!(c.peek().is_none(), "a frame came out twice");
        prop_assert_eq!(c.pending(), 0);
    }
}

proptest! {
    // Threads on 2 shared cores: fewer, bounded cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Across threads with random frame sizes, burst sizes and flush
    /// points: every frame arrives once, in order, intact; bounded in time.
    #[test]
    fn two_threads_deliver_everything_in_order(
        cap in 1usize..=64,
        sizes in prop::collection::vec(0usize..=SLOT_SIZE, 1..64),
        burst in 1usize..=48,
        n in 1u32..3000,
    ) {
        let (mut p, mut c) = channel(cap);
        let sizes2 = sizes.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        let producer = std::thread::spawn(move || {
            let mut seq = 0u32;
            while seq < n {
                let mut k = 0;
                while k < burst && seq < n {
                    let Some(s) = p.slot() else { break };
                    let len = sizes2[seq as usize % sizes2.len()];
                    fill(s, seq, len);
                    p.commit(len, FrameMeta::PLAIN);
                    seq += 1;
                    k += 1;
                }
                p.flush();
                if Instant::now() > deadline {
                    return false;
                }
                if k == 0 {
                    std::thread::yield_now();
                }
            }
            true
        });
        let mut next = 0u32;
        while next < n {
            prop_assert!(Instant::now() < deadline, "stalled at frame {} of {}", next, n);
            let mut k = 0;
            while let Some(f) = c.peek() {
                let len = sizes[next as usize % sizes.len()];
                prop_assert_eq!(f.bytes, &expected(next, len)[..], "frame {}", next);
                c.consume();
                next += 1;
                k += 1;
                if k == burst {
                    break;
                }
            }
            c.flush();
            if k == 0 {
                std::thread::yield_now();
            }
        }
        prop_assert!(producer.join().expect("producer thread"), "producer timed out");
        prop_assert!(c.peek().is_none(), "more frames than sent");
    }
}
