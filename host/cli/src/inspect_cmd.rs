//! `ahv inspect`: a component's manifest and the admission verdict `ahv run`
//! would give: the verdict is [`Runtime::load`]'s, the same call `run` makes.

use std::path::PathBuf;

use ahv_runtime::{ImportKind, LoadError, Runtime};
use anyhow::Context;

use crate::exit::Exit;
use crate::out::{Failure, outln};
use crate::run_cmd::load_with_progress;
use crate::{CacheArgs, read_component};

#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    /// The agent component (.wasm).
    agent: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(crate) async fn inspect(args: &InspectArgs) -> Result<Exit, Failure> {
    let builder = args.cache.apply(Runtime::builder().max_instances(1));
    let runtime = builder.build().context("starting the runtime")?;
    let path = &args.agent;
    let refused = |e: &LoadError| Failure::Refused(format!("{}: {e}", path.display()));
    let bytes = read_component(path)?;
    let cached = args.cache.dir().is_some();
    let verdict = load_with_progress(&runtime, bytes.clone(), path, cached).await;
    let manifest = match &verdict {
        Ok(component) => component.manifest().clone(),
        Err(e @ LoadError::Cache { .. }) => {
            return Err(anyhow::anyhow!("{e}").into());
        }
        // Refused: still show what it imports and exports, if it is a component at all.
        Err(e) => runtime.inspect(&bytes).map_err(|_| refused(e))?,
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
            ImportKind::WasiDenied => {
                "WASI network (linked, but every use fails with an error: no ring grants it)".into()
            }
            ImportKind::Refused { reason } => format!("REFUSED: {reason}"),
        };
        outln!("  {:<48} {what}", import.name)?;
    }
    outln!("exports:")?;
    for e in &manifest.exports {
        outln!("  {e}")?;
    }
    if let Err(e) = &verdict {
        outln!("admission: refused (as `ahv run` would refuse it)")?;
        return Err(refused(e));
    }
    match manifest.lowest_ring {
        Some(ring) => outln!("lowest ring: {} ({})", ring.number(), ring.name())?,
        None => outln!(
            "lowest ring: none has all its capabilities; every ring treats some of its calls as breaches"
        )?,
    }
    // Only an admitted component gets here: a participant's hooks have the contract's shape.
    let participant = verdict.as_ref().is_ok_and(|c| c.saga_participant());
    outln!(
        "saga participant: {}",
        if participant { "yes" } else { "no" }
    )?;
    Ok(Exit::Ok)
}
