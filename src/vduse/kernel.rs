//! The real kernel: `/dev/vduse/control` and `/dev/vduse/$NAME`.
