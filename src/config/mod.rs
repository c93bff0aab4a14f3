//! The ferry configuration: one TOML file, every key documented in `config/ferry.toml`.
//!
//! # Design
//! - **One schema for the whole appliance.** Every section (storage, classes, classification,
//!   MQTT, Kafka, forwarding, control, metrics, logging) is a serde struct here, so the other
//!   components read typed values and never parse text themselves. Free-form strings that a
//!   component owns the grammar of (forwarding windows, schedule strings) are stored as given
//!   and checked by that component.
//! - **Unknown keys are errors** (`deny_unknown_fields` everywhere): a misspelt
//!   `segment_sise` silently falling back to the default is how appliances lose data.
//! - **Errors an operator can act on.** Each problem names the key path as written in the file
//!   (`class[1].max_bytes`), the line and column, and what is expected (`expected a size like
//!   "512MiB"`). serde supplies the message, toml the span, and [`diagnostics`] maps one to the
//!   other. Cross-field rules run after parsing ([`Config::validate`]) and are reported the same
//!   way; all problems are collected, not just the first.
//! - **Human units** ([`ByteSize`], [`HumanDuration`], [`ByteRate`]) parse from and print back to
//!   the operator's notation, so the effective config ([`Config::to_toml_string`]) reads like the
//!   file it came from.
//! - **Defaults live in two places that must agree:** the `Default` impls below and the
//!   commented `config/ferry.toml` (embedded as [`Config::default_config`]). A test checks that
//!   every key of the effective config appears in the file and that the values are the same.
//! - **Secrets never print.** Kafka properties whose key mentions a password, secret or key are
//!   shown as `"***"` in the effective config, JSON and `Debug` output.
//! - **Warnings are not errors.** Anonymous MQTT on a non-loopback listener or a world-writable
//!   config file is allowed (a lab bench may want it) but reported by [`Config::warnings`].

pub mod diagnostics;
pub mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::ImDocument;

pub use diagnostics::{Diagnostic, KeyPath, Location};
pub use units::{ByteRate, ByteSize, HumanDuration};

use crate::store::{ClassOptions, Overflow, StoreOptions};

/// The documented default config, embedded in the binary.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/ferry.toml");

/// Where the daemon and the CLI look for the config unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ferry/ferry.toml";

/// Placeholders a Kafka topic or key template may use.
pub const TEMPLATE_PLACEHOLDERS: &[&str] = &[
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "topic",
    "client_id",
    "class",
    "gateway",
];

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The I/O error is part of the message rather than a `source`, so the reason is shown
    // exactly once whether the error is printed alone or as an anyhow chain.
    #[error("cannot read config file {path}: {error}; check the path, or pass another one with --config")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}", render_problems(file, problems))]
    Invalid {
        file: String,
        problems: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_problems(file: &str, problems: &[Diagnostic]) -> String {
    let mut s = format!(
        "invalid configuration in {file} ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push('\n');
        s.push_str(&p.to_string());
    }
    s
}

/// The whole ferry configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identifies this gateway downstream (Kafka headers, `{gateway}` in templates).
    pub gateway_id: String,
    pub storage: StorageConfig,
    /// Priority classes, in the order they get their [`crate::store::ClassId`]s.
    #[serde(rename = "class")]
    pub classes: Vec<ClassConfig>,
    pub classify: ClassifyConfig,
    pub mqtt: MqttConfig,
    pub kafka: KafkaConfig,
    pub forward: ForwardConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// Found while loading; not part of the file.
    #[serde(skip)]
    warnings: Vec<Diagnostic>,
    /// The directory of the file this came from, to resolve relative paths.
    #[serde(skip)]
    base_dir: Option<PathBuf>,
}

/// Equal when the settings are equal; where they were loaded from and the warnings found on
/// the way do not count.
impl PartialEq for Config {
    fn eq(&self, o: &Self) -> bool {
        self.gateway_id == o.gateway_id
            && self.storage == o.storage
            && self.classes == o.classes
            && self.classify == o.classify
            && self.mqtt == o.mqtt
            && self.kafka == o.kafka
            && self.forward == o.forward
            && self.control == o.control
            && self.metrics == o.metrics
            && self.log == o.log
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_id: "gateway".into(),
            storage: StorageConfig::default(),
            classes: default_classes(),
            classify: ClassifyConfig::default(),
            mqtt: MqttConfig::default(),
            kafka: KafkaConfig::default(),
            forward: ForwardConfig::default(),
            control: ControlConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            warnings: Vec::new(),
            base_dir: None,
        }
    }
}

/// `[storage]`: where and how the message log is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub segment_size: ByteSize,
    pub compression_level: i32,
    /// Frames smaller than this stay uncompressed (zstd gains little on them).
    pub compress_min: ByteSize,
    pub min_free: ByteSize,
    pub commit: CommitConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("/var/lib/ferry"),
            segment_size: ByteSize::mib(64),
            compression_level: 3,
            compress_min: ByteSize::b(512),
            min_free: ByteSize::mib(256),
            commit: CommitConfig::default(),
        }
    }
}

/// `[storage.commit]`: the group-commit window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommitConfig {
    pub max_delay: HumanDuration,
    pub max_batch: ByteSize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_delay: HumanDuration::ms(2),
            max_batch: ByteSize::mib(1),
        }
    }
}

