//! Checks a frame's virtio-net header against the frame and against what
//! its sender may use, and describes the result as an [`Offload`].
//!
//! The rules follow virtio 1.3 §5.1.6.2 (driver and device requirements for
//! transmission) and what the kernel's `virtio_net_hdr_to_skb` refuses. The
//! header and the frame are untrusted: every failure is an [`OffloadError`]
//! (counted as a drop by the caller via [`OffloadError::code`]), never a
//! panic.

use super::caps::Sender;
use crate::net::hdr::{self, NetHdr};
use crate::net::wire::{self, l4, Fragment, IpVersion, L4Proto, WireError};

/// Segments a UDP GSO frame may make, as the kernel (`UDP_MAX_SEGMENTS`).
pub const USO_MAX_SEGMENTS: usize = 64;

/// The state of a frame's L4 checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumState {
    /// Nothing known: complete or not, the receiver verifies it.
    Unknown,
    /// NEEDS_CSUM: the field at `start + offset` holds the pseudo-header
    /// sum; the checksum over `start..` remains to be done. Both offsets
    /// are inside the frame.
    Partial { start: usize, offset: usize },
    /// Verified by a trusted sender (DATA_VALID).
    Valid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl GsoKind {
    pub fn is_tcp(self) -> bool {
        matches!(self, GsoKind::Tcp4 | GsoKind::Tcp6)
    }
    pub fn is_v6(self) -> bool {
        matches!(self, GsoKind::Tcp6 | GsoKind::Udp6)
    }
    /// `gso_type` without the ECN bit.
    pub fn gso_type(self) -> u8 {
        match self {
            GsoKind::Tcp4 => hdr::GSO_TCPV4,
            GsoKind::Tcp6 => hdr::GSO_TCPV6,
            GsoKind::Udp4 | GsoKind::Udp6 => hdr::GSO_UDP_L4,
        }
    }
    /// The receiver capability needed to take it unsegmented.
    pub fn accepted_by(self, c: &super::OffloadCaps) -> bool {
        match self {
            GsoKind::Tcp4 => c.tso4,
            GsoKind::Tcp6 => c.tso6,
            GsoKind::Udp4 => c.uso4,
            GsoKind::Udp6 => c.uso6,
        }
    }
}

/// A validated GSO frame: everything segmentation needs, with
/// `l3_off < l4_off < hdr_len <= end` and `end` the end of the IP packet
/// (bytes after it, Ethernet padding, are not part of any segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    pub kind: GsoKind,
    /// TCP with ECN: GSO_ECN set or CWR in the header. Such a frame goes
    /// unsegmented only to receivers that accept ECN.
    pub ecn: bool,
    /// `gso_size`: payload bytes per segment, at least 1.
    pub mss: u16,
    pub l3_off: usize,
    pub l4_off: usize,
    /// Every header byte: Ethernet, IP (options / extension headers), L4.
    pub hdr_len: usize,
    pub end: usize,
}

impl Gso {
    pub fn payload_len(&self) -> usize {
        self.end - self.hdr_len
    }
    /// Segments it makes (a frame with no payload still makes one).
    pub fn segments(&self) -> usize {
        self.payload_len().div_ceil(self.mss as usize).max(1)
    }
    pub fn csum_offset(&self) -> usize {
        if self.kind.is_tcp() {
            l4::TCP_CSUM
        } else {
            l4::UDP_CSUM
        }
    }
}

/// What a frame is, once its header has been checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offload {
    pub csum: CsumState,
    /// `Some` for a GSO frame (whose `csum` is then `Partial`).
    pub gso: Option<Gso>,
}

