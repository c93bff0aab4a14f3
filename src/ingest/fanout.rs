//! Live local fan-out: committed messages are republished into an embedded rumqttd `Router`,
//! and devices' SUBSCRIBE requests are served from it, so on-site consumers (dashboards,
//! alarms) get a live feed without a second broker.
//!
//! # What this path promises (and what it does not)
//! The durable path is the store; this one is best effort by design:
//! - Only committed messages are fanned out (after the ticket resolved), so a subscriber never
//!   sees a message that could vanish on a crash.
//! - Delivery to subscribers is **QoS 0** whatever QoS they ask for (SUBACK grants QoS 0), and
//!   the retain flag is not carried (rumqttd's non-blocking local publish has none): a
//!   subscriber sees live traffic, not history. History is in the store.
//! - Memory is bounded: the router keeps at most `max_segment_count` segments of
//!   `max_segment_size` bytes per topic filter (decisions.md: ~2.7x that in RSS) and drops the
//!   oldest for slow subscribers; ferry's own queues before and after the router are bounded
//!   too (`max_publisher_backlog`, `subscriber_queue`). Everything dropped on ferry's side is
//!   counted in `IngestMetrics::fanout_dropped`.
//! - Nothing is published into the router while no device is subscribed.
//!
//! # Links and their lifetime
//! One local link publishes. Each subscribing device connection gets its own local link from
//! a fixed pool of `max_subscribers` slots named `ferry-sub-<slot>`. rumqttd 0.20 offers an
//! embedder no way to disconnect a local link, so a finished connection unsubscribes its
//! filters and returns its slot; the next link created under the same name makes the router
//! drop the old one. The router therefore never holds more than `max_subscribers + 1` links.
//! Every link answers `Notification::Unschedule` with `ready()`: without it the router stops
//! scheduling the link forever (decisions.md §1).
//!
//! The router runs on its own OS thread for the life of the process (rumqttd has no way to
//! stop it); one `Server` starts one router.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::Publish;
use rumqttd::{Notification, Router, RouterConfig};
use tokio::sync::mpsc;

use super::{IngestError, IngestMetrics};

/// Bounds of the local fan-out.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Router segment size per topic filter, bytes.
    pub max_segment_size: usize,
    /// Router segments kept per topic filter before the oldest is dropped.
    pub max_segment_count: usize,
    /// Device connections that may hold subscriptions at once.
    pub max_subscribers: usize,
    /// Messages waiting to enter the router before new ones are dropped.
    pub max_publisher_backlog: usize,
    /// Messages waiting to be written to one subscriber before new ones are dropped.
    pub subscriber_queue: usize,
}

impl FanoutOptions {
    /// Options whose router memory stays near `max_memory` bytes for each subscribed topic
    /// filter (rumqttd keeps one log per filter). decisions.md measured ~2.7x the segment
    /// budget in RSS, so the segments get `max_memory / 3`, in 4 segments of at least 64 KiB.
    pub fn with_memory(max_memory: u64) -> Self {
        let budget = (max_memory / 3) as usize;
        FanoutOptions {
            max_segment_size: (budget / 4).max(64 << 10),
            max_segment_count: 4,
            ..FanoutOptions::default()
        }
    }
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            max_segment_size: 256 << 10,
            max_segment_count: 4,
            max_subscribers: 64,
            max_publisher_backlog: 10_000,
            subscriber_queue: 1_000,
        }
    }
}

/// Builds a local link; the error is rendered to text (rumqttd's `LinkError` is ~800 bytes).
type Connector = dyn Fn(&str) -> Result<(LinkTx, LinkRx), String> + Send + Sync;

struct Inner {
    opts: FanoutOptions,
    /// Builds a local link. A closure because the router's channel type (`rumqttd`'s `Event`)
    /// is not nameable outside the crate.
    connect: Box<Connector>,
    publisher: parking_lot::Mutex<LinkTx>,
    free_slots: parking_lot::Mutex<Vec<usize>>,
    active_subscribers: AtomicUsize,
    metrics: Arc<IngestMetrics>,
}

/// Handle to the embedded router. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Fanout {
    inner: Arc<Inner>,
}

