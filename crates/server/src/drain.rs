//! Answers that come before the request body has all arrived.
//!
//! A handler that answers early (413 for a body over its limit, 401 before
//! an upload is read, 404 for an unknown sandbox) drops the request body
//! unread. hyper then stops reading and closes the connection; the kernel
//! resets it because unread data is queued, and a client still sending sees
//! "broken pipe" or "connection reset" instead of the answer. [`DrainOnDrop`]
//! reads the rest of such a body in the background and throws it away, up to
//! [`DRAIN_MAX_BYTES`] within [`DRAIN_TIMEOUT`], so the client gets its
//! answer; past either bound the connection is closed as before.

use axum::body::{Body, Bytes, HttpBody};
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes read and discarded after an early answer.
pub const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// Longest time spent draining after an early answer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body that drains itself when dropped before its end.
#[derive(Debug)]
pub struct DrainOnDrop {
    inner: Option<Body>,
}

impl DrainOnDrop {
    /// Wraps `body`.
    #[must_use]
    pub fn new(body: Body) -> Self {
        Self { inner: Some(body) }
    }
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() || body.size_hint().lower() > DRAIN_MAX_BYTES {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
    tracing::debug!(
        bytes = read,
        "drained the rest of a request body answered early"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunked(parts: Vec<&'static [u8]>) -> (Body, tokio::sync::mpsc::Sender<()>) {
        // A body whose chunks arrive one per signal, so the test sees what
        // was read after the drop.
        let (tx, rx) = tokio::sync::mpsc::channel::<()>(8);
        let s = futures::stream::unfold((rx, parts.into_iter()), |(mut rx, mut it)| async move {
            rx.recv().await?;
            let p = it.next()?;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(p)), (rx, it)))
        });
        (Body::from_stream(s), tx)
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_passes_through_unchanged() {
        let (b, tx) = chunked(vec![b"ab", b"cd"]);
        for _ in 0..3 {
            tx.send(()).await.unwrap();
        }
        let got = DrainOnDrop::new(b).collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abcd");
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_read_to_its_end_in_the_background() {
        let (b, tx) = chunked(vec![b"ab", b"cd", b"ef"]);
        let mut d = DrainOnDrop::new(b);
        tx.send(()).await.unwrap();
        let first = d.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"ab");
        drop(d);
        // The drain task keeps the stream alive: every further chunk is
        // taken (a dropped, undrained stream would close the channel and
        // make these sends fail).
        for _ in 0..3 {
            tx.send(()).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the drain reached the end and let the stream go");
    }
}
