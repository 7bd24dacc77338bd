//! The store's behaviour, the same on every backend: each test runs on the embedded SQLite
//! store and on PostgreSQL (a database of its own in the cluster `FALRA_TEST_DATABASE_URL`
//! names; `scripts/with-postgres.sh` starts a throwaway one, and the test command does).

use std::time::Duration;

use falra_policies::PolicyPatch;
use falra_tenants::{TenantName, VersionId};

use crate::*;

/// Where a test's store lives, so it can be opened again (a restart, a second node).
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Place {
    async fn open(&self) -> Store {
        match self {
            Place::Sqlite(dir) => Store::open_sqlite(&dir.path().join("falra.db"))
                .await
                .unwrap(),
            Place::Postgres(url) => Store::open_postgres(url).await.unwrap(),
        }
    }
}

fn sqlite() -> Place {
    Place::Sqlite(tempfile::tempdir().unwrap())
}

/// A fresh database in the test cluster.
async fn postgres() -> Place {
    let base = std::env::var("FALRA_TEST_DATABASE_URL").expect(
        "FALRA_TEST_DATABASE_URL is not set: run the store's tests through \
         `bash scripts/with-postgres.sh cargo test -p falra-store` (scripts/test.sh does)",
    );
    let mut id = [0u8; 6];
    getrandom::getrandom(&mut id).unwrap();
    let db = format!("falra_test_{}", hex::encode(id));
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Place::Postgres(format!("{prefix}/{db}"))
}

