//! `read_stream` and `write_stream` (protocol 3) against the in-process agent.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestAgent;
use locale2b_protocol::*;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn read_req(path: &str, offset: u64, length: Option<u64>) -> Request {
    Request::ReadStream(ReadStreamRequest {
        path: path.into(),
        offset,
        length,
        discard: false,
        hash: true,
    })
}

fn write_req(path: &str) -> WriteStreamRequest {
    WriteStreamRequest {
        path: path.into(),
        mode: None,
        create_parents: false,
        owner: None,
        in_place: false,
        sha256: None,
    }
}

fn end(s: &common::Streamed) -> FileReadEnd {
    match s.end.clone().unwrap().unwrap() {
        Response::FileRead(e) => e,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_file_streams_whole_or_in_a_range_with_its_checksum() {
    let agent = TestAgent::start().await;
    let data: Vec<u8> = (0u64..3 * 1024 * 1024 + 17)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let path = agent.workspace.join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let mut c = agent.client().await;
    c.hello(3).await;
    let s = c
        .stream(read_req(&path.display().to_string(), 0, None))
        .await;
    assert_eq!(
        s.events,
        vec![StreamEvent::FileOpen {
            size: Some(data.len() as u64)
        }]
    );
    assert_eq!(s.data["stdout"], data);
    let e = end(&s);
    assert_eq!(
        (e.bytes, e.eof, e.sha256.clone()),
        (data.len() as u64, true, Some(hex(&data)))
    );

    let s = c
        .stream(read_req(&path.display().to_string(), 1000, Some(5000)))
        .await;
    assert_eq!(s.data["stdout"], data[1000..6000]);
    assert!(!end(&s).eof);

    let s = c
        .stream(Request::ReadStream(ReadStreamRequest {
            path: path.display().to_string(),
            offset: 0,
            length: None,
            discard: true,
            hash: false,
        }))
        .await;
    assert!(s.data.is_empty(), "discard sends no bytes");
    assert_eq!(end(&s).sha256, Some(hex(&data)));

    let s = c.stream(read_req("/proc/self/status", 0, None)).await;
    assert_eq!(s.events, vec![StreamEvent::FileOpen { size: None }]);
    assert!(String::from_utf8_lossy(&s.data["stdout"]).contains("Name:"));
    assert!(end(&s).eof);

    let s = c.stream(read_req("nope.bin", 0, None)).await;
    assert_eq!(s.end.unwrap().unwrap_err().code, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_streamed_write_is_atomic_checked_and_keeps_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let agent = TestAgent::start().await;
    let path = agent.workspace.join("out.bin");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data: Vec<u8> = (0u32..2_000_000).map(|i| (i % 253) as u8).collect();
    let mut c = agent.client().await;
    c.hello(3).await;
    let mut req = write_req(&path.display().to_string());
    req.sha256 = Some(hex(&data));
    let id = c.send(Request::WriteStream(req)).await;
    for part in data.chunks(300_000) {
        c.send_data(DataChannel::Input, part).await;
    }
    c.send_data(DataChannel::Input, &[]).await;
    let f = c.recv().await;
    assert_eq!(f.id, id);
    match f.outcome {
        Outcome::Ok(Response::Written(w)) => {
            assert_eq!(w.size, data.len() as u64);
            assert_eq!(w.sha256.as_deref(), Some(hex(&data).as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a replaced file keeps its mode");

    // A wrong checksum keeps nothing.
    let mut req = write_req(&path.display().to_string());
    req.sha256 = Some(hex(b"something else"));
    c.send(Request::WriteStream(req)).await;
    c.send_data(DataChannel::Input, b"new bytes").await;
    c.send_data(DataChannel::Input, &[]).await;
    match c.recv().await.outcome {
        Outcome::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains("checksum mismatch"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let leftovers: Vec<_> = std::fs::read_dir(&agent.workspace)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("locale2b"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A missing parent without create_parents: a clear error, after the bytes.
    c.send(Request::WriteStream(write_req("no/such/dir/f")))
        .await;
    c.send_data(DataChannel::Input, b"x").await;
    c.send_data(DataChannel::Input, &[]).await;
    match c.recv().await.outcome {
        Outcome::Error(e) => assert_eq!(e.code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.call(Request::Ping).await, Ok(Response::Pong(_))));
}

#[tokio::test]
async fn an_abandoned_write_leaves_the_target_untouched() {
    let agent = TestAgent::start().await;
    let path = agent.workspace.join("keep.txt");
    std::fs::write(&path, b"original").unwrap();
    let mut c = agent.client().await;
    c.hello(3).await;
    c.send(Request::WriteStream(write_req(&path.display().to_string())))
        .await;
    c.send_data(DataChannel::Input, b"half of a new").await;
    drop(c);
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let tmp = std::fs::read_dir(&agent.workspace)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
        if !tmp {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "temporary file never removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"original");
    // Version 2 connections do not know the actions.
    let mut old = agent.client().await;
    old.hello_v2().await;
    let err = old.call(read_req("keep.txt", 0, None)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::IncompatibleVersion);
}
