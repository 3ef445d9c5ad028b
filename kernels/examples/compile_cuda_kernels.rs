//! CI compile check of every CUDA kernel, through the same NVRTC code the device runs
//! (`posed_kernels::cuda::compile`). Needs only libnvrtc, no GPU and no driver:
//!
//! ```sh
//! cargo run -p posed-kernels --example compile_cuda_kernels -- \
//!     --arch sm_87 --arch sm_90 --dir kernels/cuda --out target/cuda-kernels --expect-ptx-isa 8.5
//! ```
//!
//! For every `*.cu` in `--dir` and every `--arch sm_XY`, it compiles a CUBIN (`sm_XY`) and
//! PTX (`compute_XY`) with posed's options, writes them to `--out/<arch>/`, and fails on
//! any compile error, any NVRTC warning (a non-empty log), a CUBIN that is not an ELF for
//! that architecture, or PTX whose `.version` (PTX ISA) or `.target` is not the expected
//! one. `scripts/check-cuda-kernels.sh` sets up NVRTC and runs this.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use posed_kernels::cuda::compile::{self, nvrtc_version, CompiledImage, ImageKind};
use posed_kernels::cuda::{KernelCache, KernelSource, Target, SOURCES};

struct Args {
    archs: Vec<Target>,
    dir: PathBuf,
    out: PathBuf,
    expect_ptx_isa: Option<String>,
}

const USAGE: &str = "usage: compile_cuda_kernels --arch sm_XY [--arch sm_XY ...] --dir DIR \
                     --out DIR [--expect-ptx-isa X.Y]";

fn parse_args() -> Result<Args, String> {
    let mut archs = Vec::new();
    let mut dir = None;
    let mut out = None;
    let mut expect_ptx_isa = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--arch" => {
                let arch = value()?;
                match Target::parse(&arch) {
                    Some(target) if target.kind == ImageKind::Cubin => archs.push(target),
                    _ => return Err(format!("--arch {arch}: expected sm_XY (e.g. sm_87)")),
                }
            }
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--expect-ptx-isa" => expect_ptx_isa = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if archs.is_empty() {
        return Err(format!("no --arch given\n{USAGE}"));
    }
    Ok(Args {
        archs,
        dir: dir.ok_or(format!("no --dir given\n{USAGE}"))?,
        out: out.ok_or(format!("no --out given\n{USAGE}"))?,
        expect_ptx_isa,
    })
}

/// The `*.cu` files of `dir`, sorted.
fn cuda_sources(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "cu") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .cu files", dir.display()));
    }
    Ok(files)
}

/// `e_flags` of a 64-bit little-endian ELF: for CUDA 12 cubins of sm_XY (XY < 100) the
/// low byte is XY.
fn cubin_sm(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let mut flags = [0u8; 4];
    flags.copy_from_slice(&bytes[48..52]);
    Some(u32::from_le_bytes(flags) & 0xff)
}

fn ptx_target(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(".target "))
        .map(|t| t.split(',').next().unwrap_or(t).trim().to_owned())
}

/// Checks one image; returns the problems found.
fn check(image: &CompiledImage, sm: &Target, expect_ptx_isa: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if !image.log.is_empty() {
        problems.push(format!("NVRTC warnings:\n{}", image.log));
    }
    let arch = sm.major * 10 + sm.minor;
    match image.target.kind {
        ImageKind::Cubin => match cubin_sm(&image.bytes) {
            Some(found) if found == arch => {}
            Some(found) => problems.push(format!("CUBIN is for sm_{found}, not sm_{arch}")),
            None => problems.push("CUBIN is not a 64-bit little-endian ELF".to_owned()),
        },
        ImageKind::Ptx => {
            match (image.ptx_isa_version(), expect_ptx_isa) {
                (None, _) => problems.push("PTX has no .version directive".to_owned()),
                (Some(found), Some(expected)) if found != expected => problems.push(format!(
                    "PTX ISA {found}, expected {expected} (a driver only JIT-compiles PTX up to \
                     the ISA of its own CUDA version)"
                )),
                _ => {}
            }
            let expected_target = format!("sm_{arch}");
            match ptx_target(&image.bytes) {
                Some(found) if found == expected_target => {}
                found => problems.push(format!(
                    "PTX .target is {found:?}, expected {expected_target}"
                )),
            }
        }
    }
    problems
}

fn run(args: &Args) -> Result<usize, String> {
    let (major, minor) = nvrtc_version().map_err(|e| e.to_string())?;
    println!("NVRTC {major}.{minor}");
    let files = cuda_sources(&args.dir)?;
    let mut failures = 0;
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let code = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !SOURCES.iter().any(|s| s.name == name && s.code == code) {
            println!("note: {name} is not (or not in this version) embedded in cuda::SOURCES");
        }
        // The compile API takes the embedded sources' &'static strs; this tool runs once.
        let source = KernelSource {
            name: Box::leak(name.clone().into_boxed_str()),
            code: Box::leak(code.into_boxed_str()),
        };
        let stem = name.strip_suffix(".cu").unwrap_or(&name).to_owned();
        for sm in &args.archs {
            for target in [*sm, Target::ptx(sm.major, sm.minor)] {
                let label = format!("{name} -> {target}");
                let image = match compile::compile(&source, target, &KernelCache::disabled()) {
                    Ok(image) => image,
                    Err(e) => {
                        println!("FAIL {label}: {e}");
                        failures += 1;
                        continue;
                    }
                };
                let dir = args.out.join(sm.arch());
                let file = dir.join(format!("{stem}.{}", target.kind.extension()));
                std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(&file, &image.bytes))
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let problems = check(&image, sm, args.expect_ptx_isa.as_deref());
                let isa = image
                    .ptx_isa_version()
                    .map(|v| format!(", PTX ISA {v}"))
                    .unwrap_or_default();
                if problems.is_empty() {
                    println!(
                        "ok   {label}: {} bytes{isa} -> {}",
                        image.bytes.len(),
                        file.display()
                    );
                } else {
                    failures += 1;
                    println!("FAIL {label}{isa}:");
                    for problem in problems {
                        println!("  {problem}");
                    }
                }
            }
        }
    }
    println!(
        "options: {}",
        compile::compile_options(&args.archs[0]).join(" ")
    );
    Ok(failures)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failures) => {
            eprintln!("{failures} kernel image(s) failed the check");
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
