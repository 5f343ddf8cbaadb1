//! The bodies of gilscope's fuzz targets: each feeds arbitrary bytes to the
//! parsers that read outside input (interpreter ELF files, `/proc` and cgroup
//! files, the config file and environment, spool files, a target's memory,
//! a collector's answers)
//! the way the agent does.
//!
//! They live here, not in `fuzz_targets/`, so that `agent/tests/fuzz_corpus.rs`
//! (part of `cargo test`) runs the same bodies over the committed seeds: the
//! harness cannot rot between fuzzing sessions. A body must never panic; the
//! parsers' results are dropped, only panics, hangs and overflows matter.

use std::path::{Path, PathBuf};

use gilscope::cli::settings as config;
use gilscope::cpython::find::{elf, functions, libc};
use gilscope::cpython::layout::debug_offsets;
use gilscope::cpython::layout::versions::{layout_for, PyVersion, StackSource};
use gilscope::cpython::remote::code::CodeReader;
use gilscope::cpython::remote::frames;
use gilscope::cpython::remote::memory::Memory;
use gilscope::cpython::remote::objects::ObjectLayout;
use gilscope::cpython::thread_names::ThreadNameReader;
use gilscope::os::{cgroup, mapped_files, pidns, threads};
use gilscope::otel::export::{self, spool};
use gilscope::otel::{kube, resource};

/// What the agent does with an interpreter file found mapped in a process:
/// symbols and version (`inspect_parsed`), the `_PyRuntime` debug-offsets
/// block as a 3.13+ file carries it in `.data`, the `take_gil`/`drop_gil`/park
/// finders (symbol table, else disassembly), and the libc checks.
pub fn elf_inspect(data: &[u8]) {
    let image = elf::ElfImage::from_bytes(data.to_vec());
    let path = Path::new("/fuzz/libpython3.12.so");
    let Ok(file) = image.parse(path) else {
        return;
    };
    if let Ok(Some(info)) = elf::inspect_parsed(path, &file) {
        let line = info.version.line;
        if let Some(block) = elf::bytes_at(&file, info.py_runtime, debug_offsets::BLOCK_LEN as u64)
        {
            for line in [line, V313, V314] {
                let _ = debug_offsets::parse(block, line);
            }
        }
        let _ = elf::file_offset_of(&file, info.py_runtime);
    }
    for found in functions::find_take_gil(&file)
        .into_iter()
        .chain(functions::find_drop_gil(&file))
        .chain(functions::find_park(&file))
    {
        let _ = elf::bytes_at(&file, found.address, 16);
    }
    let _ = functions::plt_stub(&file, "pthread_cond_wait");
    let _ = elf::program_interpreter(&file);
    let _ = elf::has_static_musl_symbols(&file);
    let _ = libc::cond_wait_symbol(&file);
}

const V313: PyVersion = PyVersion {
    major: 3,
    minor: 13,
};
const V314: PyVersion = PyVersion {
    major: 3,
    minor: 14,
};

fn u64_le(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(word)
}

/// The byte-level decoders under the ELF analysis: the x86-64 branch finder
/// (first 8 bytes: the code's address, bit 0 of the 9th: size known), the
/// version readers and the debug-offsets block parser.
pub fn disasm_finder(data: &[u8]) {
    let address = u64_le(data.get(..8).unwrap_or(data));
    let known_size = data.get(8).is_some_and(|b| b & 1 == 1);
    let code = data.get(9..).unwrap_or_default();
    let _ = functions::branches(code, address, known_size);
    let _ = elf::version_from_rodata(data);
    let _ = elf::version_from_hex(address);
    for line in [V313, V314] {
        let _ = debug_offsets::parse(data, line);
    }
}

/// One text split in two at the first NUL (two files fed to one parser).
fn two_texts(text: &str) -> (&str, &str) {
    text.split_once('\0').unwrap_or((text, ""))
}

