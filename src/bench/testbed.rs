//! The device and driver a benchmark runs on: a device on the embedded
//! kernel model with the ports the benchmark picks, driven through the
//! model's vhost-vdpa face; or only the driver, on a real
//! `/dev/vhost-vdpa-N` whose device runs elsewhere (`vduse-net run`).

use std::sync::Arc;

use crate::backend::link::LinkWatch;
use crate::backend::Port;
use crate::dataplane::device::DeviceStats;
use crate::dataplane::{DeviceError, DeviceOptions, NetDevice, RunningDevice};
use crate::driver::net::{DriverError, NetDriver, NetDriverConfig, QueuePair};
use crate::driver::transport::TransportError;
use crate::driver::vhost_vdpa::VhostVdpa;
use crate::driver::DriverTransport;
use crate::vduse::model::{KernelModel, ModelConfig};
use crate::vduse::VduseError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error("kernel model: {0}")]
    Vduse(#[from] VduseError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Options(String),
    #[error("a benchmark thread panicked")]
    ThreadPanicked,
    #[error("could not start a thread: {0}")]
    Thread(std::io::Error),
}

/// Device MAC of benchmark devices; frames from the device's far end
/// (source port) are addressed to it.
pub const DEVICE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The generator's peer address (destination of driver TX frames).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub struct Testbed {
    model: Option<(Arc<KernelModel>, String)>,
    running: Option<RunningDevice>,
    driver: Option<NetDriver>,
}

impl Testbed {
    /// A device with `opts` on a fresh kernel model, `port(i)` serving pair
    /// i, probed by the driver with `dcfg`.
    pub fn model(
        cfg: ModelConfig,
        mut opts: DeviceOptions,
        port: &mut dyn FnMut(u16) -> Box<dyn Port>,
        dcfg: NetDriverConfig,
    ) -> Result<Testbed, BenchError> {
        opts.mac = DEVICE_MAC;
        let name = opts.name.clone();
        let model = KernelModel::new(cfg);
        let dev = NetDevice::create(model.control(), opts)?;
        let ports: Vec<Box<dyn Port>> = (0..dev.layout().pairs).map(&mut *port).collect();
        let running = dev.start(ports)?;
        let transport: Arc<dyn DriverTransport> = model.attach_vhost_vdpa(&name)?;
        let mut tb = Testbed { model: Some((model, name)), running: Some(running), driver: None };
        tb.driver = Some(NetDriver::probe(transport, dcfg)?);
        Ok(tb)
    }

    /// A device with `opts` (its MAC kept) on a fresh kernel model, with
    /// `ports` and its link following `link`, probed by the driver.
    pub fn model_with_ports(
        cfg: ModelConfig,
        opts: DeviceOptions,
        ports: Vec<Box<dyn Port>>,
        link: Option<Box<dyn LinkWatch>>,
        dcfg: NetDriverConfig,
    ) -> Result<Testbed, BenchError> {
        let name = opts.name.clone();
        let model = KernelModel::new(cfg);
        let dev = NetDevice::create(model.control(), opts)?;
        let running = dev.start_with_link(ports, link)?;
        let transport: Arc<dyn DriverTransport> = model.attach_vhost_vdpa(&name)?;
        let mut tb = Testbed { model: Some((model, name)), running: Some(running), driver: None };
        tb.driver = Some(NetDriver::probe(transport, dcfg)?);
        Ok(tb)
    }

    /// Only the driver, on a vhost-vdpa character device.
    pub fn vhost_vdpa(path: &str, dcfg: NetDriverConfig) -> Result<Testbed, BenchError> {
        let transport: Arc<dyn DriverTransport> = Arc::new(VhostVdpa::open(path)?);
        let driver = NetDriver::probe(transport, dcfg)?;
        Ok(Testbed { model: None, running: None, driver: Some(driver) })
    }

    /// The driver (until `finish`).
    pub fn driver(&self) -> Option<&NetDriver> {
        self.driver.as_ref()
    }

    /// The queue pairs, each for one thread (once).
    pub fn take_pairs(&mut self) -> Vec<QueuePair> {
        self.driver.as_mut().map(|d| d.take_pairs()).unwrap_or_default()
    }

    /// Counters of the device when it runs in this process.
    pub fn device_stats(&self) -> Option<DeviceStats> {
        self.running.as_ref().map(|r| r.stats())
    }

    /// The device's stats cells (for the stats socket), when it runs here.
    pub fn stats_source(&self) -> Option<Arc<crate::ops::DeviceSource>> {
        self.running.as_ref().map(|r| r.stats_source())
    }

    /// Reset the driver, detach it and stop the device. The queue pairs
    /// must have been dropped (their threads joined).
    pub fn finish(mut self) -> Result<Option<DeviceStats>, BenchError> {
        self.driver = None;
        if let Some((model, name)) = self.model.take() {
            model.detach(&name)?;
        }
        match self.running.take() {
            Some(r) => Ok(Some(r.stop()?)),
            None => Ok(None),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Driver first: its reset must reach a device that still answers.
        self.driver = None;
        if let Some((model, name)) = self.model.take() {
            let _ = model.detach(&name);
        }
    }
}
