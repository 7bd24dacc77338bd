//! Prepared network namespaces: only loopback, up, kept open by a descriptor.
//!
//! Creating a network namespace (and the kernel's asynchronous teardown of it) costs more CPU
//! than all the rest of a call's setup, so the daemon prepares one per tenant and every call of
//! that tenant enters it ([`crate::NetworkMode::Join`]). Calls of different tenants never share
//! one; concurrent calls of the same tenant share its loopback.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::setup::{ChildSys, HostSys};

/// A new network namespace with only loopback, brought up; the descriptor keeps it alive.
pub fn new_loopback_namespace() -> io::Result<OwnedFd> {
    new_loopback_namespace_listening(None).map(|(fd, _)| fd)
}

/// A new loopback-only network namespace and, if `listen` is given, a TCP listener bound to it
/// inside the namespace, before any process can live there (so nothing else can hold the
/// address first). The listener belongs to the namespace for as long as it is open, whatever
/// thread accepts on it: this is how the daemon serves the namespace's egress gateway.
pub fn new_loopback_namespace_listening(
    listen: Option<std::net::SocketAddr>,
) -> io::Result<(OwnedFd, Option<std::net::TcpListener>)> {
    // unshare() moves only the calling thread, so do it on a thread of its own that ends here.
    std::thread::spawn(move || {
        unshare_net()?;
        HostSys.loopback_up()?;
        let listener = listen.map(std::net::TcpListener::bind).transpose()?;
        Ok((open_namespace(c"/proc/thread-self/ns/net")?, listener))
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

#[allow(unsafe_code)]
fn unshare_net() -> io::Result<()> {
    // SAFETY: a flag by value; it changes only this short-lived thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a namespace file (`/proc/thread-self/ns/…`): the descriptor keeps the namespace alive.
#[allow(unsafe_code)]
pub(crate) fn open_namespace(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open succeeded; the descriptor is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
