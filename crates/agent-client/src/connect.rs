//! Opening a byte stream to a guest port through a hybrid-vsock Unix socket.
//!
//! Firecracker (natively) and the qemu driver (through its virtio-serial
//! bridge) both expose the guest's vsock ports on one host Unix socket: the
//! host connects, writes `CONNECT <port>\n` and reads one line `OK <n>\n`;
//! from then on the stream is the guest service's byte stream. When nobody
//! serves the port the socket is closed; when the guest's vsock driver is not
//! up yet Firecracker neither answers nor closes, so the reply has a timeout.

use crate::ClientError;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY_LINE: usize = 64;

/// Connects to the hybrid-vsock socket at `path` and opens guest port `port`,
/// all within `timeout`.
///
/// Returns the stream positioned right after the `OK` line: the next byte
/// read is the guest service's first byte. One attempt only; callers that
/// wait for a booting guest retry (see [`crate::AgentClient::wait_ready`]).
///
/// # Errors
/// [`ClientError::Connect`] when the socket cannot be connected,
/// [`ClientError::Handshake`] when it is closed before `OK` (port not
/// served) or answers something else, [`ClientError::Timeout`] when
/// `timeout` passes first, [`ClientError::Io`] when writing `CONNECT` fails.
pub async fn hybrid_vsock_connect(
    path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ClientError> {
    match tokio::time::timeout(timeout, connect_with(path, port, timeout, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::timeout(
            format!("hybrid vsock connect to port {port}"),
            timeout,
        )),
    }
}

/// Opens a TCP connection to `guest_port` on the guest's loopback through
/// the agent's forwarder ([`locale2b_protocol::FORWARD_VSOCK_PORT`]), all
/// within `timeout`. The returned stream carries that connection's bytes.
///
/// # Errors
/// As [`hybrid_vsock_connect`]; [`ClientError::ForwardRefused`] when
/// nothing listens on the guest port.
pub async fn forward_connect(
    path: &Path,
    guest_port: u16,
    timeout: Duration,
) -> Result<UnixStream, ClientError> {
    let open = async {
        let mut stream = connect_with(
            path,
            locale2b_protocol::FORWARD_VSOCK_PORT,
            timeout,
            timeout,
        )
        .await?;
        stream
            .write_all(format!("TCP {guest_port}\n").as_bytes())
            .await
            .map_err(ClientError::Io)?;
        let line = read_line(&mut stream).await?;
        match line.strip_prefix("ERR ") {
            None if line == "OK" => Ok(stream),
            None => Err(ClientError::Protocol(format!(
                "unexpected reply of the forwarder: {line:?}"
            ))),
            Some(why) => Err(ClientError::ForwardRefused(why.to_owned())),
        }
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::timeout(
            format!("forward to guest port {guest_port}"),
            timeout,
        )),
    }
}

/// Reads one line (without its `\n`) byte by byte, at most 512 bytes.
async fn read_line(stream: &mut UnixStream) -> Result<String, ClientError> {
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.map_err(ClientError::Io)? == 0 {
            return Err(ClientError::Handshake(
                "the forwarder closed the stream before answering (an agent without it?)".into(),
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() == 512 {
            return Err(ClientError::Protocol("forwarder reply too long".into()));
        }
        line.push(byte[0]);
    }
}

/// [`hybrid_vsock_connect`] with separate limits for the Unix connect and
/// for the `OK` reply.
pub(crate) async fn connect_with(
    path: &Path,
    port: u32,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<UnixStream, ClientError> {
    let mut stream = match tokio::time::timeout(connect_timeout, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(_) => return Err(ClientError::timeout("connect", connect_timeout)),
    };
    let exchange = async {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(ClientError::Io)?;
        read_ok_line(&mut stream, port).await
    };
    match tokio::time::timeout(handshake_timeout, exchange).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::timeout(
            format!("reply to CONNECT {port}"),
            handshake_timeout,
        )),
    }
}

/// Reads the reply line byte by byte, so no byte of the service's stream is
/// consumed, and checks that it is `OK` (the number after it is not used).
async fn read_ok_line(stream: &mut UnixStream, port: u32) -> Result<(), ClientError> {
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Handshake(format!(
                "socket closed before the reply to CONNECT {port} (is port {port} served?)"
            )));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LINE {
            return Err(ClientError::Handshake(format!(
                "reply to CONNECT {port} longer than {MAX_REPLY_LINE} bytes"
            )));
        }
    }
    if line.ends_with(b"\r") {
        line.pop();
    }
    if line == b"OK" || line.starts_with(b"OK ") {
        Ok(())
    } else {
        Err(ClientError::Handshake(format!(
            "unexpected reply to CONNECT {port}: {:?}",
            String::from_utf8_lossy(&line)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reply(bytes: &'static [u8]) -> Result<(), ClientError> {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        b.write_all(bytes).await.expect("write");
        drop(b);
        read_ok_line(&mut a, 5000).await
    }

    #[tokio::test]
    async fn ok_line_variants() {
        assert!(reply(b"OK 1073741824\n").await.is_ok());
        assert!(reply(b"OK\n").await.is_ok());
        assert!(reply(b"OK 5000\r\n").await.is_ok());
        let err = reply(b"NO\n").await.expect_err("NO is refused");
        assert!(
            matches!(err, ClientError::Handshake(ref m) if m.contains("NO")),
            "{err:?}"
        );
        let err = reply(b"OK 1").await.expect_err("EOF before newline");
        assert!(
            matches!(err, ClientError::Handshake(ref m) if m.contains("closed")),
            "{err:?}"
        );
        let err = reply(b"").await.expect_err("EOF");
        assert!(err.is_retryable());
        let long: &'static [u8] = Box::leak(vec![b'O'; 100].into_boxed_slice());
        assert!(reply(long).await.is_err());
    }

    #[tokio::test]
    async fn stream_after_ok_is_untouched() {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        b.write_all(b"OK 7\nrest").await.expect("write");
        read_ok_line(&mut a, 5000).await.expect("ok");
        let mut rest = [0u8; 4];
        a.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"rest");
    }
}
