//! Spawning work that keeps its context: every task and blocking job the daemon starts carries
//! the span it was started from (the request's, with its call id, tenant and version), so what
//! it logs can be traced back to what caused it.
//!
//! Use these instead of `tokio::spawn` and `spawn_blocking` for anything started on behalf of
//! a request; node-wide loops (the metering writer) start their own span.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

/// `tokio::spawn`, in the current span.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}

/// `tokio::task::spawn_blocking`, in the current span.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

/// Runs one named step of a deploy in a span of its own (`deploy_step`, `step = name`) and
/// logs how long it took, whatever its outcome.
pub async fn step<F: Future>(name: &'static str, future: F) -> F::Output {
    let span = tracing::info_span!("deploy_step", step = name);
    let started = Instant::now();
    let out = future.instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "deploy step done"
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Everything logged in this test binary, as the daemon's formatter writes it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_with(captured: &Captured, needle: &str) -> Vec<String> {
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_work_logs_in_the_span_it_was_started_from() {
        let captured = Captured::default();
        let writer = captured.clone();
        // Global, not per thread: the tasks run on other threads than this one.
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        let span = tracing::info_span!("request", call_id = "c_traced");
        let _entered = span.clone().entered();
        super::spawn(async { tracing::info!("from a task") })
            .await
            .unwrap();
        super::spawn_blocking(|| tracing::info!("from a blocking job"))
            .await
            .unwrap();
        super::step("fetch", async { tracing::info!("inside a step") }).await;
        drop(_entered);
        // Without the helpers, the context is lost (what this module exists to prevent).
        tokio::spawn(async { tracing::info!("from a bare task") })
            .await
            .unwrap();

        for (message, step) in [
            ("from a task", false),
            ("from a blocking job", false),
            ("inside a step", true),
            ("deploy step done", true),
        ] {
            let lines = lines_with(&captured, message);
            assert_eq!(lines.len(), 1, "{message}: {lines:?}");
            assert!(lines[0].contains("call_id=\"c_traced\""), "{}", lines[0]);
            assert_eq!(lines[0].contains("step=\"fetch\""), step, "{}", lines[0]);
        }
        assert!(lines_with(&captured, "deploy step done")[0].contains("elapsed_ms="));
        assert!(!lines_with(&captured, "from a bare task")[0].contains("c_traced"));
    }
}
