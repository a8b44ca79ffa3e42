//! Finding NVRTC and the CUDA headers.
//!
//! Search order (first hit wins):
//! 1. `KILN_CUDA_ROOT` — any folder holding `include/cuda_bf16.h` and
//!    `lib64/` or `lib/` with `libnvrtc.so.13` (or `libnvrtc.so`);
//! 2. `CUDA_HOME`, then `CUDA_PATH`;
//! 3. `/usr/local/cuda` (the conventional toolkit location);
//! 4. the project-local install made by `./setup.sh`: `.kiln/toolchain/nvidia/cu13`,
//!    looked for in the current directory, the running executable's folder,
//!    and each of their parents.
//!
//! The library is loaded by its full path with `RTLD_GLOBAL` before cudarc
//! asks the loader for `libnvrtc.so.13`; the loader then hands cudarc the copy
//! that is already loaded, so no `LD_LIBRARY_PATH` is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{CodegenError, Result};

/// Relative location of the project-local NVRTC install.
pub const LOCAL_TOOLCHAIN: &str = ".kiln/toolchain/nvidia/cu13";

const LIB_NAMES: [&str; 2] = ["libnvrtc.so.13", "libnvrtc.so"];
const LIB_DIRS: [&str; 3] = ["lib64", "lib", "targets/x86_64-linux/lib"];
const HEADER_PROBE: &str = "cuda_bf16.h";

/// A found and loaded NVRTC with its headers.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// The toolkit root the library and headers came from.
    pub root: PathBuf,
    /// Which rule of the search order found it (e.g. `KILN_CUDA_ROOT`, `project-local`).
    pub found_by: String,
    pub nvrtc_lib: PathBuf,
    pub include_dirs: Vec<PathBuf>,
    /// NVRTC's own version, as the loaded library reports it.
    pub nvrtc_version: (i32, i32),
}

impl Toolchain {
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.nvrtc_version.0, self.nvrtc_version.1)
    }
}

/// A candidate root and the rule that proposed it.
fn candidates() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for var in ["KILN_CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push((var.to_string(), PathBuf::from(v)));
        }
    }
    out.push((
        "/usr/local/cuda".to_string(),
        PathBuf::from("/usr/local/cuda"),
    ));
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            starts.push(dir.to_path_buf());
        }
    }
    for start in starts {
        for dir in start.ancestors() {
            let cand = dir.join(LOCAL_TOOLCHAIN);
            if cand.is_dir() && !out.iter().any(|(_, p)| *p == cand) {
                out.push(("project-local".to_string(), cand));
            }
        }
    }
    out
}

fn find_lib(root: &Path) -> Option<PathBuf> {
    LIB_DIRS
        .iter()
        .flat_map(|d| LIB_NAMES.iter().map(move |n| root.join(d).join(n)))
        .find(|p| p.is_file())
}

fn find_include(root: &Path) -> Option<PathBuf> {
    [
        root.join("include"),
        root.join("targets/x86_64-linux/include"),
    ]
    .into_iter()
    .find(|p| p.join(HEADER_PROBE).is_file())
}

/// Locate NVRTC and headers without loading anything.
pub fn locate() -> Result<(String, PathBuf, PathBuf, PathBuf)> {
    locate_in(candidates())
}

/// The first candidate root holding both the library and the headers.
pub fn locate_in(cands: Vec<(String, PathBuf)>) -> Result<(String, PathBuf, PathBuf, PathBuf)> {
    let mut searched = Vec::new();
    let mut lib_without_headers = None;
    for (rule, root) in cands {
        searched.push(format!("{rule}={}", root.display()));
        match (find_lib(&root), find_include(&root)) {
            (Some(lib), Some(inc)) => return Ok((rule, root, lib, inc)),
            (Some(_), None) => lib_without_headers = Some(root),
            _ => {}
        }
    }
    if let Some(root) = lib_without_headers {
        return Err(CodegenError::HeadersNotFound {
            searched: root.display().to_string(),
        });
    }
    Err(CodegenError::NvrtcNotFound {
        searched: searched.join(", "),
    })
}

static LOADED: OnceLock<std::result::Result<Toolchain, String>> = OnceLock::new();

