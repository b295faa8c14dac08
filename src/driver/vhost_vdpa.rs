//! `/dev/vhost-vdpa-N` as a [`super::DriverTransport`].
