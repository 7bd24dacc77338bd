//! Where tenant code lives under the data directory.
//!
//! ```text
//! github/git_<tenant>  -> ../versions/<tenant>/<id>   the active version (symlink, swapped atomically)
//! versions/<tenant>/<id>/                             immutable code trees
//! repos/<tenant>.git/                                 bare mirror that syncs fetch into
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::names::{TenantName, VersionId};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: impl Into<PathBuf>) -> Layout {
        Layout {
            root: data_dir.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The immutable tree of one version.
    pub fn version_dir(&self, tenant: &TenantName, version: &VersionId) -> PathBuf {
        self.tenant_versions(tenant).join(version.as_str())
    }

    pub fn tenant_versions(&self, tenant: &TenantName) -> PathBuf {
        self.root.join("versions").join(tenant.as_str())
    }

    /// `github/git_<tenant>`: the seed's layout, pointing at the active version.
    pub fn active_link(&self, tenant: &TenantName) -> PathBuf {
        self.root
            .join("github")
            .join(format!("git_{}", tenant.as_str()))
    }

    pub fn mirror(&self, tenant: &TenantName) -> PathBuf {
        self.root
            .join("repos")
            .join(format!("{}.git", tenant.as_str()))
    }

    /// Points `github/git_<tenant>` at `version` in one atomic rename.
    pub fn activate(&self, tenant: &TenantName, version: &VersionId) -> io::Result<()> {
        let link = self.active_link(tenant);
        let parent = link.parent().expect("the link lives under github/");
        std::fs::create_dir_all(parent)?;
        let target = Path::new("..")
            .join("versions")
            .join(tenant.as_str())
            .join(version.as_str());
        let tmp = parent.join(format!(".git_{}.{}", tenant.as_str(), random_suffix()));
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &link).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Makes the tenant's versions readable by root and the tenant's `gid` only (mode 0750), so
    /// that another tenant's uid could not read them even if it could reach the path.
    pub fn restrict_versions(&self, tenant: &TenantName, gid: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.tenant_versions(tenant);
        std::os::unix::fs::chown(&dir, Some(0), Some(gid))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))
    }

    /// Removes one version's tree.
    pub fn remove_version(&self, tenant: &TenantName, version: &VersionId) -> io::Result<()> {
        match std::fs::remove_dir_all(self.version_dir(tenant, version)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes everything a tenant had on disk.
    pub fn remove_tenant(&self, tenant: &TenantName) -> io::Result<()> {
        match std::fs::remove_file(self.active_link(tenant)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for dir in [self.tenant_versions(tenant), self.mirror(tenant)] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn random_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_swaps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let t = TenantName::parse("caro").unwrap();
        for v in ["aaaaaaa1", "bbbbbbb2"] {
            let v = VersionId::parse(v).unwrap();
            std::fs::create_dir_all(layout.version_dir(&t, &v)).unwrap();
            layout.activate(&t, &v).unwrap();
            let resolved = std::fs::canonicalize(layout.active_link(&t)).unwrap();
            assert_eq!(
                resolved,
                std::fs::canonicalize(layout.version_dir(&t, &v)).unwrap()
            );
        }
        layout.remove_tenant(&t).unwrap();
        assert!(!layout.tenant_versions(&t).exists());
        assert!(layout.active_link(&t).symlink_metadata().is_err());
    }
}
