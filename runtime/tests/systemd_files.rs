//! The files in systemd/ (unit, sysusers, tmpfiles, example config) and the Debian
//! package's layout (`[package.metadata.deb]` in runtime/Cargo.toml) describe one
//! installation; this test ties them together so that none can drift from the others:
//! the example config must pass the daemon's own validation, the unit must run the binary
//! where the package installs it with the config where the package installs it, and the
//! directories systemd creates must be the ones the config points into.
//!
//! `systemd-analyze verify` (systemd/verify.sh, run by CI) checks the unit's syntax; this
//! test checks what it means for posed.

use std::path::{Path, PathBuf};

use posed::config::{Config, ObjectsFrom, SourceKind};
use posed_engines::{BackendKind, Precision};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A unit file as (section, key, value) triples in file order, comments and blank lines
/// dropped (systemd.syntax(7); posed's unit has no continuation lines, checked here).
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "posed.service:{}: continuation lines are not expected: {line}",
            number + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("posed.service:{}: not KEY=VALUE: {line}", number + 1));
        entries.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    entries
}

struct Unit {
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load() -> Self {
        Self {
            entries: unit_entries(&read("systemd/posed.service")),
        }
    }

    /// Every value of `key` in `[section]`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value of a key that must be set exactly once.
    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [value] => value,
            values => panic!("posed.service: expected one [{section}] {key}=, found {values:?}"),
        }
    }

    /// `Environment=NAME=VALUE` lines, by name.
    fn environment(&self, name: &str) -> Option<&str> {
        self.all("Service", "Environment")
            .into_iter()
            .find_map(|assignment| assignment.strip_prefix(name)?.strip_prefix('='))
    }
}

/// Expands the specifiers posed's unit uses, as the system manager does
/// (systemd.unit(5): %C is the cache root, /var/cache for system units).
fn expand_specifiers(value: &str) -> String {
    assert!(
        value.matches('%').count() == value.matches("%C").count(),
        "unexpected specifier in {value}"
    );
    value.replace("%C", "/var/cache")
}

fn example_config() -> Config {
    let path = repo_root().join("systemd/posed.toml");
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The `[package.metadata.deb]` table of runtime/Cargo.toml.
fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = read("runtime/Cargo.toml")
        .parse()
        .expect("runtime/Cargo.toml parses");
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb] is a table")
        .clone()
}

/// The package's assets as (source, destination) pairs, destination made absolute
/// (a destination ending in `/` names a folder: the file keeps its name).
fn deb_assets() -> Vec<(String, PathBuf)> {
    let deb = deb_metadata();
    let assets = deb["assets"].as_array().expect("assets is an array");
    assets
        .iter()
        .map(|asset| {
            let (source, dest) = match asset {
                toml::Value::Array(fields) => (fields[0].as_str(), fields[1].as_str()),
                toml::Value::Table(fields) => (
                    fields.get("source").and_then(toml::Value::as_str),
                    fields.get("dest").and_then(toml::Value::as_str),
                ),
                other => panic!("unexpected asset {other}"),
            };
            let source = source.expect("asset source").to_owned();
            let dest = dest.expect("asset dest");
            let mut dest = Path::new("/").join(dest);
            if asset_dest_is_folder(asset) {
                let name = Path::new(&source).file_name().expect("asset file name");
                dest = dest.join(name);
            }
            (source, dest)
        })
        .collect()
}

fn asset_dest_is_folder(asset: &toml::Value) -> bool {
    let dest = match asset {
        toml::Value::Array(fields) => fields[1].as_str(),
        toml::Value::Table(fields) => fields.get("dest").and_then(toml::Value::as_str),
        _ => None,
    };
    dest.is_some_and(|d| d.ends_with('/'))
}

/// Where the package installs the asset whose source ends with `source_suffix`.
fn installed_path(source_suffix: &str) -> PathBuf {
    let assets = deb_assets();
    let found: Vec<&PathBuf> = assets
        .iter()
        .filter(|(source, _)| source.ends_with(source_suffix))
        .map(|(_, dest)| dest)
        .collect();
    match found.as_slice() {
        [dest] => (*dest).clone(),
        other => panic!("expected one asset from *{source_suffix}, found {other:?}"),
    }
}

