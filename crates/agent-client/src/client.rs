//! The pooled, retrying agent client.

use crate::conn::{CallError, Conn, StreamFrame};
use crate::{connect::connect_with, ClientConfig, ClientError};
use locale2b_protocol::{
    DataChannel, DeleteFileRequest, ExecRequest, ExecResponse, FileContent, FileInfo, FrameError,
    HelloRequest, HelloResponse, InitRequest, ListFilesRequest, Listing, MkdirRequest, Outcome,
    PathRequest, PongResponse, ProcessInfo, ProcessInputRequest, ProcessList, ProcessOutputRequest,
    ProcessRequest, ProcessResizeRequest, ProcessSignalRequest, ProcessStartRequest,
    ReadFileRequest, RenameRequest, Request, RequestFrame, Response, StreamEvent, WriteFileRequest,
    WrittenResponse, AGENT_VSOCK_PORT, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Client of one guest agent, reached through a hybrid-vsock Unix socket.
///
/// Cheap to clone (one `Arc`); clones share the connection pool. Sequential
/// requests reuse an idle connection; concurrent requests open more (at most
/// [`ClientConfig::max_idle`] are kept when idle). Every new connection
/// starts with `hello` and refuses an incompatible agent.
///
/// # Retries
/// - Opening a connection (Unix connect, `CONNECT`/`OK`, `hello`) is retried
///   up to [`ClientConfig::connect_attempts`] times with backoff, except for
///   [`ClientError::IncompatibleAgent`] and agent error frames.
/// - A request whose frame could not be written is always retried on another
///   connection (the agent cannot have seen it).
/// - A request that was written to a *reused* connection and then lost its
///   connection (I/O error, end of stream) is re-sent once on a new
///   connection only when it is idempotent (`hello`, `ping`, `read_file`,
///   `list_files`, `stat`, `sync`); `exec`, `write_file`, `delete_file`,
///   `mkdir`, `rename`, `init`, `shutdown` are not re-sent, because the agent
///   may already have applied them.
/// - A timed-out request is never re-sent, and its connection is dropped (the
///   late answer would desynchronise the stream).
///
/// After the guest restarts or is resumed from a snapshot, call
/// [`AgentClient::invalidate`]: every pooled connection is stale.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    port: u32,
    config: ClientConfig,
    pool: Mutex<Vec<Conn>>,
    /// Bumped by `invalidate`; connections of older generations are dropped
    /// instead of pooled.
    generation: AtomicU64,
    next_id: AtomicU64,
    agent: Mutex<Option<HelloResponse>>,
    /// Slots for connections being opened ([`ClientConfig::max_opening`]).
    opening: tokio::sync::Semaphore,
}

/// Result of [`AgentClient::wait_ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The agent's answer to `ping`.
    pub pong: PongResponse,
    /// The agent's answer to `hello`.
    pub hello: HelloResponse,
    /// Time from the call to the successful ping.
    pub elapsed: Duration,
    /// Connection attempts made (1 when the agent was already up).
    pub attempts: u32,
}

/// Whether re-sending `request` after it may have been applied is harmless.
pub fn is_idempotent(request: &Request) -> bool {
    matches!(
        request,
        Request::Hello(_)
            | Request::Ping
            | Request::ReadFile(_)
            | Request::ListFiles(_)
            | Request::Stat(_)
            | Request::Sync
            | Request::ProcessList
            | Request::ProcessStatus(_)
    ) || matches!(request, Request::ProcessOutput(r) if !r.follow)
}

fn response_type(response: &Response) -> &'static str {
    match response {
        Response::Hello(_) => "hello",
        Response::Pong(_) => "pong",
        Response::Exec(_) => "exec",
        Response::FileContent(_) => "file_content",
        Response::Written(_) => "written",
        Response::Listing(_) => "listing",
        Response::Stat(_) => "stat",
        Response::Done => "done",
        Response::Process(_) => "process",
        Response::Processes(_) => "processes",
        Response::OutputEnd(_) => "output_end",
        Response::FileRead(_) => "file_read",
    }
}

