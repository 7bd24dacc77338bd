//! Completion callbacks: once a job submitted with a `callback_url` ends, a node POSTs the job
//! there (as `GET /v1/jobs/{id}` shows it), signed like a push webhook.
//!
//! The delivery is durable in the job's row: ending the job marks its callback `pending`
//! (`job_queries.rs`), and any node's deliverer leases due callbacks, posts each once, and
//! records `delivered`, a retry with backoff, or `failed` — each result fenced by the
//! delivery's number, so a node that stalled mid-delivery cannot overwrite a later one's.
//! Delivery is at least once; a receiver tells repeats apart by `X-Falra-Job-Id`.
//!
//! Every connection passes the operator's egress rule at connect time (loopback, private and
//! metadata addresses refused unless allowed), as the built-ins' do, and no redirect is
//! followed: the URL named is the one reached.

use std::time::Duration;

use falra_store::JobRow;
use serde_json::Value;

use crate::clock::now_ms;
use crate::Core;

/// Deliveries tried before a callback is given up as `failed`.
pub const MAX_DELIVERIES: i64 = 8;
/// How long a delivery in flight holds its callback from other nodes.
const HOLD_MS: i64 = 30_000;
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node looks for callbacks due.
const POLL: Duration = Duration::from_millis(500);
/// The longest callback URL accepted.
const MAX_URL_BYTES: usize = 2048;

/// Checks a callback URL: absolute `http` or `https`, with a host, no credentials.
pub fn check_url(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("callback_url is longer than {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("callback_url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("callback_url must be an http or https URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("callback_url has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("callback_url must not carry credentials".into());
    }
    Ok(url.to_string())
}

/// The wait before delivery `n + 1`: 2 s, 4 s, 8 s… up to 5 minutes.
fn backoff_ms(n: i64) -> i64 {
    let exp = u32::try_from(n.clamp(1, 9)).unwrap_or(1);
    (1_000i64 << exp).min(300_000)
}

/// Starts this node's deliverer.
pub fn start(state: &Core) {
    crate::spawn_periodic(
        state,
        tracing::info_span!("job_callbacks"),
        POLL,
        |state| async move {
            let now = now_ms();
            match state.store.claim_callbacks(now, now + HOLD_MS, 8).await {
                Ok(due) => {
                    for job in due {
                        let state = state.clone();
                        let span = tracing::info_span!("callback", job_id = %job.id, delivery = job.callback_attempts);
                        crate::spawn_in_span(span, async move { deliver(&state, job).await });
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %falra_runtime::ErrorChain(&e), "could not claim callbacks")
                }
            }
        },
    );
}

/// What became of one delivery.
#[derive(Debug, PartialEq)]
enum Delivery {
    Delivered,
    /// Worth another try (a transport error, an answer other than 2xx).
    Retry(String),
    /// Never worth another (the egress rule refused the address, no key to sign with).
    Refused(String),
}

async fn deliver(state: &Core, job: JobRow) {
    let attempt = job.callback_attempts;
    let result = match (&job.callback_url, signing_key(state, &job).await) {
        (Some(url), Ok(key)) => {
            let body = crate::jobs::view(&job).to_string();
            let signature = hex::encode(falra_policies::webhook::hmac_sha256(
                key.as_bytes(),
                body.as_bytes(),
            ));
            let agent = agent(state.config.egress.clone());
            let (url, id) = (url.clone(), job.id.clone());
            tokio::task::spawn_blocking(move || post(&agent, &url, &id, attempt, &signature, &body))
                .await
                .unwrap_or_else(|e| Delivery::Retry(format!("the delivery's task failed: {e}")))
        }
        (None, _) => Delivery::Refused("the job has no callback_url".into()),
        (_, Err(reason)) => Delivery::Refused(reason),
    };
    let now = now_ms();
    let written = match &result {
        Delivery::Delivered => {
            state
                .store
                .callback_result(&job.id, attempt, "delivered", None, None)
                .await
        }
        Delivery::Retry(why) if attempt < MAX_DELIVERIES => {
            state
                .store
                .callback_result(
                    &job.id,
                    attempt,
                    "pending",
                    Some(now + backoff_ms(attempt)),
                    Some(why),
                )
                .await
        }
        Delivery::Retry(why) | Delivery::Refused(why) => {
            state
                .store
                .callback_result(&job.id, attempt, "failed", None, Some(why))
                .await
        }
    };
    match (written, result) {
        (Ok(_), Delivery::Delivered) => tracing::info!("callback delivered"),
        (Ok(_), Delivery::Retry(why) | Delivery::Refused(why)) => {
            tracing::info!(reason = %why, "callback not delivered")
        }
        (Err(e), _) => tracing::warn!(
            error = %falra_runtime::ErrorChain(&e),
            "could not record the callback's delivery: it is tried again"
        ),
    }
}

/// The key a tenant's callbacks are signed with: its webhook secret.
async fn signing_key(state: &Core, job: &JobRow) -> Result<String, String> {
    let tenant = state
        .store
        .tenant(&job.tenant)
        .await
        .map_err(|e| format!("could not read the tenant: {e}"))?
        .ok_or_else(|| "the tenant is gone".to_owned())?;
    let stored = tenant
        .webhook_secret
        .ok_or_else(|| "the tenant has no webhook secret to sign the callback with".to_owned())?;
    crate::secrets::open_webhook_secret(state, &job.tenant, &stored).map_err(|e| e.to_string())
}

/// An agent whose every connection passes the egress rule, following no redirect.
fn agent(egress: falra_builtins::etl::net::Egress) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .resolver(falra_builtins::etl::net::Resolver(egress))
        .timeout(TIMEOUT)
        .redirects(0)
        .user_agent(concat!("falra-callback/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    job_id: &str,
    attempt: i64,
    signature: &str,
    body: &str,
) -> Delivery {
    let sent = agent
        .post(url)
        .set("Content-Type", "application/json")
        .set("X-Falra-Job-Id", job_id)
        .set("X-Falra-Delivery", &attempt.to_string())
        .set("X-Falra-Signature-256", &format!("sha256={signature}"))
        .send_string(body);
    match sent {
        Ok(r) if (200..300).contains(&r.status()) => Delivery::Delivered,
        Ok(r) => Delivery::Retry(format!("answered HTTP {}", r.status())),
        Err(ureq::Error::Status(code, _)) => Delivery::Retry(format!("answered HTTP {code}")),
        Err(e) => match falra_builtins::etl::net::denied(&e) {
            Some(why) => Delivery::Refused(why),
            None => Delivery::Retry(format!("could not deliver: {e}")),
        },
    }
}

/// The `callback` fields of a job's view (none without a callback).
pub fn describe(job: &JobRow) -> Option<Value> {
    job.callback_url.as_ref().map(|url| {
        serde_json::json!({
            "url": url,
            "state": job.callback_state,
            "attempts": job.callback_attempts,
            "error": job.callback_error,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_are_checked() {
        assert_eq!(
            check_url("https://hooks.example.com/falra?x=1").unwrap(),
            "https://hooks.example.com/falra?x=1"
        );
        for bad in [
            "ftp://example.com/",
            "/relative",
            "https://user:pw@example.com/",
            "not a url",
            &format!("https://example.com/{}", "a".repeat(3000)),
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deliveries_back_off_up_to_five_minutes() {
        assert_eq!(
            [1, 2, 3, 20].map(backoff_ms),
            [2_000, 4_000, 8_000, 300_000]
        );
    }
}
