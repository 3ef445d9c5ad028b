//! Unix calls the standard library does not offer: a connect that waits a bounded time,
//! or not at all, for room in a listener's queue, and a group's id by name.
//!
//! `UnixStream::connect` blocks, with no limit, while the listener's queue of connections
//! not yet accepted is full (a listener that hangs, or has stopped): `posed watch` would
//! hang before its first byte and `posed run`'s check for a stale socket would hang at
//! start. A Unix socket's connect waits for room only as long as the socket's send timeout
//! allows, and not at all when the socket is non-blocking, which is what this uses.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Bytes a socket path may have: `sun_path` less the NUL that ends it.
pub const MAX_SOCKET_PATH_BYTES: usize =
    std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>() - 1;

/// Connects to the Unix stream socket at `path`. With `wait` `None` the connect does not
/// wait at all: a listener whose queue is full gives [`io::ErrorKind::WouldBlock`] at
/// once, and the stream comes back non-blocking. With `Some(limit)` it waits at most
/// `limit` for room in the queue (then `WouldBlock`), and the stream comes back blocking,
/// with no timeouts.
///
/// # Errors
/// The connect's error (`ConnectionRefused`: a socket file nobody listens on;
/// `NotFound`: no file), or `InvalidInput` for a path longer than
/// [`MAX_SOCKET_PATH_BYTES`] or with a NUL byte.
pub fn connect(path: &Path, wait: Option<Duration>) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_SOCKET_PATH_BYTES || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a Unix socket path has at most {MAX_SOCKET_PATH_BYTES} bytes and no NUL, \
                 this one has {}",
                bytes.len()
            ),
        ));
    }
    // SAFETY: sockaddr_un is plain data, for which all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let length = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;

    let mut kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if wait.is_none() {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: a plain system call without pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the socket just created, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(limit) = wait {
        // Zero would mean "no limit": the shortest wait is a microsecond.
        set_send_timeout(&fd, limit.max(Duration::from_micros(1)))?;
    }
    loop {
        // SAFETY: `address` is an initialised sockaddr_un that outlives the call, and
        // `length` (the path, its NUL and the family) is within its size.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_un).cast(),
                length as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        // A Unix socket's connect is interrupted only while waiting for room in the
        // queue, before anything is connected: trying again is safe.
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    if wait.is_some() {
        set_send_timeout(&fd, Duration::ZERO)?;
    }
    Ok(UnixStream::from(fd))
}

/// User + system CPU time of this process so far, s.
pub(crate) fn process_cpu_s() -> f64 {
    let usage = resource_usage();
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Peak resident memory of this process, MiB: what it took of the machine's RAM at most
/// (on a Jetson, memory the GPU driver maps for CUDA may not be counted in it).
pub(crate) fn peak_resident_mib() -> f64 {
    // Linux reports ru_maxrss in KiB.
    resource_usage().ru_maxrss as f64 / 1024.0
}

/// CPU time of the calling thread so far, s.
pub(crate) fn thread_cpu_s() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists
    // on Linux (on failure `now` stays zero).
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// getrusage(RUSAGE_SELF): a system call, no allocation (the daemon's status reads it).
fn resource_usage() -> libc::rusage {
    // SAFETY: rusage is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage
}

/// The id of the group named `name` (the group database: /etc/group, or what NSS reads).
///
/// # Errors
/// No such group, a name with a NUL byte, or a failed lookup, with the name.
pub fn group_id(name: &str) -> Result<u32, String> {
    let quoted = name.escape_debug();
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| format!("the group name \"{quoted}\" contains a NUL byte"))?;
    let mut entry = libc::group {
        gr_name: std::ptr::null_mut(),
        gr_passwd: std::ptr::null_mut(),
        gr_gid: 0,
        gr_mem: std::ptr::null_mut(),
    };
    // A group with many members needs more than the usual 16 KiB (ERANGE).
    let mut size = 16 * 1024;
    loop {
        let mut buffer = vec![0 as libc::c_char; size];
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `c_name` is NUL-terminated, `entry`
        // and `found` are writable, and `buffer` is writable for its stated length.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(format!("no group named \"{quoted}\"")),
            0 => return Ok(entry.gr_gid),
            libc::ERANGE if size < 16 * 1024 * 1024 => size *= 4,
            libc::EINTR => {}
            error => {
                return Err(format!(
                    "cannot look up the group \"{quoted}\": {}",
                    io::Error::from_raw_os_error(error)
                ))
            }
        }
    }
}

/// SO_SNDTIMEO; zero: none.
fn set_send_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: `fd` is an open socket; `value` is a timeval that lives across the call and
    // its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use super::*;

    /// A listener whose queue holds one connection (a second `listen` changes the
    /// backlog), already filled: the next connect finds it full, as it finds the queue of
    /// a server that has stopped accepting. Returns the listener and the queued client.
    pub(crate) fn full_listener(path: &Path) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(path).expect("bind");
        // SAFETY: listen on the listener's own open socket.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(rc, 0, "listen");
        let queued = UnixStream::connect(path).expect("the one queued connection");
        (listener, queued)
    }

    #[test]
    fn a_full_queue_is_reported_at_once_or_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("full.sock");
        let (_listener, _queued) = full_listener(&path);

        let started = Instant::now();
        let error = connect(&path, None).expect_err("full");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let started = Instant::now();
        let error = connect(&path, Some(Duration::from_millis(200))).expect_err("full");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[test]
    fn live_stale_missing_and_overlong_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let stream = connect(&path, Some(Duration::from_secs(5))).expect("live");
        let (_accepted, _) = listener.accept().expect("accept");
        assert_eq!(stream.write_timeout().expect("timeout"), None);
        connect(&path, None).expect("live, without waiting");

        drop(listener);
        let error = connect(&path, None).expect_err("stale");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
        let error = connect(&dir.path().join("none.sock"), None).expect_err("missing");
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");

        let long = dir.path().join("x".repeat(MAX_SOCKET_PATH_BYTES));
        assert!(long.as_os_str().len() > MAX_SOCKET_PATH_BYTES);
        let error = connect(&long, None).expect_err("too long");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        assert_eq!(MAX_SOCKET_PATH_BYTES, 107);
    }

    #[test]
    fn groups_are_found_by_name() {
        // Group 0 is "root" on every Linux posed runs on.
        assert_eq!(group_id("root"), Ok(0));
        let message = group_id("posed-no-such-group").expect_err("unknown");
        assert!(
            message.contains("no group named \"posed-no-such-group\""),
            "{message}"
        );
        let message = group_id("a\0b").expect_err("NUL");
        assert!(message.contains("NUL"), "{message}");
    }
}
