//! The ring table, as `ahv --help`, the README, the governance doc and the
//! SDK's crate doc show it.
//!
//! All are rendered from the same data: the default ring table
//! (`ahv_core::RingPolicy::default()`, capabilities and budgets) and the
//! default rate limits (`ahv_security::rate::RateTable::default()`). The ring
//! tables of README.md, `docs/governance.md` and the crate doc of
//! `guest-sdk/src/lib.rs` are generated text between two marker lines
//! ([`BEGIN`], [`END`]); a test fails when one differs from [`markdown`], and
//! `AHV_BLESS=1 cargo test -p ahv-cli rings` rewrites them.

use ahv_core::{Capability, Ring, RingLimits, RingPolicy};
use ahv_security::rate::{BucketSpec, CallClass, RateTable};

/// The line before the generated table in README.md and the SDK's crate doc.
pub const BEGIN: &str = "<!-- ring-table: generated from RingPolicy::default() and RateTable::default() by host/cli/src/rings.rs; AHV_BLESS=1 cargo test -p ahv-cli rings rewrites it -->";
/// The line after the generated table.
pub const END: &str = "<!-- ring-table: end -->";

/// One ring's row of the default tables.
struct Row {
    ring: Ring,
    limits: RingLimits,
    change: BucketSpec,
    read: BucketSpec,
}

fn rows() -> Vec<Row> {
    let policy = RingPolicy::default();
    let rates = RateTable::default();
    // Least privileged first: each row adds to the one before.
    Ring::ALL
        .into_iter()
        .rev()
        .map(|ring| Row {
            ring,
            limits: policy.limits(ring).clone(),
            change: rates.spec(CallClass::Change, ring),
            read: rates.spec(CallClass::Read, ring),
        })
        .collect()
}

/// The capabilities `ring` has that the next less privileged ring lacks
/// (all of them for ring 3), in table order.
fn added(policy: &RingPolicy, ring: Ring) -> Vec<Capability> {
    let below = Ring::from_number(ring.number() + 1)
        .ok()
        .map(|r| policy.limits(r).capabilities);
    policy
        .limits(ring)
        .capabilities
        .iter()
        .filter(|c| below.is_none_or(|b| !b.contains(*c)))
        .collect()
}

/// `10^8` for an exact power of ten, the plain number otherwise.
fn count(n: u64) -> String {
    let mut exp = 0;
    let mut m = n;
    while m >= 10 && m.is_multiple_of(10) {
        m /= 10;
        exp += 1;
    }
    if m == 1 && exp >= 3 {
        format!("10^{exp}")
    } else {
        n.to_string()
    }
}

/// Bytes in the largest binary unit that divides them (`32 MiB`).
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    UNITS
        .iter()
        .find(|(_, shift)| n >= 1 << shift && n.is_multiple_of(1 << shift))
        .map_or(format!("{n} B"), |(unit, shift)| {
            format!("{} {unit}", n >> shift)
        })
}

