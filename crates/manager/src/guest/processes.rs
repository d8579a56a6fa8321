//! Background processes on a running guest: start, list, status, output by
//! cursor or live, stdin, signals, PTY resize, removal.

use super::Guest;
use crate::{
    ManagerError, Output, OutputChunk, OutputEvent, OutputEvents, ProcessInfo, ProcessSelector,
    ProcessSpec, PtySize, Result,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_agent_client::{AgentStream, StreamItem};
use locale2b_protocol::{
    ProcessInputRequest, ProcessOutputRequest, ProcessRequest, ProcessResizeRequest,
    ProcessSignalRequest, ProcessStartRequest, Response, StreamEvent,
};
use std::time::Duration;

/// Largest single write to a process's stdin: 1 MiB.
pub const MAX_STDIN_WRITE: usize = 1024 * 1024;

/// How long a live stream may go without any frame (the agent sends a
/// keepalive every 15 s while a followed process is quiet).
pub const STREAM_IDLE: Duration = Duration::from_secs(60);

/// Turns an agent output stream into [`OutputEvent`]s, tracking cursors.
pub(super) fn events(guest: Guest, what: &'static str, stream: AgentStream) -> OutputEvents {
    struct State {
        guest: Guest,
        stream: AgentStream,
        cursor: u64,
        done: bool,
    }
    let state = State {
        guest,
        stream,
        cursor: 0,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, move |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let item = match st.stream.next().await {
                Ok(Some(item)) => item,
                Ok(None) => return None,
                Err(e) => {
                    st.done = true;
                    let err = st.guest.error(what, e);
                    return Some((Err(err), st));
                }
            };
            let event = match item {
                StreamItem::Event(StreamEvent::Started { pid }) => OutputEvent::Started { pid },
                StreamItem::Event(StreamEvent::Keepalive) => OutputEvent::Keepalive,
                // Events of other requests (watch_dir) do not occur here.
                StreamItem::Event(
                    StreamEvent::Watching | StreamEvent::Fs { .. } | StreamEvent::FileOpen { .. },
                ) => continue,
                StreamItem::Event(StreamEvent::Position { cursor, dropped }) => {
                    st.cursor = cursor;
                    if dropped == 0 {
                        // Only where the data starts: nothing to tell.
                        continue;
                    }
                    OutputEvent::Dropped {
                        bytes: dropped,
                        cursor,
                    }
                }
                StreamItem::Data(stream, data) => {
                    let chunk = OutputChunk {
                        stream,
                        cursor: st.cursor,
                        data,
                    };
                    st.cursor += chunk.data.len() as u64;
                    OutputEvent::Data(chunk)
                }
                StreamItem::End(Response::OutputEnd(end)) => {
                    st.done = true;
                    OutputEvent::End {
                        next_cursor: end.next_cursor,
                        exit: end.exit,
                    }
                }
                StreamItem::End(other) => {
                    st.done = true;
                    let err = ManagerError::Vm {
                        message: format!("the guest agent ended {what} with {other:?}"),
                        source: None,
                    };
                    return Some((Err(err), st));
                }
            };
            return Some((Ok(event), st));
        }
    }))
}

impl Guest {
    pub(super) fn start_request(&self, spec: ProcessSpec) -> Result<ProcessStartRequest> {
        crate::check_env("env", &spec.env)?;
        if let Some(t) = spec.timeout {
            if t.is_zero() {
                return Err(ManagerError::InvalidInput(
                    "the timeout must be positive".into(),
                ));
            }
        }
        Ok(ProcessStartRequest {
            command: spec.command,
            argv: spec.argv,
            cwd: spec.cwd,
            env: spec.env,
            user: spec.user,
            pty: spec.pty,
            tag: spec.tag,
            stdin: spec.stdin,
            input_b64: None,
            timeout_ms: spec
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            buffer_bytes: spec.buffer_bytes,
            follow: false,
            ephemeral: false,
        })
    }

    pub(super) async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessInfo> {
        let req = self.start_request(spec)?;
        self.client()?
            .process_start(req)
            .await
            .map_err(|e| self.error("process start", e))
    }

    pub(super) async fn list_processes(&self) -> Result<Vec<ProcessInfo>> {
        self.client()?
            .process_list()
            .await
            .map(|l| l.processes)
            .map_err(|e| self.error("process list", e))
    }

