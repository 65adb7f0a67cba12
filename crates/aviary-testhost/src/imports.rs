//! The host functions: proxy-wasm ABI 0.2.1 (`env.*`) and the WASI preview1
//! subset a Rust `wasm32-wasip1` plugin links against.

use std::collections::HashSet;
use std::fmt;

use wasmtime::{Caller, ExternType, IntoFunc, Linker, Module};

use crate::abi::{
    deserialize_pairs, errno, serialize_pairs, BufferType, LogLevel, MapType, MetricKind, Pairs,
    Status, StreamType,
};
use crate::policy::Category;
use crate::state::{
    display_path, CallOutcome, ContextKind, DispatchAttempt, FlowState, HostState, HttpCall,
    LocalResponse, LogSource, MetricState, Queue,
};

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<i32>;

const OK: i32 = Status::Ok as i32;

/// Errors host functions raise to stop the guest.
#[derive(Debug)]
pub(crate) enum HostTrap {
    Unimplemented(String),
    ProcExit(i32),
    NoAllocator,
    NoMemory,
}

impl fmt::Display for HostTrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unimplemented(name) => write!(
                f,
                "the guest called `{name}`, which aviary-testhost does not implement"
            ),
            Self::ProcExit(code) => write!(f, "the guest called proc_exit({code})"),
            Self::NoAllocator => f.write_str(
                "the module exports neither `proxy_on_memory_allocate` nor `malloc`, \
                 so the host cannot return data to it",
            ),
            Self::NoMemory => f.write_str("the module does not export its memory as `memory`"),
        }
    }
}

impl std::error::Error for HostTrap {}

fn u(v: i32) -> usize {
    v as u32 as usize
}

fn read(c: &mut C, ptr: i32, len: i32) -> wasmtime::Result<Option<Vec<u8>>> {
    let mem = c
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::new(HostTrap::NoMemory))?;
    let (start, len) = (u(ptr), u(len));
    Ok(mem
        .data(&*c)
        .get(start..start.saturating_add(len))
        .map(<[u8]>::to_vec))
}

fn write(c: &mut C, ptr: i32, bytes: &[u8]) -> wasmtime::Result<bool> {
    let mem = c
        .data()
        .memory
        .ok_or_else(|| wasmtime::Error::new(HostTrap::NoMemory))?;
    let start = u(ptr);
    Ok(
        match mem
            .data_mut(&mut *c)
            .get_mut(start..start.saturating_add(bytes.len()))
        {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        },
    )
}

