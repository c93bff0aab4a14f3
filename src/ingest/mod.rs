//! MQTT ingest: ferry's own device-facing listener (MQTT 3.1.1 and 5.0).
//!
//! # Why ferry owns the listener
//! rumqttd's server acknowledges a PUBLISH as soon as it sits in the router's memory, and no
//! hook lets an embedding application delay that ack (see `design/decisions.md` §1: 35–65 % of
//! acknowledged messages were lost on `kill -9`). So ferry speaks MQTT itself, using only
//! rumqttd's packet codec (`rumqttd::protocol`), and acknowledges a message only once the
//! store says it is on disk.
//!
//! # The path of one PUBLISH
//! ```text
//!  socket ─read─▶ frame (size limit) ─▶ validate topic, alias, ACL ─▶ classify ─▶ append_to
//!                                                     (one burst = one AppendBatch) │ submit
//!   PUBACK/PUBREC ◀─write─ in publish order ◀─ one BatchTicket per burst ◀──────────┘
//!                                   └─▶ fan-out to local subscribers (after commit, lossy)
//! ```
//! Each connection is one tokio task (`session.rs`). The PUBLISHes found in one socket read
//! form a burst: they are encoded into one `AppendBatch`, submitted to the store's writer as
//! one message, and the task waits for the whole burst with one `BatchTicket`, which completes
//! when the group commit holding them finished, with one result per message (so a refusal of
//! one message answers only that one). Bursts are pipelined: the task keeps reading while
//! earlier bursts wait for their commit, up to `max_inflight` unanswered publishes (advertised
//! to MQTT 5 clients as *receive maximum*); past that it stops reading, which is the TCP
//! backpressure a slow disk exerts on a fast publisher. Acks leave in the order the publishes
//! came: bursts are answered oldest first, a burst's items in order, all that are ready in
//! one socket write.
//!
//! # Acknowledgement modes
//! - `AckMode::Durable` (default): PUBACK (QoS 1) / PUBREC (QoS 2) only after the group commit
//!   holding the message was `fdatasync`'d. A `kill -9` or power loss never loses an acked
//!   message. Cost: each ack waits for its group commit (the commit in progress when it
//!   arrived, then its own write + fdatasync), so a publisher with few messages in flight is
//!   slower.
//! - `AckMode::Fast`: ack as soon as the store accepted the append into its commit queue; the
//!   fsync happens at the next commit window. A process crash or power loss can lose what was
//!   acked during the last window (a few ms of traffic), and a refusal found by the writer
//!   after the ack cannot be reported (it is logged and counted as `refused_after_ack`).
//!
//! # Backpressure is never silent
//! When the store refuses an append (class full with `overflow = "reject"`, or disk headroom):
//! MQTT 5 gets PUBACK/PUBREC with reason 0x97 (quota exceeded) and the message is not stored;
//! MQTT 3.1.1 has no negative ack, so the connection is closed without an ack and the client
//! retries after reconnecting. QoS 0 messages are counted and dropped (QoS 0 promises
//! nothing). Every refusal is counted by reason in [`IngestMetrics`].
//!
//! # Sessions
//! ferry stores messages, it does not keep MQTT session state: CONNACK always says
//! `session present = 0`, and a client that reconnects resends what was not acked (stored
//! again: at-least-once, duplicates of unacked messages are possible and allowed). QoS 2
//! duplicates are suppressed within a connection (a packet id seen again before its PUBREL is
//! not stored twice). A new connection with the same client id closes the old one (MQTT 5:
//! DISCONNECT 0x8E). Will messages are stored like a publish when a connection ends without
//! DISCONNECT (network drop, keep-alive timeout, protocol error, takeover) — but not when ferry
//! itself shuts down, because an operator restart is not a device failure.
//!
//! # Not supported (by design or by the codec)
//! MQTT 5 enhanced authentication (AUTH packets), will delay (wills are stored at once),
//! message expiry, and subscription identifiers. Passwords must be UTF-8 (rumqttd's codec
//! parses them as strings). Retained messages are stored with their flag for the forwarder,
//! but ferry does not replay them to new subscribers.
//!
//! # Shutdown
//! [`Server::run`] follows mini-redis: the `shutdown` future firing stops the accept loop and
//! broadcasts "stop" to every connection; each connection stops reading, waits (bounded by
//! `shutdown_grace`) for the tickets already in flight, writes their acks, says DISCONNECT 0x8B
//! to MQTT 5 clients and closes. `run` returns when every connection task has finished.

