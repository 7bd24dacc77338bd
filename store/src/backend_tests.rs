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
        assert_eq!(v.git_commit.as_deref(), Some("abcdef1234567890"));
        assert_eq!(v.functions.as_deref(), Some("{}"));

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