fn write_u32(c: &mut C, ptr: i32, v: u32) -> wasmtime::Result<bool> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C, ptr: i32, v: u64) -> wasmtime::Result<bool> {
    write(c, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into guest-allocated memory and stores its address and
/// length at `ptr_ptr`/`size_ptr`. Empty data is returned as a null pointer,
/// as Envoy does, which the Rust SDK turns into `None`/empty.
fn give(c: &mut C, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    let addr = if bytes.is_empty() {
        0
    } else {
        let alloc = c
            .data()
            .alloc
            .clone()
            .ok_or_else(|| wasmtime::Error::new(HostTrap::NoAllocator))?;
        let addr = alloc.call(&mut *c, bytes.len() as i32)?;
        if addr == 0 || !write(c, addr, bytes)? {
            return Ok(Status::InvalidMemoryAccess.code());
        }
        addr
    };
    if write_u32(c, ptr_ptr, addr as u32)? && write_u32(c, size_ptr, bytes.len() as u32)? {
        Ok(OK)
    } else {
        Ok(Status::InvalidMemoryAccess.code())
    }
}

macro_rules! read_or_fault {
    ($c:expr, $ptr:expr, $len:expr) => {
        match read($c, $ptr, $len)? {
            Some(bytes) => bytes,
            None => return Ok(Status::InvalidMemoryAccess.code()),
        }
    };
}

fn status_if(ok: bool) -> i32 {
    if ok {
        OK
    } else {
        Status::InvalidMemoryAccess.code()
    }
}

fn lower(key: &[u8]) -> Vec<u8> {
    key.to_ascii_lowercase()
}

fn buffer(state: &mut HostState, ty: BufferType) -> Option<&mut Vec<u8>> {
    match ty {
        BufferType::HttpRequestBody => state.effective_http().map(|c| &mut c.request_body),
        BufferType::HttpResponseBody => state.effective_http().map(|c| &mut c.response_body),
        BufferType::HttpCallResponseBody => state.delivering.as_mut().map(|d| &mut d.body),
        BufferType::VmConfiguration => Some(&mut state.vm_config),
        BufferType::PluginConfiguration => Some(&mut state.plugin_config),
        BufferType::DownstreamData
        | BufferType::UpstreamData
        | BufferType::GrpcCallMessage
        | BufferType::ForeignFunctionArguments => None,
    }
}

fn map(state: &mut HostState, ty: MapType) -> Option<&mut Pairs> {
    match ty {
        MapType::HttpRequestHeaders => state.effective_http().map(|c| &mut c.request_headers),
        MapType::HttpRequestTrailers => state.effective_http().map(|c| &mut c.request_trailers),
        MapType::HttpResponseHeaders => state.effective_http().map(|c| &mut c.response_headers),
        MapType::HttpResponseTrailers => state.effective_http().map(|c| &mut c.response_trailers),
        MapType::HttpCallResponseHeaders => state.delivering.as_mut().map(|d| &mut d.headers),
        MapType::HttpCallResponseTrailers => state.delivering.as_mut().map(|d| &mut d.trailers),
        MapType::GrpcCallInitialMetadata | MapType::GrpcCallTrailingMetadata => None,
    }
}

/// Resolves a map argument, or returns the status Envoy gives for it.
macro_rules! map_or_status {
    ($state:expr, $raw:expr) => {{
        let Some(ty) = MapType::from_raw($raw) else {
            return Ok(Status::BadArgument.code());
        };
        match map($state, ty) {
            Some(m) => m,
            None => return Ok(Status::BadArgument.code()),
        }
    }};
}

fn stream_name(ty: StreamType) -> &'static str {
    match ty {
        StreamType::HttpRequest => "http_request",
        StreamType::HttpResponse => "http_response",
        StreamType::Downstream => "downstream",
        StreamType::Upstream => "upstream",
    }
}

/// Linker wrapper that remembers what it defined, so the remaining imports
/// can be stubbed with recording traps.
struct Defs<'a> {
    linker: &'a mut Linker<HostState>,
    defined: HashSet<(String, String)>,
}

impl Defs<'_> {
    fn wrap<P, Rs>(
        &mut self,
        module: &str,
        name: &str,
        f: impl IntoFunc<HostState, P, Rs>,
    ) -> wasmtime::Result<()> {
        self.linker.func_wrap(module, name, f)?;
        self.defined.insert((module.to_owned(), name.to_owned()));
        Ok(())
    }
}

/// Defines every host function, then a recording trap for each function the
/// module imports that the host does not provide; returns the names of those.
pub(crate) fn link(
    linker: &mut Linker<HostState>,
    module: &Module,
) -> wasmtime::Result<Vec<String>> {
    let mut defs = Defs {
        linker,
        defined: HashSet::new(),
    };
    proxy_core(&mut defs)?;
    proxy_maps_and_buffers(&mut defs)?;
    proxy_properties_and_shared(&mut defs)?;
    proxy_http(&mut defs)?;
    proxy_metrics(&mut defs)?;
    wasi(&mut defs)?;

    let mut stubbed = Vec::new();
    for import in module.imports() {
        let key = (import.module().to_owned(), import.name().to_owned());
        if defs.defined.contains(&key) {
            continue;
        }
        let full = format!("{}.{}", key.0, key.1);
        match import.ty() {
            ExternType::Func(ty) => {
                stubbed.push(full.clone());
                defs.linker
                    .func_new(&key.0, &key.1, ty, move |mut c: C, _, _| {
                        c.data_mut()
                            .policy
                            .violation(format!("call to unimplemented host function {full}"));
                        Err(wasmtime::Error::new(HostTrap::Unimplemented(full.clone())))
                    })?;
                defs.defined.insert(key);
            }
            other => {
                return Err(wasmtime::Error::msg(format!(
                "the module imports {full} as {other:?}; aviary-testhost only provides functions"
            )))
            }
        }
    }
    Ok(stubbed)
}

