//! Syncing a tenant's git branch, and writing immutable version trees.
//!
//! A sync fetches the branch into a bare mirror ([`fetch`]); a version is then the commit's
//! tree (or a `subdir` of it) with the tenant's uploads laid over it ([`build_version`]),
//! written into `versions/<tenant>/<id>/` through a temporary directory and one rename, so a
//! version directory is either complete or absent. Only regular files and directories are written:
//! symlinks and submodules in the repository are skipped, so nothing in a checkout can point
//! outside it. A failed sync leaves the active version untouched.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use git2::{Cred, FetchOptions, ObjectType, RemoteCallbacks, Repository, Tree};
use sha2::{Digest, Sha256};

use crate::layout::{random_suffix, Layout};
use crate::names::{TenantName, VersionId};
use crate::upload::Upload;

/// How many hex digits of the commit id name a version.
const VERSION_ID_LEN: usize = 12;

/// The most files and directories one version may hold.
pub const MAX_ENTRIES: u64 = 20_000;

/// What a directory costs of the version's byte budget: its inode and block on disk, whether
/// or not anything is in it.
const DIRECTORY_COST: u64 = 4096;

/// Where a tenant's code comes from.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub url: String,
    pub branch: String,
    /// User name and password (or access token) for an https remote, from a tenant secret.
    pub credentials: Option<Credentials>,
    /// The most bytes a fetch may receive; past it the fetch is stopped.
    pub max_fetch_bytes: u64,
}

/// Credentials for an https remote. Their `Debug` form hides the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What one version is made of: a commit's tree (or a `subdir` of it), the tenant's uploads
/// laid over it.
#[derive(Debug, Clone, Copy)]
pub struct VersionPlan<'a> {
    /// The full id of the commit, if the tenant has a repository.
    pub commit: Option<&'a str>,
    pub subdir: Option<&'a str>,
    pub uploads: &'a [Upload],
    /// The most bytes a version's files may add up to.
    pub max_bytes: u64,
}

