//! Rendered CUDA source -> NVRTC -> cubin, through the compile cache.
//!
//! The cache key is exactly what NVRTC sees, minus machine paths: the source
//! (whose first line records the normalised options), the sorted options
//! without `-I` paths, the contents of every header the source reaches in the
//! include folders, the NVRTC version and the target arch.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{sha256_hex, CacheMeta, CompileCache};
use crate::error::{CodegenError, Result};
use crate::family::Arch;
use crate::ptxas::{parse_ptxas_log, KernelResources};
use crate::toolchain::{self, Toolchain};

/// One translation unit to compile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelSource {
    pub family: String,
    /// The `extern "C"` entry point this unit defines.
    pub entry: String,
    pub source: String,
}

/// What NVRTC is asked for, beyond the source.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CompileOptions {
    pub arch: Arch,
    /// Extra NVRTC options (e.g. `-lineinfo`, `--use_fast_math`).
    pub extra: Vec<String>,
}

impl CompileOptions {
    /// The options that define the output, sorted, with no machine paths.
    pub fn normalised(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![
            format!("--gpu-architecture={}", self.arch.as_str()),
            "-std=c++17".to_string(),
            "--ptxas-options=-v".to_string(),
        ];
        v.extend(self.extra.iter().cloned());
        v.sort();
        v.dedup();
        v
    }
}

/// Whether a cache miss may compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CachePolicy {
    #[default]
    Compile,
    /// A miss is an error: proves a deployment never JITs.
    NoCompile,
}

/// A compiled kernel and how it was obtained.
#[derive(Clone, Debug)]
pub struct CompiledKernel {
    pub family: String,
    pub entry: String,
    pub key: String,
    pub cubin: Vec<u8>,
    pub resources: KernelResources,
    /// NVRTC's program log (warnings, ptxas report), NUL bytes trimmed.
    pub log: String,
    pub cache_hit: bool,
    /// Time spent in this call (a cache read on a hit).
    pub wall_ms: f64,
    /// Time the NVRTC compile took when the entry was made.
    pub compile_ms: f64,
}

/// Compiles kernel sources with one toolchain and one cache.
pub struct Compiler {
    toolchain: Toolchain,
    cache: CompileCache,
    policy: CachePolicy,
    header_hashes: Mutex<HashMap<String, String>>,
}

impl Compiler {
    /// Find NVRTC (see [`toolchain`]) and use the default cache folder.
    pub fn new() -> Result<Self> {
        let policy =
            if std::env::var_os("KILN_NO_COMPILE").is_some_and(|v| v != "0" && !v.is_empty()) {
                CachePolicy::NoCompile
            } else {
                CachePolicy::Compile
            };
        Ok(Self::with(
            toolchain::toolchain()?,
            CompileCache::new(toolchain::cache_dir()),
            policy,
        ))
    }

    pub fn with(toolchain: Toolchain, cache: CompileCache, policy: CachePolicy) -> Self {
        Compiler {
            toolchain,
            cache,
            policy,
            header_hashes: Mutex::new(HashMap::new()),
        }
    }

    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    pub fn set_policy(&mut self, policy: CachePolicy) {
        self.policy = policy;
    }

    /// The source exactly as handed to NVRTC: a header comment with the
    /// normalised options, then the rendered text.
    pub fn annotated_source(src: &KernelSource, opts: &CompileOptions) -> String {
        format!(
            "// kiln: family {} entry {}\n// kiln: nvrtc {}\n{}",
            src.family,
            src.entry,
            opts.normalised().join(" "),
            src.source
        )
    }

    /// The content-addressed cache key for `src` under `opts`.
    pub fn key(&self, src: &KernelSource, opts: &CompileOptions) -> String {
        let annotated = Self::annotated_source(src, opts);
        let mut h = Sha256::new();
        h.update(b"kiln-compile-key-v1\0");
        h.update(annotated.as_bytes());
        h.update(b"\0opts\0");
        h.update(opts.normalised().join("\n").as_bytes());
        h.update(b"\0nvrtc\0");
        h.update(self.toolchain.version_string().as_bytes());
        h.update(b"\0arch\0");
        h.update(opts.arch.as_str().as_bytes());
        h.update(b"\0headers\0");
        h.update(self.headers_hash(&annotated).as_bytes());
        hex::encode(h.finalize())
    }

