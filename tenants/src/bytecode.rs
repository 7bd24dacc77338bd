//! Laying compiled bytecode into a version tree.
//!
//! A version tree is read-only to calls, so the interpreter can never cache what it compiles:
//! without help, every call would compile every module it imports, which costs more than the
//! rest of a small call's start. At deploy time a sandboxed child compiles the version's
//! modules into a scratch directory, laid out as the tree is
//! (`<dir>/__pycache__/<module>.<tag>.pyc`), and [`lay_in`] copies into the tree only what
//! belongs there: regular files, under a `__pycache__` directory, named for a `.py` file of
//! the tree, in a directory of the tree that is a real directory. The scratch directory was
//! written by the tenant's uid, so nothing in it is trusted: symlinks, devices and other odd
//! entries are skipped, and no path in the tree is followed through a symlink.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The largest bytecode file copied into a tree.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most entries looked at in a scratch directory.
const MAX_ENTRIES: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum BytecodeError {
    #[error("could not read the compiled bytecode at {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write the compiled bytecode to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies the bytecode files found under `scratch` into the version tree at `tree` (see the
/// module's comment for which); returns how many were laid in. Files land root-owned (the
/// caller's uid), mode 0644, in `__pycache__` directories of mode 0755, each written under a
/// temporary name and renamed into place, so a call importing meanwhile sees a whole file or
/// none.
pub fn lay_in(scratch: &Path, tree: &Path) -> Result<usize, BytecodeError> {
    let mut laid = 0;
    let mut seen = 0;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = scratch.join(&rel);
        let entries = fs::read_dir(&dir).map_err(|source| BytecodeError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Ok(laid);
            }
            let entry = entry.map_err(|source| BytecodeError::Read {
                path: dir.clone(),
                source,
            })?;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let rel_entry = rel.join(&name);
            if kind.is_dir() {
                pending.push(rel_entry);
            } else if kind.is_file()
                && belongs(tree, &rel_entry)
                && copy_into(&scratch.join(&rel_entry), tree, &rel_entry)?
            {
                laid += 1;
            }
        }
    }
    Ok(laid)
}

/// Whether `rel` (relative, from the scratch directory) names bytecode for a module of the
/// tree: `<dir>/__pycache__/<stem>.<tag>.pyc` where `<dir>` is a real directory of the tree
/// and `<dir>/<stem>.py` a regular file in it.
fn belongs(tree: &Path, rel: &Path) -> bool {
    let Some(file) = rel.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(cache) = rel.parent() else {
        return false;
    };
    if cache.file_name().and_then(|n| n.to_str()) != Some("__pycache__") {
        return false;
    }
    let Some(dir) = cache.parent() else {
        return false;
    };
    let Some(stem) = file.strip_suffix(".pyc").and_then(|f| f.split('.').next()) else {
        return false;
    };
    if stem.is_empty() || !real_dir_chain(tree, dir) {
        return false;
    }
    let source = tree.join(dir).join(format!("{stem}.py"));
    source.symlink_metadata().is_ok_and(|m| m.is_file())
}

/// Whether every component of `dir` under `tree` is a plain name and a real directory (no
/// symlink, no `..`).
fn real_dir_chain(tree: &Path, dir: &Path) -> bool {
    let mut at = tree.to_path_buf();
    for component in dir.components() {
        let Component::Normal(part) = component else {
            return false;
        };
        at.push(part);
        if !at.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return false;
        }
    }
    true
}

