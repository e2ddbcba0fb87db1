//! fl-core's one integration-test binary; each module is one area.

mod bad_input;
mod golden;
mod memory;
mod model;
mod properties;
mod round;
mod train;

/// A counting global allocator: tracks heap in use and its peak, only on threads that opted in
/// (the memory test's pool), so parallel tests do not disturb the measurement.
pub mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicIsize, Ordering};

    struct Counting;

    static CURRENT: AtomicIsize = AtomicIsize::new(0);
    static PEAK: AtomicIsize = AtomicIsize::new(0);
    static BASE: AtomicIsize = AtomicIsize::new(0);

    thread_local! {
        static TRACK: Cell<bool> = const { Cell::new(false) };
    }

    fn tracked() -> bool {
        TRACK.try_with(Cell::get).unwrap_or(false)
    }

    fn add(delta: isize) {
        let now = CURRENT.fetch_add(delta, Ordering::Relaxed) + delta;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    // SAFETY: forwards to the system allocator unchanged; only counts sizes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if tracked() {
                add(layout.size() as isize);
            }
            // SAFETY: same layout contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if tracked() {
                add(-(layout.size() as isize));
            }
            // SAFETY: ptr was allocated by System with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if tracked() {
                add(new_size as isize - layout.size() as isize);
            }
            // SAFETY: same contract as GlobalAlloc::realloc.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Counts (or stops counting) this thread's allocations.
    pub fn track_this_thread(on: bool) {
        TRACK.with(|t| t.set(on));
    }

    /// Starts a measurement: the current level becomes the base.
    pub fn reset_peak() {
        let now = CURRENT.load(Ordering::Relaxed);
        BASE.store(now, Ordering::Relaxed);
        PEAK.store(now, Ordering::Relaxed);
    }

    /// Peak bytes above the base since `reset_peak`.
    pub fn peak_extra() -> usize {
        (PEAK.load(Ordering::Relaxed) - BASE.load(Ordering::Relaxed)).max(0) as usize
    }
}
