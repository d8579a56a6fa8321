//! File operations on a running guest.

use super::Guest;
use crate::{FileInfo, FileRead, Listing, ManagerError, Result, WriteFile, Written};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_protocol::{
    ContentEncoding, DeleteFileRequest, ListFilesRequest, MkdirRequest, ReadFileRequest,
    WriteFileRequest,
};

impl Guest {
    pub(super) async fn read_file(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<FileRead> {
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

    pub(super) async fn write_file(&self, file: WriteFile) -> Result<Written> {
        if file.path.is_empty() {
            return Err(ManagerError::InvalidInput("path must not be empty".into()));
        }
        let req = WriteFileRequest {
            path: file.path,
            content: B64.encode(&file.data),
            encoding: ContentEncoding::Base64,
            mode: file.mode,
            create_parents: file.create_parents,
            append: file.append,
        };
        let w = self
            .client()?
            .write_file(req)
            .await
            .map_err(|e| self.error("write_file", e))?;
        Ok(Written {
            path: w.path,
            size: w.size,
        })
    }

    pub(super) async fn list_files(
        &self,
        path: &str,
        recursive: bool,
        max_depth: Option<u32>,
    ) -> Result<Listing> {
        let req = ListFilesRequest {
            path: path.to_owned(),
            recursive,
            max_depth,
            max_entries: None,
        };
        self.client()?
            .list_files(req)
            .await
            .map_err(|e| self.error("list_files", e))
    }

    pub(super) async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.client()?
            .stat(path)
            .await
            .map_err(|e| self.error("stat", e))
    }

    pub(super) async fn mkdir(
        &self,
        path: &str,
        parents: bool,
        mode: Option<u32>,
    ) -> Result<FileInfo> {
        let req = MkdirRequest {
            path: path.to_owned(),
            parents,
            mode,
        };
        self.client()?
            .mkdir(req)
            .await
            .map_err(|e| self.error("mkdir", e))
    }

    pub(super) async fn delete(&self, path: &str, recursive: bool) -> Result<()> {
        let req = DeleteFileRequest {
            path: path.to_owned(),
            recursive,
        };
        self.client()?
            .delete_file(req)
            .await
            .map_err(|e| self.error("delete_file", e))
    }

    pub(super) async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.client()?
            .rename(from, to)
            .await
            .map_err(|e| self.error("rename", e))
    }
}