fn proxy_core(d: &mut Defs) -> wasmtime::Result<()> {
    d.wrap(
        "env",
        "proxy_log",
        |mut c: C, level: i32, ptr: i32, len: i32| -> R {
            let Some(level) = LogLevel::from_raw(level) else {
                return Ok(Status::BadArgument.code());
            };
            let msg = read_or_fault!(&mut c, ptr, len);
            let msg = String::from_utf8_lossy(&msg).into_owned();
            c.data_mut().push_log(level, msg, LogSource::ProxyLog);
            Ok(OK)
        },
    )?;
    d.wrap("env", "proxy_get_log_level", |mut c: C, ptr: i32| -> R {
        let level = c.data().log_level as u32;
        Ok(status_if(write_u32(&mut c, ptr, level)?))
    })?;
    d.wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ptr: i32| -> R {
            let now = c.data().realtime_ns;
            Ok(status_if(write_u64(&mut c, ptr, now)?))
        },
    )?;
    d.wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C, period: i32| -> R {
            let s = c.data_mut();
            s.tick_period_ms = period as u32;
            s.next_tick_ns =
                (period != 0).then(|| s.realtime_ns + u64::from(period as u32) * 1_000_000);
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C, id: i32| -> R {
            let s = c.data_mut();
            let id = id as u32;
            if s.contexts.get(&id).is_some_and(|ctx| !ctx.deleted) {
                s.effective_context = id;
                Ok(OK)
            } else {
                Ok(Status::BadArgument.code())
            }
        },
    )?;
    d.wrap("env", "proxy_done", |mut c: C| -> R {
        let s = c.data_mut();
        let id = s.effective_context;
        match s.pending_done.iter().position(|&p| p == id) {
            Some(i) => {
                s.pending_done.remove(i);
                s.done_requested.push(id);
                Ok(OK)
            }
            None => Ok(Status::NotFound.code()),
        }
    })?;
    d.wrap(
        "env",
        "proxy_call_foreign_function",
        |_: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R { Ok(Status::NotFound.code()) },
    )?;
    Ok(())
}

