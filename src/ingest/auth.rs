//! Who may connect, and which topics they may publish to and subscribe to.
//!
//! Passwords are stored only as argon2 PHC strings (`$argon2id$v=19$m=...`), from the config
//! or from a password file of `user:phc` lines (the format `ferry passwd` prints). Verifying
//! an argon2 hash costs tens of milliseconds of CPU on purpose, so it runs in
//! `spawn_blocking`: a burst of logins must not stall the runtime threads that move acks.
//!
//! ACLs are lists of topic filters per user. An empty list means "everything" so that a
//! plain user entry grants full access; anonymous clients (when allowed) get the
//! `anonymous_*` lists. A denied PUBLISH is answered with PUBACK/PUBREC reason 0x87
//! (not authorized) on MQTT 5 and is not stored; MQTT 3.1.1 has no negative ack, so the
//! connection is closed without an ack (the client would otherwise retry the same publish
//! forever, or believe it was stored). A denied subscription gets SUBACK 0x80 (v3.1.1) or
//! 0x87 (v5) for that filter only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

use crate::topic::{filter_matches, validate_filter};

/// One user: a password hash and what they may do.
#[derive(Debug, Clone, Default)]
pub struct User {
    /// argon2 PHC string. `None` for users whose hash comes from the password file.
    pub password_phc: Option<String>,
    /// Topic filters this user may publish to; empty = all topics.
    pub publish: Vec<String>,
    /// Topic filters this user may subscribe with (the filter must be covered); empty = all.
    pub subscribe: Vec<String>,
}

/// Authentication and authorization settings.
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    /// Clients without a username are accepted (with the anonymous ACLs).
    pub allow_anonymous: bool,
    pub anonymous_publish: Vec<String>,
    pub anonymous_subscribe: Vec<String>,
    pub users: HashMap<String, User>,
    /// Optional file of `user:phc` lines (`#` comments, blank lines ignored), re-read on
    /// every `Authenticator::new`. A user listed here and in `users` takes the hash from the
    /// file and the ACLs from `users`. (ferry's config has its own TOML password file, which
    /// `config::Config::users` resolves into `users`; this is for embedders.)
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading password file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("password file {path} line {line}: {what}; expected `user:$argon2id$...` (create entries with `ferry passwd`)")]
    Syntax {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("user `{user}`: {what}")]
    BadUser { user: String, what: String },
    #[error("hashing a password failed: {0}")]
    Hash(String),
}

/// Outcome of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Accepted(Acl),
    /// Unknown user or wrong password (deliberately not distinguished to the client).
    BadCredentials,
    /// No username and anonymous access is off.
    NotAuthorized,
}

/// The topics one connection may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    pub user: Option<String>,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Acl {
    pub fn allow_all() -> Self {
        Acl::default()
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.is_empty() || self.publish.iter().any(|f| filter_matches(f, topic))
    }

    /// A subscription is allowed when one allowed filter covers all of it: the requested
    /// filter, with its wildcards taken literally, must match the allowed filter.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.is_empty()
            || self
                .subscribe
                .iter()
                .any(|allowed| allowed == filter || filter_covers(allowed, filter))
    }
}

/// True when every topic matched by `inner` is matched by `outer`.
fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(ol), Some(il)) if ol == il && ol != "+" && ol != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Users with their resolved hashes; cheap to share, swapped as a whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    allow_anonymous: bool,
    anonymous: Acl,
    users: HashMap<String, (Option<String>, Acl)>,
}

impl Authenticator {
    /// Resolves the options: reads the password file and checks every filter and hash.
    pub fn new(opts: &AuthOptions) -> Result<Self, AuthError> {
        let mut users: HashMap<String, (Option<String>, Acl)> = HashMap::new();
        for (name, u) in &opts.users {
            for f in u.publish.iter().chain(&u.subscribe) {
                validate_filter(f).map_err(|what| AuthError::BadUser {
                    user: name.clone(),
                    what,
                })?;
            }
            if let Some(phc) = &u.password_phc {
                check_phc(phc).map_err(|what| AuthError::BadUser {
                    user: name.clone(),
                    what,
                })?;
            }
            let acl = Acl {
                user: Some(name.clone()),
                publish: u.publish.clone(),
                subscribe: u.subscribe.clone(),
            };
            users.insert(name.clone(), (u.password_phc.clone(), acl));
        }
        if let Some(path) = &opts.password_file {
            for (name, phc) in read_password_file(path)? {
                let entry = users.entry(name.clone()).or_insert_with(|| {
                    (
                        None,
                        Acl {
                            user: Some(name.clone()),
                            ..Acl::default()
                        },
                    )
                });
                entry.0 = Some(phc);
            }
        }
        Ok(Authenticator {
            allow_anonymous: opts.allow_anonymous,
            anonymous: Acl {
                user: None,
                publish: opts.anonymous_publish.clone(),
                subscribe: opts.anonymous_subscribe.clone(),
            },
            users,
        })
    }

