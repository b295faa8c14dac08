//! Per-ASID IOTLB: IOVA -> host translation and mapping lifetime.
//!
//! - [`qsbr`]: quiescent-state reclamation between poll threads and writers.
//! - [`iotlb`]: address spaces, translation tables, miss resolution.
//! - [`prefetch`]: cache-line prefetch hints.

pub mod iotlb;
pub mod prefetch;
pub mod qsbr;
#[cfg(all(test, not(loom)))]
mod qsbr_stress;
#[cfg(test)]
pub(crate) mod testing;

pub use iotlb::{Access, AddressSpace, Iotlb, Mapping, Near, RegionSource, Table, XlateError};
pub use qsbr::{Qsbr, ReadGuard, Reader};