impl VersionPlan<'_> {
    /// The version's id: the commit's first digits when the version is the commit's tree as
    /// it is, otherwise a digest of everything that went into it.
    pub fn id(&self) -> VersionId {
        let plain = self.subdir.is_none() && self.uploads.is_empty();
        let hex = match self.commit {
            Some(commit) if plain => commit.to_owned(),
            _ => {
                let mut h = Sha256::new();
                h.update(format!("commit {}\n", self.commit.unwrap_or("-")));
                h.update(format!("subdir {}\n", self.subdir.unwrap_or("-")));
                let mut uploads: Vec<&Upload> = self.uploads.iter().collect();
                uploads.sort_by(|a, b| a.module.cmp(&b.module));
                for u in uploads {
                    h.update(format!("upload {} {}\n", u.module, u.sha256()));
                }
                hex::encode(h.finalize())
            }
        };
        VersionId::parse(&hex[..VERSION_ID_LEN]).expect("lowercase hex digits")
    }
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
    #[error("commit {0} is no longer in the tenant's mirror: sync the repository again")]
    NoCommit(String),
    #[error("subdir {0:?} is not a directory in the repository")]
    NoSubdir(String),
    #[error("the code is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the code holds more than {0} files and directories")]
    TooManyEntries(u64),
    #[error("upload {0} cannot be laid over the repository: a file is in the way of its path")]
    UploadConflict(String),
    #[error("could not read the repository")]
    Git(#[from] git2::Error),
    #[error("could not write the version tree")]
    Io(#[from] io::Error),
}

/// Fetches `source`'s branch into the tenant's bare mirror; returns the full id of its head.
pub fn fetch(
    layout: &Layout,
    tenant: &TenantName,
    source: &GitSource,
) -> Result<String, SyncError> {
    let mirror = layout.mirror(tenant);
    // Only the branch's head is ever needed: a mirror that grew past twice what one fetch may
    // bring (old packs of many syncs) is dropped and fetched afresh, so it stays bounded.
    if disk_usage(&mirror) > source.max_fetch_bytes.saturating_mul(2) {
        tracing::info!(tenant = %tenant, "mirror over its bound; fetching it afresh");
        std::fs::remove_dir_all(&mirror)?;
    }
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
    let options = |depth: Option<i32>| {
        let mut callbacks = RemoteCallbacks::new();
        if let Some(c) = source.credentials.clone() {
            let mut tries = 0;
            callbacks.credentials(move |_url, _user, _allowed| {
                // Offered once: a refused password must not loop.
                tries += 1;
                if tries > 1 {
                    return Err(git2::Error::from_str(
                        "the repository refused the credentials",
                    ));
                }
                Cred::userpass_plaintext(&c.username, &c.password)
            });
        }
        // Bounded as it arrives: a remote that sends more than a version may hold is cut off.
        let cap = source.max_fetch_bytes;
        callbacks.transfer_progress(move |progress| progress.received_bytes() as u64 <= cap);
        let mut opts = FetchOptions::new();
        opts.download_tags(git2::AutotagOption::None)
            .remote_callbacks(callbacks);
        if let Some(depth) = depth {
            opts.depth(depth);
        }
        opts
    };
    let mut remote = repo.remote_anonymous(&source.url).map_err(fetch_err)?;
    // Only the branch's head is needed: fetch shallow where the transport can, in full where
    // it cannot.
    if let Err(shallow_err) = remote.fetch(&[&refspec], Some(&mut options(Some(1))), None) {
        tracing::debug!(error = %shallow_err, "shallow fetch refused; fetching in full");
        remote
            .fetch(&[&refspec], Some(&mut options(None)), None)
            .map_err(fetch_err)?;
    }
    let commit = repo
        .find_reference(&tracking)
        .and_then(|r| r.peel_to_commit())
        .map_err(|_| SyncError::NoBranch(source.branch.clone()))?;
    Ok(commit.id().to_string())
}

/// Writes the version `plan` describes, unless it exists already; returns its id. The caller
/// decides when to activate it.
/// Whether the tenant's mirror on this node holds `commit` (a node of a cluster that never
/// fetched the repository, or fetched before the commit was pushed, does not).
pub fn has_commit(layout: &Layout, tenant: &TenantName, commit: &str) -> bool {
    let Ok(oid) = git2::Oid::from_str(commit) else {
        return false;
    };
    Repository::open_bare(layout.mirror(tenant)).is_ok_and(|repo| repo.find_commit(oid).is_ok())
}

/// The path in `commit` (under `subdir`) of a module of the repository that `module` would
/// replace or shadow — `pkg/mod.py` or the package `pkg/mod/` — if there is one.
pub fn repository_module(
    layout: &Layout,
    tenant: &TenantName,
    commit: &str,
    subdir: Option<&str>,
    module: &crate::ModuleName,
) -> Result<Option<String>, SyncError> {
    let repo = Repository::open_bare(layout.mirror(tenant))
        .map_err(|_| SyncError::NoCommit(commit.to_owned()))?;
    let oid = git2::Oid::from_str(commit)?;
    let tree = repo
        .find_commit(oid)
        .map_err(|_| SyncError::NoCommit(commit.to_owned()))?
        .tree()?;
    let file = module.relative_path();
    let package = file.with_extension("");
    for candidate in [file, package] {
        let path = match subdir {
            Some(s) => Path::new(s).join(&candidate),
            None => candidate.clone(),
        };
        if tree.get_path(&path).is_ok() {
            return Ok(Some(candidate.display().to_string()));
        }
    }
    Ok(None)
}

pub fn build_version(
    layout: &Layout,
    tenant: &TenantName,
    plan: &VersionPlan<'_>,
) -> Result<VersionId, SyncError> {
    let version = plan.id();
    let target = layout.version_dir(tenant, &version);
    if target.is_dir() {
        return Ok(version);
    }
    let parent = layout.tenant_versions(tenant);
    std::fs::create_dir_all(&parent)?;
    let staging = parent.join(format!(".tmp-{}-{}", version, random_suffix()));
    let mut budget = Budget {
        bytes: plan.max_bytes,
        entries: MAX_ENTRIES,
        limit: plan.max_bytes,
    };
    let written = write_plan(layout, tenant, plan, &staging, &mut budget)
        .and_then(|()| std::fs::rename(&staging, &target).map_err(SyncError::Io));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        // Another build of the same version may have won the rename: that is success.
        if target.is_dir() {
            return Ok(version);
        }
        return Err(e);
    }
    tracing::info!(tenant = %tenant, version = %version, "version written");
    Ok(version)
}

