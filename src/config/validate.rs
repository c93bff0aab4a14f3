//! Cross-field rules, run after parsing: each problem names its key path, and the loader turns
//! the path into a line number. Errors make the config unusable; warnings are reported and
//! the config is used.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use super::{ByteSize, Config, HumanDuration, KeyPath, UserConfig, TEMPLATE_PLACEHOLDERS};

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
        bound(
            &mut f,
            "storage.zero_ahead",
            s.zero_ahead.0,
            0,
            64 << 20,
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
        let ack = fw.ack_interval.get();
        if ack < std::time::Duration::from_millis(10) || ack > std::time::Duration::from_secs(60) {
            f.error(
                "forward.ack_interval",
                format!(
                    "{} is out of range; expected 10ms to 60s (default 200ms: shorter costs an fdatasync each time, longer re-sends more after a crash)",
                    fw.ack_interval
                ),
            );
        }
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
        // tracing-subscriber's filter parser panics on some non-ASCII input and takes minutes
        // on long span/field filters (found by fuzzing: fuzz/regressions/config/): only plain,
        // short `target=level` directives are accepted here.
        let level_ok = self.log.level.len() <= 256
            && self
                .log
                .level
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_:=,-. ".contains(c));
        if !level_ok {
            f.error(
                "log.level",
                "is not a log filter: expected a level like \"info\" or up to 256 characters of `target=level` directives like \"ferry=debug,rdkafka=warn\" (letters, digits, _ : = , - . only)",
            );
        } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            f.error(
                "log.level",
                format!("`{}` is not a log filter ({e}); expected a level like \"info\" or directives like \"ferry=debug,rdkafka=warn\"", self.log.level),
            );
        }
        f
    }
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

pub(super) fn check_user(f: &mut Findings, p: &str, u: &UserConfig) {
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
    fn host_ports() {
        assert!(valid_host_port("kafka-1.example:9092"));
        assert!(valid_host_port("[::1]:9092"));
        assert!(!valid_host_port("kafka"));
        assert!(!valid_host_port("kafka:0"));
        assert!(!valid_host_port(":9092"));
    }
}
