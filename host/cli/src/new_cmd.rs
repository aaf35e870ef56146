//! `ahv new --lang rust|python|js NAME`: a new agent project in a new
//! directory `NAME`, which builds and runs under `ahv run` as it is made: the
//! agent, its SDK, its build command, and a unit test of its logic.
//!
//! Everything a project is made of is compiled into `ahv`: the templates
//! (`host/cli/templates/`) and the copies of the repository's own files (the
//! Python and JavaScript SDKs, the JavaScript build script and lock file, the
//! WIT, the Rust lock file and toolchain file), by `include_str!` of those
//! very files, so a project is made from what this binary was built and
//! tested with, and a unit test fails when an SDK directory gains a file the
//! list lacks. The one thing not copied is the Rust SDK: a Rust agent
//! depends on the crate `agent-sdk`, which is not on crates.io and is built
//! from its sources, so its `Cargo.toml` points by path at the `guest-sdk`
//! directory of the checkout `ahv` was built from (or `--sdk PATH`).

use std::fmt;
use std::path::{Path, PathBuf};

use ahv_core::Ring;
use clap::ValueEnum;

use crate::exit::Exit;
use crate::out::{Failure, outln};

/// The componentize-py release the Python SDK is written for; the project's
/// build script and README name it.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// `ahv new`'s command line.
#[derive(clap::Args, Debug)]
pub(crate) struct NewArgs {
    /// The language of the agent.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The WIT world the agent targets, which is the ring it is meant to run
    /// in: sandbox (ring 3), standard (2), privileged (1), root (0). Python
    /// and JavaScript agents are built for it (and import every interface it
    /// has); a Rust agent imports what it calls, and the world only sets the
    /// ring its README runs it in.
    #[arg(long, value_enum, default_value_t = World::Sandbox)]
    world: World,
    /// Rust only: the Rust SDK (the `guest-sdk` directory of an Agent
    /// Hypervisor checkout) the new crate depends on by path. Default: the
    /// one of the checkout this `ahv` was built from.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
    /// The project's name, and the directory made for it in the current
    /// directory (which may exist if it is empty): a lowercase letter, then
    /// lowercase letters, digits and single dashes, at most 64 characters.
    #[arg(value_parser = ProjectName::parse)]
    name: ProjectName,
}

/// The languages an agent can be written in.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    /// Rust, on the `agent-sdk` crate (`guest-sdk/`).
    Rust,
    /// Python, built with componentize-py on the `ahv` package.
    Python,
    /// JavaScript, built with componentize-js on `sdk/sandbox.js` or `sdk/standard.js`.
    Js,
}

/// The WIT worlds an agent can target: one per ring (`wit/agent.wit`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum World {
    /// Ring 3: observe only.
    Sandbox,
    /// Ring 2: may change its files and state, run reversible actions.
    Standard,
    /// Ring 1: may also cause effects and spawn agents.
    Privileged,
    /// Ring 0: everything.
    Root,
}

impl Lang {
    /// The language's name in prose.
    fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }
}

impl World {
    /// The WIT world's name.
    fn name(self) -> &'static str {
        self.ring().name()
    }

    /// The ring whose capabilities the world imports.
    fn ring(self) -> Ring {
        match self {
            World::Sandbox => Ring::Sandbox,
            World::Standard => Ring::Standard,
            World::Privileged => Ring::Privileged,
            World::Root => Ring::Root,
        }
    }

    /// The JavaScript SDK module for the world: one per world up to
    /// `standard`; wider worlds include `standard`'s interfaces.
    fn js_sdk_module(self) -> &'static str {
        match self {
            World::Sandbox => "sandbox",
            World::Standard | World::Privileged | World::Root => "standard",
        }
    }
}

/// A project name: usable as a directory, a Cargo package and an npm package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProjectName(String);

/// Longest project name accepted.
const MAX_NAME: usize = 64;

/// Names a Rust crate cannot take: keywords, the standard crates, and the
/// SDK the crate depends on.
const RESERVED: &[&str] = &[
    "agent-sdk",
    "alloc",
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "proc-macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "node-modules",
];