/// What a version may still take: bytes (files by size, directories at [`DIRECTORY_COST`])
/// and entries. Every charge is made before anything is read or written.
struct Budget {
    bytes: u64,
    entries: u64,
    limit: u64,
}

impl Budget {
    fn charge(&mut self, bytes: u64) -> Result<(), SyncError> {
        if self.entries == 0 {
            return Err(SyncError::TooManyEntries(MAX_ENTRIES));
        }
        if bytes > self.bytes {
            return Err(SyncError::TooLarge(self.limit));
        }
        self.entries -= 1;
        self.bytes -= bytes;
        Ok(())
    }
}

fn write_plan(
    layout: &Layout,
    tenant: &TenantName,
    plan: &VersionPlan<'_>,
    staging: &Path,
    budget: &mut Budget,
) -> Result<(), SyncError> {
    match plan.commit {
        Some(commit) => {
            let repo = Repository::open_bare(layout.mirror(tenant))
                .map_err(|_| SyncError::NoCommit(commit.to_owned()))?;
            let oid = git2::Oid::from_str(commit)?;
            let commit_obj = repo
                .find_commit(oid)
                .map_err(|_| SyncError::NoCommit(commit.to_owned()))?;
            let mut tree = commit_obj.tree()?;
            if let Some(subdir) = plan.subdir {
                let entry = tree
                    .get_path(Path::new(subdir))
                    .map_err(|_| SyncError::NoSubdir(subdir.to_owned()))?;
                tree = entry
                    .to_object(&repo)?
                    .into_tree()
                    .map_err(|_| SyncError::NoSubdir(subdir.to_owned()))?;
            }
            write_tree(&repo, &tree, staging, budget)?;
        }
        None => {
            budget.charge(DIRECTORY_COST)?;
            std::fs::create_dir(staging)?
        }
    }
    for upload in plan.uploads {
        budget.charge(upload.source.len() as u64)?;
        let path = staging.join(upload.module.relative_path());
        let conflict = || SyncError::UploadConflict(upload.module.to_string());
        let dir = path.parent().expect("a module path has a parent");
        // The staging tree holds only directories and regular files written above.
        std::fs::create_dir_all(dir).map_err(|_| conflict())?;
        if path.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            return Err(conflict());
        }
        std::fs::write(&path, upload.source.as_bytes())?;
    }
    Ok(())
}

