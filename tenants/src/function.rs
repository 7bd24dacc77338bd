//! Function names (`dotted.module.function`) and which modules a tenant may call.
//!
//! The rules, enforced here and re-checked by the runner inside the child: every part of the
//! name is a Python identifier that does not begin with `_`; the module must be a `.py` file (or a
//! package's `__init__.py`) inside the tenant's version tree, reached without following any
//! symlink. Standard-library and third-party modules are never callable by name.

use std::fmt;
use std::path::{Path, PathBuf};

/// The longest `fn` accepted, in bytes.
pub const MAX_FN_LEN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FnNameError {
    #[error("fn must be \"module.function\" (at least one dot)")]
    NoModule,
    #[error("fn is longer than {MAX_FN_LEN} bytes")]
    TooLong,
    #[error("{0:?} is not a Python identifier")]
    NotIdentifier(String),
    #[error("{0:?} begins with an underscore: private names cannot be called")]
    Private(String),
}

/// A validated `dotted.module.function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnName {
    full: String,
    split: usize,
}

impl FnName {
    pub fn parse(s: &str) -> Result<FnName, FnNameError> {
        if s.len() > MAX_FN_LEN {
            return Err(FnNameError::TooLong);
        }
        let split = s.rfind('.').ok_or(FnNameError::NoModule)?;
        for part in s.split('.') {
            if !is_identifier(part) {
                return Err(FnNameError::NotIdentifier(part.to_owned()));
            }
            if part.starts_with('_') {
                return Err(FnNameError::Private(part.to_owned()));
            }
        }
        Ok(FnName {
            full: s.to_owned(),
            split,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `a.b` of `a.b.f`.
    pub fn module(&self) -> &str {
        &self.full[..self.split]
    }

    /// `f` of `a.b.f`.
    pub fn function(&self) -> &str {
        &self.full[self.split + 1..]
    }
}

impl fmt::Display for FnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Python's identifier rule, close enough for names of modules, functions and keywords:
/// a letter or `_`, then letters, digits or `_`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no module named {module:?} in this tenant's code")]
    ModuleNotFound { module: String },
}

/// Finds the source file of `name`'s module inside the version tree at `root`.
///
/// Every component is checked with `lstat`, so a symlink anywhere on the way (which could point
/// out of the tree) makes the module not found rather than followed.
pub fn resolve_module(root: &Path, name: &FnName) -> Result<PathBuf, ResolveError> {
    let not_found = || ResolveError::ModuleNotFound {
        module: name.module().to_owned(),
    };
    let parts: Vec<&str> = name.module().split('.').collect();
    let mut dir = root.to_path_buf();
    for package in &parts[..parts.len() - 1] {
        dir.push(package);
        if !is_real_dir(&dir) {
            return Err(not_found());
        }
    }
    let last = parts[parts.len() - 1];
    let file = dir.join(format!("{last}.py"));
    if is_real_file(&file) {
        return Ok(file);
    }
    let package_init = dir.join(last).join("__init__.py");
    if is_real_dir(&dir.join(last)) && is_real_file(&package_init) {
        return Ok(package_init);
    }
    Err(not_found())
}

/// A directory itself, not a symlink to one.
pub(crate) fn is_real_dir(p: &Path) -> bool {
    p.symlink_metadata().is_ok_and(|m| m.file_type().is_dir())
}

fn is_real_file(p: &Path) -> bool {
    p.symlink_metadata().is_ok_and(|m| m.file_type().is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dotted_names() {
        let f = FnName::parse("pkg.mod.run").unwrap();
        assert_eq!((f.module(), f.function()), ("pkg.mod", "run"));
        assert_eq!(FnName::parse("add"), Err(FnNameError::NoModule));
        assert_eq!(
            FnName::parse("m._secret"),
            Err(FnNameError::Private("_secret".into()))
        );
        assert_eq!(
            FnName::parse("m..f"),
            Err(FnNameError::NotIdentifier("".into()))
        );
        assert_eq!(
            FnName::parse("../etc.f"),
            Err(FnNameError::NotIdentifier("".into()))
        );
        assert_eq!(
            FnName::parse("m.f-1"),
            Err(FnNameError::NotIdentifier("f-1".into()))
        );
        assert!(FnName::parse(&format!("m.{}", "f".repeat(300))).is_err());
    }

    #[test]
    fn resolves_files_and_packages_but_not_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("utils.py"), "").unwrap();
        std::fs::create_dir_all(root.join("pkg/sub")).unwrap();
        std::fs::write(root.join("pkg/sub/__init__.py"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("evil.py")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/python3", root.join("lnk")).unwrap();

        let ok = |n: &str| resolve_module(root, &FnName::parse(n).unwrap());
        assert_eq!(ok("utils.f").unwrap(), root.join("utils.py"));
        assert_eq!(ok("pkg.sub.f").unwrap(), root.join("pkg/sub/__init__.py"));
        for missing in ["evil.f", "lnk.os.f", "os.system", "pkg.f", "nothere.f"] {
            assert!(ok(missing).is_err(), "{missing}");
        }
    }
}
