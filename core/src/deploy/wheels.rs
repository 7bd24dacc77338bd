//! The node's wheel cache: every wheel a build fetched, kept by the SHA-256 of its bytes and
//! shared by all tenants' builds (a wheel is public data from the operator's index; the
//! virtualenvs made from wheels are not shared unless their whole input is the same).
//!
//! `wheels/<2 hex>/<sha256>/<file name>`, owned by root and read-only to everyone else. An
//! entry is hashed again each time a build uses it (a damaged one is removed and fetched
//! anew), and marked used by its modification time; past the node's bound, the least recently
//! used entries go, never one the build at hand is using. Each node keeps its own.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// A wheel's digest as the cache names it: 64 lower-case hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A wheel's file name as a build may use it: `name-version(-build)?-python-abi-platform.whl`
/// made of the characters such names hold (so it is one path component, never a path).
pub fn is_wheel_file_name(s: &str) -> bool {
    let Some(stem) = s.strip_suffix(".whl") else {
        return false;
    };
    let parts = stem.split('-').count();
    s.len() <= 255
        && (5..=6).contains(&parts)
        && stem.split('-').all(|p| !p.is_empty())
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'!'))
}

/// Why a file could not go into the cache.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the file's SHA-256 is {actual}, not {expected}")]
    Mismatch { expected: String, actual: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What an eviction removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub wheels: usize,
    pub bytes: u64,
}

#[derive(Debug)]
pub struct WheelCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Puts and evictions one at a time on this node (lookups need no lock: an entry is
    /// complete before it is renamed into place).
    write: Mutex<()>,
}

impl WheelCache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> WheelCache {
        WheelCache {
            dir,
            max_bytes,
            write: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, digest: &str) -> PathBuf {
        self.dir.join(&digest[..2]).join(digest)
    }

    /// The cached wheel with this digest and name, after checking its bytes still hash to
    /// it (a damaged entry is removed, and the answer is none); marks it used.
    pub fn get(&self, digest: &str, file_name: &str) -> std::io::Result<Option<PathBuf>> {
        if !is_digest(digest) || !is_wheel_file_name(file_name) {
            return Ok(None);
        }
        let path = self.entry(digest).join(file_name);
        match path.symlink_metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        if sha256_file(&path)? != digest {
            tracing::warn!(
                wheel = file_name,
                digest,
                "a cached wheel was damaged; removed"
            );
            let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
            let _ = std::fs::remove_dir_all(self.entry(digest));
            return Ok(None);
        }
        // Used now: the eviction order. A failure to mark it only makes it older.
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some(path))
    }

    /// Takes `file` (a fetched wheel) into the cache if its bytes hash to `digest`; returns
    /// where it is now. The file is moved (or copied, from another file system).
    pub fn put(&self, file: &Path, digest: &str, file_name: &str) -> Result<PathBuf, PutError> {
        let invalid = |what: &str| {
            PutError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not a wheel's {what}"),
            ))
        };
        if !is_digest(digest) {
            return Err(invalid("digest"));
        }
        if !is_wheel_file_name(file_name) {
            return Err(invalid("file name"));
        }
        let actual = sha256_file(file)?;
        if actual != digest {
            return Err(PutError::Mismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        use std::os::unix::fs::PermissionsExt;
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.entry(digest);
        let path = entry.join(file_name);
        if path.is_file() {
            return Ok(path);
        }
        let shard = entry.parent().expect("wheels/<2 hex>");
        std::fs::create_dir_all(shard)?;
        let staging = shard.join(format!(".tmp-{digest}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)?;
        let staged = staging.join(file_name);
        if std::fs::rename(file, &staged).is_err() {
            std::fs::copy(file, &staged)?;
        }
        std::os::unix::fs::lchown(&staged, Some(0), Some(0))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
        let _ = std::fs::remove_dir_all(&entry);
        std::fs::rename(&staging, &entry)?;
        Ok(path)
    }

    /// Removes the least recently used wheels until the cache holds at most its bound,
    /// sparing those in `keep` (the digests of the build at hand).
    pub fn evict(&self, keep: &HashSet<String>) -> std::io::Result<Evicted> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries: Vec<(SystemTime, u64, String)> = Vec::new();
        let mut total = 0u64;
        let shards = match std::fs::read_dir(&self.dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Evicted::default()),
            Err(e) => return Err(e),
        };
        for shard in shards {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_digest(&name) {
                    continue;
                }
                let (mut size, mut used) = (0u64, SystemTime::UNIX_EPOCH);
                for file in std::fs::read_dir(entry.path())? {
                    let meta = file?.metadata()?;
                    size += meta.len();
                    used = used.max(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                }
                total += size;
                entries.push((used, size, name));
            }
        }
        entries.sort();
        let mut evicted = Evicted::default();
        for (_, size, digest) in entries {
            if total <= self.max_bytes {
                break;
            }
            if keep.contains(&digest) {
                continue;
            }
            std::fs::remove_dir_all(self.entry(&digest))?;
            total -= size;
            evicted.wheels += 1;
            evicted.bytes += size;
        }
        if evicted.wheels > 0 {
            tracing::info!(
                wheels = evicted.wheels,
                bytes = evicted.bytes,
                "least recently used wheels removed from the cache"
            );
        }
        Ok(evicted)
    }
}

