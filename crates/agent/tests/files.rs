//! File actions against a real agent on a Unix socket.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use base64::Engine as _;
use common::TestAgent;
use locale2b_protocol::*;
use std::os::unix::fs::PermissionsExt;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn write_req(path: &str, data: &[u8]) -> Request {
    Request::WriteFile(WriteFileRequest {
        path: path.into(),
        content: B64.encode(data),
        encoding: ContentEncoding::Base64,
        mode: None,
        create_parents: false,
        append: false,
        owner: None,
        in_place: false,
    })
}

fn read_req(path: &str) -> Request {
    Request::ReadFile(ReadFileRequest {
        path: path.into(),
        offset: 0,
        length: None,
    })
}

fn content(r: Response) -> (Vec<u8>, FileContent) {
    match r {
        Response::FileContent(c) => (B64.decode(&c.content_b64).expect("base64"), c),
        other => panic!("expected file content, got {other:?}"),
    }
}

fn stat_of(r: Response) -> FileInfo {
    match r {
        Response::Stat(i) => i,
        other => panic!("expected stat, got {other:?}"),
    }
}

fn p(agent: &TestAgent, rel: &str) -> String {
    agent.workspace.join(rel).display().to_string()
}

#[tokio::test]
async fn write_then_read_empty_large_binary_and_odd_names() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let big: Vec<u8> = (0u64..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7919 % 256) as u8)
        .collect();
    let cases: Vec<(String, Vec<u8>)> = vec![
        (p(&agent, "empty.txt"), Vec::new()),
        (p(&agent, "big.bin"), big),
        (
            p(&agent, "with space and ünïcødé ✓.txt"),
            "héllo\n".as_bytes().to_vec(),
        ),
        (
            p(&agent, "nul-and-ff.bin"),
            vec![0, 0xff, 0, 0xfe, b'\n', 0],
        ),
    ];
    for (path, data) in &cases {
        let w = c.call(write_req(path, data)).await.expect("write");
        assert_eq!(
            w,
            Response::Written(WrittenResponse {
                path: path.clone(),
                size: data.len() as u64,
                sha256: None,
            })
        );
        assert_eq!(&std::fs::read(path).expect("on disk"), data);
        let (got, meta) = content(c.call(read_req(path)).await.expect("read"));
        assert_eq!(&got, data, "{path}");
        assert_eq!(meta.size, data.len() as u64);
        assert!(meta.eof);
    }
    // No temp files left behind by the atomic replace.
    let leftovers: Vec<_> = std::fs::read_dir(&agent.workspace)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("locale2b"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn read_with_offset_and_length() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    std::fs::write(agent.workspace.join("f"), b"0123456789").unwrap();
    let (got, meta) = content(
        c.call(Request::ReadFile(ReadFileRequest {
            path: "f".into(),
            offset: 3,
            length: Some(4),
        }))
        .await
        .unwrap(),
    );
    assert_eq!(got, b"3456");
    assert_eq!((meta.offset, meta.size, meta.eof), (3, 10, false));
    let (got, meta) = content(
        c.call(Request::ReadFile(ReadFileRequest {
            path: "f".into(),
            offset: 8,
            length: Some(100),
        }))
        .await
        .unwrap(),
    );
    assert_eq!(got, b"89");
    assert!(meta.eof);
    let (got, meta) = content(
        c.call(Request::ReadFile(ReadFileRequest {
            path: "f".into(),
            offset: 50,
            length: None,
        }))
        .await
        .unwrap(),
    );
    assert!(got.is_empty());
    assert!(meta.eof);
}