/// One `[[class]]`: a priority class with its own log, limits and Kafka mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub name: String,
    /// Higher drains first.
    pub priority: u32,
    pub max_bytes: ByteSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    #[serde(default = "default_overflow")]
    pub overflow: Overflow,
    /// Fraction (0..=1) of the forwarding bandwidth this class gets while it has a backlog,
    /// even when higher classes have one too.
    #[serde(default)]
    pub min_share: f64,
    #[serde(default = "default_kafka_topic")]
    pub kafka_topic: String,
    #[serde(default = "default_kafka_key")]
    pub kafka_key: String,
    /// Throttle for this class alone (on top of the global one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<ByteRate>,
}

fn default_overflow() -> Overflow {
    Overflow::DropOldest
}
fn default_kafka_topic() -> String {
    "ferry.{class}".into()
}
fn default_kafka_key() -> String {
    "{client_id}".into()
}

impl ClassConfig {
    fn new(name: &str, priority: u32, max_bytes: ByteSize, overflow: Overflow) -> Self {
        ClassConfig {
            name: name.into(),
            priority,
            max_bytes,
            max_age: None,
            overflow,
            min_share: 0.0,
            kafka_topic: default_kafka_topic(),
            kafka_key: default_kafka_key(),
            rate: None,
        }
    }
}

fn default_classes() -> Vec<ClassConfig> {
    let mut critical = ClassConfig::new("critical", 100, ByteSize::gib(1), Overflow::Reject);
    critical.min_share = 0.0;
    let mut telemetry = ClassConfig::new("telemetry", 50, ByteSize::gib(2), Overflow::DropOldest);
    telemetry.max_age = Some(HumanDuration::hours(7 * 24));
    telemetry.min_share = 0.2;
    let mut bulk = ClassConfig::new("bulk", 10, ByteSize::gib(1), Overflow::DropOldest);
    bulk.max_age = Some(HumanDuration::hours(3 * 24));
    bulk.min_share = 0.05;
    vec![critical, telemetry, bulk]
}

/// `[classify]`: which class a publish goes to. First matching rule wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyConfig {
    pub default_class: String,
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            default_class: "telemetry".into(),
            rules: Vec::new(),
        }
    }
}

/// One `[[classify.rule]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// MQTT topic filter (`+` and `#` allowed).
    pub filter: String,
    pub class: String,
    /// Overrides the class's `kafka_topic` for matching messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_topic: Option<String>,
    /// Overrides the class's `kafka_key` for matching messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_key: Option<String>,
}

/// When ferry acknowledges a publish to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// PUBACK after the record is fdatasync'd (no acked message is ever lost).
    Durable,
    /// PUBACK when the record is queued for commit (a crash can lose the last few ms).
    Fast,
}

/// `[mqtt]`: the device-facing listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: String,
    pub ack: AckMode,
    pub max_packet_size: ByteSize,
    pub max_connections: u32,
    pub max_inflight: u16,
    pub connect_timeout: HumanDuration,
    pub max_keep_alive: HumanDuration,
    pub allow_anonymous: bool,
    /// A separate TOML file of `[[user]]` tables (same keys as `[[mqtt.user]]`), so the main
    /// config can stay world-readable while the hashes do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub local_fanout: FanoutConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "0.0.0.0:1883".into(),
            ack: AckMode::Durable,
            max_packet_size: ByteSize::kib(256),
            max_connections: 1000,
            max_inflight: 64,
            connect_timeout: HumanDuration::secs(10),
            max_keep_alive: HumanDuration::hours(1),
            allow_anonymous: true,
            password_file: None,
            users: Vec::new(),
            tls: None,
            local_fanout: FanoutConfig::default(),
        }
    }
}

/// One `[[mqtt.user]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// argon2 PHC string, as printed by `ferry passwd`.
    pub password_hash: String,
    /// Topic filters this user may publish to.
    #[serde(default = "all_topics")]
    pub publish: Vec<String>,
    /// Topic filters this user may subscribe to (local fan-out).
    #[serde(default = "all_topics")]
    pub subscribe: Vec<String>,
}

fn all_topics() -> Vec<String> {
    vec!["#".into()]
}

/// `[mqtt.tls]`: an optional second listener with TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    pub handshake_timeout: HumanDuration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: "0.0.0.0:8883".into(),
            cert: None,
            key: None,
            client_ca: None,
            require_client_cert: false,
            handshake_timeout: HumanDuration::secs(10),
        }
    }
}

/// `[mqtt.local_fanout]`: live feed to local subscribers through the embedded router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    pub enabled: bool,
    pub max_memory: ByteSize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            enabled: true,
            max_memory: ByteSize::mib(64),
        }
    }
}

/// Kafka compression codecs librdkafka supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl KafkaCompression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

/// `[kafka]`: the upstream cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    pub client_id: String,
    pub compression: KafkaCompression,
    pub linger: HumanDuration,
    pub message_timeout: HumanDuration,
    /// No delivery progress for this long (with a backlog) marks the link stalled.
    pub stall_timeout: HumanDuration,
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            client_id: "ferry".into(),
            compression: KafkaCompression::Zstd,
            linger: HumanDuration::ms(5),
            message_timeout: HumanDuration::mins(5),
            stall_timeout: HumanDuration::secs(60),
            properties: KafkaProperties::default(),
        }
    }
}

