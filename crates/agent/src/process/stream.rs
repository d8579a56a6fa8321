//! Sending a process's output to a reader over the connection: a
//! `position` event (where the data starts, what was dropped), data frames,
//! `keepalive` events while a followed process is quiet, and the final
//! `output_end` frame.

use super::Proc;
use locale2b_protocol::frame::{write_data, write_json};
use locale2b_protocol::{FrameError, Outcome, OutputEnd, Response, ResponseFrame, StreamEvent};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// How long a followed process may be quiet before a keepalive is sent.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Most bytes taken from the buffer per round.
const BATCH: usize = 256 * 1024;

/// Writes one JSON frame answering request `id`.
///
/// # Errors
/// Frame write errors.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: u64,
    outcome: Outcome,
    max: usize,
) -> Result<(), FrameError> {
    write_json(w, &ResponseFrame { id, outcome }, max).await
}

/// Sends `proc`'s output from `cursor` on the connection (see the module
/// docs), ending with the final `output_end` frame of request `id`.
/// Without `follow` it sends what is there (at most `max_bytes`); with
/// `follow` it waits for more until the process ended and everything was
/// sent. Returns early, without a final frame, when the host closes the
/// connection (`r` reaches its end).
///
/// # Errors
/// Frame write errors (the host went away).
#[allow(clippy::too_many_arguments)]
pub async fn stream_output<W, R>(
    proc: &Proc,
    id: u64,
    mut cursor: u64,
    max_bytes: Option<u64>,
    follow: bool,
    w: &mut W,
    r: &mut R,
    max_frame: usize,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let guard = follow.then(|| proc.buffer.follow(cursor));
    let limit = if follow {
        u64::MAX
    } else {
        max_bytes.unwrap_or(u64::MAX)
    };
    // Leave room for the header and channel byte in each data frame.
    let frame_room = max_frame.saturating_sub(16).max(1);
    let mut sent: u64 = 0;
    let mut first = true;
    loop {
        let budget = usize::try_from(limit - sent)
            .unwrap_or(usize::MAX)
            .min(BATCH);
        let read = proc.buffer.read(cursor, budget, !follow);
        if first || read.dropped > 0 {
            let event = StreamEvent::Position {
                cursor: read.cursor,
                dropped: read.dropped,
            };
            send(w, id, Outcome::Event(event), max_frame).await?;
            first = false;
        }
        let got_data = !read.pieces.is_empty();
        for (channel, data) in &read.pieces {
            for part in data.chunks(frame_room) {
                write_data(w, *channel, part, max_frame).await?;
            }
            sent += data.len() as u64;
        }
        cursor = read.next;
        if let Some(g) = &guard {
            g.advance(cursor);
        }
        let done = read.finished || (!follow && (!got_data || sent >= limit || budget == 0));
        if done {
            let end = OutputEnd {
                next_cursor: cursor,
                exit: proc.exit(),
                complete: read.finished,
            };
            return send(w, id, Outcome::Ok(Response::OutputEnd(end)), max_frame).await;
        }
        if got_data {
            continue;
        }
        let mut probe = [0u8; 1];
        tokio::select! {
            more = proc.buffer.wait_past(cursor, KEEPALIVE) => {
                if !more {
                    send(w, id, Outcome::Event(StreamEvent::Keepalive), max_frame).await?;
                }
            }
            // The host closed the connection (or broke the protocol by
            // sending mid-stream): stop following.
            _ = r.read(&mut probe) => return Ok(()),
        }
    }
}
