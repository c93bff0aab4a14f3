//! Turns the validated [`Config`] into each component's own options.
//!
//! Components take plain option structs (so they can be tested without a config file); this
//! is the one place that knows both sides. `ferry config check` validated every value, so the
//! conversions here only fail on what validation cannot see (files, parse of schedules).

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{anyhow, Context};

use crate::config::{AckMode as CfgAck, Config};
use crate::forward::clock::{Clock, SystemClock};
use crate::forward::kafka::KafkaOptions;
use crate::forward::mapping::{ClassMappingConfig, RuleMappingConfig};
use crate::forward::policy::Configured;
use crate::forward::schedule::{ClassPolicy, Scheduler};
use crate::forward::throttle::{Rate, RateProfile, Throttle, ThrottleConfig, Throttles};
use crate::forward::window::{Schedule, Windows};
use crate::forward::ForwarderOptions;
use crate::ingest::auth::{AuthOptions, User};
use crate::ingest::fanout::FanoutOptions;
use crate::ingest::tls::TlsOptions;
use crate::ingest::{AckMode, Classifier, IngestOptions};
use crate::store::Store;

fn addr(what: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{what} `{s}` is not an address like 0.0.0.0:1883"))
}

/// `[classify]` -> the ingest classifier (rule filters -> class ids in store order).
pub fn classifier(cfg: &Config, store: &Store) -> anyhow::Result<Classifier> {
    let id = |name: &str| {
        store
            .class_id(name)
            .ok_or_else(|| anyhow!("class `{name}` is not in the store"))
    };
    let rules = cfg
        .classify
        .rules
        .iter()
        .map(|r| Ok((r.filter.clone(), id(&r.class)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Classifier::new(rules, id(&cfg.classify.default_class)?))
}

/// `[mqtt]` users (config and password file) -> the listener's authenticator settings.
pub fn auth_options(cfg: &Config) -> anyhow::Result<AuthOptions> {
    let users = cfg
        .users()?
        .into_iter()
        .map(|u| {
            (
                u.name,
                User {
                    password_phc: Some(u.password_hash),
                    publish: u.publish,
                    subscribe: u.subscribe,
                },
            )
        })
        .collect::<HashMap<_, _>>();
    Ok(AuthOptions {
        allow_anonymous: cfg.mqtt.allow_anonymous,
        anonymous_publish: Vec::new(),
        anonymous_subscribe: Vec::new(),
        users,
        // The config module already merged the password file into `users`.
        password_file: None,
    })
}

/// `[mqtt]` -> the listener's options (plain TCP, plus TLS on its own port when configured).
pub fn ingest_options(cfg: &Config) -> anyhow::Result<IngestOptions> {
    let m = &cfg.mqtt;
    let tls = match &m.tls {
        Some(t) => {
            let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
                return Err(anyhow!("mqtt.tls needs both `cert` and `key`"));
            };
            Some(TlsOptions {
                listen: addr("mqtt.tls.listen", &t.listen)?,
                cert_chain: cert.clone(),
                private_key: key.clone(),
                client_ca: t.client_ca.clone(),
                require_client_cert: t.require_client_cert,
                handshake_timeout: t.handshake_timeout.0,
            })
        }
        None => None,
    };
    Ok(IngestOptions {
        listen: addr("mqtt.listen", &m.listen)?,
        ack: match m.ack {
            CfgAck::Durable => AckMode::Durable,
            CfgAck::Fast => AckMode::Fast,
        },
        max_packet_size: m.max_packet_size.bytes() as usize,
        max_connections: m.max_connections as usize,
        max_inflight: m.max_inflight,
        connect_timeout: m.connect_timeout.0,
        max_keep_alive: m.max_keep_alive.0,
        auth: auth_options(cfg)?,
        tls,
        fanout: m
            .local_fanout
            .enabled
            .then(|| FanoutOptions::with_memory(m.local_fanout.max_memory.bytes())),
        ..IngestOptions::default()
    })
}

/// `[kafka]`, `[forward]` and the classes' mappings -> forwarder options.
pub fn forwarder_options(cfg: &Config) -> ForwarderOptions {
    let k = &cfg.kafka;
    let kafka = KafkaOptions {
        bootstrap_servers: k.bootstrap_servers.clone(),
        client_id: k.client_id.clone(),
        compression: k.compression.as_str().to_string(),
        linger_ms: k.linger.0.as_millis() as u64,
        message_timeout_ms: k.message_timeout.0.as_millis() as u64,
        topic_auto_create: false,
        properties: k
            .properties
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    };
    let mut o = ForwarderOptions::new(cfg.gateway_id.clone(), kafka);
    o.mappings = cfg
        .classes
        .iter()
        .map(|c| {
            let rules = cfg
                .classify
                .rules
                .iter()
                .filter(|r| r.class == c.name && (r.kafka_topic.is_some() || r.kafka_key.is_some()))
                .map(|r| RuleMappingConfig {
                    filter: r.filter.clone(),
                    topic: r.kafka_topic.clone(),
                    key: r.kafka_key.clone(),
                })
                .collect();
            (
                c.name.clone(),
                ClassMappingConfig {
                    topic: c.kafka_topic.clone(),
                    key: (!c.kafka_key.is_empty()).then(|| c.kafka_key.clone()),
                    rules,
                },
            )
        })
        .collect();
    o.batch_max_bytes = cfg.forward.batch_max_bytes.bytes() as usize;
    o.max_in_flight_records = cfg.forward.max_in_flight as usize;
    o.stall_timeout = k.stall_timeout.0;
    o.backoff_min = cfg.forward.backoff_min.0;
    o.backoff_max = cfg.forward.backoff_max.0;
    o.ack_interval = cfg.forward.ack_interval.0;
    o
}

fn rate(r: crate::config::ByteRate) -> Rate {
    Rate::from_bytes_per_sec(r.bytes_per_sec())
}

/// `[forward]` windows, throttles and the classes' priorities -> the sending policy.
pub fn policy(cfg: &Config) -> anyhow::Result<Configured> {
    let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(SystemClock::local());
    let now = clock.now();
    let schedule =
        Schedule::parse_list(&cfg.forward.windows).map_err(|e| anyhow!("forward.windows: {e}"))?;
    let profiles = cfg
        .forward
        .rate_profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            RateProfile::parse(&p.when, rate(p.rate))
                .map_err(|e| anyhow!("forward.rate_profile[{i}].when: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let global = Throttle::new(
        ThrottleConfig {
            rate: rate(cfg.forward.rate),
            profiles,
            daily_budget: cfg.forward.daily_budget.map(|b| b.bytes()),
            ..ThrottleConfig::default()
        },
        &now,
    );
    let per_class = cfg
        .classes
        .iter()
        .map(|c| {
            c.rate.map(|r| {
                Throttle::new(
                    ThrottleConfig {
                        rate: rate(r),
                        ..ThrottleConfig::default()
                    },
                    &now,
                )
            })
        })
        .collect();
    let scheduler = Scheduler::new(
        cfg.classes
            .iter()
            .map(|c| ClassPolicy {
                name: c.name.clone(),
                priority: c.priority,
                min_share: c.min_share,
            })
            .collect(),
    )
    .map_err(|e| anyhow!("classes: {e}"))?;
    let policy = Configured::new(
        clock,
        Windows::new(schedule),
        scheduler,
        Throttles::new(global, per_class),
    );
    // A metered link's daily budget must not start over at every restart.
    Ok(match cfg.forward.daily_budget {
        Some(_) => policy.with_budget_file(budget_path(&cfg.storage.data_dir)),
        None => policy,
    })
}

/// Where the forwarder keeps today's count of the daily byte budget.
pub fn budget_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("forward").join("budget")
}
