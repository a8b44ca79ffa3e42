//! Content-addressed store of compiled kernels: `<dir>/<key>.cubin` plus
//! `<dir>/<key>.json` (entry, resources, log, cubin sha256). Every file is
//! written to a unique temp file and atomically renamed, so concurrent
//! processes never see a partial entry; an entry whose cubin does not match
//! its recorded hash is treated as a miss and overwritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CodegenError, Result};
use crate::ptxas::KernelResources;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheMeta {
    pub entry: String,
    pub resources: KernelResources,
    pub log: String,
    pub cubin_sha256: String,
    /// Wall time of the compile that produced this entry.
    pub compile_ms: f64,
}

#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CompileCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.cubin")),
            self.dir.join(format!("{key}.json")),
        )
    }

    /// The cached cubin and its metadata, or `None` on a miss (absent or corrupt).
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, CacheMeta)> {
        let (cubin_path, meta_path) = self.paths(key);
        let meta: CacheMeta = serde_json::from_slice(&fs::read(meta_path).ok()?).ok()?;
        let cubin = fs::read(cubin_path).ok()?;
        (sha256_hex(&cubin) == meta.cubin_sha256).then_some((cubin, meta))
    }

    pub fn put(&self, key: &str, cubin: &[u8], meta: &CacheMeta) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| self.err(e))?;
        let (cubin_path, meta_path) = self.paths(key);
        let meta_json = serde_json::to_vec_pretty(meta).expect("cache metadata serialises");
        // Metadata first, cubin second: a reader needs both and checks the hash.
        write_atomic(&meta_path, &meta_json).map_err(|e| self.err(e))?;
        write_atomic(&cubin_path, cubin).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err(&self, e: std::io::Error) -> CodegenError {
        CodegenError::Cache {
            path: self.dir.clone(),
            reason: e.to_string(),
        }
    }
}

/// Write `bytes` to `path` through a uniquely named temp file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    drop(tmp.1);
    fs::rename(&tmp.0, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp.0);
    })
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stem = target
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("kiln");
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = dir.join(format!(".{stem}.tmp.{}.{n}.{nanos}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(cubin: &[u8]) -> CacheMeta {
        CacheMeta {
            entry: "k".into(),
            resources: KernelResources::default(),
            log: String::new(),
            cubin_sha256: sha256_hex(cubin),
            compile_ms: 1.0,
        }
    }

    #[test]
    fn round_trip_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        assert!(cache.get("abc").is_none());
        cache
            .put("abc", b"cubin-bytes", &meta(b"cubin-bytes"))
            .unwrap();
        let (bytes, m) = cache.get("abc").unwrap();
        assert_eq!(bytes, b"cubin-bytes");
        assert_eq!(m.entry, "k");
    }

    #[test]
    fn corrupt_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        cache
            .put("abc", b"cubin-bytes", &meta(b"cubin-bytes"))
            .unwrap();
        fs::write(dir.path().join("abc.cubin"), b"cubin-byt").unwrap();
        assert!(cache.get("abc").is_none());
        fs::write(dir.path().join("abc.json"), b"{not json").unwrap();
        assert!(cache.get("abc").is_none());
    }

    #[test]
    fn concurrent_writers_leave_a_valid_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || {
                    let c = CompileCache::new(p);
                    for _ in 0..20 {
                        c.put("same", b"payload", &meta(b"payload")).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(CompileCache::new(&path).get("same").is_some());
        let leftovers = fs::read_dir(&path).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp.")
        });
        assert_eq!(leftovers.count(), 0);
    }
}
