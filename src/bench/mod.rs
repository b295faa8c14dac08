//! bench
pub mod floor;
