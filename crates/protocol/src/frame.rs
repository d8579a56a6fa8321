//! Length-prefixed framing: `u32` big-endian length, then a JSON payload.
//!
//! The length is checked against the maximum before any buffer is allocated,
//! so a peer cannot make the other side reserve memory by announcing a huge
//! frame. An announced length of zero is invalid (no JSON document is empty).
//!
//! Protocol 2 adds **data frames**: the header's top bit
//! ([`DATA_FRAME_FLAG`]) is set and the low 31 bits give the payload
//! length; the payload is one [`DataChannel`] byte and then raw bytes (none:
//! the end of that channel's data). The same maximum applies. A v1 reader
//! sees such a header as an oversized frame and refuses it, so data frames
//! are only sent once `hello` agreed on version 2.

use crate::{RequestFrame, ResponseFrame};

/// Default maximum payload size of one frame: 10 MiB.
pub const DEFAULT_MAX_FRAME: usize = 10 * 1024 * 1024;

/// Size of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Top bit of a frame header: the frame carries raw bytes (protocol 2).
pub const DATA_FRAME_FLAG: u32 = 0x8000_0000;

/// Which byte stream a data frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataChannel {
    /// Host to guest: input (stdin, uploads, port traffic).
    Input,
    /// A process's stdout.
    Stdout,
    /// A process's stderr.
    Stderr,
    /// A process's pseudo-terminal.
    Pty,
}

impl DataChannel {
    /// The channel's byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Self::Input => 0,
            Self::Stdout => 1,
            Self::Stderr => 2,
            Self::Pty => 3,
        }
    }

    /// The channel of a wire byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Input,
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Pty,
            _ => return None,
        })
    }

    /// `stdin`, `stdout`, `stderr` or `pty`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Pty => "pty",
        }
    }
}

/// One frame of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON message.
    Json(Vec<u8>),
    /// Raw bytes of a channel (empty: the end of that channel's data).
    Data {
        /// The channel.
        channel: DataChannel,
        /// The bytes.
        bytes: Vec<u8>,
    },
}

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced payload length exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The announced payload length is zero.
    #[error("frame with an empty payload")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The payload is not the JSON message expected.
    #[error("invalid frame payload")]
    Json(#[source] serde_json::Error),
    /// A data frame names no known channel.
    #[error("data frame for unknown channel {0}")]
    UnknownChannel(u8),
    /// Reading or writing the stream failed.
    #[error("frame i/o failed")]
    Io(#[source] std::io::Error),
}

/// Encodes `payload` as one frame (header + payload).
///
/// # Errors
/// [`FrameError::TooLarge`] when `payload` exceeds `max`, [`FrameError::Empty`]
/// when it is empty.
pub fn encode(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    check_len(payload.len(), max)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes `bytes` as one data frame of `channel` (header, channel byte,
/// bytes).
///
/// # Errors
/// [`FrameError::TooLarge`] when the payload exceeds `max`.
pub fn encode_data(channel: DataChannel, bytes: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let len = bytes.len() + 1;
    check_len(len, max)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&((len as u32) | DATA_FRAME_FLAG).to_be_bytes());
    out.push(channel.byte());
    out.extend_from_slice(bytes);
    Ok(out)
}

/// Decodes one frame of either kind from the front of `buf` (protocol 2).
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, or
/// `Ok(Some((consumed, frame)))`.
///
/// # Errors
/// As [`decode`]; [`FrameError::UnknownChannel`] for a data frame whose
/// channel byte is unknown.
pub fn decode_any(buf: &[u8], max: usize) -> Result<Option<(usize, Frame)>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let raw = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if raw & DATA_FRAME_FLAG == 0 {
        return Ok(decode(buf, max)?.map(|(n, p)| (n, Frame::Json(p.to_vec()))));
    }
    let len = (raw & !DATA_FRAME_FLAG) as usize;
    check_len(len, max)?;
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let channel =
        DataChannel::from_byte(payload[0]).ok_or(FrameError::UnknownChannel(payload[0]))?;
    Ok(Some((
        FRAME_HEADER_LEN + len,
        Frame::Data {
            channel,
            bytes: payload[1..].to_vec(),
        },
    )))
}

fn check_len(len: usize, max: usize) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(())
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, or
/// `Ok(Some((consumed, payload)))`. Pure and allocation-free: this is the
/// function the fuzz target drives.
///
/// # Errors
/// [`FrameError::TooLarge`] / [`FrameError::Empty`] as soon as the header is
/// complete and announces a bad length.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(usize, &[u8])>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    check_len(len, max)?;
    match buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) {
        Some(payload) => Ok(Some((FRAME_HEADER_LEN + len, payload))),
        None => Ok(None),
    }
}

