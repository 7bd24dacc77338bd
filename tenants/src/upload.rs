//! Private module uploads: which names a tenant may upload under, and where they land.
//!
//! An upload is one `.py` source stored under a dotted module name. The name is checked here,
//! once: every part a Python identifier not beginning with `_`, and its first part not the name
//! of a standard-library module (an upload named `json` would shadow the real one for every
//! module of the tenant that imports it) nor of a built-in. `a.b.c` lands at `a/b/c.py` in the
//! version tree, laid over whatever the git commit has there.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::function::is_identifier;

/// The longest module name accepted, in bytes.
pub const MAX_MODULE_LEN: usize = 200;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleNameError {
    #[error("module name is empty or longer than {MAX_MODULE_LEN} bytes")]
    Length,
    #[error("{0:?} is not a Python identifier")]
    NotIdentifier(String),
    #[error("{0:?} begins with an underscore: private names cannot be uploaded")]
    Private(String),
    #[error("{0:?} is a standard-library module: an upload may not shadow it")]
    Stdlib(String),
    #[error("{0:?} is the name of a built-in")]
    Reserved(String),
}

/// The top-level module names of the interpreter's standard library (`sys.stdlib_module_names`).
#[derive(Debug, Clone, Default)]
pub struct StdlibNames(HashSet<String>);

impl StdlibNames {
    /// One name per line, as `print("\n".join(sys.stdlib_module_names))` writes them.
    pub fn from_lines(text: &str) -> StdlibNames {
        StdlibNames(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A validated name an upload may be stored under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    /// Checks `s` against the rules above; `reserved` says whether a top-level name belongs to
    /// a built-in.
    pub fn parse(
        s: &str,
        stdlib: &StdlibNames,
        reserved: impl Fn(&str) -> bool,
    ) -> Result<ModuleName, ModuleNameError> {
        if s.is_empty() || s.len() > MAX_MODULE_LEN {
            return Err(ModuleNameError::Length);
        }
        for part in s.split('.') {
            if !is_identifier(part) {
                return Err(ModuleNameError::NotIdentifier(part.to_owned()));
            }
            if part.starts_with('_') {
                return Err(ModuleNameError::Private(part.to_owned()));
            }
        }
        let top = s.split('.').next().expect("split yields at least one part");
        if stdlib.contains(top) {
            return Err(ModuleNameError::Stdlib(top.to_owned()));
        }
        if reserved(top) {
            return Err(ModuleNameError::Reserved(top.to_owned()));
        }
        Ok(ModuleName(s.to_owned()))
    }

    /// A name read back from the store, where only parsed names are written.
    pub fn from_stored(s: &str) -> ModuleName {
        ModuleName(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `a/b/c.py` for `a.b.c`.
    pub fn relative_path(&self) -> PathBuf {
        let mut path: PathBuf = self.0.split('.').collect();
        path.set_extension("py");
        path
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub module: ModuleName,
    pub source: String,
}

impl Upload {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.source.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdlib() -> StdlibNames {
        StdlibNames::from_lines("json\nos\nsys\n")
    }

    #[test]
    fn names_follow_the_rules() {
        let parse = |s: &str| ModuleName::parse(s, &stdlib(), |t| t == "read_zip_csv_chunk");
        assert_eq!(
            parse("helpers").unwrap().relative_path(),
            PathBuf::from("helpers.py")
        );
        assert_eq!(
            parse("pkg.sub.mod").unwrap().relative_path(),
            PathBuf::from("pkg/sub/mod.py")
        );
        assert_eq!(parse("json"), Err(ModuleNameError::Stdlib("json".into())));
        assert_eq!(parse("os.extra"), Err(ModuleNameError::Stdlib("os".into())));
        assert!(parse("jsonx").is_ok());
        assert_eq!(parse("a._b"), Err(ModuleNameError::Private("_b".into())));
        assert_eq!(
            parse("a..b"),
            Err(ModuleNameError::NotIdentifier("".into()))
        );
        assert_eq!(
            parse("../x"),
            Err(ModuleNameError::NotIdentifier("".into()))
        );
        assert_eq!(
            parse("a-b"),
            Err(ModuleNameError::NotIdentifier("a-b".into()))
        );
        assert_eq!(
            parse("read_zip_csv_chunk"),
            Err(ModuleNameError::Reserved("read_zip_csv_chunk".into()))
        );
        assert_eq!(parse(""), Err(ModuleNameError::Length));
        assert_eq!(parse(&"a".repeat(201)), Err(ModuleNameError::Length));
    }
}