impl Offload {
    /// A complete frame with nothing known about its checksum.
    pub const PLAIN: Offload = Offload { csum: CsumState::Unknown, gso: None };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("NEEDS_CSUM from a sender without checksum offload")]
    CsumNotNegotiated,
    #[error("gso_type {0:#x} from a sender without that segmentation offload")]
    GsoNotNegotiated(u8),
    #[error("GSO_ECN from a sender without ECN")]
    EcnNotNegotiated,
    #[error("unknown gso_type {0:#x}")]
    UnknownGsoType(u8),
    #[error("GSO_UDP (UFO, IP fragmentation) is not supported")]
    UfoUnsupported,
    #[error("GSO_ECN on a UDP GSO frame")]
    EcnOnUdp,
    #[error("GSO frame without NEEDS_CSUM")]
    GsoWithoutCsum,
    #[error("GSO frame with gso_size 0")]
    GsoSizeZero,
    #[error("checksum field at {start}+{offset} is outside the {len}-byte frame")]
    CsumOutOfFrame { start: usize, offset: usize, len: usize },
    #[error("GSO frame headers: {0}")]
    Headers(#[from] WireError),
    #[error("gso_type {gso_type:#x} does not match the frame ({ip:?}, protocol {proto})")]
    GsoProtoMismatch { gso_type: u8, ip: IpVersion, proto: u8 },
    #[error("GSO frame is an IP fragment")]
    GsoFragment,
    #[error("csum_start {start} / csum_offset {offset} do not name the L4 checksum at {l4_off}+{want}")]
    CsumNotAtL4 { start: usize, offset: usize, l4_off: usize, want: usize },
    #[error("hdr_len {hdr_len} is beyond the {len}-byte packet")]
    HdrLenBeyondFrame { hdr_len: usize, len: usize },
    #[error("hdr_len {hdr_len} is not the header length {actual} (GUEST_HDRLEN negotiated)")]
    HdrLenMismatch { hdr_len: usize, actual: usize },
    #[error("UDP GSO frame of {segs} segments, more than {USO_MAX_SEGMENTS}")]
    TooManySegments { segs: usize },
}

/// One counter per kind of [`OffloadError`], for drop statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    CsumNotNegotiated,
    GsoNotNegotiated,
    EcnNotNegotiated,
    UnknownGsoType,
    UfoUnsupported,
    EcnOnUdp,
    GsoWithoutCsum,
    GsoSizeZero,
    CsumOutOfFrame,
    Headers,
    GsoProtoMismatch,
    GsoFragment,
    CsumNotAtL4,
    HdrLenBeyondFrame,
    HdrLenMismatch,
    TooManySegments,
}

impl ErrorCode {
    pub const COUNT: usize = 16;
    pub const ALL: [ErrorCode; Self::COUNT] = [
        ErrorCode::CsumNotNegotiated,
        ErrorCode::GsoNotNegotiated,
        ErrorCode::EcnNotNegotiated,
        ErrorCode::UnknownGsoType,
        ErrorCode::UfoUnsupported,
        ErrorCode::EcnOnUdp,
        ErrorCode::GsoWithoutCsum,
        ErrorCode::GsoSizeZero,
        ErrorCode::CsumOutOfFrame,
        ErrorCode::Headers,
        ErrorCode::GsoProtoMismatch,
        ErrorCode::GsoFragment,
        ErrorCode::CsumNotAtL4,
        ErrorCode::HdrLenBeyondFrame,
        ErrorCode::HdrLenMismatch,
        ErrorCode::TooManySegments,
    ];

    /// Stable snake_case name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::CsumNotNegotiated => "csum_not_negotiated",
            ErrorCode::GsoNotNegotiated => "gso_not_negotiated",
            ErrorCode::EcnNotNegotiated => "ecn_not_negotiated",
            ErrorCode::UnknownGsoType => "unknown_gso_type",
            ErrorCode::UfoUnsupported => "ufo_unsupported",
            ErrorCode::EcnOnUdp => "ecn_on_udp",
            ErrorCode::GsoWithoutCsum => "gso_without_csum",
            ErrorCode::GsoSizeZero => "gso_size_zero",
            ErrorCode::CsumOutOfFrame => "csum_out_of_frame",
            ErrorCode::Headers => "bad_headers",
            ErrorCode::GsoProtoMismatch => "gso_proto_mismatch",
            ErrorCode::GsoFragment => "gso_fragment",
            ErrorCode::CsumNotAtL4 => "csum_not_at_l4",
            ErrorCode::HdrLenBeyondFrame => "hdr_len_beyond_frame",
            ErrorCode::HdrLenMismatch => "hdr_len_mismatch",
            ErrorCode::TooManySegments => "too_many_segments",
        }
    }
}

