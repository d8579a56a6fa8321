//! File operations on a running guest (bytes in and out: `transfer.rs`).

use super::Guest;
use crate::{FileInfo, FsEvent, FsEvents, Listing, MakeDir, ManagerError, Result};
use locale2b_agent_client::StreamItem;
use locale2b_protocol::{DeleteFileRequest, ListFilesRequest, MkdirRequest};
use locale2b_protocol::{Request, Response, StreamEvent, WatchDirRequest};

impl Guest {
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

impl Guest {
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
