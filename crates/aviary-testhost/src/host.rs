//! The test-facing API: [`Host`] drives the plugin like Envoy would, and
//! [`HttpStream`] drives one HTTP request/response through it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{Instance, Store, Val, ValType};

use crate::abi::{
    pairs_from_strs, pairs_to_strings, Action, LogLevel, MetricKind, Pairs, Status, StreamType,
};
use crate::engine::{self, wt, Compiled, FUEL_PER_CALL};
use crate::imports::HostTrap;
use crate::policy::Category;
use crate::state::{
    CallOutcome, CallResponse, ContextKind, ContextState, DeliveredResponse, DispatchAttempt,
    FlowState, HostState, HttpCall, LocalResponse, LogEntry, Metric, MetricValue,
};

/// How many log lines error messages quote.
const RECENT_LOGS: usize = 25;

/// A property path: a `&str` whose segments are separated by `\0`
/// (`"source\0address"`), or a list of segments (`["source", "address"]`).
pub trait PropertyPath {
    /// The path as the ABI carries it: segments joined by NUL.
    fn encode(&self) -> Vec<u8>;
}

impl PropertyPath for &str {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl PropertyPath for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl PropertyPath for &[&str] {
    fn encode(&self) -> Vec<u8> {
        self.join("\0").into_bytes()
    }
}

impl<const N: usize> PropertyPath for [&str; N] {
    fn encode(&self) -> Vec<u8> {
        self.join("\0").into_bytes()
    }
}

impl PropertyPath for Vec<&str> {
    fn encode(&self) -> Vec<u8> {
        self.join("\0").into_bytes()
    }
}

/// A property value in Envoy's encoding: strings and bytes as-is, integers as
/// 8-byte little-endian `i64`, booleans as one byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyValue(pub Vec<u8>);

impl From<&str> for PropertyValue {
    fn from(v: &str) -> Self {
        Self(v.as_bytes().to_vec())
    }
}

impl From<String> for PropertyValue {
    fn from(v: String) -> Self {
        Self(v.into_bytes())
    }
}

impl From<&[u8]> for PropertyValue {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for PropertyValue {
    fn from(v: &[u8; N]) -> Self {
        Self(v.to_vec())
    }
}

impl From<Vec<u8>> for PropertyValue {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<i64> for PropertyValue {
    fn from(v: i64) -> Self {
        Self(v.to_le_bytes().to_vec())
    }
}

impl From<i32> for PropertyValue {
    fn from(v: i32) -> Self {
        i64::from(v).into()
    }
}

impl From<u32> for PropertyValue {
    fn from(v: u32) -> Self {
        i64::from(v).into()
    }
}

impl From<u64> for PropertyValue {
    fn from(v: u64) -> Self {
        Self(v.to_le_bytes().to_vec())
    }
}

impl From<bool> for PropertyValue {
    fn from(v: bool) -> Self {
        Self(vec![u8::from(v)])
    }
}

/// What `proxy_on_configure` answered.
#[derive(Clone, Debug)]
#[must_use]
pub struct Configured {
    accepted: bool,
    logs: Vec<LogEntry>,
}

impl Configured {
    /// Whether the plugin accepted the configuration.
    pub fn is_accepted(&self) -> bool {
        self.accepted
    }

    /// Log lines the plugin wrote while configuring.
    pub fn logs(&self) -> &[LogEntry] {
        &self.logs
    }

    /// Fails unless the plugin accepted the configuration.
    pub fn expect_ok(self) -> Result<()> {
        if self.accepted {
            return Ok(());
        }
        bail!(
            "proxy_on_configure returned false (configuration rejected); its logs:\n{}",
            format_logs(&self.logs)
        )
    }

    /// Fails unless the plugin rejected the configuration.
    pub fn expect_rejected(self) -> Result<()> {
        if !self.accepted {
            return Ok(());
        }
        bail!(
            "proxy_on_configure returned true, but the configuration should have been rejected; its logs:\n{}",
            format_logs(&self.logs)
        )
    }
}

impl Action {
    /// Fails unless the action is `Continue`.
    pub fn expect_continue(self) -> Result<()> {
        match self {
            Action::Continue => Ok(()),
            Action::Pause => bail!("expected the plugin to continue, but it paused"),
        }
    }

    /// Fails unless the action is `Pause`.
    pub fn expect_pause(self) -> Result<()> {
        match self {
            Action::Pause => Ok(()),
            Action::Continue => bail!("expected the plugin to pause, but it continued"),
        }
    }
}

/// `expect_continue`/`expect_pause` directly on a callback's `Result`, so a
/// step reads `s.request_headers(..).expect_continue()?`.
pub trait ActionResultExt {
    /// Propagates an error, else fails unless the action is `Continue`.
    fn expect_continue(self) -> Result<()>;
    /// Propagates an error, else fails unless the action is `Pause`.
    fn expect_pause(self) -> Result<()>;
}

impl ActionResultExt for Result<Action> {
    fn expect_continue(self) -> Result<()> {
        self?.expect_continue()
    }

    fn expect_pause(self) -> Result<()> {
        self?.expect_pause()
    }
}

/// `expect_ok`/`expect_rejected` directly on `configure`'s `Result`.
pub trait ConfiguredResultExt {
    /// Propagates an error, else fails unless the configuration was accepted.
    fn expect_ok(self) -> Result<()>;
    /// Propagates an error, else fails unless the configuration was rejected.
    fn expect_rejected(self) -> Result<()>;
}

impl ConfiguredResultExt for Result<Configured> {
    fn expect_ok(self) -> Result<()> {
        self?.expect_ok()
    }

