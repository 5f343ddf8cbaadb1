//! Python `threading` names of a process's threads, read from its memory.
//!
//! "tid 48213 waits 80 % of the time" is advice nobody can act on; "`cpu-0`
//! waits…" is. The names live in the target: each interpreter's `sys.modules`
//! holds the `threading` module, whose `_active` dict maps a thread's ident (its
//! `pthread_t`, the same value as `PyThreadState.thread_id`) to its `Thread`
//! object, whose `_name` attribute is a `str`. This module walks that chain with
//! the object readers of [`crate::cpython::remote`] (`process_vm_readv`, as
//! py-spy does) without stopping the process, then maps each ident to a kernel
//! tid through the interpreter's thread states (`native_thread_id`, 3.11+) or
//! glibc's `struct pthread` (3.8-3.10), and that tid to the host's PID namespace.
//!
//! Everything read is untrusted and may be torn: the readers bound every size
//! and check every pointer, and any failure only means "no Python name" for a
//! thread. Offsets come from [`crate::cpython::remote::objects`] (and the
//! process's debug offsets on 3.13+), never from DWARF, so stripped interpreters
//! are named too.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cpython::find::locate::{self, Interpreter};
use crate::cpython::remote::dict::{dict_get_str, dict_items};
use crate::cpython::remote::instance::AttrSlots;
use crate::cpython::remote::long::read_long;
use crate::cpython::remote::memory::{Memory, ReadBudget, RemoteMemory};
use crate::cpython::remote::objects::ObjectLayout;
use crate::cpython::remote::runtime::{self, MAX_THREADS};
use crate::cpython::remote::str::read_str;
use crate::os::pidns::TidMap;

/// Longest name kept, in characters; longer names are cut.
pub const MAX_NAME_CHARS: usize = 256;
/// The most bytes one [`ThreadNameReader::read`] reads from the target. A
/// process at every cap (4,096 threads, its modules, the first walk with
/// nothing cached) needs about 2.5 MiB; a hostile one (16 interpreters, each
/// with dicts of 65,536 slots) could otherwise make each read cost tens of MiB.
pub const NAMES_READ_BUDGET: u64 = 8 << 20;
/// How long a found `threading._active` dict is reused before it is looked up again.
const ACTIVE_TTL: Duration = Duration::from_secs(5);

/// Reads the names of one process's threads; keeps what is worth keeping
/// between calls so that calling it every 100 ms costs a few dozen reads.
#[derive(Debug)]
pub struct ThreadNameReader<M: Memory = RemoteMemory> {
    /// The target's memory, at most [`NAMES_READ_BUDGET`] bytes per read.
    mem: ReadBudget<M>,
    /// `None`: this build has no known object layout, so no names.
    layout: Option<ObjectLayout>,
    /// Runtime address of `_PyRuntime`.
    runtime: u64,
    /// Offset of the tid in glibc's `struct pthread` (a `pthread_t` points at it).
    pthread_tid_off: Option<u64>,
    /// Interpreter address -> its `threading._active` dict, and when it was found.
    active: HashMap<u64, (u64, Instant)>,
    /// Address of the `str` type (the type of a key that compared equal).
    str_type: Option<u64>,
    /// Where a `Thread` keeps `_name` (knows each type's shared-key index).
    name_slots: AttrSlots,
    /// Thread object address -> what was read of it last time.
    known: HashMap<u64, Known>,
    /// When `known` and `name_slots` were last emptied.
    known_since: Instant,
    /// The target's own tids (its PID namespace) to the host's, which callers key by.
    tids: TidMap,
}

/// One `Thread` object as last read: its `_active` key and ident, where its
/// `_name` pointer lives, that pointer, and the name it pointed to.
#[derive(Debug, Clone)]
struct Known {
    key: u64,
    ident: u64,
    slot: u64,
    name_ptr: u64,
    name: String,
}

/// The names of every thread of the process now, by tid; an empty map when
/// nothing could be read. One-shot form of [`ThreadNameReader`].
pub fn thread_names(interp: &Interpreter, mem: RemoteMemory) -> HashMap<u32, String> {
    ThreadNameReader::new(interp, mem).read()
}

