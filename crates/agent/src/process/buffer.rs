//! [`OutputBuffer`]: a process's output, kept in order and addressed by
//! byte cursors, bounded in size, and honest about what it dropped.
//!
//! Chunks are appended as the process writes them (each tagged with its
//! channel: stdout, stderr or pty). The cursor of a byte is the number of
//! bytes, all channels together, produced before it. When a new chunk does
//! not fit, the oldest chunks are dropped, except those a reader still needs:
//!
//! - a *follower* (a live stream) protects what it has not read yet, as long
//!   as it makes progress within [`STALL_AFTER`];
//! - a *poller* (reads by cursor) protects what it has not read for
//!   [`POLL_GRACE`] after its last read.
//!
//! While something is protected the writer waits (the process blocks on its
//! full pipe, as it would on a slow terminal) instead of dropping. So a
//! reader that keeps up gets every byte, and a process nobody reads keeps
//! running with its newest output. A reader that asks for bytes that were
//! dropped is told exactly how many ([`Read::dropped`]).

use bytes::Bytes;
use locale2b_protocol::DataChannel;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A follower that has not advanced for this long stops protecting output.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// A poller protects unread output for this long after its last read.
pub const POLL_GRACE: Duration = Duration::from_secs(10);

/// What a read returned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Bytes between the cursor asked for and the first byte still held.
    pub dropped: u64,
    /// Cursor of the first byte returned.
    pub cursor: u64,
    /// The bytes, in order, by channel (shared with the buffer, not copied).
    pub pieces: Vec<(DataChannel, Bytes)>,
    /// Cursor after the last byte returned.
    pub next: u64,
    /// No more output will come and everything up to `next` was returned.
    pub finished: bool,
}

#[derive(Debug)]
struct Follower {
    cursor: u64,
    progressed: Instant,
}

#[derive(Debug)]
struct Inner {
    chunks: VecDeque<(DataChannel, Bytes)>,
    /// Cursor of the first held byte.
    start: u64,
    /// Cursor after the last byte.
    end: u64,
    cap: u64,
    closed: bool,
    dropped_total: u64,
    followers: BTreeMap<u64, Follower>,
    next_follower: u64,
    /// Cursor and time of the last poll.
    poll: Option<(u64, Instant)>,
}

impl Inner {
    fn held(&self) -> u64 {
        self.end - self.start
    }

    /// The lowest cursor a reader still needs, if any.
    fn protected(&self, now: Instant) -> Option<u64> {
        let followers = self
            .followers
            .values()
            .filter(|f| now.duration_since(f.progressed) < STALL_AFTER)
            .map(|f| f.cursor);
        let poll = self
            .poll
            .filter(|(_, at)| now.duration_since(*at) < POLL_GRACE)
            .map(|(c, _)| c);
        followers.chain(poll).min()
    }

    /// Drops up to `n` bytes from the front, within the first chunk (a
    /// chunk only partly dropped keeps its newest bytes). Returns how many.
    fn drop_front(&mut self, n: u64) -> u64 {
        let Some((_, front)) = self.chunks.front_mut() else {
            return 0;
        };
        let len = front.len() as u64;
        let n = n.min(len);
        if n == len {
            self.chunks.pop_front();
        } else {
            // `n < len <= usize::MAX`, so the cast is lossless.
            let _ = front.split_to(n as usize);
        }
        self.start += n;
        self.dropped_total += n;
        n
    }
}

/// A bounded, cursor-addressed output buffer (see the module docs).
#[derive(Debug)]
pub struct OutputBuffer {
    inner: Mutex<Inner>,
    /// Woken on every append and at close: readers wait on it.
    changed: Notify,
    /// Woken when a reader advanced: a blocked writer waits on it.
    advanced: Notify,
    /// Writers waiting for a reader to make room.
    waiting: std::sync::atomic::AtomicUsize,
}

/// A live reader's registration; dropping it unregisters.
#[derive(Debug)]
pub struct FollowerGuard<'a> {
    buffer: &'a OutputBuffer,
    id: u64,
}

impl FollowerGuard<'_> {
    /// Records that the follower has read up to `cursor`.
    pub fn advance(&self, cursor: u64) {
        {
            let mut i = self.buffer.lock();
            if let Some(f) = i.followers.get_mut(&self.id) {
                f.cursor = cursor;
                f.progressed = Instant::now();
            }
        }
        self.buffer.advanced.notify_waiters();
    }
}