fn proxy_maps_and_buffers(d: &mut Defs) -> wasmtime::Result<()> {
    d.wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C, ty: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let Some(ty) = BufferType::from_raw(ty) else {
                return Ok(Status::BadArgument.code());
            };
            let Some(buf) = buffer(c.data_mut(), ty) else {
                return Ok(Status::NotFound.code());
            };
            let (start, max) = (u(start), u(max));
            if start > buf.len() {
                return Ok(Status::BadArgument.code());
            }
            let end = start.saturating_add(max).min(buf.len());
            if end == start {
                return Ok(OK);
            }
            let bytes = buf[start..end].to_vec();
            give(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C, ty: i32, len_ptr: i32, flags_ptr: i32| -> R {
            let Some(ty) = BufferType::from_raw(ty) else {
                return Ok(Status::BadArgument.code());
            };
            let Some(len) = buffer(c.data_mut(), ty).map(|b| b.len() as u32) else {
                return Ok(Status::NotFound.code());
            };
            Ok(status_if(
                write_u32(&mut c, len_ptr, len)? && write_u32(&mut c, flags_ptr, 0)?,
            ))
        },
    )?;
    d.wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C, ty: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let Some(ty) = BufferType::from_raw(ty) else {
                return Ok(Status::BadArgument.code());
            };
            let data = read_or_fault!(&mut c, ptr, len);
            if !matches!(
                ty,
                BufferType::HttpRequestBody | BufferType::HttpResponseBody
            ) {
                return Ok(Status::NotFound.code());
            }
            let Some(buf) = buffer(c.data_mut(), ty) else {
                return Ok(Status::NotFound.code());
            };
            // Envoy supports exactly prepend, replace-all and append; other
            // splices are BadArgument there, so they are here too.
            let (start, size) = (u(start), u(size));
            if start == 0 && size == 0 {
                buf.splice(0..0, data);
            } else if start == 0 && size >= buf.len() {
                *buf = data;
            } else if start >= buf.len() {
                buf.extend_from_slice(&data);
            } else {
                return Ok(Status::BadArgument.code());
            }
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C, ty: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let pairs = map_or_status!(c.data_mut(), ty);
            let bytes = if pairs.is_empty() {
                Vec::new()
            } else {
                serialize_pairs(pairs)
            };
            give(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    d.wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C, ty: i32, ptr: i32, len: i32| -> R {
            let data = read_or_fault!(&mut c, ptr, len);
            let Some(new) = deserialize_pairs(&data) else {
                return Ok(Status::BadArgument.code());
            };
            let pairs = map_or_status!(c.data_mut(), ty);
            *pairs = new.into_iter().map(|(k, v)| (lower(&k), v)).collect();
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C, ty: i32, size_ptr: i32| -> R {
            let size = serialize_pairs(map_or_status!(c.data_mut(), ty)).len() as u32;
            Ok(status_if(write_u32(&mut c, size_ptr, size)?))
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C, ty: i32, kptr: i32, klen: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let key = lower(&read_or_fault!(&mut c, kptr, klen));
            let pairs = map_or_status!(c.data_mut(), ty);
            let Some(value) = pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&key))
                .map(|(_, v)| v.clone())
            else {
                return Ok(Status::NotFound.code());
            };
            give(&mut c, &value, ptr_ptr, size_ptr)
        },
    )?;
    d.wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C, ty: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> R {
            let key = lower(&read_or_fault!(&mut c, kptr, klen));
            let value = read_or_fault!(&mut c, vptr, vlen);
            map_or_status!(c.data_mut(), ty).push((key, value));
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C, ty: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> R {
            let key = lower(&read_or_fault!(&mut c, kptr, klen));
            let value = read_or_fault!(&mut c, vptr, vlen);
            let pairs = map_or_status!(c.data_mut(), ty);
            // Envoy's setCopy: the first entry keeps its place, later duplicates go.
            match pairs.iter().position(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                Some(first) => {
                    pairs[first].1 = value;
                    let mut i = 0;
                    pairs.retain(|(k, _)| {
                        let keep = i <= first || !k.eq_ignore_ascii_case(&key);
                        i += 1;
                        keep
                    });
                }
                None => pairs.push((key, value)),
            }
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C, ty: i32, kptr: i32, klen: i32| -> R {
            let key = read_or_fault!(&mut c, kptr, klen);
            map_or_status!(c.data_mut(), ty).retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            Ok(OK)
        },
    )?;
    Ok(())
}