    pub(super) async fn process(&self, sel: &ProcessSelector) -> Result<ProcessInfo> {
        self.client()?
            .process_status(ProcessRequest {
                process: sel.clone(),
            })
            .await
            .map_err(|e| self.error("process status", e))
    }

    pub(super) async fn read_output(
        &self,
        sel: &ProcessSelector,
        cursor: u64,
        max_bytes: Option<u64>,
    ) -> Result<Output> {
        let req = ProcessOutputRequest {
            process: sel.clone(),
            cursor,
            max_bytes,
            follow: false,
        };
        let client = self.client()?;
        let mut stream = client
            .process_output(req, STREAM_IDLE)
            .await
            .map_err(|e| self.error("process output", e))?;
        let mut out = Output {
            cursor,
            dropped: 0,
            chunks: Vec::new(),
            next_cursor: cursor,
            exit: None,
            complete: false,
        };
        let mut at = cursor;
        loop {
            let item = stream
                .next()
                .await
                .map_err(|e| self.error("process output", e))?;
            match item {
                Some(StreamItem::Event(StreamEvent::Position { cursor, dropped })) => {
                    if out.chunks.is_empty() {
                        out.cursor = cursor;
                    }
                    out.dropped += dropped;
                    at = cursor;
                }
                Some(StreamItem::Event(_)) => {}
                Some(StreamItem::Data(stream, data)) => {
                    let n = data.len() as u64;
                    out.chunks.push(OutputChunk {
                        stream,
                        cursor: at,
                        data,
                    });
                    at += n;
                }
                Some(StreamItem::End(Response::OutputEnd(end))) => {
                    out.next_cursor = end.next_cursor;
                    out.exit = end.exit;
                    out.complete = end.complete;
                    return Ok(out);
                }
                Some(StreamItem::End(other)) => {
                    return Err(ManagerError::Vm {
                        message: format!("the guest agent answered process output with {other:?}"),
                        source: None,
                    })
                }
                None => {
                    return Err(ManagerError::Vm {
                        message: "the process output stream ended without its end".into(),
                        source: None,
                    })
                }
            }
        }
    }

    pub(super) async fn follow_output(
        &self,
        sel: &ProcessSelector,
        cursor: u64,
    ) -> Result<OutputEvents> {
        let req = ProcessOutputRequest {
            process: sel.clone(),
            cursor,
            max_bytes: None,
            follow: true,
        };
        let stream = self
            .client()?
            .process_output(req, STREAM_IDLE)
            .await
            .map_err(|e| self.error("process output", e))?;
        Ok(events(self.clone(), "process output", stream))
    }

    pub(super) async fn write_stdin(
        &self,
        sel: &ProcessSelector,
        data: Vec<u8>,
        close: bool,
    ) -> Result<()> {
        if data.len() > MAX_STDIN_WRITE {
            return Err(ManagerError::TooLarge(format!(
                "a stdin write of {} bytes exceeds the limit of {MAX_STDIN_WRITE} bytes; send it in parts",
                data.len()
            )));
        }
        let req = ProcessInputRequest {
            process: sel.clone(),
            data_b64: B64.encode(&data),
            close,
        };
        self.client()?
            .process_input(req)
            .await
            .map_err(|e| self.error("process stdin", e))
    }

    pub(super) async fn signal(&self, sel: &ProcessSelector, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(ManagerError::InvalidInput(format!(
                "signal {signal} is out of range 1-64"
            )));
        }
        self.client()?
            .process_signal(ProcessSignalRequest {
                process: sel.clone(),
                signal,
            })
            .await
            .map_err(|e| self.error("process signal", e))
    }

    pub(super) async fn resize(&self, sel: &ProcessSelector, size: PtySize) -> Result<()> {
        size.validate().map_err(ManagerError::InvalidInput)?;
        self.client()?
            .process_resize(ProcessResizeRequest {
                process: sel.clone(),
                size,
            })
            .await
            .map_err(|e| self.error("process resize", e))
    }

    pub(super) async fn remove_process(&self, sel: &ProcessSelector) -> Result<()> {
        self.client()?
            .process_remove(ProcessRequest {
                process: sel.clone(),
            })
            .await
            .map_err(|e| self.error("process removal", e))
    }
}