/// Writes `tree` at `dir`. A blob's size is read from its object header and charged before the
/// blob is read, and its content is streamed to disk where the object database can stream it:
/// a small push of a huge, well-compressed blob is refused without ever being inflated.
fn write_tree(
    repo: &Repository,
    tree: &Tree<'_>,
    dir: &Path,
    budget: &mut Budget,
) -> Result<(), SyncError> {
    budget.charge(DIRECTORY_COST)?;
    std::fs::create_dir(dir)?;
    let odb = repo.odb()?;
    for entry in tree.iter() {
        let Some(name) = entry.name().filter(|n| is_safe_name(n)) else {
            continue;
        };
        let path: PathBuf = dir.join(name);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                write_tree(repo, &sub, &path, budget)?;
            }
            Some(ObjectType::Blob) => {
                let mode = entry.filemode();
                // 0o120000 is a symlink and 0o160000 a submodule: neither is written.
                if mode != 0o100644 && mode != 0o100755 && mode != 0o100664 {
                    continue;
                }
                let (size, kind) = odb.read_header(entry.id())?;
                if kind != ObjectType::Blob {
                    continue;
                }
                budget.charge(size as u64)?;
                let mut file = std::fs::File::create_new(&path)?;
                match odb.reader(entry.id()) {
                    Ok((mut reader, _, _)) => {
                        let copied = io::copy(&mut (&mut reader).take(size as u64 + 1), &mut file)?;
                        if copied != size as u64 {
                            return Err(SyncError::Io(io::Error::other(
                                "a blob's content does not match its header",
                            )));
                        }
                    }
                    // Packed objects cannot be streamed by libgit2: read whole, already
                    // charged and so within the version's limit.
                    Err(_) => file.write_all(repo.find_blob(entry.id())?.content())?,
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bytes of the regular files below `dir` (symlinks not followed; 0 if it is missing).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let Ok(meta) = p.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                pending.push(e.path());
            }
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    total
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
    fn disk_usage_counts_files_below_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/x"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), vec![0u8; 24]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("a/link")).unwrap();
        assert_eq!(disk_usage(dir.path()), 1024);
    }

    #[test]
    fn the_budget_charges_bytes_and_entries_before_anything_is_written() {
        let mut b = Budget {
            bytes: 10_000,
            entries: 3,
            limit: 10_000,
        };
        b.charge(DIRECTORY_COST).unwrap();
        b.charge(DIRECTORY_COST).unwrap();
        assert!(matches!(
            b.charge(DIRECTORY_COST),
            Err(SyncError::TooLarge(10_000))
        ));
        b.charge(1).unwrap();
        assert!(matches!(b.charge(0), Err(SyncError::TooManyEntries(_))));
    }

    fn upload(module: &str, source: &str) -> Upload {
        Upload {
            module: crate::upload::ModuleName::from_stored(module),
            source: source.to_owned(),
        }
    }

    #[test]
    fn version_ids_follow_everything_that_went_in() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let plan = |subdir, uploads: &[Upload]| {
            VersionPlan {
                commit: Some(commit),
                subdir,
                uploads,
                max_bytes: 1 << 20,
            }
            .id()
            .to_string()
        };
        assert_eq!(plan(None, &[]), "0123456789ab");
        let a = [upload("a", "x = 1\n"), upload("b", "y = 2\n")];
        let b = [upload("b", "y = 2\n"), upload("a", "x = 1\n")];
        assert_eq!(
            plan(None, &a),
            plan(None, &b),
            "upload order does not matter"
        );
        assert_ne!(plan(None, &a), plan(None, &a[..1]));
        assert_ne!(
            plan(None, &a),
            plan(None, &[upload("a", "x = 2\n"), a[1].clone()])
        );
        assert_ne!(plan(Some("src"), &[]), plan(None, &[]));
    }

    #[test]
    fn uploads_are_laid_over_an_empty_tree_as_package_paths() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let tenant = TenantName::parse("caro").unwrap();
        let uploads = [
            upload("pkg.sub.tool", "def f(): pass\n"),
            upload("top", "x = 1\n"),
        ];
        let plan = VersionPlan {
            commit: None,
            subdir: None,
            uploads: &uploads,
            max_bytes: 1 << 20,
        };
        let id = build_version(&layout, &tenant, &plan).unwrap();
        let root = layout.version_dir(&tenant, &id);
        assert_eq!(
            std::fs::read_to_string(root.join("pkg/sub/tool.py")).unwrap(),
            "def f(): pass\n"
        );
        assert!(root.join("top.py").is_file());
        // Over the size limit, nothing is written.
        let small = VersionPlan {
            max_bytes: 5,
            ..plan
        };
        std::fs::remove_dir_all(&root).unwrap();
        assert!(matches!(
            build_version(&layout, &tenant, &small),
            Err(SyncError::TooLarge(5))
        ));
        assert!(!root.exists());
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["", ".", "..", ".git", ".GIT", "a/b", "a\0b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name("utils.py"));
        assert!(is_safe_name(".hidden"));
    }
}