impl ProjectName {
    fn parse(s: &str) -> Result<ProjectName, NewError> {
        let bad = |why: &str| NewError::BadName {
            name: s.to_string(),
            why: why.to_string(),
        };
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(bad("it is empty")),
            Some(c) if !c.is_ascii_lowercase() => {
                return Err(bad("it must start with a lowercase letter (a-z)"));
            }
            Some(_) => {}
        }
        if let Some(c) =
            chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(&format!(
                "{c:?} is not allowed: only lowercase letters, digits and dashes (it names a \
                 directory, a Cargo package and an npm package)"
            )));
        }
        if s.len() > MAX_NAME {
            return Err(bad(&format!("it is longer than {MAX_NAME} characters")));
        }
        if s.ends_with('-') || s.contains("--") {
            return Err(bad("dashes must be single and inside the name"));
        }
        if RESERVED.contains(&s) {
            return Err(bad(
                "it is reserved (a Rust keyword, a standard crate or the SDK)",
            ));
        }
        Ok(ProjectName(s.to_string()))
    }

    /// The name as given.
    fn as_str(&self) -> &str {
        &self.0
    }

    /// The Rust crate's name (the file name of its component).
    fn crate_name(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why `ahv new` made no project.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NewError {
    /// The name cannot name a project.
    #[error("bad project name {name:?}: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The project's directory exists and holds something.
    #[error("{}: exists and is not empty; choose another name, or empty it", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// Something other than a directory has the project's name.
    #[error("{}: exists and is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// `--sdk` was given for a language other than Rust.
    #[error("--sdk is for Rust agents (a Python or JavaScript project gets a copy of its SDK)")]
    SdkNotRust,
    /// The Rust SDK is not where it should be.
    #[error(
        "the Rust SDK (crate agent-sdk) is not at {}: {why}. A Rust agent depends on the \
         SDK's sources by path, by default those of the checkout this ahv was built from; \
         name the guest-sdk directory of an Agent Hypervisor checkout with --sdk PATH",
        path.display()
    )]
    SdkMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The SDK's path cannot be written into `Cargo.toml`.
    #[error("the Rust SDK's path {} is not UTF-8, so Cargo.toml cannot name it", path.display())]
    SdkPathNotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A file or directory of the project could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl From<NewError> for Failure {
    fn from(e: NewError) -> Failure {
        match e {
            NewError::BadName { .. }
            | NewError::NotEmpty { .. }
            | NewError::NotADirectory { .. }
            | NewError::SdkNotRust => Failure::usage("new", e),
            NewError::SdkMissing { .. }
            | NewError::SdkPathNotUtf8 { .. }
            | NewError::Write { .. } => Failure::Setup(e.into()),
        }
    }
}

/// Includes a repository file by its path from the repository's root.
macro_rules! repo_file {
    ($path:literal) => {
        include_str!(concat!("../../../", $path))
    };
}

/// Includes a template by its path under `host/cli/templates/`.
macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../templates/", $path))
    };
}

/// The WIT, copied into Python and JavaScript projects as `wit/`.
const WIT: &[(&str, &str)] = &[("agent.wit", repo_file!("wit/agent.wit"))];

/// The Python SDK package `ahv`, copied into Python projects as `sdk/ahv/`.
const PYTHON_SDK: &[(&str, &str)] = &[
    (
        "__init__.py",
        repo_file!("example-agents/python/sdk/ahv/__init__.py"),
    ),
    (
        "_agent.py",
        repo_file!("example-agents/python/sdk/ahv/_agent.py"),
    ),
    (
        "_wit.py",
        repo_file!("example-agents/python/sdk/ahv/_wit.py"),
    ),
    (
        "actions.py",
        repo_file!("example-agents/python/sdk/ahv/actions.py"),
    ),
    (
        "context.py",
        repo_file!("example-agents/python/sdk/ahv/context.py"),
    ),
    (
        "elevation.py",
        repo_file!("example-agents/python/sdk/ahv/elevation.py"),
    ),
    (
        "errors.py",
        repo_file!("example-agents/python/sdk/ahv/errors.py"),
    ),
    (
        "json.py",
        repo_file!("example-agents/python/sdk/ahv/json.py"),
    ),
    (
        "locks.py",
        repo_file!("example-agents/python/sdk/ahv/locks.py"),
    ),
    ("log.py", repo_file!("example-agents/python/sdk/ahv/log.py")),
    (
        "state.py",
        repo_file!("example-agents/python/sdk/ahv/state.py"),
    ),
    ("vfs.py", repo_file!("example-agents/python/sdk/ahv/vfs.py")),
];

