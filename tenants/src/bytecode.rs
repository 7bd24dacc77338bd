//! Laying compiled bytecode into a version tree.
//!
//! A version tree is read-only to calls, so the interpreter can never cache what it compiles:
//! without help, every call would compile every module it imports, which costs more than the
//! rest of a small call's start. At deploy time a sandboxed child compiles the version's
//! modules into a scratch directory, laid out as the tree is
//! (`<dir>/__pycache__/<module>.<tag>.pyc`), and [`lay_in`] copies into the tree only what
//! belongs there: regular files, under a `__pycache__` directory, named for a `.py` file of
//! the tree and the interpreter's own cache tag, in a directory of the tree that is a real
//! directory, no larger than bytecode for that source can be. The scratch directory was
//! written by the tenant's uid, so nothing in it is trusted: symlinks, devices and other odd
//! entries are skipped, no path in the tree is followed through a symlink, and what is copied
//! is capped in total.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::function::is_real_dir;

/// The largest bytecode file copied into a tree, whatever its source.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Bytecode for a source of `n` bytes is taken to be at most `SLACK_BYTES + SIZE_FACTOR * n`
/// (compiled code is about the size of its source; constants folded at compile time are
/// bounded by the compiler).
const SIZE_FACTOR: u64 = 8;
const SLACK_BYTES: u64 = 64 << 10;
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
/// module's comment for which), `tag` being the interpreter's `sys.implementation.cache_tag`
/// and `max_total_bytes` the most copied in all; returns how many were laid in. Files land
/// root-owned (the caller's uid), mode 0644, in `__pycache__` directories of mode 0755, each
/// written under a temporary name and renamed into place, so a call importing meanwhile sees a
/// whole file or none.
pub fn lay_in(
    scratch: &Path,
    tree: &Path,
    tag: &str,
    max_total_bytes: u64,
) -> Result<usize, BytecodeError> {
    let mut laid = 0;
    let mut room = max_total_bytes;
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
            } else if kind.is_file() {
                let Some(source_len) = belongs(tree, &rel_entry, tag) else {
                    continue;
                };
                let cap = SLACK_BYTES
                    .saturating_add(source_len.saturating_mul(SIZE_FACTOR))
                    .min(MAX_FILE_BYTES)
                    .min(room);
                if let Some(copied) = copy_into(&scratch.join(&rel_entry), tree, &rel_entry, cap)? {
                    room -= copied;
                    laid += 1;
                }
            }
        }
    }
    Ok(laid)
}

/// The size of the source when `rel` (relative, from the scratch directory) names bytecode for
/// a module of the tree: `<dir>/__pycache__/<stem>.<tag>.pyc` where `<dir>` is a real
/// directory of the tree and `<dir>/<stem>.py` a regular file in it.
fn belongs(tree: &Path, rel: &Path, tag: &str) -> Option<u64> {
    let file = rel.file_name()?.to_str()?;
    let cache = rel.parent()?;
    if cache.file_name()?.to_str()? != "__pycache__" {
        return None;
    }
    let dir = cache.parent()?;
    let stem = file
        .strip_suffix(".pyc")?
        .strip_suffix(tag)?
        .strip_suffix('.')?;
    if stem.is_empty() || stem.contains('.') || !real_dir_chain(tree, dir) {
        return None;
    }
    let source = tree.join(dir).join(format!("{stem}.py"));
    source
        .symlink_metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
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
        if !is_real_dir(&at) {
            return false;
        }
    }
    true
}

/// Copies one file of at most `cap` bytes into the tree; the bytes copied, or `None` when it
/// was left out after all.
fn copy_into(from: &Path, tree: &Path, rel: &Path, cap: u64) -> Result<Option<u64>, BytecodeError> {
    let read_err = |source| BytecodeError::Read {
        path: from.to_path_buf(),
        source,
    };
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)
        .map_err(read_err)?;
    let meta = source.metadata().map_err(read_err)?;
    if !meta.is_file() || meta.len() > cap {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    (&mut source)
        .take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 > cap {
        return Ok(None);
    }
    let cache = tree.join(rel.parent().expect("checked by `belongs`"));
    match cache.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        // Something that is not a directory stands where the cache would go: leave it be.
        Ok(_) => return Ok(None),
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
    written.map(|()| Some(data.len() as u64)).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const TAG: &str = "cpython-311";

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
        assert_eq!(lay_in(&scratch, &tree, TAG, u64::MAX).unwrap(), 3);
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
        // Another interpreter's tag, no tag, or extra parts between module and tag.
        put(&scratch, "__pycache__/top.cpython-312.pyc", b"x");
        put(&scratch, "__pycache__/top.pyc", b"x");
        put(&scratch, "__pycache__/top.0.cpython-311.pyc", b"x");
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
        assert_eq!(lay_in(&scratch, &tree, TAG, u64::MAX).unwrap(), 0);
        assert_eq!(fs::read(tree.join("top.py")).unwrap(), b"x = 1\n");
        assert!(!tree.join("__pycache__").exists());
        assert!(!tree.join("pkg/__pycache__").exists());
        assert!(!tree.join("nodir").exists());
    }

    #[test]
    fn oversized_bytecode_and_bytecode_past_the_total_are_left_out() {
        let (_base, tree, scratch) = tree_and_scratch();
        // top.py has 6 bytes: its bytecode may not be larger than the slack plus 8 × 6.
        let big = vec![0u8; (SLACK_BYTES + 8 * 6 + 1) as usize];
        put(&scratch, "__pycache__/top.cpython-311.pyc", &big);
        put(
            &scratch,
            "pkg/sub/__pycache__/mod.cpython-311.pyc",
            b"0123456789",
        );
        put(
            &scratch,
            "pkg/__pycache__/__init__.cpython-311.pyc",
            b"0123456789",
        );
        assert_eq!(lay_in(&scratch, &tree, TAG, 15).unwrap(), 1);
        assert!(!tree.join("__pycache__").exists());
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
        assert_eq!(lay_in(&scratch, &tree, TAG, u64::MAX).unwrap(), 0);
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1);
    }
}
