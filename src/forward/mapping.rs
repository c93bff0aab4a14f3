//! From a stored MQTT record to a Kafka record: topic, key, headers, timestamp.
//!
//! Each class has a Kafka topic template and an optional key template; classification rules can
//! override both for the MQTT topics their filter matches (the first matching rule wins, in
//! configuration order, the class's templates are the fallback). Templates are parsed once, when
//! the forwarder starts, so a typo is a configuration error at startup and not a dead letter at
//! 3 a.m.
//!
//! ```text
//! template      = { literal | placeholder }
//! placeholder   = "{1}" .. "{9}"   MQTT topic level (1-based; "site/line1/temp": {2} = "line1")
//!               | "{topic}" | "{client_id}" | "{class}" | "{gateway}"
//! literal "{{" and "}}" stand for "{" and "}"
//! ```
//!
//! Every Kafka record carries these headers (all values UTF-8):
//!
//! | header             | value                                                        |
//! |--------------------|--------------------------------------------------------------|
//! | `mqtt.topic`       | the MQTT topic                                               |
//! | `mqtt.qos`         | `0`, `1` or `2`                                              |
//! | `mqtt.retain`      | `true` / `false`                                             |
//! | `mqtt.client_id`   | the publishing client's id                                   |
//! | `ferry.gateway`    | the gateway id from the configuration                        |
//! | `ferry.class`      | the priority class                                           |
//! | `ferry.seq`        | `gateway/class/seq`: stable across re-sends, for deduplication |
//! | `ferry.received_at`| receive time at the gateway, ms since the Unix epoch         |
//! | `content-type`     | MQTT v5 content type, when present                           |
//! | *name*             | each MQTT v5 user property, in the order received            |
//!
//! The Kafka record timestamp is the gateway receive time (`CreateTime`), not the send time, so
//! a backlog drained after an outage keeps its real time line downstream.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use crate::store::{ClassId, StoredRecord};
use crate::topic::filter_matches;

/// Kafka's own limit on topic names (`Topic.MAX_NAME_LENGTH`).
const KAFKA_TOPIC_MAX_LEN: usize = 249;

/// Errors from parsing or applying a mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("template `{template}`: {what} (placeholders: {{1}}..{{9}}, {{topic}}, {{client_id}}, {{class}}, {{gateway}}; write {{{{ and }}}} for literal braces)")]
    BadTemplate { template: String, what: String },
    #[error("rule filter `{filter}` is not a valid MQTT topic filter: {what}")]
    BadFilter { filter: String, what: String },
    #[error("template `{template}` uses topic level {{{level}}} but MQTT topic `{topic}` has only {levels} level(s)")]
    MissingLevel {
        template: String,
        level: usize,
        topic: String,
        levels: usize,
    },
    #[error("template `{template}` produced `{topic}` for MQTT topic `{mqtt_topic}`, which is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-], not `.` or `..`)")]
    InvalidKafkaTopic {
        template: String,
        topic: String,
        mqtt_topic: String,
    },
    #[error("no mapping is configured for class id {0}")]
    UnknownClass(ClassId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Level(usize),
    Topic,
    ClientId,
    Class,
    Gateway,
}