    /// Hash of the contents of every header reachable from `source` through
    /// the include folders (headers NVRTC provides itself are covered by its version).
    fn headers_hash(&self, source: &str) -> String {
        let top: BTreeSet<String> = includes_of(source).into_iter().collect();
        let memo_key = top.iter().cloned().collect::<Vec<_>>().join("\n");
        if let Some(h) = self.header_hashes.lock().unwrap().get(&memo_key) {
            return h.clone();
        }
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        let mut stack: Vec<(String, Option<PathBuf>)> =
            top.into_iter().map(|n| (n, None)).collect();
        let mut h = Sha256::new();
        while let Some((name, from_dir)) = stack.pop() {
            let Some(path) =
                resolve_header(&name, from_dir.as_deref(), &self.toolchain.include_dirs)
            else {
                continue;
            };
            if !seen.insert(path.clone()) {
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            let rel = self
                .toolchain
                .include_dirs
                .iter()
                .find_map(|d| path.strip_prefix(d).ok())
                .map(|p| p.display().to_string())
                .unwrap_or(name.clone());
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(&text);
            let dir = path.parent().map(Path::to_path_buf);
            for inc in includes_of(&String::from_utf8_lossy(&text)) {
                stack.push((inc, dir.clone()));
            }
        }
        let out = hex::encode(h.finalize());
        self.header_hashes
            .lock()
            .unwrap()
            .insert(memo_key, out.clone());
        out
    }

    /// Compile one source, from the cache when possible.
    pub fn compile(&self, src: &KernelSource, opts: &CompileOptions) -> Result<CompiledKernel> {
        let t0 = Instant::now();
        let key = self.key(src, opts);
        if let Some((cubin, meta)) = self.cache.get(&key) {
            return Ok(CompiledKernel {
                family: src.family.clone(),
                entry: src.entry.clone(),
                key,
                cubin,
                resources: meta.resources,
                log: meta.log,
                cache_hit: true,
                wall_ms: t0.elapsed().as_secs_f64() * 1e3,
                compile_ms: meta.compile_ms,
            });
        }
        if self.policy == CachePolicy::NoCompile {
            return Err(CodegenError::CacheMissForbidden {
                entry: src.entry.clone(),
                key,
            });
        }
        let annotated = Self::annotated_source(src, opts);
        let (cubin, log) = self.nvrtc(src, &annotated, opts)?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let resources = parse_ptxas_log(&log)
            .into_iter()
            .find(|r| r.name == src.entry)
            .unwrap_or_else(|| KernelResources {
                name: src.entry.clone(),
                ..Default::default()
            });
        let meta = CacheMeta {
            entry: src.entry.clone(),
            resources: resources.clone(),
            log: log.clone(),
            cubin_sha256: sha256_hex(&cubin),
            compile_ms,
        };
        self.cache.put(&key, &cubin, &meta)?;
        if std::env::var_os("KILN_DUMP_SOURCES").is_some() {
            let _ = self.dump(&key, &annotated);
        }
        Ok(CompiledKernel {
            family: src.family.clone(),
            entry: src.entry.clone(),
            key,
            cubin,
            resources,
            log,
            cache_hit: false,
            wall_ms: t0.elapsed().as_secs_f64() * 1e3,
            compile_ms,
        })
    }

    /// Compile many sources in parallel (rayon); results keep the input order.
    pub fn compile_many(
        &self,
        srcs: &[KernelSource],
        opts: &CompileOptions,
    ) -> Vec<Result<CompiledKernel>> {
        srcs.par_iter().map(|s| self.compile(s, opts)).collect()
    }

    /// PTX instead of a cubin (for reading; never cached).
    pub fn ptx(&self, src: &KernelSource, opts: &CompileOptions) -> Result<String> {
        let annotated = Self::annotated_source(src, opts);
        let prog = self.create(src, &annotated)?;
        let res = self.run_compile(prog, src, &annotated, opts, false);
        let out = res.and_then(|_| {
            // SAFETY: prog is a live program that compiled successfully.
            let ptx = unsafe { cudarc::nvrtc::result::get_ptx(prog) }
                .map_err(|e| nvrtc_err("nvrtcGetPTX", src, e))?;
            Ok(c_chars_to_string(&ptx))
        });
        // SAFETY: prog came from create_program and is destroyed once.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
        out
    }

    fn full_options(&self, opts: &CompileOptions, want_cubin: bool) -> Vec<String> {
        let mut v = opts.normalised();
        if !want_cubin {
            v.retain(|o| o != "--ptxas-options=-v");
            // PTX output needs a virtual arch.
            for o in v.iter_mut() {
                if let Some(a) = o.strip_prefix("--gpu-architecture=sm_") {
                    *o = format!("--gpu-architecture=compute_{a}");
                }
            }
        }
        for d in &self.toolchain.include_dirs {
            v.push(format!("-I{}", d.display()));
        }
        v
    }

    fn create(
        &self,
        src: &KernelSource,
        annotated: &str,
    ) -> Result<cudarc::nvrtc::sys::nvrtcProgram> {
        let c_src = CString::new(annotated).map_err(|_| CodegenError::Invalid {
            what: format!("source of {}", src.entry),
            reason: "contains a NUL byte".into(),
        })?;
        let name = CString::new(format!("{}.cu", src.entry)).expect("entry names have no NUL");
        cudarc::nvrtc::result::create_program(&c_src, Some(&name))
            .map_err(|e| nvrtc_err("nvrtcCreateProgram", src, e))
    }

    fn run_compile(
        &self,
        prog: cudarc::nvrtc::sys::nvrtcProgram,
        src: &KernelSource,
        annotated: &str,
        opts: &CompileOptions,
        want_cubin: bool,
    ) -> Result<String> {
        let options = self.full_options(opts, want_cubin);
        // SAFETY: prog is live; options are plain strings without NULs.
        let res = unsafe { cudarc::nvrtc::result::compile_program(prog, &options) };
        // SAFETY: prog is live.
        let log = unsafe { cudarc::nvrtc::result::get_program_log(prog) }
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        if res.is_err() {
            let key = self.key(src, opts);
            return Err(CodegenError::CompileFailed {
                family: src.family.clone(),
                entry: src.entry.clone(),
                options: opts.normalised().join(" "),
                log,
                dumped: self.dump(&key, annotated).ok(),
            });
        }
        Ok(log)
    }

    fn nvrtc(
        &self,
        src: &KernelSource,
        annotated: &str,
        opts: &CompileOptions,
    ) -> Result<(Vec<u8>, String)> {
        let prog = self.create(src, annotated)?;
        let out = self
            .run_compile(prog, src, annotated, opts, true)
            .and_then(|log| {
                let mut size = 0usize;
                // SAFETY: prog compiled successfully; size is an out-parameter.
                let rc = unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) };
                check(rc, "nvrtcGetCUBINSize", src)?;
                let mut cubin = vec![0u8; size];
                // SAFETY: the buffer holds exactly `size` bytes as NVRTC asked.
                let rc = unsafe {
                    cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char)
                };
                check(rc, "nvrtcGetCUBIN", src)?;
                Ok((cubin, log))
            });
        // SAFETY: prog came from create_program and is destroyed once.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
        out
    }

    /// Write the annotated source where a person can read it; returns the path.
    pub fn dump(&self, key: &str, annotated: &str) -> std::io::Result<PathBuf> {
        let dir = std::env::var_os("KILN_DUMP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.cache.dir().join("sources"));
        let path = dir.join(format!("{key}.cu"));
        crate::cache::write_atomic(&path, annotated.as_bytes())?;
        Ok(path)
    }
}

