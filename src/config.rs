//! Configuration (in progress on the config branch).