#[test]
fn the_example_config_passes_the_daemons_validation() {
    let config = example_config();
    config
        .validate_daemon()
        .unwrap_or_else(|e| panic!("systemd/posed.toml: {e}"));

    // What the file promises in its header: a Jetson with a USB camera on TensorRT.
    assert_eq!(config.engines.backend, BackendKind::TensorRt);
    assert_eq!(config.engines.precision, Precision::Fp16);
    assert_eq!(config.source.kind, SourceKind::V4l2);
    assert_eq!(config.source.device, Path::new("/dev/video0"));
    assert_eq!(
        (config.source.width, config.source.height, config.source.fps),
        (640, 480, 30)
    );
    assert!(config.source.intrinsics.is_some());
    assert_eq!(config.pipeline.objects, ObjectsFrom::Detector);
    assert_eq!(
        config.engines.max_image,
        [config.source.height as usize, config.source.width as usize],
        "the detector's largest input is the camera's frame"
    );
    assert_eq!(config.stream.mode_bits(), Some(0o660));
}

#[test]
fn the_unit_is_a_notify_service_with_a_watchdog() {
    let unit = Unit::load();
    assert_eq!(unit.one("Service", "Type"), "notify");
    assert_eq!(unit.one("Service", "NotifyAccess"), "main");
    let watchdog = unit.one("Service", "WatchdogSec");
    assert!(
        !watchdog.is_empty() && !["0", "infinity"].contains(&watchdog),
        "WatchdogSec={watchdog} turns the watchdog off"
    );
    assert_eq!(unit.one("Service", "Restart"), "on-failure");
    assert_eq!(unit.one("Install", "WantedBy"), "multi-user.target");
    // PrivateDevices=yes hides the GPU; MemoryDenyWriteExecute=yes breaks CUDA's JIT;
    // PrivateUsers=yes voids the `video` group that owns the GPU and camera nodes.
    for key in ["PrivateDevices", "MemoryDenyWriteExecute", "PrivateUsers"] {
        assert!(
            unit.all("Service", key).is_empty(),
            "{key}= must not be set (see the comment in posed.service)"
        );
    }
    assert_eq!(unit.one("Service", "DevicePolicy"), "closed");
    let allowed = unit.all("Service", "DeviceAllow");
    for device in ["char-video4linux rw", "/dev/nvmap rw"] {
        assert!(allowed.contains(&device), "DeviceAllow={device} missing");
    }
}

/// A panic anywhere in the packaged binary (the release profile's) ends the process, which
/// `Restart=on-failure` restarts: a half-dead daemon (one thread gone, the others serving)
/// is worse than a restarted one (STYLE.md, "Real time"). Debug builds unwind; there a
/// panic in a pipeline thread ends `posed run` with an error (tests/daemon.rs).
#[test]
fn the_packaged_binary_aborts_on_panic() {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let release = manifest
        .get("profile")
        .and_then(|p| p.get("release"))
        .expect("[profile.release]");
    let panic = release.get("panic").and_then(toml::Value::as_str);
    assert_eq!(panic, Some("abort"), "[profile.release] panic");
}

#[test]
fn the_unit_runs_the_packaged_binary_with_the_packaged_config() {
    let unit = Unit::load();
    let exec_start: Vec<&str> = unit
        .one("Service", "ExecStart")
        .split_whitespace()
        .collect();
    let [binary, "run", "--config", config_path] = exec_start.as_slice() else {
        panic!("ExecStart should be `BINARY run --config FILE`, found {exec_start:?}");
    };
    assert_eq!(*binary, "/usr/bin/posed");
    assert_eq!(*config_path, "/etc/posed/posed.toml");
    assert_eq!(
        installed_path("target/release/posed"),
        Path::new(binary),
        "the package installs the binary where ExecStart runs it"
    );
    assert_eq!(
        installed_path("systemd/posed.toml"),
        Path::new(config_path),
        "the package installs the example config where ExecStart reads it"
    );
    assert_eq!(
        config_path.strip_prefix('/').map(|p| p.starts_with("etc/")),
        Some(true),
        "dpkg keeps local edits only of files under /etc (conffiles)"
    );
    let documentation = unit.one("Unit", "Documentation");
    let documentation = documentation
        .strip_prefix("file:")
        .unwrap_or_else(|| panic!("Documentation={documentation} is not a file: URI"));
    assert_eq!(
        installed_path("systemd/README.md"),
        Path::new(documentation),
        "the package installs the page the unit's Documentation= names"
    );
}

