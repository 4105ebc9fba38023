//! Running evaluations that may take long (CEL expressions that loop) off the async runtime:
//! on its blocking threads, at most [`EVAL_SLOTS`] at once, each within a time limit, so that a
//! runaway expression of one trigger never holds the worker threads every other trigger needs.

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::cel::limits::TIME_LIMIT;
use crate::delivery::panic_message;

/// Evaluations that may run at once off the async runtime; more wait for a free slot.
pub const EVAL_SLOTS: usize = 4;

/// How long past its own deadline an evaluation may run before its caller gives up on it. An
/// evaluation checks its deadline each time it charges its budget, so it normally stops itself.
const GRACE: Duration = Duration::from_millis(250);

static SLOTS: Semaphore = Semaphore::const_new(EVAL_SLOTS);

/// Runs `work` on a blocking thread once a slot is free, and returns its result, or an error when
/// it panicked or ran past the time limit. A slot stays taken until `work` has really returned.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let permit = SLOTS.acquire().await.map_err(|_| "the evaluation pool is closed".to_owned())?;
    let task = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        work()
    });
    match tokio::time::timeout(TIME_LIMIT + GRACE, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => Err(format!("evaluation panicked: {}", panic_message(&join.into_panic()))),
        Ok(Err(_)) => Err("evaluation was cancelled".to_owned()),
        Err(_) => Err(format!("evaluation exceeded the time limit of {}ms", TIME_LIMIT.as_millis())),
    }
}