/// A parsed topic or key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, MappingError> {
        let bad = |what: String| MappingError::BadTemplate {
            template: source.to_string(),
            what,
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(bad("unmatched `}`".into())),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(bad(format!("unclosed `{{{name}`"))),
                        }
                    }
                    let part = match name.as_str() {
                        "topic" => Part::Topic,
                        "client_id" => Part::ClientId,
                        "class" => Part::Class,
                        "gateway" => Part::Gateway,
                        n if n.len() == 1 && matches!(n.as_bytes()[0], b'1'..=b'9') => {
                            Part::Level(usize::from(n.as_bytes()[0] - b'0'))
                        }
                        n => return Err(bad(format!("unknown placeholder `{{{n}}}`"))),
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(part);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The rendering when it does not depend on the record (only literals, `{class}` and
    /// `{gateway}`), so it can be done once per class.
    fn render_fixed(&self, class: &str, gateway: &str) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Class => out.push_str(class),
                Part::Gateway => out.push_str(gateway),
                Part::Topic | Part::ClientId | Part::Level(_) => return None,
            }
        }
        Some(out)
    }

    /// Renders the template for one record, borrowing instead of allocating when the template
    /// is a single placeholder or literal (e.g. a key `{client_id}`).
    pub fn render_cow<'a>(
        &'a self,
        mqtt_topic: &'a str,
        client_id: &'a str,
        class: &'a str,
        gateway: &'a str,
    ) -> Result<Cow<'a, str>, MappingError> {
        if let [part] = self.parts.as_slice() {
            let s: &'a str = match part {
                Part::Literal(s) => s,
                Part::Topic => mqtt_topic,
                Part::ClientId => client_id,
                Part::Class => class,
                Part::Gateway => gateway,
                Part::Level(_) => {
                    return self
                        .render(mqtt_topic, client_id, class, gateway)
                        .map(Cow::Owned)
                }
            };
            return Ok(Cow::Borrowed(s));
        }
        self.render(mqtt_topic, client_id, class, gateway)
            .map(Cow::Owned)
    }

    /// Renders the template for one record.
    pub fn render(
        &self,
        mqtt_topic: &str,
        client_id: &str,
        class: &str,
        gateway: &str,
    ) -> Result<String, MappingError> {
        let mut out = String::with_capacity(self.source.len() + mqtt_topic.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Topic => out.push_str(mqtt_topic),
                Part::ClientId => out.push_str(client_id),
                Part::Class => out.push_str(class),
                Part::Gateway => out.push_str(gateway),
                Part::Level(n) => match mqtt_topic.split('/').nth(n - 1) {
                    Some(level) => out.push_str(level),
                    None => {
                        return Err(MappingError::MissingLevel {
                            template: self.source.clone(),
                            level: *n,
                            topic: mqtt_topic.to_string(),
                            levels: mqtt_topic.split('/').count(),
                        })
                    }
                },
            }
        }
        Ok(out)
    }
}

/// Configuration of one class's mapping (embedded in the ferry config file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassMappingConfig {
    /// Kafka topic template, e.g. `"ferry.{class}"` or `"plant.{2}"`.
    pub topic: String,
    /// Kafka key template; no key (round-robin/sticky partitioning) when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// Per-rule overrides, tried in order before the class's own templates.
    #[serde(default)]
    pub rules: Vec<RuleMappingConfig>,
}

/// An override for the MQTT topics matching `filter`; absent templates fall back to the class's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMappingConfig {
    pub filter: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// A topic template with its rendering done once when it does not depend on the record.
#[derive(Debug, Clone)]
struct TopicTemplate {
    template: Template,
    /// The rendered topic when it is the same for every record of the class and valid.
    fixed: Option<Arc<str>>,
}

impl TopicTemplate {
    fn new(template: Template, class: &str, gateway: &str) -> TopicTemplate {
        let fixed = template
            .render_fixed(class, gateway)
            .filter(|t| valid_kafka_topic(t))
            .map(Arc::from);
        TopicTemplate { template, fixed }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    filter: String,
    topic: Option<TopicTemplate>,
    key: Option<Template>,
}

#[derive(Debug, Clone)]
struct ClassMapping {
    name: String,
    topic: TopicTemplate,
    key: Option<Template>,
    rules: Vec<Rule>,
    /// The gateway id (the `ferry.gateway` header).
    gateway: String,
    /// `gateway/class/`, the part of `ferry.seq` before the sequence number.
    seq_prefix: String,
}

/// A Kafka record ready to be produced (owned; the payload is a zero-copy slice of the store's
/// read buffer; constant topics and header values are shared, not copied per record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub topic: Arc<str>,
    pub key: Option<String>,
    pub headers: Vec<(Cow<'static, str>, Bytes)>,
    pub timestamp_ms: i64,
    pub payload: Bytes,
}

impl KafkaRecord {
    /// Bytes this record puts on the wire, roughly: what the throttle and in-flight limit count.
    pub fn wire_size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.payload.len() + self.key.as_ref().map_or(0, |k| k.len()) + headers
    }
}