#[test]
fn the_units_directories_are_the_ones_the_config_points_into() {
    let unit = Unit::load();
    let config = example_config();

    assert_eq!(unit.one("Service", "RuntimeDirectory"), "posed");
    assert_eq!(
        config.stream.socket.parent(),
        Some(Path::new("/run/posed")),
        "the socket lives in the unit's RuntimeDirectory"
    );
    let runtime_mode = u32::from_str_radix(unit.one("Service", "RuntimeDirectoryMode"), 8)
        .expect("RuntimeDirectoryMode is octal");
    assert_eq!(
        runtime_mode & 0o050,
        0o050,
        "group members must be able to reach the socket in /run/posed"
    );

    assert_eq!(unit.one("Service", "StateDirectory"), "posed");
    let state = Path::new("/var/lib/posed");
    for (role, path) in config.networks.by_role() {
        assert!(
            path.starts_with(state),
            "{role:?} network {} outside {}",
            path.display(),
            state.display()
        );
    }
    let models = config.pipeline.models.as_deref().expect("pipeline.models");
    assert!(models.starts_with(state), "{}", models.display());

    assert_eq!(unit.one("Service", "CacheDirectory"), "posed");
    let cache_dir = config.engines.cache_dir.clone().expect("engines.cache_dir");
    assert!(
        cache_dir.starts_with("/var/cache/posed"),
        "{}",
        cache_dir.display()
    );
    let from_unit = unit
        .environment("POSED_CACHE_DIR")
        .expect("Environment=POSED_CACHE_DIR=");
    assert_eq!(
        Path::new(&expand_specifiers(from_unit)),
        cache_dir,
        "the service's default engine cache and the config's must be one folder, so that \
         `posed engines build` fills the cache the service reads"
    );
}

#[test]
fn the_user_the_groups_and_the_socket_group_agree() {
    let unit = Unit::load();
    let config = example_config();
    assert_eq!(unit.one("Service", "User"), "posed");
    assert_eq!(unit.one("Service", "Group"), "posed");
    let supplementary: Vec<&str> = unit
        .all("Service", "SupplementaryGroups")
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    assert!(supplementary.contains(&"video"), "{supplementary:?}");
    let socket_group = config.stream.group.as_deref().expect("stream.group");
    assert!(
        socket_group == "posed" || supplementary.contains(&socket_group),
        "posed can give the socket only to a group it is in, found {socket_group}"
    );

    // sysusers: the user and group posed, member of video.
    let sysusers = read("systemd/posed.sysusers");
    let lines: Vec<Vec<&str>> = sysusers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(lines.iter().any(|l| l[..2] == ["u", "posed"]), "{sysusers}");
    assert!(
        lines.iter().any(|l| l[..] == ["m", "posed", "video"]),
        "{sysusers}"
    );

    // tmpfiles: the state and cache folders, owned by posed, as the unit creates them.
    let tmpfiles = read("systemd/posed.tmpfile");
    for folder in ["/var/lib/posed", "/var/cache/posed"] {
        assert!(
            tmpfiles.lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.len() >= 5
                    && fields[0] == "d"
                    && fields[1] == folder
                    && fields[3..5] == ["posed", "posed"]
            }),
            "posed.tmpfile should create {folder} for posed:\n{tmpfiles}"
        );
    }
}

#[test]
fn the_package_installs_the_systemd_files_from_this_folder() {
    let deb = deb_metadata();
    let units = deb["systemd-units"]
        .as_table()
        .expect("[package.metadata.deb.systemd-units]");
    let scripts = units["unit-scripts"].as_str().expect("unit-scripts");
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(scripts);
    // cargo-deb (like dh_installsystemd) installs <package>.service, .tmpfile and
    // .sysusers found in that folder, and runs systemd-sysusers and systemd-tmpfiles in
    // the postinst.
    for name in ["posed.service", "posed.sysusers", "posed.tmpfile"] {
        assert!(
            folder.join(name).is_file(),
            "{} not found",
            folder.join(name).display()
        );
    }
    assert_eq!(
        folder.canonicalize().expect("unit-scripts folder"),
        repo_root()
            .join("systemd")
            .canonicalize()
            .expect("systemd/")
    );
}