fn proxy_properties_and_shared(d: &mut Defs) -> wasmtime::Result<()> {
    d.wrap(
        "env",
        "proxy_get_property",
        |mut c: C, pptr: i32, plen: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let path = read_or_fault!(&mut c, pptr, plen);
            match c.data_mut().property(&path) {
                Some(value) => give(&mut c, &value, ptr_ptr, size_ptr),
                None => {
                    c.data_mut()
                        .policy
                        .admit(Category::UnknownProperty, &display_path(&path));
                    Ok(Status::NotFound.code())
                }
            }
        },
    )?;
    d.wrap(
        "env",
        "proxy_set_property",
        |mut c: C, pptr: i32, plen: i32, vptr: i32, vlen: i32| -> R {
            let path = read_or_fault!(&mut c, pptr, plen);
            let value = read_or_fault!(&mut c, vptr, vlen);
            let s = c.data_mut();
            match s.effective() {
                Some(ctx) if ctx.kind == ContextKind::Http => {
                    ctx.properties.insert(path, value);
                }
                _ => {
                    s.properties.insert(path, value);
                }
            }
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C, kptr: i32, klen: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> R {
            let key = read_or_fault!(&mut c, kptr, klen);
            let Some((value, cas)) = c.data().shared_data.get(&key).cloned() else {
                return Ok(Status::NotFound.code());
            };
            let status = give(&mut c, &value, ptr_ptr, size_ptr)?;
            if status != OK {
                return Ok(status);
            }
            Ok(status_if(write_u32(&mut c, cas_ptr, cas)?))
        },
    )?;
    d.wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> R {
            let key = read_or_fault!(&mut c, kptr, klen);
            let value = read_or_fault!(&mut c, vptr, vlen);
            Ok(c.data_mut().set_shared(key, value, cas as u32).code())
        },
    )?;
    d.wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C, nptr: i32, nlen: i32, id_ptr: i32| -> R {
            let name = String::from_utf8_lossy(&read_or_fault!(&mut c, nptr, nlen)).into_owned();
            let s = c.data_mut();
            let root = s.root_id;
            let owner = s.effective().map_or(root, |ctx| ctx.root_id);
            let vm_id = s.vm_id.clone();
            let id = match s
                .queues
                .iter()
                .position(|q| q.name == name && q.vm_id == vm_id)
            {
                Some(i) => {
                    s.queues[i].owner_root = owner;
                    i + 1
                }
                None => {
                    s.queues.push(Queue {
                        name,
                        vm_id,
                        owner_root: owner,
                        items: Default::default(),
                    });
                    s.queues.len()
                }
            };
            Ok(status_if(write_u32(&mut c, id_ptr, id as u32)?))
        },
    )?;
    d.wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C, vptr: i32, vlen: i32, nptr: i32, nlen: i32, id_ptr: i32| -> R {
            let vm_id = String::from_utf8_lossy(&read_or_fault!(&mut c, vptr, vlen)).into_owned();
            let name = String::from_utf8_lossy(&read_or_fault!(&mut c, nptr, nlen)).into_owned();
            match c
                .data()
                .queues
                .iter()
                .position(|q| q.name == name && q.vm_id == vm_id)
            {
                Some(i) => Ok(status_if(write_u32(&mut c, id_ptr, i as u32 + 1)?)),
                None => Ok(Status::NotFound.code()),
            }
        },
    )?;
    d.wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C, id: i32, ptr: i32, len: i32| -> R {
            let value = read_or_fault!(&mut c, ptr, len);
            let s = c.data_mut();
            let Some(q) = s.queues.get_mut(u(id).wrapping_sub(1)) else {
                return Ok(Status::NotFound.code());
            };
            q.items.push_back(value);
            let owner = q.owner_root;
            s.queue_ready.push((owner, id as u32));
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C, id: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let Some(q) = c.data_mut().queues.get_mut(u(id).wrapping_sub(1)) else {
                return Ok(Status::NotFound.code());
            };
            match q.items.pop_front() {
                Some(item) => give(&mut c, &item, ptr_ptr, size_ptr),
                None => Ok(Status::Empty.code()),
            }
        },
    )?;
    Ok(())
}

