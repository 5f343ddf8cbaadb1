//! Compiles every `ebpf/*.bpf.c` into a BPF object in OUT_DIR with clang, so no
//! prebuilt object is ever committed. `BPF_CLANG` picks the compiler.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-changed={}", ebpf.display());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&ebpf)
        .expect("ebpf/ directory next to agent/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    sources.sort();
    for path in sources {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        println!("cargo:rerun-if-changed={}", path.display());
        let Some(stem) = name.strip_suffix(".bpf.c") else {
            continue;
        };
        let object = out.join(format!("{stem}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{}", ebpf.display()))
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-c")
            .arg(&path)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {clang} to build {name}: {e}. Install it \
                     (apt-get install clang-19 libbpf-dev) or set BPF_CLANG"
                )
            });
        assert!(status.success(), "{clang} failed to compile {name}");
    }
}
