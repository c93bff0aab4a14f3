//! One device connection: CONNECT, then a loop that reads packets, pipelines appends and
//! writes acks in publish order.
//!
//! A connection is a single task that owns its socket. The packets it finds in its read
//! buffer are handled as one burst: their appends go to the store as one batch with one
//! completion ticket (one wake-up per burst, not per message). Its loop waits on, in order of
//! priority: server shutdown, takeover by a newer connection with the same client id, the
//! oldest pending burst's commit, the socket (only while fewer than `max_inflight` publishes
//! are unanswered), live fan-out messages, and the keep-alive deadline. The answers of a
//! burst go out in publish order, in one write. Writes happen in that same
//! task with `write_timeout`, so a client that stops reading only stalls itself; other
//! connections are other tasks.
//!
//! Crash cases this file handles, and how:
//! - The process dies with commits pending: their acks were never sent, the client resends
//!   after reconnecting (stored again: allowed duplicates, never a loss).
//! - The client dies with commits pending: the records are stored, the acks go nowhere.
//! - The store refuses (backpressure) or fails: the client is told (v5 reason code) or the
//!   connection is closed without an ack (v3.1.1), after the acks for earlier publishes went
//!   out, so the client resends exactly what was not stored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill,
    LastWillProperties, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, Publish, PublishProperties, QoS, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::Instrument;

use super::auth::{Acl, Login};
use super::codec::{self, Codec, Frame, FrameError, Version};
use super::fanout::Subscriber;
use super::{AckMode, Classifier, CloseReason, Refusal, Shared};
use crate::store::{AppendBatch, BatchTicket, ClassId, Record, RecordRef, StoreError};
use crate::topic::{validate_filter, validate_topic_name};

/// How a connection ended; decides the will message and the last packet sent.
#[derive(Debug)]
enum End {
    /// DISCONNECT from the client: no will.
    Clean,
    /// MQTT 5 DISCONNECT 0x04: the client asks for its will.
    CleanWithWill,
    /// The client closed the socket without DISCONNECT.
    Eof,
    /// A socket error.
    Io(std::io::Error),
    /// ferry closed the connection for this reason.
    Close(CloseReason),
    Shutdown,
    TakenOver,
}

/// Why a publish was not stored.
enum Refused {
    NotAuthorized,
    Store(StoreError),
    /// A QoS 2 retransmission: its answer is the original's, known only when the outcome
    /// before it in the queue (the original) has been processed.
    Duplicate,
}

/// The result of one publish, in publish order.
struct Outcome {
    qos: u8,
    pkid: u16,
    result: Result<(), Refused>,
    /// The result comes from a commit (not a duplicate or a fast-mode early ack).
    stored: bool,
    /// Committed message to offer to local subscribers.
    fanout: Option<(String, Bytes)>,
}

/// What became of one packet that is answered in publish order.
enum Step {
    /// Known at once: a refusal, a QoS 2 retransmission, or an early ack (`ack = "fast"`).
    Ready(Result<(), Refused>),
    /// Appended to its burst's batch; the answer is the batch result at its place. The
    /// `Appended` items of a burst are in batch order, so they take the results one by one.
    Appended { fanout: Option<(String, Bytes)> },
}

struct Item {
    qos: u8,
    pkid: u16,
    step: Step,
}

/// The publishes handled between two waits (one socket read's worth, as far as the window
/// allows), in publish order, with the one ticket of the appends among them.
struct Burst {
    items: Vec<Item>,
    /// `None` when nothing was appended (or `ack = "fast"`): the burst is answered at once,
    /// in turn.
    done: Option<BatchTicket>,
}

/// Waits for the oldest burst's commit (at once when it has none). Cancel-safe: the ticket
/// is polled in place; the caller pops the burst when this returns.
async fn front_done(pending: &mut VecDeque<Burst>) -> Vec<crate::store::Result<u64>> {
    match pending.front_mut().and_then(|b| b.done.as_mut()) {
        Some(t) => t.await,
        None => Vec::new(),
    }
}

