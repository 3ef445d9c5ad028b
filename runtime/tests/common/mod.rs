//! Helpers shared by the integration tests that run the `posed` binary.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The `posed` binary as a command. For cross-target test runs (aarch64 under qemu on an
/// x86_64 host) `POSED_TEST_RUNNER` names the runner that executes it, as cargo's own
/// runner does for the test binary.
///
/// The stop signals are reset to their default for it: posed keeps a signal it was started
/// ignoring ignored, and the tests that send signals must not depend on how the test run
/// was started (`nohup`, or in the background of a script, ignore SIGHUP or SIGINT).
pub fn posed() -> Command {
    let binary = env!("CARGO_BIN_EXE_posed");
    let mut command = match std::env::var_os("POSED_TEST_RUNNER") {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(binary);
            command
        }
        None => Command::new(binary),
    };
    // SAFETY: between fork and exec, only signal(2), which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    command
}

/// A folder of the repository's bundled data (`data/<name>`).
#[allow(dead_code)] // not every test binary uses every helper
pub fn data_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name)
}

/// A running `posed` process, killed and reaped when dropped (a failed test leaves no
/// process behind).
#[allow(dead_code)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` to the process (under qemu, to qemu, which hands it to the program).
#[allow(dead_code)]
pub fn kill(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child process, whose pid we hold.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill");
}

/// Waits for `child` to exit, failing the test if it runs `limit` longer than `what`
/// (the signal sent, say); its status and what it wrote to a piped stderr.
#[allow(dead_code)]
pub fn wait_with_stderr(child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, String) {
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < limit,
            "still running {} s after {what}",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}
