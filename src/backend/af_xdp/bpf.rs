//! The XDP side through the raw `bpf(2)` syscall: an XSKMAP, a six-
//! instruction program that redirects every frame to the socket of its
//! receive queue, and a bpf link that attaches it to the interface.
//!
//! No ELF object, no libbpf: the program is assembled here. A bpf link
//! (not a netlink attachment) is used because the kernel detaches it when
//! its last fd closes, so a crashed or killed process cannot leave the
//! program behind.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Name of the program (and prefix of the map), as `bpftool`/`ip link`
/// show it. How a leftover of ours is recognised.
pub const PROG_NAME: &str = "vduse_net_xsk";
const MAP_NAME: &str = "vduse_net_xsks";

// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;

/// XDP attach flags (include/uapi/linux/if_link.h).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// Opcode parts.
const BPF_LDX: u8 = 0x01;
const BPF_LD: u8 = 0x00;
const BPF_ALU64: u8 = 0x07;
const BPF_JMP: u8 = 0x05;
const BPF_MEM: u8 = 0x60;
const BPF_IMM: u8 = 0x00;
const BPF_W: u8 = 0x00;
const BPF_DW: u8 = 0x18;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`
///
/// A queue without a socket in the map falls back to XDP_PASS (the
/// kernel's stack gets the frame), so queues beyond the device's pairs
/// keep working as before.
pub fn redirect_program(map_fd: RawFd) -> [Insn; 6] {
    [
        // r2 = ((struct xdp_md *)r1)->rx_queue_index
        insn(BPF_LDX | BPF_MEM | BPF_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = map (a 16-byte load: the fd in the first half)
        insn(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_PASS (the action when the key has no socket)
        insn(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    ]
}

/// `return XDP_PASS;` (tests use it as someone else's program).
#[cfg(test)]
pub fn pass_program() -> [Insn; 2] {
    [insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, XDP_PASS), insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)]
}

fn obj_name(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    let b = s.as_bytes();
    n[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
    n
}

/// One `bpf(2)` call. Returns the (non-negative) result.
///
/// # Safety
/// `attr` must be the attribute struct `cmd` expects (a prefix of `union
/// bpf_attr`), and every pointer in it valid for what the kernel does with
/// it during the call.
unsafe fn sys_bpf<A>(cmd: u32, attr: &mut A) -> io::Result<i32> {
    // SAFETY: per the caller's contract; the size is that of the prefix we
    // pass, and the kernel zero-extends the rest.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Take ownership of an fd the kernel just returned.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful bpf() call and belongs to
    // no one else yet (bpf fds are created O_CLOEXEC).
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// An XSKMAP with `entries` keys (queue index -> socket).
pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
    let mut a = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_name: obj_name(MAP_NAME),
        ..Default::default()
    };
    // SAFETY: a BPF_MAP_CREATE prefix with no pointers.
    unsafe { sys_bpf(BPF_MAP_CREATE, &mut a) }.map(owned)
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `map[key] = socket fd`.
pub fn map_set_socket(map: &OwnedFd, key: u32, sock: RawFd) -> io::Result<()> {
    let k = key;
    let v = sock as u32;
    let mut a = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &k as *const u32 as u64,
        value: &v as *const u32 as u64,
        flags: 0,
    };
    // SAFETY: key and value point to live u32s (the map's sizes) for the call.
    unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a) }.map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Why the kernel refused the program.
#[derive(Debug)]
pub struct LoadError {
    pub error: io::Error,
    /// The verifier's log (empty if it gave none).
    pub log: String,
}

/// Load `insns` as an XDP program called `name`. On failure, loads again
/// with the verifier log on, so the error says what the verifier disliked.
pub fn load_xdp(insns: &[Insn], name: &str) -> Result<OwnedFd, LoadError> {
    // Same license as the crate; the program calls no GPL-only helper.
    let license = c"Apache-2.0";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut a = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: obj_name(name),
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        if let Some(buf) = log {
            a.log_level = 1;
            a.log_size = buf.len() as u32;
            a.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: insns, license and the log buffer outlive the call; their
        // lengths are the ones given.
        unsafe { sys_bpf(BPF_PROG_LOAD, &mut a) }.map(owned)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Err(LoadError { error, log: String::new() }),
        Err(error) => {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = attempt(Some(&mut buf));
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            Err(LoadError { error, log: String::from_utf8_lossy(&buf[..end]).trim().to_string() })
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attach `prog` to `ifindex` in the mode `flags` selects. The returned
/// link fd keeps it attached; closing it detaches.
pub fn link_xdp(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a =
        LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: BPF_XDP, flags };
    // SAFETY: a BPF_LINK_CREATE prefix with no pointers.
    unsafe { sys_bpf(BPF_LINK_CREATE, &mut a) }.map(owned)
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The first fields of `struct bpf_prog_info`, up to the name.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// The name of a loaded program, by id (needs CAP_SYS_ADMIN).
pub fn prog_name(id: u32) -> io::Result<String> {
    let mut a = GetFdByIdAttr { id, ..Default::default() };
    // SAFETY: a BPF_PROG_GET_FD_BY_ID prefix with no pointers.
    let fd = owned(unsafe { sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a) }?);
    let mut info = ProgInfo::default();
    let mut ia = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    // SAFETY: info points to a live ProgInfo of info_len bytes; the kernel
    // writes at most that many.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut ia) }?;
    let end = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
    Ok(String::from_utf8_lossy(&info.name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_abi() {
        // Offsets from include/uapi/linux/bpf.h (checked against 6.1 headers).
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(std::mem::offset_of!(MapElemAttr, key), 8);
        assert_eq!(std::mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, flags), 12);
        assert_eq!(std::mem::offset_of!(ProgInfo, name), 64);
    }

    #[test]
    fn program_encodes_as_the_assembler_would() {
        let p = redirect_program(7);
        let raw: Vec<u64> = p
            .iter()
            .map(|i| {
                u64::from_le_bytes([
                    i.code,
                    i.regs,
                    i.off.to_le_bytes()[0],
                    i.off.to_le_bytes()[1],
                    i.imm.to_le_bytes()[0],
                    i.imm.to_le_bytes()[1],
                    i.imm.to_le_bytes()[2],
                    i.imm.to_le_bytes()[3],
                ])
            })
            .collect();
        // llvm-objdump of the same C: 61 12 10 00 00 00 00 00 (r2 = *(u32 *)(r1 + 16)),
        // 18 11 00 00 07 00 00 00 / 00 .. (r1 = map fd 7), b7 03 00 00 02 00 00 00
        // (r3 = 2), 85 00 00 00 33 00 00 00 (call 51), 95 00 .. (exit).
        assert_eq!(
            raw,
            vec![
                0x0000_0000_0010_1261,
                0x0000_0007_0000_1118,
                0,
                0x0000_0002_0000_03b7,
                0x0000_0033_0000_0085,
                0x0000_0000_0000_0095,
            ]
        );
        assert_eq!(obj_name(PROG_NAME).iter().position(|&b| b == 0), Some(PROG_NAME.len()));
    }
}
