//! The control socket server, run by the daemon: [`serve`].
//!
//! One task accepts; each connection gets its own task that reads request lines, answers each
//! in order, and ends when the client closes, sends a line longer than
//! [`MAX_REQUEST_BYTES`], or the daemon shuts down. Work that reads or writes files (backlog
//! scans, peek, purge, dead letters, import) runs on the blocking pool so a long scan never
//! stalls the accept loop or another operator's `ferry status`.
//!
//! ## Socket permissions, and why
//! The socket can pause forwarding and purge data, so it is not for everyone on the box: it is
//! created with mode 0660 (owner and group may connect; connecting to a Unix socket needs write
//! permission on it) and, when a group named `ferry` exists, its group is set to `ferry` — the
//! packaged daemon runs as user `ferry`, and operators are let in with
//! `usermod -aG ferry alice`. The umask is not trusted for this: the socket is bound in a
//! private 0700 staging directory, given its mode and group there, then renamed into place,
//! so it is never reachable with a wider mode. A missing parent directory is created 0750. A stale socket file left by a crash is removed, but only after checking that
//! nothing answers on it (two daemons on one socket would be a worse failure).
//!
//! ## Wiring it into the daemon
//! ```ignore
//! let mut ctx = ControlContext::new(store.clone(), cfg.storage.data_dir.clone());
//! ctx.forwarder = Some(forwarder_handle.clone());
//! ctx.dead_letters = Some(Arc::new(dead_letters.clone()));
//! ctx.reload = Some(Arc::new(move || reloader.reload())); // Ok(summary) / Err(why refused)
//! // Bind before READY=1, so `ferry status` works as soon as systemd says started.
//! let listener = control::server::bind(&cfg.control.socket)?;
//! let socket = cfg.control.socket.clone();
//! tokio::spawn(async move {
//!     control::server::serve_listener(listener, &socket, ctx, shutdown_rx).await
//! });
//! ```
//!
//! ## Shutdown
//! As in mini-redis, `serve` takes a `shutdown` future: when it completes, accepting stops,
//! connection tasks are told to stop (they finish the request in hand), and the socket file is
//! removed.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::forward::deadletter::{DeadLetters, Selector};
use crate::forward::ForwarderHandle;
use crate::store::Store;

use super::inspect::{self, InspectError, Live, RateTracker};
use super::{
    CountResult, DeadLetterList, Envelope, PurgeResult, Request, Response, SteerResult,
    VersionInfo, MAX_REQUEST_BYTES, PROTOCOL_VERSION,
};

/// Mode of the socket file: owner and group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;
/// Group given the socket when it exists.
pub const SOCKET_GROUP: &str = "ferry";
/// Connections served at once; more wait in the listen backlog. Operators are few; this only
/// bounds what a runaway script can cost the daemon.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A reload callback: re-reads the config; `Ok(summary)` or `Err(why it was refused)`.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Everything the control API can see and steer. Cheap to clone.
#[derive(Clone)]
pub struct ControlContext {
    pub store: Store,
    /// Shown in `status`.
    pub data_dir: PathBuf,
    pub forwarder: Option<ForwarderHandle>,
    pub dead_letters: Option<Arc<DeadLetters>>,
    pub reload: Option<ReloadFn>,
    /// When the daemon started (Unix ms).
    pub started_at_ms: u64,
}