/// Parses a request payload.
///
/// # Errors
/// [`FrameError::Json`] when the payload is not a valid [`RequestFrame`].
pub fn parse_request(payload: &[u8]) -> Result<RequestFrame, FrameError> {
    serde_json::from_slice(payload).map_err(FrameError::Json)
}

/// Parses a response payload.
///
/// # Errors
/// [`FrameError::Json`] when the payload is not a valid [`ResponseFrame`].
pub fn parse_response(payload: &[u8]) -> Result<ResponseFrame, FrameError> {
    serde_json::from_slice(payload).map_err(FrameError::Json)
}

#[cfg(feature = "tokio")]
mod io {
    use super::{check_len, DataChannel, Frame, FrameError, DATA_FRAME_FLAG, FRAME_HEADER_LEN};
    use serde::Serialize;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads the 4-byte header; `Ok(None)` on a clean end of stream.
    async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<u32>, FrameError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let mut filled = 0;
        while filled < FRAME_HEADER_LEN {
            let n = r
                .read(&mut header[filled..])
                .await
                .map_err(FrameError::Io)?;
            if n == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            filled += n;
        }
        Ok(Some(u32::from_be_bytes(header)))
    }

    async fn read_payload<R: AsyncRead + Unpin>(
        r: &mut R,
        len: usize,
        max: usize,
    ) -> Result<Vec<u8>, FrameError> {
        check_len(len, max)?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                _ => FrameError::Io(e),
            })?;
        Ok(payload)
    }

    /// Reads one frame of either kind (protocol 2).
    ///
    /// Returns `Ok(None)` on a clean end of stream between frames.
    ///
    /// # Errors
    /// As [`read_frame`]; [`FrameError::UnknownChannel`] for a data frame
    /// whose channel byte is unknown.
    pub async fn read_any<R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> Result<Option<Frame>, FrameError> {
        let Some(raw) = read_header(r).await? else {
            return Ok(None);
        };
        if raw & DATA_FRAME_FLAG == 0 {
            return read_payload(r, raw as usize, max)
                .await
                .map(|p| Some(Frame::Json(p)));
        }
        let mut payload = read_payload(r, (raw & !DATA_FRAME_FLAG) as usize, max).await?;
        let channel =
            DataChannel::from_byte(payload[0]).ok_or(FrameError::UnknownChannel(payload[0]))?;
        payload.remove(0);
        Ok(Some(Frame::Data {
            channel,
            bytes: payload,
        }))
    }

    /// Writes `bytes` as one data frame of `channel` and flushes
    /// (protocol 2).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] without writing anything, or
    /// [`FrameError::Io`].
    pub async fn write_data<W: AsyncWrite + Unpin>(
        w: &mut W,
        channel: DataChannel,
        bytes: &[u8],
        max: usize,
    ) -> Result<(), FrameError> {
        let len = bytes.len() + 1;
        check_len(len, max)?;
        let header = ((len as u32) | DATA_FRAME_FLAG).to_be_bytes();
        w.write_all(&header).await.map_err(FrameError::Io)?;
        w.write_all(&[channel.byte()])
            .await
            .map_err(FrameError::Io)?;
        w.write_all(bytes).await.map_err(FrameError::Io)?;
        w.flush().await.map_err(FrameError::Io)
    }

    /// Reads one frame's payload.
    ///
    /// Returns `Ok(None)` on a clean end of stream *between* frames.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] when the stream ends inside a frame,
    /// [`FrameError::TooLarge`]/[`FrameError::Empty`] for a bad header (the
    /// payload is not read: the caller should answer and close), and
    /// [`FrameError::Io`] for other failures.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> Result<Option<Vec<u8>>, FrameError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let mut filled = 0;
        while filled < FRAME_HEADER_LEN {
            let n = r
                .read(&mut header[filled..])
                .await
                .map_err(FrameError::Io)?;
            if n == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            filled += n;
        }
        let len = u32::from_be_bytes(header) as usize;
        check_len(len, max)?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                _ => FrameError::Io(e),
            })?;
        Ok(Some(payload))
    }

    /// Writes `payload` as one frame and flushes.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`]/[`FrameError::Empty`] without writing
    /// anything, or [`FrameError::Io`].
    pub async fn write_frame<W: AsyncWrite + Unpin>(
        w: &mut W,
        payload: &[u8],
        max: usize,
    ) -> Result<(), FrameError> {
        // One buffer, one write (see `write_data`).
        let frame = super::encode(payload, max)?;
        w.write_all(&frame).await.map_err(FrameError::Io)?;
        w.flush().await.map_err(FrameError::Io)
    }

    /// Serialises `msg` to JSON and writes it as one frame.
    ///
    /// # Errors
    /// As [`write_frame`]; [`FrameError::Json`] if serialisation fails.
    pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
        w: &mut W,
        msg: &T,
        max: usize,
    ) -> Result<(), FrameError> {
        let payload = serde_json::to_vec(msg).map_err(FrameError::Json)?;
        write_frame(w, &payload, max).await
    }
}

