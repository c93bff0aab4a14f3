//! Forwarder: drains the store to Kafka (in progress).

pub mod clock;
pub mod deadletter;
pub mod kafka;
pub mod mapping;
pub mod schedule;
pub mod throttle;
pub mod window;