/// The JavaScript SDK modules, copied into JavaScript projects as `sdk/`.
const JS_SDK: &[(&str, &str)] = &[
    ("sandbox.js", repo_file!("example-agents/js/sdk/sandbox.js")),
    (
        "standard.js",
        repo_file!("example-agents/js/sdk/standard.js"),
    ),
];

const JS_BUILD: &str = repo_file!("example-agents/js/build.mjs");
const JS_PACKAGE: &str = repo_file!("example-agents/js/package.json");
const JS_LOCK: &str = repo_file!("example-agents/js/package-lock.json");
/// The package name of `example-agents/js`, replaced by the project's.
const JS_PACKAGE_NAME: &str = "\"name\": \"ahv-js-agents\"";
/// Where the repository's build script finds the WIT, and where a project's does.
const JS_WIT_DEFAULT: (&str, &str) = ("resolve(here, \"../../wit\")", "resolve(here, \"wit\")");

const CARGO_LOCK: &str = repo_file!("Cargo.lock");
const RUST_TOOLCHAIN: &str = repo_file!("rust-toolchain.toml");

/// The SDK of the checkout this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk")
}

/// One file of a new project.
#[derive(Debug, Clone, PartialEq, Eq)]
struct File {
    /// Its path inside the project.
    path: String,
    /// Its contents.
    text: String,
    /// Whether it is a script to run (mode 0755).
    executable: bool,
}

fn file(path: impl Into<String>, text: impl Into<String>) -> File {
    File {
        path: path.into(),
        text: text.into(),
        executable: false,
    }
}

/// A template with its `{{key}}`s replaced.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut text = template.to_string();
    for (key, value) in vars {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    text
}

/// The Rust SDK's directory, checked: `sdk` or the default, made absolute.
///
/// # Errors
/// [`NewError::SdkMissing`] when it holds no `agent-sdk` crate.
fn rust_sdk(sdk: Option<&Path>) -> Result<PathBuf, NewError> {
    let given = sdk.map_or_else(default_sdk, Path::to_path_buf);
    let missing = |why: String| NewError::SdkMissing {
        path: given.clone(),
        why,
    };
    let dir = given
        .canonicalize()
        .map_err(|e| missing(format!("cannot resolve it: {e}")))?;
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .map_err(|e| missing(format!("cannot read its Cargo.toml: {e}")))?;
    if !manifest.lines().any(|l| l.trim() == "name = \"agent-sdk\"") {
        return Err(missing(
            "its Cargo.toml is not the crate agent-sdk's".into(),
        ));
    }
    Ok(dir)
}

