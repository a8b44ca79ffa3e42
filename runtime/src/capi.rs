//! The C ABI (`runtime/include/kiln.h`, built as `libkiln_runtime.so`): C, C++ and Python
//! servers load the kernels of a `kiln export` folder into their own CUDA context and launch
//! them on their own streams and device pointers.
//!
//! Every entry point catches panics and returns a [`KilnStatus`]; the message that goes with a
//! failure is kept per thread for `kiln_last_error`. kiln never creates a context or a stream
//! here: kernels are loaded into the caller's current context (a CUDA-runtime program's primary
//! context), so the driver is reached through cudarc's `sys` layer rather than its safe
//! `CudaContext`, which owns the contexts it uses.
//!
//! Keep this file and `include/kiln.h` in step by hand; the `header_*` tests below check the
//! function names and status values.

#![warn(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::sys::{self as cu, cudaError_enum as CuErr};
use kiln_codegen::families::gemm_bf16::GemmBf16Problem;
use kiln_codegen::families::gemm_fp8::{self as fp8_fam, GemmFp8Config, GemmFp8Problem};
use kiln_codegen::LaunchGeometry;
use serde_json::Value;

use crate::manifest::{Manifest, ManifestKernel};

/// What every entry point returns (`kiln_status` in kiln.h, same values).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KilnStatus {
    Ok = 0,
    InvalidArgument = 1,
    NoDriver = 2,
    NoContext = 3,
    NotFound = 4,
    Manifest = 5,
    Load = 6,
    Launch = 7,
    Internal = 8,
}

/// `kiln_kernel_desc` in kiln.h: what `kiln_kernel_info` reports.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KilnKernelDesc {
    /// The kernel's entry point (NUL-terminated, owned by the set).
    pub entry: *const c_char,
    /// Its family, e.g. `gemm_bf16` (owned by the set).
    pub family: *const c_char,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Thread-block cluster shape; `{1, 1, 1}` means no cluster.
    pub cluster: [u32; 3],
    pub dynamic_smem_bytes: u32,
    pub num_args: usize,
    pub num_scratch: usize,
}

/// Shared memory a block may use without opting in.
const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

/// The argument list `kiln_gemm_bf16` passes, in order.
const GEMM_BF16_ARGS: [&str; 8] = ["A", "B", "C", "workspace", "counters", "M", "N", "K"];

/// The argument list `kiln_gemm_fp8` passes, in order.
const GEMM_FP8_ARGS: [&str; 12] = [
    "X",
    "SX",
    "W",
    "SW",
    "Y",
    "workspace",
    "counters",
    "M",
    "N",
    "K",
    "tmap_x",
    "tmap_w",
];

const NO_CONTEXT: &str =
    "the calling thread has no current CUDA context: call cudaSetDevice(dev) and \
     cudaFree(0) (CUDA runtime) or cuCtxSetCurrent (driver API) on this thread first; kiln loads \
     kernels into the caller's context and never creates one";

// ---------------------------------------------------------------------------------------------
// Errors

/// A failure: its status and the message `kiln_last_error` returns.
struct Fail(KilnStatus, String);

type Res<T> = std::result::Result<T, Fail>;

fn fail<T>(status: KilnStatus, msg: impl Into<String>) -> Res<T> {
    Err(Fail(status, msg.into()))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = msg);
}

fn clear_last_error() {
    // Only when set: the launch path stays free of allocations.
    let _ = LAST_ERROR.try_with(|e| {
        if !e.borrow().as_bytes().is_empty() {
            *e.borrow_mut() = CString::default();
        }
    });
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Run one entry point: its result becomes the status, its message (or a caught panic's)
/// the thread's last error, prefixed with the entry point's name.
fn guard(what: &str, f: impl FnOnce() -> Res<()>) -> KilnStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            clear_last_error();
            KilnStatus::Ok
        }
        Ok(Err(Fail(status, msg))) => {
            set_last_error(&format!("{what}: {msg}"));
            status
        }
        Err(panic) => {
            set_last_error(&format!(
                "{what}: internal error (a kiln bug, please report it): {}",
                panic_text(&*panic)
            ));
            KilnStatus::Internal
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

/// A required C string argument.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that outlives the call.
unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Res<&'a CStr> {
    if p.is_null() {
        return fail(KilnStatus::InvalidArgument, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL, and the caller passes a NUL-terminated string (kiln.h's contract).
    Ok(unsafe { CStr::from_ptr(p) })
}

fn utf8<'a>(s: &'a CStr, name: &str) -> Res<&'a str> {
    s.to_str()
        .map_err(|_| Fail(KilnStatus::InvalidArgument, format!("{name} is not UTF-8")))
}

fn to_path(s: &CStr) -> Res<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        utf8(s, "export_dir").map(PathBuf::from)
    }
}

