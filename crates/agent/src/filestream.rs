//! `read_stream` and `write_stream` (protocol 3): file bytes as raw data
//! frames, with no base64 or JSON on the data path, hashed (SHA-256) on the
//! way.
//!
//! A read opens the file once (so a file replaced meanwhile is read whole,
//! old or new) and sends a `file_open` event, data frames on channel 1 and a
//! final `file_read`. A write takes data frames on channel 0 until an empty
//! one, into a temporary file next to the target that is renamed over it at
//! the end (or into the target itself with `in_place`); an abandoned or
//! failed write leaves the target as it was.
//!
//! File I/O runs on a blocking thread; chunks cross over a small channel,
//! so memory stays bounded whatever the file's size.

use crate::context::AgentContext;
use crate::fs::{
    check_mode, create_dirs_owned, hex, io_err, open_for_read, owner_of, resolve, wait_readable,
    PSEUDO_QUIET,
};
use crate::process::stream::send;
use locale2b_protocol::frame::{read_any, write_data};
use locale2b_protocol::{
    DataChannel, ErrorBody, ErrorCode, FileReadEnd, Frame, FrameError, Outcome, ReadStreamRequest,
    Response, StreamEvent, WriteStreamRequest, WrittenResponse,
};
use sha2::{Digest, Sha256};
use std::fs::{self as stdfs, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Bytes per data frame and per blocking read or write.
const CHUNK: usize = 1024 * 1024;

/// Bytes between two starts of writeback during a streamed write.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// What the reading thread hands over.
enum ReadItem {
    Open(Option<u64>),
    Bytes(Vec<u8>),
    End {
        bytes: u64,
        eof: bool,
        sha256: Option<String>,
    },
    Failed(ErrorBody),
}

/// The blocking side of a read: opens `path` and sends its bytes.
fn read_blocking(path: &Path, req: &ReadStreamRequest, tx: &mpsc::Sender<ReadItem>) {
    let result = (|| -> Result<(), ErrorBody> {
        let meta = stdfs::metadata(path).map_err(|e| io_err(path, &e))?;
        if meta.is_dir() {
            return Err(ErrorBody::new(
                ErrorCode::IsADirectory,
                format!("{}: is a directory", path.display()),
            ));
        }
        let regular = meta.is_file() && meta.len() > 0;
        let (file, seekable) = open_for_read(path, meta.is_file(), req.offset)?;
        let size = if regular {
            file.metadata().map(|m| m.len()).ok()
        } else {
            None
        };
        if tx.blocking_send(ReadItem::Open(size)).is_err() {
            return Ok(());
        }
        let limit = req.length.unwrap_or(u64::MAX);
        let hashing = req.discard || req.hash;
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut eof = false;
        let mut waited = false;
        let mut buf = vec![0u8; CHUNK];
        while done < limit {
            let room = usize::try_from((limit - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            let got = if seekable {
                file.read_at(&mut buf[..room], req.offset + done)
            } else {
                (&file).read(&mut buf[..room])
            };
            match got {
                // A FIFO read before its writer opened it ends at once;
                // give the writer the quiet time to show up.
                Ok(0) if !seekable && done == 0 && !waited => {
                    waited = true;
                    if !wait_readable(&file, PSEUDO_QUIET) {
                        break;
                    }
                }
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if hashing {
                        hasher.update(&buf[..n]);
                    }
                    done += n as u64;
                    if !req.discard
                        && tx
                            .blocking_send(ReadItem::Bytes(buf[..n].to_vec()))
                            .is_err()
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !wait_readable(&file, PSEUDO_QUIET) {
                        break;
                    }
                }
                Err(e) => return Err(io_err(path, &e)),
            }
        }
        let end = ReadItem::End {
            bytes: done,
            eof,
            sha256: hashing.then(|| hex(hasher.finalize())),
        };
        let _ = tx.blocking_send(end);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(ReadItem::Failed(e));
    }
}

/// Runs `read_stream` on the connection (see the module docs).
///
/// # Errors
/// Frame write errors (the host went away).
pub async fn read_stream<W, R>(
    ctx: &Arc<AgentContext>,
    id: u64,
    req: ReadStreamRequest,
    w: &mut W,
    _r: &mut R,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let max = ctx.config.max_frame;
    let path = match resolve(ctx, &req.path) {
        Ok(p) => p,
        Err(e) => return send(w, id, Outcome::Error(e), max).await,
    };
    let (tx, mut rx) = mpsc::channel::<ReadItem>(4);
    let reader = tokio::task::spawn_blocking(move || read_blocking(&path, &req, &tx));
    // Dropping `rx` (the host went away) stops the reading thread.
    let result = async {
        while let Some(item) = rx.recv().await {
            match item {
                ReadItem::Open(size) => {
                    send(w, id, Outcome::Event(StreamEvent::FileOpen { size }), max).await?;
                }
                ReadItem::Bytes(b) => write_data(w, DataChannel::Stdout, &b, max).await?,
                ReadItem::End { bytes, eof, sha256 } => {
                    let end = Response::FileRead(FileReadEnd { bytes, eof, sha256 });
                    return send(w, id, Outcome::Ok(end), max).await;
                }
                ReadItem::Failed(e) => return send(w, id, Outcome::Error(e), max).await,
            }
        }
        let body = ErrorBody::new(ErrorCode::Internal, "the file reader stopped");
        send(w, id, Outcome::Error(body), max).await
    }
    .await;
    drop(rx);
    let _ = reader.await;
    result
}

/// The target of a write and how to finish it.
struct Target {
    path: PathBuf,
    /// The file written: a temporary one next to `path`, or `path`.
    file_path: PathBuf,
    file: File,
    temporary: bool,
    /// Only when the host sent a checksum to check.
    hasher: Option<Sha256>,
    size: u64,
}

impl Target {
    fn open(req: &WriteStreamRequest, path: &Path) -> Result<Self, ErrorBody> {
        check_mode(req.mode)?;
        let owner = owner_of(req.owner.as_deref())?;
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let Some(name) = path.file_name() else {
            return Err(ErrorBody::new(
                ErrorCode::IsADirectory,
                format!("{}: is a directory", path.display()),
            ));
        };
        if req.create_parents {
            create_dirs_owned(&parent, 0o755, owner.as_ref()).map_err(|e| io_err(&parent, &e))?;
        }
        let existing = match stdfs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(ErrorBody::new(
                    ErrorCode::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ))
            }
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(path, &e)),
        };
        let mode = req
            .mode
            .or(existing.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(0o644);
        let (file_path, temporary) = if req.in_place {
            (path.to_path_buf(), false)
        } else {
            let mut tmp = std::ffi::OsString::from(".");
            tmp.push(name);
            tmp.push(format!(".locale2b-{:016x}.tmp", rand::random::<u64>()));
            (parent.join(tmp), true)
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file_path)
            .map_err(|e| io_err(path, &e))?;
        let setup = (|| -> std::io::Result<()> {
            file.set_permissions(stdfs::Permissions::from_mode(mode))?;
            match (&owner, &existing) {
                (Some(u), _) => std::os::unix::fs::fchown(&file, Some(u.uid), Some(u.gid))?,
                // Keep a replaced file's owner (best effort: only root may chown).
                (None, Some(m)) => {
                    let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
                }
                (None, None) => {}
            }
            Ok(())
        })();
        if let Err(e) = setup {
            if temporary {
                let _ = stdfs::remove_file(&file_path);
            }
            return Err(io_err(path, &e));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file_path,
            file,
            temporary,
            hasher: req.sha256.is_some().then(Sha256::new),
            size: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorBody> {
        self.file
            .write_all(bytes)
            .map_err(|e| io_err(&self.path, &e))?;
        // Start writing back every few MiB while more bytes arrive, so the
        // final sync has little left to do.
        let before = self.size / WRITEBACK_EVERY;
        if (self.size + bytes.len() as u64) / WRITEBACK_EVERY > before {
            use std::os::fd::AsRawFd as _;
            // SAFETY: plain syscall on an open fd; no memory is passed.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Syncs, checks the checksum, renames into place.
    fn finish(self, expected: Option<&str>) -> Result<WrittenResponse, ErrorBody> {
        let sha256 = self.hasher.clone().map(|h| hex(h.finalize()));
        if let (Some(want), Some(sha256)) = (expected, &sha256) {
            if !want.eq_ignore_ascii_case(sha256) {
                self.abandon();
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!("checksum mismatch: the bytes received hash to {sha256}, not {want}; nothing was written"),
                ));
            }
        }
        let fail = |t: &Self, e: std::io::Error| {
            let err = io_err(&t.path, &e);
            if t.temporary {
                let _ = stdfs::remove_file(&t.file_path);
            }
            err
        };
        if let Err(e) = self.file.sync_all() {
            return Err(fail(&self, e));
        }
        if self.temporary {
            if let Err(e) = stdfs::rename(&self.file_path, &self.path) {
                return Err(fail(&self, e));
            }
            if let Some(dir) = self.path.parent() {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(WrittenResponse {
            path: self.path.display().to_string(),
            size: self.size,
            sha256,
        })
    }

    /// Removes what a failed or abandoned write made (a temporary file).
    fn abandon(self) {
        if self.temporary {
            let _ = stdfs::remove_file(&self.file_path);
        }
    }
}

/// What the connection hands the writing thread.
enum WriteItem {
    Bytes(Vec<u8>),
    /// All bytes arrived: finish.
    Done,
}

/// Runs `write_stream` on the connection (see the module docs).
///
/// # Errors
/// Frame errors (the host went away, or sent something that is not part of
/// the stream: the connection is then closed).
pub async fn write_stream<W, R>(
    ctx: &Arc<AgentContext>,
    id: u64,
    req: WriteStreamRequest,
    w: &mut W,
    r: &mut R,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let max = ctx.config.max_frame;
    let path = match resolve(ctx, &req.path) {
        Ok(p) => p,
        Err(e) => return send(w, id, Outcome::Error(e), max).await,
    };
    let (tx, mut rx) = mpsc::channel::<WriteItem>(4);
    let expected = req.sha256.clone();
    // The writer owns the file; a channel closed without `Done` (the host
    // went away) abandons the write.
    let writer = tokio::task::spawn_blocking(move || -> Result<WrittenResponse, ErrorBody> {
        let mut target = Target::open(&req, &path)?;
        while let Some(item) = rx.blocking_recv() {
            match item {
                WriteItem::Bytes(b) => {
                    if let Err(e) = target.write(&b) {
                        target.abandon();
                        return Err(e);
                    }
                }
                WriteItem::Done => return target.finish(expected.as_deref()),
            }
        }
        target.abandon();
        Err(ErrorBody::new(
            ErrorCode::Internal,
            "the write was abandoned",
        ))
    });
    let mut failed_early = false;
    loop {
        let frame = match read_any(r, max).await {
            Ok(Some(f)) => f,
            // The host went away (or broke the stream): abandon.
            Ok(None) => {
                drop(tx);
                let _ = writer.await;
                return Ok(());
            }
            Err(e) => {
                drop(tx);
                let _ = writer.await;
                return Err(e);
            }
        };
        match frame {
            Frame::Data {
                channel: DataChannel::Input,
                bytes,
            } => {
                let last = bytes.is_empty();
                let item = if last {
                    WriteItem::Done
                } else {
                    WriteItem::Bytes(bytes)
                };
                // A closed channel means the writer failed: keep reading
                // (the host is still sending) and answer at the end.
                if tx.send(item).await.is_err() {
                    failed_early = true;
                }
                if last {
                    break;
                }
            }
            _ => {
                drop(tx);
                let _ = writer.await;
                let body = ErrorBody::new(
                    ErrorCode::MalformedFrame,
                    "write_stream takes data frames on channel 0 until an empty one",
                );
                send(w, id, Outcome::Error(body), max).await?;
                return Err(FrameError::Io(std::io::Error::other(
                    "stream broken by the host",
                )));
            }
        }
    }
    drop(tx);
    let outcome = match writer.await {
        Ok(Ok(written)) => Outcome::Ok(Response::Written(written)),
        Ok(Err(e)) => Outcome::Error(e),
        Err(join) => Outcome::Error(ErrorBody::new(
            ErrorCode::Internal,
            format!("the file writer failed: {join}"),
        )),
    };
    let _ = failed_early;
    send(w, id, outcome, max).await
}
