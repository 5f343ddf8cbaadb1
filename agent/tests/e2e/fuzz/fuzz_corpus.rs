//! Runs the fuzz targets' bodies (`fuzz/src/lib.rs`, the code `cargo fuzz`
//! drives) over the committed seeds and the inputs fuzzing once crashed on
//! (`tests/fixtures/fuzz/<target>/`), so the harness keeps compiling with the
//! parsers it calls and every past crash stays fixed, without cargo-fuzz or a
//! nightly toolchain. The ELF seeds are also checked to reach the deep paths
//! (a fake interpreter whose `take_gil` is found by symbol and by disassembly).

#[allow(dead_code)]
#[path = "../../../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

use gilscope::cpython::find::{elf, functions};

/// A fuzz target's body: bytes in, nothing out, must not panic.
type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 7] = [
    ("elf_inspect", harness::elf_inspect),
    ("disasm_finder", harness::disasm_finder),
    ("proc_parsers", harness::proc_parsers),
    ("config", harness::config),
    ("spool_file", harness::spool_file),
    ("memory_walkers", harness::memory_walkers),
    ("collector_answers", harness::collector_answers),
];

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_fuzz_target_runs_over_its_seeds_and_past_crashes() {
    for (target, body) in TARGETS {
        let seeds = files_in(&repo().join("fuzz/seeds").join(target));
        assert!(
            !seeds.is_empty(),
            "no committed seeds for fuzz target {target}"
        );
        let crashes = files_in(&repo().join("agent/tests/fixtures/fuzz").join(target));
        for input in seeds.iter().chain(&crashes) {
            let data = std::fs::read(input).expect("read a committed fuzz input");
            body(&data);
            // Every prefix too, cheaply: truncated files are what a crash leaves.
            for len in (0..data.len()).step_by((data.len() / 16).max(1)) {
                body(&data[..len]);
            }
        }
        println!(
            "{target}: {} seeds, {} past crashes",
            seeds.len(),
            crashes.len()
        );
    }
}

#[test]
fn the_elf_seeds_reach_the_gil_finders() {
    for (name, by) in [
        ("fake313.so", functions::FoundBy::SymbolTable),
        ("fake313-stripped.so", functions::FoundBy::Disassembly),
    ] {
        let data = std::fs::read(repo().join("fuzz/seeds/elf_inspect").join(name)).expect("seed");
        let image = elf::ElfImage::from_bytes(data);
        let file = image
            .parse(Path::new(name))
            .expect("the seed is an ELF file");
        let info = elf::inspect_parsed(Path::new(name), &file)
            .expect("inspect")
            .expect("the seed exports _PyRuntime");
        assert_eq!(info.version.to_string(), "3.13.0", "{name}: Py_Version");
        let take = functions::find_take_gil(&file);
        assert_eq!(take.len(), 1, "{name}: one take_gil, got {take:?}");
        assert_eq!(take[0].how, by, "{name}");
        let park = functions::find_park(&file);
        assert!(!park.is_empty(), "{name}: _PyParkingLot_Park");
    }
}