async fn places() -> [(&'static str, Place); 2] {
    [("sqlite", sqlite()), ("postgres", postgres().await)]
}

fn name(s: &str) -> TenantName {
    TenantName::parse(s).unwrap()
}

fn tenant(n: &str) -> NewTenant {
    NewTenant {
        name: name(n),
        repo: Some("file:///r".into()),
        branch: "main".into(),
        subdir: None,
        plan: PlanName::parse("default").unwrap(),
        webhook_secret: None,
        created_at: 1,
    }
}

#[tokio::test]
async fn tenants_versions_uploads_tokens_and_usage_round_trip() {
    for (backend, place) in places().await {
        let store = place.open().await;
        assert_eq!(store.backend_name(), backend);
        let caro = store.insert_tenant(&tenant("caro")).await.unwrap();
        let jc = store.insert_tenant(&tenant("jc")).await.unwrap();
        assert_eq!(
            (caro.uid.get(), jc.uid.get()),
            (TenantUid::FIRST, TenantUid::FIRST + 1),
            "{backend}"
        );
        assert!(
            matches!(
                store.insert_tenant(&tenant("caro")).await,
                Err(StoreError::Conflict(_))
            ),
            "{backend}"
        );
        let v1 = VersionId::parse("abcdef123456").unwrap();
        let v2 = VersionId::parse("0123456789ab").unwrap();
        let version = |id, functions| NewVersion {
            id,
            source: "git",
            git_commit: Some("abcdef1234567890"),
            functions,
            uploads: None,
            deploy_log: Some(r#"[{"step":"fetch"}]"#),
            packages: Some(r#"[{"name":"six"}]"#),
            now: 2,
        };
        let c = name("caro");
        store
            .activate_version(&c, &version(&v1, Some("{}")), UploadChange::None)
            .await
            .unwrap();
        let t = store.tenant(&c).await.unwrap().unwrap();
        assert_eq!(t.active_version.as_ref(), Some(&v1), "{backend}");
        let v = store.version(&c, &v1).await.unwrap().unwrap();
        assert_eq!(
            v.deploy_log.as_deref(),
            Some(r#"[{"step":"fetch"}]"#),
            "{backend}"
        );
        assert_eq!(v.git_commit.as_deref(), Some("abcdef1234567890"));
        assert_eq!(v.functions.as_deref(), Some("{}"));
        assert_eq!(v.packages.as_deref(), Some(r#"[{"name":"six"}]"#));

        // An upload lands with the version made from it, and goes with the next change.
        let put = UploadChange::Put {
            module: "helpers",
            source: "def f(): pass\n",
            sha256: "00",
            now: 3,
        };
        store
            .activate_version(&c, &version(&v2, None), put)
            .await
            .unwrap();
        let uploads = store.uploads_of(&c).await.unwrap();
        assert_eq!(uploads.len(), 1, "{backend}");
        assert_eq!(uploads[0].module, "helpers");
        let delete = UploadChange::Delete { module: "helpers" };
        store
            .activate_version(&c, &version(&v1, None), delete)
            .await
            .unwrap();
        assert!(store.uploads_of(&c).await.unwrap().is_empty());
        assert_eq!(store.versions_of(&c).await.unwrap().len(), 2, "{backend}");

        // Overrides are a type: what is set is what is read.
        let patch = PolicyPatch {
            memory_mb: Some(64),
            ..PolicyPatch::default()
        };
        assert!(store.set_overrides(&c, &patch).await.unwrap());
        assert_eq!(store.tenant(&c).await.unwrap().unwrap().overrides, patch);

        let tok = TokenRow {
            id: "tok_1".into(),
            tenant: Some(c.clone()),
            kind: TokenKind::Tenant,
            hash: "h".into(),
            prefix: "flr_1234".into(),
            scopes: "call".into(),
            expires_at: None,
            revoked_at: None,
            created_at: 3,
            last_used_at: None,
        };
        store.insert_token(&tok).await.unwrap();
        assert_eq!(store.token_by_hash("h").await.unwrap().unwrap(), tok);
        assert!(store.revoke_token("tok_1", 9).await.unwrap());
        assert_eq!(
            store.token_by_hash("h").await.unwrap().unwrap().revoked_at,
            Some(9)
        );

        // Usage sums come back as integers on both (PostgreSQL sums BIGINTs as NUMERIC).
        let call = |id: &str, function: &str, outcome: &str, cpu_ms, at| CallRecord {
            call_id: id.into(),
            tenant: c.clone(),
            token_id: "tok_1".into(),
            function: function.into(),
            version: Some(v1.as_str().into()),
            outcome: outcome.into(),
            wall_ms: 10,
            cpu_ms,
            peak_memory_bytes: 1 << 20,
            bytes_in: 5,
            bytes_out: 7,
            at,
            log: None,
        };
        store
            .insert_calls(&[
                call("c_1", "m.f", "ok", 3, 100),
                call("c_2", "m.f", "timeout", 4, 200),
                call("c_3", "m.g", "ok", 5, 5_000),
            ])
            .await
            .unwrap();
        let usage = store.usage(Some(&c), 0, 1_000).await.unwrap();
        assert_eq!(usage.len(), 1, "{backend}: {usage:?}");
        let u = &usage[0];
        assert_eq!(
            (u.calls, u.ok, u.wall_ms, u.cpu_ms, u.bytes_in, u.bytes_out),
            (2, 1, 20, 7, 10, 14),
            "{backend}"
        );
        assert_eq!(store.usage(None, 0, 10_000).await.unwrap().len(), 2);
        assert_eq!(store.cpu_ms_since(&c, 150).await.unwrap(), 9, "{backend}");
        assert_eq!(store.cpu_ms_since(&name("jc"), 0).await.unwrap(), 0);

        // Logs and errors are kept beside the record, read by call id, listed after a point,
        // and pruned by age and then by size, oldest first.
        let logged = |id: &str, at, logs: &str, error: Option<&str>| CallRecord {
            log: Some(falra_store_log(logs, error)),
            ..call(
                id,
                "m.f",
                if error.is_some() { "timeout" } else { "ok" },
                1,
                at,
            )
        };
        store
            .insert_calls(&[
                logged("c_4", 6_000, "one\n", None),
                logged("c_5", 7_000, "two\n", Some("ran out of time")),
                logged("c_6", 8_000, "three\n", None),
            ])
            .await
            .unwrap();
        let v = store.call_view(Some(&c), "c_5").await.unwrap().unwrap();
        assert_eq!(
            (v.logs.as_deref(), v.error.as_deref(), v.outcome.as_str()),
            (Some("two\n"), Some("ran out of time"), "timeout"),
            "{backend}"
        );
        assert!(store
            .call_view(Some(&name("jc")), "c_5")
            .await
            .unwrap()
            .is_none());
        let bare = store.call_view(None, "c_1").await.unwrap().unwrap();
        assert_eq!((bare.logs, bare.error), (None, None), "{backend}");
        let after: Vec<_> = store
            .calls_after(&c, 6_000, "c_4", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.call_id)
            .collect();
        assert_eq!(after, ["c_5", "c_6"], "{backend}");
        assert_eq!(store.prune_call_logs(&c, 6_500, 1 << 20).await.unwrap(), 1);
        // "two\n" + the error is 19 bytes, "three\n" 6: a cap of 10 keeps only the newest.
        assert_eq!(
            store.prune_call_logs(&c, 0, 10).await.unwrap(),
            1,
            "{backend}"
        );
        let v = store.call_view(Some(&c), "c_6").await.unwrap().unwrap();
        assert_eq!(v.logs.as_deref(), Some("three\n"));
        let v = store.call_view(Some(&c), "c_5").await.unwrap().unwrap();
        assert_eq!(v.logs, None, "{backend}");

        // Reopening applies no migration twice and keeps the data.
        drop(store);
        let store = place.open().await;
        assert!(store.delete_tenant(&c).await.unwrap());
        assert!(store.token_by_hash("h").await.unwrap().is_none());
        let left = store.tenants().await.unwrap();
        assert_eq!(left.len(), 1, "{backend}");
        assert_eq!(left[0].uid, jc.uid);
    }
}

#[tokio::test]
async fn a_tenant_row_without_a_valid_uid_is_refused_by_name_never_read_as_root() {
    for (backend, place) in places().await {
        let store = place.open().await;
        store.insert_tenant(&tenant("caro")).await.unwrap();
        for (uid, reason) in [
            ("NULL", "it has no uid"),
            ("0", "uid 0 is outside"),
            ("4294967295", "uid 4294967295 is outside"),
            ("-1", "uid -1 is outside"),
            ("99999999999", "uid 99999999999 is outside"),
        ] {
            store
                .execute_raw(&format!(
                    "UPDATE tenants SET uid = {uid} WHERE name = 'caro'"
                ))
                .await;
            let err = store.tenant(&name("caro")).await.unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    StoreError::InvalidRow {
                        table: "tenant",
                        ..
                    }
                ),
                "{backend}: {text}"
            );
            assert!(
                text.contains("\"caro\"") && text.contains(reason),
                "{backend}: {text}"
            );
            // A listing refuses too rather than leave the row out or default it.
            assert!(store.tenants().await.is_err());
        }
    }
}

#[tokio::test]
async fn concurrent_creations_get_distinct_uids_even_from_two_nodes() {
    for (backend, place) in places().await {
        // Two handles: on PostgreSQL they are two nodes' pools, racing in the database.
        let (a, b) = (place.open().await, place.open().await);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..24 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move { store.insert_tenant(&tenant(&format!("t{i}"))).await });
        }
        let mut uids = Vec::new();
        while let Some(done) = tasks.join_next().await {
            uids.push(done.unwrap().unwrap().uid.get());
        }
        uids.sort_unstable();
        uids.dedup();
        assert_eq!(uids.len(), 24, "{backend}");
        assert_eq!(uids[0], TenantUid::FIRST, "{backend}");
    }
}

#[tokio::test]
async fn the_deploy_lock_holds_across_every_handle_on_postgres() {
    let place = postgres().await;
    let (a, b) = (place.open().await, place.open().await);
    let caro = name("caro");
    let held = a.deploy_lock(&caro).await.unwrap();
    // Another node waits for it...
    let waiting = tokio::spawn({
        let (b, caro) = (b.clone(), caro.clone());
        async move { b.deploy_lock(&caro).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "two nodes held one tenant's deploy lock"
    );
    // ...while another tenant's is free.
    let other = tokio::time::timeout(Duration::from_secs(5), b.deploy_lock(&name("jc")))
        .await
        .expect("another tenant's lock waited")
        .unwrap();
    drop(other);
    drop(held);
    let taken = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the lock was not handed over once released")
        .unwrap();
    drop(taken);
}

/// A store with the tenant `caro` and its token `tok_1`, which the test jobs are submitted by.
async fn job_store(place: &Place) -> Store {
    let s = place.open().await;
    s.insert_tenant(&tenant("caro")).await.unwrap();
    s.insert_token(&TokenRow {
        id: "tok_1".into(),
        tenant: Some(name("caro")),
        kind: TokenKind::Tenant,
        hash: "h1".into(),
        prefix: "flr_1".into(),
        scopes: "jobs".into(),
        expires_at: None,
        revoked_at: None,
        created_at: 0,
        last_used_at: None,
    })
    .await
    .unwrap();
    s
}

fn new_job(id: &str, tenant: &str, key: Option<&str>, at: i64) -> NewJob {
    NewJob {
        id: id.into(),
        tenant: name(tenant),
        token_id: "tok_1".into(),
        function: "m.f".into(),
        kwargs: "{}".into(),
        version: None,
        max_attempts: 2,
        idempotency_key: key.map(str::to_owned),
        callback_url: None,
        created_at: at,
    }
}

#[tokio::test]
async fn jobs_are_claimed_once_fenced_by_their_lease_rescued_and_forgotten() {
    for (backend, place) in places().await {
        let s = job_store(&place).await;
        let (first, created) = s
            .insert_job(&new_job("j_1", "caro", Some("k"), 10))
            .await
            .unwrap();
        assert!(created, "{backend}");
        assert_eq!(first.status, JobStatus::Queued, "{backend}");
        // The same idempotency key gives the first job back; another tenant's is its own.
        let (again, created) = s
            .insert_job(&new_job("j_2", "caro", Some("k"), 11))
            .await
            .unwrap();
        assert_eq!((again.id.as_str(), created), ("j_1", false), "{backend}");
        assert!(
            s.insert_job(&new_job("j_3", "jc", Some("k"), 12))
                .await
                .unwrap()
                .1
        );
        assert!(
            s.insert_job(&new_job("j_4", "caro", None, 13))
                .await
                .unwrap()
                .1
        );

        // Oldest first; a claimed job is not claimed again.
        let claimed = s.claim_jobs("node_a", 100, 1_000, 2).await.unwrap();
        let ids: Vec<_> = claimed.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["j_1", "j_3"], "{backend}");
        assert!(claimed
            .iter()
            .all(|j| j.attempts == 1 && j.status == JobStatus::Running));
        let rest = s.claim_jobs("node_b", 100, 1_000, 10).await.unwrap();
        assert_eq!(rest.len(), 1, "{backend}");
        assert_eq!(rest[0].id, "j_4");

        let lease = Lease {
            job: "j_1".into(),
            owner: "node_a".into(),
            attempt: 1,
        };
        assert!(s.job_progress(&lease, r#"{"fraction":0.5}"#).await.unwrap());
        // node_a's lease lapses; the job is rescued and claimed again by node_b.
        let (requeued, failed) = s.rescue_jobs(2_000, "{}").await.unwrap();
        assert_eq!((requeued, failed), (3, 0), "{backend}");
        let reclaimed = s.claim_jobs("node_b", 2_000, 3_000, 1).await.unwrap();
        assert_eq!(reclaimed[0].id, "j_1");
        assert_eq!(reclaimed[0].attempts, 2);
        // The presumed-dead node's completion is fenced off.
        assert!(!s
            .finish_job(&lease, JobStatus::Succeeded, "{\"stale\":1}", 2_100)
            .await
            .unwrap());
        let mine = Lease {
            owner: "node_b".into(),
            attempt: 2,
            ..lease.clone()
        };
        assert!(!s.job_progress(&lease, "{}").await.unwrap());
        let held = s.renew_leases("node_b", 4_000).await.unwrap();
        assert!(held.contains(&mine), "{backend}: {held:?}");
        assert!(s
            .finish_job(&mine, JobStatus::Succeeded, "{\"ok\":true}", 2_200)
            .await
            .unwrap());
        let done = s.job(&name("caro"), "j_1").await.unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(done.outcome.as_deref(), Some("{\"ok\":true}"));
        assert_eq!(done.lease_owner, None);
        // Another tenant cannot see it.
        assert!(s.job(&name("jc"), "j_1").await.unwrap().is_none());

        // Attempts spent: a lapsed lease fails the job.
        let (_, _) = s.rescue_jobs(2_500, "{}").await.unwrap();
        let j3 = s.claim_jobs("node_a", 2_500, 2_600, 10).await.unwrap();
        assert!(
            j3.iter().any(|j| j.id == "j_3" && j.attempts == 2),
            "{backend}: {j3:?}"
        );
        let (_, failed) = s.rescue_jobs(5_000, "{\"lost\":1}").await.unwrap();
        assert!(failed >= 1, "{backend}");
        let j3 = s.job(&name("jc"), "j_3").await.unwrap().unwrap();
        assert_eq!(j3.status, JobStatus::Failed);

        // A queued job whose token was revoked is never claimed, and fails.
        s.insert_job(&new_job("j_5", "caro", None, 14))
            .await
            .unwrap();
        s.revoke_token("tok_1", 5_100).await.unwrap();
        assert!(s
            .claim_jobs("node_a", 5_200, 6_000, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.fail_unauthorised_jobs(5_200, "{\"r\":1}", "{\"e\":1}")
                .await
                .unwrap(),
            1
        );
        let j5 = s.job(&name("caro"), "j_5").await.unwrap().unwrap();
        assert_eq!(
            (j5.status, j5.outcome.as_deref()),
            (JobStatus::Failed, Some("{\"r\":1}"))
        );
        s.execute_raw("DELETE FROM jobs WHERE id = 'j_5'").await;
        // Cancelling an ended job changes nothing; listing pages newest first.
        let c = s
            .cancel_job(&name("caro"), "j_1", "{}", 6_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.status, JobStatus::Succeeded);
        let page = s
            .jobs_of(
                &name("caro"),
                &JobFilter {
                    status: None,
                    limit: 1,
                    before: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(page[0].id, "j_4", "{backend}");
        let next = s
            .jobs_of(
                &name("caro"),
                &JobFilter {
                    status: None,
                    limit: 5,
                    before: Some((page[0].created_at, page[0].id.clone())),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            next.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["j_1"]
        );
        let ok = s
            .jobs_of(
                &name("caro"),
                &JobFilter {
                    status: Some(JobStatus::Succeeded),
                    limit: 5,
                    before: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(ok.len(), 1);
        // j_1 succeeded; j_3 and j_4 spent their attempts.
        assert_eq!(s.forget_jobs(5_500).await.unwrap(), 3, "{backend}");
        assert!(s.job(&name("caro"), "j_1").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn concurrent_claims_on_postgres_never_take_one_job_twice() {
    let place = postgres().await;
    let s = job_store(&place).await;
    for i in 0..60 {
        s.insert_job(&new_job(&format!("j_{i:03}"), "caro", None, i))
            .await
            .unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6 {
        let store = place.open().await;
        tasks.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..40 {
                let claimed = store
                    .claim_jobs(&format!("node_{n}"), 100, 10_000, 3)
                    .await
                    .unwrap();
                got.extend(claimed.into_iter().map(|j| j.id));
            }
            got
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!((n, all.len()), (60, 60));
}

#[tokio::test]
async fn a_schedule_fires_once_per_tick_from_any_number_of_handles() {
    for (backend, place) in places().await {
        let s = place.open().await;
        let sched = s
            .insert_schedule(&NewSchedule {
                id: "s_1".into(),
                tenant: name("caro"),
                token_id: "tok_1".into(),
                cron: "every 1000".into(),
                function: "m.f".into(),
                kwargs: "{}".into(),
                version: None,
                next_at: 1_000,
                created_at: 0,
            })
            .await
            .unwrap();
        assert!(!sched.paused);
        // Ticks every second, on the second.
        let next = |_: &str, after: i64| Some((after / 1_000 + 1) * 1_000);
        let ids = std::sync::atomic::AtomicU32::new(0);
        let make = |sc: &ScheduleRow| {
            let n = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            NewJob {
                id: format!("j_{n}"),
                ..new_job("x", sc.tenant.as_str(), None, 5)
            }
        };
        // Four handles fire the tick at 1 000 at once: one job.
        let (b, c, d) = (place.open().await, place.open().await, place.open().await);
        let fired = tokio::join!(
            s.fire_schedules(1_500, 10, &next, &make),
            b.fire_schedules(1_500, 10, &next, &make),
            c.fire_schedules(1_500, 10, &next, &make),
            d.fire_schedules(1_500, 10, &next, &make),
        );
        let total = [fired.0, fired.1, fired.2, fired.3]
            .iter()
            .map(|f| f.as_ref().unwrap().len())
            .sum::<usize>();
        assert_eq!(total, 1, "{backend}");
        // Not again for the same tick; the next one fires once too.
        assert!(s
            .fire_schedules(1_900, 10, &next, &make)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.fire_schedules(2_100, 10, &next, &make)
                .await
                .unwrap()
                .len(),
            1
        );
        // Missed ticks are not made up: one job, the next tick after now.
        assert_eq!(
            s.fire_schedules(9_500, 10, &next, &make)
                .await
                .unwrap()
                .len(),
            1
        );
        let after = s.schedule(&name("caro"), "s_1").await.unwrap().unwrap();
        assert_eq!(after.next_at, 10_000, "{backend}");
        assert_eq!(after.last_at, Some(3_000));
        let jobs = s
            .jobs_of(
                &name("caro"),
                &JobFilter {
                    status: None,
                    limit: 10,
                    before: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(jobs.len(), 3, "{backend}: {jobs:?}");
        // Paused, it does not fire; resumed, from the tick given.
        s.set_schedule_paused(&name("caro"), "s_1", true, 0)
            .await
            .unwrap();
        assert!(s
            .fire_schedules(20_000, 10, &next, &make)
            .await
            .unwrap()
            .is_empty());
        let resumed = s
            .set_schedule_paused(&name("caro"), "s_1", false, 21_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((resumed.paused, resumed.next_at), (false, 21_000));
        assert!(s.delete_schedule(&name("caro"), "s_1").await.unwrap());
        assert!(s.schedules_of(&name("caro")).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_callback_is_pending_once_its_job_ends_and_each_delivery_is_fenced() {
    for (backend, place) in places().await {
        let s = job_store(&place).await;
        let job = NewJob {
            callback_url: Some("https://example.test/hook".into()),
            ..new_job("j_cb", "caro", None, 1)
        };
        s.insert_job(&job).await.unwrap();
        s.insert_job(&new_job("j_plain", "caro", None, 2))
            .await
            .unwrap();
        for j in s.claim_jobs("n", 10, 1_000, 10).await.unwrap() {
            let lease = Lease {
                job: j.id.clone(),
                owner: "n".into(),
                attempt: 1,
            };
            assert!(s
                .finish_job(&lease, JobStatus::Succeeded, "{}", 20)
                .await
                .unwrap());
        }
        let due = s.claim_callbacks(30, 5_000, 10).await.unwrap();
        assert_eq!(due.len(), 1, "{backend}: only the job with a callback");
        assert_eq!((due[0].id.as_str(), due[0].callback_attempts), ("j_cb", 1));
        // Held while delivered: not claimed again.
        assert!(s.claim_callbacks(40, 5_000, 10).await.unwrap().is_empty());
        assert!(s
            .callback_result("j_cb", 1, "pending", Some(100), Some("HTTP 500"))
            .await
            .unwrap());
        let again = s.claim_callbacks(100, 5_000, 10).await.unwrap();
        assert_eq!(again[0].callback_attempts, 2);
        // The first delivery's late result is fenced off.
        assert!(!s
            .callback_result("j_cb", 1, "delivered", None, None)
            .await
            .unwrap());
        assert!(s
            .callback_result("j_cb", 2, "delivered", None, None)
            .await
            .unwrap());
        let j = s.job(&name("caro"), "j_cb").await.unwrap().unwrap();
        assert_eq!(j.callback_state.as_deref(), Some("delivered"), "{backend}");
        let plain = s.job(&name("caro"), "j_plain").await.unwrap().unwrap();
        assert_eq!(plain.callback_state, None);
    }
}

#[tokio::test]
async fn call_slots_hold_max_concurrency_across_handles_and_come_back_from_gone_nodes() {
    let place = postgres().await;
    let (a, b) = (place.open().await, place.open().await);
    let caro = name("caro");
    for (node, at) in [("node_a", 1_000), ("node_b", 1_000)] {
        a.register_node(&NodeRow {
            id: node.into(),
            address: "x".into(),
            version: "0".into(),
            started_at: at,
            heartbeat_at: at,
        })
        .await
        .unwrap();
    }
    // Eight admissions at once from two nodes, limit 3: three slots.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, caro) = (if i % 2 == 0 { a.clone() } else { b.clone() }, caro.clone());
        let node = if i % 2 == 0 { "node_a" } else { "node_b" };
        tasks.spawn(async move {
            (
                node,
                store.admit_call(&caro, 7, 100, 3, node).await.unwrap(),
            )
        });
    }
    let mut held = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (node, admitted) = done.unwrap();
        if admitted.slot {
            held.push(node);
        }
    }
    assert_eq!(held.len(), 3, "{held:?}");
    // Over the rate: counted, no slot.
    let over = a.admit_call(&caro, 7, 8, 10, "node_a").await.unwrap();
    assert_eq!((over.minute_calls, over.slot), (9, false));
    // One given back: one more fits.
    a.release_call(&caro, held[0]).await.unwrap();
    assert!(a.admit_call(&caro, 8, 100, 3, held[0]).await.unwrap().slot);
    assert!(!a.admit_call(&caro, 8, 100, 3, "node_a").await.unwrap().slot);
    // node_b stops beating: its slots come back; node_a keeps those of tenants it is busy with.
    a.beat("node_a", 50_000).await.unwrap();
    let b_held = held.iter().filter(|n| **n == "node_b").count();
    a.reclaim_slots(40_000, "node_a", &["caro".to_owned()])
        .await
        .unwrap();
    let mut more = 0;
    while a.admit_call(&caro, 9, 100, 3, "node_a").await.unwrap().slot {
        more += 1;
        assert!(more < 10);
    }
    assert_eq!(more, b_held);
    // Idle for caro on node_a: its slots go too.
    a.reclaim_slots(40_000, "node_a", &[]).await.unwrap();
    assert!(a.admit_call(&caro, 9, 100, 3, "node_a").await.unwrap().slot);
}

#[tokio::test]
async fn admissions_and_releases_at_once_never_deadlock_and_leave_nothing_held() {
    let place = postgres().await;
    let (a, b) = (place.open().await, place.open().await);
    let caro = name("caro");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (store, caro) = (if i % 2 == 0 { a.clone() } else { b.clone() }, caro.clone());
        let node = format!("node_{}", i % 2);
        tasks.spawn(async move {
            let mut took = 0;
            for _ in 0..25 {
                // (A deadlock would surface here as an error after deadlock_timeout.)
                if store
                    .admit_call(&caro, 1, 1_000_000, 4, &node)
                    .await
                    .unwrap()
                    .slot
                {
                    took += 1;
                    store.release_call(&caro, &node).await.unwrap();
                }
            }
            took
        });
    }
    let mut took = 0;
    while let Some(done) = tasks.join_next().await {
        took += done.unwrap();
    }
    assert!(took > 0);
    // Everything given back: the limit's worth of slots is free again.
    for n in 0..4 {
        assert!(
            a.admit_call(&caro, 2, 1_000_000, 4, "node_x")
                .await
                .unwrap()
                .slot,
            "slot {n}"
        );
    }
    assert!(
        !a.admit_call(&caro, 2, 1_000_000, 4, "node_x")
            .await
            .unwrap()
            .slot
    );
}

fn falra_store_log(logs: &str, error: Option<&str>) -> crate::CallLog {
    crate::CallLog {
        logs: logs.into(),
        error: error.map(Into::into),
        keep_ms: 0,
        keep_bytes: 0,
    }
}

#[tokio::test]
async fn calls_list_newest_first_by_outcome_and_stats_count_per_day_with_percentiles() {
    const DAY: i64 = 86_400_000;
    for (backend, place) in places().await {
        let store = place.open().await;
        let caro = store.insert_tenant(&tenant("caro")).await.unwrap().name;
        let jc = store.insert_tenant(&tenant("jc")).await.unwrap().name;
        let call =
            |id: &str, t: &TenantName, function: &str, outcome: &str, wall_ms, at| CallRecord {
                call_id: id.into(),
                tenant: t.clone(),
                token_id: "tok".into(),
                function: function.into(),
                version: None,
                outcome: outcome.into(),
                wall_ms,
                cpu_ms: 2,
                peak_memory_bytes: 1,
                bytes_in: 1,
                bytes_out: 1,
                at,
                log: (outcome != "ok").then(|| falra_store_log("printed", Some("boom"))),
            };
        let mut calls = Vec::new();
        // Day 1: caro's calls take 1..=100 ms, and every tenth one times out.
        for i in 1..=100i64 {
            let outcome = if i % 10 == 0 { "timeout" } else { "ok" };
            calls.push(call(
                &format!("c_{i:03}"),
                &caro,
                "m.f",
                outcome,
                i,
                DAY + i,
            ));
        }
        // Day 2: one user error of jc's and a deploy child of caro's.
        calls.push(call("j_1", &jc, "m.g", "user_error", 7, 2 * DAY + 5));
        calls.push(call("d_1", &caro, "<deploy:list>", "ok", 900, 2 * DAY + 6));
        store.insert_calls(&calls).await.unwrap();

        // Newest first, paged by cursor, filtered by tenant and outcome; no logs in a listing.
        let page = |tenant: Option<&TenantName>, outcome, before, limit| CallFilter {
            tenant: tenant.cloned(),
            outcome,
            before,
            limit,
        };
        let first = store
            .calls_page(&page(None, OutcomeFilter::Any, None, 3))
            .await
            .unwrap();
        let ids: Vec<_> = first.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["d_1", "j_1", "c_100"], "{backend}");
        assert!(first.iter().all(|c| c.logs.is_none()), "{backend}");
        assert_eq!(first[1].error.as_deref(), Some("boom"), "{backend}");
        let last = first.last().unwrap();
        let next = store
            .calls_page(&page(
                None,
                OutcomeFilter::Any,
                Some((last.at, last.call_id.clone())),
                2,
            ))
            .await
            .unwrap();
        let ids: Vec<_> = next.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["c_099", "c_098"], "{backend}");
        let failed = store
            .calls_page(&page(Some(&caro), OutcomeFilter::Failed, None, 100))
            .await
            .unwrap();
        assert_eq!(failed.len(), 10, "{backend}");
        assert!(failed.iter().all(|c| c.outcome == "timeout"), "{backend}");
        let coded = store
            .calls_page(&page(
                None,
                OutcomeFilter::Code("user_error".into()),
                None,
                100,
            ))
            .await
            .unwrap();
        assert_eq!(coded.len(), 1, "{backend}");
        assert_eq!(coded[0].call_id, "j_1");
        let ok = store
            .calls_page(&page(Some(&jc), OutcomeFilter::Ok, None, 100))
            .await
            .unwrap();
        assert!(ok.is_empty(), "{backend}");

        // Per day: calls without deploy children, errors, all CPU, nearest-rank percentiles.
        let days = store.day_stats(None, 0, 10 * DAY).await.unwrap();
        assert_eq!(
            days,
            [
                DayStats {
                    day: DAY,
                    calls: 100,
                    errors: 10,
                    cpu_ms: 200,
                    p50_ms: 50,
                    p99_ms: 99
                },
                DayStats {
                    day: 2 * DAY,
                    calls: 1,
                    errors: 1,
                    cpu_ms: 4,
                    p50_ms: 7,
                    p99_ms: 7
                },
            ],
            "{backend}"
        );
        let of_jc = store.day_stats(Some(&jc), 0, 10 * DAY).await.unwrap();
        assert_eq!(of_jc.len(), 1, "{backend}");
        assert_eq!(of_jc[0].calls, 1);
        assert_eq!(
            store.error_codes(None, 0, 10 * DAY).await.unwrap(),
            [("timeout".to_owned(), 10), ("user_error".to_owned(), 1)],
            "{backend}"
        );
        assert!(store
            .error_codes(Some(&jc), 0, DAY + DAY / 2)
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn console_sessions_are_found_by_hash_revoked_once_and_forgotten_when_expired() {
    for (backend, place) in places().await {
        let store = place.open().await;
        let session = SessionRow {
            id: "ses_1".into(),
            hash: "h1".into(),
            token_hash: "th".into(),
            token_id: "tok_op".into(),
            csrf: "c".into(),
            created_at: 10,
            expires_at: 100,
            revoked_at: None,
        };
        store.insert_session(&session).await.unwrap();
        assert!(matches!(
            store.insert_session(&session).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.session_by_hash("h1").await.unwrap().as_ref(),
            Some(&session),
            "{backend}"
        );
        assert!(store.session_by_hash("h2").await.unwrap().is_none());
        assert!(store.revoke_session("ses_1", 50).await.unwrap());
        assert!(store.revoke_session("ses_1", 60).await.unwrap());
        assert_eq!(
            store
                .session_by_hash("h1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(50),
            "{backend}: the first sign-out's time stays"
        );
        assert!(!store.revoke_session("ses_x", 60).await.unwrap());
        assert_eq!(store.forget_sessions(100).await.unwrap(), 0, "{backend}");
        assert_eq!(store.forget_sessions(101).await.unwrap(), 1, "{backend}");
        assert!(store.session_by_hash("h1").await.unwrap().is_none());
    }
}