fn unexpected(action: &str, response: &Response) -> ClientError {
    ClientError::Protocol(format!(
        "agent answered {action} with a {} response",
        response_type(response)
    ))
}

/// Whether a failure after the request was written means the connection was
/// lost (as opposed to a timeout or a bad answer).
fn is_connection_loss(err: &ClientError) -> bool {
    match err {
        ClientError::Io(_) => true,
        ClientError::Frame(e) => matches!(e, FrameError::Io(_) | FrameError::Truncated),
        _ => false,
    }
}

/// Whether the connection's protocol version has `request`.
fn supports(conn: &Conn, request: &Request) -> Result<(), ClientError> {
    let needs = request.since_version();
    if conn.version < needs {
        return Err(ClientError::Unsupported {
            action: request.action(),
            needs,
            agent_protocol: conn.version,
        });
    }
    Ok(())
}

/// Checks the agent's `hello` answer: the two version ranges must overlap.
fn check_compatible(hello: &HelloResponse) -> Result<(), ClientError> {
    if hello.protocol_version < MIN_PROTOCOL_VERSION
        || hello.min_protocol_version > PROTOCOL_VERSION
        || hello.min_protocol_version > hello.protocol_version
    {
        return Err(ClientError::IncompatibleAgent {
            agent_version: hello.agent_version.clone(),
            agent_protocol: hello.protocol_version,
            agent_min_protocol: hello.min_protocol_version,
            ours: PROTOCOL_VERSION,
            ours_min: MIN_PROTOCOL_VERSION,
        });
    }
    Ok(())
}

fn outcome_to_result(outcome: Outcome) -> Result<Response, ClientError> {
    match outcome {
        Outcome::Ok(response) => Ok(response),
        Outcome::Error(body) => Err(ClientError::Agent(body)),
        Outcome::Event(e) => Err(ClientError::Protocol(format!(
            "stream event {e:?} in answer to a request that is not streamed"
        ))),
    }
}

/// One item of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A non-final event.
    Event(StreamEvent),
    /// Bytes of a channel.
    Data(DataChannel, Vec<u8>),
    /// The final answer.
    End(Response),
}

/// A streamed answer being read ([`AgentClient::stream`]). Reading it to its
/// end returns the connection to the pool; dropping it earlier closes the
/// connection, which tells the agent to stop.
#[derive(Debug)]
pub struct AgentStream {
    client: AgentClient,
    conn: Option<Conn>,
    id: u64,
    action: &'static str,
    idle: Duration,
}