impl OffloadError {
    /// Index for a per-reason drop counter array (`ErrorCode::COUNT` long).
    pub fn code(&self) -> ErrorCode {
        match self {
            OffloadError::CsumNotNegotiated => ErrorCode::CsumNotNegotiated,
            OffloadError::GsoNotNegotiated(_) => ErrorCode::GsoNotNegotiated,
            OffloadError::EcnNotNegotiated => ErrorCode::EcnNotNegotiated,
            OffloadError::UnknownGsoType(_) => ErrorCode::UnknownGsoType,
            OffloadError::UfoUnsupported => ErrorCode::UfoUnsupported,
            OffloadError::EcnOnUdp => ErrorCode::EcnOnUdp,
            OffloadError::GsoWithoutCsum => ErrorCode::GsoWithoutCsum,
            OffloadError::GsoSizeZero => ErrorCode::GsoSizeZero,
            OffloadError::CsumOutOfFrame { .. } => ErrorCode::CsumOutOfFrame,
            OffloadError::Headers(_) => ErrorCode::Headers,
            OffloadError::GsoProtoMismatch { .. } => ErrorCode::GsoProtoMismatch,
            OffloadError::GsoFragment => ErrorCode::GsoFragment,
            OffloadError::CsumNotAtL4 { .. } => ErrorCode::CsumNotAtL4,
            OffloadError::HdrLenBeyondFrame { .. } => ErrorCode::HdrLenBeyondFrame,
            OffloadError::HdrLenMismatch { .. } => ErrorCode::HdrLenMismatch,
            OffloadError::TooManySegments { .. } => ErrorCode::TooManySegments,
        }
    }
}

/// Checks `hdr` (the virtio-net header that came with `frame`) against the
/// frame and against `from`'s permissions. A plain header (no flags, no
/// GSO) returns at once without looking at the frame; NEEDS_CSUM alone only
/// checks that the checksum field is inside the frame; GSO parses the
/// headers. Unknown flag bits are ignored (§5.1.6.2.2).
#[inline]
pub fn validate(frame: &[u8], hdr: &NetHdr, from: &Sender) -> Result<Offload, OffloadError> {
    let needs_csum = hdr.flags & hdr::F_NEEDS_CSUM != 0;
    if !needs_csum && hdr.gso_type == hdr::GSO_NONE {
        let valid = from.trust_data_valid && hdr.flags & hdr::F_DATA_VALID != 0;
        return Ok(Offload { csum: if valid { CsumState::Valid } else { CsumState::Unknown }, gso: None });
    }
    if needs_csum && !from.caps.csum {
        return Err(OffloadError::CsumNotNegotiated);
    }
    if hdr.gso_type == hdr::GSO_NONE {
        let (start, offset, len) = (hdr.csum_start as usize, hdr.csum_offset as usize, frame.len());
        if start + offset + 2 > len {
            return Err(OffloadError::CsumOutOfFrame { start, offset, len });
        }
        return Ok(Offload { csum: CsumState::Partial { start, offset }, gso: None });
    }
    validate_gso(frame, hdr, from, needs_csum)
        .map(|g| Offload { csum: CsumState::Partial { start: g.l4_off, offset: g.csum_offset() }, gso: Some(g) })
}

