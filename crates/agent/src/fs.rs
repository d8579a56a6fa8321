//! File handlers: read, write, list, mkdir, stat, delete, rename.
//!
//! They run on tokio's blocking pool ([`blocking`]). Paths never follow a
//! final symlink where the protocol says so (`stat`, `list_files`,
//! `delete_file`); relative paths resolve from the workspace directory.

use crate::context::AgentContext;
use base64::Engine as _;
use locale2b_protocol::{
    ContentEncoding, DeleteFileRequest, ErrorBody, ErrorCode, FileContent, FileInfo, FileKind,
    ListFilesRequest, Listing, MkdirRequest, PathRequest, ReadFileRequest, RenameRequest, Response,
    WriteFileRequest, WrittenResponse, DEFAULT_LIST_MAX_ENTRIES,
};
use std::fs::{self as stdfs, File, Metadata, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Bytes of a `file_content` answer that are not the base64 content
/// (id, field names, numbers), with a wide margin.
const READ_ENVELOPE: usize = 512;

/// Default depth of a recursive listing.
const DEFAULT_LIST_DEPTH: u32 = 16;

/// User and group names by id, read once per request from `/etc/passwd`
/// and `/etc/group` (a listing names many owners).
#[derive(Debug, Default)]
pub struct Owners {
    users: std::collections::HashMap<u32, String>,
    groups: std::collections::HashMap<u32, String>,
}

impl Owners {
    /// Reads the guest's user and group databases.
    pub fn load() -> Self {
        let passwd = stdfs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = stdfs::read_to_string("/etc/group").unwrap_or_default();
        Self::parse(&passwd, &group)
    }

    /// From `passwd`/`group` text.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let ids = |text: &str| {
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let id = f.nth(1)?.parse().ok()?;
                    Some((id, name.to_owned()))
                })
                .collect()
        };
        Self {
            users: ids(passwd),
            groups: ids(group),
        }
    }

    /// The user name of `uid`, or the uid as digits.
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The group name of `gid`, or the gid as digits.
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// The owner a request names, looked up.
///
/// # Errors
/// `not_found` for an unknown user.
pub(crate) fn owner_of(owner: Option<&str>) -> Result<Option<crate::command::UserSpec>, ErrorBody> {
    owner.map(crate::command::lookup_user).transpose()
}

/// Creates `dir` and its missing ancestors with `mode`, giving the ones it
/// creates to `owner` when set.
pub(crate) fn create_dirs_owned(
    dir: &Path,
    mode: u32,
    owner: Option<&crate::command::UserSpec>,
) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        match stdfs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(p.to_path_buf()),
            Err(e) => return Err(e),
        }
        at = p.parent();
    }
    for p in missing.iter().rev() {
        match stdfs::DirBuilder::new().mode(mode).create(p) {
            Ok(()) => {}
            // Made meanwhile by someone else: theirs to own.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some(u) = owner {
            std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid))?;
        }
    }
    Ok(())
}

/// Runs a blocking file handler on the blocking pool.
///
/// # Errors
/// The handler's error, or `internal` if it panicked.
pub async fn blocking<F>(ctx: &Arc<AgentContext>, f: F) -> Result<Response, ErrorBody>
where
    F: FnOnce(Arc<AgentContext>) -> Result<Response, ErrorBody> + Send + 'static,
{
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || f(c))
        .await
        .unwrap_or_else(|e| {
            Err(ErrorBody::new(
                ErrorCode::Internal,
                format!("file handler failed: {e}"),
            ))
        })
}

/// Resolves a request path: absolute as given, relative from the workspace.
///
/// # Errors
/// `invalid_request` for an empty path or one containing NUL.
pub fn resolve(ctx: &AgentContext, path: &str) -> Result<PathBuf, ErrorBody> {
    resolve_in(&ctx.config.workspace_dir, path)
}