fn check(
    rc: cudarc::nvrtc::sys::nvrtcResult,
    call: &'static str,
    src: &KernelSource,
) -> Result<()> {
    if rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CodegenError::Nvrtc {
            call,
            entry: src.entry.clone(),
            reason: format!("{rc:?}"),
        })
    }
}

fn nvrtc_err(call: &'static str, src: &KernelSource, e: impl std::fmt::Debug) -> CodegenError {
    CodegenError::Nvrtc {
        call,
        entry: src.entry.clone(),
        reason: format!("{e:?}"),
    }
}

/// NVRTC strings end in NUL bytes; keep the text only.
fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

/// Header names in `#include <x>` / `#include "x"` lines.
fn includes_of(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix('#')?
                .trim_start()
                .strip_prefix("include")?
                .trim();
            let (open, close) = match rest.chars().next()? {
                '<' => ('<', '>'),
                '"' => ('"', '"'),
                _ => return None,
            };
            let inner = rest.strip_prefix(open)?;
            Some(inner[..inner.find(close)?].to_string())
        })
        .collect()
}

fn resolve_header(
    name: &str,
    from_dir: Option<&Path>,
    include_dirs: &[PathBuf],
) -> Option<PathBuf> {
    from_dir
        .into_iter()
        .map(Path::to_path_buf)
        .chain(include_dirs.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_lines_are_found() {
        let src = "#include <cuda_bf16.h>\n  #  include \"local.cuh\"\n// #include <no>\nint x;";
        assert_eq!(
            includes_of(src),
            vec!["cuda_bf16.h".to_string(), "local.cuh".to_string()]
        );
    }

    #[test]
    fn normalised_options_are_sorted_and_path_free() {
        let o = CompileOptions {
            extra: vec!["-lineinfo".into(), "-lineinfo".into()],
            ..Default::default()
        };
        let n = o.normalised();
        let mut sorted = n.clone();
        sorted.sort();
        assert_eq!(n, sorted);
        assert_eq!(n.iter().filter(|x| *x == "-lineinfo").count(), 1);
        assert!(n.iter().all(|x| !x.starts_with("-I")));
    }

    #[test]
    fn nul_terminated_logs_are_trimmed() {
        let raw: Vec<c_char> = b"hello\n\0\0\0".iter().map(|&b| b as c_char).collect();
        assert_eq!(c_chars_to_string(&raw), "hello");
    }
}