/// Copies one file into the tree; `false` when it was left out after all.
fn copy_into(from: &Path, tree: &Path, rel: &Path) -> Result<bool, BytecodeError> {
    let read_err = |source| BytecodeError::Read {
        path: from.to_path_buf(),
        source,
    };
    let cache = tree.join(rel.parent().expect("checked by `belongs`"));
    match cache.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        // Something that is not a directory stands where the cache would go: leave it be.
        Ok(_) => return Ok(false),
        Err(_) => {
            fs::create_dir(&cache).map_err(|source| BytecodeError::Write {
                path: cache.clone(),
                source,
            })?;
            fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).map_err(|source| {
                BytecodeError::Write {
                    path: cache.clone(),
                    source,
                }
            })?;
        }
    }
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .map_err(read_err)?;
    let meta = source.metadata().map_err(read_err)?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Ok(false);
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    (&mut source)
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    let target = tree.join(rel);
    let name = rel
        .file_name()
        .expect("checked by `belongs`")
        .to_string_lossy();
    let tmp = cache.join(format!(".{name}.{}", crate::layout::random_suffix()));
    let write_err = |source| BytecodeError::Write {
        path: target.clone(),
        source,
    };
    let written = (|| -> io::Result<()> {
        let mut out: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        out.write_all(&data)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| true).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree_and_scratch() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let base = tempfile::tempdir().unwrap();
        let tree = base.path().join("tree");
        let scratch = base.path().join("scratch");
        fs::create_dir_all(tree.join("pkg/sub")).unwrap();
        fs::write(tree.join("top.py"), "x = 1\n").unwrap();
        fs::write(tree.join("pkg/__init__.py"), "").unwrap();
        fs::write(tree.join("pkg/sub/mod.py"), "y = 2\n").unwrap();
        fs::create_dir_all(&scratch).unwrap();
        (base, tree, scratch)
    }

    fn put(scratch: &Path, rel: &str, data: &[u8]) {
        let path = scratch.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    #[test]
    fn bytecode_for_modules_of_the_tree_is_laid_in() {
        let (_base, tree, scratch) = tree_and_scratch();
        put(&scratch, "__pycache__/top.cpython-311.pyc", b"top");
        put(
            &scratch,
            "pkg/__pycache__/__init__.cpython-311.pyc",
            b"init",
        );
        put(&scratch, "pkg/sub/__pycache__/mod.cpython-311.pyc", b"mod");
        assert_eq!(lay_in(&scratch, &tree).unwrap(), 3);
        assert_eq!(
            fs::read(tree.join("pkg/sub/__pycache__/mod.cpython-311.pyc")).unwrap(),
            b"mod"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tree.join("pkg/sub/__pycache__")), 0o755);
        assert_eq!(
            mode(&tree.join("pkg/sub/__pycache__/mod.cpython-311.pyc")),
            0o644
        );
        // Nothing but the bytecode itself: no temporary files left beside it.
        let names: Vec<_> = fs::read_dir(tree.join("__pycache__"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("top.cpython-311.pyc")]);
    }

    #[test]
    fn anything_else_in_the_scratch_directory_is_left_out() {
        let (base, tree, scratch) = tree_and_scratch();
        // Not bytecode, not in a cache directory, no such module, no such directory.
        put(&scratch, "top.py", b"replaced?");
        put(&scratch, "__pycache__/notes.txt", b"x");
        put(&scratch, "top.cpython-311.pyc", b"x");
        put(&scratch, "__pycache__/other.cpython-311.pyc", b"x");
        put(&scratch, "nodir/__pycache__/m.cpython-311.pyc", b"x");
        // Symlinks in the scratch directory, at a file and at a directory.
        let outside = base.path().join("outside.pyc");
        fs::write(&outside, b"secret").unwrap();
        fs::create_dir_all(scratch.join("pkg/__pycache__")).unwrap();
        symlink(
            &outside,
            scratch.join("pkg/__pycache__/__init__.cpython-311.pyc"),
        )
        .unwrap();
        symlink(base.path(), scratch.join("loop")).unwrap();
        assert_eq!(lay_in(&scratch, &tree).unwrap(), 0);
        assert_eq!(fs::read(tree.join("top.py")).unwrap(), b"x = 1\n");
        assert!(!tree.join("__pycache__").exists());
        assert!(!tree.join("pkg/__pycache__").exists());
        assert!(!tree.join("nodir").exists());
    }

    #[test]
    fn symlinks_in_the_tree_are_never_followed() {
        let (base, tree, scratch) = tree_and_scratch();
        let elsewhere = base.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("m.py"), "").unwrap();
        symlink(&elsewhere, tree.join("linked")).unwrap();
        symlink(&elsewhere, tree.join("pkg/__pycache__")).unwrap();
        put(&scratch, "linked/__pycache__/m.cpython-311.pyc", b"x");
        put(&scratch, "pkg/__pycache__/__init__.cpython-311.pyc", b"x");
        assert_eq!(lay_in(&scratch, &tree).unwrap(), 0);
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1);
    }
}
