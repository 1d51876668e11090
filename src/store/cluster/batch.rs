//! Requests that go to Redis in batches: the ones a node makes while its previous batch is
//! in Redis go together in the next, one script call and one round trip for all (a burst of
//! thousands of notifies, or of pages arriving at once, costs Redis a fraction of one call
//! each); a request made while none is in flight goes once the tasks ready at that moment
//! have run (one yield to the scheduler), with whatever they added: alone when the node is
//! quiet, with the requests its busy connections just read when it is not.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A request waiting for its batch.
pub trait Job {
    /// Whether its caller gave up (its timeout ran out): it is then not sent.
    fn abandoned(&self) -> bool;
}

/// A batched request's answer channel: `Err` is why Redis could not answer.
pub type Answer<T> = oneshot::Sender<Result<T, String>>;

/// Sends what arrives on `queue` through `send`, in batches of up to `max_batch`, with up to
/// `max_in_flight` batches in Redis at once. Ends at shutdown once the batches in flight are
/// answered; what is queued then goes alone, and later requests find the queue closed (their
/// callers send them alone too).
pub async fn run<J, F, Fut>(
    mut queue: mpsc::Receiver<J>,
    shutdown: CancellationToken,
    max_batch: usize,
    max_in_flight: usize,
    send: F,
) where
    J: Job,
    F: Fn(Vec<J>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            job = queue.recv(), if in_flight.len() < max_in_flight => {
                let Some(job) = job else { break };
                // Let the tasks that are ready now (connections with a request read) add
                // theirs first: with 16 publishers a notify batch grew from 5.6 to 7.4 and
                // Redis's CPU per notify fell to about 0.83x (docs/measurements.md); on a
                // quiet node it costs one trip through the scheduler.
                tokio::task::yield_now().await;
                let mut batch = vec![job];
                while batch.len() < max_batch {
                    let Ok(job) = queue.try_recv() else { break };
                    batch.push(job);
                }
                batch.retain(|job| !job.abandoned());
                if !batch.is_empty() {
                    in_flight.push(send(batch));
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    queue.close();
    while in_flight.next().await.is_some() {}
    while let Ok(job) = queue.try_recv() {
        send(vec![job]).await;
    }
}

/// Queues `job` for its batch and waits for `answer`, at most `patience` with the time in the
/// queue counted. When the queue is full (a node far past what one Redis takes) or closed
/// (shutting down), the job goes alone through `alone`.
pub async fn submit<J, T, Fut>(
    queue: &mpsc::Sender<J>,
    job: J,
    answer: oneshot::Receiver<Result<T, String>>,
    patience: Duration,
    alone: impl FnOnce(Vec<J>) -> Fut,
) -> Result<T, String>
where
    Fut: Future<Output = ()>,
{
    tokio::time::timeout(patience, async {
        if let Err(TrySendError::Full(job) | TrySendError::Closed(job)) = queue.try_send(job) {
            alone(vec![job]).await;
        }
        answer.await.unwrap_or_else(|_| Err("shutting down".into()))
    })
    .await
    .unwrap_or_else(|_| Err(format!("Redis did not answer within {patience:?}")))
}