/// The SHA-256 of a file's bytes, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn fetched(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, String) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        (path, digest_of(bytes))
    }

    #[test]
    fn wheels_are_kept_by_digest_and_checked_on_use() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = WheelCache::new(tmp.path().join("wheels"), 1 << 20);
        let name = "six-1.17.0-py2.py3-none-any.whl";
        let (file, digest) = fetched(tmp.path(), name, b"six's bytes");
        assert_eq!(cache.get(&digest, name).unwrap(), None);

        // A file whose bytes are not the digest's is refused, and stays where it was.
        let wrong = digest_of(b"other bytes");
        assert!(matches!(
            cache.put(&file, &wrong, name),
            Err(PutError::Mismatch { .. })
        ));
        assert!(file.is_file());

        let kept = cache.put(&file, &digest, name).unwrap();
        assert!(!file.exists(), "moved in");
        assert_eq!(cache.get(&digest, name).unwrap(), Some(kept.clone()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(kept.metadata().unwrap().permissions().mode() & 0o777, 0o644);

        // Damaged in place: not served, and gone.
        std::fs::write(&kept, b"tampered").unwrap();
        assert_eq!(cache.get(&digest, name).unwrap(), None);
        assert!(!kept.exists());

        // Names and digests that are not a wheel's are never paths into the cache.
        assert_eq!(cache.get("../../etc", name).unwrap(), None);
        assert_eq!(cache.get(&digest, "../x.whl").unwrap(), None);
        assert!(!is_wheel_file_name("six-1.0.tar.gz"));
        assert!(!is_wheel_file_name("a/b-1-py3-none-any.whl"));
        assert!(is_wheel_file_name(
            "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
        ));
    }

    #[test]
    fn past_its_bound_the_least_recently_used_wheels_go_but_not_those_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = WheelCache::new(tmp.path().join("wheels"), 250);
        let mut digests = Vec::new();
        for (i, age) in [(0u8, 300u64), (1, 200), (2, 100)] {
            let name = format!("p{i}-1.0-py3-none-any.whl");
            let (file, digest) = fetched(tmp.path(), &name, &[i; 100]);
            let path = cache.put(&file, &digest, &name).unwrap();
            let when = SystemTime::now() - std::time::Duration::from_secs(age);
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
            digests.push((digest, name));
        }
        // p0 is the oldest, but the build at hand uses it: p1 goes instead.
        let keep: HashSet<String> = [digests[0].0.clone()].into();
        let evicted = cache.evict(&keep).unwrap();
        assert_eq!(
            evicted,
            Evicted {
                wheels: 1,
                bytes: 100
            }
        );
        let present = |i: usize| cache.entry(&digests[i].0).join(&digests[i].1).is_file();
        assert!(present(0) && !present(1) && present(2));

        // Using p0 makes it the newest; with nothing kept, p2 is now the oldest.
        assert!(cache.get(&digests[0].0, &digests[0].1).unwrap().is_some());
        let small = WheelCache::new(tmp.path().join("wheels"), 100);
        assert_eq!(small.evict(&HashSet::new()).unwrap().wheels, 1);
        assert!(present(0) && !present(2));
    }
}
