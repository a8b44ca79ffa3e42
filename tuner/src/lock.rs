//! One tuner per GPU: an exclusive advisory lock on a file per device
//! ordinal, released by the OS when the process ends (even if killed).

use std::fs::File;
use std::path::PathBuf;

use kiln_runtime::{Result, RuntimeError};

pub struct GpuLock {
    _file: File,
    pub path: PathBuf,
}

/// `$KILN_LOCK_DIR` (default: the system temp folder) / `kiln-gpu<ordinal>.lock`.
pub fn lock_path(ordinal: usize) -> PathBuf {
    let dir = std::env::var_os("KILN_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("kiln-gpu{ordinal}.lock"))
}

impl GpuLock {
    /// Take the lock or fail at once with a message naming the holder.
    pub fn acquire(ordinal: usize) -> Result<GpuLock> {
        let path = lock_path(ordinal);
        let busy = |reason: String| RuntimeError::Busy {
            path: path.display().to_string(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| busy(format!("cannot open the lock file ({e})")))?;
        match file.try_lock() {
            Ok(()) => {
                use std::io::Write;
                let _ = file.set_len(0);
                let _ = (&file).write_all(format!("pid {}\n", std::process::id()).as_bytes());
                Ok(GpuLock { _file: file, path })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                Err(busy(format!(
                    "GPU {ordinal} is being tuned by {} ; wait for it to finish (two tuners on one GPU would corrupt each other's timings)",
                    holder.trim()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(busy(format!("cannot lock ({e})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_tuner_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("KILN_LOCK_DIR", dir.path());
        let first = GpuLock::acquire(7).unwrap();
        let err = GpuLock::acquire(7).err().expect("second lock must fail");
        let msg = err.to_string();
        assert!(msg.contains("being tuned by pid"), "{msg}");
        drop(first);
        GpuLock::acquire(7).expect("free again after the first is dropped");
    }
}