/// librdkafka properties passed through as given. Values of keys that look secret are masked
/// wherever the config is printed (`Serialize`, `Debug`); [`KafkaProperties::iter`] gives the
/// real values to the one place that needs them, the producer.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(BTreeMap<String, String>);

/// The text shown instead of a secret.
pub const MASK: &str = "***";

impl KafkaProperties {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        KafkaProperties(map)
    }
    /// True when the value of `key` must never be printed or logged.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "key"].iter().any(|w| k.contains(w))
    }
    /// The real values, for building the producer only.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn masked(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret(k) { MASK } else { v.as_str() };
                (k.as_str(), v)
            })
            .collect()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.masked().serialize(s)
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.masked()).finish()
    }
}

/// librdkafka properties ferry sets from its own keys; setting them in `[kafka.properties]`
/// would silently fight the typed setting, so it is an error naming the key to use.
const RESERVED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.bootstrap_servers"),
    ("metadata.broker.list", "kafka.bootstrap_servers"),
    ("client.id", "kafka.client_id"),
    ("compression.type", "kafka.compression"),
    ("compression.codec", "kafka.compression"),
    ("linger.ms", "kafka.linger"),
    ("queue.buffering.max.ms", "kafka.linger"),
    ("message.timeout.ms", "kafka.message_timeout"),
    ("delivery.timeout.ms", "kafka.message_timeout"),
];

/// `[forward]`: when and how fast the backlog drains to Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// Connectivity windows (`"always"`, `"Mon-Fri 22:00-06:00"`); parsed by the forwarder.
    pub windows: Vec<String>,
    pub rate: ByteRate,
    #[serde(rename = "rate_profile")]
    pub rate_profiles: Vec<RateProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_budget: Option<ByteSize>,
    pub batch_max_bytes: ByteSize,
    /// Records handed to the producer and not yet acknowledged, across all classes.
    pub max_in_flight: u32,
    pub backoff_min: HumanDuration,
    pub backoff_max: HumanDuration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            windows: vec!["always".into()],
            rate: ByteRate::Unlimited,
            rate_profiles: Vec::new(),
            daily_budget: None,
            batch_max_bytes: ByteSize::mib(1),
            max_in_flight: 10_000,
            backoff_min: HumanDuration::secs(1),
            backoff_max: HumanDuration::secs(60),
        }
    }
}

/// One `[[forward.rate_profile]]`: a throttle that applies while `when` matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateProfile {
    /// Schedule string, same grammar as `forward.windows`.
    pub when: String,
    pub rate: ByteRate,
}

/// `[control]`: the operator API socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/ferry/ferry.sock"),
        }
    }
}

/// `[metrics]`: Prometheus exporter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// journald when started by systemd (JOURNAL_STREAM set), text otherwise.
    Auto,
    Journald,
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `ferry=debug,rdkafka=warn`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// Problems found by [`Config::validate`], each with the key it is about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<(KeyPath, String)>,
    pub warnings: Vec<(KeyPath, String)>,
}

impl Findings {
    fn error(&mut self, path: &str, msg: impl Into<String>) {
        self.errors.push((KeyPath::parse(path), msg.into()));
    }
    fn error_at(&mut self, path: KeyPath, msg: impl Into<String>) {
        self.errors.push((path, msg.into()));
    }
    fn warn(&mut self, path: &str, msg: impl Into<String>) {
        self.warnings.push((KeyPath::parse(path), msg.into()));
    }
}