/// Where a record goes (see [`Mapper::route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub topic: Cow<'a, str>,
    pub key: Option<Cow<'a, str>>,
}

/// Maps records of every class; built once from the configuration.
#[derive(Debug, Clone)]
pub struct Mapper {
    gateway: String,
    classes: Vec<ClassMapping>,
}

impl Mapper {
    /// `classes[i]` is the mapping of store class id `i` as `(class name, config)`.
    pub fn new(
        gateway: impl Into<String>,
        classes: &[(String, ClassMappingConfig)],
    ) -> Result<Mapper, MappingError> {
        let gateway: String = gateway.into();
        let mut out = Vec::with_capacity(classes.len());
        for (name, cfg) in classes {
            let mut rules = Vec::with_capacity(cfg.rules.len());
            for r in &cfg.rules {
                crate::topic::validate_filter(&r.filter).map_err(|what| {
                    MappingError::BadFilter {
                        filter: r.filter.clone(),
                        what,
                    }
                })?;
                rules.push(Rule {
                    filter: r.filter.clone(),
                    topic: r
                        .topic
                        .as_deref()
                        .map(Template::parse)
                        .transpose()?
                        .map(|t| TopicTemplate::new(t, name, &gateway)),
                    key: r.key.as_deref().map(Template::parse).transpose()?,
                });
            }
            out.push(ClassMapping {
                name: name.clone(),
                topic: TopicTemplate::new(Template::parse(&cfg.topic)?, name, &gateway),
                key: cfg.key.as_deref().map(Template::parse).transpose()?,
                rules,
                gateway: gateway.clone(),
                seq_prefix: format!("{gateway}/{name}/"),
            });
        }
        Ok(Mapper {
            gateway,
            classes: out,
        })
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The stable id of a record, also sent as the `ferry.seq` header.
    pub fn record_id(&self, class: ClassId, seq: u64) -> String {
        let name = self.classes.get(class).map_or("?", |c| c.name.as_str());
        format!("{}/{}/{}", self.gateway, name, seq)
    }

    /// Where one stored record goes: its topic and key, borrowed from the mapping or the record
    /// where possible (no allocation for a constant topic and a key like `{client_id}`). An
    /// error here will never go away by retrying (the record's topic does not fit the
    /// templates): the caller dead-letters the record.
    pub fn route<'a>(
        &'a self,
        class: ClassId,
        stored: &'a StoredRecord,
    ) -> Result<Route<'a>, MappingError> {
        let cm = self
            .classes
            .get(class)
            .ok_or(MappingError::UnknownClass(class))?;
        let rec = &stored.record;
        let rule = cm
            .rules
            .iter()
            .find(|r| filter_matches(&r.filter, &rec.topic));
        let topic_t = rule.and_then(|r| r.topic.as_ref()).unwrap_or(&cm.topic);
        let key_t = rule.and_then(|r| r.key.as_ref()).or(cm.key.as_ref());
        let topic: Cow<'a, str> = match &topic_t.fixed {
            Some(t) => Cow::Borrowed(&**t),
            None => {
                let topic =
                    topic_t
                        .template
                        .render(&rec.topic, &rec.client_id, &cm.name, &self.gateway)?;
                if !valid_kafka_topic(&topic) {
                    return Err(MappingError::InvalidKafkaTopic {
                        template: topic_t.template.as_str().to_string(),
                        topic,
                        mqtt_topic: rec.topic.clone(),
                    });
                }
                Cow::Owned(topic)
            }
        };
        let key = key_t
            .map(|t| t.render_cow(&rec.topic, &rec.client_id, &cm.name, &self.gateway))
            .transpose()?;
        Ok(Route { topic, key })
    }

    /// The number of headers [`Mapper::for_each_header`] produces for `stored`.
    pub fn header_count(stored: &StoredRecord) -> usize {
        let rec = &stored.record;
        8 + usize::from(rec.content_type.is_some()) + rec.user_properties.len()
    }

    /// Calls `f(name, value)` for each Kafka header of `stored`, in order (see the module
    /// documentation), without allocating (unless the gateway and class names together exceed
    /// 200 bytes). [`Mapper::map`] and the forwarder's send path both use it, so the headers
    /// produced and the bytes metered are the same.
    pub fn for_each_header(
        &self,
        class: ClassId,
        stored: &StoredRecord,
        mut f: impl FnMut(&str, &[u8]),
    ) -> Result<(), MappingError> {
        let cm = self
            .classes
            .get(class)
            .ok_or(MappingError::UnknownClass(class))?;
        let rec = &stored.record;
        f("mqtt.topic", rec.topic.as_bytes());
        let mut qos_digits = itoa::Buffer::new();
        f("mqtt.qos", qos_digits.format(rec.qos).as_bytes());
        f("mqtt.retain", if rec.retain { b"true" } else { b"false" });
        f("mqtt.client_id", rec.client_id.as_bytes());
        f("ferry.gateway", cm.gateway.as_bytes());
        f("ferry.class", cm.name.as_bytes());
        // An imported record (`ferry import`) keeps the id it had at its origin gateway, so
        // the same message moved on removable media and sent twice deduplicates downstream.
        // Devices cannot set `ferry.*` properties (ingest strips them).
        match rec
            .user_properties
            .iter()
            .find(|(k, _)| k == crate::control::transfer::ORIGIN_PROPERTY)
        {
            Some((_, v)) => f("ferry.seq", v.as_bytes()),
            None => {
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(stored.seq).as_bytes();
                let prefix = cm.seq_prefix.as_bytes();
                let len = prefix.len() + digits.len();
                let mut stack = [0u8; 224];
                if len <= stack.len() {
                    stack[..prefix.len()].copy_from_slice(prefix);
                    stack[prefix.len()..len].copy_from_slice(digits);
                    f("ferry.seq", &stack[..len]);
                } else {
                    let mut id = Vec::with_capacity(len);
                    id.extend_from_slice(prefix);
                    id.extend_from_slice(digits);
                    f("ferry.seq", &id);
                }
            }
        }
        let mut digits = itoa::Buffer::new();
        f(
            "ferry.received_at",
            digits.format(rec.timestamp_ms).as_bytes(),
        );
        if let Some(ct) = &rec.content_type {
            f("content-type", ct.as_bytes());
        }
        for (k, v) in &rec.user_properties {
            f(k, v.as_bytes());
        }
        Ok(())
    }

    /// [`KafkaRecord::wire_size`] of `stored` routed as `route`, without building the record.
    pub fn wire_size(
        &self,
        class: ClassId,
        stored: &StoredRecord,
        route: &Route<'_>,
    ) -> Result<usize, MappingError> {
        let cm = self
            .classes
            .get(class)
            .ok_or(MappingError::UnknownClass(class))?;
        Ok(stored.record.payload.len()
            + route.key.as_ref().map_or(0, |k| k.len())
            + Self::headers_size(cm, stored))
    }

    /// The bytes of the headers [`Mapper::for_each_header`] produces for `stored` (names and
    /// values), counted without formatting them: this runs once per record on the send path
    /// to size throttle runs, the formatting once more when the record is produced.
    fn headers_size(cm: &ClassMapping, stored: &StoredRecord) -> usize {
        const FIXED_NAMES: usize = "mqtt.topic".len()
            + "mqtt.qos".len()
            + "mqtt.retain".len()
            + "mqtt.client_id".len()
            + "ferry.gateway".len()
            + "ferry.class".len()
            + "ferry.seq".len()
            + "ferry.received_at".len();
        let rec = &stored.record;
        let mut n = FIXED_NAMES
            + rec.topic.len()
            + decimal_len(u64::from(rec.qos))
            + if rec.retain { 4 } else { 5 }
            + rec.client_id.len()
            + cm.gateway.len()
            + cm.name.len()
            + decimal_len(rec.timestamp_ms);
        let mut origin = None;
        for (k, v) in &rec.user_properties {
            n += k.len() + v.len();
            if origin.is_none() && k == crate::control::transfer::ORIGIN_PROPERTY {
                origin = Some(v.len());
            }
        }
        n += origin.unwrap_or_else(|| cm.seq_prefix.len() + decimal_len(stored.seq));
        if let Some(ct) = &rec.content_type {
            n += "content-type".len() + ct.len();
        }
        n
    }

    /// The Kafka timestamp of `stored`: its receive time. Receive times beyond i64 ms are not
    /// real clocks; they are clamped instead of wrapping.
    pub fn timestamp_ms(stored: &StoredRecord) -> i64 {
        i64::try_from(stored.record.timestamp_ms).unwrap_or(i64::MAX)
    }

    /// Maps one stored record into an owned [`KafkaRecord`] (for inspection and tests; the
    /// forwarder sends from [`Mapper::route`] and [`Mapper::for_each_header`] directly). An
    /// error here will never go away by retrying: the caller dead-letters the record.
    pub fn map(&self, class: ClassId, stored: &StoredRecord) -> Result<KafkaRecord, MappingError> {
        let route = self.route(class, stored)?;
        let mut headers: Vec<(Cow<'static, str>, Bytes)> =
            Vec::with_capacity(Self::header_count(stored));
        self.for_each_header(class, stored, |k, v| {
            headers.push((Cow::Owned(k.to_string()), Bytes::copy_from_slice(v)))
        })?;
        Ok(KafkaRecord {
            topic: Arc::from(route.topic.as_ref()),
            key: route.key.map(Cow::into_owned),
            headers,
            timestamp_ms: Self::timestamp_ms(stored),
            payload: stored.record.payload.clone(),
        })
    }
}

