//! VDUSE control-message parser: any bytes either decode or give a typed
//! error (never a panic); whatever decodes re-encodes to bytes that decode
//! to the same request; replies round-trip; and a request the fuzzer builds
//! round-trips through encode/parse on both API versions.

#![no_main]

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::uapi::vduse::{
    REQUEST_SIZE, RESPONSE_SIZE, VDUSE_API_VERSION_1, VDUSE_GET_VQ_STATE, VDUSE_REQ_RESULT_FAILED, VDUSE_REQ_RESULT_OK,
    VDUSE_SET_STATUS, VDUSE_SET_VQ_GROUP_ASID, VDUSE_SET_VQ_READY, VDUSE_SUSPEND, VDUSE_UPDATE_IOTLB,
};
use vduse_net::vduse::request::VqState;
use vduse_net::vduse::{Request, RequestError, Response};

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The raw-bytes half: parse, check the error's id, and round-trip.
fn raw(api: u64, bytes: &[u8]) {
    match Request::parse(bytes, api) {
        Ok((id, req)) => {
            assert!(bytes.len() >= REQUEST_SIZE);
            assert_eq!(id, le32(bytes, 4), "request id comes from bytes 4..8");
            let kind = le32(bytes, 0);
            let expect_kind = match req {
                Request::GetVqState { .. } => VDUSE_GET_VQ_STATE,
                Request::SetStatus { .. } => VDUSE_SET_STATUS,
                Request::UpdateIotlb { .. } => VDUSE_UPDATE_IOTLB,
                Request::SetVqGroupAsid { .. } => VDUSE_SET_VQ_GROUP_ASID,
                Request::SetVqReady { .. } => VDUSE_SET_VQ_READY,
                Request::Suspend => VDUSE_SUSPEND,
            };
            assert_eq!(kind, expect_kind, "{req:?} decoded from type {kind}");
            if api < VDUSE_API_VERSION_1 {
                assert!(
                    !matches!(req, Request::SetVqGroupAsid { .. } | Request::SetVqReady { .. } | Request::Suspend),
                    "API v1 request {req:?} accepted on API v0"
                );
                if let Request::UpdateIotlb { asid, .. } = req {
                    assert_eq!(asid, 0, "API v0 UPDATE_IOTLB carries no asid");
                }
            }
            let again = req.encode(id, api);
            assert_eq!(Request::parse(&again, api), Ok((id, req)), "encode/parse round trip of {req:?}");
        }
        Err(e) => {
            match e {
                RequestError::Truncated(n) => {
                    assert_eq!(n, bytes.len());
                    assert!(n < REQUEST_SIZE);
                    assert_eq!(e.request_id(), None);
                }
                RequestError::UnknownType { id, kind } | RequestError::NeedsApiV1 { id, kind } => {
                    assert!(bytes.len() >= REQUEST_SIZE);
                    assert_eq!((id, kind), (le32(bytes, 4), le32(bytes, 0)));
                    assert_eq!(e.request_id(), Some(id));
                    if matches!(e, RequestError::NeedsApiV1 { .. }) {
                        assert!(api < VDUSE_API_VERSION_1);
                    }
                }
            }
            // Errors display without panicking (they go to the log).
            let _ = e.to_string();
        }
    }
    // Replies: whatever the device writes can be read back by the model.
    match Response::parse(bytes) {
        Some((id, result, payload)) => {
            assert!(bytes.len() >= RESPONSE_SIZE);
            assert_eq!((id, result), (le32(bytes, 0), le32(bytes, 4)));
            assert_eq!(&payload[..], &bytes[24..152]);
        }
        None => assert!(bytes.len() < RESPONSE_SIZE),
    }
}

fn request(u: &mut Unstructured<'_>) -> ArbResult<Request> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => Request::GetVqState { index: u.arbitrary()? },
        1 => Request::SetStatus { status: u.arbitrary()? },
        2 => Request::UpdateIotlb { asid: u.arbitrary()?, start: u.arbitrary()?, last: u.arbitrary()? },
        3 => Request::SetVqGroupAsid { group: u.arbitrary()?, asid: u.arbitrary()? },
        4 => Request::SetVqReady { index: u.arbitrary()?, ready: u.arbitrary()? },
        _ => Request::Suspend,
    })
}

/// The structured half: a request and a reply built from the input.
fn structured(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let api = u.int_in_range(0u64..=1)?;
    let id: u32 = u.arbitrary()?;
    let req = request(&mut u)?;
    let bytes = req.encode(id, api);
    let parsed = Request::parse(&bytes, api);
    let v1_only = matches!(req, Request::SetVqGroupAsid { .. } | Request::SetVqReady { .. } | Request::Suspend);
    if api < VDUSE_API_VERSION_1 && v1_only {
        assert!(matches!(parsed, Err(RequestError::NeedsApiV1 { id: i, .. }) if i == id), "{req:?}: {parsed:?}");
    } else {
        // API v0 drops the asid of UPDATE_IOTLB on the wire.
        let want = match req {
            Request::UpdateIotlb { start, last, .. } if api < VDUSE_API_VERSION_1 => {
                Request::UpdateIotlb { asid: 0, start, last }
            }
            r => r,
        };
        assert_eq!(parsed, Ok((id, want)));
    }

    let resp = match u.int_in_range(0u8..=3)? {
        0 => Response::ok(id),
        1 => Response::failed(id),
        2 => Response::vq_state(id, VqState::Split { index: u.arbitrary()?, avail_index: u.arbitrary()? }),
        _ => Response::vq_state(id, VqState::Packed { index: u.arbitrary()?, state: u.arbitrary()? }),
    };
    let b = resp.encode();
    let (rid, result, payload) = Response::parse(&b).expect("a full reply parses");
    assert_eq!(rid, id);
    assert_eq!(result, if resp.ok { VDUSE_REQ_RESULT_OK } else { VDUSE_REQ_RESULT_FAILED });
    assert!(b[8..24].iter().all(|&x| x == 0), "reserved reply bytes must be zero");
    match resp.vq_state {
        Some(VqState::Split { index, avail_index }) => {
            assert_eq!(le32(&payload, 0), index);
            assert_eq!(u16::from_le_bytes([payload[4], payload[5]]), avail_index);
        }
        Some(VqState::Packed { index, state }) => {
            assert_eq!(le32(&payload, 0), index);
            for (i, v) in state.iter().enumerate() {
                assert_eq!(u16::from_le_bytes([payload[4 + 2 * i], payload[5 + 2 * i]]), *v);
            }
        }
        None => assert!(payload.iter().all(|&x| x == 0)),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => raw(0, rest),
        1 => raw(1, rest),
        _ => {
            let _ = structured(rest);
        }
    }
});