/// The object layout of this process: the table's, refined by the debug offsets on 3.13+.
fn process_layout(interp: &Interpreter, mem: &RemoteMemory) -> Option<ObjectLayout> {
    let debug = interp.debug_offsets(mem).ok()?;
    ObjectLayout::of_process(interp.file.version.line, debug.as_ref())
}

impl ThreadNameReader<RemoteMemory> {
    /// A reader for the process of `interp`; reads the debug offsets (3.13+) and,
    /// where thread states have no native id (3.8-3.10), glibc's tid offset.
    pub fn new(interp: &Interpreter, mem: RemoteMemory) -> Self {
        let layout = process_layout(interp, &mem);
        if layout.is_none() {
            tracing::debug!(
                "no object layout for CPython {}: threads keep their OS names",
                interp.file.version
            );
        }
        let pthread_tid_off = layout
            .filter(|l| l.tstate_native_thread_id.is_none())
            .and_then(|_| locate::glibc_pthread_tid_offset(interp.pid));
        let mut reader = Self::with_layout(mem, layout, interp.py_runtime(), pthread_tid_off);
        reader.tids = TidMap::of(interp.pid);
        reader
    }
}

impl<M: Memory> ThreadNameReader<M> {
    /// A reader from parts (tests use made-up memory).
    pub fn with_layout(
        mem: M,
        layout: Option<ObjectLayout>,
        runtime: u64,
        pthread_tid_off: Option<u64>,
    ) -> Self {
        Self {
            mem: ReadBudget::new(mem, NAMES_READ_BUDGET),
            layout,
            runtime,
            pthread_tid_off,
            active: HashMap::new(),
            str_type: None,
            name_slots: AttrSlots::new("_name"),
            known: HashMap::new(),
            known_since: Instant::now(),
            tids: TidMap::identity(),
        }
    }

    /// tid -> Python thread name of every named thread of every interpreter now.
    pub fn read(&mut self) -> HashMap<u32, String> {
        let mut names = HashMap::new();
        let Some(l) = self.layout else {
            return names;
        };
        if self.known_since.elapsed() >= ACTIVE_TTL {
            // Objects are freed and their addresses reused: start over now and then.
            self.known.clear();
            self.name_slots.clear();
            self.known_since = Instant::now();
        }
        self.mem.refill();
        let mut seen = HashSet::new();
        for interp in runtime::interpreters(&self.mem, self.runtime, &l) {
            self.read_interpreter(interp, &l, &mut names, &mut seen);
        }
        if self.mem.exhausted() {
            // Cut short: what was not reached this time is not gone.
            return names;
        }
        self.known.retain(|thread, _| seen.contains(thread));
        names
    }

    fn read_interpreter(
        &mut self,
        interp: u64,
        l: &ObjectLayout,
        names: &mut HashMap<u32, String>,
        seen: &mut HashSet<u64>,
    ) {
        let Some(active) = self.active_dict(interp, l) else {
            return;
        };
        let Some(items) = dict_items(&self.mem, active, l) else {
            self.active.remove(&interp); // look it up again next time
            return;
        };
        let tids = self.tstate_tids(interp, l);
        for item in items.into_iter().take(MAX_THREADS) {
            seen.insert(item.value);
            let Some((ident, name)) = self.thread_name(item.key, item.value, l) else {
                continue;
            };
            let own = tids.get(&ident).copied().or_else(|| self.glibc_tid(ident));
            if let Some(tid) = own.and_then(|t| self.tids.host_tid(t)) {
                names.insert(tid, name);
            }
        }
    }

    /// `sys.modules["threading"].__dict__["_active"]` of one interpreter (cached).
    fn active_dict(&mut self, interp: u64, l: &ObjectLayout) -> Option<u64> {
        if let Some((dict, at)) = self.active.get(&interp) {
            if at.elapsed() < ACTIVE_TTL {
                return Some(*dict);
            }
        }
        match self.find_active(interp, l) {
            Some(active) => {
                self.active.insert(interp, (active, Instant::now()));
                Some(active)
            }
            // A torn read or `threading` not imported yet: keep what was found before.
            None => self.active.get(&interp).map(|(dict, _)| *dict),
        }
    }

