//! `falra serve --demo`: a `demo` tenant built from the bundled example code.
//!
//! The example files are compiled into the binary. They are committed to a small git repository
//! inside the data directory, and the tenant is synced from it like any other, so the demo takes
//! the same path as real tenants do.

use std::path::Path;

use anyhow::Context;
use falra_policies::Scopes;
use falra_tenants::TenantName;

use crate::server::AppState;
use crate::store::{NewTenant, PlanName, TokenKind};
use falra_core::clock::now_ms;
use falra_core::tenants::new_token;

const DEMO_TENANT: &str = "demo";

/// The bundled example code: `examples/demo/` of the source tree.
const DEMO_FILES: &[(&str, &str)] = &[
    (
        "falra_test_add.py",
        include_str!("../../examples/demo/falra_test_add.py"),
    ),
    (
        "text_tools.py",
        include_str!("../../examples/demo/text_tools.py"),
    ),
];

/// Makes sure the demo tenant exists with the bundled code active; returns its call token:
/// the one kept in `<data dir>/demo-token` (owner-only) while it is live, else a new one
/// written there, so serving the demo again mints no further token.
pub async fn prepare(state: &AppState) -> anyhow::Result<String> {
    let name = TenantName::parse(DEMO_TENANT).expect("a valid name");
    let source_dir = state.config.data_dir.join("demo-source");
    let dir = source_dir.clone();
    falra_runtime::task::spawn_blocking(move || commit_examples(&dir))
        .await?
        .context("could not prepare the demo repository")?;
    let url = format!("file://{}", std::fs::canonicalize(&source_dir)?.display());
    if state.store.tenant(&name).await?.is_none() {
        state
            .store
            .insert_tenant(&NewTenant {
                name: name.clone(),
                repo: Some(url.clone()),
                branch: "main".into(),
                subdir: None,
                plan: PlanName::parse(crate::plans::DEFAULT_PLAN).expect("a valid plan name"),
                webhook_secret: None,
                created_at: now_ms(),
            })
            .await?;
    }
    falra_core::deploy::deploy(state, &name, falra_core::deploy::Change::Sync)
        .await
        .context("could not deploy the demo tenant")?;
    let token_file = state.config.data_dir.join("demo-token");
    if let Ok(kept) = std::fs::read_to_string(&token_file) {
        let kept = kept.trim().to_owned();
        let hash = falra_policies::token::TokenHash::of(&kept);
        let live = state.store.token_by_hash(hash.as_str()).await?.filter(|t| {
            t.revoked_at.is_none() && t.tenant.as_ref() == Some(&name) && t.expires_at.is_none()
        });
        if live.is_some() {
            return Ok(kept);
        }
    }
    let scopes = Scopes::parse(["call", "deploy", "jobs"]).expect("valid scopes");
    let (row, secret) = new_token(Some(&name), TokenKind::Tenant, &scopes, None, now_ms());
    state.store.insert_token(&row).await?;
    write_private(&token_file, secret.expose())
        .with_context(|| format!("could not keep the demo token in {}", token_file.display()))?;
    Ok(secret.expose().to_owned())
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{text}")
}

/// Commits the bundled files to the repository at `dir` when they differ from its head.
fn commit_examples(dir: &Path) -> Result<(), git2::Error> {
    let repo = match git2::Repository::open(dir) {
        Ok(r) => r,
        Err(_) => {
            let mut opts = git2::RepositoryInitOptions::new();
            opts.initial_head("main");
            git2::Repository::init_opts(dir, &opts)?
        }
    };
    let mut index = repo.index()?;
    for (name, content) in DEMO_FILES {
        std::fs::write(dir.join(name), content)
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
        index.add_path(Path::new(name))?;
    }
    index.write()?;
    let tree_id = index.write_tree()?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    if parent.as_ref().is_some_and(|p| p.tree_id() == tree_id) {
        return Ok(());
    }
    let tree = repo.find_tree(tree_id)?;
    let sig = git2::Signature::now("falra", "falra@localhost")?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, "falra demo code", &tree, &parents)?;
    Ok(())
}
