//! Checks, before compiling, on what compiling a component would make the
//! host allocate.
//!
//! With copy-on-write memory initialisation (see `crate::runtime`'s engine)
//! Wasmtime turns each core module's data segments into one image per
//! memory while compiling: the bytes from the first segment's start to the
//! last one's end, gaps written out as zeros. It does so where that range is
//! less than twice the data in it, or smaller than an allowance per memory
//! ([`DENSE_IMAGE_ALLOWANCE`], its default of 16 MiB). The allowance is what
//! lets a sparse image like the JavaScript agents' (2.8 MB of data over
//! 8.5 MB) be mapped; it is also what let a 1.7 KB component of 32 modules,
//! each with a byte at either end of 16 MiB, take 1.05 GB to compile. So a
//! component's images may total at most twice its own size plus 1 MiB
//! ([`max_image_bytes`]); past that it is refused before Wasmtime sees it.
//! Compiling takes about twice the images' size at its peak; a loaded
//! component then holds them once.
//!
//! The estimate only ever counts more than Wasmtime builds: every memory
//! whose constant-offset segments Wasmtime might turn into an image counts
//! its whole range, in whole pages, whatever else in its module would make
//! Wasmtime copy the segments instead.
//!
//! Tables are precomputed the same way (up to a million entries each, from
//! the table's minimum size), and the pool's limits on tables and memories
//! per module are only checked after compiling; [`scan`] checks them
//! first, in the same pass.

use std::collections::BTreeMap;

use wasmparser::{DataKind, Encoding, Operator, Parser, Payload};

/// Wasmtime's `memory_guaranteed_dense_image_size`: a memory's image is
/// built whatever its density below this size.
pub(crate) const DENSE_IMAGE_ALLOWANCE: u64 = 16 << 20;

/// The page size images are counted in: the largest host page size
/// Wasmtime runs on (64 KiB), so that a one-byte segment counts what its
/// image may take on any host.
const PAGE: u64 = 64 << 10;

/// What a component may have in images beyond twice its size. The
/// agents need none of it (the JavaScript agents' 8.5 MB image is well
/// within twice their 12.2 MB), but a small component of a few modules
/// would otherwise be refused for its page rounding alone.
pub(crate) const EXTRA_IMAGE_BYTES: u64 = 1 << 20;

/// The most image bytes a component of `len` bytes may make Wasmtime build.
pub(crate) fn max_image_bytes(len: usize) -> u64 {
    (len as u64)
        .saturating_mul(2)
        .saturating_add(EXTRA_IMAGE_BYTES)
}

/// What the images of one memory would hold.
#[derive(Debug, Default, Clone, Copy)]
struct Extent {
    /// Bytes of data in its segments.
    data: u64,
    /// The lowest offset a segment starts at.
    start: u64,
    /// The highest offset a segment ends at.
    end: u64,
}

impl Extent {
    fn add(&mut self, offset: u64, len: u64) {
        // Wasmtime skips an empty segment (after its bounds check): it does
        // not widen the image. Widening the estimate's range with it could
        // make a dense image look too sparse to build, and count nothing.
        if len == 0 {
            return;
        }
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        if self.data == 0 {
            (self.start, self.end) = (offset, end);
        } else {
            self.start = self.start.min(offset);
            self.end = self.end.max(end);
        }
        self.data = self.data.saturating_add(len);
    }

    /// The image Wasmtime may build for this memory: if the range is dense
    /// enough or within the allowance, the range widened to whole pages
    /// ([`PAGE`]; Wasmtime maps whole host pages), else none.
    fn image(&self) -> u64 {
        let range = self.end - self.start;
        if self.data > 0 && (range < self.data.saturating_mul(2) || range < DENSE_IMAGE_ALLOWANCE) {
            self.end.div_ceil(PAGE).saturating_mul(PAGE) - self.start / PAGE * PAGE
        } else {
            0
        }
    }
}

/// The largest memory image estimate, for the refusal's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Largest {
    /// The core module's position among the component's modules, from 0.
    pub module: usize,
    /// The memory's index in that module.
    pub memory: u32,
    /// Bytes of data in its segments.
    pub data: u64,
    /// Bytes of its image: from the first segment's start to the last
    /// one's end, in whole pages.
    pub range: u64,
}

/// What reading a component before compiling it found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Why the instance pool could never hold an instance of it (a defined
    /// table or memory past its limits per module): Wasmtime checks this
    /// only after compiling, and precomputes a table's initial entries (up
    /// to a million) while compiling. The scan stops at the first.
    pub misfit: Option<String>,
    /// The bytes of memory images Wasmtime may build (an upper bound; up to
    /// the misfit, if there is one).
    pub images: u64,
    /// The largest of those images.
    pub largest: Option<Largest>,
}

