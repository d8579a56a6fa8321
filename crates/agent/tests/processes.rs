//! The process table (protocol 2) on a Unix socket: background sessions,
//! cursors, drops, follow streams, PTYs, and refusals.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{Client, TestAgent, WAIT};
use locale2b_protocol::*;
use std::time::{Duration, Instant};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn shell(command: &str) -> ProcessStartRequest {
    ProcessStartRequest {
        command: Some(command.into()),
        ..ProcessStartRequest::default()
    }
}

async fn start(c: &mut Client, req: ProcessStartRequest) -> ProcessInfo {
    match c.call(Request::ProcessStart(req)).await {
        Ok(Response::Process(info)) => info,
        other => panic!("process_start: {other:?}"),
    }
}

async fn status(c: &mut Client, pid: u32) -> ProcessInfo {
    match c
        .call(Request::ProcessStatus(ProcessRequest {
            process: ProcessSelector::Pid(pid),
        }))
        .await
    {
        Ok(Response::Process(info)) => info,
        other => panic!("process_status: {other:?}"),
    }
}

/// Reads by cursor (no follow) and returns (bytes, end).
async fn read(c: &mut Client, pid: u32, cursor: u64) -> (common::Streamed, OutputEnd) {
    let s = c
        .stream(Request::ProcessOutput(ProcessOutputRequest {
            process: ProcessSelector::Pid(pid),
            cursor,
            max_bytes: None,
            follow: false,
        }))
        .await;
    let end = match &s.end {
        Some(Ok(Response::OutputEnd(e))) => e.clone(),
        other => panic!("process_output: {other:?}"),
    };
    (s, end)
}

/// Polls by cursor until the collected stdout contains `needle`.
async fn poll_until(c: &mut Client, pid: u32, cursor: &mut u64, seen: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?}; got {:?}",
            String::from_utf8_lossy(seen)
        );
        let (s, end) = read(c, pid, *cursor).await;
        for (_, d) in &s.order {
            seen.extend_from_slice(d);
        }
        *cursor = end.next_cursor;
        if s.order.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until a child of `parent` runs with this command line.
