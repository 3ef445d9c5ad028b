//! A global allocator that counts heap allocations, for the tests and benches that prove
//! a warm frame allocates nothing. Install it in a test or bench binary with
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: posed_kernels::alloc_count::CountingAllocator =
//!     posed_kernels::alloc_count::CountingAllocator;
//! ```
//!
//! and read [`allocations`] before and after the code under test. It counts every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting `alloc` and `realloc` calls.
#[derive(Debug, Clone, Copy)]
pub struct CountingAllocator;

// SAFETY: forwards every call to the system allocator unchanged; only counts them.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations counted so far (0 unless [`CountingAllocator`] is the global allocator).
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Runs `test` as the whole of a test binary built with `harness = false`, printing what
/// libtest would. Allocation-counting tests run this way because libtest's main thread
/// allocates to print "has been running for over 60 seconds" while a test runs that long,
/// which under qemu falls inside the count. Honours `cargo test`'s name filter and
/// `--list`; other libtest flags are ignored.
pub fn run_test_without_harness(name: &str, test: fn()) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("\nrunning 0 tests (filtered out: {name})\n");
        return;
    }
    println!("\nrunning 1 test");
    test();
    println!("test {name} ... ok\n");
}
