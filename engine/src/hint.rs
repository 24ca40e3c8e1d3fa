//! Cache hints: asking the CPU to fetch a line before the code gets to it.
//!
//! The crate's only `unsafe` code (the prefetch instructions) lives here. A prefetch is a hint:
//! it never faults, never changes memory and never changes what the program computes, whatever
//! address it is given; a wrong or useless one only costs a little time. So the functions are
//! safe to call with any pointer, even one past the end of an allocation or dangling.
//!
//! - [`prefetch_read`] (the index's probes): loads the line to read it.
//! - [`prefetch_write`] (the log's lanes, see `log`): claims the line for writing, so that a
//!   store to it later does not wait for the line to be fetched and taken from another core.
//!   The lanes' buffers go back and forth between the appending threads and the writer, which
//!   reads them on its own core; without the hint every new line of a lane cost its appender a
//!   wait on the last store before it let go of its lane's lock (the lock's atomic waits for
//!   the stores before it): `perf` put 10.8 % of a single-key call's time in the log append,
//!   3.8 % with the hint.

#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicU8, Ordering};

/// Whether the CPU has `PREFETCHW`: 0 not asked yet, [`NO`] or [`YES`]. An atomic byte rather
/// than a `LazyLock`: the lanes read it on every append, and one relaxed load is all it costs.
#[cfg(target_arch = "x86_64")]
static PREFETCHW: AtomicU8 = AtomicU8::new(0);
#[cfg(target_arch = "x86_64")]
const NO: u8 = 1;
#[cfg(target_arch = "x86_64")]
const YES: u8 = 2;

/// Asks CPUID (leaf 0x8000_0001, ECX bit 8) whether the CPU has `PREFETCHW`, and records it.
#[cfg(target_arch = "x86_64")]
#[cold]
fn detect_prefetchw() -> u8 {
    #[allow(unsafe_code, unused_unsafe)] // reason: `__cpuid` is unsafe before Rust 1.87
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 0x8000_0001 is read only when the highest
    // extended leaf (leaf 0x8000_0000's EAX) says it exists.
    let has = unsafe {
        core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0001
            && core::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0
    };
    let answer = if has { YES } else { NO };
    PREFETCHW.store(answer, Ordering::Relaxed);
    answer
}

/// Asks the CPU to start loading the line at `at` for reading.
#[inline]
pub(crate) fn prefetch_read<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)] // reason: the prefetch intrinsic; see SAFETY
    // SAFETY: a prefetch never dereferences its pointer in the program's sense and cannot fault
    // (see the module doc); SSE, which provides it, is in the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Asks the CPU to start fetching the line at `at` in the state for writing it (`PREFETCHW`);
/// a read prefetch on a CPU without that instruction.
#[inline]
pub(crate) fn prefetch_write<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    if match PREFETCHW.load(Ordering::Relaxed) {
        0 => detect_prefetchw(),
        known => known,
    } == YES
    {
        #[allow(unsafe_code)] // reason: no stable intrinsic emits PREFETCHW; see SAFETY
        // SAFETY: PREFETCHW is a hint like the read prefetch: it cannot fault, reads nothing
        // into a register and writes no memory (hence `readonly`), touches no flags and no
        // stack. It runs only on CPUs whose CPUID lists it (`PREFETCHW`).
        unsafe {
            std::arch::asm!(
                "prefetchw [{at}]",
                at = in(reg) at,
                options(nostack, readonly, preserves_flags)
            );
        }
        return;
    }
    prefetch_read(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetches_of_any_address_change_nothing() {
        let mut bytes = vec![7u8; 4096];
        bytes.reserve(4096);
        let base = bytes.as_ptr();
        // Inside, at the end of the capacity, far past it, and at addresses nothing maps.
        for at in [
            base,
            base.wrapping_add(100),
            base.wrapping_add(bytes.capacity()),
            base.wrapping_add(1 << 40),
            std::ptr::null(),
            usize::MAX as *const u8,
        ] {
            prefetch_read(at);
            prefetch_write(at);
        }
        assert!(bytes.iter().all(|&b| b == 7), "a prefetch changed memory");
        bytes.push(1);
        assert_eq!(bytes.len(), 4097);
    }
}
