//! Schedules: a job submitted on every tick of a cron expression, once per tick across the
//! cluster.
//!
//! A schedule is a row (`schedules`) with its next tick. Every node looks for due schedules
//! twice a second; firing one is a single transaction in the store that queues the tick's job
//! (idempotency key `schedule:<id>:<tick>`) and moves the schedule to its next tick, taking the
//! row with `FOR UPDATE SKIP LOCKED` on PostgreSQL — so however many nodes look at once, a tick
//! makes one job. Ticks missed while no node ran (the whole cluster down) are not made up: the
//! first look after makes one job for the latest missed tick and moves on from now.
//!
//! Cron expressions are read by `croner`: five fields (minute, hour, day of month, month, day
//! of week) or six with seconds first, in UTC.

use std::str::FromStr;
use std::time::Duration;

use falra_store::{NewJob, NewSchedule, ScheduleRow, StoreError};
use falra_tenants::{FnName, TenantName, VersionId};
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::clock::{format_ms, now_ms};
use crate::Core;

/// Schedules a tenant may have.
pub const MAX_PER_TENANT: usize = 100;
/// How often a node looks for due schedules.
const POLL: Duration = Duration::from_millis(500);

/// Why a schedule request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron {cron:?} is not a cron expression: {reason}")]
    BadCron { cron: String, reason: String },
    #[error("cron {0:?} never fires")]
    NeverFires(String),
    #[error("no schedule {0:?}")]
    NotFound(String),
    #[error("this tenant has {MAX_PER_TENANT} schedules already: remove one first")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A schedule as requested, validated at the boundary (the cron is checked here).
#[derive(Debug, Clone)]
pub struct Create {
    pub cron: String,
    pub function: FnName,
    pub kwargs: Map<String, Value>,
    pub version: Option<VersionId>,
}

fn parse(cron: &str) -> Result<croner::Cron, ScheduleError> {
    croner::Cron::from_str(cron).map_err(|e| ScheduleError::BadCron {
        cron: cron.to_owned(),
        reason: e.to_string(),
    })
}

/// The first tick of `cron` strictly after `after_ms` (epoch ms, UTC); `None` if there is none
/// (or the expression no longer parses).
pub fn next_after(cron: &str, after_ms: i64) -> Option<i64> {
    use chrono::TimeZone;
    let cron = croner::Cron::from_str(cron).ok()?;
    // From the whole second: ticks fall on whole seconds, whatever the moment asked from.
    let after = chrono::Utc
        .timestamp_opt(after_ms.div_euclid(1000), 0)
        .single()?;
    let next = cron.find_next_occurrence(&after, false).ok()?;
    Some(next.timestamp_millis())
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    format!("s_{}", hex::encode(b))
}

/// Creates a schedule for the caller's tenant; its first tick is the next one from now.
pub async fn create(
    state: &Core,
    caller: &Caller,
    request: Create,
) -> Result<ScheduleRow, ScheduleError> {
    let cron = request.cron.trim().to_owned();
    parse(&cron)?;
    let now = now_ms();
    let next_at = next_after(&cron, now).ok_or_else(|| ScheduleError::NeverFires(cron.clone()))?;
    if state.store.schedules_of(&caller.tenant).await?.len() >= MAX_PER_TENANT {
        return Err(ScheduleError::TooMany);
    }
    let row = state
        .store
        .insert_schedule(&NewSchedule {
            id: new_id(),
            tenant: caller.tenant.clone(),
            token_id: caller.token_id.clone(),
            cron,
            function: request.function.as_str().to_owned(),
            kwargs: Value::Object(request.kwargs).to_string(),
            version: request.version.map(|v| v.as_str().to_owned()),
            next_at,
            created_at: now,
        })
        .await?;
    tracing::info!(schedule = %row.id, tenant = %row.tenant, cron = %row.cron, "schedule created");
    Ok(row)
}

pub async fn list(state: &Core, tenant: &TenantName) -> Result<Vec<ScheduleRow>, ScheduleError> {
    Ok(state.store.schedules_of(tenant).await?)
}

pub async fn get(
    state: &Core,
    tenant: &TenantName,
    id: &str,
) -> Result<ScheduleRow, ScheduleError> {
    state
        .store
        .schedule(tenant, id)
        .await?
        .ok_or_else(|| ScheduleError::NotFound(id.to_owned()))
}

/// Pauses (no tick makes a job) or resumes (from the next tick after now) a schedule.
pub async fn set_paused(
    state: &Core,
    tenant: &TenantName,
    id: &str,
    paused: bool,
) -> Result<ScheduleRow, ScheduleError> {
    let current = get(state, tenant, id).await?;
    let next_at = next_after(&current.cron, now_ms())
        .ok_or_else(|| ScheduleError::NeverFires(current.cron.clone()))?;
    state
        .store
        .set_schedule_paused(tenant, id, paused, next_at)
        .await?
        .ok_or_else(|| ScheduleError::NotFound(id.to_owned()))
}

pub async fn remove(state: &Core, tenant: &TenantName, id: &str) -> Result<(), ScheduleError> {
    if state.store.delete_schedule(tenant, id).await? {
        Ok(())
    } else {
        Err(ScheduleError::NotFound(id.to_owned()))
    }
}

/// A schedule as the API shows it.
pub fn view(s: &ScheduleRow) -> Value {
    let kwargs: Value = serde_json::from_str(&s.kwargs).unwrap_or_else(|_| json!({}));
    json!({
        "schedule_id": s.id,
        "cron": s.cron,
        "fn": s.function,
        "kwargs": kwargs,
        "version": s.version,
        "paused": s.paused,
        "next_at": (!s.paused).then(|| format_ms(s.next_at)),
        "last_at": s.last_at.map(format_ms),
        "last_job_id": s.last_job,
        "created_at": format_ms(s.created_at),
    })
}

/// Starts this node's look for due schedules.
pub fn start(state: &Core) {
    crate::spawn_periodic(
        state,
        tracing::info_span!("schedules"),
        POLL,
        |state| async move {
            fire(&state).await;
        },
    );
}

async fn fire(state: &Core) {
    let max_attempts = i64::from(state.config.jobs.max_attempts);
    let make_job = |s: &ScheduleRow| NewJob {
        id: crate::jobs::new_job_id(),
        tenant: s.tenant.clone(),
        token_id: s.token_id.clone(),
        function: s.function.clone(),
        kwargs: s.kwargs.clone(),
        version: s.version.clone(),
        max_attempts,
        idempotency_key: None,
        callback_url: None,
        created_at: now_ms(),
    };
    match state
        .store
        .fire_schedules(now_ms(), 20, &next_after, &make_job)
        .await
    {
        Ok(fired) if fired.is_empty() => {}
        Ok(fired) => {
            for (schedule, job) in &fired {
                tracing::info!(schedule = %schedule.id, tenant = %schedule.tenant, job_id = %job, "schedule fired");
            }
            state.jobs.wake();
        }
        Err(e) => {
            tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not fire schedules")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_come_strictly_after_and_seconds_are_optional() {
        // 2026-12-01T00:00:00Z
        let midnight = 1_796_083_200_000;
        assert_eq!(
            next_after("0 * * * *", midnight),
            Some(midnight + 3_600_000)
        );
        assert_eq!(
            next_after("*/2 * * * * *", midnight),
            Some(midnight + 2_000)
        );
        assert_eq!(
            next_after("*/2 * * * * *", midnight + 1),
            Some(midnight + 2_000)
        );
        assert!(parse("not cron").is_err());
        assert!(parse("61 * * * *").is_err());
        assert_eq!(next_after("garbage", midnight), None);
    }
}
