//! Versions named the way users know them: by version id, or by the git commit they were
//! built from — its full SHA or a unique prefix of at least [`MIN_PREFIX`] hex digits.
//!
//! A version id wins over a commit prefix that happens to spell it. Several versions can come
//! from one commit (uploads over it, a rebuild): the commit then names the newest of them made
//! without uploads, or else the newest. A prefix of two different commits is ambiguous and
//! names the candidates.

use falra_store::{Store, StoreError, VersionRow};
use falra_tenants::{TenantName, VersionId};

/// The shortest commit prefix taken.
pub const MIN_PREFIX: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum VersionRefError {
    #[error(
        "this tenant has no version {0:?} (a version id, or a commit: its SHA or at least {MIN_PREFIX} of its first hex digits)"
    )]
    NotFound(String),
    #[error(
        "{0:?} is not a version id or a commit (hex digits: a SHA or at least {MIN_PREFIX} of its first)"
    )]
    Malformed(String),
    #[error("{given:?} begins more than one commit: {}", candidates.join(", "))]
    Ambiguous {
        given: String,
        /// `commit (version id)`, newest first.
        candidates: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tenant's version that `given` names.
pub async fn resolve(
    store: &Store,
    tenant: &TenantName,
    given: &str,
) -> Result<VersionId, VersionRefError> {
    let given = given.trim();
    let parsed = VersionId::parse(given);
    if let Ok(id) = &parsed {
        if store.version(tenant, id).await?.is_some() {
            return Ok(id.clone());
        }
    }
    let prefix = given.to_ascii_lowercase();
    let hex =
        !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex && parsed.is_err() {
        return Err(VersionRefError::Malformed(given.chars().take(80).collect()));
    }
    if !hex || prefix.len() < MIN_PREFIX {
        return Err(VersionRefError::NotFound(given.chars().take(80).collect()));
    }
    let versions = store.versions_of(tenant).await?;
    pick(&versions, &prefix).map_err(|candidates| match candidates {
        None => VersionRefError::NotFound(given.to_owned()),
        Some(candidates) => VersionRefError::Ambiguous {
            given: given.to_owned(),
            candidates,
        },
    })
}

/// The version of `versions` (newest first) whose commit begins with `prefix`; `Err(None)`
/// when none, `Err(Some(candidates))` when several commits do.
fn pick(versions: &[VersionRow], prefix: &str) -> Result<VersionId, Option<Vec<String>>> {
    let matching: Vec<&VersionRow> = versions
        .iter()
        .filter(|v| {
            v.git_commit
                .as_deref()
                .is_some_and(|c| c.to_ascii_lowercase().starts_with(prefix))
        })
        .collect();
    let Some(first) = matching.first() else {
        return Err(None);
    };
    if matching.iter().any(|v| v.git_commit != first.git_commit) {
        let mut seen = Vec::new();
        let mut candidates = Vec::new();
        for v in &matching {
            if !seen.contains(&v.git_commit) {
                seen.push(v.git_commit.clone());
                let commit = v.git_commit.as_deref().unwrap_or_default();
                candidates.push(format!(
                    "{} (version {})",
                    &commit[..commit.len().min(12)],
                    v.id
                ));
            }
        }
        return Err(Some(candidates));
    }
    let chosen = matching
        .iter()
        .find(|v| v.uploads.is_empty())
        .unwrap_or(first);
    Ok(chosen.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, commit: &str, uploads: &[&str]) -> VersionRow {
        VersionRow {
            id: VersionId::parse(id).unwrap(),
            source: "git".into(),
            created_at: 0,
            git_commit: Some(commit.into()),
            functions: None,
            activated_at: None,
            uploads: uploads.iter().map(|u| u.to_string()).collect(),
            deploy_log: None,
            packages: None,
        }
    }

    #[test]
    fn a_commit_prefix_names_its_version_and_an_ambiguous_one_lists_candidates() {
        let versions = [
            v("aaaaaaaaaaaa", "abc1234999", &["helpers"]),
            v("bbbbbbbbbbbb", "abc1234999", &[]),
            v("cccccccccccc", "abc1235000", &[]),
        ];
        // Newest first: the one without uploads is the commit's own.
        assert_eq!(pick(&versions, "abc1234").unwrap().as_str(), "bbbbbbbbbbbb");
        assert_eq!(pick(&versions, "abc1235").unwrap().as_str(), "cccccccccccc");
        let err = pick(&versions, "abc123").unwrap_err().unwrap();
        assert_eq!(
            err,
            [
                "abc1234999 (version aaaaaaaaaaaa)",
                "abc1235000 (version cccccccccccc)"
            ]
        );
        assert_eq!(pick(&versions, "def1234"), Err(None));
        let only_uploads = [v("dddddddddddd", "fff0000111", &["x"])];
        assert_eq!(
            pick(&only_uploads, "fff0000").unwrap().as_str(),
            "dddddddddddd"
        );
    }
}
