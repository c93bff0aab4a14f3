//! MQTT ingest (in progress).
