//! What `ferry reload` (and SIGHUP) may change in a running daemon.
//!
//! Live: classification rules, Kafka topic/key mappings, class priorities and shares,
//! throttles, windows, forwarding limits, MQTT users and ACLs, anonymous access, the log level.
//! Everything else is fixed when the daemon starts: the store is opened with its classes and
//! limits (class ids are positions in the config, so classes cannot be removed, renamed or
//! reordered), listeners are bound, the producer is built. A reload that changes any of those
//! is refused as a whole, so the running config never becomes a mix of old and new.

use super::Config;

/// One reason a new config cannot be applied without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartNeeded {
    /// The key that changed, as written in the file.
    pub key: String,
    pub old: String,
    pub new: String,
}

impl std::fmt::Display for RestartNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` changed ({} -> {}); this needs a restart (systemctl restart ferry)",
            self.key, self.old, self.new
        )
    }
}

impl Config {
    /// The changes from `self` (running) to `new` that a reload cannot apply. Empty: `new`
    /// can be applied live.
    pub fn restart_needed_for(&self, new: &Config) -> Vec<RestartNeeded> {
        let mut out = Vec::new();
        let mut cmp = |key: &str, old: String, new: String| {
            if old != new {
                out.push(RestartNeeded {
                    key: key.to_string(),
                    old,
                    new,
                });
            }
        };
        cmp(
            "gateway_id",
            self.gateway_id.clone(),
            new.gateway_id.clone(),
        );
        cmp("storage", show(&self.storage), show(&new.storage));
        let names = |c: &Config| {
            c.classes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (old_names, new_names) = (names(self), names(new));
        if old_names != new_names {
            cmp("class (names and order)", old_names, new_names);
        } else {
            for (i, (a, b)) in self.classes.iter().zip(&new.classes).enumerate() {
                cmp(
                    &format!("class[{i}].max_bytes"),
                    a.max_bytes.to_string(),
                    b.max_bytes.to_string(),
                );
                cmp(
                    &format!("class[{i}].max_age"),
                    a.max_age.map_or("none".into(), |d| d.to_string()),
                    b.max_age.map_or("none".into(), |d| d.to_string()),
                );
                cmp(
                    &format!("class[{i}].overflow"),
                    format!("{:?}", a.overflow),
                    format!("{:?}", b.overflow),
                );
            }
        }
        let (m, n) = (&self.mqtt, &new.mqtt);
        cmp("mqtt.listen", m.listen.clone(), n.listen.clone());
        cmp("mqtt.ack", format!("{:?}", m.ack), format!("{:?}", n.ack));
        cmp(
            "mqtt.max_packet_size",
            m.max_packet_size.to_string(),
            n.max_packet_size.to_string(),
        );
        cmp(
            "mqtt.max_connections",
            m.max_connections.to_string(),
            n.max_connections.to_string(),
        );
        cmp(
            "mqtt.max_inflight",
            m.max_inflight.to_string(),
            n.max_inflight.to_string(),
        );
        cmp(
            "mqtt.connect_timeout",
            m.connect_timeout.to_string(),
            n.connect_timeout.to_string(),
        );
        cmp(
            "mqtt.max_keep_alive",
            m.max_keep_alive.to_string(),
            n.max_keep_alive.to_string(),
        );
        cmp("mqtt.tls", show(&m.tls), show(&n.tls));
        cmp(
            "mqtt.local_fanout",
            show(&m.local_fanout),
            show(&n.local_fanout),
        );
        cmp("kafka", show(&self.kafka), show(&new.kafka));
        if self.kafka.properties != new.kafka.properties {
            // Masked in the text above, so say it plainly without showing values.
            cmp(
                "kafka.properties",
                "(old values)".into(),
                "(new values)".into(),
            );
        }
        cmp("control", show(&self.control), show(&new.control));
        cmp("metrics", show(&self.metrics), show(&new.metrics));
        cmp(
            "log.format",
            format!("{:?}", self.log.format),
            format!("{:?}", new.log.format),
        );
        out
    }
}

/// Compact one-line rendering of a section for the old/new values in a message (secrets are
/// masked by the types' own `Serialize`).
fn show<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}