/// Find NVRTC, load it once per process, and report what was loaded.
pub fn toolchain() -> Result<Toolchain> {
    let res = LOADED.get_or_init(|| load().map_err(|e| e.to_string()));
    match res {
        Ok(t) => Ok(t.clone()),
        // Re-run discovery to return a typed error (cheap: only reached on failure).
        Err(_) => Err(load().err().unwrap_or_else(|| CodegenError::NvrtcLoad {
            lib: PathBuf::new(),
            reason: "toolchain failed to load earlier in this process".into(),
        })),
    }
}

fn load() -> Result<Toolchain> {
    let (found_by, root, lib, include) = locate()?;
    // libnvrtc opens its builtins library by name at compile time: load it
    // first, by path, so that lookup finds the copy already in the process.
    if let Some(builtins) = builtins_beside(&lib) {
        preload(&builtins)?;
    }
    preload(&lib)?;
    // SAFETY: only probes whether the library can be opened by name.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CodegenError::NvrtcLoad {
            lib,
            reason: "cudarc could not resolve libnvrtc.so.13 after preloading it".into(),
        });
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: plain out-parameters; the library is present (checked above).
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CodegenError::NvrtcLoad {
            lib,
            reason: format!("nvrtcVersion returned {rc:?}"),
        });
    }
    let mut include_dirs = vec![include.clone()];
    // CCCL headers live beside the runtime headers in newer toolkits.
    let cccl = include.join("cccl");
    if cccl.is_dir() {
        include_dirs.push(cccl);
    }
    Ok(Toolchain {
        root,
        found_by,
        nvrtc_lib: lib,
        include_dirs,
        nvrtc_version: (major, minor),
    })
}

/// `libnvrtc-builtins.so.*` in the library's folder (the real file, not a link).
fn builtins_beside(lib: &Path) -> Option<PathBuf> {
    let dir = lib.parent()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libnvrtc-builtins.so") && !name.contains(".alt.")
        })
        .collect();
    // The longest name is the most specific version (e.g. .so.13.0 over .so).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// Load a library by full path into the global namespace, for good.
fn preload(path: &Path) -> Result<()> {
    // SAFETY: loading a shared library runs its initialisers; NVRTC's are
    // benign. The handle is leaked on purpose so the library stays loaded for
    // cudarc (and libnvrtc), which resolve it again by soname.
    let handle = unsafe {
        libloading::os::unix::Library::open(
            Some(path),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .map_err(|e| CodegenError::NvrtcLoad {
        lib: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::mem::forget(handle);
    Ok(())
}

/// Where compiled kernels are cached: `$KILN_CACHE`, else the user cache dir.
pub fn cache_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("KILN_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(v);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("kiln")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(dir: &Path, lib: bool, headers: bool) -> PathBuf {
        if lib {
            std::fs::create_dir_all(dir.join("lib64")).unwrap();
            std::fs::write(dir.join("lib64/libnvrtc.so.13"), b"").unwrap();
        }
        if headers {
            std::fs::create_dir_all(dir.join("include")).unwrap();
            std::fs::write(dir.join("include/cuda_bf16.h"), b"").unwrap();
        }
        dir.to_path_buf()
    }

    #[test]
    fn nothing_found_says_to_run_setup() {
        let dir = tempfile::tempdir().unwrap();
        let err = locate_in(vec![("CUDA_HOME".into(), dir.path().join("nope"))]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("./setup.sh"), "{msg}");
        assert!(msg.contains("CUDA_HOME="), "{msg}");
    }

    #[test]
    fn first_complete_root_wins() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        let only_headers = fake_root(a.path(), false, true);
        let full = fake_root(b.path(), true, true);
        let other = fake_root(c.path(), true, true);
        let (rule, root, lib, inc) = locate_in(vec![
            ("KILN_CUDA_ROOT".into(), only_headers),
            ("CUDA_HOME".into(), full.clone()),
            ("project-local".into(), other),
        ])
        .unwrap();
        assert_eq!(rule, "CUDA_HOME");
        assert_eq!(root, full);
        assert!(lib.ends_with("lib64/libnvrtc.so.13"));
        assert!(inc.ends_with("include"));
    }

    #[test]
    fn library_without_headers_is_named() {
        let a = tempfile::tempdir().unwrap();
        let root = fake_root(a.path(), true, false);
        let err = locate_in(vec![("CUDA_HOME".into(), root)]).unwrap_err();
        assert!(matches!(err, CodegenError::HeadersNotFound { .. }), "{err}");
    }
}
