//! virtq
