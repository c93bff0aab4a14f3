//! Shared helpers for the ingest tests: a real store in a temp dir, the real server on
//! 127.0.0.1:0, rumqttc clients whose events are collected in a channel, and a tiny raw
//! MQTT 3.1.1 encoder for what a well-behaved client library will not send.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry::ingest::{Classifier, IngestMetrics, IngestOptions, Server};
use ferry::store::{ClassId, ClassOptions, Overflow, Store, StoreOptions, StoredRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn class(name: &str, max_bytes: u64, overflow: Overflow) -> ClassOptions {
    ClassOptions {
        name: name.into(),
        max_bytes,
        max_age: None,
        overflow,
    }
}

pub fn open_store(dir: &std::path::Path, classes: Vec<ClassOptions>) -> Store {
    Store::open(StoreOptions::new(dir, classes)).unwrap().0
}

/// Options for tests: ephemeral port, short timeouts.
pub fn test_opts() -> IngestOptions {
    IngestOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        connect_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..IngestOptions::default()
    }
}

pub struct Running {
    pub addr: SocketAddr,
    /// The TLS listener, when configured.
    pub tls_addr: Option<SocketAddr>,
    pub metrics: Arc<IngestMetrics>,
    pub handle: ferry::ingest::IngestHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ferry::ingest::IngestError>>>,
}

impl Running {
    pub async fn start(opts: IngestOptions, store: Store, classifier: Classifier) -> Running {
        let server = Server::bind(opts, store, classifier).await.unwrap();
        let addr = server.local_addr().unwrap();
        let tls_addr = server.tls_local_addr().map(|a| a.unwrap());
        let metrics = server.metrics();
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            tls_addr,
            metrics,
            handle,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("server did not stop in 30 s")
                .unwrap()
                .unwrap();
        }
    }

    pub fn metric(&self, name: &str) -> u64 {
        self.metrics
            .snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
            .1
    }
}

/// Everything durable in `class`, waiting until at least `at_least` records are committed.
pub async fn stored(store: &Store, class: ClassId, at_least: u64) -> Vec<StoredRecord> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.committed(class) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {at_least} records committed",
            store.committed(class)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    read_all(store, class)
}

pub fn read_all(store: &Store, class: ClassId) -> Vec<StoredRecord> {
    let mut r = store.reader(class, 1).unwrap();
    let mut out = Vec::new();
    loop {
        let batch = r.read_batch(10_000, usize::MAX).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Polls until `f` is true (generous timeout).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- rumqttc v3.1.1

pub mod v4 {
    use super::*;
    pub use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: JoinHandle<()>,
    }

    impl Client {
        pub fn new(opts: MqttOptions) -> Client {
            let (client, mut el) = AsyncClient::new(opts, 1000);
            let (tx, events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(e) => {
                            if tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                        // Stop at the first error: rumqttc would otherwise reconnect.
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            });
            Client {
                client,
                events,
                task,
            }
        }

        pub fn connect(addr: SocketAddr, id: &str) -> Client {
            Client::new(options(addr, id))
        }

        /// Waits for the first event `f` accepts, skipping others; panics on timeout.
        pub async fn until<T>(
            &mut self,
            mut f: impl FnMut(&Result<Event, String>) -> Option<T>,
        ) -> T {
            tokio::time::timeout(WAIT, async {
                loop {
                    let e = self.events.recv().await.expect("event loop ended");
                    if let Some(t) = f(&e) {
                        return t;
                    }
                }
            })
            .await
            .expect("timed out waiting for an MQTT event")
        }

        pub async fn connack(&mut self) -> Result<(), String> {
            self.until(|e| match e {
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    Some(if c.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", c.code))
                    })
                }
                Err(s) => Some(Err(s.clone())),
                _ => None,
            })
            .await
        }

        /// Waits for the connection to end; returns the error text.
        pub async fn closed(&mut self) -> String {
            self.until(|e| e.as_ref().err().cloned()).await
        }

        /// Kills the event loop without DISCONNECT: the socket is dropped.
        pub fn abort(self) {
            self.task.abort();
        }
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }
}

// ---------------------------------------------------------------- rumqttc v5

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::Packet;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        task: JoinHandle<()>,
    }

    impl Client {
        pub fn new(opts: MqttOptions) -> Client {
            let (client, mut el) = AsyncClient::new(opts, 1000);
            let (tx, events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(e) => {
                            if tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            });
            Client {
                client,
                events,
                task,
            }
        }

        pub fn connect(addr: SocketAddr, id: &str) -> Client {
            Client::new(options(addr, id))
        }

        pub async fn until<T>(
            &mut self,
            mut f: impl FnMut(&Result<Event, String>) -> Option<T>,
        ) -> T {
            tokio::time::timeout(WAIT, async {
                loop {
                    let e = self.events.recv().await.expect("event loop ended");
                    if let Some(t) = f(&e) {
                        return t;
                    }
                }
            })
            .await
            .expect("timed out waiting for an MQTT event")
        }

        pub async fn connack(&mut self) -> Result<rumqttc::v5::mqttbytes::v5::ConnAck, String> {
            self.until(|e| match e {
                Ok(Event::Incoming(Packet::ConnAck(c))) => Some(Ok(c.clone())),
                Err(s) => Some(Err(s.clone())),
                _ => None,
            })
            .await
        }

        pub async fn closed(&mut self) -> String {
            self.until(|e| e.as_ref().err().cloned()).await
        }

        pub fn abort(self) {
            self.task.abort();
        }
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }
}

// ---------------------------------------------------------------- raw bytes

pub mod raw {
    fn remaining_len(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                return;
            }
        }
    }

    fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![byte1];
        remaining_len(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s.
    pub fn connect(client_id: &str) -> Vec<u8> {
        connect_ka(client_id, 60)
    }

    /// MQTT 3.1.1 CONNECT, clean session, keep-alive `ka` seconds.
    pub fn connect_ka(client_id: &str, ka: u16) -> Vec<u8> {
        let mut b = Vec::new();
        string(b"MQTT", &mut b);
        b.push(4);
        b.push(0x02);
        b.extend_from_slice(&ka.to_be_bytes());
        string(client_id.as_bytes(), &mut b);
        packet(0x10, &b)
    }

    /// MQTT 5 CONNECT, clean start, keep-alive 60 s, no properties.
    pub fn connect_v5(client_id: &str) -> Vec<u8> {
        let mut b = Vec::new();
        string(b"MQTT", &mut b);
        b.push(5);
        b.push(0x02);
        b.extend_from_slice(&60u16.to_be_bytes());
        b.push(0); // properties
        string(client_id.as_bytes(), &mut b);
        packet(0x10, &b)
    }

    pub fn publish(topic: &[u8], qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        string(topic, &mut b);
        if qos > 0 {
            b.extend_from_slice(&pkid.to_be_bytes());
        }
        b.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &b)
    }

    pub fn subscribe(pkid: u16, filter: &str) -> Vec<u8> {
        let mut b = pkid.to_be_bytes().to_vec();
        string(filter.as_bytes(), &mut b);
        b.push(0);
        packet(0x82, &b)
    }

    pub fn pingreq() -> Vec<u8> {
        vec![0xC0, 0]
    }

    pub fn pubrel(pkid: u16) -> Vec<u8> {
        packet(0x62, &pkid.to_be_bytes())
    }
}
