//! Logging, metrics, systemd notify (in progress).
