//! The control API: how the `ferry` CLI (or any operator tool) sees and steers a running daemon.
//!
//! ## Transport
//! A Unix stream socket (`[control] socket`, default `/run/ferry/ferry.sock`). Unix sockets
//! because the API is local by design: who may steer the gateway is decided by file
//! permissions (mode 0660, group `ferry`, see [`server`]), with no extra credentials to manage.
//!
//! ## Framing: JSON lines
//! Each request is one JSON object on one line; the server answers each with one JSON object on
//! one line, in order, and a connection may carry any number of requests. Lines are bounded
//! ([`MAX_REQUEST_BYTES`]): a longer line is answered with an error and the connection closed.
//!
//! ```text
//! -> {"v":1,"cmd":"status"}
//! <- {"v":1,"ok":true,"result":{ ...StatusReport... }}
//! -> {"v":1,"cmd":"purge","class":"telemetry","older_than_secs":604800}
//! <- {"v":1,"ok":true,"result":{"class":"telemetry","records":1200,"bytes":786432}}
//! -> {"v":1,"cmd":"pause","class":"nope"}
//! <- {"v":1,"ok":false,"error":"unknown class `nope` (see `ferry status` for the class names)"}
//! ```
//!
//! ## Versioning
//! `v` is [`PROTOCOL_VERSION`]. The server refuses other versions with an error naming the
//! version it speaks. Within a version, fields are only ever *added* (clients ignore unknown
//! fields, optional fields may be absent); renaming or removing a field, or changing its
//! meaning, needs a new version. The same types are what `--json` prints, so the CLI's JSON
//! output has the same stability promise.
//!
//! ## Commands (`cmd`) and results
//! | cmd                  | fields                                        | result              |
//! |----------------------|-----------------------------------------------|---------------------|
//! | `status`             |                                               | [`StatusReport`]    |
//! | `backlog`            | `depth`, `max_prefixes`                       | [`BacklogReport`]   |
//! | `peek`               | `class`, `from`, `limit`, `topic`?, `max_payload` | [`PeekReport`]  |
//! | `pause` / `resume`   | `class`? (absent = every class)               | [`SteerResult`]     |
//! | `drain`              | `for_secs` (0 = end the override)             | [`SteerResult`]     |
//! | `purge`              | `class`, `older_than_secs` or `"all":true`    | [`PurgeResult`]     |
//! | `dead_letter_list`   |                                               | [`DeadLetterList`]  |
//! | `dead_letter_show`   | `id`                                          | [`DeadLetterEntry`] |
//! | `dead_letter_replay` | `id`? (absent = all)                          | [`CountResult`]     |
//! | `dead_letter_drop`   | `id`? (absent = all)                          | [`CountResult`]     |
//! | `import`             | `path` (read by the daemon)                   | [`ImportReport`]    |
//! | `reload`             |                                               | [`SteerResult`]     |
//! | `version`            |                                               | [`VersionInfo`]     |
//!
//! The reports are computed by [`inspect`], which works on any [`crate::store::Store`]: the
//! daemon's own, or one opened read-only by the CLI when the daemon is not running. That is why
//! `ferry status` looks the same either way, minus the live parts (link, rates).

pub mod client;
pub mod inspect;
pub mod server;
pub mod transfer;

use serde::{Deserialize, Serialize};

/// The protocol version spoken by this build (`"v"` in every request and response).
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the server accepts (requests are small; this bounds a bad client).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Longest response line the client accepts (a peek of many large payloads is the worst case).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Largest `limit` a peek may ask for, and largest payload excerpt per record.
pub const MAX_PEEK_LIMIT: usize = 1000;
pub const MAX_PEEK_PAYLOAD: usize = 64 * 1024;

/// A request line: `{"v":1,"cmd":...,...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl Envelope {
    pub fn new(request: Request) -> Self {
        Envelope {
            v: PROTOCOL_VERSION,
            request,
        }
    }
}

