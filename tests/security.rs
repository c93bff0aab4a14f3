//! Security review checks (docs/reliability.md, "Security"): file modes of everything ferry
//! creates, and secrets never printed or logged. Every test here runs with umask 0, the worst
//! case, so the modes come from ferry and not from the environment (the whole test binary
//! shares the umask, and every test in it wants 0).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::store::{ClassOptions, Overflow, Store, StoreOptions};

/// An argon2id PHC string (of "password", salt "somesalt").
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$4+s1AuHbmCNb9pg5M5LCmvK1CtB8kRMBgvRJ8JSMiWY";

fn umask_0() {
    // SAFETY: umask only sets the process's file-mode creation mask.
    unsafe { libc::umask(0) };
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn class(name: &str) -> ClassOptions {
    ClassOptions {
        name: name.into(),
        max_bytes: 1 << 30,
        max_age: None,
        overflow: Overflow::Reject,
    }
}

#[test]
fn data_dir_and_control_socket_are_owner_and_group_only_under_umask_0() {
    umask_0();
    let tmp = tempfile::tempdir().unwrap();
    // Two missing levels: both are created by the store.
    let data = tmp.path().join("var").join("ferry");
    let (store, _) = Store::open(StoreOptions::new(&data, vec![class("critical")])).unwrap();
    for d in [
        tmp.path().join("var"),
        data.clone(),
        data.join("classes"),
        data.join("classes").join("critical"),
    ] {
        assert_eq!(mode(&d), 0o750, "{}", d.display());
    }
    drop(store);
    let dl = tmp.path().join("dl-only");
    ferry::forward::deadletter::DeadLetters::open(&dl).unwrap();
    assert_eq!(mode(&dl), 0o750);
    assert_eq!(mode(&dl.join("deadletter")), 0o750);

    // The control socket: 0660 from the first moment it has its name, in a 0750 directory.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = tmp.path().join("run").join("ferry");
    let sock = run.join("ferry.sock");
    let listener = rt
        .block_on(async { ferry::control::server::bind(&sock) })
        .unwrap();
    assert_eq!(mode(&sock), 0o660);
    assert_eq!(mode(&run), 0o750);
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["ferry.sock"], "staging directory left behind");
    // It is the live socket, not a copy: a client connects through the final name.
    rt.block_on(async {
        let (accepted, connected) =
            tokio::join!(listener.accept(), tokio::net::UnixStream::connect(&sock));
        accepted.unwrap();
        connected.unwrap();
    });
}

fn ferry_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn output(args: &[&str]) -> (Option<i32>, String) {
    let out = ferry_cmd().args(args).output().unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), all)
}

/// Secrets of every kind in one config: SASL and key passwords for librdkafka, an MQTT
/// password hash.
const SECRET_PROPS: &str = "\"sasl.password\" = \"hunter2-sasl\"\n\"ssl.key.password\" = \"hunter2-keypw\"\n\"sasl.username\" = \"ferry-user\"\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n";

fn assert_no_secret(all: &str) {
    for s in ["hunter2", HASH, "c29tZXNhbHQ"] {
        assert!(!all.contains(s), "`{s}` was printed:\n{all}");
    }
}

#[test]
fn config_check_never_prints_secrets_or_plaintext_passwords() {
    umask_0();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("s.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nlisten = \"127.0.0.1:1883\"\nallow_anonymous = false\n[[mqtt.user]]\nname = \"dev\"\npassword_hash = \"{HASH}\"\n[kafka.properties]\n{SECRET_PROPS}"
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    for args in [
        vec!["config", "check", p],
        vec!["config", "check", p, "--json"],
    ] {
        let (code, all) = output(&args);
        assert_eq!(code, Some(0), "{all}");
        assert_no_secret(&all);
        assert!(
            all.contains("ferry-user"),
            "non-secret values still shown: {all}"
        );
        assert!(all.contains("***"), "{all}");
    }

    // A plaintext password is refused, and not echoed back.
    for user in [
        "[[mqtt.user]]\nname = \"dev\"\npassword_hash = \"hunter2-plain\"\n",
        "[[mqtt.user]]\nname = \"dev\"\npassword = \"hunter2-plain\"\n",
    ] {
        std::fs::write(&path, user).unwrap();
        for args in [
            vec!["config", "check", p],
            vec!["config", "check", p, "--json"],
        ] {
            let (code, all) = output(&args);
            assert_eq!(
                code,
                Some(78),
                "a plaintext password must be refused: {all}"
            );
            assert_no_secret(&all);
            assert!(all.contains("password"), "{all}");
        }
    }
}

/// The daemon at debug level, with secrets in the config and a Kafka that does not answer:
/// nothing it logs contains a secret; the data dir it creates is 0750.
#[test]
fn daemon_logs_no_secrets() {
    umask_0();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mqtt = common::tansu::free_port();
    let closed = common::tansu::free_port();
    let cfg = common::daemon_config(
        tmp.path(),
        &data,
        &format!("127.0.0.1:{closed}"),
        mqtt,
        common::tansu::free_port(),
        &[
            ("# \"sasl.password\" = \"...\"", SECRET_PROPS.to_string()),
            ("level = \"info\"", "level = \"debug\"".to_string()),
        ],
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[[mqtt.user]]\nname = \"dev\"\npassword_hash = \"{HASH}\"\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    let log = tmp.path().join("ferry.log");
    let mut child = ferry_cmd()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "ferry did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the forwarder try the broker (and librdkafka log about it) for a while.
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let all = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{all}");
    assert!(all.lines().count() > 5, "expected a debug log:\n{all}");
    assert_no_secret(&all);
    assert_eq!(mode(&data), 0o750);
}
