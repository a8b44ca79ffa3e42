//! Making CUDA libraries that cudarc opens by name (cuBLAS, cuBLASLt)
//! loadable when they sit in a toolkit folder that is not on the loader's
//! path: they are loaded once by full path into the global namespace, and
//! cudarc's later open by soname finds that copy.

use std::path::PathBuf;

/// Toolkit roots, in kiln's documented order.
fn roots() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["KILN_CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|k| {
            std::env::var_os(k)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .collect();
    v.push(PathBuf::from("/usr/local/cuda"));
    v
}

/// Load `lib<stem>.so.<major>` from the first toolkit root that has it.
/// Returns the path loaded, or `None` (the caller then relies on the loader's own search).
pub fn preload(stem: &str, major: u32) -> Option<PathBuf> {
    let name = format!("lib{stem}.so.{major}");
    for root in roots() {
        for dir in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            let p = root.join(dir).join(&name);
            if p.is_file() {
                // SAFETY: loading a CUDA library runs its initialisers, which
                // are benign; the handle is leaked so it stays loaded.
                let lib = unsafe {
                    libloading::os::unix::Library::open(
                        Some(&p),
                        libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                    )
                };
                if let Ok(lib) = lib {
                    std::mem::forget(lib);
                    return Some(p);
                }
            }
        }
    }
    None
}
