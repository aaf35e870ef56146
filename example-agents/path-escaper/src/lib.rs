//! `path-escaper` — hostile: tries every trick to reach files outside its directory.
//!
//! It attempts reads (and, with input `"all"`, writes, appends, renames,
//! deletes and directory creation) on: parent paths (`..`, `a/../../x`),
//! absolute paths, backslash paths, NUL bytes, very long names, symlinks that
//! the test planted inside its directory pointing outside (`escape-link`,
//! `file-link`), and plain WASI `std::fs` calls (which have no preopened
//! directory at all). It answers one line per attempt:
//! `<op> <path> -> ok` or `<op> <path> -> err <kind>`. Every attempt must end
//! in `err`; a test checks that and that nothing outside changed.
//!
//! Writes need ring 2: in ring 3 use input `"read"` (the default).

use agent_sdk::{Agent, export_agent, vfs};

struct PathEscaper;

fn kind(e: &vfs::Error) -> &'static str {
    agent_sdk::error_kind(e)
}

fn targets() -> Vec<String> {
    vec![
        "..".into(),
        "../sentinel.txt".into(),
        "./../sentinel.txt".into(),
        "a/../../sentinel.txt".into(),
        "a/b/../../../sentinel.txt".into(),
        "/etc/passwd".into(),
        "/tmp/ahv-escape".into(),
        "//sentinel.txt".into(),
        "..\\sentinel.txt".into(),
        "C:\\sentinel.txt".into(),
        "notes\0/../../sentinel.txt".into(),
        "sentinel.txt\0".into(),
        "x".repeat(5000),
        format!("{}/x", ["d"; 300].join("/")),
        "escape-link".into(),
        "escape-link/sentinel.txt".into(),
        "escape-link/new.txt".into(),
        "file-link".into(),
        ".ahv-tmp-1".into(),
    ]
}

fn report(out: &mut String, op: &str, path: &str, result: Result<(), vfs::Error>) {
    let shown: String = path
        .chars()
        .take(48)
        .map(|c| if c == '\0' { '␀' } else { c })
        .collect();
    match result {
        Ok(()) => out.push_str(&format!("{op} {shown} -> ok\n")),
        Err(e) => out.push_str(&format!("{op} {shown} -> err {}\n", kind(&e))),
    }
}

impl Agent for PathEscaper {
    fn run(input: String) -> Result<String, String> {
        let mut out = String::new();
        for t in targets() {
            report(&mut out, "read", &t, vfs::read(&t).map(drop));
            report(&mut out, "list", &t, vfs::list(&t).map(drop));
            report(&mut out, "stat", &t, vfs::stat(&t).map(drop));
        }
        // Plain WASI: the host grants no preopened directory, so std::fs reaches nothing.
        for p in ["/etc/passwd", "../sentinel.txt", "sentinel.txt", "."] {
            let r = std::fs::read(p)
                .map(drop)
                .map_err(|e| vfs::Error::Denied(e.to_string()));
            report(&mut out, "std-read", p, r);
            let r = std::fs::write(format!("{p}.pwned"), b"pwned")
                .map_err(|e| vfs::Error::Denied(e.to_string()));
            report(&mut out, "std-write", p, r);
        }
        if input.trim() == "all" {
            for t in targets() {
                report(&mut out, "write", &t, vfs::write(&t, b"pwned"));
                report(&mut out, "append", &t, vfs::append(&t, b"pwned"));
                report(&mut out, "create-dir", &t, vfs::create_dir(&t));
                report(&mut out, "delete", &t, vfs::delete(&t));
                report(&mut out, "rename-from", &t, vfs::rename(&t, "stolen.txt"));
            }
            // A legitimate file, then attempts to move it out.
            vfs::write("inside.txt", b"inside")
                .map_err(|e| format!("cannot write inside.txt: {e}"))?;
            for t in targets() {
                report(&mut out, "rename-to", &t, vfs::rename("inside.txt", &t));
            }
        }
        Ok(out)
    }
}

export_agent!(PathEscaper);
