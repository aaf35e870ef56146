//! `ahv inspect`: a component's manifest and the admission verdict `ahv run` would give.

use std::path::PathBuf;

use ahv_runtime::{ImportKind, Runtime};
use anyhow::Context;

use crate::exit::Exit;
use crate::out::{Failure, outln};
use crate::{CacheArgs, read_component};

#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    /// The agent component (.wasm).
    agent: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(crate) fn inspect(args: &InspectArgs) -> Result<Exit, Failure> {
    let mut builder = Runtime::builder().max_instances(1);
    if let Some(dir) = args.cache.dir() {
        builder = builder.cache_dir(dir);
    }
    let runtime = builder.build().context("starting the runtime")?;
    let path = &args.agent;
    let bytes = read_component(path)?;
    let manifest = match runtime.inspect(&bytes) {
        Ok(m) => m,
        Err(e) => return Err(Failure::Refused(format!("{}: {e}", path.display()))),
    };
    outln!("{}", path.display())?;
    outln!("imports:")?;
    for import in &manifest.imports {
        let what = match &import.kind {
            ImportKind::Capability(c) => {
                format!("capability {c} (from ring {})", c.default_ring().number())
            }
            ImportKind::Types => "types only".into(),
            ImportKind::Wasi => "WASI (granting nothing: no files, env, args or network)".into(),
            ImportKind::Refused { reason } => format!("REFUSED: {reason}"),
        };
        outln!("  {:<48} {what}", import.name)?;
    }
    outln!("exports:")?;
    for e in &manifest.exports {
        outln!("  {e}")?;
    }
    let refused = manifest.refused().count();
    match (refused, manifest.lowest_ring) {
        (0, Some(ring)) => {
            outln!("lowest ring: {} ({})", ring.number(), ring.name())?;
            Ok(Exit::Ok)
        }
        (0, None) => {
            outln!("lowest ring: none covers these capabilities")?;
            Ok(Exit::Refused)
        }
        (n, _) => {
            outln!("admission: refused ({n} import(s) outside the contract)")?;
            Ok(Exit::Refused)
        }
    }
}