/// What one core module defines, as far as it has been read.
#[derive(Default)]
struct Module {
    /// Its memories' extents, by index (a map: the bytes are not validated
    /// yet, so an index may be anything).
    extents: BTreeMap<u32, Extent>,
    /// Tables it defines.
    tables: u64,
    /// Memories it defines.
    memories: u64,
}

/// Reads `bytes` once, before anything is compiled: [`Scan`]. `None` if
/// they do not parse (before a misfit is found): the compiler then says
/// what is wrong with them.
pub(crate) fn scan(bytes: &[u8]) -> Option<Scan> {
    use crate::runtime::{POOL_MEMORIES_PER_MODULE, POOL_TABLE_ELEMENTS, POOL_TABLES_PER_MODULE};
    let mut found = Scan::default();
    let mut modules = 0usize;
    // One entry per module or component being read (modules do not nest in
    // modules, but components hold modules at any depth).
    let mut open: Vec<Option<Module>> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { encoding, .. } => {
                open.push((encoding == Encoding::Module).then(Module::default));
            }
            Payload::TableSection(reader) => {
                let Some(Some(module)) = open.last_mut() else {
                    continue;
                };
                for table in reader {
                    let table = table.ok()?;
                    if table.ty.initial > POOL_TABLE_ELEMENTS as u64 {
                        found.misfit = Some(format!(
                            "table {} of core module {modules} has a minimum of {} \
                             elements, more than the {POOL_TABLE_ELEMENTS} an instance's table \
                             may have",
                            module.tables, table.ty.initial
                        ));
                        return Some(found);
                    }
                    module.tables += 1;
                }
            }
            Payload::MemorySection(reader) => {
                let Some(Some(module)) = open.last_mut() else {
                    continue;
                };
                module.memories += u64::from(reader.count());
            }
            Payload::DataSection(reader) => {
                let Some(Some(module)) = open.last_mut() else {
                    continue;
                };
                for data in reader {
                    let data = data.ok()?;
                    let DataKind::Active {
                        memory_index,
                        offset_expr,
                    } = data.kind
                    else {
                        continue;
                    };
                    let mut ops = offset_expr.get_operators_reader();
                    let offset = match ops.read().ok()? {
                        Operator::I32Const { value } => u64::from(value.cast_unsigned()),
                        Operator::I64Const { value } => value.cast_unsigned(),
                        // Not a constant: Wasmtime copies this module's segments.
                        _ => continue,
                    };
                    module
                        .extents
                        .entry(memory_index)
                        .or_default()
                        .add(offset, data.data.len() as u64);
                }
            }
            Payload::End(_) => {
                let Some(Some(module)) = open.pop() else {
                    continue;
                };
                for (defined, most, what) in [
                    (module.tables, POOL_TABLES_PER_MODULE, "tables"),
                    (module.memories, POOL_MEMORIES_PER_MODULE, "memories"),
                ] {
                    if defined > u64::from(most) {
                        found.misfit = Some(format!(
                            "core module {modules} defines {defined} {what}, more than the \
                             {most} a module may"
                        ));
                        return Some(found);
                    }
                }
                for (&memory, e) in &module.extents {
                    let image = e.image();
                    found.images = found.images.saturating_add(image);
                    if image > found.largest.map_or(0, |l| l.range) {
                        found.largest = Some(Largest {
                            module: modules,
                            memory,
                            data: e.data,
                            range: image,
                        });
                    }
                }
                modules += 1;
            }
            _ => {}
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The images of `bytes` and the largest ([`scan`]'s).
    fn image_bytes(bytes: &[u8]) -> Option<(u64, Option<Largest>)> {
        scan(bytes).map(|s| (s.images, s.largest))
    }

    /// Why the pool could never hold an instance of `bytes` ([`scan`]'s).
    fn pool_misfit(bytes: &[u8]) -> Option<String> {
        scan(bytes)?.misfit
    }

    /// A component of `modules` core modules, each with one memory holding
    /// `a` at 0 and `b` at `far`.
    fn sparse(modules: usize, far: u64) -> Vec<u8> {
        let mut text = String::from("(component\n");
        for i in 0..modules {
            text += &format!(
                "(core module $m{i} (memory 512) (data (i32.const 0) \"a\") \
                 (data (i32.const {far}) \"b\"))\n"
            );
        }
        text += ")";
        wat::parse_str(&text).unwrap()
    }

    #[test]
    fn a_sparse_memory_counts_its_range_only_within_the_allowance() {
        let one_mib = 1 << 20;
        let (total, largest) = image_bytes(&sparse(3, one_mib)).unwrap();
        // A byte past 1 MiB: the image ends a page later.
        assert_eq!(total, 3 * (one_mib + PAGE));
        assert_eq!(
            largest,
            Some(Largest {
                module: 0,
                memory: 0,
                data: 2,
                range: one_mib + PAGE
            })
        );
        // Past the allowance and not dense: Wasmtime copies, no image.
        let (total, largest) = image_bytes(&sparse(3, DENSE_IMAGE_ALLOWANCE)).unwrap();
        assert_eq!((total, largest), (0, None));
    }

    #[test]
    fn dense_data_counts_whatever_its_size() {
        let text = format!(
            "(module (memory 1024) (data (i32.const 4096) \"{}\"))",
            "x".repeat(20 << 20)
        );
        let bytes = wat::parse_str(&text).unwrap();
        let (total, _) = image_bytes(&bytes).unwrap();
        assert_eq!(total, (20 << 20) + PAGE, "whole pages from 0");
        assert!(total < max_image_bytes(bytes.len()));
    }

    #[test]
    fn many_sparse_modules_exceed_the_bound_and_one_does_not() {
        let far = (16 << 20) - (64 << 10);
        let one = sparse(1, 512 << 10);
        assert!(image_bytes(&one).unwrap().0 < max_image_bytes(one.len()));
        let many = sparse(32, far);
        let (total, _) = image_bytes(&many).unwrap();
        assert!(
            total > max_image_bytes(many.len()),
            "{total} bytes of images from {} bytes",
            many.len()
        );
    }

    #[test]
    fn segments_with_computed_offsets_or_no_memory_data_count_nothing() {
        let bytes = wat::parse_str(
            "(module (memory 512) (global i32 (i32.const 0)) \
             (data (global.get 0) \"a\") (data \"passive\"))",
        )
        .unwrap();
        assert_eq!(image_bytes(&bytes).unwrap(), (0, None));
    }

    #[test]
    fn a_memory_index_out_of_any_range_costs_nothing() {
        // Not valid (the module has one memory), but read before validation:
        // a module with memory 0 and an active segment "ab" for memory
        // u32::MAX at offset 0.
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        bytes.extend([5, 3, 1, 0, 1]);
        bytes.extend([11, 13, 1, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x41, 0, 0x0b, 2]);
        bytes.extend(b"ab");
        assert_eq!(
            image_bytes(&bytes),
            Some((
                PAGE,
                Some(Largest {
                    module: 0,
                    memory: u32::MAX,
                    data: 2,
                    range: PAGE
                })
            ))
        );
    }

    proptest::proptest! {
        /// Read before validation: any bytes, however a valid component is
        /// damaged, are read without a panic or an allocation they ask for.
        #[test]
        fn damaged_components_are_read_without_panicking(
            cuts in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 1..8),
            len in 0usize..4096,
        ) {
            let mut bytes = sparse(2, 4096);
            for (at, byte) in cuts {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            bytes.truncate(len.max(8));
            let _ = image_bytes(&bytes);
        }
    }

    #[test]
    fn an_empty_segment_does_not_hide_an_image() {
        // Wasmtime skips the empty segment and builds an image of just under
        // 16 MiB; widened by it, the range would have looked too sparse.
        let far = (16 << 20) - (64 << 10) - 1;
        let text = format!(
            "(module (memory 256) (data (i32.const 0) \"a\") (data (i32.const {far}) \"b\") \
             (data (i32.const {}) \"\"))",
            16 << 20
        );
        let (total, _) = image_bytes(&wat::parse_str(&text).unwrap()).unwrap();
        assert_eq!(total, (16 << 20) - (64 << 10));
    }

    #[test]
    fn tables_and_memories_past_the_pool_s_limits_are_named() {
        let misfit = |text: &str| pool_misfit(&wat::parse_str(text).unwrap());
        assert_eq!(
            misfit(
                "(component (core module (table 1 funcref)) (core module (table 20001 funcref)))"
            ),
            Some(
                "table 0 of core module 1 has a minimum of 20001 elements, more than the 20000 \
                 an instance's table may have"
                    .into()
            )
        );
        assert_eq!(
            misfit("(module (table 1 funcref) (table 1 funcref))"),
            Some("core module 0 defines 2 tables, more than the 1 a module may".into())
        );
        assert_eq!(
            misfit("(module (memory 1) (memory 1))"),
            Some("core module 0 defines 2 memories, more than the 1 a module may".into())
        );
        assert_eq!(
            misfit(
                "(module (import \"m\" \"t\" (table 99999 funcref)) (table 20000 funcref) (memory 1))"
            ),
            None,
            "imported tables are the importer's; 20000 elements fit"
        );
    }

    #[test]
    fn bytes_that_do_not_parse_are_left_to_the_compiler() {
        assert_eq!(image_bytes(b"\0asm\x0d\0\x01\0\x01\xff"), None);
        assert_eq!(image_bytes(b"not wasm"), None);
    }
}
