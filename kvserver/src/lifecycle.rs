//! One lifecycle for everything a node runs: every task it spawns is tracked, and stopping the
//! node stops them all.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The tasks of one node. A crash cancels them all at once: each is dropped at its next await
/// point, so nothing of the node finishes gracefully, exactly as if its process had died.
#[derive(Debug, Default)]
pub struct Lifecycle {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Lifecycle {
    /// A lifecycle with no tasks yet.
    pub fn new() -> Self {
        Lifecycle::default()
    }

    /// Runs `task` until it finishes or the node stops, whichever comes first. It runs in the
    /// caller's tracing span, so what a request starts in the background logs its request id.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let task = task.in_current_span();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Runs `work` unless the node stops first; `None` if it stopped.
    pub async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            out = work => Some(out),
        }
    }

    /// Completes when the node is told to stop.
    pub async fn stopping(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the node has been told to stop.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops every task at once.
    pub fn stop(&self) {
        self.tracker.close();
        self.cancel.cancel();
    }

    /// Stops every task and waits until all of them have ended.
    pub async fn stop_and_wait(&self) {
        self.stop();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_every_task_without_letting_it_finish() {
        let life = Lifecycle::new();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        life.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            f.store(true, Ordering::SeqCst);
        });
        life.spawn(std::future::pending());
        life.stop_and_wait().await;
        assert!(!finished.load(Ordering::SeqCst));
        assert!(life.is_stopping());
        assert_eq!(life.unless_stopped(async { 1 }).await, None);
    }
}
