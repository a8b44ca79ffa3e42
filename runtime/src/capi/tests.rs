use super::*;
use crate::manifest::{ManifestArg, ManifestScratch, MANIFEST_SCHEMA};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kiln-capi-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn c_path(&self) -> CString {
        CString::new(self.0.to_str().unwrap()).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn last_error() -> String {
    // SAFETY: kiln_last_error returns a NUL-terminated string valid until the next kiln call.
    unsafe { CStr::from_ptr(kiln_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A family's kernel arguments as `kiln export` writes them into the manifest.
fn family_args<F: kiln_codegen::Family>() -> Vec<ManifestArg> {
    F::args()
        .into_iter()
        .map(|a| ManifestArg {
            name: a.name.into(),
            c_type: a.c_type.into(),
        })
        .collect()
}

fn gemm_kernel(dir: &Path, m: u32, n: u32, k: u32) -> ManifestKernel {
    use sha2::Digest;
    let cubin = b"not a real cubin".to_vec();
    std::fs::write(dir.join("k.cubin"), &cubin).unwrap();
    ManifestKernel {
        family: "gemm_bf16".into(),
        problem: serde_json::json!({"m": m, "n": n, "k": k}),
        config: serde_json::json!({"bm": 16, "bn": 128, "bk": 64, "warps_m": 1, "warps_n": 2, "stages": 4, "split_k": 4}),
        entry: "kiln_gemm_bf16_test".into(),
        cubin: "k.cubin".into(),
        cubin_sha256: hex::encode(sha2::Sha256::digest(&cubin)),
        args: family_args::<kiln_codegen::families::gemm_bf16::GemmBf16>(),
        geometry: LaunchGeometry {
            grid: [20, 1, 4],
            block: [64, 1, 1],
            dynamic_smem_bytes: 81920,
            cluster: [1, 1, 1],
        },
        scratch: vec![
            ManifestScratch {
                arg: "workspace".into(),
                bytes: 4096,
                zero_init: false,
            },
            ManifestScratch {
                arg: "counters".into(),
                bytes: 80,
                zero_init: true,
            },
        ],
        source: "tuned".into(),
        median_us: Some(10.0),
    }
}

fn write_manifest(dir: &Path, kernels: Vec<ManifestKernel>) {
    let m = Manifest {
        schema: MANIFEST_SCHEMA,
        kiln: "test".into(),
        nvrtc: "13.0".into(),
        arch: "sm_90a".into(),
        gpu: "nvidia-h200".into(),
        kernels,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

fn open_dir(dir: &TempDir) -> (KilnStatus, *mut KilnSet) {
    let mut set = ptr::null_mut();
    // SAFETY: a valid C string and out-pointer.
    let s = unsafe { kiln_open(dir.c_path().as_ptr(), &mut set) };
    (s, set)
}

/// A kernel with null driver handles: enough for every call that stops before the driver.
fn fake_kernel(dir: &Path) -> KilnKernel {
    KilnKernel {
        index: 0,
        ctx: ptr::null_mut(),
        module: ptr::null_mut(),
        func: ptr::null_mut(),
        meta: check_kernel(&gemm_kernel(dir, 1, 2560, 7168), dir).unwrap(),
    }
}

#[test]
fn capi_open_and_find_without_a_gpu() {
    let dir = TempDir::new("open");
    write_manifest(&dir.0, vec![gemm_kernel(&dir.0, 1, 2560, 7168)]);
    let (s, set) = open_dir(&dir);
    assert_eq!(s, KilnStatus::Ok, "{}", last_error());
    assert!(!set.is_null());
    assert_eq!(last_error(), "");

    let fam = c"gemm_bf16";
    let mut k: *const KilnKernel = ptr::null();
    // SAFETY (this and the calls below): valid set, C strings and out-pointers.
    let s = unsafe {
        kiln_find(
            set,
            fam.as_ptr(),
            c"{\"m\": 2, \"n\": 2560, \"k\": 7168}".as_ptr(),
            &mut k,
        )
    };
    assert_eq!(s, KilnStatus::NotFound);
    let e = last_error();
    assert!(
        e.starts_with("kiln_find: ") && e.contains("\"m\":1") && e.contains("matched exactly"),
        "{e}"
    );
    let s = unsafe { kiln_find(set, c"gemm_fp8".as_ptr(), c"{}".as_ptr(), &mut k) };
    assert_eq!(s, KilnStatus::NotFound);
    assert!(
        last_error().contains("it has: gemm_bf16"),
        "{}",
        last_error()
    );
    let s = unsafe { kiln_find(set, fam.as_ptr(), c"{\"m\": 1,".as_ptr(), &mut k) };
    assert_eq!(s, KilnStatus::InvalidArgument);
    assert!(last_error().contains("not JSON"), "{}", last_error());

    // Key order does not matter; without a driver (or a context) the answer is an error, not a panic.
    let s = unsafe {
        kiln_find(
            set,
            fam.as_ptr(),
            c"{\"k\": 7168, \"n\": 2560, \"m\": 1}".as_ptr(),
            &mut k,
        )
    };
    if crate::device::driver_present() {
        assert_eq!(s, KilnStatus::NoContext, "{}", last_error());
        assert!(last_error().contains("cudaSetDevice"), "{}", last_error());
    } else {
        assert_eq!(s, KilnStatus::NoDriver, "{}", last_error());
        assert!(last_error().contains("libcuda"), "{}", last_error());
    }
    assert!(k.is_null());
    unsafe { kiln_close(set) };
    unsafe { kiln_close(ptr::null_mut()) };
}

#[test]
fn capi_bad_manifests() {
    let dir = TempDir::new("bad");
    let (s, set) = open_dir(&dir);
    assert_eq!(s, KilnStatus::Manifest);
    assert!(set.is_null());
    let e = last_error();
    assert!(
        e.starts_with("kiln_open: ") && e.contains("manifest.json") && e.contains("kiln export"),
        "{e}"
    );

    std::fs::write(
        dir.0.join("manifest.json"),
        "{\"schema\": 1, \"kernels\": [",
    )
    .unwrap();
    assert_eq!(open_dir(&dir).0, KilnStatus::Manifest);
    assert!(
        last_error().contains("not a kiln manifest"),
        "{}",
        last_error()
    );

    let mut k = gemm_kernel(&dir.0, 1, 2560, 7168);
    k.scratch[1].arg = "semaphores".into();
    write_manifest(&dir.0, vec![k]);
    assert_eq!(open_dir(&dir).0, KilnStatus::Manifest);
    assert!(
        last_error().contains("\"semaphores\" is not one of the kernel's arguments"),
        "{}",
        last_error()
    );

    let mut k = gemm_kernel(&dir.0, 1, 2560, 7168);
    k.cubin = "gone.cubin".into();
    write_manifest(&dir.0, vec![k]);
    assert_eq!(open_dir(&dir).0, KilnStatus::Manifest);
    assert!(
        last_error().contains("gone.cubin is missing"),
        "{}",
        last_error()
    );

    let mut k = gemm_kernel(&dir.0, 1, 2560, 7168);
    k.geometry.grid = [0, 1, 1];
    write_manifest(&dir.0, vec![k]);
    assert_eq!(open_dir(&dir).0, KilnStatus::Manifest);
    assert!(last_error().contains("zero dimension"), "{}", last_error());
}

#[test]
fn capi_null_pointers() {
    let dir = TempDir::new("null");
    write_manifest(&dir.0, vec![gemm_kernel(&dir.0, 1, 2560, 7168)]);
    let mut set = ptr::null_mut();
    let mut k: *const KilnKernel = ptr::null();
    let p = c"{}".as_ptr();
    // SAFETY (all calls below): every pointer is NULL or valid.
    unsafe {
        assert_eq!(
            kiln_open(ptr::null(), &mut set),
            KilnStatus::InvalidArgument
        );
        assert_eq!(last_error(), "kiln_open: export_dir is NULL");
        assert_eq!(
            kiln_open(dir.c_path().as_ptr(), ptr::null_mut()),
            KilnStatus::InvalidArgument
        );
        assert_eq!(
            kiln_find(ptr::null_mut(), p, p, &mut k),
            KilnStatus::InvalidArgument
        );
        assert_eq!(kiln_open(dir.c_path().as_ptr(), &mut set), KilnStatus::Ok);
        assert_eq!(
            kiln_find(set, ptr::null(), p, &mut k),
            KilnStatus::InvalidArgument
        );
        assert_eq!(
            kiln_find(set, p, ptr::null(), &mut k),
            KilnStatus::InvalidArgument
        );
        assert_eq!(
            kiln_find(set, p, p, ptr::null_mut()),
            KilnStatus::InvalidArgument
        );
        let mut info = std::mem::zeroed::<KilnKernelDesc>();
        assert_eq!(
            kiln_kernel_info(ptr::null(), &mut info),
            KilnStatus::InvalidArgument
        );
        assert_eq!(
            kiln_kernel_arg(ptr::null(), 0, ptr::null_mut(), ptr::null_mut()),
            KilnStatus::InvalidArgument
        );
        let s = kiln_kernel_scratch(
            ptr::null(),
            0,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
        );
        assert_eq!(s, KilnStatus::InvalidArgument);
        assert_eq!(
            kiln_launch(ptr::null(), ptr::null_mut(), ptr::null_mut()),
            KilnStatus::InvalidArgument
        );
        let s = kiln_gemm_bf16(
            ptr::null(),
            ptr::null_mut(),
            p.cast(),
            p.cast(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            1,
            2560,
            7168,
        );
        assert_eq!(s, KilnStatus::InvalidArgument);
        assert_eq!(last_error(), "kiln_gemm_bf16: kernel is NULL");
        kiln_close(set);
    }
}

#[test]
fn capi_kernel_queries_and_launch_checks() {
    let dir = TempDir::new("queries");
    let k = fake_kernel(&dir.0);
    let h: *const KilnKernel = &k;
    // SAFETY (all calls below): `h` is a live kernel and every out-pointer valid or NULL;
    // each launch below is refused before the (null) driver handles are used.
    unsafe {
        let mut info = std::mem::zeroed::<KilnKernelDesc>();
        assert_eq!(kiln_kernel_info(h, &mut info), KilnStatus::Ok);
        assert_eq!(CStr::from_ptr(info.entry), c"kiln_gemm_bf16_test");
        assert_eq!(CStr::from_ptr(info.family), c"gemm_bf16");
        assert_eq!(
            (info.grid, info.block, info.cluster),
            ([20, 1, 4], [64, 1, 1], [1, 1, 1])
        );
        assert_eq!(
            (info.dynamic_smem_bytes, info.num_args, info.num_scratch),
            (81920, 8, 2)
        );

        let (mut name, mut ty) = (ptr::null(), ptr::null());
        assert_eq!(kiln_kernel_arg(h, 3, &mut name, &mut ty), KilnStatus::Ok);
        assert_eq!(
            (CStr::from_ptr(name), CStr::from_ptr(ty)),
            (c"workspace", c"float*")
        );
        assert_eq!(
            kiln_kernel_arg(h, 8, &mut name, ptr::null_mut()),
            KilnStatus::InvalidArgument
        );

        let (mut bytes, mut zero) = (0usize, -1);
        assert_eq!(
            kiln_kernel_scratch(h, 1, &mut name, &mut bytes, &mut zero),
            KilnStatus::Ok
        );
        assert_eq!((CStr::from_ptr(name), bytes, zero), (c"counters", 80, 1));
        assert_eq!(
            kiln_kernel_scratch(h, 2, ptr::null_mut(), &mut bytes, ptr::null_mut()),
            KilnStatus::InvalidArgument
        );
        assert!(last_error().contains("which has 2"), "{}", last_error());

        let buf = [0u64; 4];
        let d = buf.as_ptr().cast::<c_void>();
        let s = kiln_gemm_bf16(
            h,
            ptr::null_mut(),
            d,
            d,
            d.cast_mut(),
            d.cast_mut(),
            d.cast_mut(),
            2,
            2560,
            7168,
        );
        assert_eq!(s, KilnStatus::InvalidArgument);
        assert!(
            last_error().contains("exported for 1, 2560, 7168"),
            "{}",
            last_error()
        );
        let s = kiln_gemm_bf16(
            h,
            ptr::null_mut(),
            d,
            d,
            d.cast_mut(),
            ptr::null_mut(),
            d.cast_mut(),
            1,
            2560,
            7168,
        );
        assert_eq!(s, KilnStatus::InvalidArgument);
        assert!(
            last_error().contains("scratch buffer workspace is NULL"),
            "{}",
            last_error()
        );
        let s = kiln_gemm_bf16(
            h,
            ptr::null_mut(),
            ptr::null(),
            d,
            d.cast_mut(),
            d.cast_mut(),
            d.cast_mut(),
            1,
            2560,
            7168,
        );
        assert_eq!(s, KilnStatus::InvalidArgument);

        let mut slots = [ptr::null_mut::<c_void>(); 8];
        assert_eq!(
            kiln_launch(h, ptr::null_mut(), slots.as_mut_ptr()),
            KilnStatus::InvalidArgument
        );
        assert!(
            last_error().contains("args[0] (argument A) is NULL"),
            "{}",
            last_error()
        );
        assert_eq!(
            kiln_launch(h, ptr::null_mut(), ptr::null_mut()),
            KilnStatus::InvalidArgument
        );
        assert!(last_error().contains("pass 8 pointers"), "{}", last_error());
    }

    // A split-K gemm needs its counters even when the manifest does not list them.
    let mut unlisted = fake_kernel(&dir.0);
    unlisted
        .meta
        .scratch
        .retain(|s| s.arg.as_bytes() != b"counters");
    let buf = [0u64; 4];
    let d = buf.as_ptr().cast::<c_void>();
    // SAFETY: a live kernel; the call is refused before the (null) driver handles are used.
    let s = unsafe {
        kiln_gemm_bf16(
            &unlisted,
            ptr::null_mut(),
            d,
            d,
            d.cast_mut(),
            d.cast_mut(),
            ptr::null_mut(),
            1,
            2560,
            7168,
        )
    };
    assert_eq!(s, KilnStatus::InvalidArgument);
    assert!(
        last_error().contains("splits K 4 ways and needs 20 zeroed"),
        "{}",
        last_error()
    );

    // A kernel of another family has no typed gemm call.
    let mut other = fake_kernel(&dir.0);
    other.meta.gemm = None;
    let d = ptr::null();
    // SAFETY: a live kernel; the call is refused before any pointer is used.
    let s = unsafe {
        kiln_gemm_bf16(
            &other,
            ptr::null_mut(),
            d,
            d,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            1,
            2560,
            7168,
        )
    };
    assert_eq!(s, KilnStatus::InvalidArgument);
    assert!(
        last_error().contains("with kiln_launch"),
        "{}",
        last_error()
    );
}

#[test]
fn capi_panics_become_internal_errors() {
    let s = guard("kiln_test", || panic!("boom"));
    assert_eq!(s, KilnStatus::Internal);
    assert!(
        last_error().starts_with("kiln_test: internal error") && last_error().ends_with("boom"),
        "{}",
        last_error()
    );
    assert_eq!(guard("kiln_test", || Ok(())), KilnStatus::Ok);
    assert_eq!(last_error(), "");
}

const HEADER: &str = include_str!("../../include/kiln.h");
const SOURCE: &str = include_str!("../capi.rs");

/// The header without its comments.
fn header_code() -> String {
    let mut out = String::new();
    let mut rest = HEADER;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
            out.push('\n');
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

fn ident_before_paren(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices('(') {
        let head = code[..i].trim_end();
        let start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |j| j + 1);
        let name = &head[start..];
        if name.starts_with("kiln_") {
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    let mut exported = Vec::new();
    let mut lines = SOURCE.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[no_mangle]" {
            let decl = lines.next().expect("a function after #[no_mangle]");
            let (_, after) = decl.split_once("fn ").expect("#[no_mangle] on a fn");
            exported.push(after[..after.find('(').unwrap()].to_string());
        }
    }
    let mut declared = ident_before_paren(&header_code());
    exported.sort();
    declared.sort();
    assert!(exported.len() >= 9, "{exported:?}");
    assert_eq!(
        exported, declared,
        "capi.rs's #[no_mangle] functions and kiln.h's declarations differ"
    );
}

#[test]
fn header_status_values_match() {
    let code = header_code();
    let all = [
        ("KILN_OK", KilnStatus::Ok),
        ("KILN_ERR_INVALID_ARGUMENT", KilnStatus::InvalidArgument),
        ("KILN_ERR_NO_DRIVER", KilnStatus::NoDriver),
        ("KILN_ERR_NO_CONTEXT", KilnStatus::NoContext),
        ("KILN_ERR_NOT_FOUND", KilnStatus::NotFound),
        ("KILN_ERR_MANIFEST", KilnStatus::Manifest),
        ("KILN_ERR_LOAD", KilnStatus::Load),
        ("KILN_ERR_LAUNCH", KilnStatus::Launch),
        ("KILN_ERR_INTERNAL", KilnStatus::Internal),
    ];
    for (name, status) in all {
        let want = format!("{name} = {},", status as i32);
        assert!(code.contains(&want), "kiln.h lacks `{want}`");
    }
    assert_eq!(
        code.matches("KILN_ERR_").count(),
        all.len() - 1,
        "kiln.h has statuses capi.rs lacks"
    );
}

#[test]
fn header_info_struct_layout() {
    // kiln.h: two pointers, 3 x uint32_t[3], one uint32_t, two size_t.
    assert_eq!(std::mem::size_of::<KilnKernelDesc>(), 72);
    assert_eq!(std::mem::offset_of!(KilnKernelDesc, num_args), 56);
    let code = header_code();
    let body = &code[code.find("typedef struct kiln_kernel_desc").unwrap()..];
    let body = &body[..body.find('}').unwrap()];
    let fields: Vec<&str> = body
        .split(';')
        .filter_map(|f| f.split_whitespace().last())
        .map(|f| f.split('[').next().unwrap())
        .filter(|f| !f.is_empty() && *f != "{")
        .collect();
    assert_eq!(
        fields,
        [
            "entry",
            "family",
            "grid",
            "block",
            "cluster",
            "dynamic_smem_bytes",
            "num_args",
            "num_scratch"
        ]
    );
}

/// A `gemm_fp8` manifest kernel (TMA config, so its call encodes tensor maps) with a fake cubin.
fn fp8_kernel(dir: &Path) -> KilnKernel {
    let mut mk = gemm_kernel(dir, 64, 7168, 16384);
    mk.family = "gemm_fp8".into();
    mk.entry = "kiln_gemm_fp8_test".into();
    mk.config = serde_json::json!({"kernel": "wgmma", "bm": 64, "bn": 128, "wn": 128, "stages": 6,
        "split_k": 2, "double_tmp": false, "producer": true, "tma": true, "cluster_m": 1});
    mk.args = family_args::<kiln_codegen::families::gemm_fp8::GemmFp8>();
    KilnKernel {
        index: 0,
        ctx: ptr::null_mut(),
        module: ptr::null_mut(),
        func: ptr::null_mut(),
        meta: check_kernel(&mk, dir).unwrap(),
    }
}

#[test]
fn capi_gemm_fp8_checks() {
    let dir = TempDir::new("fp8");
    let k = fp8_kernel(&dir.0);
    assert_eq!(k.meta.gemm_fp8, Some(([64, 7168, 16384], Some([64, 128]))));
    let bf16 = fake_kernel(&dir.0);
    assert_eq!(bf16.meta.gemm_fp8, None);
    let buf = [0u64; 8];
    let d = buf.as_ptr().cast::<c_void>();
    let call = |k: *const KilnKernel, x: *const c_void, sx: *const c_void, m: c_int| {
        // SAFETY: every call below is refused before the (null) driver handles are used.
        unsafe {
            kiln_gemm_fp8(
                k,
                ptr::null_mut(),
                x,
                sx,
                d,
                d,
                d.cast_mut(),
                d.cast_mut(),
                d.cast_mut(),
                m,
                7168,
                16384,
            )
        }
    };
    assert_eq!(call(ptr::null(), d, d, 64), KilnStatus::InvalidArgument);
    assert_eq!(last_error(), "kiln_gemm_fp8: kernel is NULL");
    assert_eq!(call(&bf16, d, d, 64), KilnStatus::InvalidArgument);
    assert!(
        last_error().contains("not a gemm_fp8 kernel"),
        "{}",
        last_error()
    );
    assert_eq!(call(&k, d, d, 32), KilnStatus::InvalidArgument);
    assert!(
        last_error().contains("exported for 64, 7168, 16384"),
        "{}",
        last_error()
    );
    assert_eq!(call(&k, d, ptr::null(), 64), KilnStatus::InvalidArgument);
    assert!(last_error().contains("SX is NULL"), "{}", last_error());
    // The tensor map of X needs a 16-byte-aligned address: refused before the driver is asked.
    let odd = buf.as_ptr().cast::<u8>().wrapping_add(4).cast::<c_void>();
    assert_eq!(call(&k, odd, d, 64), KilnStatus::InvalidArgument);
    assert!(last_error().contains("16-byte-aligned"), "{}", last_error());
}
