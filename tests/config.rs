//! The config loader against real files: every error names the key, the line and what is
//! expected; the embedded default is valid and is what the store gets.

use std::time::Duration;

use ferry::config::{ByteRate, ByteSize, Config, ConfigError, HumanDuration, DEFAULT_CONFIG_TOML};
use ferry::store::Overflow;

/// Parses `text`, expects exactly one problem and returns its rendered message, after checking
/// the key path and the line it names.
fn one_error(text: &str, path: &str, line: usize) -> String {
    let err = Config::from_str_with_name(text, "test.toml").unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{err}");
    let p = &problems[0];
    assert_eq!(p.path.to_string(), path, "{err}");
    assert_eq!(p.location.as_ref().map(|l| l.line), Some(line), "{err}");
    let shown = err.to_string();
    assert!(shown.contains(&format!("test.toml:{line}:")), "{shown}");
    assert!(shown.contains(&format!("`{path}`")), "{shown}");
    shown
}

const CLASSES: &str = r#"
[[class]]
name = "a"
priority = 2
max_bytes = "1GiB"

[[class]]
name = "b"
priority = 1
max_bytes = "512MiB"
"#;

#[test]
fn default_config_parses_and_matches_the_code_defaults() {
    let file = Config::default_config();
    assert!(
        file.warnings()
            .iter()
            .all(|w| w.message.contains("anonymous")),
        "{:?}",
        file.warnings()
    );
    // The file documents the defaults: a config with only the rules removed equals the
    // all-defaults config (rules are the one thing the file adds as an example).
    let empty = Config::from_str_with_name("", "empty").unwrap();
    let mut file_without_rules = file.clone();
    file_without_rules.classify.rules.clear();
    assert_eq!(file_without_rules, empty);
    assert_eq!(file.classify.rules.len(), 2);
    assert_eq!(file.classes.len(), 3);
    let critical = &file.classes[0];
    assert_eq!(critical.name, "critical");
    assert_eq!(critical.overflow, Overflow::Reject);
    assert_eq!(critical.max_bytes, ByteSize::gib(1));
    assert_eq!(file.classes[1].overflow, Overflow::DropOldest);
    assert_eq!(file.classes[2].name, "bulk");
    assert_eq!(file.forward.rate, ByteRate::Unlimited);
    assert_eq!(file.storage.commit.max_delay, HumanDuration::ms(0));
}

