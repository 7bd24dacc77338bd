//! Syncing a tenant's git branch into an immutable version tree.
//!
//! A sync fetches the branch into a bare mirror, then writes the commit's tree (or a `subdir` of
//! it) into `versions/<tenant>/<id>/` through a temporary directory and one rename, so a version
//! directory is either complete or absent. Only regular files and directories are written:
//! symlinks and submodules in the repository are skipped, so nothing in a checkout can point
//! outside it. A failed sync leaves the active version untouched.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use git2::{FetchOptions, ObjectType, Repository, Tree};

use crate::layout::{random_suffix, Layout};
use crate::names::{TenantName, VersionId};

/// How many hex digits of the commit id name a version.
const VERSION_ID_LEN: usize = 12;

/// Where a tenant's code comes from.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub url: String,
    pub branch: String,
    /// The code root inside the repository, if not its top.
    pub subdir: Option<String>,
    /// The most bytes a version's files may add up to.
    pub max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("could not fetch branch {branch:?} from {url}")]
    Fetch {
        url: String,
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error("branch {0:?} not found in the repository")]
    NoBranch(String),
    #[error("subdir {0:?} is not a directory in the repository")]
    NoSubdir(String),
    #[error("the code is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("could not read the repository")]
    Git(#[from] git2::Error),
    #[error("could not write the version tree")]
    Io(#[from] io::Error),
}

/// Fetches `source` and makes its head an immutable version. Returns the version id; the
/// caller decides when to activate it. Syncing an already-present commit is a no-op.
pub fn sync(
    layout: &Layout,
    tenant: &TenantName,
    source: &GitSource,
) -> Result<VersionId, SyncError> {
    let mirror = layout.mirror(tenant);
    let repo = match Repository::open_bare(&mirror) {
        Ok(repo) => repo,
        Err(_) => {
            std::fs::create_dir_all(&mirror)?;
            Repository::init_bare(&mirror)?
        }
    };
    let tracking = format!("refs/falra/{}", source.branch);
    let refspec = format!("+refs/heads/{}:{}", source.branch, tracking);
    let fetch_err = |source_err| SyncError::Fetch {
        url: source.url.clone(),
        branch: source.branch.clone(),
        source: source_err,
    };
    let mut remote = repo.remote_anonymous(&source.url).map_err(fetch_err)?;
    // Only the branch's head is needed: fetch shallow where the transport can, in full where
    // it cannot.
    let mut shallow = FetchOptions::new();
    shallow.download_tags(git2::AutotagOption::None).depth(1);
    if let Err(shallow_err) = remote.fetch(&[&refspec], Some(&mut shallow), None) {
        tracing::debug!(error = %shallow_err, "shallow fetch refused; fetching in full");
        let mut full = FetchOptions::new();
        full.download_tags(git2::AutotagOption::None);
        remote
            .fetch(&[&refspec], Some(&mut full), None)
            .map_err(fetch_err)?;
    }
    let commit = repo
        .find_reference(&tracking)
        .and_then(|r| r.peel_to_commit())
        .map_err(|_| SyncError::NoBranch(source.branch.clone()))?;

    let id_hex = commit.id().to_string();
    let version = VersionId::parse(&id_hex[..VERSION_ID_LEN]).expect("a git id is lowercase hex");
    let target = layout.version_dir(tenant, &version);
    if target.is_dir() {
        return Ok(version);
    }

    let mut tree = commit.tree()?;
    if let Some(subdir) = source.subdir.as_deref().filter(|s| !s.is_empty()) {
        let entry = tree
            .get_path(Path::new(subdir))
            .map_err(|_| SyncError::NoSubdir(subdir.to_owned()))?;
        tree = entry
            .to_object(&repo)?
            .into_tree()
            .map_err(|_| SyncError::NoSubdir(subdir.to_owned()))?;
    }

    let parent = layout.tenant_versions(tenant);
    std::fs::create_dir_all(&parent)?;
    let staging = parent.join(format!(".tmp-{}-{}", version, random_suffix()));
    let mut budget = source.max_bytes;
    let written = write_tree(&repo, &tree, &staging, &mut budget, source.max_bytes)
        .and_then(|()| std::fs::rename(&staging, &target).map_err(SyncError::Io));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        // Another sync of the same commit may have won the rename: that is success.
        if target.is_dir() {
            return Ok(version);
        }
        return Err(e);
    }
    tracing::info!(tenant = %tenant, version = %version, "version written");
    Ok(version)
}

fn write_tree(
    repo: &Repository,
    tree: &Tree<'_>,
    dir: &Path,
    budget: &mut u64,
    limit: u64,
) -> Result<(), SyncError> {
    std::fs::create_dir(dir)?;
    for entry in tree.iter() {
        let Some(name) = entry.name().filter(|n| is_safe_name(n)) else {
            continue;
        };
        let path: PathBuf = dir.join(name);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                write_tree(repo, &sub, &path, budget, limit)?;
            }
            Some(ObjectType::Blob) => {
                let mode = entry.filemode();
                // 0o120000 is a symlink and 0o160000 a submodule: neither is written.
                if mode != 0o100644 && mode != 0o100755 && mode != 0o100664 {
                    continue;
                }
                let blob = repo.find_blob(entry.id())?;
                let size = blob.content().len() as u64;
                if size > *budget {
                    return Err(SyncError::TooLarge(limit));
                }
                *budget -= size;
                let mut file = std::fs::File::create_new(&path)?;
                file.write_all(blob.content())?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A tree entry name that is a plain file name: no separators, no `.`/`..`, not `.git`.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.eq_ignore_ascii_case(".git")
        && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", ".", "..", ".git", ".GIT", "a/b", "a\0b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name("utils.py"));
        assert!(is_safe_name(".hidden"));
    }
}
