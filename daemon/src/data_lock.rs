//! One daemon per data directory: `serve` holds an exclusive lock on `<data dir>/falra.lock`
//! for as long as it runs.
//!
//! The embedded SQLite store, the version trees and the per-node limits (admission, quotas)
//! belong to one process. A second daemon started on the same directory would run beside the
//! first without complaint and enforce every tenant's limits a second time, so it is refused at
//! start-up, naming the process that holds the directory. The lock is an `flock(2)` on an open
//! file: the kernel releases it when the holder exits however it exits (`kill -9` included), so
//! a crashed daemon never leaves a stale lock behind. The file also records the holder's pid,
//! for the message only. Commands that only read or add rows (`falra admin …`) do not take it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock's file name inside the data directory.
pub const LOCK_FILE: &str = "falra.lock";

/// Held for the life of the daemon; the lock goes with it.
#[derive(Debug)]
pub struct DataDirLock {
    _held: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another falra daemon{} is serving the data directory {}: stop it first, or give each \
         daemon its own --data-dir (several nodes share one PostgreSQL store, not a data \
         directory)",
        .holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        .dir.display()
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("could not lock {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Takes the data directory's lock, or says who holds it. Never waits.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: data_dir.to_path_buf(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        held.set_len(0).map_err(io)?;
        held.rewind().map_err(io)?;
        writeln!(held, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _held: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_the_lock_goes_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // contends like another process would.
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("(pid {})", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(first);
        let again = DataDirLock::acquire(dir.path()).unwrap();
        drop(again);
    }
}
