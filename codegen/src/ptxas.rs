//! Parsing of the `--ptxas-options=-v` report that NVRTC leaves in the program log.

use serde::{Deserialize, Serialize};

/// Resources ptxas assigned to one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_frame_bytes: u32,
    /// Static shared memory (dynamic shared memory is a launch parameter).
    pub static_smem_bytes: u32,
    pub barriers: u32,
}

impl KernelResources {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// Every kernel's resources, in the order ptxas reported them.
///
/// ptxas writes, per function: `Compiling entry function 'NAME' for 'sm_90a'`,
/// then `Function properties for NAME` / `N bytes stack frame, N bytes spill
/// stores, N bytes spill loads`, then `Used N registers, used N barriers,
/// N bytes smem, ...`. Device (non-entry) functions also appear; we keep entries.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let mut current: Option<KernelResources> = None;
    for line in log.lines() {
        let line = line.trim();
        if let Some(name) = quoted_after(line, "Compiling entry function '") {
            if let Some(done) = current.take() {
                out.push(done);
            }
            current = Some(KernelResources {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = current.as_mut() else {
            continue;
        };
        if line.contains("bytes stack frame") {
            cur.stack_frame_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            cur.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            cur.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_before(line, "registers").unwrap_or(0);
            cur.barriers = number_before(line, "barriers").unwrap_or(0);
            cur.static_smem_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    if let Some(done) = current.take() {
        out.push(done);
    }
    out
}

fn quoted_after(line: &str, prefix: &str) -> Option<String> {
    let start = line.find(prefix)? + prefix.len();
    let rest = &line[start..];
    let end = rest.find('\'')?;
    Some(rest[..end].to_string())
}

/// The integer immediately before `marker` (e.g. `128` in `Used 128 registers`).
fn number_before(line: &str, marker: &str) -> Option<u32> {
    let idx = line.find(marker)?;
    line[..idx].split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'kiln_a' for 'sm_90a'\n\
ptxas info    : Function properties for kiln_a\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'kiln_b' for 'sm_90a'\n\
ptxas info    : Function properties for kiln_b\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 40 registers, 384 bytes cmem[0]\n";

    #[test]
    fn parses_every_entry() {
        let r = parse_ptxas_log(LOG);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "kiln_a");
        assert_eq!(r[0].registers, 168);
        assert_eq!(r[0].spill_store_bytes, 4);
        assert_eq!(r[0].spill_load_bytes, 12);
        assert_eq!(r[0].stack_frame_bytes, 8);
        assert_eq!(r[0].static_smem_bytes, 1024);
        assert_eq!(r[0].barriers, 1);
        assert!(r[0].spills());
        assert_eq!(r[1].registers, 40);
        assert_eq!(r[1].barriers, 0);
        assert!(!r[1].spills());
    }

    #[test]
    fn empty_log_has_no_entries() {
        assert!(parse_ptxas_log("").is_empty());
    }
}
