//! One wasmtime `Engine` per process and one compiled module per distinct
//! wasm binary: compiling costs far more than instantiating, so every host in
//! a test binary shares the compiled code and gets only a fresh `Store`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, Result};
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::imports;
use crate::state::HostState;

/// Per-callback instruction budget; a guest that exceeds it is treated as
/// stuck rather than hanging the test run.
pub(crate) const FUEL_PER_CALL: u64 = 2_000_000_000;

pub(crate) struct Compiled {
    pub module: Module,
    pub pre: InstancePre<HostState>,
    /// Imports linked to recording traps because the host lacks them.
    pub stubbed: Vec<String>,
}

pub(crate) fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(e.into_boxed_dyn_error())
}

pub(crate) fn engine() -> Result<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.consume_fuel(true);
            // Tests are dominated by compile time, not guest speed; this
            // shaves ~15% off the once-per-binary compile with no measurable
            // cost per request.
            config.cranelift_opt_level(wasmtime::OptLevel::None);
            Engine::new(&config).map_err(|e| format!("{e:?}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("cannot create the wasmtime engine: {e}"))
}

type Cell = Arc<OnceLock<Result<Arc<Compiled>, String>>>;

/// Compiles `bytes` once per process; concurrent callers for the same bytes
/// wait for the first compilation instead of repeating it.
pub(crate) fn compiled(bytes: &[u8]) -> Result<Arc<Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<(u64, usize), Cell>>> = OnceLock::new();
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    let key = (hasher.finish(), bytes.len());

    let cell = {
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(cache.entry(key).or_default())
    };
    cell.get_or_init(|| compile(bytes).map(Arc::new).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn compile(bytes: &[u8]) -> Result<Compiled> {
    let engine = engine()?;
    let module =
        Module::new(engine, bytes).map_err(|e| wt(e).context("compiling the wasm module"))?;
    let mut linker = Linker::new(engine);
    let stubbed =
        imports::link(&mut linker, &module).map_err(|e| wt(e).context("linking host functions"))?;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| wt(e).context("pre-instantiating the wasm module"))?;
    Ok(Compiled {
        module,
        pre,
        stubbed,
    })
}