/// Where `peek` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PeekFrom {
    /// The oldest waiting records, oldest first.
    #[default]
    Oldest,
    /// The newest records, oldest first among them.
    Newest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Backlog {
        depth: usize,
        #[serde(default = "default_max_prefixes")]
        max_prefixes: usize,
    },
    Peek {
        class: String,
        #[serde(default)]
        from: PeekFrom,
        limit: usize,
        #[serde(default)]
        topic: Option<String>,
        #[serde(default = "default_max_payload")]
        max_payload: usize,
    },
    Pause {
        #[serde(default)]
        class: Option<String>,
    },
    Resume {
        #[serde(default)]
        class: Option<String>,
    },
    Drain {
        for_secs: u64,
    },
    /// Exactly one of `older_than_secs` and `all: true`: a request that names neither is
    /// refused, so a client bug can never purge a whole class by omission.
    Purge {
        class: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    DeadLetterList,
    DeadLetterShow {
        id: u64,
    },
    DeadLetterReplay {
        #[serde(default)]
        id: Option<u64>,
    },
    DeadLetterDrop {
        #[serde(default)]
        id: Option<u64>,
    },
    Import {
        path: String,
    },
    Reload,
    Version,
}

fn default_max_prefixes() -> usize {
    inspect::DEFAULT_MAX_PREFIXES
}
fn default_max_payload() -> usize {
    1024
}

/// A response line. `result` is present when `ok`, `error` when not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(error: impl Into<String>) -> Self {
        Response {
            v: PROTOCOL_VERSION,
            ok: false,
            result: None,
            error: Some(error.into()),
        }
    }
}

/// `status`: the whole picture an operator needs first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Unix ms when the report was made (ages and ETAs are relative to it).
    pub now_ms: u64,
    /// `"daemon"` (live, over the socket) or `"data_dir"` (read-only inspection, daemon stopped).
    pub source: String,
    pub data_dir: String,
    pub version: String,
    /// Unix ms when the daemon started (absent for read-only inspection).
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Absent when no forwarder runs (read-only inspection, or Kafka not configured).
    #[serde(default)]
    pub forwarder: Option<ForwarderView>,
    /// Records and bytes appended per second over the last ~10 s (absent offline).
    #[serde(default)]
    pub ingest: Option<Rate>,
    /// The drain forecast for all classes together (absent without a forwarder).
    #[serde(default)]
    pub eta: Option<EtaView>,
    pub classes: Vec<ClassView>,
    /// Totals over all classes.
    pub total_records: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
}

/// The forwarder's live state, as far as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwarderView {
    /// `connecting`, `online`, `offline` or `stalled`.
    pub link: String,
    pub link_since_ms: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    pub window_open: bool,
    /// Unix ms of the next window change (open -> closed or closed -> open), when known.
    pub window_next_change_ms: Option<u64>,
    /// Unix ms until which an operator's `drain` overrides the window.
    pub drain_now_until_ms: Option<u64>,
    /// Throttle in force, bytes/s (absent: unlimited).
    pub throttle_bytes_per_sec: Option<u64>,
    pub all_paused: bool,
    /// Acknowledged by Kafka per second over the last few seconds.
    pub drain: Rate,
    pub sent_records: u64,
    pub acked_records: u64,
    pub dead_lettered: u64,
    pub resent_records: u64,
    pub in_flight_bytes: u64,
    pub producer_resets: u64,
    pub stalls: u64,
}

/// The drain forecast of `status` (see `forward::eta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtaView {
    /// Seconds until every class is empty (rounded up); absent when unknown (`total_note`
    /// says why).
    pub total_secs: Option<u64>,
    /// The same in milliseconds, for scripts that score short backlogs.
    #[serde(default)]
    pub total_ms: Option<u64>,
    pub total_note: Option<String>,
    /// Where the link rate came from: `throttle` (the configured rate in force), `measured`
    /// (unthrottled: the recent drain rate), `none` (nothing to send).
    pub basis: String,
    /// Throttle rate in force now (absent: unlimited).
    pub rate_bytes_per_sec: Option<u64>,
    /// Waiting bytes of all classes as the throttle meters them.
    pub wire_bytes: u64,
    /// Live ingest included in the forecast, same measure, bytes per second.
    pub ingest_wire_bytes_per_sec: f64,
    /// False while the link is not online: the forecast assumes it is.
    pub link_up: bool,
}