    /// Accepts everyone with full access (tests, and the config's `allow_anonymous` without ACLs).
    pub fn open() -> Self {
        Authenticator {
            allow_anonymous: true,
            ..Authenticator::default()
        }
    }

    /// Checks a login. Blocking (argon2): call from `spawn_blocking`.
    pub fn login_blocking(&self, username: Option<&str>, password: Option<&[u8]>) -> Login {
        let Some(username) = username.filter(|u| !u.is_empty()) else {
            return if self.allow_anonymous {
                Login::Accepted(self.anonymous.clone())
            } else {
                Login::NotAuthorized
            };
        };
        let Some((Some(phc), acl)) = self.users.get(username) else {
            // Spend the same time as for a real user, so response times do not tell which
            // user names exist.
            if let Ok(h) = PasswordHash::new(dummy_phc()) {
                let _ = Argon2::default().verify_password(b"x", &h);
            }
            return Login::BadCredentials;
        };
        let password = password.unwrap_or_default();
        // The hashes were checked at load time; one that fails to parse now refuses the login.
        let ok = PasswordHash::new(phc)
            .and_then(|h| Argon2::default().verify_password(password, &h))
            .is_ok();
        if ok {
            Login::Accepted(acl.clone())
        } else {
            Login::BadCredentials
        }
    }
}

/// A hash to verify against for unknown users (computed once).
fn dummy_phc() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("ferry-dummy").unwrap_or_default())
}

fn check_phc(phc: &str) -> Result<(), String> {
    PasswordHash::new(phc)
        .map(|_| ())
        .map_err(|e| format!("password hash is not a valid PHC string ({e})"))
}

/// Reads `user:phc` lines.
pub fn read_password_file(path: &Path) -> Result<Vec<(String, String)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |what: String| AuthError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            what,
        };
        let (user, phc) = line
            .split_once(':')
            .ok_or_else(|| syntax("no `:` separator".into()))?;
        if user.is_empty() {
            return Err(syntax("empty user name".into()));
        }
        check_phc(phc).map_err(syntax)?;
        out.push((user.to_owned(), phc.to_owned()));
    }
    Ok(out)
}

/// Hashes a password into an argon2id PHC string with a random salt (for `ferry passwd`).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_and_acl() {
        let phc = hash_password("s3cret").unwrap();
        let mut users = HashMap::new();
        users.insert(
            "plc".to_string(),
            User {
                password_phc: Some(phc),
                publish: vec!["site/+/temp".into()],
                subscribe: vec!["cmd/plc/#".into()],
            },
        );
        let a = Authenticator::new(&AuthOptions {
            users,
            ..Default::default()
        })
        .unwrap();
        let Login::Accepted(acl) = a.login_blocking(Some("plc"), Some(b"s3cret")) else {
            panic!("login refused")
        };
        assert!(acl.may_publish("site/a/temp"));
        assert!(!acl.may_publish("site/a/hum"));
        assert!(acl.may_subscribe("cmd/plc/#"));
        assert!(acl.may_subscribe("cmd/plc/+/x"));
        assert!(!acl.may_subscribe("cmd/#"));
        assert!(!acl.may_subscribe("#"));
        assert_eq!(
            a.login_blocking(Some("plc"), Some(b"wrong")),
            Login::BadCredentials
        );
        assert_eq!(
            a.login_blocking(Some("x"), Some(b"x")),
            Login::BadCredentials
        );
        assert_eq!(a.login_blocking(None, None), Login::NotAuthorized);
    }

    #[test]
    fn password_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        let phc = hash_password("pw").unwrap();
        std::fs::write(&p, format!("# comment\n\nbob:{phc}\n")).unwrap();
        let a = Authenticator::new(&AuthOptions {
            password_file: Some(p.clone()),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            a.login_blocking(Some("bob"), Some(b"pw")),
            Login::Accepted(_)
        ));
        std::fs::write(&p, "bob\n").unwrap();
        let e = Authenticator::new(&AuthOptions {
            password_file: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