#[test]
fn every_effective_key_is_documented_in_the_default_file() {
    // Every key the effective config prints must appear in config/ferry.toml (set or in a
    // comment), so operators can find it.
    let mut cfg = Config::default_config();
    cfg.mqtt.password_file = Some("/x".into());
    cfg.mqtt.tls = Some(Default::default());
    cfg.forward.daily_budget = Some(ByteSize::gib(1));
    cfg.classes[0].rate = Some(ByteRate::Unlimited);
    cfg.classes[0].max_age = Some(HumanDuration::secs(1));
    let json = serde_json::to_value(&cfg).unwrap();
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    keys(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    keys(&json, &mut all);
    for k in all {
        assert!(
            DEFAULT_CONFIG_TOML.contains(&format!("{k} ="))
                || DEFAULT_CONFIG_TOML.contains(&format!("[{k}]"))
                || DEFAULT_CONFIG_TOML.contains(&format!(".{k}]")),
            "key `{k}` is not documented in config/ferry.toml"
        );
    }
}

#[test]
fn store_options_follow_the_config() {
    let cfg = Config::default_config();
    let o = cfg.store_options();
    assert_eq!(o.data_dir, std::path::PathBuf::from("/var/lib/ferry"));
    assert_eq!(o.segment_bytes, 64 << 20);
    assert_eq!(o.commit_max_delay, Duration::ZERO);
    assert_eq!(o.commit_max_bytes, 1 << 20);
    assert_eq!(o.compression_level, 1);
    assert_eq!(o.compress_min_bytes, 512);
    assert_eq!(o.min_free_bytes, 256 << 20);
    assert_eq!(o.zero_ahead_bytes, 2 << 20);
    assert!(!o.read_only);
    let names: Vec<_> = o.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["critical", "telemetry", "bulk"]);
    assert_eq!(o.classes[0].max_bytes, 1 << 30);
    assert_eq!(o.classes[0].overflow, Overflow::Reject);
    assert_eq!(o.classes[0].max_age, None);
    assert_eq!(o.classes[1].max_age, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(o.classes[2].overflow, Overflow::DropOldest);
    assert_eq!(cfg.class("bulk").map(|(id, _)| id), Some(2));
}

#[test]
fn unknown_key_names_key_line_and_the_known_keys() {
    let text = "[storage]\ndata_dir = \"/tmp/x\"\nsegment_sise = \"1MiB\"\n";
    let msg = one_error(text, "storage.segment_sise", 3);
    assert!(msg.contains("unknown field `segment_sise`"), "{msg}");
    assert!(msg.contains("did you mean `segment_size`?"), "{msg}");
}

#[test]
fn unknown_top_level_section() {
    let msg = one_error("gateway_id = \"g\"\n\n[kafak]\nx = 1\n", "kafak", 3);
    assert!(msg.contains("unknown field `kafak`"), "{msg}");
}

#[test]
fn bad_size_names_class_index_line_and_expectation() {
    let text = CLASSES.replace("\"512MiB\"", "\"512XB\"");
    let msg = one_error(&text, "class[1].max_bytes", 10);
    assert!(msg.contains("unknown unit `XB`"), "{msg}");
    assert!(msg.contains("expected a size like \"512MiB\""), "{msg}");
}

#[test]
fn zero_ahead_can_be_off_and_is_bounded() {
    let cfg = Config::from_str_with_name("[storage]\nzero_ahead = \"0\"\n", "t").unwrap();
    assert_eq!(cfg.store_options().zero_ahead_bytes, 0);
    let msg = one_error(
        "[storage]\nzero_ahead = \"1GiB\"\n",
        "storage.zero_ahead",
        2,
    );
    assert!(msg.contains("64MiB"), "{msg}");
}

#[test]
fn bad_duration() {
    let text = "[storage.commit]\nmax_delay = \"10\"\n";
    let msg = one_error(text, "storage.commit.max_delay", 2);
    assert!(msg.contains("expected a duration like"), "{msg}");
    let text = "[mqtt]\nconnect_timeout = 10\n";
    let msg = one_error(text, "mqtt.connect_timeout", 2);
    assert!(msg.contains("no unit"), "{msg}");
}

#[test]
fn bad_rate_and_bad_enum() {
    let msg = one_error("[forward]\nrate = \"fast\"\n", "forward.rate", 2);
    assert!(msg.contains("expected a rate like \"64KiB/s\""), "{msg}");
    let text = format!("{CLASSES}overflow = \"block\"\n");
    let msg = one_error(&text, "class[1].overflow", 11);
    assert!(
        msg.contains("drop_oldest") && msg.contains("reject"),
        "{msg}"
    );
}

#[test]
fn unknown_class_in_a_rule() {
    let text = format!(
        "{CLASSES}\n[classify]\ndefault_class = \"a\"\n\n[[classify.rule]]\nfilter = \"x/#\"\nclass = \"a\"\n\n[[classify.rule]]\nfilter = \"y/#\"\nclass = \"c\"\n"
    );
    let msg = one_error(&text, "classify.rule[1].class", 21);
    assert!(msg.contains("unknown class `c`"), "{msg}");
    assert!(msg.contains("expected one of `a`, `b`"), "{msg}");
}

#[test]
fn unknown_default_class_without_a_classify_section() {
    // The default `default_class` is "telemetry"; with other classes that is an error, and it
    // points at the key even though the file never wrote it (no line then).
    let err = Config::from_str_with_name(CLASSES, "t.toml").unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.path.to_string(), "classify.default_class");
    assert!(p.message.contains("unknown class `telemetry`"), "{err}");
    assert!(
        p.message
            .contains("not in the file, so its default applies"),
        "{err}"
    );
}

