//! `GET /metrics`: counters and gauges in the Prometheus text format.
//!
//! Calls by tenant and outcome, call latency histograms by tenant, children running and
//! prepared, sandbox failures, failed authentications, the metering queue. Labels are tenant
//! names (operator-made, so bounded) and error codes (a fixed set); nothing a caller sends
//! becomes a label.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::server::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub auth_failures: AtomicU64,
    /// Client connections closed on arrival, over the node-wide or a per-address cap.
    pub connections_refused: AtomicU64,
}

impl Metrics {
    /// Counts one answered call; `tenant` is `-` when the caller was not identified.
    pub fn call(&self, tenant: &str, outcome: &'static str, seconds: f64) {
        *self
            .calls
            .lock()
            .expect("metrics poisoned")
            .entry((tenant.to_owned(), outcome))
            .or_default() += 1;
        let mut latency = self.latency.lock().expect("metrics poisoned");
        let h = latency.entry(tenant.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Forgets a removed tenant's series.
    pub fn forget(&self, tenant: &str) {
        self.calls
            .lock()
            .expect("metrics poisoned")
            .retain(|(t, _), _| t != tenant);
        self.latency
            .lock()
            .expect("metrics poisoned")
            .remove(tenant);
    }

    fn render(&self, state: &AppState) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "falra_calls_total",
            "counter",
            "Calls answered, by tenant and outcome (ok or the error code).",
        );
        for ((tenant, outcome), n) in self.calls.lock().expect("metrics poisoned").iter() {
            let _ = writeln!(
                out,
                "falra_calls_total{{tenant=\"{tenant}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        head(
            &mut out,
            "falra_call_duration_seconds",
            "histogram",
            "Wall-clock time from request to answer, by tenant.",
        );
        for (tenant, h) in self.latency.lock().expect("metrics poisoned").iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "falra_call_duration_seconds_bucket{{tenant=\"{tenant}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "falra_call_duration_seconds_bucket{{tenant=\"{tenant}\",le=\"+Inf\"}} {}\n\
                 falra_call_duration_seconds_sum{{tenant=\"{tenant}\"}} {}\n\
                 falra_call_duration_seconds_count{{tenant=\"{tenant}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let zygotes = &state.runtime.zygotes;
        let preloads = &state.runtime.preloads;
        let gauges: [(&str, &str, &str, u64); 20] = [
            (
                "falra_active_children",
                "gauge",
                "Calls running now (each is one sandboxed child).",
                state.admission.running() as u64,
            ),
            (
                "falra_prepared_children",
                "gauge",
                "Children started ahead of their calls, waiting.",
                state.runtime.ready_count() as u64,
            ),
            (
                "falra_sandbox_failures_total",
                "counter",
                "Children that could not be set up or started.",
                state
                    .runtime
                    .counters
                    .sandbox_failures
                    .load(Ordering::Relaxed),
            ),
            (
                "falra_auth_failures_total",
                "counter",
                "Requests with a missing, unknown, expired or revoked token.",
                self.auth_failures.load(Ordering::Relaxed),
            ),
            (
                "falra_egress_refused_total",
                "counter",
                "Outbound connections the egress gateways refused.",
                state
                    .runtime
                    .counters
                    .egress_refused
                    .load(Ordering::Relaxed),
            ),
            (
                "falra_connections_refused_total",
                "counter",
                "Client connections closed on arrival, over a connection cap.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "falra_metering_queue_depth",
                "gauge",
                "Call records waiting to be written to the store.",
                state.meter.queue_depth() as u64,
            ),
            (
                "falra_metering_dropped_total",
                "counter",
                "Call records dropped because the metering queue was full.",
                state.meter.dropped.load(Ordering::Relaxed),
            ),
            (
                "falra_zygotes_alive",
                "gauge",
                "Warm interpreters calls are forked from (0 or 1).",
                zygotes.alive(),
            ),
            (
                "falra_zygote_resident_bytes",
                "gauge",
                "The zygote's resident memory.",
                zygotes.rss_bytes().unwrap_or(0),
            ),
            (
                "falra_zygote_forks_total",
                "counter",
                "Calls' children forked from the zygote.",
                zygotes.counters.forks.load(Ordering::Relaxed),
            ),
            (
                "falra_zygote_fork_microseconds_total",
                "counter",
                "Microseconds from asking for a forked child to its report, summed over forks.",
                zygotes.counters.fork_micros.load(Ordering::Relaxed),
            ),
            (
                "falra_zygote_fallbacks_total",
                "counter",
                "Calls' children exec'd because the zygote could not fork them.",
                zygotes.counters.fallbacks.load(Ordering::Relaxed),
            ),
            (
                "falra_zygote_starts_total",
                "counter",
                "Zygotes started (at start, after one died, or to replace an old one).",
                zygotes.counters.starts.load(Ordering::Relaxed),
            ),
            (
                "falra_preload_zygotes_alive",
                "gauge",
                "Preload zygotes ready (one per tenant version whose policy preloads modules).",
                preloads.alive(),
            ),
            (
                "falra_preload_zygote_resident_bytes",
                "gauge",
                "The preload zygotes' resident memory, together.",
                preloads.rss_bytes(),
            ),
            (
                "falra_preload_forks_total",
                "counter",
                "Calls' children forked from a preload zygote.",
                preloads.counters.forks.load(Ordering::Relaxed),
            ),
            (
                "falra_preload_fork_microseconds_total",
                "counter",
                "Microseconds from asking a preload zygote for a call's child to its placement, summed.",
                preloads.counters.fork_micros.load(Ordering::Relaxed),
            ),
            (
                "falra_preload_fallbacks_total",
                "counter",
                "Calls of a preloading policy not forked from its zygote (none ready, or the fork failed).",
                preloads.counters.fallbacks.load(Ordering::Relaxed),
            ),
            (
                "falra_preload_zygote_starts_total",
                "counter",
                "Preload zygotes started.",
                preloads.counters.starts.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in gauges {
            head(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics_metrics",
    tag = "node",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.http().metrics.render(&state),
    )
}