    fn find_active(&mut self, interp: u64, l: &ObjectLayout) -> Option<u64> {
        let threading = runtime::sys_module(&self.mem, interp, l, "threading")?;
        self.str_type = self.mem.ptr_at(threading.key.checked_add(l.ob_type)?);
        let md_dict = runtime::module_dict(&self.mem, threading.value, l)?;
        dict_get_str(&self.mem, md_dict, l, "_active").map(|active| active.value)
    }

    /// `pthread_t` -> tid of every thread state of one interpreter (3.11+).
    fn tstate_tids(&self, interp: u64, l: &ObjectLayout) -> HashMap<u64, u32> {
        if l.tstate_native_thread_id.is_none() {
            return HashMap::new();
        }
        runtime::thread_states(&self.mem, interp, l)
            .into_iter()
            .filter_map(|t| {
                let tid = t.native_thread_id.and_then(|t| u32::try_from(t).ok());
                tid.filter(|t| *t != 0).map(|tid| (t.thread_id, tid))
            })
            .collect()
    }

    /// The tid glibc keeps in the `struct pthread` a `pthread_t` points to.
    fn glibc_tid(&self, pthread: u64) -> Option<u32> {
        runtime::glibc_tid(&self.mem, pthread, self.pthread_tid_off?)
    }