#[test]
fn bad_filter() {
    let text = format!(
        "{CLASSES}\n[classify]\ndefault_class = \"b\"\n[[classify.rule]]\nfilter = \"a/#/b\"\nclass = \"a\"\n"
    );
    let msg = one_error(&text, "classify.rule[0].filter", 15);
    assert!(msg.contains("invalid topic filter"), "{msg}");
    assert!(msg.contains("`#` must be the whole last level"), "{msg}");
}

#[test]
fn several_validation_problems_are_all_reported() {
    let text = r#"
[storage]
segment_size = "1GiB"

[[class]]
name = "a"
priority = 1
max_bytes = "1GiB"
kafka_topic = "x/{oops}"

[[class]]
name = "a"
priority = 1
max_bytes = "4GiB"
min_share = 1.5

[classify]
default_class = "a"

[mqtt]
listen = "localhost:1883"

[mqtt.tls]
cert = "/c.pem"
"#;
    let err = Config::from_str_with_name(text, "multi.toml").unwrap_err();
    let paths: Vec<String> = err.problems().iter().map(|p| p.path.to_string()).collect();
    for want in [
        "class[0].max_bytes",
        "class[0].kafka_topic",
        "class[1].name",
        "class[1].min_share",
        "mqtt.listen",
        "mqtt.tls",
    ] {
        assert!(paths.iter().any(|p| p == want), "missing {want} in {err}");
    }
    let shown = err.to_string();
    assert!(
        shown.starts_with("invalid configuration in multi.toml ("),
        "{shown}"
    );
    assert!(shown.contains("multi.toml:8:"), "max_bytes line: {shown}");
    assert!(shown.contains("at least 2GiB"), "{shown}");
    assert!(
        shown.contains("`cert` and `key` must be given together"),
        "{shown}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let err = Config::from_str_with_name("[storage\ndata_dir = 1\n", "s.toml").unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.location.as_ref().map(|l| l.line), Some(1), "{err}");
}

#[test]
fn wrong_type_is_said_in_words() {
    let msg = one_error(
        "[mqtt]\nmax_connections = \"many\"\n",
        "mqtt.max_connections",
        2,
    );
    assert!(msg.contains("expected a whole number"), "{msg}");
}

#[test]
fn missing_required_class_key() {
    let text = "[[class]]\nname = \"a\"\nmax_bytes = \"1GiB\"\n";
    let err = Config::from_str_with_name(text, "m.toml").unwrap_err();
    let p = &err.problems()[0];
    assert!(p.message.contains("missing field `priority`"), "{err}");
    assert_eq!(p.path.to_string(), "class[0]", "{err}");
}

#[test]
fn effective_config_round_trips_in_human_units_and_masks_secrets() {
    let text = format!(
        "{CLASSES}\n[classify]\ndefault_class = \"a\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"security.protocol\" = \"SASL_SSL\"\n"
    );
    let cfg = Config::from_str_with_name(&text, "r.toml").unwrap();
    assert_eq!(cfg.kafka.properties.get("sasl.password"), Some("hunter2"));
    let out = cfg.to_toml_string();
    assert!(out.contains("segment_size = \"64MiB\""), "{out}");
    assert!(out.contains("max_delay = \"0s\""), "{out}");
    assert!(out.contains("max_bytes = \"512MiB\""), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("\"sasl.password\" = \"***\""), "{out}");
    assert!(!format!("{cfg:?}").contains("hunter2"));
    assert!(!serde_json::to_string(&cfg).unwrap().contains("hunter2"));
    let back = Config::from_str_with_name(&out, "back.toml").unwrap();
    let mut expected = cfg.clone();
    expected.kafka.properties = back.kafka.properties.clone();
    assert_eq!(back, expected);
    // Round trip of the default too.
    let d = Config::default_config();
    let back = Config::from_str_with_name(&d.to_toml_string(), "d").unwrap();
    assert_eq!(back, d);
}

#[test]
fn reserved_kafka_property_is_refused() {
    let msg = one_error(
        "[kafka.properties]\n\"linger.ms\" = \"50\"\n",
        "kafka.properties.\"linger.ms\"",
        2,
    );
    assert!(msg.contains("use `kafka.linger` instead"), "{msg}");
}

#[test]
fn anonymous_warning_only_off_loopback() {
    let c = Config::from_str_with_name("[mqtt]\nlisten = \"127.0.0.1:1883\"\n", "l").unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = Config::from_str_with_name("[mqtt]\nlisten = \"0.0.0.0:1883\"\n", "l").unwrap();
    assert_eq!(c.warnings().len(), 1);
    assert_eq!(c.warnings()[0].path.to_string(), "mqtt.allow_anonymous");
    assert!(c.warnings()[0].message.contains("not a loopback"));
}

#[test]
fn load_reads_files_and_warns_about_world_writable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ferry-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ferry.toml");
    std::fs::write(
        &path,
        "[mqtt]\nlisten = \"127.0.0.1:1883\"\npassword_file = \"users.toml\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let hash =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$4+s1AuHbmCNb9pg5M5LCmvK1CtB8kRMBgvRJ8JSMiWY";
    std::fs::write(
        dir.join("users.toml"),
        format!("[[mqtt.user]]\nname = \"u1\"\npassword_hash = \"{hash}\"\n"),
    )
    .unwrap();
    let cfg = Config::load(&path).unwrap();
    assert!(
        cfg.warnings()
            .iter()
            .any(|w| w.message.contains("world-writable")),
        "{:?}",
        cfg.warnings()
    );
    assert_eq!(
        cfg.mqtt.password_file.as_deref(),
        Some(dir.join("users.toml").as_path())
    );
    let users = cfg.users().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "u1");
    assert_eq!(users[0].publish, ["#"]);

    std::fs::write(
        dir.join("users.toml"),
        "[[mqtt.user]]\nname = \"u1\"\npassword_hash = \"plain\"\n",
    )
    .unwrap();
    let err = cfg.users().unwrap_err();
    assert!(err.to_string().contains("users.toml:3:"), "{err}");
    assert!(err.to_string().contains("ferry passwd --user u1"), "{err}");

    let missing = Config::load(dir.join("nope.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_rules() {
    let base = "[mqtt]\nlisten = \"127.0.0.1:1883\"\n[mqtt.tls]\nlisten = \"127.0.0.1:8883\"\n";
    let msg = one_error(
        &format!("{base}cert = \"/c\"\nkey = \"/k\"\nrequire_client_cert = true\n"),
        "mqtt.tls.require_client_cert",
        7,
    );
    assert!(msg.contains("needs `client_ca`"), "{msg}");
    let msg = one_error(&format!("{base}key = \"/k\"\n"), "mqtt.tls", 3);
    assert!(
        msg.contains("`cert` and `key` must be given together"),
        "{msg}"
    );
    let msg = one_error(
        "[mqtt.tls]\nlisten = \"0.0.0.0:1883\"\ncert = \"/c\"\nkey = \"/k\"\n",
        "mqtt.tls.listen",
        2,
    );
    assert!(msg.contains("is also mqtt.listen"), "{msg}");

    // Loading from a file also says when the certificate files are missing (a warning: the
    // file may be checked before the certificates are deployed).
    let dir = std::env::temp_dir().join(format!("ferry-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tls.toml");
    std::fs::write(
        &path,
        format!("{base}cert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n"),
    )
    .unwrap();
    let cfg = Config::load(&path).unwrap();
    let paths: Vec<String> = cfg.warnings().iter().map(|w| w.path.to_string()).collect();
    assert_eq!(
        paths,
        ["mqtt.tls.cert", "mqtt.tls.key"],
        "{:?}",
        cfg.warnings()
    );
    assert_eq!(cfg.warnings()[0].location.as_ref().map(|l| l.line), Some(5));

    // Relative certificate paths are found next to the config file.
    std::fs::write(dir.join("c.pem"), "x").unwrap();
    std::fs::write(dir.join("k.pem"), "x").unwrap();
    std::fs::write(&path, format!("{base}cert = \"c.pem\"\nkey = \"k.pem\"\n")).unwrap();
    let cfg = Config::load(&path).unwrap();
    assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    let cert = cfg.mqtt.tls.as_ref().unwrap().cert.clone();
    assert_eq!(cert, Some(dir.join("c.pem")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn limits_and_cross_section_rules() {
    let msg = one_error(
        "[storage]\ncompression_level = 22\n",
        "storage.compression_level",
        2,
    );
    assert!(msg.contains("expected 0 (off) to 19"), "{msg}");
    let msg = one_error(
        "[mqtt]\nmax_packet_size = \"1MiB\"\n",
        "mqtt.max_packet_size",
        2,
    );
    assert!(msg.contains("storage.commit.max_batch"), "{msg}");
    let msg = one_error(
        "[forward]\nbackoff_min = \"2m\"\n",
        "forward.backoff_max",
        1,
    );
    assert!(msg.contains("less than forward.backoff_min (2m)"), "{msg}");
    let msg = one_error(
        "[forward]\nack_interval = \"1ms\"\n",
        "forward.ack_interval",
        2,
    );
    assert!(msg.contains("expected 10ms to 60s"), "{msg}");
    let msg = one_error("[log]\nlevel = \"loud=[\"\n", "log.level", 2);
    assert!(msg.contains("not a log filter"), "{msg}");
    let msg = one_error("gateway_id = \"site 1/a\"\n", "gateway_id", 1);
    assert!(msg.contains("not a valid gateway id"), "{msg}");
    let text =
        "[[mqtt.user]]\nname = \"u\"\npassword_hash = \"secret\"\npublish = [\"a/#\", \"b/#/c\"]\n";
    let err = Config::from_str_with_name(text, "u.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("u.toml:3:17: `mqtt.user[0].password_hash`"),
        "{err}"
    );
    assert!(err.contains("ferry passwd --user u"), "{err}");
    assert!(
        err.contains("u.toml:4:19: `mqtt.user[0].publish[1]`: invalid topic filter"),
        "{err}"
    );
}

/// The real store opened with what the config says: class ids follow the config order, the
/// limits are the configured ones, and the disk headroom rule is wired through.
#[test]
fn the_store_opens_with_the_config() {
    use ferry::store::{Record, Store};

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[storage]
data_dir = "{}"
segment_size = "64KiB"
compression_level = 0

[storage.commit]
max_delay = "0s"
max_batch = "320KiB"

[[class]]
name = "alarms"
priority = 9
max_bytes = "128KiB"
overflow = "reject"

[[class]]
name = "metrics"
priority = 1
max_bytes = "1MiB"
max_age = "1h"

[classify]
default_class = "metrics"

[mqtt]
listen = "127.0.0.1:1883"
max_packet_size = "256KiB"
"#,
        dir.path().display()
    );
    let cfg = Config::from_str_with_name(&text, "store.toml").unwrap();
    let (store, _report) = Store::open(cfg.store_options()).unwrap();
    assert_eq!(store.class_names(), ["alarms", "metrics"]);
    let (id, class) = cfg.class("metrics").unwrap();
    assert_eq!(store.class_id("metrics"), Some(id));
    assert_eq!(class.max_age, Some(HumanDuration::hours(1)));

    let rec = |i: u64| Record {
        timestamp_ms: 1_700_000_000_000 + i,
        topic: format!("line/{i}/temp"),
        qos: 1,
        retain: false,
        client_id: "plc-1".into(),
        user_properties: vec![],
        content_type: None,
        payload: bytes::Bytes::from(vec![b'x'; 1000]),
    };
    let seqs: Vec<u64> = (0..10)
        .map(|i| store.append(id, rec(i)).unwrap())
        .map(|t| t.wait().unwrap())
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let mut r = store.reader(id, 1).unwrap();
    let got = r.read_batch(100, 1 << 20).unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(got[3].record.topic, "line/3/temp");

    // `reject` with a 128KiB cap: the class refuses once full, as configured.
    let (alarms, _) = cfg.class("alarms").unwrap();
    let mut refused = None;
    for i in 0..400 {
        match store.append(alarms, rec(i)).and_then(|t| t.wait()) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a 128KiB reject class must refuse 400KB");
    assert!(e.is_backpressure(), "{e}");
    store.close().unwrap();
    drop(store);

    // min_free larger than any disk: every append is refused by the headroom rule.
    let text = text.replace(
        "compression_level = 0",
        "compression_level = 0\nmin_free = \"100000TiB\"",
    );
    let cfg = Config::from_str_with_name(&text, "store.toml").unwrap();
    assert_eq!(cfg.store_options().min_free_bytes, 100_000u64 << 40);
    let (store, _) = Store::open(cfg.store_options()).unwrap();
    let e = store.append(id, rec(0)).and_then(|t| t.wait()).unwrap_err();
    assert!(e.to_string().contains("headroom"), "{e}");
    store.close().unwrap();
}

#[test]
fn reload_applies_live_settings_and_refuses_restart_ones() {
    let old = Config::default_config();

    // Rules, mappings, shares, throttles, windows, users, log level: live.
    let mut live = old.clone();
    live.classify.rules.remove(0);
    live.classes[1].kafka_topic = "site.{gateway}.{1}".into();
    live.classes[1].priority = 70;
    live.classes[2].rate = Some(ByteRate::PerSecond(ByteSize::kib(64)));
    live.forward.windows = vec!["Mon-Fri 22:00-06:00".into()];
    live.mqtt.allow_anonymous = false;
    live.log.level = "debug".into();
    assert_eq!(old.restart_needed_for(&live), vec![]);

    // Listen address, data directory, class removal, store limits: restart.
    let mut restart = old.clone();
    restart.mqtt.listen = "127.0.0.1:1884".into();
    restart.storage.data_dir = "/srv/ferry".into();
    let needs: Vec<String> = old
        .restart_needed_for(&restart)
        .iter()
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(needs, ["storage", "mqtt.listen"]);
    let msg = old.restart_needed_for(&restart)[1].to_string();
    assert!(msg.contains("0.0.0.0:1883 -> 127.0.0.1:1884"), "{msg}");
    assert!(msg.contains("needs a restart"), "{msg}");

    let mut removed = old.clone();
    removed.classes.pop();
    let r = old.restart_needed_for(&removed);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].key, "class (names and order)");
    assert_eq!(r[0].new, "critical, telemetry");

    let mut limits = old.clone();
    limits.classes[0].max_bytes = ByteSize::gib(2);
    assert_eq!(old.restart_needed_for(&limits)[0].key, "class[0].max_bytes");

    let mut secret = old.clone();
    let mut props = std::collections::BTreeMap::new();
    props.insert("sasl.password".to_string(), "hunter2".to_string());
    secret.kafka.properties = ferry::config::KafkaProperties::new(props);
    let r = old.restart_needed_for(&secret);
    assert!(
        r.iter().all(|r| !r.to_string().contains("hunter2")),
        "{r:?}"
    );
    assert!(r.iter().any(|r| r.key == "kafka.properties"));
}

/// Inputs the config fuzzer found (fuzz/regressions/config/): a log level with non-breaking
/// spaces made tracing-subscriber panic, a long span/field filter took minutes to parse. Both
/// must be plain errors naming `log.level`, at once.
#[test]
fn fuzz_regressions_are_errors_not_panics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/regressions/config");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let t0 = std::time::Instant::now();
        let res = ferry::config::Config::from_str_with_name(&text, "regression.toml");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{}",
            path.display()
        );
        let err = res.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("log.level"), "{}: {err}", path.display());
    }
}
