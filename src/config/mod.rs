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
//!
//! # Files
//! - `mod.rs`: the schema (one struct per section, each `Default` documented in the file), the
//!   loader ([`Config::load`], [`Config::from_str_with_name`]) and the conversions other parts
//!   use ([`Config::store_options`], [`Config::users`]).
//! - `units.rs`: [`ByteSize`], [`HumanDuration`], [`ByteRate`].
//! - `validate.rs`: the cross-field rules ([`Config::validate`]).
//! - `reload.rs`: which changes a running daemon can take ([`Config::restart_needed_for`]).
//! - `diagnostics.rs`: key paths, spans, and how a problem is printed:
//!
//! ```text
//! ferry: invalid configuration in /etc/ferry/ferry.toml (1 problem):
//! /etc/ferry/ferry.toml:10:13: `class[1].max_bytes`: `512XB` has an unknown unit `XB` (...); expected a size like "512MiB", ...
//!     |
//!  10 | max_bytes = "512XB"
//!     |             ^
//! ```

pub mod diagnostics;
mod reload;
pub mod units;
mod validate;

pub use reload::RestartNeeded;

use validate::check_user;
pub use validate::{check_template, Findings};

use std::collections::BTreeMap;
use std::fmt;
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
    /// How far the active segment is zeroed ahead of its data (0 = off): docs/storage.md.
    pub zero_ahead: ByteSize,
    pub commit: CommitConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("/var/lib/ferry"),
            segment_size: ByteSize::mib(64),
            compression_level: 1,
            compress_min: ByteSize::b(512),
            min_free: ByteSize::mib(256),
            zero_ahead: ByteSize::mib(2),
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
            max_delay: HumanDuration::ms(0),
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
    /// A separate TOML file holding only `[[mqtt.user]]` tables (what `ferry passwd --user`
    /// prints, so its output can be appended as is), so the main
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

/// One `[[mqtt.user]]`. The hash is shown as `"***"` wherever the config is printed
/// (`Serialize`, `Debug`): a leaked argon2 hash still invites an offline guessing attack.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// argon2 PHC string, as printed by `ferry passwd`.
    #[serde(serialize_with = "serialize_masked")]
    pub password_hash: String,
    /// Topic filters this user may publish to.
    #[serde(default = "all_topics")]
    pub publish: Vec<String>,
    /// Topic filters this user may subscribe to (local fan-out).
    #[serde(default = "all_topics")]
    pub subscribe: Vec<String>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password_hash", &MASK)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .finish()
    }
}

fn serialize_masked<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(MASK)
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
        // `sasl.oauthbearer.config` may carry a client secret inline (librdkafka docs).
        ["password", "secret", "key", "oauthbearer.config"]
            .iter()
            .any(|w| k.contains(w))
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
    /// How often acknowledged positions are persisted (each persist is an fdatasync); a
    /// crash re-sends at most this much drain plus what was in flight.
    pub ack_interval: HumanDuration,
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
            ack_interval: HumanDuration::ms(200),
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
        // Files named in the config are found next to it, wherever ferry is started from.
        if let Some(base) = cfg.base_dir.clone() {
            let resolve = |p: &mut Option<PathBuf>| {
                if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                    *p = Some(base.join(rel));
                }
            };
            resolve(&mut cfg.mqtt.password_file);
            if let Some(tls) = cfg.mqtt.tls.as_mut() {
                resolve(&mut tls.cert);
                resolve(&mut tls.key);
                resolve(&mut tls.client_ca);
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
        let doc = ImDocument::parse(text.as_str()).ok();
        for mut w in cfg.file_warnings(&name) {
            w.location = doc
                .as_ref()
                .and_then(|d| diagnostics::span_of(d, &w.path))
                .map(|r| Location::from_offset(&text, r.start));
            cfg.warnings.push(w);
        }
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
        o.zero_ahead_bytes = s.zero_ahead.0;
        o
    }

    /// Every MQTT user: `[[mqtt.user]]` plus the `[[mqtt.user]]` tables of `mqtt.password_file`
    /// (read now, so a reload sees changes).
    pub fn users(&self) -> Result<Vec<UserConfig>, ConfigError> {
        let mut users = self.mqtt.users.clone();
        if let Some(pf) = &self.mqtt.password_file {
            let from_file = load_password_file(pf)?;
            if let Some(dup) = from_file
                .iter()
                .find(|u| users.iter().any(|m| m.name == u.name))
            {
                let name = pf.display().to_string();
                return Err(ConfigError::Invalid {
                    file: name.clone(),
                    problems: vec![Diagnostic {
                        file: name,
                        path: KeyPath::parse("mqtt.user"),
                        location: None,
                        message: format!(
                            "user `{}` is also defined in the main config's [[mqtt.user]]; keep one of them",
                            dup.name
                        ),
                    }],
                });
            }
            users.extend(from_file);
        }
        Ok(users)
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
        ("expected a boolean", "expected true or false"),
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
    mqtt: PasswordFileMqtt,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PasswordFileMqtt {
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
    let mut names = std::collections::HashSet::new();
    for (i, u) in parsed.mqtt.user.iter().enumerate() {
        check_user(&mut f, &format!("mqtt.user[{i}]"), u);
        if !names.insert(u.name.as_str()) {
            f.errors.push((
                KeyPath::parse(&format!("mqtt.user[{i}].name")),
                format!("user `{}` is defined twice", u.name),
            ));
        }
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
    Ok(parsed.mqtt.user)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