impl Config {
    /// Reads, parses and validates the config file at `path`. Relative paths inside it
    /// (`mqtt.password_file`) are taken relative to the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let name = path.display().to_string();
        let mut cfg = Config::from_str_with_name(&text, &name)?;
        cfg.base_dir = path.parent().map(Path::to_path_buf);
        if let (Some(base), Some(pf)) = (&cfg.base_dir, &cfg.mqtt.password_file) {
            if pf.is_relative() {
                cfg.mqtt.password_file = Some(base.join(pf));
            }
        }
        if let Some(w) = world_writable(path) {
            cfg.warnings.push(Diagnostic {
                file: name.clone(),
                path: KeyPath::root(),
                location: None,
                message: w,
            });
        }
        cfg.warnings.extend(cfg.file_warnings(&name));
        tracing::debug!(path = %path.display(), warnings = cfg.warnings.len(), "config loaded");
        Ok(cfg)
    }

    /// Parses and validates `text`; `name` labels the problems (usually the file path).
    pub fn from_str_with_name(text: &str, name: &str) -> Result<Config, ConfigError> {
        let doc = ImDocument::parse(text);
        let cfg: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let offset = e.span().map(|s| s.start);
                let path = match (&doc, offset) {
                    (Ok(doc), Some(off)) => diagnostics::path_at(doc, off),
                    _ => KeyPath::root(),
                };
                return Err(ConfigError::Invalid {
                    file: name.to_string(),
                    problems: vec![Diagnostic {
                        file: name.to_string(),
                        path,
                        location: offset.map(|o| Location::from_offset(text, o)),
                        message: friendlier(e.message()),
                    }],
                });
            }
        };
        // toml accepted the text, so toml_edit does too; if it somehow did not, problems are
        // still reported, just without line numbers.
        let doc = doc.ok();
        let locate = |path: &KeyPath| -> Option<Location> {
            let doc = doc.as_ref()?;
            diagnostics::span_of(doc, path).map(|r| Location::from_offset(text, r.start))
        };
        let written = |path: &KeyPath| {
            doc.as_ref()
                .is_none_or(|doc| diagnostics::is_written(doc, path))
        };
        let to_diag = |(path, message): (KeyPath, String)| {
            // A rule can fail on a default the operator never wrote (default_class =
            // "telemetry" with their own classes); say so, or the message is a riddle.
            let message = if written(&path) {
                message
            } else {
                format!("{message} (this key is not in the file, so its default applies; set it explicitly)")
            };
            Diagnostic {
                file: name.to_string(),
                location: locate(&path),
                path,
                message,
            }
        };
        let findings = cfg.validate();
        if !findings.errors.is_empty() {
            return Err(ConfigError::Invalid {
                file: name.to_string(),
                problems: findings.errors.into_iter().map(to_diag).collect(),
            });
        }
        let mut cfg = cfg;
        cfg.warnings = findings.warnings.into_iter().map(to_diag).collect();
        Ok(cfg)
    }

    /// The embedded, documented default (`config/ferry.toml`).
    pub fn default_config() -> Config {
        match Config::from_str_with_name(DEFAULT_CONFIG_TOML, "<default config>") {
            Ok(c) => c,
            // The embedded file is checked by the test suite; reaching this is a build defect.
            Err(e) => panic!("the embedded default config is invalid: {e}"),
        }
    }

    /// Warnings found while loading (also printed by `ferry config check`).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The effective config as TOML, in human units, with secrets masked.
    pub fn to_toml_string(&self) -> String {
        match toml::to_string_pretty(self) {
            Ok(s) => s,
            // Every type here serializes to TOML; keep the failure visible rather than panic.
            Err(e) => format!("# cannot print the effective config: {e}\n"),
        }
    }

    /// The class named `name` and its id.
    pub fn class(&self, name: &str) -> Option<(crate::store::ClassId, &ClassConfig)> {
        self.classes
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// What the store needs, classes in config order (so [`Config::class`] ids are store ids).
    pub fn store_options(&self) -> StoreOptions {
        let classes = self
            .classes
            .iter()
            .map(|c| ClassOptions {
                name: c.name.clone(),
                max_bytes: c.max_bytes.0,
                max_age: c.max_age.map(HumanDuration::get),
                overflow: c.overflow,
            })
            .collect();
        let s = &self.storage;
        let mut o = StoreOptions::new(s.data_dir.clone(), classes);
        o.segment_bytes = s.segment_size.0;
        o.commit_max_delay = s.commit.max_delay.get();
        o.commit_max_bytes = usize::try_from(s.commit.max_batch.0).unwrap_or(usize::MAX);
        o.compression_level = s.compression_level;
        o.compress_min_bytes = usize::try_from(s.compress_min.0).unwrap_or(usize::MAX);
        o.min_free_bytes = s.min_free.0;
        o
    }

    /// Every MQTT user: `[[mqtt.user]]` plus the `[[user]]` tables of `mqtt.password_file`
    /// (read now, so a reload sees changes).
    pub fn users(&self) -> Result<Vec<UserConfig>, ConfigError> {
        let mut users = self.mqtt.users.clone();
        if let Some(pf) = &self.mqtt.password_file {
            users.extend(load_password_file(pf)?);
        }
        Ok(users)
    }

    /// Checks the rules that span fields. Returns every problem, not just the first.
    pub fn validate(&self) -> Findings {
        let mut f = Findings::default();
        check_name(&mut f, "gateway_id", &self.gateway_id, "gateway id");

        // storage
        let s = &self.storage;
        if s.data_dir.as_os_str().is_empty() {
            f.error(
                "storage.data_dir",
                "must not be empty; expected a directory like \"/var/lib/ferry\"",
            );
        }
        bound(
            &mut f,
            "storage.segment_size",
            s.segment_size.0,
            64 << 10,
            1 << 30,
            ByteSize,
        );
        if !(0..=19).contains(&s.compression_level) {
            f.error(
                "storage.compression_level",
                format!(
                    "{} is out of range; expected 0 (off) to 19",
                    s.compression_level
                ),
            );
        }
        bound(
            &mut f,
            "storage.commit.max_batch",
            s.commit.max_batch.0,
            64 << 10,
            64 << 20,
            ByteSize,
        );
        if s.commit.max_delay.get() > std::time::Duration::from_secs(1) {
            f.error(
                "storage.commit.max_delay",
                format!(
                    "{} would hold every publish's acknowledgement that long; expected at most 1s (2ms is typical)",
                    s.commit.max_delay
                ),
            );
        }

        // classes
        if self.classes.is_empty() {
            f.error("class", "at least one [[class]] is needed");
        }
        let mut names = HashSet::new();
        let mut share = 0.0;
        for (i, c) in self.classes.iter().enumerate() {
            let p = format!("class[{i}]");
            check_name(&mut f, &format!("{p}.name"), &c.name, "class name");
            if !names.insert(c.name.as_str()) {
                f.error(
                    &format!("{p}.name"),
                    format!(
                        "class `{}` is defined twice; class names must be unique",
                        c.name
                    ),
                );
            }
            if c.max_bytes.0 < s.segment_size.0.saturating_mul(2) {
                f.error(
                    &format!("{p}.max_bytes"),
                    format!(
                        "{} is less than two segments (storage.segment_size = {}); expected at least {}, because retention frees whole segments",
                        c.max_bytes,
                        s.segment_size,
                        ByteSize(s.segment_size.0.saturating_mul(2))
                    ),
                );
            }
            if let Some(age) = c.max_age {
                if age.get() < std::time::Duration::from_secs(1) {
                    f.error(
                        &format!("{p}.max_age"),
                        format!("{age} is too short; expected at least 1s"),
                    );
                }
            }
            if !(0.0..=1.0).contains(&c.min_share) || c.min_share.is_nan() {
                f.error(
                    &format!("{p}.min_share"),
                    format!(
                        "{} is out of range; expected a fraction from 0.0 to 1.0",
                        c.min_share
                    ),
                );
            } else {
                share += c.min_share;
            }
            if let Err(e) = check_template(&c.kafka_topic, true) {
                f.error(&format!("{p}.kafka_topic"), e);
            }
            if let Err(e) = check_template(&c.kafka_key, false) {
                f.error(&format!("{p}.kafka_key"), e);
            }
        }
        if share > 1.0 + 1e-9 {
            f.error(
                "class",
                format!("the classes' min_share values add up to {share:.2}; expected at most 1.0"),
            );
        }

        // classify
        let known = |n: &str| self.classes.iter().any(|c| c.name == n);
        let class_list = || {
            self.classes
                .iter()
                .map(|c| format!("`{}`", c.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !known(&self.classify.default_class) {
            f.error(
                "classify.default_class",
                format!(
                    "unknown class `{}`; expected one of {}",
                    self.classify.default_class,
                    class_list()
                ),
            );
        }
        for (i, r) in self.classify.rules.iter().enumerate() {
            let p = format!("classify.rule[{i}]");
            if let Err(e) = crate::topic::validate_filter(&r.filter) {
                f.error(&format!("{p}.filter"), format!("invalid topic filter: {e}"));
            }
            if !known(&r.class) {
                f.error(
                    &format!("{p}.class"),
                    format!(
                        "unknown class `{}`; expected one of {}",
                        r.class,
                        class_list()
                    ),
                );
            }
            if let Some(t) = &r.kafka_topic {
                if let Err(e) = check_template(t, true) {
                    f.error(&format!("{p}.kafka_topic"), e);
                }
            }
            if let Some(t) = &r.kafka_key {
                if let Err(e) = check_template(t, false) {
                    f.error(&format!("{p}.kafka_key"), e);
                }
            }
        }

        // mqtt
        let m = &self.mqtt;
        let listen = check_addr(&mut f, "mqtt.listen", &m.listen);
        if m.max_packet_size.0 < 128 || m.max_packet_size.0 > 268_435_455 {
            f.error(
                "mqtt.max_packet_size",
                format!(
                    "{} is out of range; expected 128B to 256MiB (the MQTT limit)",
                    m.max_packet_size
                ),
            );
        } else if m.max_packet_size.0.saturating_add(64 << 10) > s.commit.max_batch.0 {
            f.error(
                "mqtt.max_packet_size",
                format!(
                    "{} plus 64KiB of record header does not fit in storage.commit.max_batch ({}): such a publish could never be stored; lower this or raise max_batch",
                    m.max_packet_size, s.commit.max_batch
                ),
            );
        }
        bound(
            &mut f,
            "mqtt.max_connections",
            m.max_connections as u64,
            1,
            1_000_000,
            |n| n,
        );
        if m.max_inflight == 0 {
            f.error(
                "mqtt.max_inflight",
                "must be at least 1; expected 1 to 65535",
            );
        }
        let secs = |d: HumanDuration| d.get().as_secs_f64();
        if !(0.1..=300.0).contains(&secs(m.connect_timeout)) {
            f.error(
                "mqtt.connect_timeout",
                format!(
                    "{} is out of range; expected 100ms to 5m",
                    m.connect_timeout
                ),
            );
        }
        if m.max_keep_alive.get().as_secs() > 65535 || m.max_keep_alive.get().as_secs() < 1 {
            f.error(
                "mqtt.max_keep_alive",
                format!(
                    "{} is out of range; expected 1s to 18h12m15s (65535 s, the MQTT limit)",
                    m.max_keep_alive
                ),
            );
        }
        let mut user_names = HashSet::new();
        for (i, u) in m.users.iter().enumerate() {
            let p = format!("mqtt.user[{i}]");
            check_user(&mut f, &p, u);
            if !user_names.insert(u.name.as_str()) {
                f.error(
                    &format!("{p}.name"),
                    format!("user `{}` is defined twice", u.name),
                );
            }
        }
        if !m.allow_anonymous && m.users.is_empty() && m.password_file.is_none() {
            f.warn(
                "mqtt.allow_anonymous",
                "anonymous access is off and no users are configured: no device can connect; add [[mqtt.user]] entries (see `ferry passwd`)",
            );
        }
        let anon_warning = |addr: &str| {
            format!(
                "anonymous MQTT access on {addr}, which is not a loopback address: any host that can reach it can publish; set allow_anonymous = false and add [[mqtt.user]] entries"
            )
        };
        if m.allow_anonymous {
            if let Some(a) = listen {
                if !a.ip().is_loopback() {
                    f.warn("mqtt.allow_anonymous", anon_warning(&m.listen));
                }
            }
        }
        if let Some(tls) = &m.tls {
            let tls_addr = check_addr(&mut f, "mqtt.tls.listen", &tls.listen);
            if tls.cert.is_none() || tls.key.is_none() {
                f.error(
                    "mqtt.tls",
                    "`cert` and `key` must be given together: a TLS listener needs both the certificate chain and its private key (PEM files)",
                );
            }
            if tls.require_client_cert && tls.client_ca.is_none() {
                f.error(
                    "mqtt.tls.require_client_cert",
                    "needs `client_ca` (the PEM bundle that client certificates are checked against)",
                );
            }
            if !(0.1..=300.0).contains(&secs(tls.handshake_timeout)) {
                f.error(
                    "mqtt.tls.handshake_timeout",
                    format!(
                        "{} is out of range; expected 100ms to 5m",
                        tls.handshake_timeout
                    ),
                );
            }
            if let (Some(a), Some(b)) = (listen, tls_addr) {
                if a == b {
                    f.error(
                        "mqtt.tls.listen",
                        format!(
                            "{} is also mqtt.listen; expected a different port (8883 is usual)",
                            tls.listen
                        ),
                    );
                }
            }
            if m.allow_anonymous && !tls.require_client_cert {
                if let Some(a) = tls_addr {
                    if !a.ip().is_loopback() {
                        f.warn("mqtt.allow_anonymous", anon_warning(&tls.listen));
                    }
                }
            }
        }
        if m.local_fanout.enabled && m.local_fanout.max_memory.0 < (1 << 20) {
            f.error(
                "mqtt.local_fanout.max_memory",
                format!(
                    "{} is too small; expected at least 1MiB",
                    m.local_fanout.max_memory
                ),
            );
        }

        // kafka
        let k = &self.kafka;
        let servers: Vec<&str> = k.bootstrap_servers.split(',').map(str::trim).collect();
        if servers.iter().any(|s| s.is_empty()) {
            f.error(
                "kafka.bootstrap_servers",
                "has an empty entry; expected \"host:port\" or \"host1:port,host2:port\"",
            );
        } else if let Some(bad) = servers.iter().find(|s| !valid_host_port(s)) {
            f.error(
                "kafka.bootstrap_servers",
                format!(
                    "`{bad}` is not host:port; expected \"host:port\" or \"host1:port,host2:port\""
                ),
            );
        }
        if k.client_id.trim().is_empty() {
            f.error("kafka.client_id", "must not be empty");
        }
        if k.linger.get() > std::time::Duration::from_secs(10) {
            f.error(
                "kafka.linger",
                format!(
                    "{} is too long; expected at most 10s (5ms is typical)",
                    k.linger
                ),
            );
        }
        if k.stall_timeout.get() < std::time::Duration::from_secs(1) {
            f.error(
                "kafka.stall_timeout",
                format!("{} is too short; expected at least 1s", k.stall_timeout),
            );
        }
        if !k.message_timeout.get().is_zero()
            && k.message_timeout.get() < std::time::Duration::from_secs(1)
        {
            f.error(
                "kafka.message_timeout",
                format!(
                    "{} is too short; expected at least 1s, or \"0s\" for no timeout",
                    k.message_timeout
                ),
            );
        }
        for (key, _) in k.properties.iter() {
            if let Some((_, instead)) = RESERVED_KAFKA_PROPERTIES.iter().find(|(r, _)| *r == key) {
                f.error_at(
                    KeyPath::parse("kafka.properties").key(key),
                    format!("ferry sets `{key}` itself; use `{instead}` instead"),
                );
            }
        }

        // forward
        let fw = &self.forward;
        if fw.windows.is_empty() {
            f.error("forward.windows", "is empty, so nothing would ever be forwarded; expected at least one window, e.g. [\"always\"]");
        }
        for (i, w) in fw.windows.iter().enumerate() {
            if w.trim().is_empty() {
                f.error(
                    &format!("forward.windows[{i}]"),
                    "is empty; expected a window like \"always\" or \"Mon-Fri 22:00-06:00\"",
                );
            }
        }
        for (i, rp) in fw.rate_profiles.iter().enumerate() {
            if rp.when.trim().is_empty() {
                f.error(
                    &format!("forward.rate_profile[{i}].when"),
                    "is empty; expected a schedule like \"Mon-Fri 08:00-18:00\"",
                );
            }
        }
        bound(
            &mut f,
            "forward.batch_max_bytes",
            fw.batch_max_bytes.0,
            1 << 10,
            256 << 20,
            ByteSize,
        );
        bound(
            &mut f,
            "forward.max_in_flight",
            fw.max_in_flight as u64,
            1,
            1_000_000,
            |n| n,
        );
        if fw.backoff_min.get().is_zero() {
            f.error(
                "forward.backoff_min",
                "must be more than 0s; expected e.g. \"1s\"",
            );
        }
        if fw.backoff_min > fw.backoff_max {
            f.error(
                "forward.backoff_max",
                format!(
                    "{} is less than forward.backoff_min ({}); expected backoff_min <= backoff_max",
                    fw.backoff_max, fw.backoff_min
                ),
            );
        }

        // control, metrics, log
        if self.control.socket.as_os_str().is_empty() {
            f.error(
                "control.socket",
                "must not be empty; expected a path like \"/run/ferry/ferry.sock\"",
            );
        }
        if self.metrics.enabled {
            check_addr(&mut f, "metrics.listen", &self.metrics.listen);
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            f.error(
                "log.level",
                format!("`{}` is not a log filter ({e}); expected a level like \"info\" or directives like \"ferry=debug,rdkafka=warn\"", self.log.level),
            );
        }
        f
    }

    /// Checks that need the filesystem: TLS files exist. Warnings, because a config is often
    /// checked on a build machine before the certificates are deployed.
    fn file_warnings(&self, name: &str) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let mut check = |path: &str, file: &Option<PathBuf>| {
            if let Some(p) = file {
                if let Err(e) = std::fs::metadata(p) {
                    out.push(Diagnostic {
                        file: name.to_string(),
                        path: KeyPath::parse(path),
                        location: None,
                        message: format!(
                            "cannot read {}: {e}; ferry will fail to start the TLS listener",
                            p.display()
                        ),
                    });
                }
            }
        };
        if let Some(tls) = &self.mqtt.tls {
            check("mqtt.tls.cert", &tls.cert);
            check("mqtt.tls.key", &tls.key);
            check("mqtt.tls.client_ca", &tls.client_ca);
        }
        out
    }
}

/// Rewrites serde's Rust-flavoured expectations into words an operator knows.
fn friendlier(msg: &str) -> String {
    let mut m = msg.trim().to_string();
    if let Some(s) = suggest_field(&m) {
        m.push_str(&format!("; did you mean `{s}`?"));
    }
    for (rust, human) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list like [\"a\", \"b\"]"),
    ] {
        m = m.replace(rust, human);
    }
    m
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the known field closest to `x`,
/// when it is close enough to be a typo.
fn suggest_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let list = rest.split_once("expected ")?.1;
    let candidates = list.split('`').skip(1).step_by(2);
    let (dist, best) = candidates
        .map(|c| (edit_distance(unknown, c), c))
        .min_by_key(|(d, _)| *d)?;
    (dist > 0 && dist <= 2.max(unknown.len() / 4)).then(|| best.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn bound<D: fmt::Display>(
    f: &mut Findings,
    path: &str,
    v: u64,
    min: u64,
    max: u64,
    show: impl Fn(u64) -> D,
) {
    if v < min || v > max {
        f.error(
            path,
            format!(
                "{} is out of range; expected {} to {}",
                show(v),
                show(min),
                show(max)
            ),
        );
    }
}

/// Names end up in file names (class directories) and Kafka headers: keep them plain.
fn check_name(f: &mut Findings, path: &str, v: &str, what: &str) {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !v.starts_with('.');
    if !ok {
        f.error(
            path,
            format!("`{v}` is not a valid {what}; expected 1 to 64 characters from a-z, A-Z, 0-9, `_`, `-`, `.` (not starting with `.`)"),
        );
    }
}

fn check_addr(f: &mut Findings, path: &str, v: &str) -> Option<SocketAddr> {
    match v.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            f.error(
                path,
                format!("`{v}` is not an IP address and port; expected e.g. \"0.0.0.0:1883\", \"127.0.0.1:1883\" or \"[::]:1883\""),
            );
            None
        }
    }
}

fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
}

