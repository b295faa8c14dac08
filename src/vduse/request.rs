//! Control messages: parsing what the kernel sends, building replies.
//!
//! Everything read here comes from the kernel (or the model playing it) and
//! is still checked: a short or unknown message becomes a [`RequestError`],
//! never a panic.

use crate::uapi::vduse::*;

/// One control message, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    GetVqState {
        index: u32,
    },
    SetStatus {
        status: u8,
    },
    /// `asid` is 0 for API v0 messages.
    UpdateIotlb {
        asid: u32,
        start: u64,
        last: u64,
    },
    SetVqGroupAsid {
        group: u32,
        asid: u32,
    },
    SetVqReady {
        index: u32,
        ready: bool,
    },
    Suspend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("control message too short ({0} bytes)")]
    Truncated(usize),
    #[error("unknown control message type {kind} (request {id})")]
    UnknownType { id: u32, kind: u32 },
    #[error("control message type {kind} needs API version 1 (request {id})")]
    NeedsApiV1 { id: u32, kind: u32 },
}

impl RequestError {
    /// The request id to answer FAILED to, when the message carried one.
    pub fn request_id(&self) -> Option<u32> {
        match *self {
            RequestError::Truncated(_) => None,
            RequestError::UnknownType { id, .. } | RequestError::NeedsApiV1 { id, .. } => Some(id),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Offset of the payload union in `vduse_dev_request`.
const PAYLOAD: usize = 24;

impl Request {
    /// Decode one message as read(2) returned it. Returns the request id and
    /// the request.
    pub fn parse(bytes: &[u8], api_version: u64) -> Result<(u32, Request), RequestError> {
        if bytes.len() < REQUEST_SIZE {
            return Err(RequestError::Truncated(bytes.len()));
        }
        let kind = u32_at(bytes, 0);
        let id = u32_at(bytes, 4);
        let p = PAYLOAD;
        let req = match kind {
            VDUSE_GET_VQ_STATE => Request::GetVqState { index: u32_at(bytes, p) },
            VDUSE_SET_STATUS => Request::SetStatus { status: bytes[p] },
            VDUSE_UPDATE_IOTLB if api_version >= VDUSE_API_VERSION_1 => Request::UpdateIotlb {
                start: u64_at(bytes, p),
                last: u64_at(bytes, p + 8),
                asid: u32_at(bytes, p + 16),
            },
            VDUSE_UPDATE_IOTLB => Request::UpdateIotlb { asid: 0, start: u64_at(bytes, p), last: u64_at(bytes, p + 8) },
            VDUSE_SET_VQ_GROUP_ASID | VDUSE_SET_VQ_READY | VDUSE_SUSPEND if api_version < VDUSE_API_VERSION_1 => {
                return Err(RequestError::NeedsApiV1 { id, kind })
            }
            VDUSE_SET_VQ_GROUP_ASID => Request::SetVqGroupAsid { group: u32_at(bytes, p), asid: u32_at(bytes, p + 4) },
            VDUSE_SET_VQ_READY => Request::SetVqReady { index: u32_at(bytes, p), ready: u32_at(bytes, p + 4) != 0 },
            VDUSE_SUSPEND => Request::Suspend,
            _ => return Err(RequestError::UnknownType { id, kind }),
        };
        Ok((id, req))
    }

    /// Encode as the kernel would (used by the kernel model).
    pub fn encode(&self, id: u32, api_version: u64) -> [u8; REQUEST_SIZE] {
        let mut b = [0u8; REQUEST_SIZE];
        let p = PAYLOAD;
        let put32 = |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        let put64 = |b: &mut [u8], off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        let kind = match *self {
            Request::GetVqState { index } => {
                put32(&mut b, p, index);
                VDUSE_GET_VQ_STATE
            }
            Request::SetStatus { status } => {
                b[p] = status;
                VDUSE_SET_STATUS
            }
            Request::UpdateIotlb { asid, start, last } => {
                put64(&mut b, p, start);
                put64(&mut b, p + 8, last);
                if api_version >= VDUSE_API_VERSION_1 {
                    put32(&mut b, p + 16, asid);
                }
                VDUSE_UPDATE_IOTLB
            }
            Request::SetVqGroupAsid { group, asid } => {
                put32(&mut b, p, group);
                put32(&mut b, p + 4, asid);
                VDUSE_SET_VQ_GROUP_ASID
            }
            Request::SetVqReady { index, ready } => {
                put32(&mut b, p, index);
                put32(&mut b, p + 4, ready as u32);
                VDUSE_SET_VQ_READY
            }
            Request::Suspend => VDUSE_SUSPEND,
        };
        put32(&mut b, 0, kind);
        put32(&mut b, 4, id);
        b
    }
}

/// A reply, as written to the device fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub request_id: u32,
    pub ok: bool,
    /// For GET_VQ_STATE: the vq index and, for a split ring, the avail index
    /// (`packed` carries the four packed-ring fields instead).
    pub vq_state: Option<VqState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VqState {
    Split { index: u32, avail_index: u16 },
    Packed { index: u32, state: [u16; 4] },
}

impl Response {
    pub fn ok(request_id: u32) -> Self {
        Response { request_id, ok: true, vq_state: None }
    }
    pub fn failed(request_id: u32) -> Self {
        Response { request_id, ok: false, vq_state: None }
    }
    pub fn vq_state(request_id: u32, state: VqState) -> Self {
        Response { request_id, ok: true, vq_state: Some(state) }
    }

    pub fn encode(&self) -> [u8; RESPONSE_SIZE] {
        let mut b = [0u8; RESPONSE_SIZE];
        b[0..4].copy_from_slice(&self.request_id.to_le_bytes());
        let result = if self.ok { VDUSE_REQ_RESULT_OK } else { VDUSE_REQ_RESULT_FAILED };
        b[4..8].copy_from_slice(&result.to_le_bytes());
        match self.vq_state {
            Some(VqState::Split { index, avail_index }) => {
                b[24..28].copy_from_slice(&index.to_le_bytes());
                b[28..30].copy_from_slice(&avail_index.to_le_bytes());
            }
            Some(VqState::Packed { index, state }) => {
                b[24..28].copy_from_slice(&index.to_le_bytes());
                for (i, v) in state.iter().enumerate() {
                    b[28 + 2 * i..30 + 2 * i].copy_from_slice(&v.to_le_bytes());
                }
            }
            None => {}
        }
        b
    }

    /// Decode a reply (the model reads what the device wrote). `None` when
    /// the buffer is too short.
    pub fn parse(bytes: &[u8]) -> Option<(u32, u32, [u8; 128])> {
        if bytes.len() < RESPONSE_SIZE {
            return None;
        }
        let mut payload = [0u8; 128];
        payload.copy_from_slice(&bytes[24..152]);
        Some((u32_at(bytes, 0), u32_at(bytes, 4), payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips_on_api_v1() {
        let all = [
            Request::GetVqState { index: 3 },
            Request::SetStatus { status: 0x0f },
            Request::UpdateIotlb { asid: 1, start: 0, last: u64::MAX },
            Request::SetVqGroupAsid { group: 2, asid: 1 },
            Request::SetVqReady { index: 4, ready: true },
            Request::Suspend,
        ];
        for (i, r) in all.iter().enumerate() {
            let bytes = r.encode(100 + i as u32, VDUSE_API_VERSION_1);
            assert_eq!(Request::parse(&bytes, VDUSE_API_VERSION_1), Ok((100 + i as u32, *r)));
        }
    }

    #[test]
    fn api_v0_iotlb_has_no_asid_and_v1_only_types_are_refused() {
        let r = Request::UpdateIotlb { asid: 0, start: 0x1000, last: 0x1fff };
        let bytes = r.encode(7, VDUSE_API_VERSION_0);
        assert_eq!(Request::parse(&bytes, VDUSE_API_VERSION_0), Ok((7, r)));
        let g = Request::SetVqGroupAsid { group: 1, asid: 1 }.encode(8, VDUSE_API_VERSION_1);
        assert_eq!(
            Request::parse(&g, VDUSE_API_VERSION_0),
            Err(RequestError::NeedsApiV1 { id: 8, kind: VDUSE_SET_VQ_GROUP_ASID })
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(Request::parse(&[0u8; 10], 1), Err(RequestError::Truncated(10)));
        assert_eq!(Request::parse(&[], 1), Err(RequestError::Truncated(0)));
        let mut b = Request::Suspend.encode(9, 1);
        b[0..4].copy_from_slice(&77u32.to_le_bytes());
        let e = Request::parse(&b, 1).unwrap_err();
        assert_eq!(e, RequestError::UnknownType { id: 9, kind: 77 });
        assert_eq!(e.request_id(), Some(9));
    }

    #[test]
    fn responses_encode_vq_state_where_the_kernel_reads_it() {
        let b = Response::vq_state(5, VqState::Split { index: 2, avail_index: 0x1234 }).encode();
        let (id, result, payload) = Response::parse(&b).unwrap();
        assert_eq!((id, result), (5, VDUSE_REQ_RESULT_OK));
        assert_eq!(u32::from_le_bytes(payload[0..4].try_into().unwrap()), 2);
        assert_eq!(u16::from_le_bytes(payload[4..6].try_into().unwrap()), 0x1234);
        let (_, result, _) = Response::parse(&Response::failed(6).encode()).unwrap();
        assert_eq!(result, VDUSE_REQ_RESULT_FAILED);
    }
}