impl Fanout {
    pub(crate) fn start(
        opts: &FanoutOptions,
        metrics: Arc<IngestMetrics>,
    ) -> Result<Fanout, IngestError> {
        let config = RouterConfig {
            // The publisher, the subscribers, and room for a link being replaced.
            max_connections: opts.max_subscribers + 4,
            max_outgoing_packet_count: 200,
            max_segment_size: opts.max_segment_size,
            max_segment_count: opts.max_segment_count,
            ..RouterConfig::default()
        };
        let router_tx = Router::new(0, config).spawn();
        let connect: Box<Connector> = Box::new(move |id: &str| {
            LinkBuilder::new(id, router_tx.clone())
                .build()
                .map(|(tx, rx, _connack)| (tx, rx))
                .map_err(|e| e.to_string())
        });
        let (publisher, publisher_rx) = connect("ferry-ingest").map_err(IngestError::Fanout)?;
        // The publisher never receives data, but the router still schedules it; keep its
        // receiving side alive and answering `Unschedule` so the router never stalls on it.
        tokio::spawn(drain_link(publisher_rx, None, None));
        Ok(Fanout {
            inner: Arc::new(Inner {
                free_slots: parking_lot::Mutex::new((0..opts.max_subscribers).rev().collect()),
                opts: opts.clone(),
                connect,
                publisher: parking_lot::Mutex::new(publisher),
                active_subscribers: AtomicUsize::new(0),
                metrics,
            }),
        })
    }

    fn count_drop(&self) {
        self.inner
            .metrics
            .fanout_dropped
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether any device connection holds a subscription link. Publishers check this
    /// before keeping a copy of a message for the fan-out, so with nobody subscribed the
    /// fan-out costs nothing per message.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.inner.active_subscribers.load(Ordering::Relaxed) > 0
    }

    /// Offers one committed message to local subscribers. Never blocks.
    pub(crate) fn publish(&self, topic: &str, payload: Bytes) {
        if self.inner.active_subscribers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut tx = self.inner.publisher.lock();
        if tx.buffer().len() >= self.inner.opts.max_publisher_backlog {
            drop(tx);
            self.count_drop();
            return;
        }
        // A full router channel leaves the message in the link's buffer; the router picks it
        // up with the next successful notification.
        let _ = tx.try_publish(Bytes::copy_from_slice(topic.as_bytes()), payload);
    }

    /// A subscription link for one device connection, or `None` when all slots are taken.
    pub(crate) async fn subscriber(&self) -> Option<Subscriber> {
        let slot = self.inner.free_slots.lock().pop()?;
        let inner = self.inner.clone();
        let name = format!("ferry-sub-{slot}");
        let built = tokio::task::spawn_blocking(move || (inner.connect)(&name)).await;
        let (link_tx, link_rx) = match built {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, slot, "creating a local subscription link failed");
                self.inner.free_slots.lock().push(slot);
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, slot, "creating a local subscription link panicked");
                self.inner.free_slots.lock().push(slot);
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(self.inner.opts.subscriber_queue);
        tokio::spawn(drain_link(link_rx, Some(tx), Some(self.clone())));
        self.inner
            .active_subscribers
            .fetch_add(1, Ordering::Relaxed);
        Some(Subscriber {
            fanout: self.clone(),
            link: link_tx,
            slot,
            filters: Vec::new(),
            rx,
        })
    }
}

/// Moves a link's notifications to its connection (or discards them for the publisher).
async fn drain_link(mut rx: LinkRx, to: Option<mpsc::Sender<Publish>>, fanout: Option<Fanout>) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(f))) => {
                if let Some(to) = &to {
                    match to.try_send(f.publish) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            if let Some(f) = &fanout {
                                f.count_drop();
                            }
                        }
                        // The connection is gone; its filters were unsubscribed and the link
                        // is replaced when its slot is reused.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if rx.ready().is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Disconnect(..))) => return,
            Ok(_) => {}
            // The router dropped the link (replaced by a newer one with the same name).
            Err(_) => return,
        }
    }
}

/// One device connection's subscriptions. Dropping it unsubscribes and frees the slot.
pub(crate) struct Subscriber {
    fanout: Fanout,
    link: LinkTx,
    slot: usize,
    filters: Vec<String>,
    /// Messages for this connection, QoS 0.
    pub(crate) rx: mpsc::Receiver<Publish>,
}

impl Subscriber {
    pub(crate) fn subscribe(&mut self, filter: &str) -> bool {
        if self.filters.iter().any(|f| f == filter) {
            return true;
        }
        // `try_` variants: the router channel is a bounded flume channel whose blocking send
        // would stall a runtime thread. On a full channel the request stays in the link buffer
        // and is seen with the next notification.
        match self.link.try_subscribe(filter.to_owned()) {
            Ok(_) | Err(LinkError::TrySend(_)) => {
                self.filters.push(filter.to_owned());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, filter, "local subscribe failed");
                false
            }
        }
    }

    pub(crate) fn unsubscribe(&mut self, filter: &str) -> bool {
        let Some(i) = self.filters.iter().position(|f| f == filter) else {
            return false;
        };
        self.filters.swap_remove(i);
        let _ = self.link.try_unsubscribe(filter.to_owned());
        true
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for f in std::mem::take(&mut self.filters) {
            let _ = self.link.try_unsubscribe(f);
        }
        self.fanout
            .inner
            .active_subscribers
            .fetch_sub(1, Ordering::Relaxed);
        self.fanout.inner.free_slots.lock().push(self.slot);
    }
}
