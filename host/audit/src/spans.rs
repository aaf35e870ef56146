//! Which segments the sessions behind a run of commitments were written to,
//! remembered coarsely so that a retention pass reads only those segments.
//!
//! A session's chunks all lie between the segment its first round may have
//! gone to and the last segment written when its commitment was (chunks are
//! written before their commitment, and segment numbers only grow). The
//! auditor records that span per commitment as it writes them; this keeps,
//! per block of [`BLOCK`] consecutive commitments, the union of their spans
//! (40 bytes per block, so memory stays negligible however many sessions
//! are kept). A retention pass prunes the sessions behind a run of
//! commitments and asks for the union over that run: a session left open
//! for a long time pins its first segment, but no longer makes every later
//! pass read every segment from there on.
//!
//! The answer may be wider than needed (a block's union), never narrower;
//! a commitment this process did not record (written by an earlier process,
//! or sealed by recovery) makes it [`Span::Unknown`], and the caller then
//! reads every segment that may hold records to prune.

use std::collections::VecDeque;

/// Commitments per block.
pub(crate) const BLOCK: u64 = 1024;

/// Where the records behind some commitments may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// Not known: any segment may hold them.
    Unknown,
    /// No segment holds any of them (sessions without records, or whose
    /// records are all in format-1 files).
    Nowhere,
    /// Only segments `lo..=hi` may hold them.
    Segments {
        /// The lowest.
        lo: u64,
        /// The highest.
        hi: u64,
    },
}

impl Span {
    /// The segments to read for it, none below `floor` (the lowest that
    /// may hold anything not pruned yet): `None` when there is none to
    /// read.
    pub(crate) fn segments_from(self, floor: u64) -> Option<(u64, u64)> {
        match self {
            Span::Unknown => Some((floor, u64::MAX)),
            Span::Nowhere => None,
            Span::Segments { lo, hi } => Some((lo.max(floor), hi)),
        }
        .filter(|(from, to)| from <= to)
    }

    /// The smallest span holding both.
    fn union(self, other: Span) -> Span {
        match (self, other) {
            (Span::Unknown, _) | (_, Span::Unknown) => Span::Unknown,
            (Span::Nowhere, s) | (s, Span::Nowhere) => s,
            (Span::Segments { lo: a, hi: b }, Span::Segments { lo: c, hi: d }) => Span::Segments {
                lo: a.min(c),
                hi: b.max(d),
            },
        }
    }
}

/// One block: commitments `first..end` and the union of their spans.
#[derive(Debug, Clone, Copy)]
struct Block {
    first: u64,
    end: u64,
    span: Span,
}

/// The spans of the commitments this process wrote, by block.
#[derive(Debug, Default)]
pub(crate) struct CommitSpans {
    blocks: VecDeque<Block>,
}

impl CommitSpans {
    /// Records commitment `index`'s span. Indices come in increasing order;
    /// one that does not follow the last starts a new block (the gap is
    /// unknown).
    pub(crate) fn record(&mut self, index: u64, span: Span) {
        if let Some(b) = self.blocks.back_mut()
            && b.end == index
            && b.end - b.first < BLOCK
        {
            b.end += 1;
            b.span = b.span.union(span);
            return;
        }
        if self.blocks.back().is_some_and(|b| index < b.end) {
            // Out of order (not expected): what was recorded for it may
            // not cover it, so nothing is trusted from here down.
            self.blocks.clear();
        }
        self.blocks.push_back(Block {
            first: index,
            end: index + 1,
            span,
        });
    }

    /// The union of the spans of commitments `first..end`: unknown if any
    /// of them was not recorded.
    pub(crate) fn query(&self, first: u64, end: u64) -> Span {
        if first >= end {
            return Span::Nowhere;
        }
        let mut covered = first;
        let mut span = Span::Nowhere;
        // Blocks are in index order; the first that may overlap is found by
        // a binary search (a pass asks about recent blocks).
        let start = self.blocks.partition_point(|b| b.end <= first);
        for b in self.blocks.range(start..) {
            if b.first >= end {
                break;
            }
            if b.first > covered {
                return Span::Unknown;
            }
            span = span.union(b.span);
            covered = b.end;
            if covered >= end {
                return span;
            }
        }
        Span::Unknown
    }

    /// Forgets every block wholly below commitment `index`.
    pub(crate) fn forget_below(&mut self, index: u64) {
        while self.blocks.front().is_some_and(|b| b.end <= index) {
            self.blocks.pop_front();
        }
    }

    /// How many blocks are kept.
    #[cfg(test)]
    fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(lo: u64, hi: u64) -> Span {
        Span::Segments { lo, hi }
    }