    /// The ident and `thread._name` of one `_active` entry. A thread seen before
    /// costs one read: its `_name` slot, compared with the pointer read last time.
    fn thread_name(&mut self, key: u64, thread: u64, l: &ObjectLayout) -> Option<(u64, String)> {
        if let Some(k) = self.known.get(&thread).filter(|k| k.key == key) {
            if self.mem.u64_at(k.slot) == Some(k.name_ptr) {
                return Some((k.ident, k.name.clone()));
            }
        }
        let ident = read_long(&self.mem, key, l)?;
        let slot = self.name_slots.slot(&self.mem, thread, l)?;
        let name_ptr = self.mem.ptr_at(slot)?;
        if let Some(str_type) = self.str_type {
            if self.mem.ptr_at(name_ptr.checked_add(l.ob_type)?) != Some(str_type) {
                return None;
            }
        }
        let name = read_str(&self.mem, name_ptr, l, MAX_NAME_CHARS as u64)?;
        let known = Known {
            key,
            ident,
            slot,
            name_ptr,
            name: name.clone(),
        };
        self.known.insert(thread, known);
        Some((ident, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, put, Fake};

    #[test]
    fn a_long_name_is_cut_at_256_characters() {
        let l = layout(12, false);
        let (mem, runtime) = process(&l, &"n".repeat(1000));
        let mut reader = ThreadNameReader::with_layout(mem, Some(l), runtime, None);
        assert_eq!(
            reader.read().get(&4242).map(|s| s.chars().count()),
            Some(MAX_NAME_CHARS)
        );
    }

    /// A made-up process: `sys.modules["threading"]._active = {IDENT: thread}`,
    /// the thread's `_name` kept the way `layout` keeps instance attributes.
    fn process(l: &ObjectLayout, name: &str) -> (Fake, u64) {
        const IDENT: u64 = 0x7f3a_1b2c_d640;
        let mut mem = Fake::default();
        let name_key = mem.str(l, "_name");
        let other_key = mem.str(l, "_ident");
        let name_val = mem.str(l, name);
        let ident_val = mem.long(l, IDENT);
        let thread = mem.instance(l, &[(other_key, ident_val), (name_key, name_val)]);
        let ident_key = mem.long(l, IDENT);
        let active_keys = mem.keys(l, &[(ident_key, thread)], true);
        let active = mem.dict(l, active_keys, 0);
        let active_key = mem.str(l, "_active");
        let doc_key = mem.str(l, "__doc__");
        let md_keys = mem.keys(l, &[(doc_key, doc_key), (active_key, active)], false);
        let md_dict = mem.dict(l, md_keys, 0);
        let mut module = vec![0u8; 64];
        put(&mut module, l.md_dict, md_dict);
        let module = mem.alloc(module);
        let sys_key = mem.str(l, "sys");
        let threading_key = mem.str(l, "threading");
        let mod_keys = mem.keys(l, &[(sys_key, module), (threading_key, module)], false);
        let modules = mem.dict(l, mod_keys, 0);
        let mut tstate = vec![0u8; 512];
        put(&mut tstate, l.tstate_thread_id, IDENT);
        if let Some(native) = l.tstate_native_thread_id {
            put(&mut tstate, native, 4242);
        }
        let tstate = mem.alloc(tstate);
        let mut interp = vec![0u8; 0x2000];
        put(&mut interp, l.interp_modules, modules);
        put(&mut interp, l.interp_threads_head, tstate);
        let interp = mem.alloc(interp);
        let mut runtime = vec![0u8; 256];
        put(&mut runtime, l.interpreters_head, interp);
        let runtime = mem.alloc(runtime);
        // glibc's struct pthread behind the ident (3.8-3.10 name threads through it).
        let mut pthread = vec![0u8; 1024];
        pthread[720..724].copy_from_slice(&4242u32.to_le_bytes());
        mem.regions.push((IDENT, pthread));
        (mem, runtime)
    }

    #[test]
    fn every_release_line_finds_the_name_through_its_own_instance_layout() {
        for (minor, ft) in [
            (8, false),
            (10, false),
            (11, false),
            (12, false),
            (13, false),
            (13, true),
        ] {
            let l = layout(minor, ft);
            let (mem, runtime) = process(&l, "ThreadPoolExecutor-0_3");
            let mut reader = ThreadNameReader::with_layout(mem, Some(l), runtime, Some(720));
            let names = reader.read();
            assert_eq!(
                names.get(&4242).map(String::as_str),
                Some("ThreadPoolExecutor-0_3"),
                "3.{minor}{}",
                if ft { "t" } else { "" }
            );
            assert_eq!(
                reader.read().len(),
                1,
                "the cached path gives the same answer"
            );
        }
    }

    #[test]
    fn a_renamed_thread_is_seen_at_the_next_read() {
        let l = layout(12, false);
        let (mem, runtime) = process(&l, "before");
        let mut reader = ThreadNameReader::with_layout(mem, Some(l), runtime, None);
        assert_eq!(reader.read().get(&4242).map(String::as_str), Some("before"));
        let slot = reader
            .known
            .values()
            .next()
            .expect("the thread is cached")
            .slot;
        let renamed = reader.mem.str(&l, "after");
        reader.mem.poke(slot, renamed);
        assert_eq!(reader.read().get(&4242).map(String::as_str), Some("after"));
    }

    #[test]
    fn garbage_memory_gives_no_names_and_no_panic() {
        let l = layout(12, false);
        let (mut mem, runtime) = process(&l, "cpu-0");
        for (_, bytes) in mem.regions.iter_mut() {
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(37) ^ 0xa5;
            }
        }
        let mut reader = ThreadNameReader::with_layout(mem, Some(l), runtime, Some(720));
        assert!(reader.read().is_empty());
        let mut nothing = ThreadNameReader::with_layout(Fake::default(), Some(l), 0x1000, None);
        assert!(nothing.read().is_empty());
    }

    #[test]
    fn a_cyclic_thread_state_list_ends() {
        let l = layout(12, false);
        let (mut mem, runtime) = process(&l, "cpu-0");
        // Point the interpreter's only thread state at itself.
        let interp = mem.u64_at(runtime + l.interpreters_head).expect("interp");
        let tstate = mem.u64_at(interp + l.interp_threads_head).expect("tstate");
        mem.poke(tstate + l.tstate_next, tstate);
        let reader = ThreadNameReader::with_layout(mem, Some(l), runtime, None);
        assert_eq!(reader.tstate_tids(interp, &l).len(), 1);
    }
}
