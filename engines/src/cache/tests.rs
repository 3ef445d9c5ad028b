use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::*;

fn key(precision: Precision) -> EngineKey {
    EngineKey {
        onnx_sha256: "ab".repeat(32),
        role: "refiner".to_owned(),
        backend: "test".to_owned(),
        backend_version: "1.0".to_owned(),
        device_name: "cpu".to_owned(),
        compute_capability: "-".to_owned(),
        precision,
        dla_core: None,
        batch_profile: (1, 8, 16),
        max_image_hw: (0, 0),
        builder_version: 1,
    }
}

fn payload() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn built(bytes: Vec<u8>) -> impl FnOnce() -> Result<Vec<u8>, EngineError> {
    move || Ok(bytes)
}

fn never_built() -> impl FnOnce() -> Result<Vec<u8>, EngineError> {
    || panic!("the cache rebuilt an engine it should have loaded")
}

#[test]
fn builds_once_then_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("open");
    let key = key(Precision::Fp16);
    let (bytes, outcome) = cache.get_or_build(&key, built(payload())).expect("build");
    assert_eq!(outcome, CacheOutcome::Built);
    assert_eq!(bytes, payload());
    let (bytes, outcome) = cache.get_or_build(&key, never_built()).expect("hit");
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(bytes, payload());

    let entries = cache.list().expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key.as_ref(), Some(&key));
    assert_eq!(entries[0].payload_len, payload().len() as u64);
    assert!(entries[0].problem.is_none());
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn every_key_field_changes_the_entry() {
    let base = key(Precision::Fp32);
    let mut variants = vec![base.clone()];
    let mut k = base.clone();
    k.onnx_sha256 = "cd".repeat(32);
    variants.push(k);
    let mut k = base.clone();
    k.backend_version = "1.1".to_owned();
    variants.push(k);
    let mut k = base.clone();
    k.device_name = "Orin".to_owned();
    variants.push(k);
    let mut k = base.clone();
    k.compute_capability = "8.7".to_owned();
    variants.push(k);
    variants.push(key(Precision::Fp16));
    let mut k = base.clone();
    k.dla_core = Some(0);
    variants.push(k);
    let mut k = base.clone();
    k.batch_profile = (1, 8, 32);
    variants.push(k);
    let mut k = base.clone();
    k.builder_version = 2;
    variants.push(k);
    let digests: std::collections::HashSet<String> =
        variants.iter().map(EngineKey::digest).collect();
    assert_eq!(digests.len(), variants.len());
    assert_eq!(base.digest(), key(Precision::Fp32).digest());
}

/// Damages the stored entry with `damage`, then checks that loading refuses it with a
/// message containing `expected`, and that `get_or_build` rebuilds it.
fn check_rejected(damage: impl FnOnce(&Path), expected: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("open");
    let key = key(Precision::Fp32);
    let path = cache.store(&key, &payload()).expect("store");
    damage(&path);
    let err = cache.load(&key).expect_err("a damaged entry must not load");
    let message = err.to_string();
    assert!(message.contains(expected), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");

    let rebuilt = vec![42u8; 100];
    let (bytes, outcome) = cache
        .get_or_build(&key, built(rebuilt.clone()))
        .expect("rebuild");
    assert_eq!(outcome, CacheOutcome::Rebuilt);
    assert_eq!(bytes, rebuilt);
    assert_eq!(
        cache.load(&key).expect("load").as_deref(),
        Some(&rebuilt[..])
    );
    // The rejected entry is kept aside for inspection.
    assert!(path.with_extension("engine.rejected").exists());
}

#[test]
fn truncated_entry_is_rebuilt() {
    check_rejected(
        |path| {
            let bytes = std::fs::read(path).expect("read");
            std::fs::write(path, &bytes[..bytes.len() - 10]).expect("write");
        },
        "truncated",
    );
}

#[test]
fn entry_cut_inside_the_header_is_rebuilt() {
    check_rejected(
        |path| std::fs::write(path, b"POSEDENG\x01").expect("write"),
        "truncated",
    );
}

#[test]
fn corrupt_payload_is_rebuilt() {
    check_rejected(
        |path| {
            let mut bytes = std::fs::read(path).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 0x40;
            std::fs::write(path, bytes).expect("write");
        },
        "sha256",
    );
}

#[test]
fn garbage_file_is_rebuilt() {
    check_rejected(
        |path| std::fs::write(path, b"this is not an engine at all").expect("write"),
        "bad magic",
    );
}

#[test]
fn an_entry_whose_payload_the_backend_cannot_read_is_set_aside_and_rebuilt() {
    // The bytes verify (their sha256 is the manifest's), but the backend's reader
    // refuses them: the entry is rejected like a corrupt one, not trusted and kept.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("open");
    let key = key(Precision::Fp32);
    let path = cache.store(&key, b"garbage that verifies").expect("store");
    let good = payload();
    let read = |bytes: &[u8]| {
        if bytes == &payload()[..] {
            Ok(bytes.len())
        } else {
            Err("not an engine".to_owned())
        }
    };
    let build = || Ok((good.clone(), good.len()));
    let (bytes, engine, outcome) = cache
        .get_or_build_checked(&key, build, read)
        .expect("rebuild");
    assert_eq!(outcome, CacheOutcome::Rebuilt);
    assert_eq!((bytes, engine), (payload(), payload().len()));
    assert!(path.with_extension("engine.rejected").exists());
    // The rebuilt entry is read, not rebuilt again.
    let never = || -> Result<(Vec<u8>, usize), EngineError> { panic!("rebuilt twice") };
    let (_, engine, outcome) = cache.get_or_build_checked(&key, never, read).expect("hit");
    assert_eq!((engine, outcome), (payload().len(), CacheOutcome::Hit));
}

#[test]
fn corrupt_manifest_is_rebuilt() {
    check_rejected(
        |path| {
            let mut bytes = std::fs::read(path).expect("read");
            bytes[20] = b'!';
            std::fs::write(path, bytes).expect("write");
        },
        "corrupt manifest",
    );
}

#[test]
fn stale_entry_is_rebuilt() {
    // An entry for other settings found under this key's name (copied by hand, say).
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("open");
    let wanted = key(Precision::Fp32);
    let other = key(Precision::Fp16);
    let other_path = cache.store(&other, &payload()).expect("store");
    std::fs::copy(&other_path, cache.entry_path(&wanted)).expect("copy");
    let err = cache.load(&wanted).expect_err("stale");
    assert!(err.to_string().contains("stale"), "{err}");
    let (_, outcome) = cache
        .get_or_build(&wanted, built(vec![1, 2, 3]))
        .expect("rebuild");
    assert_eq!(outcome, CacheOutcome::Rebuilt);
    let listed = cache.list().expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|e| e.problem.is_none()), "{listed:?}");
}

