//! File bytes in and out of a running guest, of any size.
//!
//! Small reads and writes are one request each. Larger ones go through the
//! agent's raw streams (`read_stream`, `write_stream`: data frames, no
//! base64 or JSON in the guest): a read comes from one open file, so a file
//! replaced meanwhile is read whole, old or new; a write goes to a
//! temporary file renamed into place at the end, so a reader never sees
//! half of it. Guests whose agent predates the streams get the chunked
//! requests they understand where that is still atomic, and a clear
//! `Unsupported` otherwise.

use super::Guest;
use crate::{
    ByteStream, Checksum, Download, FileRead, ManagerError, Result, Upload, WriteFile, Written,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt as _;
use locale2b_agent_client::{AgentStream, StreamItem};
use locale2b_protocol::{
    ContentEncoding, DataChannel, ReadFileRequest, ReadStreamRequest, Request, Response,
    StreamEvent, WriteFileRequest, WriteStreamRequest,
};
use sha2::{Digest as _, Sha256};

/// Reads of at most this many bytes are one request.
pub const SINGLE_READ_MAX: u64 = 4 * 1024 * 1024;
/// Writes of at most this many bytes are one request.
pub const SINGLE_WRITE_MAX: usize = 4 * 1024 * 1024;
/// Size of each write when an upload falls back to chunked requests.
pub const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn too_large(asked: u64, max: u64) -> ManagerError {
    ManagerError::TooLarge(format!(
        "reading {asked} bytes exceeds the {max} bytes one read may return; read it in parts with offset and length, or stream it"
    ))
}

impl Guest {
    /// One `read_file` request.
    async fn read_once(&self, path: &str, offset: u64, length: Option<u64>) -> Result<FileRead> {
        let req = ReadFileRequest {
            path: path.to_owned(),
            offset,
            length,
        };
        let got = self
            .client()?
            .read_file(req)
            .await
            .map_err(|e| self.error("read_file", e))?;
        let data = B64
            .decode(&got.content_b64)
            .map_err(|e| ManagerError::Internal {
                context: "the guest agent sent invalid base64".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(FileRead {
            data,
            offset: got.offset,
            size: got.size,
            eof: got.eof,
        })
    }

    /// Opens a `read_stream`; answers the stream after its `file_open`.
    async fn open_read(&self, req: ReadStreamRequest) -> Result<(Option<u64>, AgentStream)> {
        let mut stream = self
            .client()?
            .stream(Request::ReadStream(req), super::STREAM_IDLE)
            .await
            .map_err(|e| self.error("read_stream", e))?;
        match stream.next().await {
            Ok(Some(StreamItem::Event(StreamEvent::FileOpen { size }))) => Ok((size, stream)),
            Ok(other) => Err(ManagerError::Vm {
                message: format!("the guest agent began read_stream with {other:?}"),
                source: None,
            }),
            Err(e) => Err(self.error("read_stream", e)),
        }
    }

    /// Reads `length` bytes (to the end when `None`) from `offset`, at most
    /// `max` of them (TooLarge beyond).
    pub(super) async fn read_file(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        max: u64,
    ) -> Result<FileRead> {
        if let Some(l) = length {
            if l > max {
                return Err(too_large(l, max));
            }
            if l <= SINGLE_READ_MAX {
                return self.read_once(path, offset, Some(l)).await;
            }
        }
        let req = ReadStreamRequest {
            path: path.to_owned(),
            offset,
            // One byte more than allowed tells a file that is too large.
            length: Some(length.unwrap_or(max.saturating_add(1))),
            discard: false,
            hash: false,
        };
        let (size, mut stream) = match self.open_read(req).await {
            Ok(s) => s,
            Err(ManagerError::Unsupported(_)) => return self.read_once(path, offset, length).await,
            Err(e) => return Err(e),
        };
        if let (Some(size), None) = (size, length) {
            let rest = size.saturating_sub(offset);
            if rest > max {
                return Err(too_large(rest, max));
            }
        }
        let mut data = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(StreamItem::Data(_, bytes))) => {
                    data.extend_from_slice(&bytes);
                    if data.len() as u64 > max {
                        return Err(too_large(data.len() as u64, max));
                    }
                }
                Ok(Some(StreamItem::Event(_))) => {}
                Ok(Some(StreamItem::End(Response::FileRead(end)))) => {
                    let got = data.len() as u64;
                    return Ok(FileRead {
                        size: size.unwrap_or(offset + got),
                        eof: end.eof || size.is_some_and(|s| offset + got >= s),
                        offset,
                        data,
                    });
                }
                Ok(other) => {
                    return Err(ManagerError::Vm {
                        message: format!("the guest agent sent {other:?} in read_stream"),
                        source: None,
                    })
                }
                Err(e) => return Err(self.error("read_stream", e)),
            }
        }
    }

    /// A file's bytes as they are read, from one open file.
    pub(super) async fn download(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Download> {
        let req = ReadStreamRequest {
            path: path.to_owned(),
            offset,
            length,
            discard: false,
            hash: false,
        };
        let (size, stream) = self.open_read(req).await?;
        let guest = self.clone();
        let bytes: ByteStream<'static> = Box::pin(futures::stream::unfold(
            Some((guest, stream)),
            |state| async move {
                let (guest, mut stream) = state?;
                loop {
                    match stream.next().await {
                        Ok(Some(StreamItem::Data(_, bytes))) => {
                            return Some((Ok(bytes::Bytes::from(bytes)), Some((guest, stream))))
                        }
                        Ok(Some(StreamItem::Event(_))) => continue,
                        Ok(Some(StreamItem::End(_)) | None) => return None,
                        Err(e) => return Some((Err(guest.error("read_stream", e)), None)),
                    }
                }
            },
        ));
        Ok(Download { size, bytes })
    }

    /// SHA-256 of a file (read and hashed in the guest, nothing sent).
    pub(super) async fn checksum(&self, path: &str) -> Result<Checksum> {
        let req = ReadStreamRequest {
            path: path.to_owned(),
            offset: 0,
            length: None,
            discard: true,
            hash: false,
        };
        let (_, mut stream) = self.open_read(req).await?;
        loop {
            match stream.next().await {
                Ok(Some(StreamItem::End(Response::FileRead(end)))) => {
                    return end
                        .sha256
                        .map(|sha256| Checksum {
                            size: end.bytes,
                            sha256,
                        })
                        .ok_or_else(|| ManagerError::Vm {
                            message: "the guest agent answered a checksum without one".into(),
                            source: None,
                        })
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(ManagerError::Vm {
                        message: "read_stream ended without an answer".into(),
                        source: None,
                    })
                }
                Err(e) => return Err(self.error("read_stream", e)),
            }
        }
    }

    /// One `write_file` request.
    async fn write_once(&self, file: WriteFile) -> Result<Written> {
        // Hashed here, not in the (possibly emulated) guest.
        let sha256 = (!file.append).then(|| hex(&Sha256::digest(&file.data)));
        let req = WriteFileRequest {
            path: file.path,
            content: B64.encode(&file.data),
            encoding: ContentEncoding::Base64,
            mode: file.mode,
            create_parents: file.create_parents,
            append: file.append,
            owner: file.owner,
            in_place: file.in_place,
        };
        let w = self
            .client()?
            .write_file(req)
            .await
            .map_err(|e| self.error("write_file", e))?;
        Ok(Written {
            path: w.path,
            size: w.size,
            sha256,
        })
    }

    /// Writes a file: one request when small (or appending), the raw stream
    /// when large (still atomic).
    pub(super) async fn write_file(&self, file: WriteFile) -> Result<Written> {
        if file.path.is_empty() {
            return Err(ManagerError::InvalidInput("path must not be empty".into()));
        }
        if file.append || file.data.len() <= SINGLE_WRITE_MAX {
            return self.write_once(file).await;
        }
        let req = WriteStreamRequest {
            path: file.path,
            mode: file.mode,
            create_parents: file.create_parents,
            owner: file.owner,
            in_place: file.in_place,
            sha256: None,
        };
        let data = bytes::Bytes::from(file.data);
        let body: ByteStream<'_> = Box::pin(futures::stream::iter(
            (0..data.len())
                .step_by(UPLOAD_CHUNK_BYTES)
                .map(move |at| Ok(data.slice(at..(at + UPLOAD_CHUNK_BYTES).min(data.len()))))
                .collect::<Vec<_>>(),
        ));
        self.write_stream(req, body, u64::MAX).await
    }

    /// Sends `body` through `write_stream`; at most `max` bytes.
    async fn write_stream(
        &self,
        mut req: WriteStreamRequest,
        mut body: ByteStream<'_>,
        max: u64,
    ) -> Result<Written> {
        // The host hashes what it sends and checks the expected sum itself:
        // a mismatch abandons the stream, so nothing is written.
        let expected = req.sha256.take();
        let mut hasher = Sha256::new();
        let mut stream = self
            .client()?
            .stream(Request::WriteStream(req), super::STREAM_IDLE)
            .await
            .map_err(|e| self.error("write_stream", e))?;
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            // Dropping the stream on any error makes the agent abandon the
            // write: the target stays as it was.
            let chunk = chunk?;
            total += chunk.len() as u64;
            if total > max {
                return Err(ManagerError::TooLarge(format!(
                    "upload exceeds the limit of {max} bytes (max_upload_bytes)"
                )));
            }
            if chunk.is_empty() {
                continue;
            }
            hasher.update(&chunk);
            stream
                .send_data(DataChannel::Input, &chunk)
                .await
                .map_err(|e| self.error("write_stream", e))?;
        }
        let sha256 = hex(&hasher.finalize());
        if let Some(want) = expected {
            if !want.eq_ignore_ascii_case(&sha256) {
                return Err(ManagerError::InvalidInput(format!(
                    "checksum mismatch: the body hashes to {sha256}, not {want}; nothing was written"
                )));
            }
        }
        stream
            .send_data(DataChannel::Input, &[])
            .await
            .map_err(|e| self.error("write_stream", e))?;
        loop {
            match stream.next().await {
                Ok(Some(StreamItem::End(Response::Written(w)))) => {
                    return Ok(Written {
                        path: w.path,
                        size: w.size,
                        sha256: Some(sha256),
                    })
                }
                Ok(Some(StreamItem::Event(_))) => {}
                Ok(other) => {
                    return Err(ManagerError::Vm {
                        message: format!("the guest agent answered write_stream with {other:?}"),
                        source: None,
                    })
                }
                Err(e) => return Err(self.error("write_stream", e)),
            }
        }
    }

    /// Streams an upload into the guest (see [`crate::GuestOps::upload`]).
    pub(super) async fn upload(&self, up: Upload, body: ByteStream<'_>) -> Result<Written> {
        if up.path.is_empty() || up.path.ends_with('/') {
            return Err(ManagerError::InvalidInput(
                "path must name a file (not empty, not ending in '/')".into(),
            ));
        }
        let req = WriteStreamRequest {
            path: up.path.clone(),
            mode: up.mode,
            create_parents: true,
            owner: up.owner.clone(),
            in_place: up.in_place,
            sha256: up.sha256.clone(),
        };
        if self.speaks_streams() {
            return self.write_stream(req, body, up.max_bytes).await;
        }
        if up.sha256.is_some() {
            return Err(ManagerError::Unsupported(
                "this sandbox's guest agent cannot check an upload's checksum; rebuild the guest image".into(),
            ));
        }
        self.upload_chunked(up, body).await
    }

    /// Whether the agent has the raw file streams (protocol 3).
    fn speaks_streams(&self) -> bool {
        self.client()
            .ok()
            .and_then(|c| c.agent_info())
            .is_some_and(|h| h.protocol_version >= locale2b_protocol::WATCH_PROTOCOL_VERSION)
    }

    /// An upload for agents without streams: a temporary file written in
    /// parts, renamed into place at the end.
    async fn upload_chunked(&self, up: Upload, body: ByteStream<'_>) -> Result<Written> {
        if up.in_place {
            let size = self.chunks_to(&up, &up.path, body).await?;
            return Ok(Written {
                path: up.path,
                size,
                sha256: None,
            });
        }
        let tmp = format!("{}.upload-{:08x}", up.path, rand::random::<u32>());
        let result = match self.chunks_to(&up, &tmp, body).await {
            Ok(size) => self.rename(&tmp, &up.path).await.map(|()| size),
            Err(e) => Err(e),
        };
        match result {
            Ok(size) => Ok(Written {
                path: up.path,
                size,
                sha256: None,
            }),
            Err(e) => {
                if let Err(ce) = self.delete(&tmp, false).await {
                    tracing::debug!(sandbox_id = %self.sandbox_id(), path = %tmp, error = %ce, "upload cleanup failed");
                }
                Err(e)
            }
        }
    }

    /// Writes the body to `target` in [`UPLOAD_CHUNK_BYTES`] requests.
    async fn chunks_to(&self, up: &Upload, target: &str, mut body: ByteStream<'_>) -> Result<u64> {
        let mut buf: Vec<u8> = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
        let mut total: u64 = 0;
        let mut first = true;
        let write = |data: Vec<u8>, append: bool| {
            self.write_once(WriteFile {
                path: target.to_owned(),
                data,
                mode: up.mode,
                create_parents: true,
                append,
                owner: up.owner.clone(),
                in_place: up.in_place && !append,
            })
        };
        while let Some(bytes) = body.next().await {
            let bytes = bytes?;
            total += bytes.len() as u64;
            if total > up.max_bytes {
                return Err(ManagerError::TooLarge(format!(
                    "upload exceeds the limit of {} bytes (max_upload_bytes)",
                    up.max_bytes
                )));
            }
            let mut data = &bytes[..];
            while !data.is_empty() {
                let take = (UPLOAD_CHUNK_BYTES - buf.len()).min(data.len());
                buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if buf.len() == UPLOAD_CHUNK_BYTES {
                    let chunk = std::mem::replace(&mut buf, Vec::with_capacity(UPLOAD_CHUNK_BYTES));
                    write(chunk, !first).await?;
                    first = false;
                }
            }
        }
        if !buf.is_empty() || first {
            write(buf, !first).await?;
        }
        Ok(total)
    }
}