/// The `/proc` and cgroup parsers; the first byte picks one, the rest is the file.
pub fn proc_parsers(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 12 {
        0 => {
            let _ = threads::parse_schedstat(&text);
        }
        1 => {
            let _ = cgroup::parse_cpu_stat(&text);
            let _ = cgroup::parse_cpu_max(&text);
            let (quota, period) = two_texts(&text);
            let _ = cgroup::parse_cfs_quota(quota, period);
        }
        2 => {
            let (cgroup_text, mountinfo) = two_texts(&text);
            let _ = cgroup::CpuCgroup::from_texts(cgroup_text, mountinfo);
        }
        3 => {
            let _ = gilscope::os::process::parse_start_ticks(&text);
        }
        4 => {
            let _ = resource::parse_target_env(rest);
        }
        5 => {
            let _ = resource::container_id_from_cgroup(&text);
        }
        6 => {
            let _ = pidns::parse_nspid(&text);
        }
        7 => {
            let _ = kube::container_id_of(&text);
        }
        8 => {
            let maps = mapped_files::parse_maps(&text);
            let paths: Vec<String> = maps
                .iter()
                .map(|(_, _, p)| p.display().to_string())
                .collect();
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            let _ = libc::classify(&refs, None, false);
        }
        9 => {
            // OTEL_RESOURCE_ATTRIBUTES / OTEL_EXPORTER_OTLP_HEADERS values.
            let _ = resource::parse_key_values(&text);
            let _ = resource::percent_decode(&text);
        }
        10 => {
            // /proc/PID/cmdline: NUL-separated arguments.
            let args: Vec<String> = rest
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let exe = args.first().cloned().unwrap_or_default();
            let _ = resource::python_service_name(&args, &exe);
            let _ = elf::version_from_file_name(Path::new(&exe));
        }
        _ => {
            let paths: Vec<&str> = text.split('\n').collect();
            let (interp, _) = two_texts(&text);
            let _ = libc::classify(&paths, Some(interp), which & 0x80 != 0);
        }
    }
}

/// The config file and environment: YAML text up to the first NUL, then
/// NUL-separated `KEY=value` environment entries, merged by `resolve` as
/// `gilscope run --config` does; the value parsers also get every value.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (yaml, env_text) = two_texts(&text);
    let env: Vec<(&str, &str)> = env_text
        .split('\0')
        .filter_map(|entry| entry.split_once('='))
        .collect();
    for (_, value) in &env {
        let _ = config::parse_duration(value);
        let _ = config::parse_bytes(value);
        let _ = resource::parse_key_values(value);
    }
    let path = PathBuf::from("/fuzz/gilscope.yaml");
    let Ok(file) = config::parse_file(&path, yaml) else {
        return;
    };
    let lookup = |key: &str| {
        env.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    let _ = config::resolve_parsed(&config::Flags::default(), file, &lookup);
}

/// A spool file read back after a restart: header, length and CRC checks.
pub fn spool_file(data: &[u8]) {
    let _ = spool::body_from_bytes(Path::new("/fuzz/spool/1.req"), data.to_vec());
}

/// Where [`memory_walkers`] maps its made-up memory (`_PyRuntime` is there).
const IMAGE_BASE: u64 = 0x10_0000;

/// A target's memory made of the fuzz input: readable at
/// `IMAGE_BASE..IMAGE_BASE + len`, unreadable everywhere else.
#[derive(Clone, Copy)]
struct Image<'a>(&'a [u8]);

impl Memory for Image<'_> {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(start) = addr
            .checked_sub(IMAGE_BASE)
            .and_then(|a| usize::try_from(a).ok())
        else {
            return false;
        };
        match start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// The walkers of a target's memory, over memory made of the input (issue 14:
/// a hostile target writes what it likes there). The first byte picks the
/// release line (3.8 to 3.14); the rest is memory at [`IMAGE_BASE`], which is
/// also `_PyRuntime` (3.13+ read their debug offsets from its start). Thread
/// names are read from the runtime down; stacks are walked from thread states
/// at every 64th byte of the first 4 KiB, and each frame's code object read.
pub fn memory_walkers(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let line = PyVersion {
        major: 3,
        minor: 8 + which % 7,
    };
    let Some(layout) = layout_for(line) else {
        return;
    };
    let mem = Image(bytes);
    let debug = debug_offsets::parse(bytes, line).ok();
    let objects = ObjectLayout::of_process(line, debug.as_ref());
    let _ = ThreadNameReader::with_layout(mem, objects, IMAGE_BASE, Some(0x2d0)).read();
    let stack = match layout.stack {
        StackSource::Table(stack) => Some(stack),
        StackSource::DebugOffsets => debug.and_then(|d| d.stack_layout().ok()),
    };
    let Some(stack) = stack else {
        return;
    };
    let code_reader = objects.map(|objects| CodeReader {
        code: stack.code,
        objects,
        code_type: None,
    });
    for tstate in (0..bytes.len().min(4096) as u64).step_by(64) {
        let Ok(raw) = frames::walk_thread(&mem, IMAGE_BASE + tstate, &stack.walk) else {
            continue;
        };
        for frame in raw.frames {
            if let Some(code) = code_reader.and_then(|r| r.read(&mem, frame.code)) {
                let _ = code.line_at(frame.instr.wrapping_sub(frame.code) as i64);
            }
        }
    }
}

/// A collector's answer to an export: the first byte picks the signal
/// (metrics or spans), the rest is the response body, read for its
/// `partial_success` and as an error `google.rpc.Status`.
pub fn collector_answers(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let kind = if which & 1 == 0 {
        spool::Kind::Metrics
    } else {
        spool::Kind::Traces
    };
    let _ = export::read_answer(kind, body);
}
