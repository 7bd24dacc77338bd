//! `GET /admin/v1/usage`: what tenants used, from the call records `falra_core::metering`
//! writes.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::Operator;
use crate::extract::ApiQuery;
use crate::server::AppState;
use crate::store::UsageRow;
use falra_core::clock::{format_ms, month_bounds, now_ms, parse_time};
use falra_core::metering::is_deploy_child;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    tenant: Option<String>,
    /// An RFC 3339 time or date; default: the start of this month.
    from: Option<String>,
    /// An RFC 3339 time or date (exclusive); default: now.
    to: Option<String>,
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// `GET /admin/v1/usage?tenant=&from=&to=&format=json|csv`: calls per tenant and function in
/// `[from, to)` (RFC 3339 times or dates; default: this month so far).
#[utoipa::path(
    get,
    path = "/admin/v1/usage",
    operation_id = "metering_usage",
    tag = "metering",
    summary = "Calls aggregated per tenant and function",
    params(UsageQuery),
    responses((status = 200, description = "Usage", content((crate::schemas::Usage = "application/json"), (String = "text/csv"))), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn usage(
    _op: Operator,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<UsageQuery>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiQuery(q) = query?;
    let now = now_ms();
    let time = |field: &str, value: Option<&str>, default: i64| match value {
        None => Ok(default),
        Some(v) => parse_time(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field} {v:?} is not an RFC 3339 time or a date such as 2026-11-01"
            ))
            .with_detail(json!({ "parameter": field }))
        }),
    };
    let from = time("from", q.from.as_deref(), month_bounds(now).0)?;
    let to = time("to", q.to.as_deref(), now + 1)?;
    if from > to {
        return Err(ApiError::bad_request(format!(
            "from ({}) is after to ({})",
            falra_core::clock::format_ms(from),
            falra_core::clock::format_ms(to)
        ))
        .with_detail(json!({"parameter": "from"})));
    }
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(
                ApiError::bad_request(format!("format {other:?} is not json or csv"))
                    .with_detail(json!({"parameter": "format"})),
            )
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
    };
    state.meter.flush().await;
    let tenant = crate::extract::tenant_parameter(q.tenant.as_deref())?;
    if let Some(t) = &tenant {
        if state.store.tenant(t).await?.is_none() {
            return Err(ApiError::not_found(format!("no tenant named {t:?}"))
                .with_detail(json!({"parameter": "tenant"})));
        }
    }
    let rows = state.store.usage(tenant.as_ref(), from, to).await?;
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            usage_csv(&rows),
        )
            .into_response());
    }
    let mut tenants: Vec<Value> = Vec::new();
    for row in &rows {
        let fresh = tenants.last().is_none_or(|t| t["tenant"] != row.tenant);
        if fresh {
            tenants.push(
                json!({"tenant": row.tenant, "calls": 0, "ok": 0, "errors": 0,
                "wall_ms": 0, "cpu_ms": 0, "deploy_cpu_ms": 0, "bytes_in": 0, "bytes_out": 0}),
            );
        }
        let t = tenants.last_mut().expect("pushed above");
        if is_deploy_child(&row.function) {
            // Deploy-time children are the tenant's code running, not calls: their CPU counts
            // (and is shown apart), their runs do not.
            for (key, add) in [
                ("cpu_ms", row.cpu_ms),
                ("deploy_cpu_ms", row.cpu_ms),
                ("wall_ms", row.wall_ms),
            ] {
                t[key] = json!(t[key].as_i64().unwrap_or(0) + add);
            }
            continue;
        }
        for (key, add) in [
            ("calls", row.calls),
            ("ok", row.ok),
            ("errors", row.calls - row.ok),
            ("wall_ms", row.wall_ms),
            ("cpu_ms", row.cpu_ms),
            ("bytes_in", row.bytes_in),
            ("bytes_out", row.bytes_out),
        ] {
            t[key] = json!(t[key].as_i64().unwrap_or(0) + add);
        }
    }
    Ok(Json(json!({
        "from": format_ms(from),
        "to": format_ms(to),
        "tenants": tenants,
        "functions": rows.iter().map(usage_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

fn usage_json(r: &UsageRow) -> Value {
    json!({
        "tenant": r.tenant,
        "fn": r.function,
        "calls": r.calls,
        "ok": r.ok,
        "errors": r.calls - r.ok,
        "wall_ms": r.wall_ms,
        "cpu_ms": r.cpu_ms,
        "max_peak_memory_bytes": r.max_peak_memory_bytes,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
    })
}

fn usage_csv(rows: &[UsageRow]) -> String {
    let mut out = String::from(
        "tenant,fn,calls,ok,errors,wall_ms,cpu_ms,max_peak_memory_bytes,bytes_in,bytes_out\n",
    );
    for r in rows {
        // Tenant and function names are identifiers: nothing to quote.
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.tenant,
            r.function,
            r.calls,
            r.ok,
            r.calls - r.ok,
            r.wall_ms,
            r.cpu_ms,
            r.max_peak_memory_bytes,
            r.bytes_in,
            r.bytes_out
        ));
    }
    out
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    tenant: Option<String>,
    /// The last this many UTC days, today included (default 14).
    #[param(minimum = 1, maximum = 90)]
    days: Option<i64>,
}

const DAY_MS: i64 = 86_400_000;

/// `GET /admin/v1/stats?tenant=&days=`: what the console's charts draw. Calls, errors, CPU
/// and p50/p99 wall time per UTC day; calls, errors and CPU per tenant, with the CPU used this
/// month against the plan's quota; the error codes answered. Deploy-time children count
/// their CPU, not as calls.
#[utoipa::path(
    get,
    path = "/admin/v1/stats",
    operation_id = "metering_stats",
    tag = "metering",
    summary = "Calls per day with p50/p99 wall time, CPU per tenant against its quota, error codes",
    params(StatsQuery),
    responses((status = 200, description = "Statistics", body = crate::schemas::Stats), crate::schemas::OperatorErrors),
    security(("operator" = []))
)]
pub async fn stats(
    _op: Operator,
    State(state): State<AppState>,
    query: Result<ApiQuery<StatsQuery>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiQuery(q) = query?;
    let days = q.days.unwrap_or(14);
    if !(1..=90).contains(&days) {
        return Err(
            ApiError::bad_request(format!("days must be between 1 and 90, got {days}"))
                .with_detail(json!({"parameter": "days"})),
        );
    }
    let tenant = crate::extract::tenant_parameter(q.tenant.as_deref())?;
    let mut rows = state.store.tenants().await?;
    if let Some(t) = &tenant {
        rows.retain(|r| &r.name == t);
        if rows.is_empty() {
            return Err(ApiError::not_found(format!("no tenant named {t:?}"))
                .with_detail(json!({"parameter": "tenant"})));
        }
    }
    state.meter.flush().await;
    let now = now_ms();
    let from = (now.div_euclid(DAY_MS) - (days - 1)) * DAY_MS;
    let to = now + 1;
    let per_day = state.store.day_stats(tenant.as_ref(), from, to).await?;
    let codes = state.store.error_codes(tenant.as_ref(), from, to).await?;
    let in_range = state.store.usage(tenant.as_ref(), from, to).await?;
    let this_month = state
        .store
        .usage(tenant.as_ref(), month_bounds(now).0, to)
        .await?;
    // Per tenant: (calls, errors, cpu_ms) in the range, and CPU this month.
    let mut used: std::collections::HashMap<&str, (i64, i64, i64, i64)> = Default::default();
    for r in &in_range {
        let e = used.entry(r.tenant.as_str()).or_default();
        if !is_deploy_child(&r.function) {
            e.0 += r.calls;
            e.1 += r.calls - r.ok;
        }
        e.2 += r.cpu_ms;
    }
    for r in &this_month {
        used.entry(r.tenant.as_str()).or_default().3 += r.cpu_ms;
    }
    let tenants: Vec<Value> = rows
        .iter()
        .map(|t| {
            let (calls, errors, cpu_ms, month_cpu_ms) =
                used.get(t.name.as_str()).copied().unwrap_or_default();
            let quota = falra_core::plans::effective_policy(&state, t)
                .cpu_seconds_per_month
                .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
            json!({
                "tenant": t.name.as_str(),
                "calls": calls,
                "errors": errors,
                "cpu_ms": cpu_ms,
                "month_cpu_ms": month_cpu_ms,
                "cpu_quota_ms": quota,
            })
        })
        .collect();
    let day = |ms: i64| format_ms(ms).chars().take(10).collect::<String>();
    // Every day of the range, those without calls too, so a chart's axis is the range.
    let days: Vec<Value> = (0..days)
        .map(|i| {
            let start = from + i * DAY_MS;
            let found = per_day.iter().find(|d| d.day == start);
            json!({
                "day": day(start),
                "calls": found.map_or(0, |d| d.calls),
                "errors": found.map_or(0, |d| d.errors),
                "cpu_ms": found.map_or(0, |d| d.cpu_ms),
                "p50_ms": found.map_or(0, |d| d.p50_ms),
                "p99_ms": found.map_or(0, |d| d.p99_ms),
            })
        })
        .collect();
    Ok(Json(json!({
        "from": format_ms(from),
        "to": format_ms(to),
        "days": days,
        "tenants": tenants,
        "codes": codes.iter().map(|(code, count)| json!({"code": code, "count": count})).collect::<Vec<_>>(),
    })))
}
