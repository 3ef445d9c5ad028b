//! The `posed` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    posed::cli::main()
}