pub mod auth;
pub mod classify;
mod codec;
pub mod fanout;
mod session;
pub mod tls;

pub use auth::{AuthOptions, Authenticator, User};
pub use classify::Classifier;
pub use fanout::FanoutOptions;
pub use tls::TlsOptions;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::store::Store;

/// When a PUBACK/PUBREC is sent. See the module docs for the trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// After the group commit containing the message was fdatasync'd.
    #[default]
    Durable,
    /// After the store accepted the append (fsync at the next commit window).
    Fast,
}

/// Everything the listener needs; the config module converts `[mqtt]` into this.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Default `0.0.0.0:1883` (use port 0 in tests and read [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Default [`AckMode::Durable`].
    pub ack: AckMode,
    /// Largest accepted packet, in bytes including the fixed header (advertised to MQTT 5).
    /// Default 1 MiB. Keep it below the store's `commit_max_bytes`: a bigger record is
    /// refused by the store (counted as `refused_too_large`).
    pub max_packet_size: usize,
    /// Connections beyond this are refused with CONNACK "server unavailable". Default 10,000.
    pub max_connections: usize,
    /// Unacknowledged QoS 1/2 publishes (and pending QoS 0 appends) per connection; MQTT 5's
    /// receive maximum. Past it the connection stops reading until acks go out. Default 100.
    pub max_inflight: u16,
    /// A client must send CONNECT within this after the connection (or TLS handshake).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Keep-alive requested by clients is capped to this, and a client asking for 0 (none)
    /// gets this; MQTT 5 clients are told via CONNACK's server keep-alive. 0 = no cap and
    /// keep-alive 0 allowed. Default 1 h. Silence longer than 1.5x the keep-alive closes the
    /// connection.
    pub max_keep_alive: Duration,
    /// A connection whose socket does not accept our writes for this long is closed.
    /// Default 30 s.
    pub write_timeout: Duration,
    /// MQTT 5 topic aliases accepted per connection (0 = none). Default 64.
    pub topic_alias_max: u16,
    /// On shutdown, how long connections wait for their in-flight commits. Default 10 s.
    pub shutdown_grace: Duration,
    pub auth: AuthOptions,
    /// A second listener speaking MQTT over TLS, sharing everything else with the plain one.
    pub tls: Option<TlsOptions>,
    /// Live local fan-out; `None` disables it (SUBSCRIBE is then refused per filter).
    pub fanout: Option<FanoutOptions>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            ack: AckMode::Durable,
            max_packet_size: 1 << 20,
            max_connections: 10_000,
            max_inflight: 100,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(30),
            topic_alias_max: 64,
            shutdown_grace: Duration::from_secs(10),
            auth: AuthOptions {
                allow_anonymous: true,
                ..AuthOptions::default()
            },
            tls: None,
            fanout: Some(FanoutOptions::default()),
        }
    }
}

/// Errors that stop the listener from starting or running (connection-level problems are
/// handled, logged and counted per connection, never returned here).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("binding the MQTT listener on {addr}: {source}; is another broker using the port?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting MQTT connections: {0}")]
    Accept(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("TLS setup: {what} ({path})")]
    Tls { what: String, path: PathBuf },
    #[error("starting the local fan-out router: {0}")]
    Fanout(String),
    #[error("classification refers to class number {class}, but the store has only {count} classes; check the classification rules against storage.classes")]
    UnknownClass { class: usize, count: usize },
}

fn check_classifier(c: &Classifier, store: &Store) -> Result<(), IngestError> {
    let count = store.class_names().len();
    match c.classes().find(|&class| class >= count) {
        Some(class) => Err(IngestError::UnknownClass { class, count }),
        None => Ok(()),
    }
}