/// A required out-pointer, set to `empty` first so a failed call never leaves garbage behind.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T`.
unsafe fn out_arg<'a, T>(p: *mut T, name: &str, empty: T) -> Res<&'a mut T> {
    if p.is_null() {
        return fail(KilnStatus::InvalidArgument, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL and, by kiln.h's contract, points at a writable `T`.
    let out = unsafe { &mut *p };
    *out = empty;
    Ok(out)
}

/// An optional out-pointer: written when non-NULL.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T`.
unsafe fn write_opt<T>(p: *mut T, value: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and, by kiln.h's contract, points at a writable `T`.
        unsafe { p.write(value) };
    }
}

/// A kernel handle from `kiln_find`.
///
/// # Safety
/// `p` is NULL or a handle `kiln_find` returned whose set is still open.
unsafe fn kernel_arg<'a>(p: *const KilnKernel) -> Res<&'a KilnKernel> {
    if p.is_null() {
        return fail(KilnStatus::InvalidArgument, "kernel is NULL");
    }
    // SAFETY: a live handle points into its set's boxed kernels, which move only when the set closes.
    Ok(unsafe { &*p })
}

/// An open set from `kiln_open`.
///
/// # Safety
/// `p` is NULL or a set `kiln_open` returned and `kiln_close` has not freed.
unsafe fn set_arg<'a>(p: *const KilnSet) -> Res<&'a KilnSet> {
    if p.is_null() {
        return fail(KilnStatus::InvalidArgument, "set is NULL");
    }
    // SAFETY: see the function's contract.
    Ok(unsafe { &*p })
}

// ---------------------------------------------------------------------------------------------
// The set and its kernels

/// The C strings and checked facts of one manifest kernel, built once by `kiln_open` so the
/// pointers handed to C live as long as the set.
#[derive(Clone, Debug)]
struct KernelMeta {
    entry: CString,
    family: CString,
    /// Name and C type of each argument, in launch order.
    args: Vec<(CString, CString)>,
    scratch: Vec<ScratchMeta>,
    geometry: LaunchGeometry,
    /// `[M, N, K]` when this is a `gemm_bf16` kernel taking the arguments `kiln_gemm_bf16` passes.
    gemm: Option<[c_int; 3]>,
    /// `[M, N, K]` and the TMA boxes (`None`: the kernel ignores its tensor maps) when this is a
    /// `gemm_fp8` kernel taking the arguments `kiln_gemm_fp8` passes.
    gemm_fp8: Option<([c_int; 3], Option<[u32; 2]>)>,
}

#[derive(Clone, Debug)]
struct ScratchMeta {
    arg: CString,
    /// Index of the kernel argument it is passed as.
    arg_index: usize,
    bytes: usize,
    zero_init: bool,
}

/// `kiln_set`: an export folder's manifest and the kernels loaded from it so far.
pub struct KilnSet {
    dir: PathBuf,
    manifest: Manifest,
    meta: Vec<KernelMeta>,
    /// One entry per (manifest kernel, context) loaded; boxed so handles stay put as it grows.
    #[allow(clippy::vec_box)]
    loaded: Mutex<Vec<Box<KilnKernel>>>,
}

/// `kiln_kernel`: one manifest kernel loaded into one context.
pub struct KilnKernel {
    index: usize,
    ctx: cu::CUcontext,
    module: cu::CUmodule,
    func: cu::CUfunction,
    meta: KernelMeta,
}

fn cstring(s: &str, what: &str) -> std::result::Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

/// Check one manifest kernel enough that every later call can trust it, and build its strings.
fn check_kernel(k: &ManifestKernel, dir: &Path) -> std::result::Result<KernelMeta, String> {
    let args = k
        .args
        .iter()
        .map(|a| {
            Ok((
                cstring(&a.name, "argument name")?,
                cstring(&a.c_type, "argument type")?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    if args.is_empty() {
        return Err("has no arguments".into());
    }
    for (i, a) in k.args.iter().enumerate() {
        if k.args[..i].iter().any(|b| b.name == a.name) {
            return Err(format!("argument {} appears twice", a.name));
        }
    }
    let g = &k.geometry;
    if g.grid
        .iter()
        .chain(&g.block)
        .chain(&g.cluster)
        .any(|&d| d == 0)
    {
        return Err(format!("geometry has a zero dimension: {g:?}"));
    }
    #[allow(clippy::manual_is_multiple_of)]
    // is_multiple_of is newer than the workspace's rust-version
    if (0..3).any(|i| g.grid[i] % g.cluster[i] != 0) {
        return Err(format!(
            "grid {:?} is not a whole number of clusters {:?}",
            g.grid, g.cluster
        ));
    }
    let scratch = k
        .scratch
        .iter()
        .map(|s| {
            let arg_index = k.args.iter().position(|a| a.name == s.arg).ok_or_else(|| {
                format!(
                    "scratch buffer {:?} is not one of the kernel's arguments",
                    s.arg
                )
            })?;
            if !k.args[arg_index].c_type.trim_end().ends_with('*') {
                return Err(format!(
                    "scratch buffer {:?} is passed as a {}, not a pointer",
                    s.arg, k.args[arg_index].c_type
                ));
            }
            Ok(ScratchMeta {
                arg: cstring(&s.arg, "scratch name")?,
                arg_index,
                bytes: s.bytes,
                zero_init: s.zero_init,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    if !dir.join(&k.cubin).is_file() {
        return Err(format!(
            "its cubin {} is missing",
            dir.join(&k.cubin).display()
        ));
    }
    let gemm =
        if k.family == "gemm_bf16" && k.args.iter().map(|a| a.name.as_str()).eq(GEMM_BF16_ARGS) {
            let p: GemmBf16Problem = serde_json::from_value(k.problem.clone())
                .map_err(|e| format!("problem {} is not a gemm_bf16 problem ({e})", k.problem))?;
            let dim = |d: u32| {
                c_int::try_from(d).map_err(|_| format!("problem {} does not fit int", k.problem))
            };
            Some([dim(p.m)?, dim(p.n)?, dim(p.k)?])
        } else {
            None
        };
    let gemm_fp8 =
        if k.family == "gemm_fp8" && k.args.iter().map(|a| a.name.as_str()).eq(GEMM_FP8_ARGS) {
            let p: GemmFp8Problem = serde_json::from_value(k.problem.clone())
                .map_err(|e| format!("problem {} is not a gemm_fp8 problem ({e})", k.problem))?;
            let c: GemmFp8Config = serde_json::from_value(k.config.clone())
                .map_err(|e| format!("config {} is not a gemm_fp8 config ({e})", k.config))?;
            let dim = |d: u32| {
                c_int::try_from(d).map_err(|_| format!("problem {} does not fit int", k.problem))
            };
            Some((
                [dim(p.m)?, dim(p.n)?, dim(p.k)?],
                fp8_fam::tensor_map_box(&c),
            ))
        } else {
            None
        };
    Ok(KernelMeta {
        entry: cstring(&k.entry, "entry")?,
        family: cstring(&k.family, "family")?,
        args,
        scratch,
        geometry: k.geometry,
        gemm,
        gemm_fp8,
    })
}

fn open(dir: PathBuf) -> Res<KilnSet> {
    let manifest = Manifest::load(&dir).map_err(|e| Fail(KilnStatus::Manifest, e.to_string()))?;
    let meta = manifest
        .kernels
        .iter()
        .map(|k| {
            check_kernel(k, &dir).map_err(|reason| {
                let path = dir.join("manifest.json");
                Fail(
                    KilnStatus::Manifest,
                    format!(
                        "{}: kernel {}: {reason}; re-export",
                        path.display(),
                        k.entry
                    ),
                )
            })
        })
        .collect::<Res<Vec<_>>>()?;
    Ok(KilnSet {
        dir,
        manifest,
        meta,
        loaded: Mutex::new(Vec::new()),
    })
}

/// Whether libcuda can be loaded; asked once, since cudarc panics on a driver call without it.
fn require_driver() -> Res<()> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    if *PRESENT.get_or_init(crate::device::driver_present) {
        Ok(())
    } else {
        fail(
            KilnStatus::NoDriver,
            "no CUDA driver (libcuda.so) could be loaded: loading and launching kernels needs an NVIDIA GPU and its driver",
        )
    }
}

fn current_context() -> Res<cu::CUcontext> {
    let mut ctx = ptr::null_mut();
    // SAFETY: a plain out-parameter; require_driver has checked that libcuda loads.
    let r = unsafe { cu::cuCtxGetCurrent(&mut ctx) };
    match r {
        CuErr::CUDA_SUCCESS if !ctx.is_null() => Ok(ctx),
        CuErr::CUDA_SUCCESS | CuErr::CUDA_ERROR_NOT_INITIALIZED => {
            fail(KilnStatus::NoContext, NO_CONTEXT)
        }
        e => fail(
            KilnStatus::NoContext,
            format!("cuCtxGetCurrent failed ({e:?}); {NO_CONTEXT}"),
        ),
    }
}

/// Load manifest kernel `index` into the current context `ctx` and opt it in to its shared memory.
fn load(set: &KilnSet, index: usize, ctx: cu::CUcontext) -> Res<KilnKernel> {
    let mk = &set.manifest.kernels[index];
    let meta = set.meta[index].clone();
    let cubin = set
        .manifest
        .cubin(&set.dir, mk)
        .map_err(|e| Fail(KilnStatus::Manifest, e.to_string()))?;
    let mut module = ptr::null_mut();
    // SAFETY: `cubin` is a whole ELF image (hash-checked against the manifest) that lives across
    // the call; the driver copies what it keeps. `ctx` is current on this thread.
    let r = unsafe { cu::cuModuleLoadData(&mut module, cubin.as_ptr().cast()) };
    if r != CuErr::CUDA_SUCCESS {
        let hint = match r {
            CuErr::CUDA_ERROR_NO_BINARY_FOR_GPU
            | CuErr::CUDA_ERROR_INVALID_IMAGE
            | CuErr::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
                format!(
                    " (it was built for {}, tuned on {}: is this that GPU?)",
                    set.manifest.arch, set.manifest.gpu
                )
            }
            _ => String::new(),
        };
        return fail(
            KilnStatus::Load,
            format!("cuModuleLoadData({}) failed: {r:?}{hint}", mk.cubin),
        );
    }
    let unload_with = |status, msg: String| {
        // SAFETY: `module` was loaded just above into the current context and nothing uses it yet.
        unsafe { cu::cuModuleUnload(module) };
        fail(status, msg)
    };
    let mut func = ptr::null_mut();
    // SAFETY: `module` is loaded; `entry` is NUL-terminated.
    let r = unsafe { cu::cuModuleGetFunction(&mut func, module, meta.entry.as_ptr()) };
    if r != CuErr::CUDA_SUCCESS {
        return unload_with(
            KilnStatus::Load,
            format!("{} has no entry {} ({r:?}); re-export", mk.cubin, mk.entry),
        );
    }
    let smem = meta.geometry.dynamic_smem_bytes;
    if smem > DEFAULT_SMEM_LIMIT {
        let value = c_int::try_from(smem).unwrap_or(c_int::MAX);
        let attr = cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: `func` came from the loaded module; the attribute takes an int.
        let r = unsafe { cu::cuFuncSetAttribute(func, attr, value) };
        if r != CuErr::CUDA_SUCCESS {
            return unload_with(
                KilnStatus::Load,
                format!(
                    "{} needs {smem} B of dynamic shared memory, which this GPU refused ({r:?})",
                    mk.entry
                ),
            );
        }
    }
    Ok(KilnKernel {
        index,
        ctx,
        module,
        func,
        meta,
    })
}

fn find(set: &KilnSet, family: &str, problem_json: &str) -> Res<*const KilnKernel> {
    let problem: Value = serde_json::from_str(problem_json).map_err(|e| {
        Fail(
            KilnStatus::InvalidArgument,
            format!("problem_json is not JSON ({e}): {problem_json}"),
        )
    })?;
    let Some(index) = set
        .manifest
        .kernels
        .iter()
        .position(|k| k.family == family && k.problem == problem)
    else {
        let of_family: Vec<String> = set
            .manifest
            .kernels
            .iter()
            .filter(|k| k.family == family)
            .map(|k| k.problem.to_string())
            .collect();
        let manifest = set.dir.join("manifest.json");
        let msg = if of_family.is_empty() {
            let mut families: Vec<&str> = set
                .manifest
                .kernels
                .iter()
                .map(|k| k.family.as_str())
                .collect();
            families.sort_unstable();
            families.dedup();
            format!(
                "{} has no {family} kernels (it has: {})",
                manifest.display(),
                families.join(", ")
            )
        } else {
            let shown = of_family
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = if of_family.len() > 20 {
                format!(" and {} more", of_family.len() - 20)
            } else {
                String::new()
            };
            format!(
                "{} has no {family} kernel for {problem} (problems are matched exactly); it has {shown}{more}",
                manifest.display()
            )
        };
        return fail(KilnStatus::NotFound, msg);
    };
    require_driver()?;
    let ctx = current_context()?;
    let mut loaded = set.loaded.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(k) = loaded.iter().find(|k| k.index == index && k.ctx == ctx) {
        return Ok(&**k);
    }
    let kernel = Box::new(load(set, index, ctx)?);
    let handle: *const KilnKernel = &*kernel;
    loaded.push(kernel);
    Ok(handle)
}

/// One kernel-parameter slot for `launch`: the address of a local holding the argument's value.
fn slot<T>(value: &mut T) -> *mut c_void {
    (value as *mut T).cast()
}

/// Enqueue `k` on `stream` with the manifest geometry; `args` holds one pointer per argument.
fn launch(k: &KilnKernel, stream: *mut c_void, args: *mut *mut c_void) -> Res<()> {
    let meta = &k.meta;
    if args.is_null() {
        return fail(
            KilnStatus::InvalidArgument,
            format!(
                "args is NULL; pass {} pointers, one to each argument of {}",
                meta.args.len(),
                meta.entry.to_string_lossy()
            ),
        );
    }
    // SAFETY: kiln.h asks for an array of one pointer per manifest argument.
    let slots = unsafe { std::slice::from_raw_parts(args, meta.args.len()) };
    if let Some(i) = slots.iter().position(|p| p.is_null()) {
        let name = meta.args[i].0.to_string_lossy();
        return fail(
            KilnStatus::InvalidArgument,
            format!("args[{i}] (argument {name}) is NULL; it must point at the argument's value"),
        );
    }
    for s in meta.scratch.iter().filter(|s| s.bytes > 0) {
        // SAFETY: a scratch argument is a pointer (checked by kiln_open), so its slot points at a
        // pointer-sized value; the slot is non-NULL (checked above).
        let p = unsafe { *(slots[s.arg_index] as *const *const c_void) };
        if p.is_null() {
            return fail(
                KilnStatus::InvalidArgument,
                format!(
                    "scratch buffer {} is NULL; the kernel needs {} bytes there",
                    s.arg.to_string_lossy(),
                    s.bytes
                ),
            );
        }
    }
    let g = &meta.geometry;
    let r = if g.cluster == [1, 1, 1] {
        // SAFETY: `func` is loaded (its set is open); `args` holds one pointer per parameter in the
        // manifest's order, which is the kernel's own order (kiln export writes it from the same
        // family description the template is rendered from); the geometry is the one the kernel
        // was exported and opted in for. `stream` is the caller's CUstream (NULL: the default stream).
        unsafe {
            cu::cuLaunchKernel(
                k.func,
                g.grid[0],
                g.grid[1],
                g.grid[2],
                g.block[0],
                g.block[1],
                g.block[2],
                g.dynamic_smem_bytes,
                stream.cast(),
                args,
                ptr::null_mut(),
            )
        }
    } else {
        // SAFETY: CUlaunchAttribute is plain C data, for which all-zero bytes are valid.
        let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        // The union member the id selects (writing a union field is safe).
        attr.value.clusterDim.x = g.cluster[0];
        attr.value.clusterDim.y = g.cluster[1];
        attr.value.clusterDim.z = g.cluster[2];
        let config = cu::CUlaunchConfig {
            gridDimX: g.grid[0],
            gridDimY: g.grid[1],
            gridDimZ: g.grid[2],
            blockDimX: g.block[0],
            blockDimY: g.block[1],
            blockDimZ: g.block[2],
            sharedMemBytes: g.dynamic_smem_bytes,
            hStream: stream.cast(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as for cuLaunchKernel above; `config` and `attr` outlive the call.
        unsafe { cu::cuLaunchKernelEx(&config, k.func, args, ptr::null_mut()) }
    };
    if r == CuErr::CUDA_SUCCESS {
        return Ok(());
    }
    let hint = match r {
        CuErr::CUDA_ERROR_INVALID_HANDLE | CuErr::CUDA_ERROR_INVALID_CONTEXT | CuErr::CUDA_ERROR_CONTEXT_IS_DESTROYED => {
            "; is the stream on the device and context that were current when kiln_find loaded the kernel?"
        }
        CuErr::CUDA_ERROR_ILLEGAL_ADDRESS | CuErr::CUDA_ERROR_LAUNCH_FAILED | CuErr::CUDA_ERROR_ILLEGAL_INSTRUCTION => {
            "; an earlier kernel in this context faulted (such errors are sticky): check the pointers passed"
        }
        _ => "",
    };
    fail(
        KilnStatus::Launch,
        format!(
            "launching {} failed: {r:?}{hint}",
            meta.entry.to_string_lossy()
        ),
    )
}

/// Unload a kernel's module from the context it was loaded into. Errors are ignored: with the
/// context gone there is nothing left to free.
fn unload(k: &KilnKernel) {
    // SAFETY: `ctx` and `module` are the handles the driver gave `load` (so libcuda is loaded);
    // kiln.h asks callers to close a set before destroying the contexts it loaded into.
    unsafe {
        if cu::cuCtxPushCurrent_v2(k.ctx) == CuErr::CUDA_SUCCESS {
            cu::cuModuleUnload(k.module);
            let mut popped = ptr::null_mut();
            cu::cuCtxPopCurrent_v2(&mut popped);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (kiln.h)

/// Open an export folder: read and check `manifest.json`. No GPU work.
///
/// # Safety
/// `export_dir` is a NUL-terminated string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_open(
    export_dir: *const c_char,
    out: *mut *mut KilnSet,
) -> KilnStatus {
    guard("kiln_open", || {
        // SAFETY: the function's contract covers both pointers.
        let (out, dir) = unsafe {
            (
                out_arg(out, "out", ptr::null_mut()),
                str_arg(export_dir, "export_dir"),
            )
        };
        let (out, dir) = (out?, to_path(dir?)?);
        *out = Box::into_raw(Box::new(open(dir)?));
        Ok(())
    })
}

/// Free a set, its kernels and their modules. NULL is allowed.
///
/// # Safety
/// `set` came from `kiln_open` and is not used again, nor are its kernels.
#[no_mangle]
pub unsafe extern "C" fn kiln_close(set: *mut KilnSet) {
    if set.is_null() {
        return;
    }
    guard("kiln_close", || {
        // SAFETY: `set` came from Box::into_raw in kiln_open, and the caller gives it up.
        let set = unsafe { Box::from_raw(set) };
        for k in set.loaded.into_inner().unwrap_or_else(|p| p.into_inner()) {
            unload(&k);
        }
        Ok(())
    });
}

/// The exported kernel for exactly this family and problem, loaded into the calling thread's
/// current context (once per context; later calls return the same handle).
///
/// # Safety
/// `set` is open; `family` and `problem_json` are NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_find(
    set: *mut KilnSet,
    family: *const c_char,
    problem_json: *const c_char,
    out: *mut *const KilnKernel,
) -> KilnStatus {
    guard("kiln_find", || {
        // SAFETY: the function's contract covers all four pointers.
        let (out, set, family, problem) = unsafe {
            (
                out_arg(out, "out", ptr::null()),
                set_arg(set),
                str_arg(family, "family"),
                str_arg(problem_json, "problem_json"),
            )
        };
        let (out, set) = (out?, set?);
        let (family, problem) = (utf8(family?, "family")?, utf8(problem?, "problem_json")?);
        *out = find(set, family, problem)?;
        Ok(())
    })
}

/// Entry name, geometry and argument counts of a kernel.
///
/// # Safety
/// `kernel` came from `kiln_find` and its set is open; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_kernel_info(
    kernel: *const KilnKernel,
    out: *mut KilnKernelDesc,
) -> KilnStatus {
    guard("kiln_kernel_info", || {
        if out.is_null() {
            return fail(KilnStatus::InvalidArgument, "out is NULL");
        }
        // SAFETY: the function's contract.
        let k = unsafe { kernel_arg(kernel) }?;
        let g = &k.meta.geometry;
        let info = KilnKernelDesc {
            entry: k.meta.entry.as_ptr(),
            family: k.meta.family.as_ptr(),
            grid: g.grid,
            block: g.block,
            cluster: g.cluster,
            dynamic_smem_bytes: g.dynamic_smem_bytes,
            num_args: k.meta.args.len(),
            num_scratch: k.meta.scratch.len(),
        };
        // SAFETY: `out` is non-NULL and writable (the function's contract).
        unsafe { out.write(info) };
        Ok(())
    })
}

/// Name and C type of argument `i` (in launch order). Either out-pointer may be NULL.
///
/// # Safety
/// `kernel` came from `kiln_find` and its set is open; non-NULL out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_kernel_arg(
    kernel: *const KilnKernel,
    i: usize,
    name: *mut *const c_char,
    c_type: *mut *const c_char,
) -> KilnStatus {
    guard("kiln_kernel_arg", || {
        // SAFETY: the function's contract.
        let k = unsafe { kernel_arg(kernel) }?;
        let Some((n, t)) = k.meta.args.get(i) else {
            return fail(
                KilnStatus::InvalidArgument,
                format!(
                    "argument {i} of {}, which has {}",
                    k.meta.entry.to_string_lossy(),
                    k.meta.args.len()
                ),
            );
        };
        // SAFETY: the function's contract covers both out-pointers.
        unsafe {
            write_opt(name, n.as_ptr());
            write_opt(c_type, t.as_ptr());
        }
        Ok(())
    })
}

/// Scratch buffer `i`: the argument it is passed as, its size, and whether it must be zeroed
/// before the first launch. Any out-pointer may be NULL.
///
/// # Safety
/// `kernel` came from `kiln_find` and its set is open; non-NULL out-pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn kiln_kernel_scratch(
    kernel: *const KilnKernel,
    i: usize,
    arg_name: *mut *const c_char,
    bytes: *mut usize,
    zero_init: *mut c_int,
) -> KilnStatus {
    guard("kiln_kernel_scratch", || {
        // SAFETY: the function's contract.
        let k = unsafe { kernel_arg(kernel) }?;
        let Some(s) = k.meta.scratch.get(i) else {
            return fail(
                KilnStatus::InvalidArgument,
                format!(
                    "scratch buffer {i} of {}, which has {}",
                    k.meta.entry.to_string_lossy(),
                    k.meta.scratch.len()
                ),
            );
        };
        // SAFETY: the function's contract covers the three out-pointers.
        unsafe {
            write_opt(arg_name, s.arg.as_ptr());
            write_opt(bytes, s.bytes);
            write_opt(zero_init, c_int::from(s.zero_init));
        }
        Ok(())
    })
}

/// Enqueue a kernel on `stream` (a CUstream or cudaStream_t; NULL: the default stream) with the
/// manifest's geometry. `args[i]` points at the value of argument `i`, as cuLaunchKernel's
/// kernelParams.
///
/// # Safety
/// `kernel` came from `kiln_find` and its set is open; `args` holds one valid pointer per
/// argument, each at a value of the argument's C type; device pointers are valid for the launch.
#[no_mangle]
pub unsafe extern "C" fn kiln_launch(
    kernel: *const KilnKernel,
    stream: *mut c_void,
    args: *mut *mut c_void,
) -> KilnStatus {
    guard("kiln_launch", || {
        // SAFETY: the function's contract.
        let k = unsafe { kernel_arg(kernel) }?;
        launch(k, stream, args)
    })
}

/// The checks the typed GEMM calls share: `kern` is a `family` kernel taking `args`, exported
/// (`exported`: its `[M, N, K]`, `None` for another kernel) for exactly `mnk`; no operand is
/// NULL; a split-K launch has its counters.
fn check_gemm_call(
    kern: &KilnKernel,
    exported: Option<[c_int; 3]>,
    family: &str,
    args: &[&str],
    mnk: [c_int; 3],
    operands: &[(&str, *const c_void)],
    counters: *mut c_void,
) -> Res<()> {
    let Some(p) = exported else {
        return fail(
            KilnStatus::InvalidArgument,
            format!(
                "kernel {} is not a {family} kernel taking ({}); launch it with kiln_launch",
                kern.meta.entry.to_string_lossy(),
                args.join(", ")
            ),
        );
    };
    if mnk != p {
        return fail(
            KilnStatus::InvalidArgument,
            format!(
                "M, N, K = {}, {}, {}, but kernel {} was exported for {}, {}, {} and its grid is that \
                 problem's; kiln_find the kernel of this problem",
                mnk[0],
                mnk[1],
                mnk[2],
                kern.meta.entry.to_string_lossy(),
                p[0],
                p[1],
                p[2]
            ),
        );
    }
    for &(name, ptr) in operands {
        if ptr.is_null() {
            return fail(KilnStatus::InvalidArgument, format!("{name} is NULL"));
        }
    }
    // The families' launch contract: grid.z is the split-K factor, and a split launch counts
    // arrivals per output tile in `counters` (checked here too, whether or not the manifest
    // lists it as scratch).
    let g = &kern.meta.geometry;
    if g.grid[2] > 1 && counters.is_null() {
        return fail(
            KilnStatus::InvalidArgument,
            format!(
                "counters is NULL, but this kernel splits K {} ways and needs {} zeroed unsigned ints there",
                g.grid[2], g.grid[0]
            ),
        );
    }
    Ok(())
}

/// C[M,N] = A[M,K] · B[N,K]^T (bf16, row-major) with a `gemm_bf16` kernel, which must have been
/// found for exactly this M, N, K (its grid is the problem's).
///
/// # Safety
/// `kernel` came from `kiln_find` and its set is open; the device pointers hold M*K, N*K and
/// M*N bf16 values and the scratch sizes `kiln_kernel_scratch` gives.
#[no_mangle]
pub unsafe extern "C" fn kiln_gemm_bf16(
    kernel: *const KilnKernel,
    stream: *mut c_void,
    a: *const c_void,
    b: *const c_void,
    c: *mut c_void,
    workspace: *mut c_void,
    counters: *mut c_void,
    m: c_int,
    n: c_int,
    k: c_int,
) -> KilnStatus {
    guard("kiln_gemm_bf16", || {
        // SAFETY: the function's contract.
        let kern = unsafe { kernel_arg(kernel) }?;
        check_gemm_call(
            kern,
            kern.meta.gemm,
            "gemm_bf16",
            &GEMM_BF16_ARGS,
            [m, n, k],
            &[("A", a), ("B", b), ("C", c.cast_const())],
            counters,
        )?;
        let (mut a, mut b, mut c, mut workspace, mut counters, mut m, mut n, mut k) =
            (a, b, c, workspace, counters, m, n, k);
        let mut slots = [
            slot(&mut a),
            slot(&mut b),
            slot(&mut c),
            slot(&mut workspace),
            slot(&mut counters),
            slot(&mut m),
            slot(&mut n),
            slot(&mut k),
        ];
        launch(kern, stream, slots.as_mut_ptr())
    })
}

/// Y[M,N] = X[M,K] · W[N,K]^T in block FP8 with a `gemm_fp8` kernel found for exactly this
/// M, N, K: encodes the two tensor maps the kernel reads X and W through (zeros for variants
/// that ignore them) and launches.
///
/// # Safety
/// `kernel` came from `kiln_find` and its set is open; the device pointers hold M*K and N*K
/// e4m3 codes, M*(K/128) and ceil(N/128)*(K/128) fp32 scales, M*N bf16 outputs and the scratch
/// sizes `kiln_kernel_scratch` gives.
#[no_mangle]
pub unsafe extern "C" fn kiln_gemm_fp8(
    kernel: *const KilnKernel,
    stream: *mut c_void,
    x: *const c_void,
    sx: *const c_void,
    w: *const c_void,
    sw: *const c_void,
    y: *mut c_void,
    workspace: *mut c_void,
    counters: *mut c_void,
    m: c_int,
    n: c_int,
    k: c_int,
) -> KilnStatus {
    guard("kiln_gemm_fp8", || {
        // SAFETY: the function's contract.
        let kern = unsafe { kernel_arg(kernel) }?;
        check_gemm_call(
            kern,
            kern.meta.gemm_fp8.map(|(p, _)| p),
            "gemm_fp8",
            &GEMM_FP8_ARGS,
            [m, n, k],
            &[
                ("X", x),
                ("SX", sx),
                ("W", w),
                ("SW", sw),
                ("Y", y.cast_const()),
            ],
            counters,
        )?;
        let boxes = kern.meta.gemm_fp8.and_then(|(_, b)| b);
        use crate::launch::gemm_fp8::TensorMapArg;
        let (mut tmap_x, mut tmap_w) = match boxes {
            Some([x_rows, w_rows]) => {
                let enc = |ptr: *const c_void, rows: c_int, box_rows: u32, what: &str| {
                    TensorMapArg::u8_rows(ptr as u64, rows as u64, k as u64, box_rows, what)
                        .map_err(|e| Fail(KilnStatus::InvalidArgument, e.to_string()))
                };
                (enc(x, m, x_rows, "X")?, enc(w, n, w_rows, "W")?)
            }
            None => (TensorMapArg::unused(), TensorMapArg::unused()),
        };
        let (mut x, mut sx, mut w, mut sw, mut y, mut workspace, mut counters, mut m, mut n, mut k) =
            (x, sx, w, sw, y, workspace, counters, m, n, k);
        let mut slots = [
            slot(&mut x),
            slot(&mut sx),
            slot(&mut w),
            slot(&mut sw),
            slot(&mut y),
            slot(&mut workspace),
            slot(&mut counters),
            slot(&mut m),
            slot(&mut n),
            slot(&mut k),
            slot(&mut tmap_x),
            slot(&mut tmap_w),
        ];
        launch(kern, stream, slots.as_mut_ptr())
    })
}

/// The message of this thread's last failed kiln call ("" after a success), valid until the
/// thread's next kiln call.
#[no_mangle]
pub extern "C" fn kiln_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.try_with(|e| e.borrow().as_ptr()).ok())
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests;