    fn expect_rejected(self) -> Result<()> {
        self?.expect_rejected()
    }
}

fn format_logs(logs: &[LogEntry]) -> String {
    if logs.is_empty() {
        return "  (none)".into();
    }
    let skip = logs.len().saturating_sub(RECENT_LOGS);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "  ... {skip} earlier lines");
    }
    for l in &logs[skip..] {
        let _ = writeln!(out, "  [{} ctx={}] {}", l.level, l.context_id, l.message);
    }
    out.trim_end().to_owned()
}

fn val_matches(ty: &ValType, v: &Val) -> bool {
    matches!(
        (ty, v),
        (ValType::I32, Val::I32(_))
            | (ValType::I64, Val::I64(_))
            | (ValType::F32, Val::F32(_))
            | (ValType::F64, Val::F64(_))
    )
}

fn display_args(args: &[Val]) -> String {
    args.iter()
        .map(|v| match v {
            Val::I32(x) => x.to_string(),
            Val::I64(x) => x.to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn i32s(args: &[u32]) -> Vec<Val> {
    args.iter().map(|&a| Val::I32(a as i32)).collect()
}

fn lowercase_keys(pairs: Pairs) -> Pairs {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn first_value(pairs: &Pairs, name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn ns_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Inner {
    store: Store<HostState>,
    instance: Instance,
    compiled: Arc<Compiled>,
    started: bool,
    poisoned: Option<String>,
    /// Set once a failure (trap or unexpected call) was returned to the test,
    /// so dropping the host does not report it a second time.
    failed: bool,
}

impl Inner {
    fn state(&self) -> &HostState {
        self.store.data()
    }

    fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    fn root(&self) -> u32 {
        self.state().root_id
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls export `name` as context `ctx`. `Ok(None)` means the module does
    /// not export it (every `proxy_on_*` callback is optional).
    fn call(&mut self, ctx: u32, name: &str, args: &[Val]) -> Result<Option<Vec<Val>>> {
        let what = format!("{name}({})", display_args(args));
        if let Some(reason) = &self.poisoned {
            bail!("cannot call {what}: the wasm instance is unusable because {reason}");
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let ty = func.ty(&self.store);
        if ty.params().len() != args.len()
            || !ty.params().zip(args).all(|(t, v)| val_matches(&t, v))
        {
            bail!("cannot call {what}: the export's signature is {ty:?}");
        }
        let mut results = vec![Val::I32(0); ty.results().len()];
        self.store.set_fuel(FUEL_PER_CALL).map_err(wt)?;
        let logs_before = self.state().logs.len();
        {
            let s = self.state_mut();
            s.active_context = ctx;
            s.effective_context = ctx;
        }
        let outcome = func.call(&mut self.store, args, &mut results);
        {
            let s = self.state_mut();
            s.active_context = 0;
            s.effective_context = 0;
        }
        if let Err(e) = outcome {
            // A command module's `_start` ends with proc_exit(0) on success.
            let clean_exit = matches!(
                e.root_cause().downcast_ref::<HostTrap>(),
                Some(HostTrap::ProcExit(0))
            );
            if name == "_start" && clean_exit {
                return Ok(Some(results));
            }
            let message = self.describe_trap(&what, ctx, &e, logs_before);
            self.poisoned = Some(format!("it trapped in {what}"));
            self.failed = true;
            return Err(anyhow!(message));
        }
        self.check(&what, ctx)?;
        self.run_done_requests()?;
        Ok(Some(results))
    }

    fn call_u32(&mut self, ctx: u32, name: &str, args: &[u32]) -> Result<Option<u32>> {
        let results = self.call(ctx, name, &i32s(args))?;
        Ok(results.and_then(|r| match r.first() {
            Some(Val::I32(v)) => Some(*v as u32),
            _ => None,
        }))
    }

    fn describe_trap(
        &mut self,
        what: &str,
        ctx: u32,
        e: &wasmtime::Error,
        logs_before: usize,
    ) -> String {
        let mut out = format!("the guest trapped in {what} (context {ctx}): ");
        match e.root_cause().downcast_ref::<HostTrap>() {
            Some(t) => out.push_str(&t.to_string()),
            None => out.push_str(&e.root_cause().to_string()),
        }
        if matches!(
            e.root_cause().downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::OutOfFuel)
        ) {
            let _ = write!(out, " (over {FUEL_PER_CALL} instructions: is it looping?)");
        }
        let state = self.store.data_mut();
        let panics: Vec<_> = state.logs[logs_before..]
            .iter()
            .filter(|l| {
                l.level == LogLevel::Critical || l.source == crate::state::LogSource::Stderr
            })
            .map(|l| l.message.clone())
            .collect();
        if !panics.is_empty() {
            let _ = write!(
                out,
                "\nguest panic / error output:\n  {}",
                panics.join("\n  ")
            );
        }
        let partial = String::from_utf8_lossy(
            state
                .stderr
                .rsplit(|&b| b == b'\n')
                .next()
                .unwrap_or_default(),
        )
        .into_owned();
        if !partial.is_empty() {
            let _ = write!(out, "\nunterminated stderr: {partial}");
        }
        let violations = state.policy.take_new();
        if !violations.is_empty() {
            let _ = write!(
                out,
                "\nunexpected host calls:\n  - {}",
                violations.join("\n  - ")
            );
        }
        let _ = write!(out, "\nrecent logs:\n{}", format_logs(&state.logs));
        let _ = write!(out, "\nwasmtime error:\n{e:?}");
        out
    }

    /// Turns unexpected host calls recorded during `what` into an error.
    fn check(&mut self, what: &str, ctx: u32) -> Result<()> {
        let violations = self.state_mut().policy.take_new();
        if violations.is_empty() {
            return Ok(());
        }
        self.failed = true;
        bail!(
            "unexpected host calls during {what} (context {ctx}):\n  - {}\n\
             If they are intended, declare them before the step with Host::allow/allow_matching \
             or Host::expect/expect_matching.\nrecent logs:\n{}",
            violations.join("\n  - "),
            format_logs(&self.state().logs)
        )
    }

    /// Finishes contexts the guest released with `proxy_done`.
    fn run_done_requests(&mut self) -> Result<()> {
        loop {
            let ids = std::mem::take(&mut self.state_mut().done_requested);
            if ids.is_empty() {
                return Ok(());
            }
            for id in ids {
                if self
                    .state()
                    .contexts
                    .get(&id)
                    .is_some_and(|c| c.kind == ContextKind::Http)
                {
                    self.call_u32(id, "proxy_on_log", &[id])?;
                }
                self.call_u32(id, "proxy_on_delete", &[id])?;
                if let Some(c) = self.state_mut().contexts.get_mut(&id) {
                    c.deleted = true;
                }
            }
        }
    }

    fn start_vm(&mut self) -> Result<()> {
        if self.started {
            bail!("start_vm: the VM is already started");
        }
        self.started = true;
        if self.has_export("_initialize") {
            self.call(0, "_initialize", &[])?;
            if self.has_export("main") {
                self.call(0, "main", &i32s(&[0, 0]))?;
            }
        } else if self.has_export("_start") {
            self.call(0, "_start", &[])?;
        }
        let root = self.root();
        self.state_mut()
            .contexts
            .insert(root, ContextState::new(ContextKind::Root, root));
        self.call_u32(root, "proxy_on_context_create", &[root, 0])?;
        let size = self.state().vm_config.len() as u32;
        if self.call_u32(root, "proxy_on_vm_start", &[root, size])? == Some(0) {
            bail!(
                "proxy_on_vm_start returned false; recent logs:\n{}",
                format_logs(&self.state().logs)
            );
        }
        Ok(())
    }

    fn ensure_started(&mut self) -> Result<()> {
        if !self.started {
            self.start_vm()?;
        }
        Ok(())
    }

    fn configure(&mut self, config: &[u8]) -> Result<Configured> {
        self.ensure_started()?;
        let root = self.root();
        self.state_mut().plugin_config = config.to_vec();
        let before = self.state().logs.len();
        let accepted = self
            .call_u32(root, "proxy_on_configure", &[root, config.len() as u32])?
            .is_none_or(|v| v != 0);
        Ok(Configured {
            accepted,
            logs: self.state().logs[before..].to_vec(),
        })
    }

    fn new_stream(&mut self) -> Result<u32> {
        self.ensure_started()?;
        let root = self.root();
        let s = self.state_mut();
        let id = s.next_context_id;
        s.next_context_id += 1;
        s.contexts
            .insert(id, ContextState::new(ContextKind::Http, root));
        self.call_u32(id, "proxy_on_context_create", &[id, root])?;
        Ok(id)
    }

    fn stream(&self, id: u32) -> &ContextState {
        // Streams are never removed from the map, only marked deleted.
        &self.state().contexts[&id]
    }

    fn live_stream(&mut self, id: u32, step: &str) -> Result<&mut ContextState> {
        match self.state_mut().contexts.get_mut(&id) {
            Some(c) if !c.deleted => Ok(c),
            _ => bail!("{step}: HTTP stream {id} was already deleted"),
        }
    }

    fn stream_callback(
        &mut self,
        id: u32,
        name: &str,
        args: &[u32],
        request: bool,
    ) -> Result<Action> {
        let raw = self.call_u32(id, name, args)?;
        let action = match raw {
            None => Action::Continue,
            Some(v) => Action::from_raw(v as i32)
                .ok_or_else(|| anyhow!("{name} returned {v}, which is not a proxy_action_t"))?,
        };
        if let Some(c) = self.state_mut().contexts.get_mut(&id) {
            let flow = if request {
                &mut c.request_flow
            } else {
                &mut c.response_flow
            };
            if *flow != FlowState::Reset {
                *flow = match action {
                    Action::Continue => FlowState::Flowing,
                    Action::Pause => FlowState::Paused,
                };
            }
        }
        Ok(action)
    }

    fn deliver(
        &mut self,
        token: u32,
        outcome: CallOutcome,
        response: DeliveredResponse,
    ) -> Result<()> {
        let Some(index) = self.state().calls.iter().position(|c| c.token == token) else {
            let known: Vec<_> = self.state().calls.iter().map(|c| c.token).collect();
            bail!("there is no HTTP call with token {token}; dispatched tokens: {known:?}");
        };
        let call = &self.state().calls[index];
        if call.outcome != CallOutcome::Pending {
            bail!(
                "HTTP call {token} to {} was already resolved: {:?}",
                call.upstream,
                call.outcome
            );
        }
        let root = call.root_context_id;
        let counts = [
            response.headers.len() as u32,
            response.body.len() as u32,
            response.trailers.len() as u32,
        ];
        let status = match outcome {
            CallOutcome::Failed => (Status::BrokenConnection as u32, "reset".to_owned()),
            CallOutcome::TimedOut => (Status::BrokenConnection as u32, "timeout".to_owned()),
            _ => (0, String::new()),
        };
        let s = self.state_mut();
        s.calls[index].outcome = outcome;
        s.delivering = Some(response);
        s.status = status;
        let result = self.call_u32(
            root,
            "proxy_on_http_call_response",
            &[root, token, counts[0], counts[1], counts[2]],
        );
        let s = self.state_mut();
        s.delivering = None;
        s.status = (0, String::new());
        result.map(|_| ())
    }

    fn tick(&mut self) -> Result<()> {
        self.ensure_started()?;
        let s = self.state_mut();
        if s.tick_period_ms == 0 {
            bail!(
                "tick: the plugin has not set a tick period (proxy_set_tick_period_milliseconds)"
            );
        }
        s.next_tick_ns = Some(s.realtime_ns + u64::from(s.tick_period_ms) * 1_000_000);
        let root = self.root();
        self.call_u32(root, "proxy_on_tick", &[root])?;
        Ok(())
    }

    fn run_for(&mut self, duration: Duration) -> Result<()> {
        let target = self
            .state()
            .realtime_ns
            .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        loop {
            let s = self.state();
            let tick = s.next_tick_ns.filter(|_| s.tick_period_ms > 0);
            let timeout = s
                .calls
                .iter()
                .filter(|c| c.is_pending() && !c.timeout.is_zero())
                .map(|c| {
                    let deadline = ns_since_epoch(c.dispatched_at)
                        .saturating_add(u64::try_from(c.timeout.as_nanos()).unwrap_or(u64::MAX));
                    (deadline, c.token)
                })
                .min();
            let next_tick = tick.filter(|&t| t <= target);
            let next_timeout = timeout.filter(|&(t, _)| t <= target);
            // On a tie the timeout fires first, as the older event.
            let tick_at = match (next_tick, next_timeout) {
                (None, None) => break,
                (Some(t), Some((d, _))) if t < d => Some(t),
                (Some(t), None) => Some(t),
                _ => None,
            };
            match (tick_at, next_timeout) {
                (Some(t), _) => {
                    self.set_clock(t);
                    self.tick()?;
                }
                (None, Some((deadline, token))) => {
                    self.set_clock(deadline);
                    self.deliver(token, CallOutcome::TimedOut, DeliveredResponse::default())?;
                }
                (None, None) => break,
            }
        }
        self.set_clock(target);
        Ok(())
    }

    /// Moves the fake clocks forward to wall-clock time `ns` (never back).
    fn set_clock(&mut self, ns: u64) {
        let now = self.state().realtime_ns;
        if ns > now {
            self.state_mut().advance(Duration::from_nanos(ns - now));
        }
    }

    fn deliver_queue_ready(&mut self) -> Result<()> {
        loop {
            let ready = std::mem::take(&mut self.state_mut().queue_ready);
            if ready.is_empty() {
                return Ok(());
            }
            for (owner, id) in ready {
                self.call_u32(owner, "proxy_on_queue_ready", &[owner, id])?;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.failed || std::thread::panicking() {
            return;
        }
        let policy = &mut self.store.data_mut().policy;
        let mut problems = policy.take_new();
        problems.extend(policy.unmet());
        if !problems.is_empty() {
            panic!(
                "aviary-testhost: the test ended with unchecked problems:\n  - {}",
                problems.join("\n  - ")
            );
        }
    }
}

/// An emulated Envoy running one instance of a proxy-wasm plugin.
///
/// See the [crate documentation](crate) for an overview and an example.
/// `Host` and its [`HttpStream`]s share state, so a test can interleave
/// stream steps with host steps (answering HTTP calls, ticking the timer).
/// A `Host` is not `Send`: create one per test.
pub struct Host {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// Loads the plugin at `path`. The compiled module is cached for the
    /// whole test binary; each `Host` gets a fresh instance. No guest code
    /// runs until [`start_vm`](Self::start_vm) (or the first step that needs it).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the wasm module {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("loading {}", path.display()))
    }

    /// Loads the release build of the Aviary filter (see [`crate::release_wasm`]).
    pub fn release() -> Result<Self> {
        Self::load(crate::release_wasm()?)
    }

    /// Loads a plugin from wasm bytes (compiled once per distinct content).
    pub fn from_bytes(wasm: &[u8]) -> Result<Self> {
        let compiled = engine::compiled(wasm)?;
        let mut store = Store::new(engine::engine()?, HostState::new());
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| wt(e).context("instantiating the wasm module"))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .ok();
        let state = store.data_mut();
        state.memory = memory;
        state.alloc = alloc;
        Ok(Self {
            inner: Rc::new(RefCell::new(Inner {
                store,
                instance,
                compiled,
                started: false,
                poisoned: None,
                failed: false,
            })),
        })
    }

    fn with_state(self, f: impl FnOnce(&mut HostState)) -> Self {
        f(self.inner.borrow_mut().state_mut());
        self
    }

    /// Sets a host-wide property (streams can override with
    /// [`HttpStream::set_property`]).
    pub fn with_property(self, path: impl PropertyPath, value: impl Into<PropertyValue>) -> Self {
        self.set_property(path, value);
        self
    }

    /// Seeds the generator behind WASI `random_get` (default seed: 0).
    pub fn with_random_seed(self, seed: u64) -> Self {
        self.with_state(|s| s.rng = crate::state::Rng::new(seed))
    }

    /// Adds an environment variable visible through WASI `environ_get`.
    pub fn with_env(self, key: &str, value: &str) -> Self {
        self.with_state(|s| s.env.push((key.into(), value.into())))
    }

    /// Sets the level `proxy_get_log_level` reports; lines below it are
    /// dropped, as Envoy does. Default: `Trace` (everything is captured).
    pub fn with_log_level(self, level: LogLevel) -> Self {
        self.with_state(|s| s.log_level = level)
    }

    /// Sets the VM configuration passed to `proxy_on_vm_start`.
    pub fn with_vm_config(self, config: impl AsRef<[u8]>) -> Self {
        let config = config.as_ref().to_vec();
        self.with_state(|s| s.vm_config = config)
    }

    /// Sets the VM id used for shared queues (default: empty).
    pub fn with_vm_id(self, vm_id: &str) -> Self {
        self.with_state(|s| s.vm_id = vm_id.into())
    }

    /// Declares a cluster `proxy_http_call` may target; calls to undeclared
    /// clusters get `BadArgument`, as in Envoy.
    pub fn with_cluster(self, name: &str) -> Self {
        self.add_cluster(name);
        self
    }

    /// Sets the fake wall clock (default: 2024-01-01T00:00:00Z).
    pub fn with_time(self, time: SystemTime) -> Self {
        self.set_time(time);
        self
    }

    /// Builder form of [`allow`](Self::allow).
    pub fn with_allowed(self, category: Category) -> Self {
        self.allow(category);
        self
    }

    // ---- lifecycle ----

    /// Starts the VM: `_initialize` (or `_start`), then
    /// `proxy_on_context_create(root, 0)` and `proxy_on_vm_start`. Fails if
    /// the plugin returns false.
    pub fn start_vm(&self) -> Result<()> {
        self.inner.borrow_mut().start_vm()
    }

    /// Calls `proxy_on_configure` with `config` as the plugin configuration,
    /// starting the VM first if needed.
    pub fn configure(&self, config: impl AsRef<[u8]>) -> Result<Configured> {
        self.inner.borrow_mut().configure(config.as_ref())
    }

    /// Creates an HTTP stream context (`proxy_on_context_create(id, root)`).
    pub fn http_stream(&self) -> Result<HttpStream> {
        let id = self.inner.borrow_mut().new_stream()?;
        Ok(HttpStream {
            inner: Rc::clone(&self.inner),
            id,
        })
    }

    /// Shuts the plugin down: `proxy_on_done(root)`, then `proxy_on_delete`
    /// unless the plugin deferred with `false` (it then calls `proxy_done`).
    /// Returns what `proxy_on_done` returned.
    pub fn shutdown(&self) -> Result<bool> {
        let mut inner = self.inner.borrow_mut();
        let root = inner.root();
        let done = inner
            .call_u32(root, "proxy_on_done", &[root])?
            .is_none_or(|v| v != 0);
        if done {
            inner.call_u32(root, "proxy_on_delete", &[root])?;
            if let Some(c) = inner.state_mut().contexts.get_mut(&root) {
                c.deleted = true;
            }
        } else {
            inner.state_mut().pending_done.push(root);
        }
        Ok(done)
    }

    /// The root (plugin) context id.
    pub fn root_context_id(&self) -> u32 {
        self.inner.borrow().root()
    }

    // ---- time ----

    /// Fires `proxy_on_tick` once. Fails if the plugin set no tick period.
    pub fn tick(&self) -> Result<()> {
        self.inner.borrow_mut().tick()
    }

    /// The tick period the plugin asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.inner.borrow().state().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Advances the fake clocks without firing anything.
    pub fn advance_clock(&self, by: Duration) {
        self.inner.borrow_mut().state_mut().advance(by);
    }

    /// Advances the fake clocks by `duration` as a running Envoy would:
    /// every tick that falls due fires, and every pending HTTP call whose
    /// timeout expires is delivered as timed out, in time order.
    pub fn run_for(&self, duration: Duration) -> Result<()> {
        self.inner.borrow_mut().run_for(duration)
    }

    /// The fake wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.inner.borrow().state().now()
    }

    /// Sets the fake wall clock (the monotonic clock moves by the same amount
    /// if this goes forward, and stays if it goes back).
    pub fn set_time(&self, time: SystemTime) {
        let mut inner = self.inner.borrow_mut();
        let ns = ns_since_epoch(time);
        let s = inner.state_mut();
        if ns > s.realtime_ns {
            s.monotonic_ns += ns - s.realtime_ns;
        }
        s.realtime_ns = ns;
    }

    // ---- HTTP calls ----

    /// Declares a cluster `proxy_http_call` may target.
    pub fn add_cluster(&self, name: &str) -> &Self {
        let mut inner = self.inner.borrow_mut();
        let clusters = &mut inner.state_mut().clusters;
        if !clusters.iter().any(|c| c == name) {
            clusters.push(name.into());
        }
        self
    }

    /// Makes the next `proxy_http_call` return `status` (e.g.
    /// `Status::InternalFailure`) whatever its arguments.
    pub fn fail_next_dispatch(&self, status: Status) -> &Self {
        self.inner.borrow_mut().state_mut().forced_dispatch_status = Some(status);
        self
    }

    /// Every accepted HTTP call, in dispatch order.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.inner.borrow().state().calls.clone()
    }

    /// Accepted HTTP calls still waiting for an answer.
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        self.http_calls()
            .into_iter()
            .filter(HttpCall::is_pending)
            .collect()
    }

    /// The call with `token`.
    pub fn http_call(&self, token: u32) -> Option<HttpCall> {
        self.http_calls().into_iter().find(|c| c.token == token)
    }

    /// The most recently accepted call.
    pub fn last_call(&self) -> Option<HttpCall> {
        self.inner.borrow().state().calls.last().cloned()
    }

    /// Every `proxy_http_call`, including refused ones, with the status returned.
    pub fn dispatch_attempts(&self) -> Vec<DispatchAttempt> {
        self.inner.borrow().state().attempts.clone()
    }

    /// Answers call `token` with `:status` `status`, extra `headers` and
    /// `body`, delivering `proxy_on_http_call_response` to the root context
    /// (Envoy's behaviour; the Rust SDK routes it by token and silently drops
    /// it when the dispatching stream is gone).
    pub fn respond_to_call(
        &self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Result<()> {
        let mut response = CallResponse::new(status, body.as_ref());
        for (k, v) in headers {
            response = response.header(k, v);
        }
        self.respond_to_call_with(token, response)
    }

    /// Answers call `token` with a full response (headers are used as given;
    /// include `:status`).
    pub fn respond_to_call_with(&self, token: u32, response: CallResponse) -> Result<()> {
        let status = response
            .headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok());
        let delivered = DeliveredResponse {
            headers: lowercase_keys(pairs_from_strs(
                &response
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            )),
            body: response.body,
            trailers: lowercase_keys(pairs_from_strs(
                &response
                    .trailers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            )),
        };
        self.inner
            .borrow_mut()
            .deliver(token, CallOutcome::Responded { status }, delivered)
    }

    /// Fails call `token` (connection reset): delivered with no headers,
    /// body or trailers.
    pub fn fail_call(&self, token: u32) -> Result<()> {
        self.inner
            .borrow_mut()
            .deliver(token, CallOutcome::Failed, DeliveredResponse::default())
    }

    /// Times call `token` out now: delivered with no headers, body or
    /// trailers. (Real Envoy may instead answer with a local 504; simulate
    /// that with [`respond_to_call`](Self::respond_to_call) if it matters.)
    pub fn timeout_call(&self, token: u32) -> Result<()> {
        self.inner
            .borrow_mut()
            .deliver(token, CallOutcome::TimedOut, DeliveredResponse::default())
    }

    // ---- logs ----

    /// Every captured log line, oldest first.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.inner.borrow().state().logs.clone()
    }

    /// Captured log lines at `level` or above.
    pub fn logs_at_least(&self, level: LogLevel) -> Vec<LogEntry> {
        self.logs()
            .into_iter()
            .filter(|l| l.level >= level)
            .collect()
    }

    /// Fails unless some line at exactly `level` contains `needle`.
    /// (Error-level lines must also be allowed *before* they are logged;
    /// see [`Category::ErrorLog`].)
    pub fn expect_log_containing(&self, level: LogLevel, needle: &str) -> Result<()> {
        let logs = self.logs();
        if logs
            .iter()
            .any(|l| l.level == level && l.message.contains(needle))
        {
            return Ok(());
        }
        bail!(
            "no {level} log line contains {needle:?}; captured logs:\n{}",
            format_logs(&logs)
        )
    }

    /// Everything the guest wrote to stdout.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.inner.borrow().state().stdout).into_owned()
    }

    /// Everything the guest wrote to stderr.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.inner.borrow().state().stderr).into_owned()
    }

    // ---- metrics ----

    /// Every defined metric with its value, in definition order.
    pub fn metrics(&self) -> Vec<Metric> {
        self.inner
            .borrow()
            .state()
            .metrics
            .iter()
            .map(|m| m.snapshot())
            .collect()
    }

    fn metric(&self, name: &str, kind: MetricKind) -> Option<MetricValue> {
        self.inner
            .borrow()
            .state()
            .metrics
            .iter()
            .find(|m| m.name == name && m.kind == kind)
            .map(|m| m.snapshot().value)
    }

    /// The counter's value, if the plugin defined a counter named `name`.
    pub fn counter(&self, name: &str) -> Option<u64> {
        match self.metric(name, MetricKind::Counter)? {
            MetricValue::Counter(v) => Some(v),
            _ => None,
        }
    }

    /// The gauge's value, if the plugin defined a gauge named `name`.
    pub fn gauge(&self, name: &str) -> Option<i64> {
        match self.metric(name, MetricKind::Gauge)? {
            MetricValue::Gauge(v) => Some(v),
            _ => None,
        }
    }

    /// Every value recorded, if the plugin defined a histogram named `name`.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        match self.metric(name, MetricKind::Histogram)? {
            MetricValue::Histogram(v) => Some(v),
            _ => None,
        }
    }

    // ---- properties, shared data, queues ----

    /// Sets a host-wide property.
    pub fn set_property(&self, path: impl PropertyPath, value: impl Into<PropertyValue>) -> &Self {
        let (path, value) = (path.encode(), value.into().0);
        self.inner
            .borrow_mut()
            .state_mut()
            .properties
            .insert(path, value);
        self
    }

    /// A host-wide property, including values the plugin set from its root context.
    pub fn property(&self, path: impl PropertyPath) -> Option<Vec<u8>> {
        self.inner
            .borrow()
            .state()
            .properties
            .get(&path.encode())
            .cloned()
    }

    /// Shared data under `key` and its CAS value.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner
            .borrow()
            .state()
            .shared_data
            .get(key.as_bytes())
            .cloned()
    }

    /// Sets shared data as another VM would (bumps the CAS value).
    pub fn set_shared_data(&self, key: &str, value: impl AsRef<[u8]>) -> &Self {
        let mut inner = self.inner.borrow_mut();
        let s = inner.state_mut();
        let cas = s.next_cas;
        s.next_cas = cas.wrapping_add(1).max(1);
        s.shared_data
            .insert(key.as_bytes().to_vec(), (value.as_ref().to_vec(), cas));
        self
    }

    /// Enqueues `item` on the queue the plugin registered as `name` (as
    /// another VM would) and delivers `proxy_on_queue_ready`.
    pub fn enqueue(&self, name: &str, item: impl AsRef<[u8]>) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let s = inner.state_mut();
        let vm_id = s.vm_id.clone();
        let Some(index) = s
            .queues
            .iter()
            .position(|q| q.name == name && q.vm_id == vm_id)
        else {
            bail!("the plugin registered no shared queue named {name:?}");
        };
        let q = &mut s.queues[index];
        q.items.push_back(item.as_ref().to_vec());
        let owner = q.owner_root;
        s.queue_ready.push((owner, index as u32 + 1));
        inner.deliver_queue_ready()
    }

    /// Takes the oldest item from queue `name` (what the plugin enqueued).
    pub fn dequeue(&self, name: &str) -> Option<Vec<u8>> {
        let mut inner = self.inner.borrow_mut();
        let s = inner.state_mut();
        let vm_id = s.vm_id.clone();
        s.queues
            .iter_mut()
            .find(|q| q.name == name && q.vm_id == vm_id)?
            .items
            .pop_front()
    }

    /// Delivers `proxy_on_queue_ready` for items the plugin itself enqueued.
    pub fn deliver_queue_ready(&self) -> Result<()> {
        self.inner.borrow_mut().deliver_queue_ready()
    }

    // ---- strictness ----

    /// Allows any number of calls in `category`.
    pub fn allow(&self, category: Category) -> &Self {
        self.inner
            .borrow_mut()
            .state_mut()
            .policy
            .allow(category, None, None);
        self
    }

    /// Allows any number of calls in `category` whose detail contains `needle`.
    pub fn allow_matching(&self, category: Category, needle: &str) -> &Self {
        self.inner
            .borrow_mut()
            .state_mut()
            .policy
            .allow(category, Some(needle), None);
        self
    }

    /// Expects exactly `times` calls in `category`; more fail at once, fewer
    /// fail in [`verify`](Self::verify) or when the host is dropped.
    pub fn expect(&self, category: Category, times: usize) -> &Self {
        self.inner
            .borrow_mut()
            .state_mut()
            .policy
            .allow(category, None, Some(times));
        self
    }

    /// Expects exactly `times` calls in `category` whose detail contains `needle`.
    pub fn expect_matching(&self, category: Category, needle: &str, times: usize) -> &Self {
        self.inner
            .borrow_mut()
            .state_mut()
            .policy
            .allow(category, Some(needle), Some(times));
        self
    }

    /// Fails if an unexpected call went unreported or an expectation is unmet.
    /// (Dropping the host performs the same check, panicking.)
    pub fn verify(&self) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let policy = &mut inner.state_mut().policy;
        let mut problems = policy.take_new();
        problems.extend(policy.unmet());
        if problems.is_empty() {
            return Ok(());
        }
        inner.failed = true;
        bail!(
            "aviary-testhost verify failed:\n  - {}",
            problems.join("\n  - ")
        )
    }

    /// Every unexpected call recorded so far (reported or not).
    pub fn violations(&self) -> Vec<String> {
        self.inner.borrow().state().policy.all_violations().to_vec()
    }

    // ---- raw access ----

    /// Calls any export with raw arguments, as context `context_id`, with
    /// the same trap and strictness checks as the helpers. Fails if the
    /// export does not exist.
    pub fn call_export(&self, context_id: u32, name: &str, args: &[Val]) -> Result<Vec<Val>> {
        self.inner
            .borrow_mut()
            .call(context_id, name, args)?
            .ok_or_else(|| anyhow!("the module does not export {name}"))
    }

    /// Whether the module exports a function `name`.
    pub fn has_export(&self, name: &str) -> bool {
        self.inner.borrow_mut().has_export(name)
    }

    /// The module's exports, by name.
    pub fn exports(&self) -> Vec<String> {
        self.inner
            .borrow()
            .compiled
            .module
            .exports()
            .map(|e| e.name().to_owned())
            .collect()
    }

    /// Imports the host does not implement (linked to traps that fail the
    /// test if called), as `module.name`.
    pub fn unimplemented_imports(&self) -> Vec<String> {
        self.inner.borrow().compiled.stubbed.clone()
    }

    /// The module's imports as `module.name`.
    pub fn imports(&self) -> Vec<String> {
        self.inner
            .borrow()
            .compiled
            .module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }
}