fn validate_gso(frame: &[u8], hdr: &NetHdr, from: &Sender, needs_csum: bool) -> Result<Gso, OffloadError> {
    let caps = &from.caps;
    let ecn_bit = hdr.gso_type & hdr::GSO_ECN != 0;
    let (tcp, allowed) = match hdr.gso_type & !hdr::GSO_ECN {
        hdr::GSO_TCPV4 => (true, caps.tso4),
        hdr::GSO_TCPV6 => (true, caps.tso6),
        hdr::GSO_UDP_L4 => (false, caps.uso4 || caps.uso6),
        hdr::GSO_UDP => return Err(OffloadError::UfoUnsupported),
        _ => return Err(OffloadError::UnknownGsoType(hdr.gso_type)),
    };
    if !allowed {
        return Err(OffloadError::GsoNotNegotiated(hdr.gso_type));
    }
    if ecn_bit && !tcp {
        return Err(OffloadError::EcnOnUdp);
    }
    if ecn_bit && !caps.tso_ecn {
        return Err(OffloadError::EcnNotNegotiated);
    }
    if !needs_csum {
        return Err(OffloadError::GsoWithoutCsum);
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::GsoSizeZero);
    }

    let h = wire::parse(frame)?;
    let (ip, proto) = (h.ip.version, h.ip.proto);
    let mismatch = OffloadError::GsoProtoMismatch { gso_type: hdr.gso_type, ip, proto };
    let kind = match (hdr.gso_type & !hdr::GSO_ECN, ip, h.l4.map(|l| l.proto)) {
        (hdr::GSO_TCPV4, IpVersion::V4, Some(L4Proto::Tcp)) => GsoKind::Tcp4,
        (hdr::GSO_TCPV6, IpVersion::V6, Some(L4Proto::Tcp)) => GsoKind::Tcp6,
        (hdr::GSO_UDP_L4, IpVersion::V4, Some(L4Proto::Udp)) if caps.uso4 => GsoKind::Udp4,
        (hdr::GSO_UDP_L4, IpVersion::V6, Some(L4Proto::Udp)) if caps.uso6 => GsoKind::Udp6,
        (hdr::GSO_UDP_L4, _, Some(L4Proto::Udp)) => return Err(OffloadError::GsoNotNegotiated(hdr.gso_type)),
        _ if h.ip.fragment != Fragment::None => return Err(OffloadError::GsoFragment),
        _ => return Err(mismatch),
    };
    if h.ip.fragment != Fragment::None {
        return Err(OffloadError::GsoFragment);
    }
    // `kind` matched Some(l4) above.
    let l4 = h.l4.ok_or(mismatch)?;
    let (start, offset) = (hdr.csum_start as usize, hdr.csum_offset as usize);
    if start != l4.off || offset != l4.proto.csum_off() {
        return Err(OffloadError::CsumNotAtL4 { start, offset, l4_off: l4.off, want: l4.proto.csum_off() });
    }
    let hdr_len = l4.off + l4.hdr_len;
    let end = h.ip.end;
    if hdr.hdr_len as usize > end {
        return Err(OffloadError::HdrLenBeyondFrame { hdr_len: hdr.hdr_len as usize, len: end });
    }
    if from.exact_hdr_len && hdr.hdr_len as usize != hdr_len {
        return Err(OffloadError::HdrLenMismatch { hdr_len: hdr.hdr_len as usize, actual: hdr_len });
    }
    // The TCP header is inside the frame (wire::parse checked it).
    let cwr = tcp && frame[l4.off + l4::TCP_FLAGS] & l4::TCP_CWR != 0;
    let g = Gso { kind, ecn: ecn_bit || cwr, mss: hdr.gso_size, l3_off: h.ip.off, l4_off: l4.off, hdr_len, end };
    if !tcp && g.segments() > USO_MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments { segs: g.segments() });
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::super::caps::OffloadCaps;
    use super::*;
    use crate::net::features as f;
    use crate::net::wire::build::{CsumFill, FrameSpec};

    const ALL_TX: u64 = f::CSUM | f::HOST_TSO4 | f::HOST_TSO6 | f::HOST_ECN | f::HOST_USO;

    fn partial(spec: FrameSpec) -> FrameSpec {
        FrameSpec { csum: CsumFill::Partial, ..spec }
    }

    #[test]
    fn plain_and_data_valid() {
        let f = FrameSpec::default().build();
        let d = Sender::driver(ALL_TX);
        assert_eq!(validate(&f, &NetHdr::default(), &d), Ok(Offload::PLAIN));
        // A plain header is not parsed: garbage bytes are fine.
        assert_eq!(validate(&[1, 2, 3], &NetHdr::default(), &d), Ok(Offload::PLAIN));
        let dv = NetHdr { flags: hdr::F_DATA_VALID, ..NetHdr::default() };
        // Ignored from a driver, trusted from a port.
        assert_eq!(validate(&f, &dv, &d), Ok(Offload::PLAIN));
        let p = Sender::port(OffloadCaps::NONE);
        assert_eq!(validate(&f, &dv, &p).unwrap().csum, CsumState::Valid);
        // Unknown flag bits are ignored.
        let odd = NetHdr { flags: 0x70, ..NetHdr::default() };
        assert_eq!(validate(&f, &odd, &d), Ok(Offload::PLAIN));
    }

    #[test]
    fn needs_csum_bounds() {
        let spec = partial(FrameSpec::default());
        let f = spec.build();
        let h = spec.offload_hdr(None);
        let o = validate(&f, &h, &Sender::driver(f::CSUM)).unwrap();
        assert_eq!(o.csum, CsumState::Partial { start: spec.l4_off(), offset: 16 });
        assert_eq!(validate(&f, &h, &Sender::driver(0)), Err(OffloadError::CsumNotNegotiated));
        let len = f.len();
        for (start, offset) in [(len - 1, 0), (len - 2, 1), (0, len - 1), (0xffff, 0xffff)] {
            let h = NetHdr { csum_start: start as u16, csum_offset: offset as u16, ..h };
            assert_eq!(
                validate(&f, &h, &Sender::driver(f::CSUM)),
                Err(OffloadError::CsumOutOfFrame { start, offset, len })
            );
        }
        let h = NetHdr { csum_start: (len - 2) as u16, csum_offset: 0, ..h };
        assert!(validate(&f, &h, &Sender::driver(f::CSUM)).is_ok());
    }

    #[test]
    fn gso_frames_of_each_kind() {
        for (tcp, v6, kind) in [
            (true, false, GsoKind::Tcp4),
            (true, true, GsoKind::Tcp6),
            (false, false, GsoKind::Udp4),
            (false, true, GsoKind::Udp6),
        ] {
            for vlans in 0..=2 {
                let spec = partial(FrameSpec { tcp, v6, vlans, payload: 4000, ..FrameSpec::default() });
                let f = spec.build();
                let o = validate(&f, &spec.offload_hdr(Some(1000)), &Sender::driver(ALL_TX)).unwrap();
                let g = o.gso.unwrap();
                assert_eq!(g.kind, kind);
                assert_eq!(
                    (g.l3_off, g.l4_off, g.hdr_len, g.end),
                    (spec.l3_off(), spec.l4_off(), spec.hdr_len(), f.len())
                );
                assert_eq!(g.segments(), 4);
                assert!(!g.ecn);
                assert_eq!(o.csum, CsumState::Partial { start: spec.l4_off(), offset: g.csum_offset() });
            }
        }
    }

    fn err(spec: FrameSpec, h: NetHdr, from: &Sender) -> OffloadError {
        validate(&spec.build(), &h, from).unwrap_err()
    }

    #[test]
    fn gso_refusals() {
        let d = Sender::driver(ALL_TX);
        let t4 = partial(FrameSpec { payload: 3000, ..FrameSpec::default() });
        let h = t4.offload_hdr(Some(1448));
        assert_eq!(err(t4, h, &Sender::driver(f::CSUM)), OffloadError::GsoNotNegotiated(hdr::GSO_TCPV4));
        let ecn = NetHdr { gso_type: hdr::GSO_TCPV4 | hdr::GSO_ECN, ..h };
        assert_eq!(err(t4, ecn, &Sender::driver(f::CSUM | f::HOST_TSO4)), OffloadError::EcnNotNegotiated);
        assert!(validate(&t4.build(), &ecn, &d).unwrap().gso.unwrap().ecn);
        assert_eq!(err(t4, NetHdr { gso_type: 2, ..h }, &d), OffloadError::UnknownGsoType(2));
        assert_eq!(err(t4, NetHdr { gso_type: hdr::GSO_ECN, ..h }, &d), OffloadError::UnknownGsoType(0x80));
        assert_eq!(err(t4, NetHdr { gso_type: hdr::GSO_UDP, ..h }, &d), OffloadError::UfoUnsupported);
        assert_eq!(err(t4, NetHdr { flags: 0, ..h }, &d), OffloadError::GsoWithoutCsum);
        assert_eq!(err(t4, NetHdr { gso_size: 0, ..h }, &d), OffloadError::GsoSizeZero);
        // TCPv4 type on a v6 frame, TCPv6 on v4, UDP_L4 on TCP, TCP on UDP.
        let t6 = partial(FrameSpec { v6: true, ..t4 });
        let u4 = partial(FrameSpec { tcp: false, ..t4 });
        assert!(matches!(err(t6, h, &d), OffloadError::GsoProtoMismatch { .. }));
        assert!(matches!(err(t4, t6.offload_hdr(Some(1000)), &d), OffloadError::GsoProtoMismatch { .. }));
        assert!(matches!(
            err(t4, NetHdr { gso_type: hdr::GSO_UDP_L4, ..h }, &d),
            OffloadError::GsoProtoMismatch { .. }
        ));
        assert!(matches!(err(u4, h, &d), OffloadError::GsoProtoMismatch { .. }));
        let ue = NetHdr { gso_type: hdr::GSO_UDP_L4 | hdr::GSO_ECN, ..u4.offload_hdr(Some(1000)) };
        assert_eq!(err(u4, ue, &d), OffloadError::EcnOnUdp);
        // csum fields not naming the L4 checksum.
        assert!(matches!(err(t4, NetHdr { csum_offset: 6, ..h }, &d), OffloadError::CsumNotAtL4 { .. }));
        assert!(matches!(err(t4, NetHdr { csum_start: 14, ..h }, &d), OffloadError::CsumNotAtL4 { .. }));
        // hdr_len beyond the packet; too small only matters with GUEST_HDRLEN.
        let big = NetHdr { hdr_len: (t4.len() + 1) as u16, ..h };
        assert!(matches!(err(t4, big, &d), OffloadError::HdrLenBeyondFrame { .. }));
        let small = NetHdr { hdr_len: 10, ..h };
        assert!(validate(&t4.build(), &small, &d).is_ok());
        let exact = Sender::driver(ALL_TX | f::GUEST_HDRLEN);
        assert_eq!(err(t4, small, &exact), OffloadError::HdrLenMismatch { hdr_len: 10, actual: t4.hdr_len() });
        assert!(validate(&t4.build(), &h, &exact).is_ok());
        // Broken headers.
        let mut f = t4.build();
        f[t4.l3_off()] = 0x44; // IHL 4
        assert!(matches!(validate(&f, &h, &d), Err(OffloadError::Headers(_))));
        assert!(matches!(validate(&f[..40], &h, &d), Err(OffloadError::Headers(_))));
        // An IPv4 fragment.
        let mut f = t4.build();
        f[t4.l3_off() + 6] = 0x20;
        assert_eq!(validate(&f, &h, &d), Err(OffloadError::GsoFragment));
        // UDP GSO limits: per IP version, and 64 segments.
        let uh = u4.offload_hdr(Some(10));
        let only6 = Sender { caps: OffloadCaps { uso4: false, ..OffloadCaps::ALL }, ..d };
        assert_eq!(err(u4, uh, &only6), OffloadError::GsoNotNegotiated(hdr::GSO_UDP_L4));
        assert_eq!(err(u4, uh, &d), OffloadError::TooManySegments { segs: 300 });
        assert!(validate(&u4.build(), &NetHdr { gso_size: 47, ..uh }, &d).is_ok());
    }

    #[test]
    fn cwr_means_ecn() {
        let spec = partial(FrameSpec { tcp_flags: l4::TCP_ACK | l4::TCP_CWR, payload: 3000, ..FrameSpec::default() });
        let o = validate(&spec.build(), &spec.offload_hdr(Some(1000)), &Sender::driver(ALL_TX)).unwrap();
        assert!(o.gso.unwrap().ecn);
    }

    #[test]
    fn error_codes_are_distinct() {
        let names: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), ErrorCode::COUNT);
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
