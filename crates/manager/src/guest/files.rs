//! File operations on a running guest.

use super::Guest;
use crate::{
    ByteStream, FileInfo, FileRead, FsEvent, FsEvents, Listing, MakeDir, ManagerError, Result,
    Upload, WriteFile, Written,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt as _;
use locale2b_agent_client::StreamItem;
use locale2b_protocol::{
    ContentEncoding, DeleteFileRequest, ListFilesRequest, MkdirRequest, ReadFileRequest,
    WriteFileRequest,
};
use locale2b_protocol::{Request, Response, StreamEvent, WatchDirRequest};

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

    pub(super) async fn mkdir(&self, dir: MakeDir) -> Result<FileInfo> {
        let req = MkdirRequest {
            path: dir.path,
            parents: dir.parents,
            mode: dir.mode,
            owner: dir.owner,
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

/// Size of each write while streaming an upload into the guest.
pub const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

impl Guest {
    pub(super) async fn upload(&self, up: Upload, body: ByteStream<'_>) -> Result<Written> {
        if up.path.is_empty() || up.path.ends_with('/') {
            return Err(ManagerError::InvalidInput(
                "path must name a file (not empty, not ending in '/')".into(),
            ));
        }
        if up.in_place {
            let size = self.upload_to(&up, &up.path, body).await?;
            return Ok(Written {
                path: up.path,
                size,
            });
        }
        let tmp = format!("{}.upload-{:08x}", up.path, rand::random::<u32>());
        let result = match self.upload_to(&up, &tmp, body).await {
            Ok(size) => self.rename(&tmp, &up.path).await.map(|()| size),
            Err(e) => Err(e),
        };
        match result {
            Ok(size) => Ok(Written {
                path: up.path,
                size,
            }),
            Err(e) => {
                if let Err(ce) = self.delete(&tmp, false).await {
                    tracing::debug!(sandbox_id = %self.sandbox_id(), path = %tmp, error = %ce, "upload cleanup failed");
                }
                Err(e)
            }
        }
    }

    /// Writes the body to `tmp` in [`UPLOAD_CHUNK_BYTES`] parts; answers
    /// the size.
    async fn upload_to(&self, up: &Upload, tmp: &str, mut body: ByteStream<'_>) -> Result<u64> {
        let mut buf: Vec<u8> = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
        let mut total: u64 = 0;
        let mut first = true;
        let write = |data: Vec<u8>, append: bool| {
            self.write_file(WriteFile {
                path: tmp.to_owned(),
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

    pub(super) async fn watch_dir(&self, path: &str, recursive: bool) -> Result<FsEvents> {
        let req = Request::WatchDir(WatchDirRequest {
            path: path.to_owned(),
            recursive,
        });
        let mut stream = self
            .client()?
            .stream(req, super::STREAM_IDLE)
            .await
            .map_err(|e| self.error("watch_dir", e))?;
        match stream.next().await {
            Ok(Some(StreamItem::Event(StreamEvent::Watching))) => {}
            Ok(other) => {
                return Err(ManagerError::Vm {
                    message: format!("the guest agent began watch_dir with {other:?}"),
                    source: None,
                })
            }
            Err(e) => return Err(self.error("watch_dir", e)),
        }
        let guest = self.clone();
        Ok(Box::pin(futures::stream::unfold(
            Some((guest, stream)),
            |state| async move {
                let (guest, mut stream) = state?;
                loop {
                    match stream.next().await {
                        Ok(Some(StreamItem::Event(StreamEvent::Fs { name, op }))) => {
                            return Some((Ok(FsEvent { name, op }), Some((guest, stream))))
                        }
                        Ok(Some(StreamItem::Event(_))) => continue,
                        Ok(Some(StreamItem::End(Response::Done)) | None) => return None,
                        Ok(Some(other)) => {
                            let err = ManagerError::Vm {
                                message: format!("the guest agent sent {other:?} in watch_dir"),
                                source: None,
                            };
                            return Some((Err(err), None));
                        }
                        Err(e) => return Some((Err(guest.error("watch_dir", e)), None)),
                    }
                }
            },
        )))
    }
}
