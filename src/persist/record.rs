//! The control record: what the slow path knows about a device and its
//! driver, as bytes. Pure encoding, no I/O.
//!
//! Little endian, fields in a fixed order; the file header's format version
//! covers the layout, so a record is never read by a binary that does not
//! know its version. The control-queue state is kept as the commands that
//! rebuild it from reset, in the virtio wire encoding
//! ([`crate::net::ctrl::CtrlCommand::encode_message`]): the same form a VMM
//! replays after a migration, and one that stays valid when the in-memory
//! state grows new fields.

/// One virtqueue as the slow path last configured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRecord {
    /// Handed to the dataplane (ready at DRIVER_OK, or enabled later).
    pub started: bool,
    pub size: u16,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// Everything but the queue positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlRecord {
    // What CREATE_DEV was given (the kernel cannot report most of it).
    pub name: String,
    pub api: u64,
    pub pairs: u16,
    pub has_cvq: bool,
    pub ngroups: u32,
    pub nas: u32,
    /// Features offered to the driver.
    pub offered: u64,
    pub vduse_features: u64,
    pub max_queue_size: u16,
    /// The MAC and MTU the device was created with.
    pub mac: [u8; 6],
    pub mtu: u16,
    // What the driver did.
    pub status: u8,
    /// Features the driver accepted (0 before FEATURES_OK).
    pub negotiated: u64,
    pub suspended: bool,
    /// vq group -> address space.
    pub group_asid: Vec<u32>,
    /// Config space fields the device changed: MAC (MAC_ADDR_SET) and
    /// status (link, announce).
    pub config_mac: [u8; 6],
    pub config_status: u16,
    /// Per vq.
    pub queues: Vec<QueueRecord>,
    /// Control-queue commands that rebuild the RX mode, MAC and VLAN
    /// filters, queue pairs, guest offloads and RSS state from reset.
    pub ctrl: Vec<Vec<u8>>,
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Most vqs a record holds (256 pairs and a control queue).
const MAX_VQS: usize = 513;
/// Most vq groups.
const MAX_GROUPS: usize = 0x10000;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(DecodeError::Truncated(self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::OutOfRange("flag")),
        }
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count, checked against `max` and against the bytes left (each
    /// item takes at least `min_item` bytes) before anything is allocated.
    fn count(&mut self, max: usize, min_item: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_item) > self.b.len() - self.at {
            return Err(DecodeError::OutOfRange(what));
        }
        Ok(n)
    }
}

impl ControlRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256 + 33 * self.queues.len()));
        w.bytes(self.name.as_bytes());
        w.u64(self.api);
        w.u16(self.pairs);
        w.u8(self.has_cvq as u8);
        w.u32(self.ngroups);
        w.u32(self.nas);
        w.u64(self.offered);
        w.u64(self.vduse_features);
        w.u16(self.max_queue_size);
        self.mac.iter().for_each(|&b| w.u8(b));
        w.u16(self.mtu);
        w.u8(self.status);
        w.u64(self.negotiated);
        w.u8(self.suspended as u8);
        w.u32(self.group_asid.len() as u32);
        self.group_asid.iter().for_each(|&a| w.u32(a));
        self.config_mac.iter().for_each(|&b| w.u8(b));
        w.u16(self.config_status);
        w.u32(self.queues.len() as u32);
        for q in &self.queues {
            w.u8(q.started as u8);
            w.u16(q.size);
            w.u64(q.desc);
            w.u64(q.driver);
            w.u64(q.device);
        }
        w.u32(self.ctrl.len() as u32);
        self.ctrl.iter().for_each(|c| w.bytes(c));
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<ControlRecord, DecodeError> {
        let mut r = Reader { b, at: 0 };
        let name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| DecodeError::OutOfRange("name"))?;
        let mut rec = ControlRecord {
            name,
            api: r.u64()?,
            pairs: r.u16()?,
            has_cvq: r.bool()?,
            ngroups: r.u32()?,
            nas: r.u32()?,
            offered: r.u64()?,
            vduse_features: r.u64()?,
            max_queue_size: r.u16()?,
            mac: r.arr()?,
            mtu: r.u16()?,
            status: r.u8()?,
            negotiated: r.u64()?,
            suspended: r.bool()?,
            ..ControlRecord::default()
        };
        let n = r.count(MAX_GROUPS, 4, "group count")?;
        rec.group_asid = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
        rec.config_mac = r.arr()?;
        rec.config_status = r.u16()?;
        let n = r.count(MAX_VQS, 27, "vq count")?;
        for _ in 0..n {
            rec.queues.push(QueueRecord {
                started: r.bool()?,
                size: r.u16()?,
                desc: r.u64()?,
                driver: r.u64()?,
                device: r.u64()?,
            });
        }
        let n = r.count(usize::MAX, 4, "command count")?;
        for _ in 0..n {
            rec.ctrl.push(r.bytes()?.to_vec());
        }
        if r.at != b.len() {
            return Err(DecodeError::Trailing(b.len() - r.at));
        }
        Ok(rec)
    }
}