/// One class in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassView {
    pub name: String,
    /// Records waiting for delivery and their (uncompressed) bytes.
    pub records: u64,
    pub bytes: u64,
    /// Size of the class's segment files.
    pub disk_bytes: u64,
    pub oldest_seq: Option<u64>,
    /// Receive time of the oldest waiting record, and its age at `now_ms` in seconds.
    pub oldest_ts_ms: Option<u64>,
    pub oldest_age_secs: Option<u64>,
    pub newest_seq: u64,
    pub acked_seq: u64,
    /// Records removed without delivery, by reason, and their sum.
    pub dropped_max_bytes: u64,
    pub dropped_max_age: u64,
    pub dropped_purge: u64,
    pub dropped_corrupt: u64,
    pub dropped_total: u64,
    /// Appends refused since the daemon started (class full, disk headroom).
    pub refused: u64,
    /// Absent when no forwarder runs.
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub in_flight_records: Option<u64>,
    /// Bytes acknowledged per second for this class over the last ~10 s (absent offline).
    #[serde(default)]
    pub drain_bytes_per_sec: Option<f64>,
    /// Seconds until the class's backlog is delivered, forecast from the policy (window,
    /// throttle, priorities, shares) and live ingest; absent when there is no honest figure
    /// (`eta_note` says why) or no forwarder runs.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// The same forecast in milliseconds (`eta_secs` is rounded up to whole seconds).
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// Why `eta_secs` is absent (`paused`, unthrottled with no measured rate, ...).
    #[serde(default)]
    pub eta_note: Option<String>,
    /// The waiting bytes as the throttle meters them (Kafka payload + key + headers,
    /// uncompressed), estimated from a sample at the head of the backlog.
    #[serde(default)]
    pub wire_bytes: Option<u64>,
    /// Whether that ETA ends before the current window (or drain override) closes; absent when
    /// unknown (no ETA, window closed, or no known end).
    #[serde(default)]
    pub fits_window: Option<bool>,
}

/// `backlog`: the waiting records of every class grouped by MQTT topic prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacklogReport {
    pub now_ms: u64,
    pub source: String,
    pub depth: usize,
    pub classes: Vec<ClassBacklog>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassBacklog {
    pub class: String,
    pub records: u64,
    pub bytes: u64,
    pub oldest_ts_ms: Option<u64>,
    /// Largest prefixes first (by bytes), at most `max_prefixes`.
    pub prefixes: Vec<PrefixBacklog>,
    /// Records and bytes under prefixes not listed (beyond the cap).
    pub other_records: u64,
    pub other_bytes: u64,
    /// Distinct prefixes seen (counting stops at the tracking cap, see `prefixes_capped`).
    pub distinct_prefixes: u64,
    pub prefixes_capped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixBacklog {
    pub prefix: String,
    pub records: u64,
    pub bytes: u64,
    pub oldest_ts_ms: u64,
}

/// `peek`: decoded records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeekReport {
    pub class: String,
    pub from: PeekFrom,
    pub records: Vec<PeekRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeekRecord {
    pub seq: u64,
    pub timestamp_ms: u64,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub client_id: String,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub payload_bytes: u64,
    /// `json`, `text` (UTF-8) or `hex`: how `payload` is written.
    pub payload_encoding: String,
    /// The payload (or its first `max_payload` bytes) in `payload_encoding`.
    pub payload: String,
    pub payload_truncated: bool,
}

/// Result of pause, resume, drain and reload: what the daemon now does, in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteerResult {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurgeResult {
    pub class: String,
    pub records: u64,
    /// Bytes on disk freed.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountResult {
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    pub id: u64,
    pub class: String,
    pub seq: u64,
    pub dead_at_ms: u64,
    pub reason: String,
    pub mqtt_topic: String,
    pub payload_bytes: u64,
    pub received_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub entries: Vec<DeadLetterSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    pub info: DeadLetterSummary,
    pub record: PeekRecord,
}

/// `import`: what was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Gateway and class the file was exported from.
    pub gateway: String,
    pub class: String,
    pub records: u64,
    pub bytes: u64,
    /// Sequence range (in the exporting gateway's class) the file covered.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: String,
    pub protocol: u32,
}

impl VersionInfo {
    pub fn this_build() -> Self {
        VersionInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form() {
        let r = Envelope::new(Request::Purge {
            class: "telemetry".into(),
            older_than_secs: Some(604800),
            all: false,
        });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"v":1,"cmd":"purge","class":"telemetry","older_than_secs":604800}"#
        );
        let back: Envelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
        let st: Envelope = serde_json::from_str(r#"{"v":1,"cmd":"status"}"#).unwrap();
        assert_eq!(st.request, Request::Status);
        let p: Envelope = serde_json::from_str(r#"{"v":1,"cmd":"pause"}"#).unwrap();
        assert_eq!(p.request, Request::Pause { class: None });
    }

    #[test]
    fn responses_omit_the_absent_half() {
        let s = serde_json::to_string(&Response::err("boom")).unwrap();
        assert_eq!(s, r#"{"v":1,"ok":false,"error":"boom"}"#);
    }
}
