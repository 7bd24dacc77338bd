//! What a deploy did, step by step, with timings: kept with the version it made, returned in
//! the answer (or the error's detail) and, for a client that asked for a stream, sent as each
//! step starts and ends.
//!
//! A [`DeployLog`] is handed to the deploy by whoever started it and shared with the deploy's
//! task: the caller still holds it when the deploy fails, so a failed deploy's steps reach
//! the answer and the audit log as well.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

/// One step of a deploy as it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// `fetch`, `tree`, `venv`, `compile`, `list` or `activate`.
    pub step: &'static str,
    /// When it began, in milliseconds after the deploy began.
    pub at_ms: u64,
    /// How long it took.
    pub ms: u64,
    pub ok: bool,
    /// What it found or why it failed (first line, bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a streaming client is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployEvent {
    Started(&'static str),
    Finished(StepRecord),
}

/// The longest detail kept for one step.
const MAX_DETAIL_BYTES: usize = 512;

#[derive(Debug)]
struct Inner {
    started: Instant,
    steps: Vec<StepRecord>,
    events: Option<mpsc::UnboundedSender<DeployEvent>>,
}

/// The step log of one deploy (cheap to clone; every clone is the same log).
#[derive(Debug, Clone)]
pub struct DeployLog(Arc<Mutex<Inner>>);

impl Default for DeployLog {
    fn default() -> Self {
        DeployLog::new()
    }
}

impl DeployLog {
    pub fn new() -> DeployLog {
        DeployLog(Arc::new(Mutex::new(Inner {
            started: Instant::now(),
            steps: Vec::new(),
            events: None,
        })))
    }

    /// A log that also sends each step's start and end to the receiver. The deploy has at
    /// most a handful of steps, so the channel never holds more than a dozen events.
    pub fn streaming() -> (DeployLog, mpsc::UnboundedReceiver<DeployEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = DeployLog::new();
        log.lock().events = Some(tx);
        (log, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The steps so far, in the order they ended.
    pub fn steps(&self) -> Vec<StepRecord> {
        self.lock().steps.clone()
    }

    /// The steps as the store keeps them with the version.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.steps()).expect("steps serialise")
    }

    fn begin(&self, step: &'static str) -> u64 {
        let inner = self.lock();
        if let Some(tx) = &inner.events {
            let _ = tx.send(DeployEvent::Started(step));
        }
        millis(inner.started.elapsed())
    }

    fn end(
        &self,
        step: &'static str,
        at_ms: u64,
        began: Instant,
        ok: bool,
        detail: Option<String>,
    ) {
        let record = StepRecord {
            step,
            at_ms,
            ms: millis(began.elapsed()),
            ok,
            detail: detail.map(bounded),
        };
        let mut inner = self.lock();
        if let Some(tx) = &inner.events {
            let _ = tx.send(DeployEvent::Finished(record.clone()));
        }
        inner.steps.push(record);
    }

    /// Runs a step that can fail; a failure is recorded with its message, a success with what
    /// `detail` says of its value (before the step's end is sent, so a stream shows it too).
    pub async fn step<T, E, F>(
        &self,
        step: &'static str,
        future: F,
        detail: impl FnOnce(&T) -> Option<String>,
    ) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let at_ms = self.begin(step);
        let began = Instant::now();
        let out = falra_runtime::task::step(step, future).await;
        match &out {
            Ok(value) => self.end(step, at_ms, began, true, detail(value)),
            Err(e) => self.end(step, at_ms, began, false, Some(e.to_string())),
        }
        out
    }

    /// Runs a step whose outcome is in what it returns (`detail` says what it found).
    pub async fn step_with<T, F>(
        &self,
        step: &'static str,
        future: F,
        detail: impl FnOnce(&T) -> (bool, Option<String>),
    ) -> T
    where
        F: Future<Output = T>,
    {
        let at_ms = self.begin(step);
        let began = Instant::now();
        let out = falra_runtime::task::step(step, future).await;
        let (ok, detail) = detail(&out);
        self.end(step, at_ms, began, ok, detail);
        out
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The first line of `text`, at most [`MAX_DETAIL_BYTES`] (a pip failure can be pages long;
/// the answer's error carries the whole of it).
fn bounded(text: String) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.len() <= MAX_DETAIL_BYTES && line.len() == text.len() {
        return text;
    }
    let mut end = line.len().min(MAX_DETAIL_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_are_recorded_in_order_and_streamed_as_they_start_and_end() {
        let (log, mut events) = DeployLog::streaming();
        let ok: Result<u8, String> = log
            .step("fetch", async { Ok(1) }, |_| Some("commit abcdef1".into()))
            .await;
        assert_eq!(ok, Ok(1));
        let failed: Result<u8, String> = log
            .step(
                "venv",
                async { Err(format!("pip failed\n{}", "x".repeat(2000))) },
                |_| None,
            )
            .await;
        assert!(failed.is_err());
        let steps = log.steps();
        assert_eq!(
            steps.iter().map(|s| (s.step, s.ok)).collect::<Vec<_>>(),
            [("fetch", true), ("venv", false)]
        );
        assert_eq!(steps[0].detail.as_deref(), Some("commit abcdef1"));
        assert_eq!(steps[1].detail.as_deref(), Some("pip failed…"));
        assert!(steps[1].at_ms >= steps[0].at_ms);
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], DeployEvent::Started("fetch"));
        assert!(
            matches!(&seen[1], DeployEvent::Finished(r) if r.detail.as_deref() == Some("commit abcdef1")),
            "the stream has the detail: {seen:?}"
        );
        assert!(matches!(&seen[3], DeployEvent::Finished(r) if r.step == "venv" && !r.ok));
        let long = bounded("y".repeat(MAX_DETAIL_BYTES + 10));
        assert!(long.ends_with('…') && long.len() <= MAX_DETAIL_BYTES + 3);
    }
}
