//! The config parser (`Config::from_str_with_name`) on arbitrary text: it must return a
//! config or a diagnostic (whose text renders), never panic.
#![no_main]

use ferry::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match Config::from_str_with_name(text, "fuzz.toml") {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // Derived views must not panic on anything the validator let through. (`users()` is left
    // out: it reads `mqtt.password_file` from disk, which a fuzzer must not steer.)
    let _ = cfg.store_options();
    for w in cfg.warnings() {
        let _ = w.to_string();
    }
    let _ = cfg.to_toml_string();
});