/// One HTTP stream (request and response) through the plugin. Obtained
/// from [`Host::http_stream`]; it shares state with its host.
pub struct HttpStream {
    inner: Rc<RefCell<Inner>>,
    id: u32,
}

impl std::fmt::Debug for HttpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl HttpStream {
    /// The stream's context id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn headers_step(
        &self,
        step: &str,
        headers: &[(&str, &str)],
        set: fn(&mut ContextState, Pairs),
        extra: Option<bool>,
        request: bool,
    ) -> Result<Action> {
        let mut inner = self.inner.borrow_mut();
        let pairs = lowercase_keys(pairs_from_strs(headers));
        set(inner.live_stream(self.id, step)?, pairs);
        let mut args = vec![self.id, headers.len() as u32];
        args.extend(extra.map(u32::from));
        inner.stream_callback(self.id, step, &args, request)
    }

    fn body_step(
        &self,
        step: &str,
        chunk: &[u8],
        end_of_stream: bool,
        request: bool,
    ) -> Result<Action> {
        let mut inner = self.inner.borrow_mut();
        let ctx = inner.live_stream(self.id, step)?;
        let (body, flow) = if request {
            (&mut ctx.request_body, ctx.request_flow)
        } else {
            (&mut ctx.response_body, ctx.response_flow)
        };
        // While paused, Envoy buffers: the plugin sees all data so far.
        if flow != FlowState::Paused {
            body.clear();
        }
        body.extend_from_slice(chunk);
        let size = body.len() as u32;
        inner.stream_callback(
            self.id,
            step,
            &[self.id, size, u32::from(end_of_stream)],
            request,
        )
    }

    /// Delivers request headers (`proxy_on_request_headers`). Keys are
    /// lowercased, as Envoy's codecs do.
    pub fn request_headers(&self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        self.headers_step(
            "proxy_on_request_headers",
            headers,
            |c, p| c.request_headers = p,
            Some(end_of_stream),
            true,
        )
    }

    /// Delivers a request body chunk (`proxy_on_request_body`). While the
    /// request is paused, chunks accumulate in the buffer as in Envoy.
    pub fn request_body(&self, chunk: impl AsRef<[u8]>, end_of_stream: bool) -> Result<Action> {
        self.body_step("proxy_on_request_body", chunk.as_ref(), end_of_stream, true)
    }

    /// Delivers request trailers (`proxy_on_request_trailers`).
    pub fn request_trailers(&self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.headers_step(
            "proxy_on_request_trailers",
            trailers,
            |c, p| c.request_trailers = p,
            None,
            true,
        )
    }

    /// Delivers response headers (`proxy_on_response_headers`).
    pub fn response_headers(
        &self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers_step(
            "proxy_on_response_headers",
            headers,
            |c, p| c.response_headers = p,
            Some(end_of_stream),
            false,
        )
    }

    /// Delivers a response body chunk (`proxy_on_response_body`).
    pub fn response_body(&self, chunk: impl AsRef<[u8]>, end_of_stream: bool) -> Result<Action> {
        self.body_step(
            "proxy_on_response_body",
            chunk.as_ref(),
            end_of_stream,
            false,
        )
    }

    /// Delivers response trailers (`proxy_on_response_trailers`).
    pub fn response_trailers(&self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.headers_step(
            "proxy_on_response_trailers",
            trailers,
            |c, p| c.response_trailers = p,
            None,
            false,
        )
    }

    /// Ends the stream as Envoy does: `proxy_on_done`, then (if it returned
    /// true) `proxy_on_log` and `proxy_on_delete`. If it returned false, the
    /// last two run when the plugin calls `proxy_done`.
    pub fn finish(&self) -> Result<()> {
        if self.done()? {
            self.log()?;
            self.delete()?;
        } else {
            self.inner
                .borrow_mut()
                .state_mut()
                .pending_done
                .push(self.id);
        }
        Ok(())
    }

    /// Calls `proxy_on_done` alone and returns its answer.
    pub fn done(&self) -> Result<bool> {
        let mut inner = self.inner.borrow_mut();
        inner.live_stream(self.id, "proxy_on_done")?;
        Ok(inner
            .call_u32(self.id, "proxy_on_done", &[self.id])?
            .is_none_or(|v| v != 0))
    }

    /// Calls `proxy_on_log` alone.
    pub fn log(&self) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.live_stream(self.id, "proxy_on_log")?;
        inner.call_u32(self.id, "proxy_on_log", &[self.id])?;
        Ok(())
    }

    /// Calls `proxy_on_delete` alone; the stream can be inspected afterwards
    /// but not driven.
    pub fn delete(&self) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        inner.live_stream(self.id, "proxy_on_delete")?;
        let result = inner.call_u32(self.id, "proxy_on_delete", &[self.id]);
        if let Some(c) = inner.state_mut().contexts.get_mut(&self.id) {
            c.deleted = true;
        }
        result.map(|_| ())
    }

    /// Whether `proxy_on_delete` has run for this stream.
    pub fn is_deleted(&self) -> bool {
        self.inner.borrow().stream(self.id).deleted
    }

    fn read<T>(&self, f: impl FnOnce(&ContextState) -> T) -> T {
        f(self.inner.borrow().stream(self.id))
    }

    /// The first value of request header `name` (case-insensitive), as the
    /// plugin left it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.read(|c| first_value(&c.request_headers, name))
    }

    /// All request headers, in order.
    pub fn request_header_map(&self) -> Vec<(String, String)> {
        self.read(|c| pairs_to_strings(&c.request_headers))
    }

    /// The first value of request trailer `name`.
    pub fn request_trailer(&self, name: &str) -> Option<String> {
        self.read(|c| first_value(&c.request_trailers, name))
    }

    /// All request trailers, in order.
    pub fn request_trailer_map(&self) -> Vec<(String, String)> {
        self.read(|c| pairs_to_strings(&c.request_trailers))
    }

    /// The first value of response header `name`.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.read(|c| first_value(&c.response_headers, name))
    }

    /// All response headers, in order.
    pub fn response_header_map(&self) -> Vec<(String, String)> {
        self.read(|c| pairs_to_strings(&c.response_headers))
    }

    /// The first value of response trailer `name`.
    pub fn response_trailer(&self, name: &str) -> Option<String> {
        self.read(|c| first_value(&c.response_trailers, name))
    }

    /// All response trailers, in order.
    pub fn response_trailer_map(&self) -> Vec<(String, String)> {
        self.read(|c| pairs_to_strings(&c.response_trailers))
    }

    /// The request body buffer as the plugin left it.
    pub fn request_body_bytes(&self) -> Vec<u8> {
        self.read(|c| c.request_body.clone())
    }

    /// The response body buffer as the plugin left it.
    pub fn response_body_bytes(&self) -> Vec<u8> {
        self.read(|c| c.response_body.clone())
    }

    /// The local response the plugin sent, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.read(|c| c.local_response.clone())
    }

    /// Whether the request direction is flowing, paused or reset.
    pub fn request_flow(&self) -> FlowState {
        self.read(|c| c.request_flow)
    }

    /// Whether the response direction is flowing, paused or reset.
    pub fn response_flow(&self) -> FlowState {
        self.read(|c| c.response_flow)
    }

    /// Streams the plugin reset with `proxy_close_stream`, in order.
    pub fn resets(&self) -> Vec<StreamType> {
        self.read(|c| c.resets.clone())
    }

    /// Sets a property for this stream only (e.g. `"source\0address"`).
    pub fn set_property(&self, path: impl PropertyPath, value: impl Into<PropertyValue>) -> &Self {
        let (path, value) = (path.encode(), value.into().0);
        let mut inner = self.inner.borrow_mut();
        if let Some(c) = inner.state_mut().contexts.get_mut(&self.id) {
            c.properties.insert(path, value);
        }
        self
    }

    /// A property of this stream, including values the plugin set on it.
    pub fn property(&self, path: impl PropertyPath) -> Option<Vec<u8>> {
        self.read(|c| c.properties.get(&path.encode()).cloned())
    }

    /// Log lines written while this stream was the effective context.
    pub fn logs(&self) -> Vec<LogEntry> {
        let inner = self.inner.borrow();
        inner
            .state()
            .logs
            .iter()
            .filter(|l| l.context_id == self.id)
            .cloned()
            .collect()
    }

    /// HTTP calls this stream dispatched.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        let inner = self.inner.borrow();
        inner
            .state()
            .calls
            .iter()
            .filter(|c| c.context_id == self.id)
            .cloned()
            .collect()
    }
}
