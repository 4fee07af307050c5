//! What a handler reports while it runs: progress ([`JobReport::progress`],
//! [`JobReport::progress_of`]) and a result ([`JobReport::set_result`]), through its
//! [`JobContext::report`](crate::JobContext::report).
//!
//! In the worker, progress is throttled per job: a report is kept as the newest and
//! written by a small task at most once per
//! [`PROGRESS_INTERVAL`](fleet_jobs::progress::PROGRESS_INTERVAL) (reports in between
//! are coalesced), and the newest is always written before the attempt's completion is
//! sent, so the job's record and its tenant's `job.progress` events end with the last
//! report. A result is written at once (the handler awaits it).
//!
//! In a unit test (`JobReport::default()`, what [`crate::testing::TestJob`] gives a
//! handler) nothing is written anywhere: every report is kept in memory, unthrottled,
//! for the test to read back ([`crate::testing::TestJob::reported`]).

use crate::handler::JobError;
use fleet_jobs::progress::{Attempt, PROGRESS_INTERVAL, Progress, Recorder, result_json};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What a handler reported, as a unit test reads it back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported {
    /// Every progress report, in order.
    pub progress: Vec<Progress>,
    /// The result recorded last.
    pub result: Option<serde_json::Value>,
}

/// The progress and result of one attempt. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobReport {
    sink: Sink,
}

#[derive(Debug, Clone)]
enum Sink {
    Memory(Arc<Mutex<Reported>>),
    Live(Arc<Live>),
}

impl Default for JobReport {
    /// Keeps every report in memory (a handler run in a test).
    fn default() -> Self {
        JobReport { sink: Sink::Memory(Arc::default()) }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The worker's side of one attempt.
#[derive(Debug)]
struct Live {
    recorder: Recorder,
    attempt: Attempt,
    interval: Duration,
    runtime: tokio::runtime::Handle,
    /// The newest report not yet written.
    pending: Mutex<Option<Progress>>,
    /// Held while writing, so writes go out one at a time and in order.
    writing: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    state: Mutex<LiveState>,
}

#[derive(Debug, Default)]
struct LiveState {
    flusher: Option<tokio::task::JoinHandle<()>>,
    closed: bool,
}

impl Live {
    /// Writes the newest pending report, if any.
    async fn flush(&self) {
        let _writing = self.writing.lock().await;
        let Some(p) = lock(&self.pending).take() else { return };
        if let Err(e) = self.recorder.progress(&self.attempt, &p).await {
            tracing::warn!(error = %e, job = %self.attempt.id, "job progress not recorded");
        }
    }
}

impl JobReport {
    /// The worker's report of the attempt `attempt`, written through `recorder`.
    /// Must be made on the runtime its writes run on.
    pub fn live(recorder: Recorder, attempt: Attempt) -> Self {
        Self::live_every(recorder, attempt, PROGRESS_INTERVAL)
    }

    /// [`JobReport::live`] with its own least time between two progress writes.
    pub fn live_every(recorder: Recorder, attempt: Attempt, interval: Duration) -> Self {
        JobReport {
            sink: Sink::Live(Arc::new(Live {
                recorder,
                attempt,
                interval,
                runtime: tokio::runtime::Handle::current(),
                pending: Mutex::new(None),
                writing: tokio::sync::Mutex::new(()),
                wake: tokio::sync::Notify::new(),
                state: Mutex::new(LiveState::default()),
            })),
        }
    }

    /// Reports `percent` done (clamped to 0–100) with a short `message` (cut to 200
    /// characters). Never waits: the worker writes the newest report a few times a
    /// second at most, and always the last one.
    pub fn progress(&self, percent: f64, message: impl Into<String>) {
        self.report(Progress::percent(percent, message));
    }

    /// Reports `done` of `total` units with a short `message`, like
    /// [`JobReport::progress`].
    pub fn progress_of(&self, done: u64, total: u64, message: impl Into<String>) {
        self.report(Progress::count(done, total, message));
    }

    fn report(&self, p: Progress) {
        match &self.sink {
            Sink::Memory(m) => lock(m).progress.push(p),
            Sink::Live(live) => {
                let mut state = lock(&live.state);
                if state.closed {
                    return;
                }
                *lock(&live.pending) = Some(p);
                if state.flusher.is_none() {
                    let l = live.clone();
                    state.flusher = Some(live.runtime.spawn(async move {
                        loop {
                            l.wake.notified().await;
                            l.flush().await;
                            tokio::time::sleep(l.interval).await;
                        }
                    }));
                }
                live.wake.notify_one();
            }
        }
    }

    /// Records `value` as the job's result (replacing one recorded before), kept with
    /// the job as long as its finished record. At most 64 KiB of JSON: a larger one is
    /// a permanent error (the handler may `?` it), as is a value that is not JSON.
    pub async fn set_result<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let json = result_json(value).map_err(JobError::give_up)?;
        match &self.sink {
            Sink::Memory(m) => {
                lock(m).result = serde_json::from_str(&json).ok();
                Ok(())
            }
            Sink::Live(live) => match live.recorder.result(&live.attempt, &json).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(JobError::retry(
                    "the result was not recorded: the job no longer runs under this attempt's lease",
                )),
                Err(e) => Err(JobError::retry(format!("the result was not recorded: {e}"))),
            },
        }
    }

    /// Ends the attempt's reporting: writes the newest pending progress (waiting for a
    /// write under way first) and stops the writer; later reports are dropped. The
    /// worker calls it before sending the attempt's completion.
    pub async fn finish(&self) {
        let Sink::Live(live) = &self.sink else { return };
        let flusher = {
            let mut state = lock(&live.state);
            state.closed = true;
            state.flusher.take()
        };
        if let Some(flusher) = flusher {
            live.flush().await;
            flusher.abort();
        }
    }

    /// A client on the worker's Redis (`None` in a test's report).
    pub fn client(&self) -> Option<fleet_jobs::Client> {
        match &self.sink {
            Sink::Memory(_) => None,
            Sink::Live(live) => Some(live.recorder.client()),
        }
    }

    /// What was reported, when reports are kept in memory (a test's report).
    pub fn reported(&self) -> Option<Reported> {
        match &self.sink {
            Sink::Memory(m) => Some(lock(m).clone()),
            Sink::Live(_) => None,
        }
    }
}
