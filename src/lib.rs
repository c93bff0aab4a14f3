//! # ferry — an edge store-and-forward buffer
//!
//! A message's path through ferry follows the module names:
//!
//! ```text
//!  devices ──MQTT──▶ ingest ──append──▶ store ──read──▶ forward ──produce──▶ Kafka
//!                      │  ▲               │   ▲            │
//!                      │  └─PUBACK after──┘   └────ack─────┘ (after the delivery report)
//!                      │     group commit
//!                      └──▶ live fan-out to local subscribers (after commit, lossy)
//!
//!  config: what every stage is told     control + cli: what the operator sees and steers
//!  telemetry: logs, metrics, systemd notify
//!  runtime: `ferry run` — start-up order, signals, reload, shutdown
//! ```
//!
//! Start reading at [`runtime`] (how the daemon is assembled), then follow a message:
//! [`ingest`] → [`store`] → [`forward`]. `docs/storage.md` and `docs/semantics.md` hold the
//! on-disk format and the delivery semantics.
//!
//! The durability contract: a message is acknowledged to a device only after the group
//! commit that contains it was written and `fdatasync`'d ([`store`]); it leaves the store
//! only after Kafka acknowledged it ([`forward`]) or a counted retention rule removed it.

pub mod cli;
pub mod config;
pub mod control;
pub mod forward;
pub mod ingest;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod topic;
