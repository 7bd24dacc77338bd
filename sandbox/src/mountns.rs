//! Mount templates: a call's root, built once and copied by every call that needs it.
//!
//! Building a root is most of a call's setup in the kernel: about twenty binds and remounts,
//! a copy of the host's mount table to start from, `pivot_root` and detaching the old root,
//! then tearing all of it down again when the call ends. Everything in that root but `/tmp`,
//! `/dev/shm` and `/proc` is the same for every call of one tenant's version, so the daemon
//! builds it once, in a mount namespace of its own that no process lives in
//! ([`setup::template_plan`]: the same steps, in the same order, as a call that builds its own
//! root), and keeps it open by a descriptor. A call enters it and unshares a private copy
//! ([`crate::setup::Step::CopyMountTemplate`]) before it mounts its own `/tmp`, `/dev/shm` and
//! `/proc`: what one call mounts never reaches the template or another call, and no call ever
//! runs in the template itself.

use std::io;
use std::os::fd::OwnedFd;

use crate::netns::open_namespace;
use crate::setup::{self, HostSys, Isolation};

#[derive(Debug, thiserror::Error)]
pub enum MountTemplateError {
    #[error("could not make a mount namespace for the template")]
    Unshare(#[source] io::Error),
    #[error("could not build the template's root at step {index} ({step})")]
    Step {
        index: usize,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the template's thread panicked")]
    Panicked,
}

/// Builds the mount template for `iso` (its binds, system entries and root mount point; the
/// per-call fields are not used) and returns the descriptor that keeps it alive.
pub fn new_template(iso: &Isolation) -> Result<OwnedFd, MountTemplateError> {
    let steps = setup::template_plan(iso);
    // unshare() moves only the calling thread (with its own root and working directory, by
    // CLONE_FS), so the build runs on a thread of its own that ends here; the pivot_root in it
    // changes nothing for the daemon's other threads.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare_mount_and_fs().map_err(MountTemplateError::Unshare)?;
                let fd = open_namespace(c"/proc/thread-self/ns/mnt")
                    .map_err(MountTemplateError::Unshare)?;
                setup::apply(&steps, &mut HostSys).map_err(|(index, source)| {
                    MountTemplateError::Step {
                        index,
                        step: steps[index].name(),
                        source,
                    }
                })?;
                Ok(fd)
            })
            .join()
            .map_err(|_| MountTemplateError::Panicked)?
    })
}

#[allow(unsafe_code)]
fn unshare_mount_and_fs() -> io::Result<()> {
    // SAFETY: flags by value; they change only this short-lived thread's mount namespace and
    // filesystem context.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