/// A packet read from the client: PUBLISH (the hot path) apart, the rest as rumqttd parsed it.
enum Incoming {
    Publish(codec::InPublish, Option<Box<PublishProperties>>),
    Other(Box<Packet>),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Entry point for an accepted socket: TLS handshake (bounded, in this task), then MQTT.
pub(crate) async fn accept(
    shared: Arc<Shared>,
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let span = tracing::debug_span!("mqtt", conn = id, %peer, tls = tls.is_some());
    async move {
        match tls {
            None => serve(shared, socket, peer, id, stop).await,
            Some(acceptor) => {
                let limit = shared
                    .opts
                    .tls
                    .as_ref()
                    .map_or(shared.opts.connect_timeout, |t| t.handshake_timeout);
                match tokio::time::timeout(limit, acceptor.accept(socket)).await {
                    Ok(Ok(tls)) => serve(shared, tls, peer, id, stop).await,
                    Ok(Err(e)) => {
                        shared.metrics.count_close(CloseReason::TlsHandshake);
                        tracing::info!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        shared.metrics.count_close(CloseReason::TlsHandshake);
                        tracing::info!("TLS handshake timed out");
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Answers a connection over `max_connections` with CONNACK "server unavailable" when it
/// sends a CONNECT quickly; otherwise just closes it.
pub(crate) async fn refuse_busy(shared: Arc<Shared>, mut socket: TcpStream, peer: SocketAddr) {
    let mut rbuf = BytesMut::with_capacity(1024);
    let max = shared.opts.max_packet_size;
    let wait = shared.opts.connect_timeout.min(Duration::from_secs(2));
    if let Ok(Ok((codec, _))) =
        tokio::time::timeout(wait, read_connect(&mut socket, &mut rbuf, max)).await
    {
        let code = match codec.version {
            Version::V4 => ConnectReturnCode::ServiceUnavailable,
            Version::V5 => ConnectReturnCode::ServerUnavailable,
        };
        let mut out = BytesMut::new();
        if codec.write(connack(code, None), &mut out).is_ok() {
            let _ = tokio::time::timeout(wait, socket.write_all(&out)).await;
        }
    }
    tracing::info!(%peer, "connection refused: max_connections reached");
}

fn connack(code: ConnectReturnCode, props: Option<ConnAckProperties>) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        props,
    )
}

/// Errors before the session exists.
enum ConnectError {
    Close(CloseReason),
    /// A CONNECT with a protocol level ferry does not speak (answered with CONNACK 0x01).
    Level(u8),
    Eof,
    Io(std::io::Error),
}

/// Reads the first packet, which must be CONNECT, and picks the codec by its protocol level.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<(Codec, Packet), ConnectError> {
    loop {
        // Judge the first byte as soon as it arrives: a peer speaking another protocol
        // (HTTP, TLS to a plain port) is closed at once, not after the CONNECT timeout.
        if rbuf.first().is_some_and(|b| *b != 0x10) {
            return Err(ConnectError::Close(CloseReason::Malformed));
        }
        match codec::peek_frame(rbuf, max) {
            Ok(Frame::Ready {
                byte1, header_len, ..
            }) => {
                if byte1 != 0x10 {
                    return Err(ConnectError::Close(CloseReason::Malformed));
                }
                let version = match codec::connect_level(rbuf, header_len) {
                    Some(4) => Version::V4,
                    Some(5) => Version::V5,
                    Some(level) => return Err(ConnectError::Level(level)),
                    None => return Err(ConnectError::Close(CloseReason::Malformed)),
                };
                let mut codec = Codec::new(version);
                return match codec.read(rbuf, max) {
                    Ok(p) => Ok((codec, p)),
                    Err(_) => Err(ConnectError::Close(CloseReason::Malformed)),
                };
            }
            Ok(Frame::Incomplete) => {
                rbuf.reserve(4096);
                match stream.read_buf(rbuf).await {
                    Ok(0) => return Err(ConnectError::Eof),
                    Ok(_) => {}
                    Err(e) => return Err(ConnectError::Io(e)),
                }
            }
            Err(FrameError::TooLarge(_)) => {
                return Err(ConnectError::Close(CloseReason::PacketTooLarge))
            }
            Err(FrameError::Malformed(_)) => {
                return Err(ConnectError::Close(CloseReason::Malformed))
            }
        }
    }
}

async fn serve<S>(
    shared: Arc<Shared>,
    mut stream: S,
    _peer: SocketAddr,
    id: u64,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let opts = &shared.opts;
    let mut rbuf = BytesMut::with_capacity(8192);
    let connect = tokio::time::timeout(
        opts.connect_timeout,
        read_connect(&mut stream, &mut rbuf, opts.max_packet_size),
    )
    .await;
    let (codec, packet) = match connect {
        Ok(Ok(x)) => x,
        Err(_) => {
            shared.metrics.count_close(CloseReason::ConnectTimeout);
            tracing::info!("no CONNECT within connect_timeout, closing");
            return;
        }
        Ok(Err(ConnectError::Level(level))) => {
            shared.metrics.count_close(CloseReason::UnsupportedProtocol);
            tracing::info!(level, "unsupported MQTT protocol level, refusing");
            let mut out = BytesMut::new();
            if Codec::new(Version::V4)
                .write(
                    connack(ConnectReturnCode::RefusedProtocolVersion, None),
                    &mut out,
                )
                .is_ok()
            {
                let _ = tokio::time::timeout(opts.write_timeout, stream.write_all(&out)).await;
            }
            return;
        }
        Ok(Err(ConnectError::Close(reason))) => {
            shared.metrics.count_close(reason);
            tracing::info!(
                reason = reason.as_str(),
                "invalid first packet, closing connection"
            );
            return;
        }
        Ok(Err(ConnectError::Eof)) => return,
        Ok(Err(ConnectError::Io(e))) => {
            tracing::debug!(error = %e, "socket error before CONNECT");
            return;
        }
    };
    let Packet::Connect(connect, connect_props, will, will_props, login) = packet else {
        shared.metrics.count_close(CloseReason::Malformed);
        return;
    };
    let v5 = codec.version == Version::V5;

    // Login (argon2 is deliberately slow: off the runtime threads).
    let auth = shared.auth.load_full();
    let (user, pass) = match login {
        Some(l) => (Some(l.username), Some(l.password)),
        None => (None, None),
    };
    let user_for_log = user.clone();
    // At most one argon2 verification per core at a time: a flood of logins queues here
    // instead of occupying the blocking pool (and the CPU the ack path needs).
    let login = match shared.login_slots.acquire().await {
        Ok(_permit) => tokio::task::spawn_blocking(move || {
            auth.login_blocking(user.as_deref(), pass.as_deref().map(str::as_bytes))
        })
        .await
        .unwrap_or(Login::NotAuthorized),
        Err(_) => Login::NotAuthorized,
    };
    let acl = match login {
        Login::Accepted(acl) => acl,
        Login::BadCredentials => {
            shared.metrics.count_close(CloseReason::BadCredentials);
            tracing::info!(user = ?user_for_log, client_id = %connect.client_id, "login refused: bad user name or password");
            let code = ConnectReturnCode::BadUserNamePassword;
            send_final(&codec, &mut stream, connack(code, None), opts.write_timeout).await;
            return;
        }
        Login::NotAuthorized => {
            shared.metrics.count_close(CloseReason::NotAuthorized);
            tracing::info!(client_id = %connect.client_id, "login refused: anonymous access is not allowed");
            let code = ConnectReturnCode::NotAuthorized;
            send_final(&codec, &mut stream, connack(code, None), opts.write_timeout).await;
            return;
        }
    };

    // Client id: MQTT lets the server assign one to a client that sent none.
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_session {
            shared.metrics.count_close(CloseReason::ProtocolError);
            let code = ConnectReturnCode::ClientIdentifierNotValid;
            send_final(&codec, &mut stream, connack(code, None), opts.write_timeout).await;
            return;
        }
        let cid = format!("ferry-auto-{id}");
        assigned = Some(cid.clone());
        cid
    } else {
        connect.client_id.clone()
    };

    // The will is checked now, not when the connection dies: a will that could never be
    // stored must be refused while the client can still be told.
    if let Some(w) = &will {
        match std::str::from_utf8(&w.topic)
            .map_err(|_| ())
            .and_then(|t| validate_topic_name(t).map(|_| t).map_err(|_| ()))
        {
            Err(()) => {
                shared.metrics.count_close(CloseReason::InvalidTopic);
                tracing::info!(client_id, "will topic is invalid, refusing connection");
                if v5 {
                    let code = ConnectReturnCode::TopicNameInvalid;
                    send_final(&codec, &mut stream, connack(code, None), opts.write_timeout).await;
                }
                return;
            }
            Ok(t) if !acl.may_publish(t) => {
                shared.metrics.count_close(CloseReason::NotAuthorized);
                tracing::info!(
                    client_id,
                    will_topic = t,
                    "will topic not allowed for this user, refusing connection"
                );
                let code = ConnectReturnCode::NotAuthorized;
                send_final(&codec, &mut stream, connack(code, None), opts.write_timeout).await;
                return;
            }
            Ok(_) => {}
        }
    }

    // Keep-alive: the client's request, capped by max_keep_alive (0 = "none" only when the
    // operator allows unlimited, i.e. max_keep_alive = 0).
    let max_ka = opts.max_keep_alive.as_secs().min(u16::MAX as u64) as u16;
    let ka = if max_ka == 0 || (connect.keep_alive != 0 && connect.keep_alive <= max_ka) {
        connect.keep_alive
    } else {
        max_ka
    };
    let props = v5.then(|| ConnAckProperties {
        receive_max: Some(opts.max_inflight),
        max_packet_size: Some(opts.max_packet_size.min(u32::MAX as usize) as u32),
        topic_alias_max: Some(opts.topic_alias_max),
        retain_available: Some(1),
        wildcard_subscription_available: Some(shared.fanout.is_some() as u8),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: (ka != connect.keep_alive).then_some(ka),
        assigned_client_identifier: assigned,
        ..ConnAckProperties::default()
    });

    // Session takeover: register, and close whoever held this client id.
    let takeover = Arc::new(Notify::new());
    if let Some((_, old)) = shared
        .sessions
        .lock()
        .insert(client_id.clone(), (id, takeover.clone()))
    {
        old.notify_one();
    }

    let mut conn = Conn {
        shared: shared.clone(),
        stream,
        rbuf,
        wbuf: BytesMut::with_capacity(4096),
        codec,
        client_id: client_id.clone(),
        acl,
        pending: VecDeque::new(),
        burst: Vec::new(),
        inflight: 0,
        batch: AppendBatch::default(),
        fast_fanout: Vec::new(),
        counts: Counts::default(),
        burst_ms: 0,
        topics: TopicMemo::default(),
        qos2: HashSet::new(),
        aliases: HashMap::new(),
        keep_alive: (ka > 0).then(|| Duration::from_millis(ka as u64 * 1500)),
        last_rx: Instant::now(),
        client_max_packet: connect_props
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |m| m as usize),
        sub: None,
        takeover,
    };
    tracing::debug!(client_id, v5, keep_alive = ka, user = ?conn.acl.user, "client connected");
    let end = match conn.write(connack(ConnectReturnCode::Success, props)) {
        Ok(()) => match conn.flush().await {
            Ok(()) => conn.run(stop).await,
            Err(e) => e,
        },
        Err(e) => e,
    };
    conn.finish(end, will, will_props).await;
    let mut sessions = shared.sessions.lock();
    if sessions.get(&client_id).map(|(i, _)| *i) == Some(id) {
        sessions.remove(&client_id);
    }
}

/// Writes one packet and closes (CONNACK refusals).
async fn send_final<S: AsyncWrite + Unpin>(codec: &Codec, stream: &mut S, p: Packet, t: Duration) {
    let mut out = BytesMut::new();
    if codec.write(p, &mut out).is_ok() {
        let _ = tokio::time::timeout(t, async {
            stream.write_all(&out).await?;
            stream.shutdown().await
        })
        .await;
    }
}

struct Conn<S> {
    shared: Arc<Shared>,
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    codec: Codec,
    client_id: String,
    acl: Acl,
    /// Submitted bursts, oldest first, each waiting for its commit (one ticket per burst).
    pending: VecDeque<Burst>,
    /// The burst being handled: packets since the last submit, in publish order.
    burst: Vec<Item>,
    /// Items in `pending` and `burst`: the publishes not yet answered (max_inflight).
    inflight: usize,
    /// Appends of the packets handled since the last socket read, handed to the store in one
    /// go before waiting for anything (`Store::submit`), so the writer sees the burst whole;
    /// the session then waits for the whole burst with one ticket.
    batch: AppendBatch,
    /// `ack = "fast"`: what to offer the live feed per append of `batch`, once committed.
    fast_fanout: Vec<Option<(String, Bytes)>>,
    /// Metric counts not yet added to the shared counters (added once per burst).
    counts: Counts,
    /// Receive time of the burst being handled (ms since the Unix epoch): one clock read per
    /// burst, not per message.
    burst_ms: u64,
    /// The last few topics this connection published to, with their class and ACL verdict.
    topics: TopicMemo,
    /// QoS 2 packet ids received and not yet released (PUBREL): retransmissions of these are
    /// acknowledged again but not stored again.
    qos2: HashSet<u16>,
    /// MQTT 5 topic aliases set by this client.
    aliases: HashMap<u16, String>,
    /// 1.5 x the keep-alive: MQTT's limit for silence from the client.
    keep_alive: Option<Duration>,
    last_rx: Instant,
    /// MQTT 5 clients may limit what they receive; larger fan-out messages are dropped.
    client_max_packet: usize,
    sub: Option<Subscriber>,
    takeover: Arc<Notify>,
}

/// Per-connection tallies, added to the shared metrics once per burst instead of once per
/// message (the shared counters are contended between the runtime's threads).
#[derive(Default)]
struct Counts {
    publishes: [u64; 3],
    stored: u64,
}

/// How many topics a connection's memo keeps (a device usually publishes to a handful).
const TOPIC_MEMO: usize = 8;

/// Per-connection memo of recently used topics: each was validated, and has its class (from
/// `classifier`) and the connection's ACL verdict. A classifier reload (a different `Arc`)
/// empties it; the ACL is fixed for the connection's life.
#[derive(Default)]
struct TopicMemo {
    classifier: Option<Arc<Classifier>>,
    entries: Vec<(Box<str>, (ClassId, bool))>,
    /// Entry replaced next once full (round robin).
    next: usize,
}

impl TopicMemo {
    /// Whether the entries were made with `classifier` (the one in force now).
    fn is_for(&self, classifier: &Arc<Classifier>) -> bool {
        self.classifier
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, classifier))
    }