/// Every file of the project `name` in `lang` for `world`; `sdk` is the
/// checked Rust SDK (Rust only).
fn project(
    lang: Lang,
    world: World,
    name: &ProjectName,
    sdk: Option<&Path>,
) -> Result<Vec<File>, NewError> {
    let ring = world.ring().number().to_string();
    let crate_name = name.crate_name();
    let mut vars = vec![
        ("name", name.as_str()),
        ("crate", crate_name.as_str()),
        ("world", world.name()),
        ("ring", ring.as_str()),
        ("componentize_py", COMPONENTIZE_PY_VERSION),
        ("sdk_module", world.js_sdk_module()),
    ];
    let copies = |under: &str, files: &[(&str, &str)]| -> Vec<File> {
        files
            .iter()
            .map(|(path, text)| file(format!("{under}/{path}"), *text))
            .collect()
    };
    let mut files = Vec::new();
    match lang {
        Lang::Rust => {
            let sdk = sdk.map_or_else(default_sdk, Path::to_path_buf);
            let path = sdk
                .to_str()
                .ok_or_else(|| NewError::SdkPathNotUtf8 { path: sdk.clone() })?;
            let sdk_path = toml::Value::String(path.to_string()).to_string();
            vars.push(("sdk_path", &sdk_path));
            files.push(file(
                "Cargo.toml",
                fill(template!("rust/Cargo.toml.tmpl"), &vars),
            ));
            files.push(file(
                "src/lib.rs",
                fill(template!("rust/src/lib.rs"), &vars),
            ));
            files.push(file("README.md", fill(template!("rust/README.md"), &vars)));
            files.push(file(".gitignore", template!("rust/.gitignore")));
            // Cargo keeps the versions of the checkout's lock file that the
            // new crate's graph uses and drops the rest.
            files.push(file("Cargo.lock", CARGO_LOCK));
            files.push(file("rust-toolchain.toml", RUST_TOOLCHAIN));
        }
        Lang::Python => {
            files.push(file(
                "src/app.py",
                fill(template!("python/src/app.py"), &vars),
            ));
            files.push(file("src/logic.py", template!("python/src/logic.py")));
            files.push(file(
                "tests/test_logic.py",
                template!("python/tests/test_logic.py"),
            ));
            files.push(File {
                executable: true,
                ..file("build.sh", fill(template!("python/build.sh"), &vars))
            });
            files.push(file(
                "README.md",
                fill(template!("python/README.md"), &vars),
            ));
            files.push(file(".gitignore", template!("python/.gitignore")));
            files.extend(copies("sdk/ahv", PYTHON_SDK));
            files.extend(copies("wit", WIT));
        }
        Lang::Js => {
            files.push(file("agent.js", fill(template!("js/agent.js"), &vars)));
            files.push(file("logic.js", template!("js/logic.js")));
            files.push(file(
                "test/logic.test.js",
                template!("js/test/logic.test.js"),
            ));
            files.push(file("README.md", fill(template!("js/README.md"), &vars)));
            files.push(file(".gitignore", template!("js/.gitignore")));
            files.push(file("package.json", js_package(name, world)));
            files.push(file(
                "package-lock.json",
                JS_LOCK.replace(JS_PACKAGE_NAME, &format!("\"name\": \"{name}\"")),
            ));
            files.push(file(
                "build.mjs",
                JS_BUILD.replace(JS_WIT_DEFAULT.0, JS_WIT_DEFAULT.1),
            ));
            files.extend(copies("sdk", JS_SDK));
            files.extend(copies("wit", WIT));
        }
    }
    Ok(files)
}

/// The project's `package.json`: the repository's (its pinned
/// dependencies), renamed, with `build` and `test` scripts.
fn js_package(name: &ProjectName, world: World) -> String {
    let scripts = format!(
        "\"scripts\": {{\n    \"build\": \"node build.mjs agent.js --world {world} -o {name}.wasm\",\n    \"test\": \"node --test\"\n  }}",
        world = world.name()
    );
    let text = JS_PACKAGE.replace(JS_PACKAGE_NAME, &format!("\"name\": \"{name}\""));
    let start = text.find("\"scripts\": {");
    let end = start.and_then(|s| text[s..].find('}').map(|e| s + e + 1));
    match (start, end) {
        (Some(s), Some(e)) => format!("{}{scripts}{}", &text[..s], &text[e..]),
        // The unit tests check the repository's package.json has scripts.
        _ => text,
    }
}

/// Makes `dir` for the project, or takes it if it exists and is empty.
/// Returns whether it was made (and so may be removed on failure).
fn make_dir(dir: &Path) -> Result<bool, NewError> {
    let write = |source| NewError::Write {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(dir).map_err(write)?;
            if entries.next().is_some() {
                return Err(NewError::NotEmpty {
                    dir: dir.to_path_buf(),
                });
            }
            Ok(false)
        }
        Ok(_) => Err(NewError::NotADirectory {
            dir: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).map_err(write)?;
            Ok(true)
        }
        Err(e) => Err(write(e)),
    }
}

/// Writes `files` under `dir`.
fn write_files(dir: &Path, files: &[File]) -> Result<(), NewError> {
    for f in files {
        let path = dir.join(&f.path);
        let write = |source| NewError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write)?;
        }
        std::fs::write(&path, &f.text).map_err(write)?;
        if f.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(write)?;
        }
    }
    Ok(())
}

/// The commands that build, test and run the project, from its directory.
fn next_steps(lang: Lang, name: &ProjectName, ring: u8) -> Vec<String> {
    let run = |wasm: &str| format!("ahv run {wasm} --ring {ring} --input Ada");
    match lang {
        Lang::Rust => vec![
            "cargo build --release --target wasm32-wasip2".into(),
            run(&format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.crate_name()
            )),
            "cargo test".into(),
        ],
        Lang::Python => vec![
            format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}   # once"),
            "./build.sh".into(),
            run(&format!("{name}.wasm")),
            "python3 -m unittest discover -s tests".into(),
        ],
        Lang::Js => vec![
            "npm ci   # once".into(),
            "npm run build".into(),
            run(&format!("{name}.wasm")),
            "npm test".into(),
        ],
    }
}