/// [`resolve`] against an explicit workspace directory.
///
/// # Errors
/// `invalid_request` for an empty path or one with a NUL byte.
pub fn resolve_in(workspace: &Path, path: &str) -> Result<PathBuf, ErrorBody> {
    if path.is_empty() {
        return Err(ErrorBody::new(ErrorCode::InvalidRequest, "empty path"));
    }
    if path.contains('\0') {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "path contains a NUL byte",
        ));
    }
    let p = Path::new(path);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace.join(p)
    })
}

pub(crate) fn io_err(path: &Path, e: &std::io::Error) -> ErrorBody {
    ErrorBody::io(&path.display().to_string(), e)
}

/// Largest number of raw bytes whose base64 fits in one answer frame.
pub fn max_read_bytes(max_frame: usize) -> u64 {
    (max_frame.saturating_sub(READ_ENVELOPE) / 4 * 3) as u64
}

/// How long a read of a pipe or device waits for more bytes before it
/// answers what it has (with `eof: false`).
pub const PSEUDO_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// `read_file`. A regular file is read by its size. A file whose size says
/// nothing (pseudo-files such as `/proc/self/status`, pipes, devices) is read
/// until its end, the length asked for, what one answer can carry, or (pipes
/// and devices) [`PSEUDO_QUIET`] without new bytes; its `size` is then the
/// offset plus the bytes returned, and `eof` says whether the end was seen.
///
/// # Errors
/// `not_found`, `is_a_directory`, `permission_denied`, `too_large` when the
/// answer would not fit in a frame, `invalid_request` for an offset into a
/// pipe.
pub fn read_file(ctx: &AgentContext, req: &ReadFileRequest) -> Result<Response, ErrorBody> {
    let path = resolve(ctx, &req.path)?;
    let kind = stdfs::metadata(&path).map_err(|e| io_err(&path, &e))?;
    if kind.is_dir() {
        return Err(ErrorBody::new(
            ErrorCode::IsADirectory,
            format!("{}: is a directory", path.display()),
        ));
    }
    let limit = max_read_bytes(ctx.config.max_frame);
    if !kind.is_file() || kind.len() == 0 {
        return read_unsized(&path, kind.is_file(), req, limit);
    }
    let file = File::open(&path).map_err(|e| io_err(&path, &e))?;
    let meta = file.metadata().map_err(|e| io_err(&path, &e))?;
    let size = meta.len();
    let start = req.offset.min(size);
    let remaining = size - start;
    let want = req.length.map_or(remaining, |l| l.min(remaining));
    if want > limit {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "{}: reading {want} bytes exceeds the {limit} bytes one answer can carry; read it in parts with offset/length",
                path.display()
            ),
        ));
    }
    let mut buf = vec![0u8; want as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], start + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(&path, &e)),
        }
    }
    buf.truncate(filled);
    let end = start + filled as u64;
    Ok(Response::FileContent(FileContent {
        content_b64: B64.encode(&buf),
        offset: start,
        size,
        // A file that shrank under the read ends where the bytes did.
        eof: end >= size || filled < want as usize,
    }))
}

/// Reads a file whose size is unknown (see [`read_file`]).
fn read_unsized(
    path: &Path,
    regular: bool,
    req: &ReadFileRequest,
    limit: u64,
) -> Result<Response, ErrorBody> {
    let want = usize::try_from(req.length.map_or(limit, |l| l.min(limit))).unwrap_or(usize::MAX);
    let (file, seekable) = open_for_read(path, regular, req.offset)?;
    let mut buf = vec![0u8; want.min(1024 * 1024)];
    let mut out: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut waited = false;
    while out.len() < want {
        let room = (want - out.len()).min(buf.len());
        let got = if seekable {
            file.read_at(&mut buf[..room], req.offset + out.len() as u64)
        } else {
            std::io::Read::read(&mut &file, &mut buf[..room])
        };
        match got {
            // A FIFO read before its writer opened it ends at once; give
            // the writer the quiet time to show up.
            Ok(0) if !seekable && out.is_empty() && !waited => {
                waited = true;
                if !wait_readable(&file, PSEUDO_QUIET) {
                    break;
                }
            }
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_readable(&file, PSEUDO_QUIET) {
                    break;
                }
            }
            Err(e) => return Err(io_err(path, &e)),
        }
    }
    Ok(Response::FileContent(FileContent {
        content_b64: B64.encode(&out),
        offset: req.offset,
        size: req.offset + out.len() as u64,
        eof,
    }))
}