fn seconds(d: std::time::Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn rate(spec: &BucketSpec) -> String {
    format!("{}/s, burst {}", spec.rate_per_sec, spec.burst)
}

fn usize_bytes(n: usize) -> String {
    bytes(u64::try_from(n).unwrap_or(u64::MAX))
}

/// The table as the README, the governance doc and the SDK's crate doc show
/// it, in Markdown (no markers; one line per row, each ending in a newline).
pub fn markdown() -> String {
    let policy = RingPolicy::default();
    let mut s = String::from(
        "| Ring | Capabilities (WIT interfaces) | Fuel / call | Memory | Deadline / call | Rate limit: changes | Rate limit: reads | Host-call data | Answer | Random bytes | Resources |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut previous: Option<Ring> = None;
    for row in rows() {
        let caps = added(&policy, row.ring)
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let caps = match previous {
            None => caps,
            Some(p) => format!("ring {}'s + {caps}", p.number()),
        };
        let l = &row.limits;
        s += &format!(
            "| {} {} | {caps} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.ring.number(),
            row.ring.name(),
            count(l.fuel_per_call),
            bytes(l.memory_bytes),
            seconds(l.deadline),
            rate(&row.change),
            rate(&row.read),
            usize_bytes(l.hostcall_bytes),
            usize_bytes(l.result_bytes),
            usize_bytes(l.random_bytes),
            l.max_resources,
        );
        previous = Some(row.ring);
    }
    s
}

/// The table as `ahv --help` shows it: each ring's capabilities, budgets and
/// rate limits.
pub fn help() -> String {
    let policy = RingPolicy::default();
    let mut s = String::from(
        "Rings (lower = more privilege; each has the capabilities of the rings above it in this list):\n",
    );
    for row in rows() {
        let caps: Vec<String> = added(&policy, row.ring)
            .iter()
            .map(|c| c.to_string())
            .collect();
        let l = &row.limits;
        s += &format!(
            "  {} {:<11} {}{}\n                fuel {} / call, memory {}, deadline {} / call;\n                rate limits in a session: changes {}; reads {}\n",
            row.ring.number(),
            row.ring.name(),
            if row.ring == Ring::Sandbox { "" } else { "+ " },
            caps.join(", "),
            count(l.fuel_per_call),
            bytes(l.memory_bytes),
            seconds(l.deadline),
            rate(&row.change),
            rate(&row.read),
        );
    }
    s
}

/// Replaces the text between the [`BEGIN`] and [`END`] lines of `text` with
/// `table`, each of its lines prefixed with `prefix` (`"//! "` in a crate
/// doc) and a blank line before and after it. Returns `None` when the
/// markers are missing or out of order.
pub fn splice(text: &str, prefix: &str, table: &str) -> Option<String> {
    let begin_line = format!("{prefix}{BEGIN}\n");
    let end_line = format!("{prefix}{END}");
    let start = text.find(&begin_line)? + begin_line.len();
    let end = start + text[start..].find(&end_line)?;
    // Blank lines around the table, so that no Markdown reader takes a
    // marker for a table row.
    let blank = format!("{}\n", prefix.trim_end());
    let rows: String = table.lines().map(|l| format!("{prefix}{l}\n")).collect();
    let body = format!("{blank}{rows}{blank}");
    Some(format!("{}{body}{}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn repo_file(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    /// Checks that `rel`'s generated section is [`markdown`]; under
    /// `AHV_BLESS` rewrites it instead.
    fn check_generated(rel: &str, prefix: &str) {
        let path = repo_file(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let want = splice(&text, prefix, &markdown()).unwrap_or_else(|| {
            panic!("{rel} has no ring-table section: add the lines\n{prefix}{BEGIN}\n{prefix}{END}")
        });
        if std::env::var_os("AHV_BLESS").is_some() {
            if want != text {
                std::fs::write(&path, &want).unwrap();
            }
            return;
        }
        assert!(
            want == text,
            "{rel}'s ring table differs from RingPolicy::default() and RateTable::default(); \
             rewrite it with `AHV_BLESS=1 cargo test -p ahv-cli rings`. It should read:\n{}",
            markdown()
        );
    }

    #[test]
    fn the_readme_shows_the_default_ring_table() {
        check_generated("README.md", "");
    }

    #[test]
    fn the_governance_doc_shows_the_default_ring_table() {
        check_generated("docs/governance.md", "");
    }

    #[test]
    fn the_sdk_crate_doc_shows_the_default_ring_table() {
        check_generated("guest-sdk/src/lib.rs", "//! ");
    }

    /// The SDK's module docs name each capability's ring in words
    /// ("(capability `locks`, ring 2 and below)"); each must match the table.
    #[test]
    fn the_sdk_module_docs_name_each_capabilitys_ring() {
        let src = std::fs::read_to_string(repo_file("guest-sdk/src/lib.rs")).unwrap();
        // Doc comments as one line of prose, so phrases wrapped over lines match.
        let prose = src
            .lines()
            .map(|l| {
                l.trim_start()
                    .trim_start_matches("//!")
                    .trim_start_matches("///")
                    .trim()
            })
            .collect::<Vec<_>>()
            .join(" ");
        let policy = RingPolicy::default();
        for cap in Capability::ALL {
            let lowest = policy
                .lowest_ring_covering([cap].into_iter().collect())
                .unwrap();
            let want = match lowest {
                Ring::Sandbox => "every ring".to_string(),
                Ring::Root => "ring 0 only".to_string(),
                r => format!("ring {} and below", r.number()),
            };
            let mention = format!("`{cap}`, ");
            let phrases: Vec<&str> = prose
                .match_indices(&mention)
                .map(|(i, _)| &prose[i + mention.len()..])
                .filter(|rest| rest.starts_with("every ring") || rest.starts_with("ring "))
                .collect();
            assert!(
                !phrases.is_empty(),
                "guest-sdk/src/lib.rs never says which ring has `{cap}` (want \"`{cap}`, {want}\")"
            );
            for rest in phrases {
                assert!(
                    rest.starts_with(&want),
                    "guest-sdk/src/lib.rs: `{cap}`, {}… — the table says {want}",
                    rest.chars().take(20).collect::<String>()
                );
            }
        }
    }

    /// The SDK's `ring-*` features, with the capability features they turn
    /// on, are the default table's rings (ring 3's capabilities are never
    /// gated, so they have no feature).
    #[test]
    fn the_sdk_ring_features_are_the_default_rings() {
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(repo_file("guest-sdk/Cargo.toml")).unwrap())
                .unwrap();
        let features = manifest["features"].as_table().unwrap();
        fn leaves(features: &toml::Table, name: &str, out: &mut BTreeSet<String>) {
            for f in features[name].as_array().unwrap() {
                let f = f.as_str().unwrap();
                if f.starts_with("ring-") {
                    leaves(features, f, out);
                } else {
                    out.insert(f.to_string());
                }
            }
        }
        let policy = RingPolicy::default();
        let ungated = policy.limits(Ring::Sandbox).capabilities;
        for ring in Ring::ALL {
            let mut got = BTreeSet::new();
            leaves(features, &format!("ring-{}", ring.name()), &mut got);
            let want: BTreeSet<String> = Capability::ALL
                .into_iter()
                .filter(|c| policy.limits(ring).capabilities.contains(*c) && !ungated.contains(*c))
                .map(|c| c.to_string())
                .collect();
            assert_eq!(got, want, "feature ring-{}", ring.name());
            for cap in &want {
                assert_eq!(
                    features[cap.as_str()].as_array().map(Vec::len),
                    Some(0),
                    "{cap}"
                );
            }
        }
        assert_eq!(
            features["default"].as_array().unwrap()[0].as_str(),
            Some("ring-root")
        );
    }

    /// The SDK's test double judges calls by the default table too.
    #[test]
    fn the_sdk_test_double_has_the_default_ring_table() {
        let src = std::fs::read_to_string(repo_file("guest-sdk/src/testing.rs")).unwrap();
        let policy = RingPolicy::default();
        for cap in Capability::ALL {
            let lowest = policy
                .lowest_ring_covering([cap].into_iter().collect())
                .unwrap();
            let entry = format!("(\"{cap}\", {}),", lowest.number());
            assert!(src.contains(&entry), "testing.rs lacks {entry}");
        }
        assert_eq!(src.matches("const RING_TABLE: [(&str, u8); 13]").count(), 1);
        assert_eq!(Capability::ALL.len(), 13);
    }

    #[test]
    fn the_table_has_every_ring_and_capability_and_the_defaults() {
        let md = markdown();
        assert_eq!(md.lines().count(), 2 + Ring::ALL.len());
        for cap in Capability::ALL {
            assert_eq!(
                md.matches(&format!("`{cap}`")).count(),
                1,
                "{cap} is added in exactly one row"
            );
        }
        let sandbox = md.lines().nth(2).unwrap();
        assert!(sandbox.starts_with("| 3 sandbox | `context`, `log`, `vfs-read`, `state-read`, `elevation` | 10^8 | 32 MiB | 2 s | 5/s, burst 10 | 50/s, burst 100 |"), "{sandbox}");
        let root = md.lines().nth(5).unwrap();
        assert!(root.starts_with("| 0 root | ring 1's + `admin` | 10^11 | 1 GiB | 300 s | 100/s, burst 200 | 1000/s, burst 2000 |"), "{root}");
    }

    #[test]
    fn help_names_every_capability_once_and_the_rates() {
        let h = help();
        for cap in Capability::ALL {
            let named = h
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| *w == cap.interface())
                .count();
            assert_eq!(named, 1, "{cap} in:\n{h}");
        }
        assert!(
            h.contains("changes 5/s, burst 10; reads 50/s, burst 100"),
            "{h}"
        );
    }

    #[test]
    fn units_are_exact() {
        assert_eq!(count(100_000_000), "10^8");
        assert_eq!(count(1500), "1500");
        assert_eq!(count(10), "10");
        assert_eq!(bytes(32 << 20), "32 MiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(64 << 10), "64 KiB");
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes((1 << 20) + 1), "1048577 B");
        assert_eq!(seconds(std::time::Duration::from_millis(1500)), "1500 ms");
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let text = format!("a\n//! {BEGIN}\n//! old\n//! {END}\nb\n");
        assert_eq!(
            splice(&text, "//! ", "| x |\n").unwrap(),
            format!("a\n//! {BEGIN}\n//!\n//! | x |\n//!\n//! {END}\nb\n")
        );
        assert_eq!(splice("no markers", "", "t"), None);
        assert_eq!(splice(&format!("{END}\n{BEGIN}\n"), "", "t"), None);
    }
}