/// `ahv new`.
pub(crate) fn new(args: NewArgs) -> Result<Exit, Failure> {
    if args.sdk.is_some() && args.lang != Lang::Rust {
        return Err(NewError::SdkNotRust.into());
    }
    let sdk = match args.lang {
        Lang::Rust => Some(rust_sdk(args.sdk.as_deref())?),
        Lang::Python | Lang::Js => None,
    };
    let files = project(args.lang, args.world, &args.name, sdk.as_deref())?;
    let dir = PathBuf::from(args.name.as_str());
    let made = make_dir(&dir)?;
    if let Err(e) = write_files(&dir, &files) {
        // Leave nothing half made behind; a directory that was there stays.
        if made {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            for f in &files {
                let _ = std::fs::remove_file(dir.join(&f.path));
            }
        }
        return Err(e.into());
    }
    outln!(
        "made {name}/: a {lang} agent for the {world} world (ring {ring}), {n} files",
        name = args.name,
        lang = args.lang.name(),
        world = args.world.name(),
        ring = args.world.ring().number(),
        n = files.len(),
    )?;
    if let Some(sdk) = &sdk {
        outln!("its SDK: {}", sdk.display())?;
    }
    outln!("next, in {}/:", args.name)?;
    for step in next_steps(args.lang, &args.name, args.world.ring().number()) {
        outln!("  {step}")?;
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The names of the files directly in `dir` that end with `ext`, sorted.
    fn listing(dir: &str, ext: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(ext))
            .collect();
        names.sort();
        names
    }

    fn names(files: &[(&str, &str)]) -> Vec<String> {
        files.iter().map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn the_copies_are_every_file_of_the_sdks_and_the_wit() {
        assert_eq!(
            names(PYTHON_SDK),
            listing("example-agents/python/sdk/ahv", ".py")
        );
        assert_eq!(names(JS_SDK), listing("example-agents/js/sdk", ".js"));
        assert_eq!(names(WIT), listing("wit", ""));
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "hello", "my-agent-2", &"a".repeat(MAX_NAME)] {
            assert_eq!(ProjectName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Hello",
            "2agent",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "a/b",
            "../a",
            "a.b",
            "héllo",
            "test",
            "agent-sdk",
            &"a".repeat(MAX_NAME + 1),
        ] {
            let e = ProjectName::parse(bad).expect_err(bad);
            assert!(matches!(e, NewError::BadName { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert_eq!(
            ProjectName::parse("my-agent").unwrap().crate_name(),
            "my_agent"
        );
    }

    #[test]
    fn every_world_is_a_world_of_the_wit() {
        for world in World::value_variants() {
            let decl = format!("\nworld {} {{", world.name());
            assert!(WIT[0].1.contains(&decl), "{decl}");
            let Some(clap) = world.to_possible_value() else {
                panic!()
            };
            assert_eq!(clap.get_name(), world.name());
        }
    }

    #[test]
    fn every_template_is_filled_in() {
        let name = ProjectName::parse("my-agent").unwrap();
        let sdk = rust_sdk(None).unwrap();
        for lang in Lang::value_variants() {
            for world in World::value_variants() {
                let files = project(*lang, *world, &name, Some(&sdk)).unwrap();
                for f in &files {
                    assert!(
                        !f.text.contains("{{"),
                        "{lang:?} {world:?} {}: a placeholder is left",
                        f.path
                    );
                }
                let mut paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
                paths.sort();
                paths.dedup();
                assert_eq!(paths.len(), files.len(), "{lang:?}: a path twice");
            }
        }
    }

    fn text_of(files: &[File], path: &str) -> String {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .text
            .clone()
    }

    #[test]
    fn a_rust_crate_is_its_own_workspace_and_names_the_sdk_by_path() {
        let name = ProjectName::parse("my-agent").unwrap();
        let sdk = rust_sdk(None).unwrap();
        let files = project(Lang::Rust, World::Standard, &name, Some(&sdk)).unwrap();
        let manifest: toml::Table = toml::from_str(&text_of(&files, "Cargo.toml")).unwrap();
        assert!(manifest.contains_key("workspace"));
        assert_eq!(manifest["package"]["name"].as_str(), Some("my-agent"));
        assert_eq!(
            manifest["lib"]["crate-type"].as_array().unwrap()[0].as_str(),
            Some("cdylib")
        );
        let path = manifest["dependencies"]["agent-sdk"]["path"]
            .as_str()
            .unwrap();
        assert_eq!(Path::new(path), sdk);
        assert!(sdk.join("../wit/agent.wit").is_file());
        let readme = text_of(&files, "README.md");
        assert!(readme.contains("cargo build --release --target wasm32-wasip2"));
        assert!(readme.contains("my_agent.wasm --ring 2"));
    }

    #[test]
    fn a_missing_sdk_is_refused_naming_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = rust_sdk(Some(&dir.path().join("nowhere"))).unwrap_err();
        assert!(matches!(e, NewError::SdkMissing { .. }), "{e}");
        assert!(e.to_string().contains("--sdk PATH"), "{e}");
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"other\"\n",
        )
        .unwrap();
        let e = rust_sdk(Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("not the crate agent-sdk"), "{e}");
        assert_eq!(Failure::from(e).exit(), Exit::Setup);
    }

    #[test]
    fn a_js_project_renames_the_package_and_builds_against_its_own_wit() {
        assert_eq!(JS_LOCK.matches(JS_PACKAGE_NAME).count(), 2);
        assert_eq!(JS_PACKAGE.matches(JS_PACKAGE_NAME).count(), 1);
        assert_eq!(JS_BUILD.matches(JS_WIT_DEFAULT.0).count(), 1);
        let name = ProjectName::parse("my-agent").unwrap();
        let files = project(Lang::Js, World::Standard, &name, None).unwrap();
        let package: serde_json::Value =
            serde_json::from_str(&text_of(&files, "package.json")).unwrap();
        assert_eq!(package["name"], "my-agent");
        assert_eq!(
            package["scripts"]["build"],
            "node build.mjs agent.js --world standard -o my-agent.wasm"
        );
        assert_eq!(package["scripts"]["test"], "node --test");
        let repo_package: serde_json::Value = serde_json::from_str(JS_PACKAGE).unwrap();
        assert_eq!(package["dependencies"], repo_package["dependencies"]);
        let lock: serde_json::Value =
            serde_json::from_str(&text_of(&files, "package-lock.json")).unwrap();
        assert_eq!(lock["name"], "my-agent");
        assert_eq!(lock["packages"][""]["name"], "my-agent");
        assert!(text_of(&files, "build.mjs").contains(JS_WIT_DEFAULT.1));
        assert!(text_of(&files, "agent.js").contains("from \"./sdk/standard.js\""));
        let sandbox = project(Lang::Js, World::Sandbox, &name, None).unwrap();
        assert!(text_of(&sandbox, "agent.js").contains("from \"./sdk/sandbox.js\""));
    }

    #[test]
    fn a_python_project_builds_for_its_world_from_its_own_copies() {
        let name = ProjectName::parse("my-agent").unwrap();
        let files = project(Lang::Python, World::Standard, &name, None).unwrap();
        let build = files.iter().find(|f| f.path == "build.sh").unwrap();
        assert!(build.executable);
        assert!(
            build.text.contains(
                "componentize-py -d wit -w standard componentize app -p src -p sdk -o my-agent.wasm"
            ),
            "{}",
            build.text
        );
        assert_eq!(text_of(&files, "sdk/ahv/__init__.py"), PYTHON_SDK[0].1);
        assert_eq!(text_of(&files, "wit/agent.wit"), WIT[0].1);
    }

    #[test]
    fn an_existing_directory_is_taken_only_if_empty() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("p");
        assert!(make_dir(&new).unwrap());
        assert!(!make_dir(&new).unwrap());
        std::fs::write(new.join("x"), "").unwrap();
        let e = make_dir(&new).unwrap_err();
        assert!(matches!(e, NewError::NotEmpty { .. }), "{e}");
        assert_eq!(Failure::from(e).exit(), Exit::Usage);
        let e = make_dir(&new.join("x")).unwrap_err();
        assert!(matches!(e, NewError::NotADirectory { .. }), "{e}");
    }
}