#[tokio::test]
async fn read_errors() {
    let agent = TestAgent::start_with(|c| c.max_frame = 64 * 1024).await;
    let mut c = agent.client().await;
    let e = c.call(read_req(&p(&agent, "missing"))).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("missing"), "{}", e.message);
    let e = c
        .call(read_req(&agent.workspace.display().to_string()))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::IsADirectory);
    std::fs::write(agent.workspace.join("big"), vec![1u8; 100 * 1024]).unwrap();
    let e = c.call(read_req("big")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    // The same file in parts that fit.
    let (part, _) = content(
        c.call(Request::ReadFile(ReadFileRequest {
            path: "big".into(),
            offset: 0,
            length: Some(40 * 1024),
        }))
        .await
        .unwrap(),
    );
    assert_eq!(part.len(), 40 * 1024);
    let e = c.call(read_req("")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

#[tokio::test]
async fn write_options_utf8_mode_parents_append() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let nested = p(&agent, "a/b/c.txt");
    let mut req = WriteFileRequest {
        path: nested.clone(),
        content: "line1\n".into(),
        encoding: ContentEncoding::Utf8,
        mode: Some(0o600),
        create_parents: false,
        append: false,
        owner: None,
        in_place: false,
    };
    let e = c.call(Request::WriteFile(req.clone())).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    req.create_parents = true;
    c.call(Request::WriteFile(req.clone()))
        .await
        .expect("write with parents");
    let meta = std::fs::metadata(&nested).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    req.append = true;
    req.content = "line2\n".into();
    req.mode = None;
    let w = c.call(Request::WriteFile(req.clone())).await.unwrap();
    assert!(
        matches!(w, Response::Written(WrittenResponse { size: 12, .. })),
        "{w:?}"
    );
    assert_eq!(std::fs::read_to_string(&nested).unwrap(), "line1\nline2\n");
    // Replacing keeps the existing mode when none is given.
    req.append = false;
    req.content = "new".into();
    c.call(Request::WriteFile(req.clone())).await.unwrap();
    assert_eq!(std::fs::read_to_string(&nested).unwrap(), "new");
    assert_eq!(
        std::fs::metadata(&nested).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    // Errors: bad base64, a directory as target, bad mode.
    let e = c
        .call(Request::WriteFile(WriteFileRequest {
            path: p(&agent, "x"),
            content: "!!!not base64".into(),
            encoding: ContentEncoding::Base64,
            mode: None,
            create_parents: false,
            append: false,
            owner: None,
            in_place: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    let e = c.call(write_req(&p(&agent, "a"), b"x")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IsADirectory);
    let e = c
        .call(Request::WriteFile(WriteFileRequest {
            path: p(&agent, "y"),
            content: String::new(),
            encoding: ContentEncoding::Utf8,
            mode: Some(0o17777),
            create_parents: false,
            append: false,
            owner: None,
            in_place: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

#[tokio::test]
async fn list_recursive_sorted_with_caps_and_symlinks() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let w = &agent.workspace;
    std::fs::create_dir_all(w.join("d/sub/deeper")).unwrap();
    std::fs::write(w.join("b.txt"), b"bb").unwrap();
    std::fs::write(w.join("d/a.txt"), b"a").unwrap();
    std::fs::write(w.join("d/sub/deeper/z"), b"").unwrap();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(&outside, w.join("link")).unwrap();

    let list = |recursive, max_depth, max_entries| {
        Request::ListFiles(ListFilesRequest {
            path: w.display().to_string(),
            recursive,
            max_depth,
            max_entries,
        })
    };
    let Response::Listing(flat) = c.call(list(false, None, None)).await.unwrap() else {
        panic!("not a listing")
    };
    let names: Vec<_> = flat.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["b.txt", "d", "link"]);
    assert!(!flat.truncated);
    let link = &flat.entries[2];
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(
        link.symlink_target.as_deref(),
        Some(outside.to_str().unwrap())
    );
    let b = &flat.entries[0];
    assert_eq!((b.kind, b.size), (FileKind::File, 2));
    assert!(b.mtime_ms > 1_600_000_000_000, "{}", b.mtime_ms);

    let Response::Listing(all) = c.call(list(true, None, None)).await.unwrap() else {
        panic!("not a listing")
    };
    let rel: Vec<String> = all
        .entries
        .iter()
        .map(|e| {
            e.path
                .strip_prefix(&format!("{}/", w.display()))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        rel,
        [
            "b.txt",
            "d",
            "d/a.txt",
            "d/sub",
            "d/sub/deeper",
            "d/sub/deeper/z",
            "link"
        ]
    );
    assert!(
        !rel.iter().any(|r| r.contains("secret")),
        "followed a symlink"
    );

    let Response::Listing(shallow) = c.call(list(true, Some(2), None)).await.unwrap() else {
        panic!("not a listing")
    };
    assert_eq!(shallow.entries.len(), 5, "{:?}", shallow.entries);
    let Response::Listing(capped) = c.call(list(true, None, Some(3))).await.unwrap() else {
        panic!("not a listing")
    };
    assert_eq!(capped.entries.len(), 3);
    assert!(capped.truncated);

    let e = c
        .call(Request::ListFiles(ListFilesRequest {
            path: w.join("b.txt").display().to_string(),
            recursive: false,
            max_depth: None,
            max_entries: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotADirectory);
    let e = c
        .call(Request::ListFiles(ListFilesRequest {
            path: w.join("nope").display().to_string(),
            recursive: false,
            max_depth: None,
            max_entries: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn mkdir_stat_delete_rename() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let w = agent.workspace.clone();
    // Relative paths resolve from the workspace.
    let info = stat_of(
        c.call(Request::Mkdir(MkdirRequest {
            path: "x/y z/ü".into(),
            parents: true,
            mode: Some(0o750),
            owner: None,
        }))
        .await
        .unwrap(),
    );
    assert_eq!(info.kind, FileKind::Directory);
    assert_eq!(info.mode, 0o750);
    assert_eq!(info.name, "ü");
    assert!(w.join("x/y z/ü").is_dir());
    let e = c
        .call(Request::Mkdir(MkdirRequest {
            path: "x".into(),
            parents: false,
            mode: None,
            owner: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    let e = c
        .call(Request::Mkdir(MkdirRequest {
            path: "no/parent".into(),
            parents: false,
            mode: None,
            owner: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    // stat does not follow symlinks.
    std::fs::write(w.join("target"), b"12345").unwrap();
    std::os::unix::fs::symlink("target", w.join("ln")).unwrap();
    let s = stat_of(
        c.call(Request::Stat(PathRequest { path: "ln".into() }))
            .await
            .unwrap(),
    );
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(s.symlink_target.as_deref(), Some("target"));
    let s = stat_of(
        c.call(Request::Stat(PathRequest {
            path: "target".into(),
        }))
        .await
        .unwrap(),
    );
    assert_eq!((s.kind, s.size), (FileKind::File, 5));
    let e = c
        .call(Request::Stat(PathRequest {
            path: "ghost".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    // rename
    c.call(Request::Rename(RenameRequest {
        from: "target".into(),
        to: "x/moved".into(),
    }))
    .await
    .unwrap();
    assert_eq!(std::fs::read(w.join("x/moved")).unwrap(), b"12345");
    let e = c
        .call(Request::Rename(RenameRequest {
            from: "target".into(),
            to: "elsewhere".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    // delete: non-empty dir needs recursive; a symlink to a dir is removed
    // without touching the dir it points to.
    let keep = agent.dir.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::fs::write(keep.join("precious"), b"p").unwrap();
    std::os::unix::fs::symlink(&keep, w.join("x/dirlink")).unwrap();
    let del = |path: &str, recursive| {
        Request::DeleteFile(DeleteFileRequest {
            path: path.into(),
            recursive,
        })
    };
    let e = c.call(del("x", false)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::DirectoryNotEmpty);
    c.call(del("x/dirlink", false)).await.unwrap();
    assert!(keep.join("precious").exists());
    std::os::unix::fs::symlink(&keep, w.join("x/dirlink2")).unwrap();
    assert_eq!(c.call(del("x", true)).await.unwrap(), Response::Done);
    assert!(!w.join("x").exists());
    assert!(
        keep.join("precious").exists(),
        "recursive delete followed a symlink"
    );
    let e = c.call(del("x", true)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = c.call(del("/", true)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    c.call(del("ln", false)).await.unwrap();
    assert!(std::fs::symlink_metadata(w.join("ln")).is_err());
}

#[tokio::test]
async fn files_without_a_size_are_read_for_what_they_hold() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    // A pseudo-file: st_size is 0, the content is not.
    let (data, meta) = content(c.call(read_req("/proc/self/status")).await.unwrap());
    assert!(String::from_utf8_lossy(&data).contains("Name:"), "{data:?}");
    assert!(meta.eof);
    assert_eq!(meta.size, data.len() as u64);
    // A device with no end: the length asked for, and not the end.
    let (zeros, meta) = content(
        c.call(Request::ReadFile(ReadFileRequest {
            path: "/dev/zero".into(),
            offset: 0,
            length: Some(10),
        }))
        .await
        .unwrap(),
    );
    assert_eq!(zeros, vec![0u8; 10]);
    assert!(!meta.eof);

    // A FIFO whose writer writes and closes: its bytes, then the end.
    let fifo = agent.workspace.join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, b"through the pipe").unwrap())
    };
    // The writer blocks until a reader opens; poll until it has.
    let mut got = Vec::new();
    for _ in 0..200 {
        let (d, m) = content(c.call(read_req(&fifo.display().to_string())).await.unwrap());
        got.extend(d);
        if m.eof && !got.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    writer.join().unwrap();
    assert_eq!(got, b"through the pipe");
    // A FIFO with a writer that sends nothing: answered, not the end.
    let held = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(3));
            drop(f);
        })
    };
    let started = std::time::Instant::now();
    let mut quiet = None;
    while started.elapsed() < std::time::Duration::from_secs(2) {
        let (d, m) = content(c.call(read_req(&fifo.display().to_string())).await.unwrap());
        if !m.eof {
            quiet = Some(d);
            break;
        }
    }
    assert_eq!(
        quiet,
        Some(Vec::new()),
        "a quiet pipe answers no bytes, not the end"
    );
    let err = c
        .call(Request::ReadFile(ReadFileRequest {
            path: fifo.display().to_string(),
            offset: 3,
            length: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest);
    held.join().unwrap();
}