#[cfg(feature = "tokio")]
pub use io::{read_any, read_frame, write_data, write_frame, write_json};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode(b"{\"a\":1}", 100).unwrap();
        assert_eq!(&framed[..4], &[0, 0, 0, 7]);
        let (used, payload) = decode(&framed, 100).unwrap().unwrap();
        assert_eq!(used, framed.len());
        assert_eq!(payload, b"{\"a\":1}");
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let framed = encode(b"hello", 100).unwrap();
        for cut in 0..framed.len() {
            assert!(
                decode(&framed[..cut], 100).unwrap().is_none(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let header = (11u32 * 1024 * 1024).to_be_bytes();
        let err = decode(&header, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == 11 * 1024 * 1024));
        assert!(matches!(
            encode(&[1u8; 11], 10),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn data_frames_round_trip_and_are_refused_by_v1() {
        let framed = encode_data(DataChannel::Stderr, b"xyz", 100).unwrap();
        let (used, frame) = decode_any(&framed, 100).unwrap().unwrap();
        assert_eq!(used, framed.len());
        assert_eq!(
            frame,
            Frame::Data {
                channel: DataChannel::Stderr,
                bytes: b"xyz".to_vec()
            }
        );
        // A v1 reader sees an oversized frame (before allocating anything).
        assert!(matches!(
            decode(&framed, 100),
            Err(FrameError::TooLarge { .. })
        ));
        // End of a channel: no bytes.
        let end = encode_data(DataChannel::Input, b"", 100).unwrap();
        assert_eq!(end.len(), 5);
        let json = encode(b"{}", 100).unwrap();
        assert_eq!(
            decode_any(&json, 100).unwrap().unwrap().1,
            Frame::Json(b"{}".to_vec())
        );
        let mut bad = encode_data(DataChannel::Pty, b"a", 100).unwrap();
        bad[4] = 9;
        assert!(matches!(
            decode_any(&bad, 100),
            Err(FrameError::UnknownChannel(9))
        ));
        // Oversize data frames are refused from the header alone.
        assert!(matches!(
            decode_any(&(DATA_FRAME_FLAG | 1000).to_be_bytes(), 100),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn async_read_any_reads_both_kinds() {
        let mut buf = encode(b"{\"a\":1}", 100).unwrap();
        buf.extend(encode_data(DataChannel::Stdout, b"hi", 100).unwrap());
        let mut r = &buf[..];
        assert_eq!(
            read_any(&mut r, 100).await.unwrap(),
            Some(Frame::Json(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(
            read_any(&mut r, 100).await.unwrap(),
            Some(Frame::Data {
                channel: DataChannel::Stdout,
                bytes: b"hi".to_vec()
            })
        );
        assert_eq!(read_any(&mut r, 100).await.unwrap(), None);
        let mut out = Vec::new();
        write_data(&mut out, DataChannel::Pty, b"zz", 100)
            .await
            .unwrap();
        assert_eq!(out, encode_data(DataChannel::Pty, b"zz", 100).unwrap());
    }

    #[test]
    fn empty_frame_is_invalid() {
        assert!(matches!(decode(&[0, 0, 0, 0], 10), Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn async_read_detects_truncation_and_clean_eof() {
        let mut framed = encode(b"abc", 100).unwrap();
        framed.truncate(5);
        let mut r = &framed[..];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(FrameError::Truncated)
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 100).await.unwrap().is_none());
        let mut half_header: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut half_header, 100).await,
            Err(FrameError::Truncated)
        ));
    }
}