    fn get(&self, classifier: &Arc<Classifier>, topic: &str) -> Option<(ClassId, bool)> {
        if !self.is_for(classifier) {
            return None;
        }
        self.entries
            .iter()
            .find(|(t, _)| &**t == topic)
            .map(|(_, k)| *k)
    }

    fn put(&mut self, classifier: &Arc<Classifier>, topic: &str, known: (ClassId, bool)) {
        if !self.is_for(classifier) {
            self.classifier = Some(classifier.clone());
            self.entries.clear();
            self.next = 0;
        }
        let entry = (Box::from(topic), known);
        if self.entries.len() < TOPIC_MEMO {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % TOPIC_MEMO;
        }
    }
}

async fn next_fanout(sub: &mut Option<Subscriber>) -> Option<Publish> {
    match sub {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    fn v5(&self) -> bool {
        self.codec.version == Version::V5
    }

    fn write(&mut self, p: Packet) -> Result<(), End> {
        self.codec
            .write(p, &mut self.wbuf)
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %e, "encoding an MQTT packet failed");
                End::Close(CloseReason::ProtocolError)
            })
    }

    /// Writes the pending output, within `write_timeout`.
    async fn flush(&mut self) -> Result<(), End> {
        self.flush_within(self.shared.opts.write_timeout).await
    }

    /// `write_buf` consumes what was written, so a flush cancelled half-way (shutdown,
    /// takeover) leaves exactly the unwritten rest in `wbuf` and the stream stays well-formed.
    async fn flush_within(&mut self, t: Duration) -> Result<(), End> {
        let write = async {
            while !self.wbuf.is_empty() {
                match self.stream.write_buf(&mut self.wbuf).await {
                    Ok(0) => {
                        return Err(End::Io(std::io::ErrorKind::WriteZero.into()));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(End::Io(e)),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(t, write).await {
            Ok(r) => r,
            Err(_) => Err(End::Close(CloseReason::WriteTimeout)),
        }
    }

    async fn run(&mut self, stop: watch::Receiver<bool>) -> End {
        let end = self.run_loop(stop).await;
        // Publishes handled before the end (e.g. just before a DISCONNECT) are still stored.
        self.submit_batch();
        end
    }

    /// Queues the appends gathered in `batch` for the next group commit, as one batch with
    /// one ticket, and files the burst's items behind the earlier bursts.
    fn submit_batch(&mut self) {
        self.flush_counts();
        if self.burst.is_empty() {
            return;
        }
        let n = self.burst.len();
        let items = std::mem::replace(&mut self.burst, Vec::with_capacity(n));
        if self.batch.is_empty() {
            self.pending.push_back(Burst { items, done: None });
            return;
        }
        let submitted = self.shared.store.submit(&mut self.batch);
        if let Err(e) = &submitted {
            // Nothing was queued: the appends are refused like any failed append (no ack;
            // the connection closes and the client resends).
            tracing::error!(client_id = %self.client_id, error = %e, "handing publishes to the store failed");
        }
        match self.shared.opts.ack {
            AckMode::Durable => {
                let (items, done) = match submitted {
                    Ok(t) => (items, Some(t)),
                    Err(_) => (
                        items
                            .into_iter()
                            .map(|i| match i.step {
                                Step::Appended { .. } => Item {
                                    step: Step::Ready(Err(Refused::Store(StoreError::Closed))),
                                    ..i
                                },
                                _ => i,
                            })
                            .collect(),
                        None,
                    ),
                };
                self.pending.push_back(Burst { items, done });
            }
            AckMode::Fast => {
                // The client was answered already: the commit's outcome only counts.
                let fanouts = std::mem::take(&mut self.fast_fanout);
                let shared = self.shared.clone();
                let client_id = self.client_id.clone();
                let n = fanouts.len();
                tokio::spawn(async move {
                    let results = match submitted {
                        Ok(t) => t.await,
                        Err(_) => (0..n).map(|_| Err(StoreError::Closed)).collect(),
                    };
                    let mut stored = 0;
                    for (r, fanout) in results.into_iter().zip(fanouts) {
                        match r {
                            Ok(_) => {
                                stored += 1;
                                if let (Some(f), Some((t, p))) = (&shared.fanout, fanout) {
                                    f.publish(&t, p);
                                }
                            }
                            Err(e) => {
                                shared.metrics.count_refusal(Refusal::AfterAck);
                                tracing::warn!(client_id, error = %e, "ack = fast: a publish acknowledged to the client was not stored");
                            }
                        }
                    }
                    shared.metrics.stored.fetch_add(stored, Ordering::Relaxed);
                });
                self.pending.push_back(Burst { items, done: None });
            }
        }
    }

    /// Adds the connection's tallies to the shared metrics.
    fn flush_counts(&mut self) {
        let m = &self.shared.metrics;
        let c = std::mem::take(&mut self.counts);
        for (q, n) in c.publishes.iter().enumerate() {
            if *n > 0 {
                m.publishes[q].fetch_add(*n, Ordering::Relaxed);
            }
        }
        if c.stored > 0 {
            m.stored.fetch_add(c.stored, Ordering::Relaxed);
        }
    }

    /// Answers the oldest burst, whose commit finished with `results`, in publish order.
    fn complete_front(&mut self, results: Vec<crate::store::Result<u64>>) -> Result<(), End> {
        let Some(burst) = self.pending.pop_front() else {
            return Ok(());
        };
        self.inflight = self.inflight.saturating_sub(burst.items.len());
        let mut results = results.into_iter();
        let mut end = Ok(());
        for item in burst.items {
            let o = match item.step {
                Step::Ready(result) => Outcome {
                    qos: item.qos,
                    pkid: item.pkid,
                    result,
                    stored: false,
                    fanout: None,
                },
                Step::Appended { fanout } => Outcome {
                    qos: item.qos,
                    pkid: item.pkid,
                    result: match results.next() {
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(Refused::Store(e)),
                        None => Err(Refused::Store(StoreError::Closed)),
                    },
                    stored: true,
                    fanout,
                },
            };
            if o.stored && o.result.is_ok() {
                self.counts.stored += 1;
            }
            if let Err(e) = self.on_outcome(o) {
                end = Err(e);
                break;
            }
        }
        self.flush_counts();
        end
    }

    /// Answers every burst at the front whose commit has finished, without waiting.
    fn complete_ready(&mut self) -> Result<(), End> {
        loop {
            let ready = match self.pending.front_mut() {
                None => return Ok(()),
                Some(Burst { done: None, .. }) => Vec::new(),
                Some(Burst { done: Some(t), .. }) => match t.now_or_never() {
                    Some(r) => r,
                    None => return Ok(()),
                },
            };
            self.complete_front(ready)?;
        }
    }

    async fn run_loop(&mut self, mut stop: watch::Receiver<bool>) -> End {
        if *stop.borrow() {
            return End::Shutdown;
        }
        let max_inflight = self.shared.opts.max_inflight.max(1) as usize;
        loop {
            // Handle what is already buffered, as far as the in-flight window allows.
            self.burst_ms = now_ms();
            while self.inflight < max_inflight {
                match self.next_packet() {
                    Ok(Some(p)) => {
                        if let Err(end) = self.handle(p).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(end) => return end,
                }
            }
            self.submit_batch();
            // A client that stops reading blocks only this write; shutdown and takeover
            // still get through.
            let takeover = self.takeover.clone();
            let flushed = tokio::select! {
                r = self.flush() => r,
                _ = stop.changed() => Err(End::Shutdown),
                _ = takeover.notified() => Err(End::TakenOver),
            };
            if let Err(end) = flushed {
                return end;
            }
            let can_read = self.inflight < max_inflight;
            if can_read && self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(8192);
            }
            // While the window is full ferry is not reading, so the client's silence is ours:
            // the keep-alive clock restarts when reading resumes.
            if !can_read {
                self.last_rx = Instant::now();
            }
            let deadline = self.keep_alive.map(|k| self.last_rx + k);
            let takeover = self.takeover.clone();
            tokio::select! {
                biased;
                _ = stop.changed() => return End::Shutdown,
                _ = takeover.notified() => return End::TakenOver,
                results = front_done(&mut self.pending), if !self.pending.is_empty() => {
                    // One wake-up per committed burst; every ack that is ready goes out in
                    // one write (the flush at the top of the loop).
                    if let Err(end) = self.complete_front(results) {
                        return end;
                    }
                    if let Err(end) = self.complete_ready() {
                        return end;
                    }
                }
                r = self.stream.read_buf(&mut self.rbuf), if can_read => match r {
                    Ok(0) => return End::Eof,
                    Ok(n) => {
                        self.shared.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        self.last_rx = Instant::now();
                    }
                    Err(e) => return End::Io(e),
                },
                Some(p) = next_fanout(&mut self.sub) => {
                    // Fixed header (<= 5) + topic length (2) + topic + empty properties (1).
                    if p.topic.len() + p.payload.len() + 8 > self.client_max_packet {
                        self.shared.metrics.fanout_dropped.fetch_add(1, Ordering::Relaxed);
                    } else if let Err(end) = self.write(Packet::Publish(p, None)) {
                        return end;
                    }
                }
                _ = sleep_until_opt(deadline) => return End::Close(CloseReason::KeepAliveTimeout),
            }
        }
    }

    /// The next complete packet in the read buffer. A PUBLISH comes as `Incoming::Publish`:
    /// MQTT 3.1.1 ones are parsed here directly (the hot path: no trip through rumqttd's
    /// large `Packet` enum, which is moved several times per packet), MQTT 5 ones by the codec.
    fn next_packet(&mut self) -> Result<Option<Incoming>, End> {
        let max = self.shared.opts.max_packet_size;
        match codec::peek_frame(&self.rbuf, max) {
            Ok(Frame::Incomplete) => Ok(None),
            Ok(Frame::Ready {
                byte1,
                header_len,
                len,
            }) => {
                let is_publish = byte1 >> 4 == 3;
                if is_publish && self.codec.version == Version::V4 {
                    let frame = self.rbuf.split_to(len).freeze();
                    return match codec::read_v4_publish(frame, byte1, header_len) {
                        Ok(p) => Ok(Some(Incoming::Publish(p, None))),
                        Err(e) => {
                            tracing::info!(error = e, "malformed packet");
                            Err(End::Close(CloseReason::Malformed))
                        }
                    };
                }
                let meta = if is_publish {
                    codec::publish_meta(&self.rbuf[..len], byte1, header_len)
                } else {
                    (0, 0)
                };
                match self.codec.read(&mut self.rbuf, max) {
                    Ok(Packet::Publish(p, props)) => Ok(Some(Incoming::Publish(
                        codec::InPublish {
                            qos: meta.0,
                            pkid: meta.1,
                            retain: p.retain,
                            topic: p.topic,
                            payload: p.payload,
                        },
                        props.map(Box::new),
                    ))),
                    Ok(p) => Ok(Some(Incoming::Other(Box::new(p)))),
                    Err(e) => {
                        tracing::info!(error = %e, "malformed packet");
                        Err(End::Close(CloseReason::Malformed))
                    }
                }
            }
            Err(FrameError::TooLarge(n)) => {
                tracing::info!(
                    size = n,
                    max,
                    "packet larger than max_packet_size, closing connection"
                );
                Err(End::Close(CloseReason::PacketTooLarge))
            }
            Err(FrameError::Malformed(e)) => {
                tracing::info!(error = %e, "malformed packet");
                Err(End::Close(CloseReason::Malformed))
            }
        }
    }

    async fn handle(&mut self, p: Incoming) -> Result<(), End> {
        let p = match p {
            Incoming::Publish(publish, props) => return self.on_publish(publish, props),
            Incoming::Other(p) => *p,
        };
        match p {
            Packet::PubRel(rel, _) => {
                let known = self.qos2.remove(&rel.pkid);
                let reason = if known || !self.v5() {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                self.write(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ))
            }
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Subscribe(s, _) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u, _) => self.on_unsubscribe(u),
            Packet::Disconnect(d, _) => {
                if self.v5() && d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                    Err(End::CleanWithWill)
                } else {
                    Err(End::Clean)
                }
            }
            // Acks for our outbound messages: fan-out is QoS 0, so there is nothing to track.
            Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) => Ok(()),
            other => {
                tracing::info!(packet = ?packet_name(&other), "unexpected packet from a client");
                Err(End::Close(CloseReason::ProtocolError))
            }
        }
    }

    fn on_publish(
        &mut self,
        publish: codec::InPublish,
        props: Option<Box<PublishProperties>>,
    ) -> Result<(), End> {
        let (qos, pkid) = (publish.qos, publish.pkid);
        let shared = &self.shared;
        self.counts.publishes[(qos as usize).min(2)] += 1;

        // Topic: from the packet (borrowed), or from a v5 topic alias.
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        let Ok(named) = std::str::from_utf8(&publish.topic) else {
            tracing::info!("PUBLISH topic is not UTF-8");
            return Err(End::Close(CloseReason::InvalidTopic));
        };
        let aliased = match alias {
            None => None,
            Some(a) if a == 0 || a > shared.opts.topic_alias_max => {
                tracing::info!(alias = a, "topic alias out of range");
                return Err(End::Close(CloseReason::TopicAliasInvalid));
            }
            Some(a) if named.is_empty() => match self.aliases.get(&a) {
                Some(t) => Some(t.clone()),
                None => {
                    tracing::info!(alias = a, "unknown topic alias");
                    return Err(End::Close(CloseReason::TopicAliasInvalid));
                }
            },
            Some(_) => None,
        };
        let topic: &str = aliased.as_deref().unwrap_or(named);
        // A topic this connection used recently was validated, classified (by the same
        // classifier) and checked against its ACL then: take the answers from the memo.
        let classifier = shared.classifier.load();
        let known = self.topics.get(&classifier, topic);
        if known.is_none() {
            if let Err(e) = validate_topic_name(topic) {
                tracing::info!(error = %e, "invalid PUBLISH topic");
                return Err(End::Close(CloseReason::InvalidTopic));
            }
        }
        if let (Some(a), None) = (alias, &aliased) {
            self.aliases.insert(a, topic.to_owned());
        }

        if qos == 2 && self.qos2.contains(&pkid) {
            shared
                .metrics
                .qos2_duplicates
                .fetch_add(1, Ordering::Relaxed);
            self.push_ready(qos, pkid, Err(Refused::Duplicate));
            return Ok(());
        }
        let (class, allowed) = match known {
            Some(k) => k,
            None => {
                let k = (classifier.classify(topic), self.acl.may_publish(topic));
                self.topics.put(&classifier, topic, k);
                k
            }
        };
        drop(classifier);
        if !allowed {
            self.push_ready(qos, pkid, Err(Refused::NotAuthorized));
            return Ok(());
        }

        let (user_properties, content_type) = match props {
            Some(p) => {
                let p = *p;
                (without_reserved(p.user_properties), p.content_type)
            }
            None => (Vec::new(), None),
        };
        // Keep a copy for the live feed only while someone subscribes: otherwise the topic
        // copy and the payload (a slice of the read buffer, which it would keep alive until
        // the ack) are pure cost.
        let fanout = shared
            .fanout
            .as_ref()
            .is_some_and(|f| f.has_subscribers())
            .then(|| (topic.to_owned(), publish.payload.clone()));
        // Encoded into the batch straight from the packet: no owned copy of topic, client id
        // or payload per message.
        let record = RecordRef {
            timestamp_ms: self.burst_ms,
            topic,
            qos,
            retain: publish.retain,
            client_id: &self.client_id,
            user_properties: &user_properties,
            content_type: content_type.as_deref(),
            payload: &publish.payload,
        };
        if let Err(e) = shared.store.append_to(&mut self.batch, class, record) {
            self.push_ready(qos, pkid, Err(Refused::Store(e)));
            return Ok(());
        }
        if qos == 2 {
            self.qos2.insert(pkid);
        }
        let step = match shared.opts.ack {
            AckMode::Durable => Step::Appended { fanout },
            AckMode::Fast => {
                self.fast_fanout.push(fanout);
                Step::Ready(Ok(()))
            }
        };
        self.inflight += 1;
        self.burst.push(Item { qos, pkid, step });
        Ok(())
    }

    fn push_ready(&mut self, qos: u8, pkid: u16, result: Result<(), Refused>) {
        self.inflight += 1;
        self.burst.push(Item {
            qos,
            pkid,
            step: Step::Ready(result),
        });
    }

    /// Turns one finished publish into its ack (or refusal), in publish order.
    fn on_outcome(&mut self, o: Outcome) -> Result<(), End> {
        let m = &self.shared.metrics;
        let v5 = self.v5();
        let (puback, pubrec) = match o.result {
            // Still awaiting PUBREL: the original was stored. Otherwise it was refused (and
            // a v3.1.1 connection would already be closed): refuse the copy too.
            Err(Refused::Duplicate) if self.qos2.contains(&o.pkid) => {
                (PubAckReason::Success, PubRecReason::Success)
            }
            Err(Refused::Duplicate) => (
                PubAckReason::UnspecifiedError,
                PubRecReason::UnspecifiedError,
            ),
            Ok(()) => {
                if let (Some(f), Some((topic, payload))) = (&self.shared.fanout, o.fanout) {
                    f.publish(&topic, payload);
                }
                (PubAckReason::Success, PubRecReason::Success)
            }
            Err(Refused::NotAuthorized) => {
                m.count_refusal(Refusal::NotAuthorized);
                if o.qos == 2 {
                    self.qos2.remove(&o.pkid);
                }
                if !v5 && o.qos > 0 {
                    tracing::info!(client_id = %self.client_id, "publish to a topic this user may not use; MQTT 3.1.1 has no negative ack, closing");
                    return Err(End::Close(CloseReason::NotAuthorized));
                }
                (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized)
            }
            Err(Refused::Store(e)) if e.is_backpressure() => {
                m.count_refusal(match e {
                    StoreError::Headroom { .. } => Refusal::Headroom,
                    _ => Refusal::ClassFull,
                });
                if o.qos == 2 {
                    self.qos2.remove(&o.pkid);
                }
                if !v5 && o.qos > 0 {
                    self.shared.warn_backpressure(&self.client_id, &e);
                    return Err(End::Close(CloseReason::Backpressure));
                }
                (PubAckReason::QuotaExceeded, PubRecReason::QuotaExceeded)
            }
            // Retrying cannot help this message: say so (v5) instead of closing, or close
            // (v3.1.1) with a reason an operator can act on.
            Err(Refused::Store(e @ StoreError::TooLarge { .. })) => {
                m.count_refusal(Refusal::TooLarge);
                tracing::warn!(client_id = %self.client_id, error = %e, "publish too large for the store; lower mqtt max_packet_size below the commit batch size");
                if o.qos == 2 {
                    self.qos2.remove(&o.pkid);
                }
                if !v5 && o.qos > 0 {
                    return Err(End::Close(CloseReason::PacketTooLarge));
                }
                (
                    PubAckReason::ImplementationSpecificError,
                    PubRecReason::ImplementationSpecificError,
                )
            }
            Err(Refused::Store(e)) => {
                m.count_refusal(Refusal::StoreError);
                tracing::error!(client_id = %self.client_id, error = %e, "storing a publish failed; closing the connection without an ack so the client resends");
                return Err(End::Close(CloseReason::StoreError));
            }
        };
        if !v5 {
            // MQTT 3.1.1 acks are 4 fixed bytes (no reason code): no trip through the codec.
            let kind = match o.qos {
                1 => 0x40,
                2 => 0x50,
                _ => return Ok(()),
            };
            let [hi, lo] = o.pkid.to_be_bytes();
            self.wbuf.extend_from_slice(&[kind, 0x02, hi, lo]);
            return Ok(());
        }
        match o.qos {
            1 => self.write(Packet::PubAck(
                PubAck {
                    pkid: o.pkid,
                    reason: puback,
                },
                None,
            )),
            2 => self.write(Packet::PubRec(
                PubRec {
                    pkid: o.pkid,
                    reason: pubrec,
                },
                None,
            )),
            _ => Ok(()),
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let v5 = self.v5();
        let fail = |code_v5| {
            if v5 {
                code_v5
            } else {
                SubscribeReasonCode::Failure
            }
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        for f in &s.filters {
            let code = if validate_filter(&f.path).is_err() {
                fail(SubscribeReasonCode::TopicFilterInvalid)
            } else if !self.acl.may_subscribe(&f.path) {
                tracing::info!(client_id = %self.client_id, filter = %f.path, "subscription denied by ACL");
                fail(SubscribeReasonCode::NotAuthorized)
            } else if let Some(fanout) = self.shared.fanout.clone() {
                if self.sub.is_none() {
                    self.sub = fanout.subscriber().await;
                }
                match self.sub.as_mut().map(|sub| sub.subscribe(&f.path)) {
                    Some(true) => SubscribeReasonCode::Success(QoS::AtMostOnce),
                    Some(false) => fail(SubscribeReasonCode::Unspecified),
                    None => fail(SubscribeReasonCode::QuotaExceeded),
                }
            } else {
                fail(SubscribeReasonCode::ImplementationSpecific)
            };
            codes.push(code);
        }
        self.write(Packet::SubAck(
            SubAck {
                pkid: s.pkid,
                return_codes: codes,
            },
            None,
        ))
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), End> {
        let reasons = u
            .filters
            .iter()
            .map(|f| match self.sub.as_mut().map(|sub| sub.unsubscribe(f)) {
                Some(true) => UnsubAckReason::Success,
                _ => UnsubAckReason::NoSubscriptionExisted,
            })
            .collect();
        self.write(Packet::UnsubAck(
            UnsubAck {
                pkid: u.pkid,
                reasons,
            },
            None,
        ))
    }

    /// Says goodbye according to how the connection ended, and stores the will if due.
    async fn finish(
        &mut self,
        end: End,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
    ) {
        let m = self.shared.metrics.clone();
        let store_will = !matches!(end, End::Clean | End::Shutdown);
        match &end {
            End::Shutdown => {
                // Let the commits already in flight complete and tell the client, all within
                // shutdown_grace (a client that does not read cannot hold up the shutdown).
                let deadline = Instant::now() + self.shared.opts.shutdown_grace;
                while !self.pending.is_empty() {
                    let Ok(results) =
                        tokio::time::timeout_at(deadline, front_done(&mut self.pending)).await
                    else {
                        break;
                    };
                    if self.complete_front(results).is_err() {
                        break;
                    }
                }
                let _ = self.write(disconnect(DisconnectReasonCode::ServerShuttingDown));
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = self
                    .flush_within(left.max(Duration::from_millis(100)))
                    .await;
                tracing::debug!(client_id = %self.client_id, "closed for shutdown");
            }
            End::TakenOver => {
                m.count_close(CloseReason::TakenOver);
                tracing::info!(client_id = %self.client_id, "session taken over by a new connection with the same client id");
                let _ = self.write(disconnect(DisconnectReasonCode::SessionTakenOver));
                let _ = self.flush().await;
            }
            End::Close(reason) => {
                m.count_close(*reason);
                tracing::info!(client_id = %self.client_id, reason = reason.as_str(), "closing connection");
                let code = match reason {
                    CloseReason::Malformed => Some(DisconnectReasonCode::MalformedPacket),
                    CloseReason::PacketTooLarge => Some(DisconnectReasonCode::PacketTooLarge),
                    CloseReason::InvalidTopic => Some(DisconnectReasonCode::TopicNameInvalid),
                    CloseReason::TopicAliasInvalid => Some(DisconnectReasonCode::TopicAliasInvalid),
                    CloseReason::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
                    CloseReason::NotAuthorized => Some(DisconnectReasonCode::NotAuthorized),
                    CloseReason::StoreError => Some(DisconnectReasonCode::UnspecifiedError),
                    CloseReason::ProtocolError => Some(DisconnectReasonCode::ProtocolError),
                    _ => None,
                };
                if let Some(code) = code {
                    let _ = self.write(disconnect(code));
                }
                // Acks of the publishes before the one that ended the connection (e.g. earlier
                // in the same burst) are due: send them, unless writing is what failed.
                if reason != &CloseReason::WriteTimeout && !self.wbuf.is_empty() {
                    let _ = self.flush().await;
                }
            }
            End::Io(e) => tracing::debug!(client_id = %self.client_id, error = %e, "socket error"),
            End::Clean | End::CleanWithWill | End::Eof => {
                tracing::debug!(client_id = %self.client_id, end = ?end, "client disconnected")
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        if let (true, Some(w)) = (store_will, will) {
            store_will_message(self.shared.clone(), self.client_id.clone(), w, will_props);
        }
    }
}

fn disconnect(reason_code: DisconnectReasonCode) -> Packet {
    Packet::Disconnect(Disconnect { reason_code }, None)
}

/// Stores a will like a publish (it was validated and authorized at CONNECT).
fn store_will_message(
    shared: Arc<Shared>,
    client_id: String,
    will: LastWill,
    props: Option<LastWillProperties>,
) {
    let Ok(topic) = String::from_utf8(will.topic.to_vec()) else {
        return;
    };
    let (user_properties, content_type) = match props {
        Some(p) => (without_reserved(p.user_properties), p.content_type),
        None => (Vec::new(), None),
    };
    let class = shared.classifier.load().classify(&topic);
    let record = Record {
        timestamp_ms: now_ms(),
        topic: topic.clone(),
        qos: will.qos as u8,
        retain: will.retain,
        client_id: client_id.clone(),
        user_properties,
        content_type,
        payload: will.message.clone(),
    };
    let appended = shared.store.append(class, record);
    tokio::spawn(async move {
        let result = match appended {
            Ok(ticket) => ticket.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                shared.metrics.wills_stored.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = &shared.fanout {
                    f.publish(&topic, will.message);
                }
                tracing::info!(client_id, topic, "will message stored");
            }
            Err(e) => {
                let r = match e {
                    StoreError::ClassFull { .. } => Refusal::ClassFull,
                    StoreError::Headroom { .. } => Refusal::Headroom,
                    _ => Refusal::StoreError,
                };
                shared.metrics.count_refusal(r);
                tracing::warn!(client_id, topic, error = %e, "will message could not be stored");
            }
        }
    });
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::Publish(..) => "PUBLISH",
        Packet::PubAck(..) => "PUBACK",
        Packet::PingReq(..) => "PINGREQ",
        Packet::PingResp(..) => "PINGRESP",
        Packet::Subscribe(..) => "SUBSCRIBE",
        Packet::SubAck(..) => "SUBACK",
        Packet::PubRec(..) => "PUBREC",
        Packet::PubRel(..) => "PUBREL",
        Packet::PubComp(..) => "PUBCOMP",
        Packet::Unsubscribe(..) => "UNSUBSCRIBE",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::Disconnect(..) => "DISCONNECT",
    }
}

/// User properties named `ferry.*` are ferry's own (e.g. `ferry.origin.seq`, which becomes the
/// Kafka `ferry.seq` id of an imported record): a device must not be able to set them, or it
/// could make downstream deduplication drop other records.
fn without_reserved(props: Vec<(String, String)>) -> Vec<(String, String)> {
    props
        .into_iter()
        .filter(|(k, _)| !k.starts_with("ferry."))
        .collect()
}