fn check_user(f: &mut Findings, p: &str, u: &UserConfig) {
    if u.name.is_empty() || u.name.len() > 256 || u.name.contains(char::is_control) {
        f.error(
            &format!("{p}.name"),
            "expected a non-empty user name of at most 256 printable characters",
        );
    }
    match argon2::PasswordHash::new(&u.password_hash) {
        Ok(h) if h.algorithm.as_str().starts_with("argon2") => {}
        _ => f.error(
            &format!("{p}.password_hash"),
            format!(
                "is not an argon2 PHC string (like \"$argon2id$v=19$m=19456,t=2,p=1$...\"); create one with `ferry passwd --user {}`",
                u.name
            ),
        ),
    }
    for (key, list) in [("publish", &u.publish), ("subscribe", &u.subscribe)] {
        for (i, filter) in list.iter().enumerate() {
            if let Err(e) = crate::topic::validate_filter(filter) {
                f.error(
                    &format!("{p}.{key}[{i}]"),
                    format!("invalid topic filter: {e}"),
                );
            }
        }
    }
}

/// Checks a Kafka topic or key template: placeholders only from [`TEMPLATE_PLACEHOLDERS`];
/// for topics, literal text only from Kafka's topic alphabet.
pub fn check_template(t: &str, is_topic: bool) -> Result<(), String> {
    let what = if is_topic {
        "Kafka topic template"
    } else {
        "Kafka key template"
    };
    let expected = "expected text with placeholders {1}..{9} (topic levels), {topic}, {client_id}, {class}, {gateway}";
    if is_topic && t.is_empty() {
        return Err(format!("the {what} is empty; {expected}"));
    }
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        let (lit, after) = rest.split_at(open);
        check_literal(lit, is_topic, what)?;
        if after.starts_with('}') {
            return Err(format!("`{t}` has a `}}` without a `{{`; {expected}"));
        }
        let Some(close) = after.find('}') else {
            return Err(format!("`{t}` has a `{{` without a `}}`; {expected}"));
        };
        let name = &after[1..close];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "`{t}` uses an unknown placeholder `{{{name}}}`; {expected}"
            ));
        }
        rest = &after[close + 1..];
    }
    check_literal(rest, is_topic, what)?;
    if is_topic && t.len() > 249 {
        return Err(format!(
            "the {what} is longer than Kafka's 249-character topic limit"
        ));
    }
    Ok(())
}

