//! Cache hints for memory the caller is about to touch.
//!
//! A hint never faults and reads nothing into the program, so these are safe
//! to call with any address; a wrong one only wastes the hint. Off x86_64
//! (or without SSE) they compile to nothing.

/// The cache line size the hints assume.
#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
const LINE: usize = 64;

/// Calls `hint` with the start of every cache line of the `len` bytes at
/// `start` (none when `len` is 0), never dereferencing anything. One call
/// per line: meant for a few KiB at most.
#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[inline]
fn each_line(start: *const u8, len: usize, hint: impl Fn(*const u8)) {
    if len == 0 {
        return;
    }
    let mut at = start.addr() & !(LINE - 1);
    let last = start.addr().wrapping_add(len - 1) & !(LINE - 1);
    loop {
        hint(start.with_addr(at));
        if at == last {
            break;
        }
        at = at.wrapping_add(LINE);
    }
}

/// Asks the CPU to bring every cache line of the `len` bytes at `start` into
/// its nearest cache, for reading. One instruction per line: for ranges of a
/// few KiB at most.
#[inline]
pub fn lines(start: *const u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    each_line(start, len, |p| {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `prefetch` only hints the cache: it never faults and reads
        // nothing into the program, whatever the address. SSE, which it
        // needs, is enabled (the `cfg` above).
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
        }
    });
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = (start, len);
}

/// Like [`lines`], but asks for the lines in a state this core can write
/// without another round trip (`PREFETCHW`) where the CPU has it: for memory
/// another core touched last, such as a buffer another thread has just
/// read or an allocation it freed, a read hint would fetch a shared copy
/// and the first write would still wait to invalidate the other one.
/// Without `PREFETCHW` it is [`lines`].
#[inline]
pub fn lines_for_write(start: *const u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    if has_prefetchw() {
        each_line(start, len, |p| {
            // SAFETY: as in `lines`: a hint that never faults or reads into
            // the program and writes nothing (`readonly`); the CPU has the
            // instruction (`has_prefetchw`). std's `_MM_HINT_ET0` compiles to
            // a read hint unless the whole crate targets `prfchw`.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::asm!(
                    "prefetchw [{0}]",
                    in(reg) p,
                    options(nostack, preserves_flags, readonly)
                );
            }
        });
        return;
    }
    lines(start, len);
}

/// What [`has_prefetchw`] found: 0 not asked yet, 1 no, 2 yes.
#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
static HAS_PREFETCHW: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether the CPU has `PREFETCHW`, asked once per process: after the first
/// call, one load and a comparison.
#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[inline]
fn has_prefetchw() -> bool {
    match HAS_PREFETCHW.load(std::sync::atomic::Ordering::Relaxed) {
        0 => detect_prefetchw(),
        known => known == 2,
    }
}

/// Asks CPUID (leaf `8000_0001h`, ECX bit 8, after checking that the leaf
/// exists) and remembers the answer; threads racing here store the same one.
#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[cold]
#[inline(never)]
fn detect_prefetchw() -> bool {
    use std::arch::x86_64::__cpuid;
    let has = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
    HAS_PREFETCHW.store(1 + u8::from(has), std::sync::atomic::Ordering::Relaxed);
    has
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_and_length_is_only_a_hint() {
        let v = vec![7u8; 300];
        for hint in [lines, lines_for_write] {
            hint(v.as_ptr(), v.len());
            hint(v.as_ptr().wrapping_add(1), 0);
            // Addresses that are not the program's memory, and a range that
            // wraps around the address space: hints, never faults.
            hint(std::ptr::null(), 64);
            hint(std::ptr::without_provenance(usize::MAX - 10), 100);
        }
        assert!(v.iter().all(|&b| b == 7), "a hint changed memory");
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    #[test]
    fn each_line_names_every_line_of_the_range_once() {
        let seen = std::cell::RefCell::new(Vec::new());
        let start = std::ptr::without_provenance::<u8>(1000);
        each_line(start, 200, |p| seen.borrow_mut().push(p.addr()));
        // 1000..1200 spans the lines at 960, 1024, 1088 and 1152.
        assert_eq!(*seen.borrow(), [960, 1024, 1088, 1152]);
        let lines_of = |at: usize, len: usize| {
            seen.borrow_mut().clear();
            each_line(std::ptr::without_provenance(at), len, |p| {
                seen.borrow_mut().push(p.addr())
            });
            seen.borrow().clone()
        };
        // Aligned starts, one byte, a range ending on a line's last byte.
        assert_eq!(lines_of(1024, 1), [1024]);
        assert_eq!(lines_of(1024, 64), [1024]);
        assert_eq!(lines_of(1024, 65), [1024, 1088]);
        assert_eq!(lines_of(1087, 1), [1024]);
        assert_eq!(lines_of(1087, 2), [1024, 1088]);
        seen.borrow_mut().clear();
        each_line(start, 0, |p| seen.borrow_mut().push(p.addr()));
        assert!(seen.borrow().is_empty());
        each_line(std::ptr::without_provenance(usize::MAX - 10), 100, |p| {
            seen.borrow_mut().push(p.addr())
        });
        assert_eq!(*seen.borrow(), [usize::MAX & !63, 0, 64]);
    }
}
