//! A stream answer produced by a task: the task sends messages through a
//! [`Sender`]; while it sends nothing for the keepalive interval, a
//! keepalive message goes out; when it ends, the final envelope does. The
//! task stops as soon as the client goes away.

use super::connect::{self, RpcError};
use axum::body::Bytes;
use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// The client went away; stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What a producer answers: `Err(Gone)` when the client left, else the
/// outcome for the final envelope.
pub type Produced = Result<Result<(), RpcError>, Gone>;

/// Sends messages of one stream answer.
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::Sender<Bytes>,
    activity: Arc<Notify>,
}

impl Sender {
    /// Sends one message (and postpones the next keepalive).
    ///
    /// # Errors
    /// [`Gone`] when the client went away.
    pub async fn message(&self, msg: &impl Serialize) -> Result<(), Gone> {
        self.tx
            .send(connect::message(msg))
            .await
            .map_err(|_| Gone)?;
        self.activity.notify_one();
        Ok(())
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Pump;

impl Pump {
    /// Runs `produce` in a task and answers its envelopes as a stream.
    pub fn spawn<F, Fut>(
        keepalive: Duration,
        keepalive_msg: Value,
        produce: F,
    ) -> impl Stream<Item = Bytes> + Send + 'static
    where
        F: FnOnce(Sender) -> Fut + Send + 'static,
        Fut: Future<Output = Produced> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let activity = Arc::new(Notify::new());
        let sender = Sender {
            tx: tx.clone(),
            activity: activity.clone(),
        };
        tokio::spawn(async move {
            let work = produce(sender);
            tokio::pin!(work);
            let mut next_keepalive = Instant::now() + keepalive;
            let outcome = loop {
                tokio::select! {
                    r = &mut work => break r,
                    () = tx.closed() => return,
                    () = activity.notified() => next_keepalive = Instant::now() + keepalive,
                    () = tokio::time::sleep_until(next_keepalive) => {
                        if tx.send(connect::message(&keepalive_msg)).await.is_err() {
                            return;
                        }
                        next_keepalive = Instant::now() + keepalive;
                    }
                }
            };
            let last = match outcome {
                Ok(Ok(())) => connect::end_ok(),
                Ok(Err(e)) => e.end_frame(),
                Err(Gone) => return,
            };
            let _ = tx.send(last).await;
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn keepalives_fill_quiet_gaps_and_the_end_frame_closes() {
        let frames: Vec<Bytes> =
            Pump::spawn(Duration::from_secs(5), json!({"k": 1}), |tx| async move {
                tx.message(&json!({"m": 1})).await?;
                tokio::time::sleep(Duration::from_secs(12)).await;
                tx.message(&json!({"m": 2})).await?;
                Ok(Ok(()))
            })
            .collect()
            .await;
        let bodies: Vec<String> = frames
            .iter()
            .map(|f| String::from_utf8(f[5..].to_vec()).unwrap())
            .collect();
        assert_eq!(
            bodies,
            [r#"{"m":1}"#, r#"{"k":1}"#, r#"{"k":1}"#, r#"{"m":2}"#, "{}"]
        );
        assert_eq!(frames.last().unwrap()[0], 0x02);
    }
}
