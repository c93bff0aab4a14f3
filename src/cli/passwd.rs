//! `ferry passwd`: hash a password for `[[mqtt.user]]` with argon2id.
//!
//! The password comes from the terminal with echo off (asked twice, so a typo does not lock a
//! device out), or from the first line of standard input when that is not a terminal or
//! `--password-stdin` is given (for provisioning scripts). It is never printed or logged.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;

use super::{PasswdArgs, EXIT_OK};

pub(super) fn run(args: &PasswdArgs) -> anyhow::Result<u8> {
    let stdin = std::io::stdin();
    let password = if args.password_stdin || !stdin.is_terminal() {
        read_line(&mut stdin.lock()).context("reading the password from standard input")?
    } else {
        let first = prompt_hidden("Password: ")?;
        let second = prompt_hidden("Retype password: ")?;
        if first != second {
            bail!("the two passwords do not match; nothing was printed, run `ferry passwd` again");
        }
        first
    };
    if password.is_empty() {
        bail!("the password is empty; give a non-empty password (on the first line of standard input, or at the prompt)");
    }
    let hash = hash_password(&password)?;
    let mut out = std::io::stdout().lock();
    match &args.user {
        Some(name) => {
            if name.is_empty() {
                bail!("--user needs a non-empty name");
            }
            // toml's string repr quotes and escapes the name exactly as a TOML parser expects.
            let quoted = toml::Value::String(name.clone()).to_string();
            writeln!(
                out,
                "[[mqtt.user]]\nname = {quoted}\npassword_hash = \"{hash}\""
            )
        }
        None => writeln!(out, "password_hash = \"{hash}\""),
    }
    .context("writing to stdout")?;
    Ok(EXIT_OK)
}

/// An argon2id PHC string with a fresh random salt and the crate's default (OWASP) cost.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))?;
    Ok(hash.to_string())
}

fn read_line(input: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Reads a line from the terminal on stdin with echo turned off; echo is restored even when
/// reading fails (the guard's Drop), so an interrupted prompt does not leave a mute terminal.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr().lock();
    write!(err, "{prompt}").context("writing the prompt")?;
    err.flush().context("writing the prompt")?;
    let guard = EchoOff::new().context("turning off terminal echo")?;
    let line =
        read_line(&mut std::io::stdin().lock()).context("reading the password from the terminal");
    drop(guard);
    // The user's Enter was not echoed either.
    let _ = writeln!(err);
    line
}

struct EchoOff {
    saved: libc::termios,
}

impl EchoOff {
    fn new() -> std::io::Result<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr only read/write the termios struct we own, on fd 0.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(EchoOff { saved })
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings saved in `new` on the same fd.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn hash_verifies_and_is_argon2id() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }

    #[test]
    fn reads_first_line_only() {
        let mut input = std::io::Cursor::new(b"pw with spaces \r\nsecond\n".to_vec());
        assert_eq!(read_line(&mut input).unwrap(), "pw with spaces ");
    }
}