/// Why a publish was not stored (each is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The class is full and its overflow policy is `reject`.
    ClassFull,
    /// The disk's free-space headroom was reached.
    Headroom,
    /// The user's ACL does not allow the topic.
    NotAuthorized,
    /// The store failed (I/O error, closed); the connection is closed so the client resends.
    StoreError,
    /// `ack = "fast"`: refused by the writer after the ack went out (the message is lost).
    AfterAck,
    /// Larger than the store's commit batch limit (keep `max_packet_size` below it).
    TooLarge,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::ClassFull,
        Refusal::Headroom,
        Refusal::NotAuthorized,
        Refusal::StoreError,
        Refusal::AfterAck,
        Refusal::TooLarge,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ClassFull => "class_full",
            Refusal::Headroom => "headroom",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::StoreError => "store_error",
            Refusal::AfterAck => "after_ack",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// Why ferry closed a connection (or refused it), beyond ordinary client disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Bytes that are not a valid MQTT packet, or a packet in the wrong place.
    Malformed,
    ProtocolError,
    PacketTooLarge,
    /// Not UTF-8, empty, wildcards or NUL in a PUBLISH (or will) topic.
    InvalidTopic,
    TopicAliasInvalid,
    UnsupportedProtocol,
    ConnectTimeout,
    KeepAliveTimeout,
    WriteTimeout,
    BadCredentials,
    NotAuthorized,
    TlsHandshake,
    /// MQTT 3.1.1 publish refused by backpressure (no negative ack exists).
    Backpressure,
    /// `max_connections` reached.
    ServerBusy,
    /// Another connection with the same client id.
    TakenOver,
    StoreError,
}

impl CloseReason {
    pub const ALL: [CloseReason; 16] = [
        CloseReason::Malformed,
        CloseReason::ProtocolError,
        CloseReason::PacketTooLarge,
        CloseReason::InvalidTopic,
        CloseReason::TopicAliasInvalid,
        CloseReason::UnsupportedProtocol,
        CloseReason::ConnectTimeout,
        CloseReason::KeepAliveTimeout,
        CloseReason::WriteTimeout,
        CloseReason::BadCredentials,
        CloseReason::NotAuthorized,
        CloseReason::TlsHandshake,
        CloseReason::Backpressure,
        CloseReason::ServerBusy,
        CloseReason::TakenOver,
        CloseReason::StoreError,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Malformed => "malformed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::PacketTooLarge => "packet_too_large",
            CloseReason::InvalidTopic => "invalid_topic",
            CloseReason::TopicAliasInvalid => "topic_alias_invalid",
            CloseReason::UnsupportedProtocol => "unsupported_protocol",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::KeepAliveTimeout => "keep_alive_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::BadCredentials => "bad_credentials",
            CloseReason::NotAuthorized => "not_authorized",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::Backpressure => "backpressure",
            CloseReason::ServerBusy => "server_busy",
            CloseReason::TakenOver => "taken_over",
            CloseReason::StoreError => "store_error",
        }
    }
}

/// Counters of the listener; plain atomics so telemetry can read them at any time.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    /// Publishes received, by QoS 0/1/2 (including refused ones).
    pub publishes: [AtomicU64; 3],
    /// Publishes stored (commit completed).
    pub stored: AtomicU64,
    pub wills_stored: AtomicU64,
    /// QoS 2 retransmissions recognised and not stored again.
    pub qos2_duplicates: AtomicU64,
    /// Bytes read from device sockets.
    pub bytes_in: AtomicU64,
    /// Local fan-out messages dropped because the router link was full.
    pub fanout_dropped: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    closed: [AtomicU64; CloseReason::ALL.len()],
}

