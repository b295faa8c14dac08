//! The control virtqueue, served on the slow-path thread.
//!
//! The CVQ lives in its own vq group, which a VMM moves to its own ASID to
//! shadow it; every buffer is translated only in that group's current
//! address space. A command is `[class, cmd] + data` in device-readable
//! buffers followed by a one-byte device-writable ack. The command bytes
//! are copied once into a local buffer before they are parsed (the driver
//! may change its memory at any time, so nothing here looks at it in
//! place). Commands are validated by [`crate::net::ctrl`] and answered OK or
//! ERR; a malformed chain stops the queue like any data queue.

use crate::mem::{AddressSpace, ReadGuard};
use crate::net::ctrl::{CtrlCommand, CtrlError, VIRTIO_NET_ERR, VIRTIO_NET_OK};
use crate::virtq::{Chain, Direction, Head, QueueError, Ring};

/// Largest command we accept (a full MAC table of both kinds fits).
pub const MAX_COMMAND: usize = 4096;

/// One command taken off the queue, not yet answered. Lives no longer than
/// the read guard its chain was read under.
pub struct PendingCommand<'g> {
    pub head: Head,
    /// `Err` when the bytes did not form a valid command.
    pub command: Result<CtrlCommand, CtrlError>,
    /// The chain; its first writable byte is the ack.
    chain: Chain<'g>,
}

/// Why a chain could not even be read as a command.
#[derive(Debug, thiserror::Error)]
pub enum CvqError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("control command chain has no device-writable ack byte")]
    NoAck,
    #[error("control command shorter than its 2-byte header")]
    Short,
}

/// Read the next command chain. `Ok(None)` when the queue is empty. The
/// ring is of either format (the slow path passes a `VirtQueue`).
pub fn next_command<'g, R: Ring>(
    q: &mut R,
    space: &AddressSpace,
    g: &'g ReadGuard<'_>,
    features: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<PendingCommand<'g>>, (Option<Head>, CvqError)> {
    q.refresh(space, g).map_err(|e| (None, e.into()))?;
    if q.pending().map_err(|e| (None, e.into()))? == 0 {
        return Ok(None);
    }
    let chain = q.pop(Direction::Both, space, g).map_err(|e| (None, e.into()))?;
    let head = chain.head();
    if chain.writable().is_empty() {
        return Err((Some(head), CvqError::NoAck));
    }
    let len = chain.readable_len() as usize;
    if len < 2 {
        return Err((Some(head), CvqError::Short));
    }
    // Too long, or in more pieces than a chain keeps: answered ERR.
    let command = if len > MAX_COMMAND || !chain.readable_complete() {
        Err(CtrlError::BadLength { command: "control command", expected: MAX_COMMAND as u64, got: len })
    } else {
        // Copy out once; parse the copy.
        buf.clear();
        buf.resize(len, 0);
        let got = chain.read_at(0, buf);
        debug_assert_eq!(got, len);
        CtrlCommand::parse(buf[0], buf[1], &buf[2..]).and_then(|c| c.check_negotiated(features).map(|_| c))
    };
    Ok(Some(PendingCommand { head, command, chain }))
}

/// Write the ack and return the chain. The caller publishes and notifies.
pub fn complete<R: Ring>(q: &mut R, cmd: PendingCommand<'_>, ok: bool) {
    let v = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR };
    cmd.chain.write_at(0, &[v]);
    q.push_used(cmd.head, 1);
}
