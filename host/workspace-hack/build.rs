//! Empty: cargo builds a package's build-dependencies only if it has a build script, and the
//! hack's `[build-dependencies]` unify the features of what build scripts and proc macros use.

fn main() {}