/// Opens `path` for reading. Pipes and devices (`file_like` false) are
/// opened non-blocking, so a FIFO without a writer never hangs the open
/// and reads wait with [`wait_readable`] instead. Answers the file and
/// whether it can be read at an offset; a read past 0 of something that
/// cannot is refused.
pub(crate) fn open_for_read(
    path: &Path,
    file_like: bool,
    offset: u64,
) -> Result<(File, bool), ErrorBody> {
    use std::io::Seek as _;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(if file_like {
            0
        } else {
            libc::O_NONBLOCK | libc::O_NOCTTY
        })
        .open(path)
        .map_err(|e| io_err(path, &e))?;
    let seekable = file_like || (&file).stream_position().is_ok();
    if offset > 0 && !seekable {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            format!(
                "{}: is a pipe; it can only be read from offset 0",
                path.display()
            ),
        ));
    }
    Ok((file, seekable))
}

/// Waits up to `timeout` for `file` to have bytes (or its end) to read.
pub(crate) fn wait_readable(file: &File, timeout: std::time::Duration) -> bool {
    use std::os::fd::AsFd as _;
    let mut fds = [nix::poll::PollFd::new(
        file.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)), Ok(n) if n > 0)
}

fn decode_content(req: &WriteFileRequest) -> Result<Vec<u8>, ErrorBody> {
    match req.encoding {
        ContentEncoding::Utf8 => Ok(req.content.as_bytes().to_vec()),
        ContentEncoding::Base64 => B64.decode(req.content.as_bytes()).map_err(|e| {
            ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("content is not valid base64: {e}"),
            )
        }),
    }
}

pub(crate) fn check_mode(mode: Option<u32>) -> Result<(), ErrorBody> {
    match mode {
        Some(m) if m > 0o7777 => Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            format!("mode {m:o} has bits beyond 0o7777"),
        )),
        _ => Ok(()),
    }
}

/// `write_file`: atomic replace (temp file in the same directory, fsync,
/// rename, fsync of the directory) or append.
///
/// # Errors
/// `not_found` for a missing parent without `create_parents`,
/// `is_a_directory`, `permission_denied`, `invalid_request` for bad base64.
pub fn write_file(ctx: &AgentContext, req: &WriteFileRequest) -> Result<Response, ErrorBody> {
    let path = resolve(ctx, &req.path)?;
    check_mode(req.mode)?;
    let owner = owner_of(req.owner.as_deref())?;
    let data = decode_content(req)?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let Some(file_name) = path.file_name().map(|n| n.to_os_string()) else {
        return Err(ErrorBody::new(
            ErrorCode::IsADirectory,
            format!("{}: is a directory", path.display()),
        ));
    };
    if req.create_parents {
        create_dirs_owned(&parent, 0o755, owner.as_ref()).map_err(|e| io_err(&parent, &e))?;
    }
    let existing = match stdfs::metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(ErrorBody::new(
                ErrorCode::IsADirectory,
                format!("{}: is a directory", path.display()),
            ))
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&path, &e)),
    };
    if req.append || req.in_place {
        let mut f = OpenOptions::new()
            .append(req.append)
            .write(true)
            .truncate(!req.append)
            .create(true)
            .mode(req.mode.unwrap_or(0o644))
            .open(&path)
            .map_err(|e| io_err(&path, &e))?;
        f.write_all(&data).map_err(|e| io_err(&path, &e))?;
        if let Some(u) = &owner {
            std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))
                .map_err(|e| io_err(&path, &e))?;
        }
        if let (Some(mode), Some(_)) = (req.mode, &existing) {
            f.set_permissions(stdfs::Permissions::from_mode(mode))
                .map_err(|e| io_err(&path, &e))?;
        }
        f.sync_data().map_err(|e| io_err(&path, &e))?;
        let size = f.metadata().map_err(|e| io_err(&path, &e))?.len();
        return Ok(Response::Written(WrittenResponse {
            path: path.display().to_string(),
            size,
            sha256: None,
        }));
    }
    let mode = req
        .mode
        .or(existing.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let suffix: u64 = rand::random();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&file_name);
    tmp_name.push(format!(".locale2b-{suffix:016x}.tmp"));
    let tmp = parent.join(tmp_name);
    let result = (|| -> Result<u64, ErrorBody> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&path, &e))?;
        f.write_all(&data).map_err(|e| io_err(&path, &e))?;
        f.set_permissions(stdfs::Permissions::from_mode(mode))
            .map_err(|e| io_err(&path, &e))?;
        if let Some(u) = &owner {
            std::os::unix::fs::fchown(&f, Some(u.uid), Some(u.gid))
                .map_err(|e| io_err(&path, &e))?;
        } else if let Some(m) = &existing {
            // Keep the owner of a replaced file (best effort: only root may chown).
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.sync_all().map_err(|e| io_err(&path, &e))?;
        stdfs::rename(&tmp, &path).map_err(|e| io_err(&path, &e))?;
        if let Ok(dir) = File::open(&parent) {
            let _ = dir.sync_all();
        }
        Ok(data.len() as u64)
    })();
    if result.is_err() {
        let _ = stdfs::remove_file(&tmp);
    }
    let size = result?;
    Ok(Response::Written(WrittenResponse {
        path: path.display().to_string(),
        size,
        sha256: None,
    }))
}