impl IngestMetrics {
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }
    pub fn closed(&self, r: CloseReason) -> u64 {
        self.closed[r as usize].load(Ordering::Relaxed)
    }
    pub(crate) fn count_refusal(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_close(&self, r: CloseReason) {
        self.closed[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// All counters as `(name, value)`, for telemetry and `ferry status`.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("connections_current".into(), l(&self.connections_current)),
            ("connections_total".into(), l(&self.connections_total)),
            ("publishes_qos0".into(), l(&self.publishes[0])),
            ("publishes_qos1".into(), l(&self.publishes[1])),
            ("publishes_qos2".into(), l(&self.publishes[2])),
            ("stored".into(), l(&self.stored)),
            ("wills_stored".into(), l(&self.wills_stored)),
            ("qos2_duplicates".into(), l(&self.qos2_duplicates)),
            ("bytes_in".into(), l(&self.bytes_in)),
            ("fanout_dropped".into(), l(&self.fanout_dropped)),
        ];
        for r in Refusal::ALL {
            v.push((format!("refused_{}", r.as_str()), self.refused(r)));
        }
        for r in CloseReason::ALL {
            v.push((format!("closed_{}", r.as_str()), self.closed(r)));
        }
        v
    }
}

/// State shared by the accept loop and every connection task.
pub(crate) struct Shared {
    pub(crate) opts: IngestOptions,
    pub(crate) store: Store,
    pub(crate) classifier: ArcSwap<Classifier>,
    pub(crate) auth: ArcSwap<Authenticator>,
    pub(crate) metrics: Arc<IngestMetrics>,
    /// client id -> (connection number, signal that closes it): session takeover.
    pub(crate) sessions: parking_lot::Mutex<HashMap<String, (u64, Arc<Notify>)>>,
    pub(crate) fanout: Option<fanout::Fanout>,
    /// Connections over the limit are answered CONNACK "unavailable" by a few tasks at most;
    /// past that they are simply closed, so a connection flood cannot grow without bound.
    pub(crate) refusal_slots: Arc<Semaphore>,
    /// Concurrent argon2 verifications (one per core).
    pub(crate) login_slots: Semaphore,
    pub(crate) last_backpressure_warn: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl Shared {
    /// Logs at most one backpressure warning per 10 s; the counters carry the exact numbers.
    pub(crate) fn warn_backpressure(&self, client_id: &str, error: &dyn std::fmt::Display) {
        let now = std::time::Instant::now();
        let mut last = self.last_backpressure_warn.lock();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(client_id, %error, "publish refused (backpressure), MQTT 3.1.1 client disconnected so it retries later; further refusals are counted, not logged, for 10 s");
        }
    }
}

/// A handle to change the listener at runtime (`ferry reload`) and read its counters.
#[derive(Clone)]
pub struct IngestHandle {
    shared: Arc<Shared>,
}

impl IngestHandle {
    /// New connections and new publishes on existing connections use `c` from now on.
    /// Refused (and the old one kept) if it names a class the store does not have.
    pub fn set_classifier(&self, c: Classifier) -> Result<(), IngestError> {
        check_classifier(&c, &self.shared.store)?;
        self.shared.classifier.store(Arc::new(c));
        Ok(())
    }
    /// New logins use `a`; connected clients keep the ACL they logged in with.
    pub fn set_auth(&self, a: Authenticator) {
        self.shared.auth.store(Arc::new(a));
    }
    pub fn metrics(&self) -> Arc<IngestMetrics> {
        self.shared.metrics.clone()
    }
}

