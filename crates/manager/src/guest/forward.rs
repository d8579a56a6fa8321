//! A TCP connection to a guest port, carried by the agent's forwarder.

use super::Guest;
use crate::{GuestErrorKind, ManagerError, Result};
use locale2b_agent_client::ClientError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// How long opening a guest port may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection to a guest port. Its sandbox counts as in use (no
/// idle pause, no eviction) until it is dropped.
#[derive(Debug)]
pub struct PortConn {
    stream: UnixStream,
    _guard: Option<crate::sandbox::AttachGuard>,
}

impl AsyncRead for PortConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PortConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Guest {
    /// Opens `port` on the guest's loopback (resuming a paused sandbox
    /// first when its `auto_resume` is set).
    pub(super) async fn connect_port(&self, port: u16) -> Result<PortConn> {
        if port == 0 {
            return Err(ManagerError::InvalidInput(
                "port must be between 1 and 65535".into(),
            ));
        }
        self.auto_resume().await?;
        let client = self.client()?;
        let speaks = client
            .agent_info()
            .is_some_and(|h| h.protocol_version >= locale2b_protocol::FORWARD_PROTOCOL_VERSION);
        if !speaks {
            return Err(ManagerError::Unsupported(format!(
                "the guest agent of sandbox {} cannot forward ports; rebuild the guest image",
                self.id
            )));
        }
        let stream =
            locale2b_agent_client::forward_connect(client.socket_path(), port, OPEN_TIMEOUT)
                .await
                .map_err(|e| match e {
                    ClientError::ForwardRefused(why) => ManagerError::Guest {
                        kind: GuestErrorKind::Failed {
                            code: "port_unreachable",
                        },
                        message: format!("sandbox {}: {why}", self.id),
                    },
                    other => self.error(&format!("opening port {port}"), other),
                })?;
        Ok(PortConn {
            stream,
            _guard: self.sandbox.as_ref().map(crate::sandbox::Sandbox::attach),
        })
    }
}