fn proxy_http(d: &mut Defs) -> wasmtime::Result<()> {
    d.wrap("env", "proxy_continue_stream", |mut c: C, ty: i32| -> R {
        let Some(ty) = StreamType::from_raw(ty) else {
            return Ok(Status::BadArgument.code());
        };
        let Some(ctx) = c.data_mut().effective_http() else {
            return Ok(Status::BadArgument.code());
        };
        let flow = match ty {
            StreamType::HttpRequest => &mut ctx.request_flow,
            StreamType::HttpResponse => &mut ctx.response_flow,
            StreamType::Downstream | StreamType::Upstream => {
                return Ok(Status::Unimplemented.code())
            }
        };
        if *flow == FlowState::Paused {
            *flow = FlowState::Flowing;
        }
        Ok(OK)
    })?;
    d.wrap("env", "proxy_close_stream", |mut c: C, ty: i32| -> R {
        let Some(ty) = StreamType::from_raw(ty) else {
            return Ok(Status::BadArgument.code());
        };
        let s = c.data_mut();
        s.policy.admit(Category::StreamReset, stream_name(ty));
        let Some(ctx) = s.effective_http() else {
            return Ok(Status::BadArgument.code());
        };
        ctx.resets.push(ty);
        match ty {
            StreamType::HttpRequest => ctx.request_flow = FlowState::Reset,
            StreamType::HttpResponse => ctx.response_flow = FlowState::Reset,
            StreamType::Downstream | StreamType::Upstream => {}
        }
        Ok(OK)
    })?;
    d.wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C,
         status: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc: i32|
         -> R {
            let details = read_or_fault!(&mut c, dptr, dlen);
            let body = read_or_fault!(&mut c, bptr, blen);
            let headers = read_or_fault!(&mut c, hptr, hlen);
            let Some(headers) = deserialize_pairs(&headers) else {
                return Ok(Status::BadArgument.code());
            };
            let response = LocalResponse {
                status: status as u32,
                details: String::from_utf8_lossy(&details).into_owned(),
                body,
                headers: crate::abi::pairs_to_strings(&headers),
                grpc_status: grpc,
            };
            let s = c.data_mut();
            let detail = format!(
                "{} {} {}",
                response.status,
                response.details,
                response.body_text()
            );
            s.policy.admit(Category::LocalResponse, detail.trim_end());
            let Some(ctx) = s.effective_http() else {
                return Ok(Status::BadArgument.code());
            };
            ctx.local_response = Some(response);
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_http_call",
        |mut c: C,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout: i32,
         token_ptr: i32|
         -> R {
            let upstream =
                String::from_utf8_lossy(&read_or_fault!(&mut c, uptr, ulen)).into_owned();
            let headers = read_or_fault!(&mut c, hptr, hlen);
            let body = read_or_fault!(&mut c, bptr, blen);
            let trailers = read_or_fault!(&mut c, tptr, tlen);
            let (Some(headers), Some(trailers)) =
                (deserialize_pairs(&headers), deserialize_pairs(&trailers))
            else {
                return Ok(Status::BadArgument.code());
            };
            let headers = crate::abi::pairs_to_strings(&headers);
            let trailers = crate::abi::pairs_to_strings(&trailers);
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            };
            let detail = format!(
                "{upstream} {} {}",
                get(":method").unwrap_or("<no :method>"),
                get(":path").unwrap_or("<no :path>")
            );
            let complete = [":method", ":path", ":authority"]
                .iter()
                .all(|h| get(h).is_some());

            let s = c.data_mut();
            s.policy.admit(Category::HttpCall, &detail);
            let status = if let Some(forced) = s.forced_dispatch_status.take() {
                forced
            } else if !s.clusters.contains(&upstream) || !complete {
                Status::BadArgument
            } else {
                Status::Ok
            };
            let token = (status == Status::Ok).then(|| s.calls.len() as u32 + 1);
            s.attempts.push(DispatchAttempt {
                upstream: upstream.clone(),
                headers: headers.clone(),
                status,
                token,
            });
            let Some(token) = token else {
                return Ok(status.code());
            };
            let context_id = s.effective_context;
            let root_context_id = s
                .contexts
                .get(&context_id)
                .map_or(s.root_id, |ctx| ctx.root_id);
            s.calls.push(HttpCall {
                token,
                context_id,
                root_context_id,
                upstream,
                headers,
                body,
                trailers,
                timeout: std::time::Duration::from_millis(u64::from(timeout as u32)),
                dispatched_at: s.now(),
                outcome: CallOutcome::Pending,
            });
            Ok(status_if(write_u32(&mut c, token_ptr, token)?))
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_status",
        |mut c: C, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> R {
            let (code, message) = c.data().status.clone();
            if !write_u32(&mut c, code_ptr, code)? {
                return Ok(Status::InvalidMemoryAccess.code());
            }
            give(&mut c, message.as_bytes(), ptr_ptr, size_ptr)
        },
    )?;
    Ok(())
}