fn check_literal(lit: &str, is_topic: bool, what: &str) -> Result<(), String> {
    if is_topic {
        if let Some(c) = lit
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "the {what} contains `{c}`, which Kafka does not allow in topic names; expected a-z, A-Z, 0-9, `.`, `_`, `-` and placeholders"
            ));
        }
    }
    Ok(())
}

fn world_writable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "{} is world-writable (mode {:04o}): anyone on this machine can change where data goes; run `chmod o-w {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordFile {
    #[serde(default)]
    user: Vec<UserConfig>,
}

fn load_password_file(path: &Path) -> Result<Vec<UserConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let name = path.display().to_string();
    let parsed: PasswordFile = toml::from_str(&text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let path = match (ImDocument::parse(text.as_str()), offset) {
            (Ok(doc), Some(off)) => diagnostics::path_at(&doc, off),
            _ => KeyPath::root(),
        };
        ConfigError::Invalid {
            file: name.clone(),
            problems: vec![Diagnostic {
                file: name.clone(),
                path,
                location: offset.map(|o| Location::from_offset(&text, o)),
                message: friendlier(e.message()),
            }],
        }
    })?;
    let mut f = Findings::default();
    for (i, u) in parsed.user.iter().enumerate() {
        check_user(&mut f, &format!("user[{i}]"), u);
    }
    if !f.errors.is_empty() {
        let doc = ImDocument::parse(text.as_str()).ok();
        let problems = f
            .errors
            .into_iter()
            .map(|(p, message)| Diagnostic {
                file: name.clone(),
                location: doc
                    .as_ref()
                    .and_then(|d| diagnostics::span_of(d, &p))
                    .map(|r| Location::from_offset(&text, r.start)),
                path: p,
                message,
            })
            .collect();
        return Err(ConfigError::Invalid {
            file: name,
            problems,
        });
    }
    Ok(parsed.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert!(check_template("ferry.{class}", true).is_ok());
        assert!(check_template("site-{gateway}.{1}.{2}", true).is_ok());
        assert!(check_template("{client_id}/{topic}", false).is_ok());
        assert!(check_template("", false).is_ok());
        assert!(check_template("", true).is_err());
        assert!(check_template("a/{class}", true)
            .unwrap_err()
            .contains("`/`"));
        assert!(check_template("{10}", true)
            .unwrap_err()
            .contains("unknown placeholder `{10}`"));
        assert!(check_template("{host}", false)
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(check_template("x{class", true)
            .unwrap_err()
            .contains("without a `}`"));
        assert!(check_template("x}", true)
            .unwrap_err()
            .contains("without a `{`"));
    }

    #[test]
    fn secrets_are_masked() {
        let mut m = BTreeMap::new();
        m.insert("sasl.password".to_string(), "hunter2".to_string());
        m.insert("ssl.key.password".to_string(), "pw".to_string());
        m.insert("security.protocol".to_string(), "SASL_SSL".to_string());
        let p = KafkaProperties::new(m);
        let dbg = format!("{p:?}");
        let json = serde_json::to_string(&p).unwrap();
        for out in [&dbg, &json] {
            assert!(!out.contains("hunter2") && !out.contains("\"pw\""), "{out}");
            assert!(out.contains("SASL_SSL"), "{out}");
        }
        assert_eq!(p.get("sasl.password"), Some("hunter2"));
    }

    #[test]
    fn typo_suggestions() {
        let m =
            "unknown field `segment_sise`, expected one of `data_dir`, `segment_size`, `min_free`";
        assert_eq!(suggest_field(m).as_deref(), Some("segment_size"));
        let m = "unknown field `colour`, expected one of `data_dir`, `segment_size`";
        assert_eq!(suggest_field(m), None);
        assert_eq!(suggest_field("missing field `name`"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn host_ports() {
        assert!(valid_host_port("kafka-1.example:9092"));
        assert!(valid_host_port("[::1]:9092"));
        assert!(!valid_host_port("kafka"));
        assert!(!valid_host_port("kafka:0"));
        assert!(!valid_host_port(":9092"));
    }
}
