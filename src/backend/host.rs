//! Opening a device's ports on a host interface by name: one port per
//! queue pair and the link watch that makes the device's link state follow
//! the interface. The CLI (`run`, `pktgen`) and the tests come here.

use super::af_packet::{self, PacketOptions};
use super::af_xdp::{self, XdpOptions};
use super::iface::PortError;
use super::link::LinkWatch;
use super::{tap, Port};

/// Kinds of host port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// A tap device, one tap queue per pair.
    Tap,
    /// A packet socket per pair on an Ethernet interface.
    AfPacket,
    /// An AF_XDP socket per pair on the NIC queue of the same index.
    AfXdp,
}

impl HostKind {
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Tap => "tap",
            HostKind::AfPacket => "af-packet",
            HostKind::AfXdp => "af-xdp",
        }
    }
}

/// Options of host ports.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostOptions {
    pub packet: PacketOptions,
    pub xdp: XdpOptions,
}

/// A device's ports on one interface.
pub struct HostPorts {
    pub ports: Vec<Box<dyn Port>>,
    pub watch: Box<dyn LinkWatch>,
}

/// Open `pairs` ports of `kind` on interface `iface`.
pub fn open(kind: HostKind, iface: &str, pairs: u16, opts: &HostOptions) -> Result<HostPorts, PortError> {
    match kind {
        HostKind::Tap => tap::open(iface, pairs),
        HostKind::AfPacket => af_packet::open(iface, pairs, opts.packet),
        HostKind::AfXdp => af_xdp::open(iface, pairs, &opts.xdp),
    }
}

/// The interface of device `index` of `count`: `PATTERN` with `%d`
/// replaced by the index, the index-th entry of a comma-separated list, or
/// the one name when there is one device.
pub fn iface_for(spec: &str, index: usize, count: usize) -> Result<String, String> {
    if spec.contains("%d") {
        if spec.matches("%d").count() > 1 {
            return Err(format!("--iface {spec:?}: use %d once"));
        }
        return Ok(spec.replace("%d", &index.to_string()));
    }
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!("--iface {spec:?}: empty name in the list"));
    }
    if names.len() == count {
        return Ok(names[index].to_string());
    }
    if names.len() == 1 {
        return Err(format!(
            "--iface {spec:?} names one interface for {count} devices: give one per device (a list a,b or a pattern like tap%d)"
        ));
    }
    Err(format!("--iface {spec:?} lists {} interfaces for {count} device(s)", names.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_interface_per_device() {
        assert_eq!(iface_for("tap0", 0, 1).unwrap(), "tap0");
        assert_eq!(iface_for("tap%d", 2, 3).unwrap(), "tap2");
        assert_eq!(iface_for("a, b", 1, 2).unwrap(), "b");
        assert!(iface_for("tap0", 0, 2).unwrap_err().contains("one per device"));
        assert!(iface_for("a,b,c", 0, 2).unwrap_err().contains("lists 3"));
        assert!(iface_for("a,,b", 0, 3).unwrap_err().contains("empty"));
        assert!(iface_for("t%d%d", 0, 1).unwrap_err().contains("once"));
    }

    #[test]
    fn missing_interfaces_are_named_in_the_error() {
        let e = open(HostKind::AfPacket, "vnt-nosuch0", 1, &HostOptions::default()).err().expect("no such interface");
        assert!(e.to_string().contains("no interface named \"vnt-nosuch0\""), "{e}");
        let e = open(HostKind::AfPacket, "lo", 1, &HostOptions::default()).err().expect("lo is not Ethernet");
        assert!(e.to_string().contains("not an Ethernet interface"), "{e}");
        let e = open(HostKind::Tap, "bad/name", 1, &HostOptions::default()).err().expect("bad name");
        assert!(matches!(e, PortError::BadName(_)), "{e}");
        let e = open(HostKind::Tap, "lo", 1, &HostOptions::default()).err().expect("lo is not a tap");
        assert!(e.to_string().contains("not a tap"), "{e}");
    }
}