fn proxy_metrics(d: &mut Defs) -> wasmtime::Result<()> {
    d.wrap(
        "env",
        "proxy_define_metric",
        |mut c: C, kind: i32, nptr: i32, nlen: i32, id_ptr: i32| -> R {
            let Some(kind) = MetricKind::from_raw(kind) else {
                return Ok(Status::BadArgument.code());
            };
            let name = String::from_utf8_lossy(&read_or_fault!(&mut c, nptr, nlen)).into_owned();
            let metrics = &mut c.data_mut().metrics;
            let index = match metrics
                .iter()
                .position(|m| m.name == name && m.kind == kind)
            {
                Some(i) => i,
                None => {
                    metrics.push(MetricState {
                        name,
                        kind,
                        counter: 0,
                        gauge: 0,
                        samples: Vec::new(),
                    });
                    metrics.len() - 1
                }
            };
            Ok(status_if(write_u32(&mut c, id_ptr, index as u32 + 1)?))
        },
    )?;
    d.wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C, id: i32, offset: i64| -> R {
            let Some(m) = c.data_mut().metrics.get_mut(u(id).wrapping_sub(1)) else {
                return Ok(Status::NotFound.code());
            };
            // Envoy: counters only go up, histograms cannot be incremented.
            match m.kind {
                MetricKind::Counter if offset > 0 => {
                    m.counter = m.counter.wrapping_add(offset as u64)
                }
                MetricKind::Gauge => m.gauge = m.gauge.wrapping_add(offset),
                MetricKind::Counter | MetricKind::Histogram => {
                    return Ok(Status::BadArgument.code())
                }
            }
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_record_metric",
        |mut c: C, id: i32, value: i64| -> R {
            let Some(m) = c.data_mut().metrics.get_mut(u(id).wrapping_sub(1)) else {
                return Ok(Status::NotFound.code());
            };
            match m.kind {
                MetricKind::Counter => m.counter = m.counter.wrapping_add(value as u64),
                MetricKind::Gauge => m.gauge = value,
                MetricKind::Histogram => m.samples.push(value as u64),
            }
            Ok(OK)
        },
    )?;
    d.wrap(
        "env",
        "proxy_get_metric",
        |mut c: C, id: i32, ptr: i32| -> R {
            let Some(m) = c.data().metrics.get(u(id).wrapping_sub(1)) else {
                return Ok(Status::NotFound.code());
            };
            let value = match m.kind {
                MetricKind::Counter => m.counter,
                MetricKind::Gauge => m.gauge as u64,
                MetricKind::Histogram => return Ok(Status::BadArgument.code()),
            };
            Ok(status_if(write_u64(&mut c, ptr, value)?))
        },
    )?;
    Ok(())
}

const WASI: &str = "wasi_snapshot_preview1";

fn wasi_status(ok: bool) -> i32 {
    if ok {
        errno::SUCCESS
    } else {
        errno::FAULT
    }
}

