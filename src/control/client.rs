//! A blocking client for the control socket (the CLI is synchronous; one request is one
//! round trip on one short connection).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{Envelope, Request, Response, MAX_RESPONSE_BYTES, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens (socket missing or connection refused). Callers fall back to
    /// read-only inspection or tell the operator how to start it.
    #[error("daemon not running (no one listens on {0}): start it with `systemctl start ferry`, or pass --data-dir for read-only inspection")]
    NotRunning(PathBuf),
    #[error("permission denied on the control socket {0}: run as a member of the `ferry` group (sudo usermod -aG ferry $USER, then log in again) or with sudo")]
    PermissionDenied(PathBuf),
    #[error("control socket {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: the daemon's answer is not valid: {what}")]
    Protocol { path: PathBuf, what: String },
    /// The daemon understood the request and refused or failed it.
    #[error("{0}")]
    Daemon(String),
}

pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for `path`; requests time out after `timeout` (a backlog scan of a large
    /// class can take a while: the CLI uses minutes, not seconds).
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Client {
            path: path.into(),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request; returns the raw `result`.
    pub fn call_value(&self, request: Request) -> Result<serde_json::Value, ClientError> {
        let io = |op| {
            let path = self.path.clone();
            move |source| ClientError::Io { op, path, source }
        };
        let mut stream = match UnixStream::connect(&self.path) {
            Ok(s) => s,
            Err(e) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning(self.path.clone())
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        ClientError::PermissionDenied(self.path.clone())
                    }
                    _ => io("connect")(e),
                })
            }
        };
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| stream.set_write_timeout(Some(self.timeout)))
            .map_err(io("set timeout"))?;
        let mut line =
            serde_json::to_vec(&Envelope::new(request)).map_err(|e| ClientError::Protocol {
                path: self.path.clone(),
                what: format!("encoding the request: {e}"),
            })?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io("send"))?;
        let mut reader = BufReader::new(stream).take(MAX_RESPONSE_BYTES as u64 + 1);
        let mut buf = Vec::new();
        reader.read_until(b'\n', &mut buf).map_err(io("receive"))?;
        let proto = |what: String| ClientError::Protocol {
            path: self.path.clone(),
            what,
        };
        if buf.is_empty() {
            return Err(proto(
                "the daemon closed the connection without answering".into(),
            ));
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(proto(format!(
                "answer longer than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        let resp: Response = serde_json::from_slice(&buf).map_err(|e| proto(e.to_string()))?;
        if resp.v != PROTOCOL_VERSION {
            return Err(proto(format!(
                "protocol version {} (this CLI speaks {PROTOCOL_VERSION}); use the CLI of the daemon's release",
                resp.v
            )));
        }
        if !resp.ok {
            return Err(ClientError::Daemon(
                resp.error.unwrap_or_else(|| "unspecified error".into()),
            ));
        }
        resp.result
            .ok_or_else(|| proto("`ok` without a `result`".into()))
    }

    /// Sends one request and decodes its result as `T`.
    pub fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T, ClientError> {
        let v = self.call_value(request)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol {
            path: self.path.clone(),
            what: format!("unexpected result shape: {e}"),
        })
    }
}
