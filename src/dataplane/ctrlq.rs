//! The control virtqueue, served on the slow-path thread.
//!
//! The CVQ lives in its own vq group, which a VMM moves to its own ASID to
//! shadow it; every buffer is translated only in that group's current
//! address space. A command is `[class, cmd] + data` in device-readable
//! buffers followed by a one-byte device-writable ack. Commands are
//! validated by [`crate::net::ctrl`] and answered OK or ERR; a malformed
//! chain stops the queue like any data queue.

use crate::mem::{AddressSpace, ReadGuard};
use crate::net::ctrl::{CtrlCommand, CtrlError, VIRTIO_NET_ERR, VIRTIO_NET_OK};
use crate::virtq::{Direction, QueueError, SplitQueue};

/// Largest command we accept (a full MAC table of both kinds fits).
pub const MAX_COMMAND: usize = 4096;

/// One command taken off the queue, not yet answered.
pub struct PendingCommand {
    pub head: u16,
    /// `Err` when the bytes did not form a valid command.
    pub command: Result<CtrlCommand, CtrlError>,
    /// Host address of the ack byte.
    ack: *mut u8,
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

/// Read the next command chain. `Ok(None)` when the queue is empty.
pub fn next_command(
    q: &mut SplitQueue,
    space: &AddressSpace,
    g: &ReadGuard<'_>,
    features: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<PendingCommand>, (Option<u16>, CvqError)> {
    q.refresh(space, g).map_err(|e| (None, e.into()))?;
    if q.pending().map_err(|e| (None, e.into()))? == 0 {
        return Ok(None);
    }
    let head = q.pop_head().map_err(|e| (None, e.into()))?;
    buf.clear();
    let mut too_long = false;
    let mut ack: *mut u8 = std::ptr::null_mut();
    q.walk_chain(head, Direction::Both, space, g, |p, n, writable| {
        if writable {
            if ack.is_null() {
                ack = p;
            }
        } else if buf.len() + n <= MAX_COMMAND {
            // SAFETY: p is valid for n readable bytes (walk_chain translated it).
            buf.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        } else {
            too_long = true;
        }
    })
    .map_err(|e| (Some(head), e.into()))?;
    if ack.is_null() {
        return Err((Some(head), CvqError::NoAck));
    }
    if buf.len() < 2 {
        return Err((Some(head), CvqError::Short));
    }
    let command = if too_long {
        Err(CtrlError::BadLength { command: "control command", expected: MAX_COMMAND as u64, got: MAX_COMMAND + 1 })
    } else {
        CtrlCommand::parse(buf[0], buf[1], &buf[2..]).and_then(|c| c.check_negotiated(features).map(|_| c))
    };
    Ok(Some(PendingCommand { head, command, ack }))
}

/// Write the ack and return the chain. The caller publishes and notifies.
pub fn complete(q: &mut SplitQueue, cmd: PendingCommand, ok: bool) {
    let v = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR };
    // SAFETY: `ack` was translated with write access in the queue's address
    // space under the guard the caller still holds.
    unsafe { std::ptr::write_volatile(cmd.ack, v) };
    q.push_used(cmd.head, 1);
}