async fn wait_for_child(parent: u32, cmdline: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let dir = e.path();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            // ppid is the 4th field, after the parenthesised name.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmd = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            if ppid == Some(parent)
                && String::from_utf8_lossy(&cmd).trim_end_matches('\0') == cmdline
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no child {cmdline:?} of {parent}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exit(c: &mut Client, pid: u32) -> ProcessExit {
    let deadline = Instant::now() + WAIT;
    loop {
        if let ProcessState::Exited(e) = status(c, pid).await.state {
            return e;
        }
        assert!(Instant::now() < deadline, "process {pid} never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_v1_connection_refuses_process_requests() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let err = c
        .call(Request::ProcessStart(shell("true")))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::IncompatibleVersion);
    assert!(err.message.contains("protocol 2"), "{}", err.message);
    // The connection still serves v1.
    assert!(matches!(c.call(Request::Ping).await, Ok(Response::Pong(_))));
}

#[tokio::test]
async fn background_shell_typed_into_read_by_cursor_and_killed() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello_v2().await;
    let info = start(
        &mut c,
        ProcessStartRequest {
            argv: vec!["bash".into(), "--norc".into()],
            stdin: true,
            tag: Some("shell-1".into()),
            ..ProcessStartRequest::default()
        },
    )
    .await;
    assert_eq!(info.state, ProcessState::Running);
    assert!(info.stdin_open);
    let pid = info.pid;

    let input = |data: &str, close: bool| {
        Request::ProcessInput(ProcessInputRequest {
            process: ProcessSelector::Tag("shell-1".into()),
            data_b64: b64(data.as_bytes()),
            close,
        })
    };
    c.call(input("cd /tmp; export X=1; echo $X\n", false))
        .await
        .unwrap();
    let (mut cursor, mut seen) = (0u64, Vec::new());
    poll_until(&mut c, pid, &mut cursor, &mut seen, "1\n").await;
    // A new host connection sees the same session and cursor space.
    let mut c2 = agent.client().await;
    c2.hello_v2().await;
    c2.call(input("echo $X$X; pwd\n", false)).await.unwrap();
    poll_until(&mut c2, pid, &mut cursor, &mut seen, "/tmp\n").await;
    assert_eq!(String::from_utf8_lossy(&seen), "1\n11\n/tmp\n");

    c.call(Request::ProcessSignal(ProcessSignalRequest {
        process: ProcessSelector::Pid(pid),
        signal: 9,
    }))
    .await
    .unwrap();
    let exit = wait_exit(&mut c, pid).await;
    assert_eq!((exit.exit_code, exit.signal), (None, Some(9)));
    // After the end: signal and input are refused, the process is kept.
    let e = c
        .call(Request::ProcessSignal(ProcessSignalRequest {
            process: ProcessSelector::Pid(pid),
            signal: 15,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState, "{e}");
    let e = c.call(input("x\n", false)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState, "{e}");
    let (_, end) = read(&mut c, pid, cursor).await;
    assert!(end.complete && end.exit.is_some());
}

#[tokio::test]
async fn a_follower_gets_every_byte_of_a_burst_in_order() {
    let agent = TestAgent::start().await;
    let data_file = agent.dir.path().join("burst.bin");
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&data_file, &data).unwrap();
    let mut c = agent.client().await;
    c.hello_v2().await;
    // A buffer much smaller than the burst: the follower keeps up, so the
    // writer waits instead of dropping.
    let s = c
        .stream(Request::ProcessStart(ProcessStartRequest {
            argv: vec!["cat".into(), data_file.display().to_string()],
            buffer_bytes: Some(256 * 1024),
            follow: true,
            ephemeral: true,
            ..ProcessStartRequest::default()
        }))
        .await;
    assert!(
        matches!(s.events.first(), Some(StreamEvent::Started { .. })),
        "{:?}",
        s.events
    );
    assert!(s
        .events
        .iter()
        .all(|e| !matches!(e, StreamEvent::Position { dropped, .. } if *dropped > 0)));
    let got = s.data.get("stdout").cloned().unwrap_or_default();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    let end = match s.end {
        Some(Ok(Response::OutputEnd(e))) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(end.next_cursor, data.len() as u64);
    assert_eq!(end.exit.unwrap().exit_code, Some(0));
    // Ephemeral: gone from the table once its end was delivered.
    match c.call(Request::ProcessList).await {
        Ok(Response::Processes(l)) => assert!(l.processes.is_empty(), "{l:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn without_a_reader_a_full_buffer_keeps_the_tail_and_counts_the_drop() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello_v2().await;
    let total: u64 = 1024 * 1024;
    let info = start(
        &mut c,
        ProcessStartRequest {
            command: Some(format!(
                "head -c {total} /dev/zero | tr '\\0' a; printf END"
            )),
            buffer_bytes: Some(64 * 1024),
            ..ProcessStartRequest::default()
        },
    )
    .await;
    let exit = wait_exit(&mut c, info.pid).await;
    assert_eq!(exit.exit_code, Some(0));
    let (s, end) = read(&mut c, info.pid, 0).await;
    let dropped = match s.events.first() {
        Some(StreamEvent::Position { cursor, dropped }) => {
            assert_eq!(cursor, dropped);
            *dropped
        }
        other => panic!("{other:?}"),
    };
    let got = s.data.get("stdout").cloned().unwrap_or_default();
    assert!(dropped > 0);
    assert_eq!(
        dropped + got.len() as u64,
        total + 3,
        "every byte is accounted for"
    );
    assert_eq!(
        got.len() as u64,
        64 * 1024,
        "the newest bytes fill the buffer"
    );
    assert!(got.ends_with(b"aaaEND"));
    assert_eq!(end.next_cursor, total + 3);
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart_in_one_order() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello_v2().await;
    let s = c
        .stream(Request::ProcessStart(ProcessStartRequest {
            // Pauses between the writes: across two pipes, only writes
            // apart in time have an order to keep.
            command: Some("echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three".into()),
            follow: true,
            ..ProcessStartRequest::default()
        }))
        .await;
    assert_eq!(s.data["stdout"], b"one\nthree\n");
    assert_eq!(s.data["stderr"], b"two\n");
    let order: Vec<&str> = s.order.iter().map(|(ch, _)| *ch).collect();
    assert_eq!(order, ["stdout", "stderr", "stdout"]);
}

#[tokio::test]
async fn pty_session_tty_resize_and_interrupt() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello_v2().await;
    let info = start(
        &mut c,
        ProcessStartRequest {
            argv: vec!["sh".into()],
            pty: Some(PtySize { rows: 24, cols: 80 }),
            env: [("PS1".to_owned(), "$ ".to_owned())].into(),
            ..ProcessStartRequest::default()
        },
    )
    .await;
    let pid = info.pid;
    let typed = |s: &str| {
        Request::ProcessInput(ProcessInputRequest {
            process: ProcessSelector::Pid(pid),
            data_b64: b64(s.as_bytes()),
            close: false,
        })
    };
    let (mut cursor, mut seen) = (0u64, Vec::new());
    c.call(typed("tty\n")).await.unwrap();
    poll_until(&mut c, pid, &mut cursor, &mut seen, "/dev/pts/").await;
    c.call(Request::ProcessResize(ProcessResizeRequest {
        process: ProcessSelector::Pid(pid),
        size: PtySize {
            rows: 30,
            cols: 100,
        },
    }))
    .await
    .unwrap();
    c.call(typed("stty size\n")).await.unwrap();
    poll_until(&mut c, pid, &mut cursor, &mut seen, "30 100").await;
    assert_eq!(
        status(&mut c, pid).await.pty,
        Some(PtySize {
            rows: 30,
            cols: 100
        })
    );
    // Ctrl-C interrupts the foreground sleep; the shell lives on.
    let started = Instant::now();
    c.call(typed("sleep 100; echo slept\n")).await.unwrap();
    wait_for_child(pid, "sleep\x00100").await;
    c.call(typed("\x03")).await.unwrap();
    c.call(typed("echo after-$((6*7))\n")).await.unwrap();
    poll_until(&mut c, pid, &mut cursor, &mut seen, "after-42").await;
    assert!(started.elapsed() < Duration::from_secs(60));
    // The terminal echoes the typed line; the command's own output would
    // start a line.
    assert!(!String::from_utf8_lossy(&seen).contains("\nslept"));
    // A pty's input cannot be closed.
    let e = c
        .call(Request::ProcessInput(ProcessInputRequest {
            process: ProcessSelector::Pid(pid),
            data_b64: String::new(),
            close: true,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    c.call(Request::ProcessRemove(ProcessRequest {
        process: ProcessSelector::Pid(pid),
    }))
    .await
    .unwrap();
    let e = c
        .call(Request::ProcessStatus(ProcessRequest {
            process: ProcessSelector::Pid(pid),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn refusals_name_the_problem_and_leave_others_alone() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello_v2().await;
    let survivor = start(&mut c, shell("sleep 30")).await;
    let unknown = c
        .call(Request::ProcessStatus(ProcessRequest {
            process: ProcessSelector::Pid(999_999),
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound);
    let unknown_tag = c
        .stream(Request::ProcessOutput(ProcessOutputRequest {
            process: ProcessSelector::Tag("nope".into()),
            cursor: 0,
            max_bytes: None,
            follow: true,
        }))
        .await;
    assert!(matches!(unknown_tag.end, Some(Err(ref e)) if e.code == ErrorCode::NotFound));
    // Input to a process started without stdin.
    let e = c
        .call(Request::ProcessInput(ProcessInputRequest {
            process: ProcessSelector::Pid(survivor.pid),
            data_b64: b64(b"x"),
            close: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState);
    assert!(e.message.contains("stdin"), "{e}");
    // Closed stdin.
    let cat = start(
        &mut c,
        ProcessStartRequest {
            argv: vec!["cat".into()],
            stdin: true,
            ..ProcessStartRequest::default()
        },
    )
    .await;
    let close = Request::ProcessInput(ProcessInputRequest {
        process: ProcessSelector::Pid(cat.pid),
        data_b64: b64(b"last\n"),
        close: true,
    });
    c.call(close).await.unwrap();
    wait_exit(&mut c, cat.pid).await;
    let e = c
        .call(Request::ProcessInput(ProcessInputRequest {
            process: ProcessSelector::Pid(cat.pid),
            data_b64: b64(b"more"),
            close: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState);
    // Resize of a process without a pty; bad starts.
    let e = c
        .call(Request::ProcessResize(ProcessResizeRequest {
            process: ProcessSelector::Pid(survivor.pid),
            size: PtySize { rows: 10, cols: 10 },
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    for (bad, needle) in [
        (ProcessStartRequest::default(), "command"),
        (
            ProcessStartRequest {
                cwd: Some("/no/such/dir".into()),
                ..shell("true")
            },
            "/no/such/dir",
        ),
        (
            ProcessStartRequest {
                env: [("A=B".to_owned(), "x".to_owned())].into(),
                ..shell("true")
            },
            "A=B",
        ),
        (
            ProcessStartRequest {
                tag: Some("9lives".into()),
                ..shell("true")
            },
            "tag",
        ),
        (
            ProcessStartRequest {
                buffer_bytes: Some(1),
                ..shell("true")
            },
            "buffer_bytes",
        ),
    ] {
        let e = c.call(Request::ProcessStart(bad)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    assert_eq!(
        status(&mut c, survivor.pid).await.state,
        ProcessState::Running
    );
}

#[tokio::test]
async fn timeout_kills_the_group_and_is_reported() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.hello_v2().await;
    let s = c
        .stream(Request::ProcessStart(ProcessStartRequest {
            command: Some("echo begun; sleep 30 & sleep 30".into()),
            timeout_ms: Some(300),
            follow: true,
            ..ProcessStartRequest::default()
        }))
        .await;
    let end = match s.end {
        Some(Ok(Response::OutputEnd(e))) => e,
        other => panic!("{other:?}"),
    };
    let exit = end.exit.unwrap();
    assert!(exit.timed_out);
    assert_eq!(exit.signal, Some(9));
    assert!(exit.duration_ms < 20_000, "{exit:?}");
    assert_eq!(s.data["stdout"], b"begun\n");
}