fn wasi(d: &mut Defs) -> wasmtime::Result<()> {
    d.wrap(
        WASI,
        "args_sizes_get",
        |mut c: C, argc: i32, size: i32| -> R {
            Ok(wasi_status(
                write_u32(&mut c, argc, 0)? && write_u32(&mut c, size, 0)?,
            ))
        },
    )?;
    d.wrap(WASI, "args_get", |_: C, _: i32, _: i32| -> R {
        Ok(errno::SUCCESS)
    })?;
    d.wrap(
        WASI,
        "environ_sizes_get",
        |mut c: C, count_ptr: i32, size_ptr: i32| -> R {
            let env = &c.data().env;
            let count = env.len() as u32;
            let size = env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>() as u32;
            Ok(wasi_status(
                write_u32(&mut c, count_ptr, count)? && write_u32(&mut c, size_ptr, size)?,
            ))
        },
    )?;
    d.wrap(
        WASI,
        "environ_get",
        |mut c: C, mut array: i32, mut buf: i32| -> R {
            let env = c.data().env.clone();
            for (k, v) in env {
                let entry = format!("{k}={v}\0");
                if !write_u32(&mut c, array, buf as u32)? || !write(&mut c, buf, entry.as_bytes())?
                {
                    return Ok(errno::FAULT);
                }
                array = array.wrapping_add(4);
                buf = buf.wrapping_add(entry.len() as i32);
            }
            Ok(errno::SUCCESS)
        },
    )?;
    d.wrap(
        WASI,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, out: i32| -> R {
            let now = match id {
                0 => c.data().realtime_ns,
                1 => c.data().monotonic_ns,
                _ => return Ok(errno::NOTSUP),
            };
            Ok(wasi_status(write_u64(&mut c, out, now)?))
        },
    )?;
    d.wrap(WASI, "clock_res_get", |mut c: C, id: i32, out: i32| -> R {
        if !(0..=1).contains(&id) {
            return Ok(errno::NOTSUP);
        }
        Ok(wasi_status(write_u64(&mut c, out, 1)?))
    })?;
    d.wrap(WASI, "random_get", |mut c: C, ptr: i32, len: i32| -> R {
        if len < 0 {
            return Ok(errno::INVAL);
        }
        let mut bytes = vec![0u8; u(len)];
        c.data_mut().rng.fill(&mut bytes);
        Ok(wasi_status(write(&mut c, ptr, &bytes)?))
    })?;
    d.wrap(
        WASI,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> R {
            if fd != 1 && fd != 2 {
                return Ok(errno::BADF);
            }
            let mut data = Vec::new();
            for i in 0..u(iovs_len) {
                let Some(iov) = read(&mut c, iovs.wrapping_add(i as i32 * 8), 8)? else {
                    return Ok(errno::FAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&mut c, ptr, len)? {
                    Some(bytes) => data.extend_from_slice(&bytes),
                    None => return Ok(errno::FAULT),
                }
            }
            c.data_mut().write_stdio(fd, &data);
            Ok(wasi_status(write_u32(&mut c, nwritten, data.len() as u32)?))
        },
    )?;
    d.wrap(WASI, "fd_fdstat_get", |mut c: C, fd: i32, out: i32| -> R {
        if !(0..=2).contains(&fd) {
            return Ok(errno::BADF);
        }
        // filetype character_device, no flags, rights: fd_write only.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        Ok(wasi_status(write(&mut c, out, &stat)?))
    })?;
    d.wrap(WASI, "fd_close", |_: C, fd: i32| -> R {
        Ok(if (0..=2).contains(&fd) {
            errno::SUCCESS
        } else {
            errno::BADF
        })
    })?;
    d.wrap(
        WASI,
        "fd_read",
        |_: C, _: i32, _: i32, _: i32, _: i32| -> R { Ok(errno::NOSYS) },
    )?;
    d.wrap(WASI, "fd_prestat_get", |_: C, _: i32, _: i32| -> R {
        Ok(errno::BADF)
    })?;
    d.wrap(
        WASI,
        "fd_prestat_dir_name",
        |_: C, _: i32, _: i32, _: i32| -> R { Ok(errno::BADF) },
    )?;
    d.wrap(WASI, "sched_yield", |_: C| -> R { Ok(errno::SUCCESS) })?;
    d.wrap(
        WASI,
        "proc_exit",
        |_: C, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(HostTrap::ProcExit(code)))
        },
    )?;
    Ok(())
}

impl HostState {
    fn set_shared(&mut self, key: Vec<u8>, value: Vec<u8>, cas: u32) -> Status {
        let next = self.next_cas;
        match self.shared_data.get_mut(&key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Status::CasMismatch;
                }
                *entry = (value, next);
            }
            None => {
                self.shared_data.insert(key, (value, next));
            }
        }
        self.next_cas = next.wrapping_add(1).max(1);
        Status::Ok
    }

    /// Captures stdout/stderr and turns each complete line into a log entry,
    /// stdout at info and stderr at error level, as Envoy does.
    fn write_stdio(&mut self, fd: i32, data: &[u8]) {
        let (level, source) = if fd == 1 {
            (LogLevel::Info, LogSource::Stdout)
        } else {
            (LogLevel::Error, LogSource::Stderr)
        };
        let buf = if fd == 1 {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let before = buf.len();
        buf.extend_from_slice(data);
        let line_start = buf[..before]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let tail = buf[line_start..].to_vec();
        let mut lines: Vec<&[u8]> = tail.split(|&b| b == b'\n').collect();
        lines.pop();
        for line in lines {
            let text = String::from_utf8_lossy(line).into_owned();
            self.push_log(level, text, source);
        }
    }
}
