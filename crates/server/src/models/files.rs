//! Bodies and queries of the file routes.

use locale2b_manager::{FileInfo, FileKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// How file content is encoded in a JSON body or response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum Encoding {
    /// Standard base64 with padding (RFC 4648 §4). The default.
    #[default]
    #[serde(rename = "base64")]
    Base64,
    /// The string's UTF-8 bytes as they are.
    #[serde(rename = "utf-8", alias = "utf8", alias = "text")]
    Utf8,
}

fn default_true() -> bool {
    true
}

/// `POST /sandboxes/{id}/files/write`. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WriteFileBody {
    /// Guest path (relative paths are resolved from `/workspace`).
    #[schema(example = "/workspace/hello.txt")]
    pub path: String,
    /// The content: base64 unless `encoding` is `utf-8`.
    #[schema(example = "aGVsbG8K")]
    pub content: String,
    /// Encoding of `content`; `base64` when absent.
    #[serde(default)]
    pub encoding: Encoding,
    /// Permission bits for a new file (decimal JSON number, e.g. 420 = 0o644).
    pub mode: Option<u32>,
    /// Create missing parent directories (default true).
    #[serde(default = "default_true")]
    pub create_parents: bool,
}

/// Result of a write or upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFile {
    /// Path written.
    pub path: String,
    /// Size of the file afterwards.
    pub size: u64,
    /// SHA-256 of the bytes written (lowercase hex), hashed by the server as it sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Query of `GET /sandboxes/{id}/files/content`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContentQuery {
    /// Guest path.
    pub path: String,
    /// First byte (a `Range` header does the same).
    pub offset: Option<u64>,
    /// Most bytes (default: to the end).
    pub length: Option<u64>,
}

/// Query of `PUT /sandboxes/{id}/files/content`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PutContentQuery {
    /// Guest path (parents are created).
    pub path: String,
    /// Permission bits of the file (a replaced file's, else 0644).
    pub mode: Option<u32>,
    /// Expected SHA-256 of the body (hex); also read from the
    /// `X-Content-SHA256` header. On a mismatch nothing is written (400).
    pub sha256: Option<String>,
}

/// `GET /sandboxes/{id}/files/checksum`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChecksumResponse {
    /// Path hashed.
    pub path: String,
    /// Bytes hashed (the file's size).
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Query of `GET /sandboxes/{id}/files/read`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Guest path.
    pub path: String,
    /// First byte to read.
    pub offset: Option<u64>,
    /// Most bytes to return (default: the rest of the file, if it fits in
    /// one response).
    pub length: Option<u64>,
    /// `base64` (default) or `utf-8`.
    #[param(inline)]
    pub encoding: Option<Encoding>,
}

/// Content of a file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileContentResponse {
    /// Path read.
    pub path: String,
    /// The bytes, encoded as `encoding` says.
    pub content: String,
    /// `base64` or `utf-8`.
    pub encoding: Encoding,
    /// Total size of the file.
    pub size: u64,
    /// Offset of the first byte returned.
    pub offset: u64,
    /// True when the read reached the end of the file.
    pub eof: bool,
}

/// Query of `GET /sandboxes/{id}/files/list`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Directory (default `/workspace`).
    pub path: Option<String>,
    /// Descend into subdirectories (symlinks are not followed).
    pub recursive: Option<bool>,
    /// Deepest level when recursive (1 = direct children); default 16.
    pub max_depth: Option<u32>,
}

/// One directory entry or stat result.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileEntry {
    /// Last path component.
    pub name: String,
    /// Full guest path.
    pub path: String,
    /// True for directories.
    pub is_directory: bool,
    /// Size in bytes.
    pub size: u64,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    #[schema(example = "file")]
    pub kind: String,
    /// Permission bits as a number (e.g. 420 = 0o644).
    pub mode: u32,
    /// Modification time, RFC 3339 (UTC).
    pub modified_at: String,
    /// Target of a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<FileInfo> for FileEntry {
    fn from(f: FileInfo) -> Self {
        let kind = match f.kind {
            FileKind::File => "file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        };
        Self {
            name: f.name,
            path: f.path,
            is_directory: f.kind == FileKind::Directory,
            size: f.size,
            kind: kind.to_owned(),
            mode: f.mode,
            modified_at: rfc3339_ms(f.mtime_ms),
            symlink_target: f.symlink_target,
        }
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let t = if ms >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs())
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// `GET /sandboxes/{id}/files/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileListResponse {
    /// Directory listed.
    pub path: String,
    /// Entries, sorted by path.
    pub files: Vec<FileEntry>,
    /// A cap (10 000 entries) was reached and entries were left out.
    pub truncated: bool,
}

/// Query of `files/upload` and `files/stat`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Guest path.
    pub path: String,
}

/// Query of `DELETE /sandboxes/{id}/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Guest path.
    pub path: String,
    /// Delete a non-empty directory with its content.
    pub recursive: Option<bool>,
}

/// `POST /sandboxes/{id}/files/delete`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteFileBody {
    /// Guest path.
    pub path: String,
    /// Delete a non-empty directory with its content.
    #[serde(default)]
    pub recursive: bool,
}

/// Result of a file deletion.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedFile {
    /// Path deleted.
    pub path: String,
    /// Always true.
    pub deleted: bool,
}

/// `POST /sandboxes/{id}/files/mkdir`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirBody {
    /// Directory to create.
    pub path: String,
    /// Create missing parents; an existing directory is then not an error.
    #[serde(default)]
    pub parents: bool,
    /// Permission bits (decimal number; default 493 = 0o755).
    pub mode: Option<u32>,
}

/// Multipart form of `files/upload` (for the OpenAPI description).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (the first part with a file name, or the part named `file`).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_body_defaults() {
        let b: WriteFileBody =
            serde_json::from_str(r#"{"path":"/a","content":"aGk=","extra":1}"#).unwrap();
        assert_eq!(b.encoding, Encoding::Base64);
        assert!(b.create_parents);
        let b: WriteFileBody =
            serde_json::from_str(r#"{"path":"/a","content":"hi","encoding":"utf8"}"#).unwrap();
        assert_eq!(b.encoding, Encoding::Utf8);
    }

    #[test]
    fn mtime_formats_as_rfc3339() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
