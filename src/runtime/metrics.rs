//! Copies the components' own counters into the Prometheus registry before each scrape.
//!
//! Each component keeps plain atomics on its hot path (the store's `stats()`/`io_stats()`,
//! ingest's `IngestMetrics`, the forwarder's `status()`); the registry in `telemetry::metrics`
//! owns the names. This hook is the one place that maps one onto the other, so a metric's
//! value is always a component's measured figure, read at scrape time.

use std::sync::Arc;

use crate::forward::{ForwarderHandle, LinkState};
use crate::ingest::{CloseReason, IngestMetrics, Refusal};
use crate::telemetry::metrics::Metrics;

/// Registers the scrape hook (the store's own figures are registered by `watch_store`).
pub fn export(
    metrics: &Metrics,
    ingest: Arc<IngestMetrics>,
    forwarder: ForwarderHandle,
    store: crate::store::Store,
) {
    metrics.add_scrape_hook(move |m| {
        use std::sync::atomic::Ordering::Relaxed;
        for s in store.stats() {
            m.ingest_messages
                .with(&[&s.name])
                .set_to(s.appended_records);
            m.ingest_bytes.with(&[&s.name]).set_to(s.appended_bytes);
        }
        m.connections
            .with(&[])
            .set(ingest.connections_current.load(Relaxed) as f64);
        m.connections_accepted
            .with(&[])
            .set_to(ingest.connections_total.load(Relaxed));
        // Refusals the store does not see (it counts class_full and headroom itself).
        for r in [
            Refusal::NotAuthorized,
            Refusal::TooLarge,
            Refusal::StoreError,
            Refusal::AfterAck,
        ] {
            m.ingest_refused
                .with(&["", r.as_str()])
                .set_to(ingest.refused(r));
        }
        for r in CloseReason::ALL {
            m.connections_rejected
                .with(&[r.as_str()])
                .set_to(ingest.closed(r));
        }
        let st = forwarder.status();
        for c in &st.classes {
            m.forwarded_records.with(&[&c.name]).set_to(c.acked_records);
            m.dead_letters.with(&[&c.name]).set_to(c.dead_lettered);
        }
        // The forwarder counts bytes for all classes together.
        m.forwarded_bytes.with(&["all"]).set_to(st.acked_bytes);
        m.delivery_errors
            .with(&["producer_reset"])
            .set_to(st.producer_resets);
        m.delivery_errors.with(&["stall"]).set_to(st.stalls);
        m.delivery_errors
            .with(&["resent_records"])
            .set_to(st.resent_records);
        m.set_link_up(st.link == LinkState::Online);
        m.set_window_open(st.window_open || st.drain_now_until_ms.is_some());
    });
}