/// Digits of `v` in decimal (what `itoa` writes for it).
fn decimal_len(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Kafka's topic name rule: 1..=249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_kafka_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= KAFKA_TOPIC_MAX_LEN
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Record;
    use bytes::Bytes;

    fn stored(topic: &str) -> StoredRecord {
        StoredRecord {
            seq: 42,
            logical_end: 1000,
            record: Record {
                timestamp_ms: 1_700_000_000_123,
                topic: topic.into(),
                qos: 1,
                retain: false,
                client_id: "plc-7".into(),
                user_properties: vec![("unit".into(), "C".into())],
                content_type: Some("application/json".into()),
                payload: Bytes::from_static(b"21.5"),
            },
        }
    }

    fn mapper() -> Mapper {
        Mapper::new(
            "gw1",
            &[(
                "telemetry".into(),
                ClassMappingConfig {
                    topic: "ferry.{class}".into(),
                    key: Some("{client_id}".into()),
                    rules: vec![RuleMappingConfig {
                        filter: "site/+/alarm/#".into(),
                        topic: Some("alarms.{2}".into()),
                        key: Some("{gateway}:{2}:{{x}}".into()),
                    }],
                },
            )],
        )
        .unwrap()
    }

    #[test]
    fn wire_size_counts_exactly_the_headers_sent() {
        let m = mapper();
        let mut cases = Vec::new();
        for (seq, ts, qos, retain) in [
            (0u64, 0u64, 0u8, false),
            (9, 9, 1, true),
            (10, 1_700_000_000_123, 2, false),
            (u64::MAX, u64::MAX, 2, true),
        ] {
            let mut s = stored("site/l1/temp");
            s.seq = seq;
            s.record.timestamp_ms = ts;
            s.record.qos = qos;
            s.record.retain = retain;
            cases.push(s.clone());
            s.record.content_type = None;
            s.record.user_properties.clear();
            cases.push(s.clone());
            s.record.user_properties = vec![
                (
                    crate::control::transfer::ORIGIN_PROPERTY.into(),
                    "gw0/telemetry/77".into(),
                ),
                ("unit".into(), "C".into()),
            ];
            cases.push(s);
        }
        for s in &cases {
            let route = m.route(0, s).unwrap();
            let mut formatted = 0usize;
            m.for_each_header(0, s, |k, v| formatted += k.len() + v.len())
                .unwrap();
            let expected =
                s.record.payload.len() + route.key.as_ref().map_or(0, |k| k.len()) + formatted;
            assert_eq!(m.wire_size(0, s, &route).unwrap(), expected, "{s:?}");
            assert_eq!(m.map(0, s).unwrap().wire_size(), expected, "{s:?}");
        }
    }

    #[test]
    fn templates_parse_and_render() {
        let t = Template::parse("a.{1}-{3}.{topic}{{}}").unwrap();
        assert_eq!(t.render("x/y/z", "c", "k", "g").unwrap(), "a.x-z.x/y/z{}");
        for bad in ["{0}", "{10}", "{nope}", "{1", "x}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let e = Template::parse("{4}").unwrap().render("a/b", "", "", "");
        assert!(matches!(
            e,
            Err(MappingError::MissingLevel {
                level: 4,
                levels: 2,
                ..
            })
        ));
    }

    #[test]
    fn imported_record_keeps_its_origin_id() {
        let m = mapper();
        let mut st = stored("site/line1/temp");
        st.record
            .user_properties
            .push(("ferry.origin.seq".into(), "site-b/telemetry/7".into()));
        let r = m.map(0, &st).unwrap();
        let id = r.headers.iter().find(|(k, _)| k == "ferry.seq").unwrap();
        assert_eq!(&id.1[..], b"site-b/telemetry/7");
    }

    #[test]
    fn class_default_and_rule_override() {
        let m = mapper();
        let r = m.map(0, &stored("site/line1/temp")).unwrap();
        assert_eq!(&*r.topic, "ferry.telemetry");
        assert_eq!(r.key.as_deref(), Some("plc-7"));
        assert_eq!(r.timestamp_ms, 1_700_000_000_123);
        let h = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(h("ferry.seq").as_deref(), Some("gw1/telemetry/42"));
        assert_eq!(h("mqtt.qos").as_deref(), Some("1"));
        assert_eq!(h("mqtt.retain").as_deref(), Some("false"));
        assert_eq!(h("ferry.received_at").as_deref(), Some("1700000000123"));
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        assert_eq!(h("unit").as_deref(), Some("C"));

        let r = m.map(0, &stored("site/line2/alarm/fire")).unwrap();
        assert_eq!(&*r.topic, "alarms.line2");
        assert_eq!(r.key.as_deref(), Some("gw1:line2:{x}"));
    }

    #[test]
    fn unmappable_records_are_errors() {
        let m = mapper();
        // `{2}` on a one-level topic.
        let bad = Mapper::new(
            "gw1",
            &[(
                "c".into(),
                ClassMappingConfig {
                    topic: "t.{2}".into(),
                    key: None,
                    rules: vec![],
                },
            )],
        )
        .unwrap();
        assert!(bad.map(0, &stored("one")).is_err());
        // A level with characters Kafka refuses.
        let r = Mapper::new(
            "gw1",
            &[(
                "c".into(),
                ClassMappingConfig {
                    topic: "t.{1}".into(),
                    key: None,
                    rules: vec![],
                },
            )],
        )
        .unwrap()
        .map(0, &stored("a b/x"));
        assert!(matches!(r, Err(MappingError::InvalidKafkaTopic { .. })));
        assert!(matches!(
            m.map(5, &stored("a")),
            Err(MappingError::UnknownClass(5))
        ));
    }
}
