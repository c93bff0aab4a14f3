//! The real `ferry` binary: `config check` on good and bad files (exit codes 0 / 78 and the
//! messages), `passwd` producing a hash argon2 verifies, `version --json`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn run(args: &[&str]) -> Output {
    ferry().args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch directory unique to this test process and `name`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ferry-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, content: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const DEFAULT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ferry.toml");

#[test]
fn check_the_shipped_default() {
    let out = run(&["config", "check", DEFAULT]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": valid (1 warning"), "{stdout}");
    assert!(stdout.contains("segment_size = \"64MiB\""), "{stdout}");
    assert!(
        stdout.contains("[[class]]\nname = \"critical\""),
        "{stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ferry: warning:") && stderr.contains("mqtt.allow_anonymous"),
        "{stderr}"
    );
    // The printed effective config is itself a valid config.
    let s = Scratch::new("effective");
    let body: String = stdout
        .lines()
        .skip_while(|l| l.starts_with('#') || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let again = run(&["config", "check", &s.file("eff.toml", &body)]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
}

#[test]
fn check_uses_the_global_config_flag() {
    let out = run(&["--config", DEFAULT, "config", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&["config", "check", "--config", DEFAULT]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_a_bad_file_exits_78_and_says_where_and_what() {
    let s = Scratch::new("bad");
    let path = s.file(
        "bad.toml",
        "gateway_id = \"site-1\"\n\n[storage]\nsegment_size = \"12XB\"\n",
    );
    let out = run(&["config", "check", &path]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("ferry: invalid configuration in "),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml:4:16: `storage.segment_size`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("expected a size like \"512MiB\""),
        "{stderr}"
    );
}

#[test]
fn check_reports_validation_errors_with_lines() {
    let s = Scratch::new("rules");
    let path = s.file(
        "rules.toml",
        r#"[[class]]
name = "a"
priority = 1
max_bytes = "1GiB"

[classify]
default_class = "a"

[[classify.rule]]
filter = "x/#/y"
class = "nope"
"#,
    );
    let out = run(&["config", "check", &path]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("(2 problems)"), "{stderr}");
    assert!(
        stderr.contains(":10:10: `classify.rule[0].filter`: invalid topic filter"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains(":11:9: `classify.rule[0].class`: unknown class `nope`; expected one of `a`"),
        "{stderr}"
    );
}

#[test]
fn check_json_good_and_bad() {
    let out = run(&["config", "check", DEFAULT, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["config"]["storage"]["segment_size"], "64MiB");
    assert_eq!(v["config"]["class"][0]["name"], "critical");
    assert_eq!(v["warnings"][0]["path"], "mqtt.allow_anonymous");
    assert!(v["warnings"][0]["line"].as_u64().unwrap() > 1);

    let s = Scratch::new("json");
    let path = s.file("b.toml", "[mqtt]\nmax_inflight = 0\nlisten = \"nowhere\"\n");
    let out = run(&["config", "check", &path, "--json"]);
    assert_eq!(out.status.code(), Some(78));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    let paths: Vec<_> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(
        paths.contains(&"mqtt.max_inflight") && paths.contains(&"mqtt.listen"),
        "{v}"
    );
    let listen = errors.iter().find(|e| e["path"] == "mqtt.listen").unwrap();
    assert_eq!(listen["line"], 3);
}

#[test]
fn check_missing_file_exits_78() {
    let out = run(&["config", "check", "/nonexistent/ferry.toml"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read config file /nonexistent/ferry.toml"),
        "{stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");
}

#[test]
fn secrets_do_not_print() {
    let s = Scratch::new("secret");
    let path = s.file(
        "s.toml",
        "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"ferry\"\n",
    );
    for args in [
        vec!["config", "check", &path],
        vec!["config", "check", &path, "--json"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(!all.contains("hunter2"), "{all}");
        assert!(all.contains("***"), "{all}");
    }
}

#[test]
fn run_with_a_bad_config_exits_78() {
    let s = Scratch::new("run");
    let path = s.file("r.toml", "[log]\nlevel = \"info\"\nformat = \"xml\"\n");
    let out = run(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`log.format`"));
}

#[test]
fn passwd_hash_verifies() {
    let mut child = ferry()
        .args(["passwd", "--user", "plc-7", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("s3cret"), "{stdout}");
    // It is a ready-to-paste [[mqtt.user]] block: parse it as a config.
    let cfg = ferry::config::Config::from_str_with_name(&stdout, "passwd output").unwrap();
    let user = &cfg.mqtt.users[0];
    assert_eq!(user.name, "plc-7");
    let hash = PasswordHash::new(&user.password_hash).unwrap();
    assert_eq!(hash.algorithm.as_str(), "argon2id");
    assert!(Argon2::default()
        .verify_password(b"s3cret pass", &hash)
        .is_ok());
    assert!(Argon2::default()
        .verify_password(b"s3cret pas", &hash)
        .is_err());

    // ... and can be appended to a password file as is.
    let s = Scratch::new("pwfile");
    s.file("users.toml", &stdout);
    let cfg = s.file(
        "ferry.toml",
        "[mqtt]\nlisten = \"127.0.0.1:1883\"\nallow_anonymous = false\npassword_file = \"users.toml\"\n",
    );
    let out = run(&["config", "check", &cfg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("valid (0 warnings, 1 MQTT user)"),
        "{}",
        text(&out.stdout)
    );
    // A broken password file is a config error too.
    s.file("users.toml", "[[mqtt.user]]\nname = \"x\"\n");
    let out = run(&["config", "check", &cfg]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("missing field `password_hash`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn passwd_reads_a_non_terminal_stdin_and_prints_one_line() {
    let mut child = ferry()
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout.trim_end();
    assert!(!line.contains('\n'));
    let hash = line
        .strip_prefix("password_hash = \"")
        .unwrap()
        .strip_suffix('"')
        .unwrap();
    let hash = PasswordHash::new(hash).unwrap();
    assert!(Argon2::default().verify_password(b"abc", &hash).is_ok());
}

#[test]
fn passwd_refuses_an_empty_password() {
    let out = ferry()
        .args(["passwd", "--password-stdin"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("ferry: the password is empty"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn version_json() {
    let out = run(&["version", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "ferry");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["target"].as_str().unwrap().contains("linux"), "{v}");
    assert!(v["rustc"].as_str().unwrap().starts_with("rustc "), "{v}");
    assert!(v.get("git_commit").is_some());
    let plain = run(&["version"]);
    assert!(text(&plain.stdout).starts_with(&format!("ferry {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    for cmd in [
        vec!["--help"],
        vec!["config", "check", "--help"],
        vec!["passwd", "--help"],
        vec!["run", "--help"],
        vec!["version", "--help"],
    ] {
        let out = run(&cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(
            text(&out.stdout).contains("Example"),
            "{cmd:?}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn closed_stdout_is_not_an_error() {
    // `ferry config check | head -1`: the reader goes away; ferry must exit 0 quietly.
    let mut child = ferry()
        .args(["config", "check", DEFAULT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("Broken pipe"),
        "{}",
        text(&out.stderr)
    );
}
