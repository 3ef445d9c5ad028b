//! systemd's notification protocol (`sd_notify(3)`): READY=1, WATCHDOG=1, STATUS=,
//! STOPPING=1, sent as datagrams to `$NOTIFY_SOCKET`.
//!
//! Written here rather than taken from the `sd-notify` crate because that crate reads the
//! environment, builds a `String` and connects a new socket for every message, and the
//! watchdog and status messages are sent from the frame path, which must not allocate.
//! This one connects once, at start, and formats into a buffer it owns.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::{Error, Result};

/// A connection to the service manager, or nothing when not run by systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
    watchdog: Option<Duration>,
    buffer: Vec<u8>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and
    /// reads the watchdog period from `$WATCHDOG_USEC` (when `$WATCHDOG_PID`, if set, is
    /// this process). Without `$NOTIFY_SOCKET` every method does nothing.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `$NOTIFY_SOCKET` is set but cannot be reached.
    pub fn from_env() -> Result<Self> {
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .map(Duration::from_micros);
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Self::disabled());
        };
        let unreachable = |source: std::io::Error| Error::Invalid {
            what: format!("NOTIFY_SOCKET={}", path.to_string_lossy()),
            reason: format!("cannot reach the service manager: {source}"),
        };
        let socket = UnixDatagram::unbound().map_err(unreachable)?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let address =
                std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(unreachable)?;
            socket.connect_addr(&address).map_err(unreachable)?;
        } else {
            socket.connect(&path).map_err(unreachable)?;
        }
        // A full service-manager queue must never stall the publish thread.
        socket.set_nonblocking(true).map_err(unreachable)?;
        Ok(Self {
            socket: Some(socket),
            watchdog,
            buffer: Vec::with_capacity(512),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self {
            socket: None,
            watchdog: None,
            buffer: Vec::new(),
        }
    }

    /// True when connected to a service manager.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog period systemd expects pings within, if it asked for any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&mut self, write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) {
        let Some(socket) = &self.socket else {
            return;
        };
        self.buffer.clear();
        if write(&mut self.buffer).is_ok() {
            // A lost notification is not worth failing a frame over; systemd notices a
            // silent watchdog by itself.
            let _ = socket.send(&self.buffer);
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&mut self, status: std::fmt::Arguments<'_>) {
        self.send(|b| write!(b, "READY=1\nSTATUS={status}"));
    }

    /// WATCHDOG=1.
    pub fn watchdog_ping(&mut self) {
        self.send(|b| b.write_all(b"WATCHDOG=1"));
    }

    /// STATUS= (one line, shown by `systemctl status`).
    pub fn status(&mut self, status: std::fmt::Arguments<'_>) {
        self.send(|b| write!(b, "STATUS={status}"));
    }

    /// STOPPING=1.
    pub fn stopping(&mut self) {
        self.send(|b| b.write_all(b"STOPPING=1\nSTATUS=stopping"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).expect("bind");
        let socket = UnixDatagram::unbound().expect("unbound");
        socket.connect(&path).expect("connect");
        let mut notifier = Notifier {
            socket: Some(socket),
            watchdog: Some(Duration::from_secs(10)),
            buffer: Vec::with_capacity(512),
        };
        notifier.ready(format_args!("{} fps", 12.5));
        notifier.watchdog_ping();
        notifier.stopping();
        let mut buffer = [0u8; 512];
        let mut received = Vec::new();
        for _ in 0..3 {
            let n = manager.recv(&mut buffer).expect("recv");
            received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        assert_eq!(
            received,
            [
                "READY=1\nSTATUS=12.5 fps",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
    }

    #[test]
    fn a_disabled_notifier_sends_nothing() {
        let mut notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.watchdog_ping();
        notifier.status(format_args!("x"));
    }
}
