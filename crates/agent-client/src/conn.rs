//! One framed connection to the agent.

use crate::ClientError;
use locale2b_protocol::frame::{parse_response, read_any, read_frame, write_json, Frame};
use locale2b_protocol::{Outcome, RequestFrame, ResponseFrame};
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::time::Instant;

/// A request failed; whether its frame reached the agent decides whether it
/// may be re-sent.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request frame was not (completely) written: the agent cannot have
    /// acted on it.
    NotSent(ClientError),
    /// The request frame was written (or a write was cut by the timeout): the
    /// agent may have acted on it.
    Sent(ClientError),
}

/// One frame of a streamed answer.
#[derive(Debug)]
pub(crate) enum StreamFrame {
    /// A data frame.
    Data(locale2b_protocol::DataChannel, Vec<u8>),
    /// A JSON frame answering the request.
    Json(Outcome),
}

/// A connection past `CONNECT`/`OK`, speaking frames. Carries one request at
/// a time.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: UnixStream,
    /// The client's pool generation when the connection was opened.
    pub(crate) generation: u64,
    /// When the connection last finished a request.
    pub(crate) idle_since: Instant,
    /// The protocol version its `hello` agreed on.
    pub(crate) version: u32,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream, generation: u64) -> Self {
        Self {
            stream,
            generation,
            idle_since: Instant::now(),
            version: 1,
        }
    }

    /// Cheap check of an idle connection before reuse: an idle connection
    /// must have nothing to read. End of stream (the guest restarted or the
    /// connection was reset) or unexpected bytes both mean it is unusable.
    pub(crate) fn looks_alive(&self) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1];
        // The tokio socket is non-blocking, so the peek returns at once.
        match socket2::SockRef::from(&self.stream).peek(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Ok(_) | Err(_) => false,
        }
    }

    /// Writes a request frame.
    pub(crate) async fn send(
        &mut self,
        frame: &RequestFrame,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<(), CallError> {
        let action = frame.request.action();
        match tokio::time::timeout(timeout, write_json(&mut self.stream, frame, max_frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CallError::NotSent(ClientError::Frame(e))),
            Err(_) => Err(CallError::Sent(ClientError::timeout(action, timeout))),
        }
    }

    /// Writes one data frame (a streamed request's bytes).
    pub(crate) async fn send_data(
        &mut self,
        channel: locale2b_protocol::DataChannel,
        bytes: &[u8],
        timeout: Duration,
        max_frame: usize,
    ) -> Result<(), ClientError> {
        match tokio::time::timeout(
            timeout,
            locale2b_protocol::frame::write_data(&mut self.stream, channel, bytes, max_frame),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::Frame(e)),
            Err(_) => Err(ClientError::timeout("sending data", timeout)),
        }
    }

    /// Reads the next frame of a streamed answer to request `id`, waiting
    /// at most `timeout`: a data frame, or a JSON frame for `id`.
    pub(crate) async fn recv_stream(
        &mut self,
        id: u64,
        action: &'static str,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<StreamFrame, ClientError> {
        let frame = match tokio::time::timeout(timeout, read_any(&mut self.stream, max_frame)).await
        {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("agent closed the connection in the middle of {action}"),
                )))
            }
            Ok(Err(e)) => return Err(ClientError::Frame(e)),
            Err(_) => return Err(ClientError::timeout(action, timeout)),
        };
        match frame {
            Frame::Data { channel, bytes } => Ok(StreamFrame::Data(channel, bytes)),
            Frame::Json(payload) => {
                let response: ResponseFrame =
                    parse_response(&payload).map_err(ClientError::Frame)?;
                if response.id != id {
                    return Err(match response.outcome {
                        Outcome::Error(body) if response.id == 0 => ClientError::Agent(body),
                        _ => ClientError::Protocol(format!(
                            "response id {} in the stream of request {id} ({action})",
                            response.id
                        )),
                    });
                }
                Ok(StreamFrame::Json(response.outcome))
            }
        }
    }

    /// Sends `frame` and waits, at most `timeout` in all, for the response
    /// frame with the same id.
    ///
    /// An `error` frame answering this request is returned as
    /// `Ok(Outcome::Error)`: the connection stays usable. Every `Err` leaves
    /// the connection unusable.
    pub(crate) async fn call(
        &mut self,
        frame: &RequestFrame,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Outcome, CallError> {
        let action = frame.request.action();
        let deadline = Instant::now() + timeout;
        let timed_out = || ClientError::timeout(action, timeout);
        match tokio::time::timeout_at(deadline, write_json(&mut self.stream, frame, max_frame))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CallError::NotSent(ClientError::Frame(e))),
            Err(_) => return Err(CallError::Sent(timed_out())),
        }
        let payload = match tokio::time::timeout_at(
            deadline,
            read_frame(&mut self.stream, max_frame),
        )
        .await
        {
            Ok(Ok(Some(payload))) => payload,
            Ok(Ok(None)) => {
                return Err(CallError::Sent(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("agent closed the connection before answering {action}"),
                ))))
            }
            Ok(Err(e)) => return Err(CallError::Sent(ClientError::Frame(e))),
            Err(_) => return Err(CallError::Sent(timed_out())),
        };
        let response =
            parse_response(&payload).map_err(|e| CallError::Sent(ClientError::Frame(e)))?;
        if response.id == frame.id {
            return Ok(response.outcome);
        }
        // Id 0 is how the agent answers a frame it could not parse.
        match response.outcome {
            Outcome::Error(body) if response.id == 0 => {
                Err(CallError::Sent(ClientError::Agent(body)))
            }
            _ => Err(CallError::Sent(ClientError::Protocol(format!(
                "response id {} to request {} ({action})",
                response.id, frame.id
            )))),
        }
    }
}
