//! Length-prefixed framing: `u32` big-endian length, then a JSON payload.
//!
//! The length is checked against the maximum before any buffer is allocated,
//! so a peer cannot make the other side reserve memory by announcing a huge
//! frame. An announced length of zero is invalid (no JSON document is empty).

use crate::{RequestFrame, ResponseFrame};

/// Default maximum payload size of one frame: 10 MiB.
pub const DEFAULT_MAX_FRAME: usize = 10 * 1024 * 1024;

/// Size of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

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
    use super::{check_len, FrameError, FRAME_HEADER_LEN};
    use serde::Serialize;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
        check_len(payload.len(), max)?;
        let header = (payload.len() as u32).to_be_bytes();
        w.write_all(&header).await.map_err(FrameError::Io)?;
        w.write_all(payload).await.map_err(FrameError::Io)?;
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
pub use io::{read_frame, write_frame, write_json};

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
