//! Helpers shared by the integration tests that run the `posed` binary.

use std::path::PathBuf;
use std::process::Command;

/// The `posed` binary as a command. For cross-target test runs (aarch64 under qemu on an
/// x86_64 host) `POSED_TEST_RUNNER` names the runner that executes it, as cargo's own
/// runner does for the test binary.
pub fn posed() -> Command {
    let binary = env!("CARGO_BIN_EXE_posed");
    match std::env::var_os("POSED_TEST_RUNNER") {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// A folder of the repository's bundled data (`data/<name>`).
#[allow(dead_code)] // not every test binary uses every helper
pub fn data_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name)
}
