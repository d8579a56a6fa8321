//! The TCP forwarder: one host stream on [`FORWARD_VSOCK_PORT`] becomes one
//! TCP connection to a port on the guest's loopback (how the host reaches
//! a web server the sandbox runs, with no network device in the guest).
//!
//! [`FORWARD_VSOCK_PORT`]: locale2b_protocol::FORWARD_VSOCK_PORT

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest `TCP <port>\n` line accepted.
const MAX_LINE: usize = 32;
/// Time the host has to send its line, and the guest port to accept.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one forwarding stream: reads `TCP <port>\n`, connects to
/// `127.0.0.1:<port>` (then `[::1]:<port>`), answers `OK\n` or
/// `ERR <reason>\n`, then copies bytes both ways until both directions
/// have ended.
pub async fn serve_forward<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let line = match tokio::time::timeout(SETUP_TIMEOUT, read_line(&mut stream)).await {
        Ok(Ok(Some(line))) => line,
        _ => return,
    };
    let port = match parse_request(&line) {
        Ok(port) => port,
        Err(why) => {
            let _ = stream.write_all(format!("ERR {why}\n").as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let mut tcp = match connect(port).await {
        Ok(tcp) => tcp,
        Err(why) => {
            tracing::debug!(port, %why, "forward: guest port not reachable");
            let _ = stream.write_all(format!("ERR {why}\n").as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if stream.write_all(b"OK\n").await.is_err() || stream.flush().await.is_err() {
        return;
    }
    match tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
        Ok((up, down)) => tracing::debug!(port, up, down, "forward: connection ended"),
        Err(e) => tracing::debug!(port, error = %e, "forward: connection failed"),
    }
}

/// The port of a `TCP <port>` line, or why it is refused.
fn parse_request(line: &str) -> Result<u16, String> {
    let Some(port) = line.strip_prefix("TCP ") else {
        return Err(format!("expected `TCP <port>`, got {line:?}"));
    };
    match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {port:?}: expected 1-65535")),
        Ok(p) => Ok(p),
    }
}

/// Connects to `port` on the guest's loopback, IPv4 first.
async fn connect(port: u16) -> Result<TcpStream, String> {
    let v4 = tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await;
    match v4 {
        Ok(Ok(tcp)) => return Ok(tcp),
        Ok(Err(e)) if e.kind() != std::io::ErrorKind::ConnectionRefused => {
            return Err(format!("connect to 127.0.0.1:{port}: {e}"));
        }
        Ok(Err(_)) => {}
        Err(_) => return Err(format!("connect to 127.0.0.1:{port} timed out")),
    }
    match tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(("::1", port))).await {
        Ok(Ok(tcp)) => Ok(tcp),
        _ => Err(format!(
            "nothing listens on port {port} in the guest (connection refused)"
        )),
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes, one byte at
/// a time so nothing after it is consumed.
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8(line).ok());
        }
        if line.len() == MAX_LINE {
            return Ok(None);
        }
        line.push(byte[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio::net::TcpListener;

    #[test]
    fn requests_are_checked() {
        assert_eq!(parse_request("TCP 8000"), Ok(8000));
        assert!(parse_request("TCP 0").is_err());
        assert!(parse_request("TCP 70000").is_err());
        assert!(parse_request("UDP 53")
            .unwrap_err()
            .contains("expected `TCP <port>`"));
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_a_closed_port_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.iter().map(u8::to_ascii_uppercase).collect::<Vec<_>>())
                .await
                .unwrap();
        });
        let (mut host, guest) = duplex(1024);
        tokio::spawn(serve_forward(guest));
        host.write_all(format!("TCP {port}\nhello").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        host.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"OK\nHELLO");
        server.await.unwrap();

        // The port is closed now.
        let (mut host, guest) = duplex(1024);
        tokio::spawn(serve_forward(guest));
        host.write_all(format!("TCP {port}\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        host.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("ERR nothing listens on port"), "{out}");
    }
}