/// Lowercase hex of a digest.
pub(crate) fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a [`FileInfo`] from `lstat` metadata.
pub fn file_info(path: &Path, meta: &Metadata, owners: &Owners) -> FileInfo {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let symlink_target = if ft.is_symlink() {
        stdfs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    FileInfo {
        name,
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
        symlink_target,
        owner: Some(owners.user(meta.uid())),
        group: Some(owners.group(meta.gid())),
    }
}

/// `list_files`: sorted by path; symlinks listed, never followed.
///
/// # Errors
/// `not_found`, `not_a_directory`, `permission_denied` for the top directory
/// (unreadable subdirectories are listed but not descended into).
pub fn list_files(ctx: &AgentContext, req: &ListFilesRequest) -> Result<Response, ErrorBody> {
    let root = resolve(ctx, &req.path)?;
    let meta = stdfs::symlink_metadata(&root).map_err(|e| io_err(&root, &e))?;
    if !meta.is_dir() {
        return Err(ErrorBody::new(
            ErrorCode::NotADirectory,
            format!("{}: not a directory", root.display()),
        ));
    }
    let max_entries = req
        .max_entries
        .unwrap_or(DEFAULT_LIST_MAX_ENTRIES)
        .min(DEFAULT_LIST_MAX_ENTRIES) as usize;
    let max_depth = if req.recursive {
        req.max_depth.unwrap_or(DEFAULT_LIST_DEPTH).max(1)
    } else {
        1
    };
    let mut walker = Walker {
        max_depth,
        max_entries,
        owners: Owners::load(),
        out: Vec::new(),
        truncated: false,
    };
    walker.walk(&root, 1, true)?;
    let Walker {
        out: mut entries,
        truncated,
        ..
    } = walker;
    entries.sort_by(|a: &FileInfo, b: &FileInfo| a.path.cmp(&b.path));
    Ok(Response::Listing(Listing { entries, truncated }))
}

/// A depth-first listing in progress.
struct Walker {
    max_depth: u32,
    max_entries: usize,
    owners: Owners,
    out: Vec<FileInfo>,
    truncated: bool,
}

impl Walker {
    fn walk(&mut self, dir: &Path, depth: u32, top: bool) -> Result<(), ErrorBody> {
        let rd = match stdfs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if top => return Err(io_err(dir, &e)),
            Err(_) => return Ok(()),
        };
        let mut children: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            if self.out.len() >= self.max_entries {
                self.truncated = true;
                return Ok(());
            }
            let Ok(meta) = stdfs::symlink_metadata(&child) else {
                continue;
            };
            self.out.push(file_info(&child, &meta, &self.owners));
            // Deeper levels past `max_depth` are left out by request; that
            // is not a truncation.
            if meta.is_dir() && depth < self.max_depth {
                self.walk(&child, depth + 1, false)?;
                if self.truncated {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// `mkdir`.
///
/// # Errors
/// `already_exists` without `parents`, `not_found` for a missing parent,
/// `not_a_directory` when a non-directory is in the way.
pub fn mkdir(ctx: &AgentContext, req: &MkdirRequest) -> Result<Response, ErrorBody> {
    let path = resolve(ctx, &req.path)?;
    check_mode(req.mode)?;
    let owner = owner_of(req.owner.as_deref())?;
    let mode = req.mode.unwrap_or(0o755);
    if req.parents {
        create_dirs_owned(&path, mode, owner.as_ref()).map_err(|e| io_err(&path, &e))?;
    } else {
        stdfs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .map_err(|e| io_err(&path, &e))?;
        if let Some(u) = &owner {
            std::os::unix::fs::lchown(&path, Some(u.uid), Some(u.gid))
                .map_err(|e| io_err(&path, &e))?;
        }
    }
    let meta = stdfs::symlink_metadata(&path).map_err(|e| io_err(&path, &e))?;
    if !meta.is_dir() {
        return Err(ErrorBody::new(
            ErrorCode::AlreadyExists,
            format!("{}: exists and is not a directory", path.display()),
        ));
    }
    if let Some(mode) = req.mode {
        // The umask may have cleared bits: set exactly what was asked.
        stdfs::set_permissions(&path, stdfs::Permissions::from_mode(mode))
            .map_err(|e| io_err(&path, &e))?;
    }
    let meta = stdfs::symlink_metadata(&path).map_err(|e| io_err(&path, &e))?;
    Ok(Response::Stat(file_info(&path, &meta, &Owners::load())))
}

/// `stat` (of the path itself, not a symlink's target).
///
/// # Errors
/// `not_found`, `permission_denied`.
pub fn stat(ctx: &AgentContext, req: &PathRequest) -> Result<Response, ErrorBody> {
    let path = resolve(ctx, &req.path)?;
    let meta = stdfs::symlink_metadata(&path).map_err(|e| io_err(&path, &e))?;
    Ok(Response::Stat(file_info(&path, &meta, &Owners::load())))
}

/// `delete_file`: removes a file, a symlink (never its target) or a
/// directory (its content too when `recursive`).
///
/// # Errors
/// `not_found`, `directory_not_empty` without `recursive`, `invalid_request`
/// for `/`.
pub fn delete_file(ctx: &AgentContext, req: &DeleteFileRequest) -> Result<Response, ErrorBody> {
    let path = resolve(ctx, &req.path)?;
    if path.parent().is_none() {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "refusing to delete /",
        ));
    }
    let meta = stdfs::symlink_metadata(&path).map_err(|e| io_err(&path, &e))?;
    let res = if meta.is_dir() {
        if req.recursive {
            // std's remove_dir_all does not follow symlinks inside the tree.
            stdfs::remove_dir_all(&path)
        } else {
            stdfs::remove_dir(&path)
        }
    } else {
        stdfs::remove_file(&path)
    };
    res.map_err(|e| io_err(&path, &e))?;
    Ok(Response::Done)
}

/// `rename`.
///
/// # Errors
/// `not_found`, `is_a_directory`/`not_a_directory` for kind mismatches,
/// `directory_not_empty` when replacing a non-empty directory.
pub fn rename(ctx: &AgentContext, req: &RenameRequest) -> Result<Response, ErrorBody> {
    let from = resolve(ctx, &req.from)?;
    let to = resolve(ctx, &req.to)?;
    stdfs::rename(&from, &to).map_err(|e| {
        ErrorBody::new(
            ErrorCode::from_io_kind(e.kind()),
            format!("rename {} -> {}: {e}", from.display(), to.display()),
        )
    })?;
    Ok(Response::Done)
}