/// The bound listener. `bind`, then `run` until the shutdown future fires.
pub struct Server {
    listener: TcpListener,
    /// The optional TLS listener: same sessions, classifier, users and fan-out as the plain one.
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the listen address (port 0 picks a free port: see [`Server::local_addr`]),
    /// reads the password file and TLS material, and starts the fan-out router if enabled.
    pub async fn bind(
        opts: IngestOptions,
        store: Store,
        classifier: Classifier,
    ) -> Result<Server, IngestError> {
        check_classifier(&classifier, &store)?;
        let auth = Authenticator::new(&opts.auth)?;
        let acceptor = opts.tls.as_ref().map(tls::acceptor).transpose()?;
        let metrics = Arc::new(IngestMetrics::default());
        let fanout = opts
            .fanout
            .as_ref()
            .map(|f| fanout::Fanout::start(f, metrics.clone()))
            .transpose()?;
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| IngestError::Bind {
                    addr: opts.listen,
                    source,
                })?;
        let tls = match (&opts.tls, acceptor) {
            (Some(t), Some(acceptor)) => {
                let l = TcpListener::bind(t.listen)
                    .await
                    .map_err(|source| IngestError::Bind {
                        addr: t.listen,
                        source,
                    })?;
                Some((l, acceptor))
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            opts,
            store,
            classifier: ArcSwap::from_pointee(classifier),
            auth: ArcSwap::from_pointee(auth),
            metrics,
            sessions: parking_lot::Mutex::new(HashMap::new()),
            fanout,
            refusal_slots: Arc::new(Semaphore::new(32)),
            login_slots: Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            last_backpressure_warn: parking_lot::Mutex::new(None),
        });
        Ok(Server {
            listener,
            tls,
            shared,
        })
    }

    /// The plain-TCP listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The TLS listener's address, when TLS is configured.
    pub fn tls_local_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.tls.as_ref().map(|(l, _)| l.local_addr())
    }

    pub fn handle(&self) -> IngestHandle {
        IngestHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn metrics(&self) -> Arc<IngestMetrics> {
        self.shared.metrics.clone()
    }

    /// Accepts connections until `shutdown` completes, then drains every connection
    /// gracefully (see the module docs) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), IngestError> {
        let Server {
            listener,
            tls,
            shared,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone; `recv` returning None means all have finished.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut next_id: u64 = 0;
        tokio::pin!(shutdown);
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            tls_addr = ?tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            "MQTT listener accepting"
        );
        let result = loop {
            let (accepted, acceptor) = tokio::select! {
                _ = &mut shutdown => break Ok(()),
                r = listener.accept() => (r, None),
                (r, a) = accept_tls(&tls) => (r, Some(a)),
            };
            let (socket, peer) = match accepted {
                Ok(x) => x,
                Err(e) if is_transient_accept_error(&e) => {
                    // EMFILE and friends: back off instead of spinning; the connections
                    // already open keep working.
                    tracing::warn!(error = %e, "accept failed, retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => break Err(IngestError::Accept(e)),
            };
            next_id += 1;
            let _ = socket.set_nodelay(true);
            let current = shared.metrics.connections_current.load(Ordering::Relaxed);
            if current >= shared.opts.max_connections as u64 {
                shared.metrics.count_close(CloseReason::ServerBusy);
                // A handshake per refused TLS connection would be the costlier flood: those
                // are just closed.
                let permit = match acceptor {
                    None => shared.refusal_slots.clone().try_acquire_owned().ok(),
                    Some(_) => None,
                };
                if let Some(permit) = permit {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        session::refuse_busy(shared, socket, peer).await;
                        drop(permit);
                    });
                }
                continue;
            }
            shared
                .metrics
                .connections_current
                .fetch_add(1, Ordering::Relaxed);
            shared
                .metrics
                .connections_total
                .fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            let stop = stop_rx.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                // Decrement in a guard, so even a panicking session gives its slot back
                // (otherwise max_connections would fill up with ghosts).
                struct Slot(Arc<Shared>);
                impl Drop for Slot {
                    fn drop(&mut self) {
                        self.0
                            .metrics
                            .connections_current
                            .fetch_sub(1, Ordering::Relaxed);
                    }
                }
                let _slot = Slot(shared.clone());
                session::accept(shared, socket, peer, next_id, stop, acceptor).await;
                drop(done);
            });
        };
        drop(listener);
        drop(tls);
        tracing::info!("MQTT listener stopping: draining connections");
        let _ = stop_tx.send(true);
        drop(done_tx);
        let _ = done_rx.recv().await;
        tracing::info!("MQTT listener stopped");
        result
    }
}

/// Accepts on the TLS listener, or waits forever when there is none.
async fn accept_tls(
    tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> (
    std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    tokio_rustls::TlsAcceptor,
) {
    match tls {
        Some((l, a)) => (l.accept().await, a.clone()),
        None => std::future::pending().await,
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