#[test]
fn a_failed_build_leaves_no_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("open");
    let key = key(Precision::Fp32);
    let err = cache
        .get_or_build(&key, || {
            Err(EngineError::Config {
                what: "test",
                reason: "builder failed".to_owned(),
            })
        })
        .expect_err("the build fails");
    assert!(err.to_string().contains("builder failed"));
    assert_eq!(cache.load(&key).expect("load"), None);
    assert!(cache.list().expect("list").is_empty());
}

#[test]
fn concurrent_builders_build_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key(Precision::Fp16);
    let builds = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.path().to_owned();
            let key = key.clone();
            let builds = Arc::clone(&builds);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                // Each thread opens the cache and its lock file itself, as a separate
                // process would: flock() locks belong to the open file.
                let cache = EngineCache::open(dir).expect("open");
                start.wait();
                cache.get_or_build(&key, || {
                    builds.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(payload())
                })
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        let (bytes, outcome) = handle.join().expect("thread").expect("get_or_build");
        assert_eq!(bytes, payload());
        outcomes.push(outcome);
    }
    assert_eq!(builds.load(Ordering::SeqCst), 1, "{outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == CacheOutcome::Built)
            .count(),
        1
    );
    let cache = EngineCache::open(dir.path()).expect("open");
    assert_eq!(cache.list().expect("list").len(), 1);
}

#[test]
fn default_dir_follows_the_environment_convention() {
    // Only checks the shape of the answer: tests must not change the process environment.
    let dir = EngineCache::default_dir();
    assert!(
        dir.is_absolute() || dir.starts_with("."),
        "{}",
        dir.display()
    );
}

#[test]
fn a_cache_that_cannot_be_written_serves_its_verified_entries_and_builds_nothing() {
    // What a read-only cache looks like to the cache: EROFS (a robot's read-only root) or
    // EACCES (another user's folder) when creating the build lock. Tests may run as root,
    // whom permissions do not stop, and cannot mount: the fallback is called with the
    // error the open would give.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("open");
    let read_only = || std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
    let accept = |bytes: &[u8]| Ok::<usize, String>(bytes.len());
    let stored = key(Precision::Fp16);
    cache.store(&stored, &payload()).expect("store");
    let lock = cache.lock_path(&stored);
    let (bytes, engine, outcome) = cache
        .use_without_lock(&stored, &lock, read_only(), accept)
        .expect("hit");
    assert_eq!(
        (bytes, engine, outcome),
        (payload(), payload().len(), CacheOutcome::Hit)
    );

    // No entry, or one that does not verify: an error naming the entry and the lock,
    // nothing built, nothing moved.
    let other = key(Precision::Fp32);
    let lock = cache.lock_path(&other);
    let error = cache
        .use_without_lock(&other, &lock, read_only(), accept)
        .expect_err("nothing to serve")
        .to_string();
    let entry = cache.entry_path(&other).display().to_string();
    assert!(
        error.contains(&entry)
            && error.contains(&lock.display().to_string())
            && error.contains("no entry"),
        "{error}"
    );
    let path = cache.store(&other, &payload()).expect("store");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage");
    let error = cache
        .use_without_lock(&other, &lock, read_only(), accept)
        .expect_err("damaged")
        .to_string();
    assert!(error.contains("unusable"), "{error}");
    assert!(
        path.exists(),
        "a read-only cache's entry is not moved aside"
    );

    // Only "cannot write" takes that path; anything else is the error it is.
    assert!(cannot_write(&read_only()));
    assert!(cannot_write(&std::io::Error::from(
        std::io::ErrorKind::PermissionDenied
    )));
    assert!(!cannot_write(&std::io::Error::from(
        std::io::ErrorKind::StorageFull
    )));
    std::fs::create_dir(cache.lock_path(&stored)).expect("lock path as a folder");
    let error = cache
        .get_or_build(&stored, never_built())
        .expect_err("a folder where the lock goes")
        .to_string();
    assert!(error.contains("opening the build lock"), "{error}");

    // A real read-only folder, where permissions apply (not as root: /proc/self belongs
    // to the process's user).
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() != 0) {
        use std::os::unix::fs::PermissionsExt;
        let locked = tempfile::tempdir().expect("tempdir");
        let cache = EngineCache::open(locked.path()).expect("open");
        let fresh = key(Precision::Int8);
        cache.store(&fresh, &payload()).expect("store");
        std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        let served = cache.get_or_build(&fresh, never_built());
        std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod back");
        assert_eq!(served.expect("hit").1, CacheOutcome::Hit);
    }
}