impl AgentStream {
    /// Sends bytes of a streamed request (`write_stream`) as data frames of
    /// `channel`, split to fit the frame limit; an empty `bytes` sends the
    /// empty frame that ends the data. Waits at most the stream's idle time
    /// per frame (the agent reads as fast as it can write).
    ///
    /// # Errors
    /// Connection failures and timeouts (the connection is then dropped).
    pub async fn send_data(
        &mut self,
        channel: DataChannel,
        bytes: &[u8],
    ) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Protocol(format!(
                "the stream of {} has ended",
                self.action
            )));
        };
        let max = self.client.inner.config.max_frame;
        let room = max.saturating_sub(16).max(1);
        let parts: Vec<&[u8]> = if bytes.is_empty() {
            vec![bytes]
        } else {
            bytes.chunks(room).collect()
        };
        for part in parts {
            if let Err(e) = conn.send_data(channel, part, self.idle, max).await {
                self.conn = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The next item, waiting at most the stream's idle time for it (a
    /// followed process that is quiet still sends keepalives). `Ok(None)`
    /// after the end.
    ///
    /// # Errors
    /// [`ClientError::Agent`] when the stream ends with an error frame;
    /// connection failures and timeouts (the connection is then dropped).
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let max = self.client.inner.config.max_frame;
        let frame = match conn.recv_stream(self.id, self.action, self.idle, max).await {
            Ok(f) => f,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        match frame {
            StreamFrame::Data(channel, bytes) => Ok(Some(StreamItem::Data(channel, bytes))),
            StreamFrame::Json(Outcome::Event(e)) => Ok(Some(StreamItem::Event(e))),
            StreamFrame::Json(outcome) => {
                if let Some(conn) = self.conn.take() {
                    self.client.checkin(conn);
                }
                outcome_to_result(outcome).map(|r| Some(StreamItem::End(r)))
            }
        }
    }
}

impl AgentClient {
    /// A client of the agent on [`AGENT_VSOCK_PORT`] behind the hybrid-vsock
    /// socket at `socket_path`. Connects lazily.
    pub fn new(socket_path: impl Into<PathBuf>, config: ClientConfig) -> Self {
        Self::with_port(socket_path, AGENT_VSOCK_PORT, config)
    }

    /// A client of the service on guest port `port`.
    pub fn with_port(socket_path: impl Into<PathBuf>, port: u32, config: ClientConfig) -> Self {
        let opening = tokio::sync::Semaphore::new(config.max_opening.max(1));
        Self {
            inner: Arc::new(Inner {
                path: socket_path.into(),
                port,
                pool: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                agent: Mutex::new(None),
                opening,
                config,
            }),
        }
    }

    /// Host path of the hybrid-vsock socket.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    /// Guest port.
    pub fn port(&self) -> u32 {
        self.inner.port
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The agent's answer to the last successful `hello`, if any.
    pub fn agent_info(&self) -> Option<HelloResponse> {
        lock(&self.inner.agent).clone()
    }

    /// Number of idle pooled connections.
    pub fn idle_connections(&self) -> usize {
        lock(&self.inner.pool).len()
    }

    /// Drops every pooled connection, and makes connections now in use be
    /// dropped instead of pooled when their request ends. Call it after the
    /// guest restarted or was resumed from a snapshot.
    pub fn invalidate(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let dropped = std::mem::take(&mut *lock(&self.inner.pool));
        tracing::debug!(
            socket = %self.inner.path.display(),
            dropped = dropped.len(),
            "agent connection pool invalidated"
        );
    }

    /// Waits until the agent answers `ping` on a new connection, retrying
    /// connect + `hello` + `ping` with backoff
    /// ([`ClientConfig::backoff_initial`] doubling up to
    /// [`ClientConfig::backoff_max`]) until `deadline`. Every step of an
    /// attempt is limited by the configured timeouts and by the deadline.
    /// The connection that succeeded is kept in the pool.
    ///
    /// # Errors
    /// [`ClientError::NotReady`] at the deadline, carrying the last attempt's
    /// failure; at once, without retrying, any failure that is not
    /// [retryable](ClientError::is_retryable) (e.g.
    /// [`ClientError::IncompatibleAgent`]).
    pub async fn wait_ready(&self, deadline: impl Into<Instant>) -> Result<Ready, ClientError> {
        let deadline = deadline.into();
        let start = Instant::now();
        let cfg = &self.inner.config;
        let mut backoff = cfg.backoff_initial;
        let mut attempts = 0u32;
        let mut last: Option<ClientError> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let attempt = async {
                let (mut conn, hello) = self.open_connection(remaining).await?;
                let frame = self.frame(Request::Ping);
                let timeout = cfg.request_timeout.min(remaining);
                let outcome = conn
                    .call(&frame, timeout, cfg.max_frame)
                    .await
                    .map_err(|(CallError::NotSent(e) | CallError::Sent(e))| e)?;
                match outcome_to_result(outcome)? {
                    Response::Pong(pong) => Ok((conn, hello, pong)),
                    other => Err(unexpected("ping", &other)),
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((conn, hello, pong))) => {
                    self.checkin(conn);
                    let elapsed = start.elapsed();
                    tracing::debug!(
                        socket = %self.inner.path.display(),
                        attempts,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "agent ready"
                    );
                    return Ok(Ready {
                        pong,
                        hello,
                        elapsed,
                        attempts,
                    });
                }
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => {
                    tracing::trace!(socket = %self.inner.path.display(), attempts, error = %e, "agent not ready yet");
                    last = Some(e);
                }
                Err(_) => last = Some(ClientError::timeout("connection attempt", remaining)),
            }
            let now = Instant::now();
            tokio::time::sleep_until((now + backoff).min(deadline)).await;
            backoff = (backoff * 2).min(cfg.backoff_max);
        }
        let after = start.elapsed();
        Err(ClientError::NotReady {
            after,
            attempts,
            last: Box::new(last.unwrap_or_else(|| ClientError::timeout("wait_ready", after))),
        })
    }

    /// Sends any request and returns the agent's successful response,
    /// applying the retry rules described on [`AgentClient`].
    ///
    /// `timeout` limits the exchange (writing the request and reading the
    /// answer); [`ClientConfig::request_timeout`] when `None`. Opening a
    /// connection has its own limits.
    ///
    /// # Errors
    /// [`ClientError::Agent`] for an error frame, [`ClientError::Timeout`],
    /// connection errors, and [`ClientError::Protocol`] for malformed answers.
    pub async fn call(
        &self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        let cfg = &self.inner.config;
        let timeout = timeout.unwrap_or(cfg.request_timeout);
        let idempotent = is_idempotent(&request);
        let frame = self.frame(request);
        let action = frame.request.action();
        let mut resent = false;
        let mut fresh_failures = 0u32;
        let mut force_fresh = false;
        loop {
            let (mut conn, pooled) = match force_fresh {
                true => (self.open_fresh().await?, false),
                false => self.checkout().await?,
            };
            if let Err(e) = supports(&conn, &frame.request) {
                self.checkin(conn);
                return Err(e);
            }
            match conn.call(&frame, timeout, cfg.max_frame).await {
                Ok(outcome) => {
                    self.checkin(conn);
                    return outcome_to_result(outcome);
                }
                Err(CallError::NotSent(e)) if e.is_retryable() => {
                    tracing::debug!(socket = %self.inner.path.display(), action, pooled, error = %e, "request not sent, retrying on another connection");
                    if !pooled {
                        fresh_failures += 1;
                        if fresh_failures >= cfg.connect_attempts.max(1) {
                            return Err(e);
                        }
                    }
                }
                Err(CallError::Sent(e))
                    if pooled && idempotent && !resent && is_connection_loss(&e) =>
                {
                    tracing::debug!(socket = %self.inner.path.display(), action, error = %e, "pooled connection lost, re-sending idempotent request once");
                    // The other idle connections are most likely stale too.
                    lock(&self.inner.pool).clear();
                    resent = true;
                    force_fresh = true;
                }
                Err(CallError::NotSent(e) | CallError::Sent(e)) => {
                    tracing::debug!(socket = %self.inner.path.display(), action, pooled, error = %e, "request failed");
                    return Err(e);
                }
            }
        }
    }

    /// Sends `hello` and checks the agent's protocol versions.
    ///
    /// # Errors
    /// [`ClientError::IncompatibleAgent`] and the errors of [`Self::call`].
    pub async fn hello(&self) -> Result<HelloResponse, ClientError> {
        match self.call(self.hello_request(), None).await? {
            Response::Hello(hello) => {
                check_compatible(&hello)?;
                *lock(&self.inner.agent) = Some(hello.clone());
                Ok(hello)
            }
            other => Err(unexpected("hello", &other)),
        }
    }

    /// Liveness check.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn ping(&self) -> Result<PongResponse, ClientError> {
        match self.call(Request::Ping, None).await? {
            Response::Pong(pong) => Ok(pong),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Runs a command and waits at most `wait` for its answer. The command's
    /// own timeout is `request.timeout_ms` (the agent kills it then); the
    /// caller chooses both, so `wait` should leave the agent time to answer
    /// after its timeout fired. Never re-sent.
    ///
    /// # Errors
    /// As [`Self::call`]; [`ClientError::Timeout`] when `wait` passed.
    pub async fn exec(
        &self,
        request: ExecRequest,
        wait: Duration,
    ) -> Result<ExecResponse, ClientError> {
        match self.call(Request::Exec(request), Some(wait)).await? {
            Response::Exec(result) => Ok(result),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Reads (part of) a file; the content is base64 in the answer.
    ///
    /// # Errors
    /// As [`Self::call`] (`not_found`, `too_large`, ... as agent errors).
    pub async fn read_file(&self, request: ReadFileRequest) -> Result<FileContent, ClientError> {
        match self.call(Request::ReadFile(request), None).await? {
            Response::FileContent(content) => Ok(content),
            other => Err(unexpected("read_file", &other)),
        }
    }

    /// Writes a file. Never re-sent after it was written to the connection.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn write_file(
        &self,
        request: WriteFileRequest,
    ) -> Result<WrittenResponse, ClientError> {
        match self.call(Request::WriteFile(request), None).await? {
            Response::Written(written) => Ok(written),
            other => Err(unexpected("write_file", &other)),
        }
    }

    /// Lists a directory.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn list_files(&self, request: ListFilesRequest) -> Result<Listing, ClientError> {
        match self.call(Request::ListFiles(request), None).await? {
            Response::Listing(listing) => Ok(listing),
            other => Err(unexpected("list_files", &other)),
        }
    }

    /// Creates a directory and describes it.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn mkdir(&self, request: MkdirRequest) -> Result<FileInfo, ClientError> {
        match self.call(Request::Mkdir(request), None).await? {
            Response::Stat(info) => Ok(info),
            other => Err(unexpected("mkdir", &other)),
        }
    }

    /// Describes one path.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn stat(&self, path: impl Into<String>) -> Result<FileInfo, ClientError> {
        let request = Request::Stat(PathRequest { path: path.into() });
        match self.call(request, None).await? {
            Response::Stat(info) => Ok(info),
            other => Err(unexpected("stat", &other)),
        }
    }

    /// Deletes a file or directory.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn delete_file(&self, request: DeleteFileRequest) -> Result<(), ClientError> {
        self.expect_done(Request::DeleteFile(request)).await
    }

    /// Renames a path inside the guest.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn rename(
        &self,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Result<(), ClientError> {
        let request = Request::Rename(RenameRequest {
            from: from.into(),
            to: to.into(),
        });
        self.expect_done(request).await
    }

    /// Sets identity, clock and environment (after boot and after restore).
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn init(&self, request: InitRequest) -> Result<(), ClientError> {
        self.expect_done(Request::Init(request)).await
    }

    /// Flushes the guest's filesystems to disk.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn sync(&self) -> Result<(), ClientError> {
        self.expect_done(Request::Sync).await
    }

    /// Asks the agent to sync and power the guest off. On success the pool is
    /// invalidated (the guest is going away).
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let result = self.expect_done(Request::Shutdown).await;
        if result.is_ok() {
            self.invalidate();
        }
        result
    }

    async fn expect_done(&self, request: Request) -> Result<(), ClientError> {
        let action = request.action();
        match self.call(request, None).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(action, &other)),
        }
    }

    /// Sends a streamed request (see [`Request::is_streamed`]) and returns
    /// its answer as a stream. `idle` bounds the wait for each item. A
    /// request whose frame could not be written to a pooled connection is
    /// sent again on a new one (the agent cannot have seen it).
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] for an agent older than the request;
    /// connection failures.
    pub async fn stream(
        &self,
        request: Request,
        idle: Duration,
    ) -> Result<AgentStream, ClientError> {
        let cfg = &self.inner.config;
        let frame = self.frame(request);
        let action = frame.request.action();
        let mut fresh_failures = 0u32;
        loop {
            let (mut conn, pooled) = self.checkout().await?;
            if let Err(e) = supports(&conn, &frame.request) {
                self.checkin(conn);
                return Err(e);
            }
            match conn.send(&frame, cfg.request_timeout, cfg.max_frame).await {
                Ok(()) => {
                    return Ok(AgentStream {
                        client: self.clone(),
                        conn: Some(conn),
                        id: frame.id,
                        action,
                        idle,
                    })
                }
                Err(CallError::NotSent(e)) if e.is_retryable() => {
                    if !pooled {
                        fresh_failures += 1;
                        if fresh_failures >= cfg.connect_attempts.max(1) {
                            return Err(e);
                        }
                    }
                }
                Err(CallError::NotSent(e) | CallError::Sent(e)) => return Err(e),
            }
        }
    }

    /// Starts a process in the agent's process table.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_start(
        &self,
        request: ProcessStartRequest,
    ) -> Result<ProcessInfo, ClientError> {
        match self.call(Request::ProcessStart(request), None).await? {
            Response::Process(info) => Ok(info),
            other => Err(unexpected("process_start", &other)),
        }
    }

    /// Lists the process table.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_list(&self) -> Result<ProcessList, ClientError> {
        match self.call(Request::ProcessList, None).await? {
            Response::Processes(list) => Ok(list),
            other => Err(unexpected("process_list", &other)),
        }
    }

    /// Describes one process.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_status(
        &self,
        request: ProcessRequest,
    ) -> Result<ProcessInfo, ClientError> {
        match self.call(Request::ProcessStatus(request), None).await? {
            Response::Process(info) => Ok(info),
            other => Err(unexpected("process_status", &other)),
        }
    }

    /// Writes to a process's stdin or PTY. Never re-sent.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_input(&self, request: ProcessInputRequest) -> Result<(), ClientError> {
        self.expect_done(Request::ProcessInput(request)).await
    }

    /// Signals a process's group.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_signal(&self, request: ProcessSignalRequest) -> Result<(), ClientError> {
        self.expect_done(Request::ProcessSignal(request)).await
    }

    /// Resizes a process's PTY.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_resize(&self, request: ProcessResizeRequest) -> Result<(), ClientError> {
        self.expect_done(Request::ProcessResize(request)).await
    }

    /// Kills a process if it runs and forgets it.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub async fn process_remove(&self, request: ProcessRequest) -> Result<(), ClientError> {
        self.expect_done(Request::ProcessRemove(request)).await
    }

    /// Output of a process as a stream (see [`ProcessOutputRequest`]).
    ///
    /// # Errors
    /// As [`Self::stream`].
    pub async fn process_output(
        &self,
        request: ProcessOutputRequest,
        idle: Duration,
    ) -> Result<AgentStream, ClientError> {
        self.stream(Request::ProcessOutput(request), idle).await
    }

    fn frame(&self, request: Request) -> RequestFrame {
        RequestFrame {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            request,
        }
    }

    fn hello_request(&self) -> Request {
        Request::Hello(HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            client: self.inner.config.client_name.clone(),
        })
    }

    /// An idle pooled connection that still looks alive, else a new one.
    /// The flag tells whether the connection was reused.
    async fn checkout(&self) -> Result<(Conn, bool), ClientError> {
        let generation = self.inner.generation.load(Ordering::SeqCst);
        loop {
            let Some(conn) = lock(&self.inner.pool).pop() else {
                break;
            };
            if conn.generation == generation
                && conn.idle_since.elapsed() < self.inner.config.max_idle_age
                && conn.looks_alive()
            {
                return Ok((conn, true));
            }
            tracing::debug!(socket = %self.inner.path.display(), "dropping stale pooled connection");
        }
        Ok((self.open_fresh().await?, false))
    }

    /// Opens a new connection, retrying retryable failures up to
    /// [`ClientConfig::connect_attempts`] times with backoff.
    async fn open_fresh(&self) -> Result<Conn, ClientError> {
        let cfg = &self.inner.config;
        let mut backoff = cfg.backoff_initial;
        let mut attempt = 1;
        loop {
            match self.open_connection(Duration::MAX).await {
                Ok((conn, _)) => return Ok(conn),
                Err(e) if e.is_retryable() && attempt < cfg.connect_attempts => {
                    tracing::debug!(socket = %self.inner.path.display(), attempt, error = %e, "agent connection failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cfg.backoff_max);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: Unix connect, `CONNECT`/`OK`, `hello`; every step limited
    /// by its configured timeout and by `budget`.
    async fn open_connection(
        &self,
        budget: Duration,
    ) -> Result<(Conn, HelloResponse), ClientError> {
        let cfg = &self.inner.config;
        // Waiting for a slot counts against the budget like the steps do.
        let _slot = tokio::time::timeout(budget, self.inner.opening.acquire())
            .await
            .map_err(|_| ClientError::timeout("a free connection slot", budget))?
            .map_err(|_| ClientError::Protocol("the client is closed".into()))?;
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let handshake = match lock(&self.inner.agent).is_some() {
            true => cfg.ready_handshake_timeout,
            false => cfg.handshake_timeout,
        };
        let stream = connect_with(
            &self.inner.path,
            self.inner.port,
            cfg.connect_timeout.min(budget),
            handshake.min(budget),
        )
        .await?;
        let mut conn = Conn::new(stream, generation);
        let frame = self.frame(self.hello_request());
        let outcome = conn
            .call(&frame, cfg.hello_timeout.min(budget), cfg.max_frame)
            .await
            .map_err(|(CallError::NotSent(e) | CallError::Sent(e))| e)?;
        let hello = match outcome_to_result(outcome)? {
            Response::Hello(hello) => hello,
            other => return Err(unexpected("hello", &other)),
        };
        check_compatible(&hello)?;
        conn.version = hello.protocol_version.min(PROTOCOL_VERSION);
        *lock(&self.inner.agent) = Some(hello.clone());
        Ok((conn, hello))
    }

    /// Returns a healthy connection to the pool, unless the pool was
    /// invalidated since it was opened or is full.
    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        if conn.generation != self.inner.generation.load(Ordering::SeqCst) {
            return;
        }
        let mut pool = lock(&self.inner.pool);
        if pool.len() < self.inner.config.max_idle {
            pool.push(conn);
        }
    }
}

/// Locks a mutex, ignoring poisoning (the data are plain collections that a
/// panicking holder cannot leave half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol: u32, min: u32) -> HelloResponse {
        HelloResponse {
            protocol_version: protocol,
            min_protocol_version: min,
            agent_version: "9.9.9".into(),
        }
    }

    #[test]
    fn version_ranges_must_overlap() {
        assert!(check_compatible(&hello(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION)).is_ok());
        // A newer agent that still accepts our version is fine.
        assert!(check_compatible(&hello(PROTOCOL_VERSION + 1, PROTOCOL_VERSION)).is_ok());
        let err = check_compatible(&hello(PROTOCOL_VERSION + 2, PROTOCOL_VERSION + 1))
            .expect_err("agent too new");
        assert!(
            matches!(err, ClientError::IncompatibleAgent { agent_protocol, .. } if agent_protocol == PROTOCOL_VERSION + 2)
        );
        assert!(!err.is_retryable());
        assert!(check_compatible(&hello(MIN_PROTOCOL_VERSION - 1, 0)).is_err());
    }

    #[test]
    fn idempotency_table() {
        assert!(is_idempotent(&Request::Ping));
        assert!(is_idempotent(&Request::Sync));
        assert!(is_idempotent(&Request::Stat(PathRequest {
            path: "/".into()
        })));
        assert!(!is_idempotent(&Request::Shutdown));
        assert!(!is_idempotent(&Request::Rename(RenameRequest {
            from: "a".into(),
            to: "b".into()
        })));
        assert!(!is_idempotent(&Request::Exec(ExecRequest {
            command: "true".into(),
            working_dir: None,
            env: Default::default(),
            stdin_b64: None,
            timeout_ms: None,
            user: None,
            max_output_bytes: None,
        })));
    }
}