impl ControlContext {
    /// A context with only a store; add the other parts with the struct fields.
    pub fn new(store: Store, data_dir: impl Into<PathBuf>) -> Self {
        ControlContext {
            store,
            data_dir: data_dir.into(),
            forwarder: None,
            dead_letters: None,
            reload: None,
            started_at_ms: inspect::now_ms(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("control socket {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {0} is in use by a running process (another ferry daemon?); stop it or set [control] socket to another path")]
    InUse(PathBuf),
    #[error("control socket path {0} exists and is not a socket; remove it or set [control] socket to another path")]
    NotASocket(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { op, path, source }
}

/// Binds `socket_path` with the permissions described in the module doc.
pub fn bind(socket_path: &Path) -> Result<UnixListener, ServeError> {
    let parent = socket_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(io_err("create parent directory", parent))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket_path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            // A misconfigured path must never cost the operator a file.
            return Err(ServeError::NotASocket(socket_path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(socket_path).is_ok() {
            return Err(ServeError::InUse(socket_path.to_path_buf()));
        }
        std::fs::remove_file(socket_path).map_err(io_err("remove stale socket", socket_path))?;
        tracing::info!(path = %socket_path.display(), "removed a stale control socket");
    }
    // bind(2) creates the file with the umask's mode, and the chmod comes after: bind inside
    // a fresh 0700 directory next to the final path, fix mode and group there, and only then
    // rename it into place, so nobody else can ever connect through a too-open socket.
    let staging = parent.join(format!(
        ".ferry-control.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io_err("create staging directory", &staging))?;
    }
    let staged = staging.join("control.sock");
    let result = (|| -> Result<UnixListener, ServeError> {
        let listener = UnixListener::bind(&staged).map_err(io_err("bind", &staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_err("chmod 0660", &staged))?;
        if let Some(gid) = group_id(SOCKET_GROUP) {
            if let Err(e) = std::os::unix::fs::chown(&staged, None, Some(gid)) {
                // Not fatal: the owner can still connect, and the packaged unit runs as a member.
                tracing::warn!(path = %socket_path.display(), group = SOCKET_GROUP, error = %e,
                    "could not give the control socket to its group; only its owner can use it");
            }
        }
        std::fs::rename(&staged, socket_path).map_err(io_err("move into place", socket_path))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    result
}

/// The gid of `name`, if such a group exists.
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only into grp and buf.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Serves the control API on `socket_path` until `shutdown` completes.
pub async fn serve(
    socket_path: &Path,
    ctx: ControlContext,
    shutdown: impl Future,
) -> Result<(), ServeError> {
    let listener = bind(socket_path)?;
    serve_listener(listener, socket_path, ctx, shutdown).await
}

/// [`serve`] on a listener bound by [`bind`] (lets a caller bind before signalling READY).
pub async fn serve_listener(
    listener: UnixListener,
    socket_path: &Path,
    ctx: ControlContext,
    shutdown: impl Future,
) -> Result<(), ServeError> {
    tracing::info!(path = %socket_path.display(), "control socket listening");
    let rates = Arc::new(Mutex::new(RateTracker::new(Duration::from_secs(10))));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    {
        let (rates, store, mut stop) = (rates.clone(), ctx.store.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => rates.lock().sample(&store),
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            accepted = async {
                // Take a slot first, so a flood waits in the kernel's backlog, not in memory.
                let permit = slots.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => match accepted {
                (Ok(permit), Ok((stream, _))) => {
                    let (ctx, rates, stop) = (ctx.clone(), rates.clone(), stop_rx.clone());
                    tasks.spawn(async move {
                        if let Err(e) = connection(stream, ctx, rates, stop).await {
                            tracing::debug!(error = %e, "control connection ended with an error");
                        }
                        drop(permit);
                    });
                }
                (Err(_), _) => break Ok(()),
                (_, Err(e)) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };

    let _ = stop_tx.send(true);
    // Connection tasks finish the request in hand; a stuck one is not allowed to hold up
    // the daemon's shutdown.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    let _ = std::fs::remove_file(socket_path);
    tracing::info!(path = %socket_path.display(), "control socket closed");
    result
}

async fn connection(
    stream: UnixStream,
    ctx: ControlContext,
    rates: Arc<Mutex<RateTracker>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = tokio::select! {
            n = tokio::time::timeout(IDLE_TIMEOUT, read_bounded_line(&mut rd, &mut line)) => match n {
                Ok(n) => n?,
                Err(_) => return Ok(()),
            },
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_REQUEST_BYTES;
        let response = if too_long {
            Response::err(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes; the connection is closed"
            ))
        } else {
            handle_line(&line, &ctx, &rates).await
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!(r#"{{"v":{PROTOCOL_VERSION},"ok":false,"error":"encoding the response: {e}"}}"#)
                .into_bytes()
        });
        out.push(b'\n');
        wr.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

/// Reads one line into `buf`, keeping at most `MAX_REQUEST_BYTES + 1` bytes of it (the rest of
/// an overlong line is consumed and discarded). Returns bytes consumed; 0 at end of stream.
async fn read_bounded_line(
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = rd.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_REQUEST_BYTES + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        rd.consume(take);
        total += take;
        if done {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            return Ok(total);
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(total);
        }
    }
}

async fn handle_line(line: &[u8], ctx: &ControlContext, rates: &Mutex<RateTracker>) -> Response {
    // Check the version before the shape, so an old/new client gets the real reason.
    let v = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("v").and_then(|v| v.as_u64()));
    if let Some(v) = v.filter(|&v| v != u64::from(PROTOCOL_VERSION)) {
        return Response::err(format!(
            "protocol version {v} is not supported; this daemon speaks version {PROTOCOL_VERSION} (use the ferry CLI of the same release)"
        ));
    }
    let env: Envelope = match serde_json::from_slice(line) {
        Ok(e) => e,
        Err(e) => return Response::err(format!("bad request: {e}")),
    };
    let cmd = format!("{:?}", env.request);
    match handle(env.request, ctx, rates).await {
        Ok(v) => Response::ok(v),
        Err(e) => {
            tracing::info!(request = %cmd, error = %e, "control request failed");
            Response::err(e)
        }
    }
}

/// Runs blocking work on the blocking pool and flattens its errors into a message.
async fn blocking<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<serde_json::Value, String> {
    let out = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: the request's task failed: {e}"))??;
    to_value(out)
}

fn to_value<T: serde::Serialize>(v: T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("internal error: encoding the result: {e}"))
}

fn msg(e: InspectError) -> String {
    e.to_string()
}

fn forwarder(ctx: &ControlContext) -> Result<&ForwarderHandle, String> {
    ctx.forwarder.as_ref().ok_or_else(|| {
        "the forwarder is not running in this daemon (no [kafka] configured?), so there is nothing to pause, resume or drain".to_string()
    })
}

fn dead_letters(ctx: &ControlContext) -> Result<Arc<DeadLetters>, String> {
    ctx.dead_letters.clone().ok_or_else(|| {
        "this daemon has no dead-letter log (the forwarder is not running)".to_string()
    })
}

async fn handle(
    req: Request,
    ctx: &ControlContext,
    rates: &Mutex<RateTracker>,
) -> Result<serde_json::Value, String> {
    match req {
        Request::Version => to_value(VersionInfo::this_build()),
        Request::Status => {
            // Rates come from the once-a-second samples only: sampling per request would let a
            // busy client grow the sample window without bound.
            let live = {
                let r = rates.lock();
                Live {
                    started_at_ms: ctx.started_at_ms,
                    pid: std::process::id(),
                    forwarder: ctx.forwarder.as_ref().map(|f| f.status()),
                    drain: ctx.forwarder.as_ref().map(|f| f.drain_context()),
                    rates: r.rates(),
                }
            };
            let (store, dir) = (ctx.store.clone(), ctx.data_dir.clone());
            blocking(move || Ok(inspect::status(&store, "daemon", &dir, Some(&live)))).await
        }
        Request::Backlog {
            depth,
            max_prefixes,
        } => {
            let store = ctx.store.clone();
            blocking(move || inspect::backlog(&store, "daemon", depth, max_prefixes).map_err(msg))
                .await
        }
        Request::Peek {
            class,
            from,
            limit,
            topic,
            max_payload,
        } => {
            let store = ctx.store.clone();
            blocking(move || {
                inspect::peek(&store, &class, from, limit, topic.as_deref(), max_payload)
                    .map_err(msg)
            })
            .await
        }
        Request::Pause { class } | Request::Resume { class }
            if class
                .as_deref()
                .is_some_and(|c| ctx.store.class_id(c).is_none()) =>
        {
            let c = class.unwrap_or_default();
            Err(format!(
                "unknown class `{c}`; this daemon has: {}",
                ctx.store.class_names().join(", ")
            ))
        }
        Request::Pause { class } => {
            forwarder(ctx)?
                .pause(class.as_deref())
                .map_err(|e| e.to_string())?;
            tracing::info!(
                class = class.as_deref().unwrap_or("*"),
                "paused by operator"
            );
            to_value(SteerResult {
                message: match class {
                    Some(c) => format!("class `{c}` paused (records in flight still finish)"),
                    None => "all classes paused (records in flight still finish)".into(),
                },
            })
        }
        Request::Resume { class } => {
            forwarder(ctx)?
                .resume(class.as_deref())
                .map_err(|e| e.to_string())?;
            tracing::info!(
                class = class.as_deref().unwrap_or("*"),
                "resumed by operator"
            );
            to_value(SteerResult {
                message: match class {
                    Some(c) => format!("class `{c}` resumed"),
                    None => "all classes resumed".into(),
                },
            })
        }
        Request::Drain { for_secs } => {
            let f = forwarder(ctx)?;
            let message = if for_secs == 0 {
                f.cancel_drain_now();
                "drain override ended; the configured windows apply again".to_string()
            } else {
                f.drain_now_for(Duration::from_secs(for_secs));
                format!(
                    "draining regardless of the windows for {} (the throttle still applies)",
                    crate::cli::fmt::age(for_secs)
                )
            };
            to_value(SteerResult { message })
        }
        Request::Purge {
            class,
            older_than_secs,
            all,
        } => {
            if all == older_than_secs.is_some() {
                return Err(
                    "purge needs exactly one of `older_than_secs` and `\"all\": true`".into(),
                );
            }
            let store = ctx.store.clone();
            blocking(move || {
                let id = inspect::class_id(&store, &class).map_err(msg)?;
                let cutoff = older_than_secs
                    .map(|s| inspect::now_ms().saturating_sub(s.saturating_mul(1000)));
                let (records, bytes) = store
                    .purge(id, cutoff)
                    .map_err(|e| format!("purging class `{class}`: {e}"))?;
                tracing::warn!(class = %class, older_than_secs, records, bytes,
                    "operator purge removed records without delivery");
                Ok(PurgeResult {
                    class,
                    records,
                    bytes,
                })
            })
            .await
        }
        Request::DeadLetterList => {
            let dl = dead_letters(ctx)?;
            to_value(DeadLetterList {
                entries: dl.list().iter().map(inspect::dead_letter_summary).collect(),
            })
        }
        Request::DeadLetterShow { id } => {
            let dl = dead_letters(ctx)?;
            blocking(move || {
                dl.get(id)
                    .map(|d| inspect::dead_letter_entry(&d, super::MAX_PEEK_PAYLOAD))
                    .map_err(|e| e.to_string())
            })
            .await
        }
        Request::DeadLetterReplay { id } => {
            let dl = dead_letters(ctx)?;
            let which = id.map_or(Selector::All, Selector::One);
            let count = dl
                .replay(&ctx.store, which)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(?id, count, "dead letters replayed by operator");
            to_value(CountResult { count })
        }
        Request::DeadLetterDrop { id } => {
            let dl = dead_letters(ctx)?;
            let which = id.map_or(Selector::All, Selector::One);
            blocking(move || {
                let count = dl.drop_entries(which).map_err(|e| e.to_string())?;
                tracing::warn!(?id, count, "dead letters dropped by operator");
                Ok(CountResult { count })
            })
            .await
        }
        Request::Import { path } => {
            let store = ctx.store.clone();
            let report = super::transfer::import(&store, Path::new(&path))
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(path = %path, records = report.records, class = %report.class,
                gateway = %report.gateway, "imported an export file");
            to_value(report)
        }
        Request::Reload => {
            let reload = ctx
                .reload
                .clone()
                .ok_or_else(|| "this daemon cannot reload its configuration".to_string())?;
            let message = tokio::task::spawn_blocking(move || reload())
                .await
                .map_err(|e| format!("internal error: the reload task failed: {e}"))??;
            to_value(SteerResult { message })
        }
    }
}