    #[test]
    fn a_run_is_the_union_of_its_blocks() {
        let mut s = CommitSpans::default();
        for i in 0..3 * BLOCK {
            s.record(i, seg(10 + i / BLOCK, 10 + i / BLOCK));
        }
        assert_eq!(s.blocks(), 3);
        assert_eq!(s.query(0, 1), seg(10, 10));
        assert_eq!(s.query(BLOCK - 1, BLOCK + 1), seg(10, 11));
        assert_eq!(s.query(2 * BLOCK, 3 * BLOCK), seg(12, 12));
        assert_eq!(s.query(0, 3 * BLOCK + 1), Span::Unknown, "past the end");
        assert_eq!(s.query(5, 5), Span::Nowhere, "an empty run");
        s.forget_below(2 * BLOCK);
        assert_eq!(s.blocks(), 1);
        assert_eq!(s.query(0, 2 * BLOCK + 1), Span::Unknown, "forgotten");
        assert_eq!(s.query(2 * BLOCK, 2 * BLOCK + 1), seg(12, 12));
    }

    #[test]
    fn a_session_left_open_widens_only_its_own_block() {
        let mut s = CommitSpans::default();
        s.record(0, seg(1, 40));
        for i in 1..2 * BLOCK {
            s.record(i, seg(40, 41));
        }
        assert_eq!(s.query(0, 5), seg(1, 41));
        assert_eq!(s.query(BLOCK, 2 * BLOCK), seg(40, 41));
    }

    #[test]
    fn gaps_and_unknown_commitments_are_unknown() {
        let mut s = CommitSpans::default();
        s.record(10, Span::Nowhere);
        s.record(11, seg(3, 3));
        assert_eq!(s.query(10, 11), seg(3, 3), "its block's union");
        assert_eq!(
            s.query(9, 11),
            Span::Unknown,
            "commitment 9 was not recorded"
        );
        s.record(20, seg(5, 6));
        assert_eq!(s.query(11, 21), Span::Unknown, "12..20 were not");
        assert_eq!(s.query(20, 21), seg(5, 6));
        s.record(21, Span::Unknown);
        assert_eq!(s.query(20, 22), Span::Unknown);
        // Out of order: nothing recorded before is trusted.
        s.record(15, seg(1, 1));
        assert_eq!(s.query(20, 21), Span::Unknown);
        assert_eq!(s.query(15, 16), seg(1, 1));
    }

    #[test]
    fn the_segments_to_read_start_at_the_floor() {
        assert_eq!(Span::Unknown.segments_from(4), Some((4, u64::MAX)));
        assert_eq!(Span::Nowhere.segments_from(4), None);
        assert_eq!(seg(2, 9).segments_from(4), Some((4, 9)));
        assert_eq!(seg(2, 3).segments_from(4), None, "all below the floor");
    }

    proptest! {
        /// Whatever the order and gaps, a known answer covers the span of
        /// every commitment in the run, and every one of them was recorded.
        #[test]
        fn an_answer_never_leaves_out_a_recorded_segment(
            steps in prop::collection::vec((0u64..4, 0u64..50, 0u64..8, 0u8..8), 1..300),
            queries in prop::collection::vec((0u64..600, 0u64..40), 1..40),
            forget in 0u64..600,
        ) {
            let mut s = CommitSpans::default();
            let mut truth: std::collections::BTreeMap<u64, Span> = Default::default();
            let mut index = 0u64;
            for (skip, lo, width, kind) in steps {
                // Mostly consecutive; sometimes a gap, rarely a step back.
                index = match skip {
                    0 if index > 3 => index - 3,
                    1 => index + 2,
                    _ => index,
                };
                let span = match kind {
                    0 => Span::Unknown,
                    1 => Span::Nowhere,
                    _ => seg(lo, lo + width),
                };
                if truth.range(index..).next().is_some() {
                    // A step back: the auditor's commitments never do this;
                    // all earlier knowledge is dropped.
                    truth.clear();
                }
                s.record(index, span);
                truth.insert(index, span);
                index += 1;
            }
            s.forget_below(forget);
            for (first, len) in queries {
                let end = first + len;
                match s.query(first, end) {
                    Span::Unknown => {}
                    Span::Nowhere => {
                        for i in first..end {
                            prop_assert_eq!(truth.get(&i), Some(&Span::Nowhere));
                        }
                    }
                    Span::Segments { lo, hi } => {
                        for i in first..end {
                            match truth.get(&i) {
                                Some(Span::Nowhere) => {}
                                Some(Span::Segments { lo: a, hi: b }) => {
                                    prop_assert!(lo <= *a && *b <= hi);
                                }
                                other => prop_assert!(false, "{i}: {other:?}"),
                            }
                        }
                    }
                }
            }
        }
    }
}
