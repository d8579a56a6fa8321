//! `watch_dir` and file owners (protocol 3) against the in-process agent.

mod common;

use common::{TestAgent, WAIT};
use locale2b_protocol::*;
use std::path::Path;

/// Reads frames of request `id` until `want` changes were seen (or the
/// stream ended); returns them and the final outcome, if any.
async fn changes(
    c: &mut common::Client,
    id: u64,
    want: usize,
) -> (Vec<(String, FsOp)>, Option<Outcome>) {
    let mut got = Vec::new();
    while got.len() < want {
        let f = c.recv().await;
        assert_eq!(f.id, id);
        match f.outcome {
            Outcome::Event(StreamEvent::Fs { name, op }) => got.push((name, op)),
            Outcome::Event(StreamEvent::Keepalive) => {}
            other if other.is_final() => return (got, Some(other)),
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, None)
}

async fn watching(c: &mut common::Client, path: &Path, recursive: bool) -> u64 {
    let id = c
        .send(Request::WatchDir(WatchDirRequest {
            path: path.display().to_string(),
            recursive,
        }))
        .await;
    let f = c.recv().await;
    assert_eq!(f.id, id);
    assert_eq!(f.outcome, Outcome::Event(StreamEvent::Watching));
    id
}

#[tokio::test]
async fn changes_are_reported_in_order_with_relative_names() {
    let agent = TestAgent::start().await;
    let dir = agent.workspace.join("w");
    std::fs::create_dir(&dir).unwrap();
    let mut c = agent.client().await;
    c.hello(3).await;
    let id = watching(&mut c, &dir, false).await;

    std::fs::write(dir.join("a.txt"), b"one").unwrap();
    let (got, end) = changes(&mut c, id, 2).await;
    assert!(end.is_none());
    assert_eq!(
        got,
        vec![
            ("a.txt".into(), FsOp::Create),
            ("a.txt".into(), FsOp::Write)
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(dir.join("a.txt"), dir.join("b.txt")).unwrap();
    std::fs::remove_file(dir.join("b.txt")).unwrap();
    let (got, _) = changes(&mut c, id, 4).await;
    assert_eq!(
        got,
        vec![
            ("a.txt".into(), FsOp::Chmod),
            ("a.txt".into(), FsOp::Rename),
            ("b.txt".into(), FsOp::Create),
            ("b.txt".into(), FsOp::Remove),
        ]
    );
    // Without `recursive`, changes in a subdirectory are not reported: the
    // next change seen is the one in the watched directory itself.
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/deep"), b"x").unwrap();
    std::fs::write(dir.join("top"), b"").unwrap();
    let (got, _) = changes(&mut c, id, 2).await;
    assert_eq!(
        got,
        vec![("sub".into(), FsOp::Create), ("top".into(), FsOp::Create)]
    );

    // The watched directory going away ends the stream.
    std::fs::remove_dir_all(&dir).unwrap();
    let (_, end) = changes(&mut c, id, usize::MAX).await;
    assert_eq!(end, Some(Outcome::Ok(Response::Done)));
    // The connection is still usable.
    assert!(matches!(c.call(Request::Ping).await, Ok(Response::Pong(_))));
}

#[tokio::test]
async fn a_recursive_watch_follows_new_subdirectories() {
    let agent = TestAgent::start().await;
    let dir = agent.workspace.join("r");
    std::fs::create_dir_all(dir.join("old/inner")).unwrap();
    let mut c = agent.client().await;
    c.hello(3).await;
    let id = watching(&mut c, &dir, true).await;
    std::fs::write(dir.join("old/inner/f"), b"").unwrap();
    let (got, _) = changes(&mut c, id, 1).await;
    assert_eq!(got, vec![("old/inner/f".into(), FsOp::Create)]);
    std::fs::create_dir(dir.join("new")).unwrap();
    let (got, _) = changes(&mut c, id, 1).await;
    assert_eq!(got, vec![("new".into(), FsOp::Create)]);
    std::fs::write(dir.join("new/g"), b"").unwrap();
    let (got, _) = changes(&mut c, id, 1).await;
    assert_eq!(got, vec![("new/g".into(), FsOp::Create)]);
}

#[tokio::test]
async fn bad_watches_are_refused_clearly() {
    let agent = TestAgent::start().await;
    std::fs::write(agent.workspace.join("file"), b"").unwrap();
    let mut c = agent.client().await;
    c.hello(3).await;
    for (path, code) in [
        ("missing", ErrorCode::NotFound),
        ("file", ErrorCode::NotADirectory),
    ] {
        let s = c
            .stream(Request::WatchDir(WatchDirRequest {
                path: path.into(),
                recursive: false,
            }))
            .await;
        assert!(s.events.is_empty());
        assert_eq!(s.end.unwrap().unwrap_err().code, code, "{path}");
    }
    // On a protocol 2 connection the action does not exist yet.
    let mut old = agent.client().await;
    old.hello_v2().await;
    let err = old
        .call(Request::WatchDir(WatchDirRequest {
            path: ".".into(),
            recursive: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::IncompatibleVersion);
}

fn stat_of(r: Response) -> FileInfo {
    match r {
        Response::Stat(i) => i,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn writes_and_directories_take_the_owner_asked_for() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello(3).await;
    let existing = agent.workspace.join("keep");
    std::fs::create_dir(&existing).unwrap();
    c.call(Request::WriteFile(WriteFileRequest {
        path: existing.join("new/deeper/f.txt").display().to_string(),
        content: "aGk=".into(),
        encoding: ContentEncoding::Base64,
        mode: None,
        create_parents: true,
        append: false,
        owner: Some("nobody".into()),
        in_place: false,
    }))
    .await
    .unwrap();
    let owner = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().uid()
    };
    assert_eq!(owner(&existing.join("new/deeper/f.txt")), 65534);
    assert_eq!(owner(&existing.join("new/deeper")), 65534);
    assert_eq!(owner(&existing.join("new")), 65534);
    assert_eq!(
        owner(&existing),
        0,
        "a directory that existed keeps its owner"
    );

    let info = stat_of(
        c.call(Request::Mkdir(MkdirRequest {
            path: "made/by/nobody".into(),
            parents: true,
            mode: None,
            owner: Some("nobody".into()),
        }))
        .await
        .unwrap(),
    );
    assert_eq!(info.owner.as_deref(), Some("nobody"));
    assert_eq!(owner(&agent.workspace.join("made")), 65534);
    let info = stat_of(
        c.call(Request::Stat(PathRequest {
            path: "keep".into(),
        }))
        .await
        .unwrap(),
    );
    assert_eq!(info.owner.as_deref(), Some("root"));
    assert_eq!(info.group.as_deref(), Some("root"));
    let err = c
        .call(Request::Mkdir(MkdirRequest {
            path: "x".into(),
            parents: false,
            mode: None,
            owner: Some("no-such-user-here".into()),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("no-such-user-here"), "{}", err.message);
    assert!(!agent.workspace.join("x").exists());

    // A protocol 2 peer gets descriptions without the owner fields, and may
    // not ask for an owner.
    let mut old = agent.client().await;
    old.hello_v2().await;
    let info = stat_of(
        old.call(Request::Stat(PathRequest {
            path: "keep".into(),
        }))
        .await
        .unwrap(),
    );
    assert_eq!((info.owner, info.group), (None, None));
    let err = old
        .call(Request::Mkdir(MkdirRequest {
            path: "y".into(),
            parents: false,
            mode: None,
            owner: Some("nobody".into()),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::IncompatibleVersion);
    let _ = WAIT;
}

#[tokio::test]
async fn an_in_place_write_is_seen_as_the_file_itself_written() {
    let agent = TestAgent::start().await;
    let dir = agent.workspace.join("inplace");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), b"old content that is longer").unwrap();
    let mut c = agent.client().await;
    c.hello(3).await;
    let id = watching(&mut c, &dir, false).await;
    let mut w = common::Client::connect(&agent.socket).await;
    w.hello(3).await;
    w.call(Request::WriteFile(WriteFileRequest {
        path: dir.join("f.txt").display().to_string(),
        content: "new".into(),
        encoding: ContentEncoding::Utf8,
        mode: None,
        create_parents: false,
        append: false,
        owner: None,
        in_place: true,
    }))
    .await
    .unwrap();
    assert_eq!(std::fs::read(dir.join("f.txt")).unwrap(), b"new");
    let (got, _) = changes(&mut c, id, 1).await;
    assert_eq!(
        got,
        vec![("f.txt".into(), FsOp::Write)],
        "no temporary file, no rename"
    );
}
