//! The embedded kernel model: plays the kernel's VDUSE module where there is
//! no `/dev/vduse`.