impl Drop for FollowerGuard<'_> {
    fn drop(&mut self) {
        self.buffer.lock().followers.remove(&self.id);
        self.buffer.advanced.notify_waiters();
    }
}

impl OutputBuffer {
    /// An empty buffer holding at most `cap` bytes.
    pub fn new(cap: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                chunks: VecDeque::new(),
                start: 0,
                end: 0,
                cap,
                closed: false,
                dropped_total: 0,
                followers: BTreeMap::new(),
                next_follower: 0,
                poll: None,
            }),
            changed: Notify::new(),
            advanced: Notify::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a chunk, waiting while the bytes it would push out are still
    /// protected by a reader (see the module docs). A chunk larger than the
    /// buffer goes in as pieces of at most its size.
    pub async fn append(&self, channel: DataChannel, data: impl Into<Bytes>) {
        let mut data: Bytes = data.into();
        let cap = usize::try_from(self.lock().cap)
            .unwrap_or(usize::MAX)
            .max(1);
        while data.len() > cap {
            let piece = data.split_to(cap);
            self.append_piece(channel, piece).await;
        }
        self.append_piece(channel, data).await;
    }

    async fn append_piece(&self, channel: DataChannel, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let n = data.len() as u64;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let wait = {
                let mut i = self.lock();
                let now = Instant::now();
                let mut wait = None;
                while !i.chunks.is_empty() && i.held() + n > i.cap {
                    // Only bytes before the lowest protected cursor may go.
                    let excess = i.held() + n - i.cap;
                    let droppable = i
                        .protected(now)
                        .map_or(u64::MAX, |p| p.saturating_sub(i.start));
                    if droppable == 0 {
                        wait = Some(());
                        break;
                    }
                    i.drop_front(excess.min(droppable));
                }
                if wait.is_none() {
                    i.chunks.push_back((channel, data));
                    i.end += n;
                    drop(i);
                    self.changed.notify_waiters();
                    return;
                }
                // Re-check when a reader advances, or when a protection may
                // have lapsed (the shorter of the two grace periods).
                POLL_GRACE.min(STALL_AFTER) / 10
            };
            self.waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::time::timeout(wait, advanced).await;
            self.waiting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Whether a writer is waiting for a reader to make room.
    pub fn writer_waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// No more output will come (the process ended and its pipes closed).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Whether [`OutputBuffer::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// `(start, end, cap, dropped_total)`.
    pub fn bounds(&self) -> (u64, u64, u64, u64) {
        let i = self.lock();
        (i.start, i.end, i.cap, i.dropped_total)
    }

    /// Up to `max` bytes from `cursor` (a cursor past the end reads from
    /// the end). `poll` records the read as a poller's (it then protects
    /// unread output for [`POLL_GRACE`]).
    pub fn read(&self, cursor: u64, max: usize, poll: bool) -> Read {
        let mut i = self.lock();
        let from = cursor.clamp(i.start, i.end);
        let dropped = i.start.saturating_sub(cursor);
        let mut out = Read {
            dropped,
            cursor: from,
            pieces: Vec::new(),
            next: from,
            finished: false,
        };
        let mut pos = i.start;
        let mut budget = max;
        for (channel, data) in &i.chunks {
            let len = data.len() as u64;
            if pos + len <= from {
                pos += len;
                continue;
            }
            if budget == 0 {
                break;
            }
            let skip = usize::try_from(from.saturating_sub(pos)).unwrap_or(0);
            let take = (data.len() - skip).min(budget);
            out.pieces.push((*channel, data.slice(skip..skip + take)));
            out.next = pos + (skip + take) as u64;
            budget -= take;
            pos += len;
        }
        out.finished = i.closed && out.next == i.end;
        if poll {
            i.poll = Some((out.next, Instant::now()));
        }
        drop(i);
        if poll {
            self.advanced.notify_waiters();
        }
        out
    }

    /// Registers a live reader at `cursor`; it protects output from there
    /// until dropped (or until it stalls).
    pub fn follow(&self, cursor: u64) -> FollowerGuard<'_> {
        let mut i = self.lock();
        let id = i.next_follower;
        i.next_follower += 1;
        let cursor = cursor.max(i.start);
        i.followers.insert(
            id,
            Follower {
                cursor,
                progressed: Instant::now(),
            },
        );
        FollowerGuard { buffer: self, id }
    }

    /// Waits until there is output past `cursor`, the buffer closed, or
    /// `timeout` passed. Returns false on timeout.
    pub async fn wait_past(&self, cursor: u64, timeout: Duration) -> bool {
        let changed = self.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let i = self.lock();
            if i.end > cursor || i.closed {
                return true;
            }
        }
        tokio::time::timeout(timeout, changed).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use DataChannel::{Stderr, Stdout};

    fn flat(r: &Read) -> Vec<u8> {
        r.pieces.iter().flat_map(|(_, d)| d.to_vec()).collect()
    }

    #[tokio::test]
    async fn cursors_keep_order_across_channels() {
        let b = OutputBuffer::new(1024);
        b.append(Stdout, b"out1".to_vec()).await;
        b.append(Stderr, b"err".to_vec()).await;
        b.append(Stdout, b"out2".to_vec()).await;
        let r = b.read(0, 100, false);
        assert_eq!(r.dropped, 0);
        assert_eq!(r.next, 11);
        assert_eq!(
            r.pieces,
            vec![
                (Stdout, Bytes::from_static(b"out1")),
                (Stderr, Bytes::from_static(b"err")),
                (Stdout, Bytes::from_static(b"out2"))
            ]
        );
        // From the middle of a chunk, with a byte budget.
        let r = b.read(2, 4, false);
        assert_eq!(r.cursor, 2);
        assert_eq!(flat(&r), b"t1er");
        assert_eq!(r.next, 6);
        assert!(!r.finished);
        b.close();
        assert!(b.read(11, 10, false).finished);
    }

    #[tokio::test]
    async fn overflow_without_readers_drops_oldest_and_says_how_much() {
        let b = OutputBuffer::new(10);
        for i in 0..5u8 {
            b.append(Stdout, vec![b'a' + i; 4]).await;
        }
        let (start, end, _, dropped) = b.bounds();
        // Exactly the newest `cap` bytes stay, even from a split chunk.
        assert_eq!((start, end, dropped), (10, 20, 10));
        let r = b.read(0, 100, false);
        assert_eq!(r.dropped, 10);
        assert_eq!(r.cursor, 10);
        assert_eq!(flat(&r), b"ccddddeeee");
    }

    #[tokio::test]
    async fn a_follower_makes_the_writer_wait_instead_of_dropping() {
        let b = std::sync::Arc::new(OutputBuffer::new(8));
        let f = b.follow(0);
        b.append(Stdout, vec![1; 4]).await;
        b.append(Stdout, vec![2; 4]).await;
        let writer = {
            let b = b.clone();
            tokio::spawn(async move { b.append(Stdout, vec![3; 4]).await })
        };
        // Let the writer run until it blocks (single-threaded runtime).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished(), "writer must wait for the follower");
        let r = b.read(0, 100, false);
        f.advance(r.next);
        tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .unwrap()
            .unwrap();
        let (_, end, _, dropped) = b.bounds();
        assert_eq!((end, dropped), (12, 4));
        drop(f);
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_buffer_keeps_only_its_tail() {
        let b = OutputBuffer::new(4);
        b.append(Stdout, b"abcdefghij".to_vec()).await;
        let r = b.read(0, 100, false);
        assert_eq!((r.dropped, r.cursor, r.next), (6, 6, 10));
        assert_eq!(flat(&r), b"ghij");
        let (start, end, _, dropped) = b.bounds();
        assert_eq!(end - start, 4);
        assert_eq!(dropped, 6);
    }

    #[tokio::test]
    async fn waiting_sees_new_output_and_close() {
        let b = std::sync::Arc::new(OutputBuffer::new(100));
        assert!(!b.wait_past(0, Duration::from_millis(20)).await);
        let w = {
            let b = b.clone();
            tokio::spawn(async move { b.wait_past(0, Duration::from_secs(5)).await })
        };
        b.append(Stdout, b"x".to_vec()).await;
        assert!(w.await.unwrap());
        b.close();
        assert!(b.wait_past(1, Duration::from_secs(5)).await);
    }
}
