//! Python `threading` names of a process's threads, read from its memory.
//!
//! "tid 48213 waits 80 % of the time" is advice nobody can act on; "`cpu-0`
//! waits…" is. The names live in the target: each interpreter's `sys.modules`
//! holds the `threading` module, whose `_active` dict maps a thread's ident (its
//! `pthread_t`, the same value as `PyThreadState.thread_id`) to its `Thread`
//! object, whose `_name` attribute is a `str`. This module walks that chain with
//! `process_vm_readv` (as py-spy does) without stopping the process, then maps
//! each ident to a kernel tid through the interpreter's thread states
//! (`native_thread_id`, 3.11+) or glibc's `struct pthread` (3.8-3.10).
//!
//! Everything read is untrusted and may be torn: every size is bounded, every
//! pointer checked, and any failure only means "no Python name" for a thread.
//! Offsets come from [`crate::cpython::remote::objects`] (and the process's debug offsets on
//! 3.13+), never from DWARF, so stripped interpreters are named too.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cpython::find::locate::{self, GilSite, Interpreter};
use crate::cpython::layout::debug_offsets;
use crate::cpython::layout::versions::GilLocation;
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::remote::objects::{
    object_layout_for, InstanceDict, KeysLayout, ObjectLayout, TPFLAGS_INLINE_VALUES,
    TPFLAGS_MANAGED_DICT,
};
use crate::os::pidns::TidMap;

/// Longest name kept, in characters; longer names are cut.
pub const MAX_NAME_CHARS: usize = 256;
/// Dict slots read at most (sys.modules of a big service has a few thousand).
const MAX_DICT_SLOTS: u64 = 1 << 16;
/// Thread states and `_active` entries read at most per interpreter.
const MAX_THREADS: usize = 4096;
/// Interpreters walked at most.
const MAX_INTERPRETERS: usize = 16;
/// How long a found `threading._active` dict is reused before it is looked up again.
const ACTIVE_TTL: Duration = Duration::from_secs(5);
/// Lowest address taken for a pointer (null and the zero page are garbage).
const MIN_POINTER: u64 = 0x1000;

/// Somewhere bytes of the target can be read from: the process, or a test's buffers.
pub trait Memory {
    /// Fills `buf` from `addr`; false when any byte is unreadable.
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// A little-endian u64, `None` when unreadable.
    fn u64_at(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// A pointer: a readable word that is not null or in the zero page.
    fn ptr_at(&self, addr: u64) -> Option<u64> {
        self.u64_at(addr).filter(|p| *p >= MIN_POINTER)
    }
}

impl Memory for RemoteMemory {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read(addr, buf).is_ok()
    }
}

fn le_u64(b: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(8)?)?
        .try_into()
        .ok()
        .map(u64::from_le_bytes)
}

fn le_u32(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

// ---- str ----------------------------------------------------------------

/// Where a compact `str`'s characters are and how wide each is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrShape {
    /// Characters (code points).
    pub length: u64,
    /// Offset of the first code unit from the object's start.
    pub data_at: u64,
    /// Bytes per code unit: 1, 2 or 4.
    pub unit: u64,
    pub ascii: bool,
}

/// Bytes of a `str` header to read: enough for the state word and the length.
pub fn str_header_len(l: &ObjectLayout) -> u64 {
    (l.unicode_state + 4).max(l.unicode_length + 8)
}

/// Parses a `str` header (`PyASCIIObject`). Only compact strings are named —
/// every string made at run time is; legacy (non-compact) ones give `None`.
pub fn parse_str_header(header: &[u8], l: &ObjectLayout) -> Option<StrShape> {
    let state = le_u32(header, l.unicode_state)?;
    let length = le_u64(header, l.unicode_length)?;
    let kind = u64::from((state >> 2) & 7);
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) || length > 1 << 30 {
        return None;
    }
    Some(StrShape {
        length,
        data_at: if ascii { l.ascii_size } else { l.compact_size },
        unit: kind,
        ascii,
    })
}

/// Decodes code units of width `unit` (Latin-1, UCS-2 or UCS-4) into a `String`;
/// `None` for ASCII data with the high bit set or an unknown width.
pub fn decode_units(data: &[u8], unit: u64, ascii: bool) -> Option<String> {
    match unit {
        1 if ascii => data
            .is_ascii()
            .then(|| String::from_utf8_lossy(data).into_owned()),
        1 => Some(data.iter().map(|&b| char::from(b)).collect()),
        2 => Some(
            data.chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
                .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        ),
        4 => Some(
            data.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        ),
        _ => None,
    }
}

fn read_str_shape(mem: &impl Memory, addr: u64, l: &ObjectLayout) -> Option<StrShape> {
    let mut header = vec![0u8; usize::try_from(str_header_len(l)).ok()?];
    mem.read_bytes(addr, &mut header).then_some(())?;
    parse_str_header(&header, l)
}

fn read_str_data(mem: &impl Memory, addr: u64, shape: &StrShape, max_chars: u64) -> Option<String> {
    let chars = shape.length.min(max_chars);
    let mut data = vec![0u8; usize::try_from(chars * shape.unit).ok()?];
    mem.read_bytes(addr.checked_add(shape.data_at)?, &mut data)
        .then_some(())?;
    decode_units(&data, shape.unit, shape.ascii)
}

/// Reads a compact `str` object, cut to [`MAX_NAME_CHARS`].
pub fn read_str(mem: &impl Memory, addr: u64, l: &ObjectLayout) -> Option<String> {
    let shape = read_str_shape(mem, addr, l)?;
    read_str_data(mem, addr, &shape, MAX_NAME_CHARS as u64)
}

/// Whether the `str` at `addr` is exactly `want` (lengths compared before any data is read).
fn str_equals(mem: &impl Memory, addr: u64, l: &ObjectLayout, want: &str) -> bool {
    let Some(shape) = read_str_shape(mem, addr, l) else {
        return false;
    };
    shape.length == want.chars().count() as u64
        && read_str_data(mem, addr, &shape, shape.length).as_deref() == Some(want)
}

// ---- int ----------------------------------------------------------------

/// Reads a non-negative `int` that fits in 64 bits (a thread ident).
pub fn parse_long(bytes: &[u8], l: &ObjectLayout) -> Option<u64> {
    let size = le_u64(bytes, l.long_size)?;
    let ndigits = if l.long_tagged {
        match size & 3 {
            1 => return Some(0), // zero
            0 => size >> 3,
            _ => return None, // negative
        }
    } else {
        let signed = size as i64;
        if signed < 0 {
            return None;
        }
        signed as u64
    };
    if ndigits > 3 {
        return None;
    }
    let mut value: u128 = 0;
    for i in (0..ndigits).rev() {
        let digit = le_u32(bytes, l.long_digits + 4 * i)?;
        value = (value << 30) | u128::from(digit & 0x3fff_ffff);
    }
    u64::try_from(value).ok()
}

fn read_long(mem: &impl Memory, addr: u64, l: &ObjectLayout) -> Option<u64> {
    let mut bytes = vec![0u8; usize::try_from(l.long_digits + 12).ok()?];
    mem.read_bytes(addr, &mut bytes).then_some(())?;
    parse_long(&bytes, l)
}

// ---- dict ---------------------------------------------------------------

/// Where the entries of a `PyDictKeysObject` are and what one entry looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysShape {
    /// Entries in use (some may be deleted: null key or value).
    pub nentries: u64,
    /// Offset of the entry array from the keys object's start.
    pub entries_at: u64,
    /// 24 (`{hash, key, value}`) or 16 (`{key, value}`).
    pub entry_size: u64,
    /// Offset of the key pointer inside an entry (the value follows it).
    pub key_at: u64,
}

/// Bytes of a keys object header to read.
pub const KEYS_HEADER_LEN: usize = 40;

/// Parses a `PyDictKeysObject` header, refusing sizes no real dict has.
pub fn parse_keys_header(h: &[u8], l: &ObjectLayout) -> Option<KeysShape> {
    let (slots, indices_at, index_bytes, general, nentries) = match l.keys {
        KeysLayout::Sized => {
            let slots = le_u64(h, 8)?;
            let width = match slots {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xffff_ffff => 4,
                _ => 8,
            };
            (slots, 40, slots.checked_mul(width)?, true, le_u64(h, 32)?)
        }
        KeysLayout::Log2 => {
            let log2_size = u32::from(*h.get(8)?);
            let log2_index_bytes = u32::from(*h.get(9)?);
            let kind = *h.get(10)?;
            if log2_size > 30 || log2_index_bytes > 40 || kind > 2 {
                return None;
            }
            let slots = 1u64 << log2_size;
            (
                slots,
                32,
                1u64 << log2_index_bytes,
                kind == 0,
                le_u64(h, 24)?,
            )
        }
    };
    if !slots.is_power_of_two() || slots > MAX_DICT_SLOTS || nentries > slots {
        return None;
    }
    Some(KeysShape {
        nentries,
        entries_at: indices_at + index_bytes,
        entry_size: if general { 24 } else { 16 },
        key_at: if general { 8 } else { 0 },
    })
}

/// `(key, value)` pointers of each entry in order (0 where deleted or split).
pub fn parse_entries(bytes: &[u8], shape: &KeysShape) -> Vec<(u64, u64)> {
    bytes
        .chunks_exact(usize::try_from(shape.entry_size).unwrap_or(24))
        .take(usize::try_from(shape.nentries).unwrap_or(0))
        .map(|e| {
            (
                le_u64(e, shape.key_at).unwrap_or(0),
                le_u64(e, shape.key_at + 8).unwrap_or(0),
            )
        })
        .collect()
}

/// The entries of the keys object at `keys`.
fn read_keys(
    mem: &impl Memory,
    keys: u64,
    l: &ObjectLayout,
) -> Option<(KeysShape, Vec<(u64, u64)>)> {
    let mut header = [0u8; KEYS_HEADER_LEN];
    mem.read_bytes(keys, &mut header).then_some(())?;
    let shape = parse_keys_header(&header, l)?;
    let mut bytes = vec![0u8; usize::try_from(shape.nentries * shape.entry_size).ok()?];
    mem.read_bytes(keys.checked_add(shape.entries_at)?, &mut bytes)
        .then_some(())?;
    let entries = parse_entries(&bytes, &shape);
    Some((shape, entries))
}

/// One live entry of a dict, and where its value pointer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    key: u64,
    value: u64,
    /// Address of the value pointer (re-read to see whether the value changed).
    slot: u64,
}

/// Live entries of the dict at `dict`, combined or split.
fn dict_items(mem: &impl Memory, dict: u64, l: &ObjectLayout) -> Option<Vec<Item>> {
    let keys = mem.ptr_at(dict.checked_add(l.ma_keys)?)?;
    let values = mem.u64_at(dict.checked_add(l.ma_values)?)?;
    let (shape, entries) = read_keys(mem, keys, l)?;
    let entries_at = keys.checked_add(shape.entries_at)?;
    let mut items: Vec<Item> = entries
        .iter()
        .zip(0u64..)
        .map(|((key, value), i)| Item {
            key: *key,
            value: *value,
            slot: entries_at + i * shape.entry_size + shape.key_at + 8,
        })
        .collect();
    if values >= MIN_POINTER {
        // Split dict: the keys are shared, the values are the instance's own.
        let array = values.checked_add(l.values_array)?;
        let mut raw = vec![0u8; items.len() * 8];
        mem.read_bytes(array, &mut raw).then_some(())?;
        for ((item, v), i) in items.iter_mut().zip(raw.chunks_exact(8)).zip(0u64..) {
            item.value = le_u64(v, 0).unwrap_or(0);
            item.slot = array + 8 * i;
        }
    }
    items.retain(|i| i.key >= MIN_POINTER && i.value >= MIN_POINTER);
    Some(items)
}

/// The entry of `dict[name]` for a `str` key (so `key`'s type is `str`).
fn dict_get_str(mem: &impl Memory, dict: u64, l: &ObjectLayout, name: &str) -> Option<Item> {
    dict_items(mem, dict, l)?
        .into_iter()
        .find(|i| str_equals(mem, i.key, l, name))
}

// ---- the walk -----------------------------------------------------------

/// Reads the names of one process's threads; keeps what is worth keeping
/// between calls so that calling it every 100 ms costs a few dozen reads.
#[derive(Debug)]
pub struct ThreadNameReader<M: Memory = RemoteMemory> {
    mem: M,
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
    /// Type address -> index of `_name` in its cached (shared) keys.
    name_index: HashMap<u64, u64>,
    /// Thread object address -> what was read of it last time.
    known: HashMap<u64, Known>,
    /// When `known` and `name_index` were last emptied.
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
pub fn thread_names(
    interp: &Interpreter,
    gil: &GilSite,
    mem: RemoteMemory,
) -> HashMap<u32, String> {
    ThreadNameReader::new(interp, gil, mem).read()
}

/// The object layout of this process: the table's, refined by the debug offsets on 3.13+.
fn process_layout(interp: &Interpreter, gil: &GilSite, mem: &impl Memory) -> Option<ObjectLayout> {
    let table = object_layout_for(interp.file.version.line, gil.free_threaded)?;
    let layout = if interp.layout.gil == GilLocation::DebugOffsets {
        let mut block = vec![0u8; debug_offsets::BLOCK_LEN];
        mem.read_bytes(interp.py_runtime(), &mut block)
            .then_some(())?;
        let offsets = debug_offsets::parse(&block, interp.file.version.line).ok()?;
        table.with_debug_offsets(&offsets)
    } else {
        table
    };
    layout.complete().then_some(layout)
}

impl ThreadNameReader<RemoteMemory> {
    /// A reader for the process of `interp`; reads the debug offsets (3.13+) and,
    /// where thread states have no native id (3.8-3.10), glibc's tid offset.
    pub fn new(interp: &Interpreter, gil: &GilSite, mem: RemoteMemory) -> Self {
        let layout = process_layout(interp, gil, &mem);
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
            mem,
            layout,
            runtime,
            pthread_tid_off,
            active: HashMap::new(),
            str_type: None,
            name_index: HashMap::new(),
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
            self.name_index.clear();
            self.known_since = Instant::now();
        }
        let mut seen = HashSet::new();
        for interp in self.interpreters(&l) {
            self.read_interpreter(interp, &l, &mut names, &mut seen);
        }
        self.known.retain(|thread, _| seen.contains(thread));
        names
    }

    fn interpreters(&self, l: &ObjectLayout) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = self.runtime.checked_add(l.interpreters_head);
        while let Some(interp) = at.and_then(|a| self.mem.ptr_at(a)) {
            if out.contains(&interp) || out.len() >= MAX_INTERPRETERS {
                break;
            }
            out.push(interp);
            at = interp.checked_add(l.interp_next);
        }
        out
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
        let modules = self.mem.ptr_at(interp.checked_add(l.interp_modules)?)?;
        let threading = dict_get_str(&self.mem, modules, l, "threading")?;
        self.str_type = self.mem.ptr_at(threading.key.checked_add(l.ob_type)?);
        let md_dict = self.mem.ptr_at(threading.value.checked_add(l.md_dict)?)?;
        dict_get_str(&self.mem, md_dict, l, "_active").map(|active| active.value)
    }

    /// `pthread_t` -> tid of every thread state of one interpreter (3.11+).
    fn tstate_tids(&self, interp: u64, l: &ObjectLayout) -> HashMap<u64, u32> {
        let mut tids = HashMap::new();
        let Some(native) = l.tstate_native_thread_id else {
            return tids;
        };
        let span = l.tstate_next.max(l.tstate_thread_id).max(native) + 8;
        let mut buf = vec![0u8; usize::try_from(span).unwrap_or(0)];
        let mut next = interp
            .checked_add(l.interp_threads_head)
            .and_then(|a| self.mem.ptr_at(a));
        let mut seen = 0;
        while let Some(tstate) = next {
            seen += 1;
            if seen > MAX_THREADS || !self.mem.read_bytes(tstate, &mut buf) {
                break;
            }
            let ident = le_u64(&buf, l.tstate_thread_id).unwrap_or(0);
            let tid = le_u64(&buf, native).and_then(|t| u32::try_from(t).ok());
            if let Some(tid) = tid.filter(|t| *t != 0) {
                tids.insert(ident, tid);
            }
            next = le_u64(&buf, l.tstate_next).filter(|p| *p >= MIN_POINTER);
        }
        tids
    }

    /// The tid glibc keeps in the `struct pthread` a `pthread_t` points to (0 once the thread exited).
    fn glibc_tid(&self, pthread: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        let at = pthread.checked_add(self.pthread_tid_off?)?;
        self.mem.read_bytes(at, &mut b).then_some(())?;
        Some(u32::from_le_bytes(b)).filter(|t| *t != 0 && *t < 1 << 30)
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
        let slot = self.attr_slot(thread, l, "_name")?;
        let name_ptr = self.mem.ptr_at(slot)?;
        if let Some(str_type) = self.str_type {
            if self.mem.ptr_at(name_ptr.checked_add(l.ob_type)?) != Some(str_type) {
                return None;
            }
        }
        let name = read_str(&self.mem, name_ptr, l)?;
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

    /// Where a plain Python object keeps the pointer to one of its attributes,
    /// wherever this version keeps it.
    fn attr_slot(&mut self, obj: u64, l: &ObjectLayout, name: &str) -> Option<u64> {
        let ty = self.mem.ptr_at(obj.checked_add(l.ob_type)?)?;
        let flags = self.mem.u64_at(ty.checked_add(l.tp_flags)?)?;
        let managed = flags & TPFLAGS_MANAGED_DICT != 0;
        let dict = match l.instance_dict {
            InstanceDict::Managed311 if managed => match self.mem.ptr_at(obj.checked_sub(24)?) {
                Some(dict) => dict,
                None => {
                    let values = self.mem.ptr_at(obj.checked_sub(32)?)?;
                    return self.split_slot(ty, values, l, name);
                }
            },
            InstanceDict::Managed312 if managed => {
                let word = self.mem.u64_at(obj.checked_sub(24)?)?;
                if word & 1 == 1 {
                    // `_PyDictOrValues_SetValues` stores `values - 1`.
                    return self.split_slot(ty, word.checked_add(1)?, l, name);
                }
                Some(word).filter(|p| *p >= MIN_POINTER)?
            }
            InstanceDict::Managed313 { managed_dict } if managed => {
                match self.mem.ptr_at(obj.checked_add_signed(managed_dict)?) {
                    Some(dict) => dict,
                    None if flags & TPFLAGS_INLINE_VALUES != 0 => {
                        return self.inline_slot(ty, obj, l, name);
                    }
                    None => return None,
                }
            }
            _ => {
                let off = self.mem.u64_at(ty.checked_add(l.tp_dictoffset)?)? as i64;
                if !(8..1 << 16).contains(&off) {
                    return None;
                }
                self.mem.ptr_at(obj.checked_add_signed(off)?)?
            }
        };
        dict_get_str(&self.mem, dict, l, name).map(|item| item.slot)
    }

    /// Index of `name` in a type's shared keys (`ht_cached_keys`), cached per type.
    fn shared_key_index(&mut self, ty: u64, l: &ObjectLayout, name: &str) -> Option<u64> {
        if let Some(i) = self.name_index.get(&ty) {
            return Some(*i);
        }
        let keys = self.mem.ptr_at(ty.checked_add(l.ht_cached_keys)?)?;
        let (_, entries) = read_keys(&self.mem, keys, l)?;
        let index = entries
            .iter()
            .position(|(k, _)| *k >= MIN_POINTER && str_equals(&self.mem, *k, l, name))?
            as u64;
        self.name_index.insert(ty, index);
        Some(index)
    }

    /// The slot of a dict-less instance's value (3.11/3.12): `&values[index of name]`.
    fn split_slot(&mut self, ty: u64, values: u64, l: &ObjectLayout, name: &str) -> Option<u64> {
        let index = self.shared_key_index(ty, l, name)?;
        values.checked_add(l.values_array)?.checked_add(index * 8)
    }

    /// The slot of a value stored inline after the object (3.13+), if the values are still valid.
    fn inline_slot(&mut self, ty: u64, obj: u64, l: &ObjectLayout, name: &str) -> Option<u64> {
        let basicsize = self.mem.u64_at(ty.checked_add(l.tp_basicsize)?)?;
        if !(16..1 << 16).contains(&basicsize) {
            return None;
        }
        let values = obj.checked_add(basicsize)?;
        let mut header = [0u8; 4]; // capacity, size, embedded, valid
        self.mem.read_bytes(values, &mut header).then_some(())?;
        let index = self.shared_key_index(ty, l, name)?;
        if header[3] == 0 || index >= u64::from(header[0]) {
            return None;
        }
        values.checked_add(l.values_array)?.checked_add(index * 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::layout::versions::PyVersion;
    use crate::cpython::remote::objects::object_layout_for;

    fn layout(minor: u8, free_threaded: bool) -> ObjectLayout {
        let l = object_layout_for(PyVersion { major: 3, minor }, free_threaded).expect("known");
        if l.complete() {
            return l;
        }
        // What 3.13's debug offsets say (`ptype /o struct _Py_DebugOffsets` values).
        ObjectLayout {
            interp_modules: 0x3a0,
            interp_threads_head: 0x1d00,
            tstate_next: 8,
            tstate_thread_id: 0x98,
            tstate_native_thread_id: Some(0xa0),
            ..l
        }
    }

    /// Made-up address space: byte regions at chosen addresses.
    #[derive(Default)]
    struct Fake {
        regions: Vec<(u64, Vec<u8>)>,
        next: u64,
    }

    impl Memory for Fake {
        fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.regions.iter().any(|(base, bytes)| {
                let Some(start) = addr.checked_sub(*base).map(|s| s as usize) else {
                    return false;
                };
                match bytes.get(start..start + buf.len()) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        true
                    }
                    None => false,
                }
            })
        }
    }

    const STR_TYPE: u64 = 0x5_0000;
    const INT_TYPE: u64 = 0x5_1000;

    fn put(b: &mut [u8], at: u64, v: u64) {
        b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    impl Fake {
        /// Places `bytes` (preceded by `before` zero bytes) and returns the object's address.
        fn alloc_with_prefix(&mut self, before: u64, mut bytes: Vec<u8>) -> u64 {
            if self.next == 0 {
                self.next = 0x10_0000;
            }
            let base = self.next;
            let mut region = vec![0u8; before as usize];
            region.append(&mut bytes);
            self.next += (region.len() as u64 + 0x100) & !0xf;
            self.regions.push((base, region));
            base + before
        }

        fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
            self.alloc_with_prefix(0, bytes)
        }

        fn str(&mut self, l: &ObjectLayout, s: &str) -> u64 {
            self.alloc(str_bytes(l, s))
        }

        fn long(&mut self, l: &ObjectLayout, v: u64) -> u64 {
            let mut b = vec![0u8; (l.long_digits + 12) as usize];
            put(&mut b, l.ob_type, INT_TYPE);
            let digits: Vec<u32> = (0..3)
                .map(|i| ((v >> (30 * i)) & 0x3fff_ffff) as u32)
                .collect();
            let n = digits.iter().rposition(|d| *d != 0).map_or(0, |i| i + 1) as u64;
            put(&mut b, l.long_size, if l.long_tagged { n << 3 } else { n });
            for (i, d) in digits.iter().enumerate() {
                let at = (l.long_digits + 4 * i as u64) as usize;
                b[at..at + 4].copy_from_slice(&d.to_le_bytes());
            }
            self.alloc(b)
        }

        /// A keys object of 8 slots; `general` keys carry a hash in each entry.
        fn keys(&mut self, l: &ObjectLayout, entries: &[(u64, u64)], general: bool) -> u64 {
            let mut b = vec![0u8; 48]; // 40-byte header, 8 one-byte indices
            match l.keys {
                KeysLayout::Sized => {
                    put(&mut b, 8, 8);
                    put(&mut b, 32, entries.len() as u64);
                }
                KeysLayout::Log2 => {
                    b.truncate(40); // 32-byte header, 8 one-byte indices
                    b[8] = 3;
                    b[9] = 3;
                    b[10] = if general { 0 } else { 1 };
                    put(&mut b, 24, entries.len() as u64);
                }
            }
            let sized = l.keys == KeysLayout::Sized;
            for (k, v) in entries {
                if general || sized {
                    b.extend_from_slice(&0x1234u64.to_le_bytes());
                }
                b.extend_from_slice(&k.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
            self.alloc(b)
        }

        fn dict(&mut self, l: &ObjectLayout, keys: u64, values: u64) -> u64 {
            let mut b = vec![0u8; 64];
            put(&mut b, l.ma_keys, keys);
            put(&mut b, l.ma_values, values);
            self.alloc(b)
        }
    }

    fn str_bytes(l: &ObjectLayout, s: &str) -> Vec<u8> {
        let ascii = s.is_ascii();
        let max = s.chars().map(u32::from).max().unwrap_or(0);
        let unit: u32 = if ascii || max < 0x100 {
            1
        } else if max < 0x1_0000 {
            2
        } else {
            4
        };
        let data_at = if ascii { l.ascii_size } else { l.compact_size };
        let mut b = vec![0u8; data_at as usize];
        put(&mut b, l.ob_type, STR_TYPE);
        put(&mut b, l.unicode_length, s.chars().count() as u64);
        let state = (unit << 2) | (1 << 5) | (u32::from(ascii) << 6);
        let at = l.unicode_state as usize;
        b[at..at + 4].copy_from_slice(&state.to_le_bytes());
        for c in s.chars() {
            b.extend_from_slice(&u32::from(c).to_le_bytes()[..unit as usize]);
        }
        b.extend_from_slice(&[0; 4]);
        b
    }

    #[test]
    fn compact_ascii_and_wide_strings_decode() {
        for (minor, ft) in [(8, false), (12, false), (13, true)] {
            let l = layout(minor, ft);
            for s in ["MainThread", "pool_0", "café", "поток-1", "線程😀"] {
                let b = str_bytes(&l, s);
                let shape = parse_str_header(&b, &l).expect("compact");
                let data = &b[shape.data_at as usize..][..(shape.length * shape.unit) as usize];
                assert_eq!(
                    decode_units(data, shape.unit, shape.ascii).as_deref(),
                    Some(s),
                    "3.{minor}"
                );
            }
        }
    }

    #[test]
    fn legacy_and_garbage_string_headers_are_refused() {
        let l = layout(11, false);
        let mut b = str_bytes(&l, "x");
        let at = l.unicode_state as usize;
        b[at..at + 4].copy_from_slice(&((1u32 << 2) | (1 << 6)).to_le_bytes()); // not compact
        assert_eq!(parse_str_header(&b, &l), None);
        b[at..at + 4].copy_from_slice(&((3u32 << 2) | (1 << 5)).to_le_bytes()); // kind 3
        assert_eq!(parse_str_header(&b, &l), None);
        assert_eq!(parse_str_header(&b[..10], &l), None);
        assert_eq!(
            decode_units(&[0xe9], 1, true),
            None,
            "high bit in ASCII data"
        );
    }

    #[test]
    fn a_long_name_is_cut_at_256_characters() {
        let l = layout(12, false);
        let mut mem = Fake::default();
        let long = mem.str(&l, &"n".repeat(1000));
        assert_eq!(
            read_str(&mem, long, &l).map(|s| s.len()),
            Some(MAX_NAME_CHARS)
        );
    }

    #[test]
    fn ints_of_both_encodings_parse_and_negatives_do_not() {
        for minor in [10, 12] {
            let l = layout(minor, false);
            let mut mem = Fake::default();
            for v in [0u64, 1, 0x7f3a_1b2c_d640, u64::MAX >> 2] {
                let at = mem.long(&l, v);
                assert_eq!(read_long(&mem, at, &l), Some(v), "3.{minor} {v:#x}");
            }
            let mut neg = vec![0u8; 40];
            put(
                &mut neg,
                l.long_size,
                if l.long_tagged {
                    (1 << 3) | 2
                } else {
                    u64::MAX
                },
            );
            assert_eq!(parse_long(&neg, &l), None);
        }
    }

    #[test]
    fn keys_headers_of_both_layouts_parse_and_absurd_sizes_are_refused() {
        let mut h = [0u8; KEYS_HEADER_LEN];
        put(&mut h, 8, 512); // dk_size 512: 2-byte indices
        put(&mut h, 32, 300);
        let old = parse_keys_header(&h, &layout(9, false)).expect("3.9 keys");
        assert_eq!(
            (old.entries_at, old.entry_size, old.nentries),
            (40 + 1024, 24, 300)
        );
        put(&mut h, 8, 1 << 40);
        assert_eq!(parse_keys_header(&h, &layout(9, false)), None);

        let mut h = [0u8; KEYS_HEADER_LEN];
        h[8] = 6; // 64 slots
        h[9] = 6; // 64 bytes of indices
        h[10] = 1; // unicode keys: {key, value}
        put(&mut h, 24, 40);
        let new = parse_keys_header(&h, &layout(12, false)).expect("3.12 keys");
        assert_eq!(
            (new.entries_at, new.entry_size, new.key_at),
            (32 + 64, 16, 0)
        );
        put(&mut h, 24, 65); // more entries than slots
        assert_eq!(parse_keys_header(&h, &layout(12, false)), None);
        h[8] = 40;
        assert_eq!(parse_keys_header(&h, &layout(12, false)), None);
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
        let cached = mem.keys(l, &[(other_key, 0), (name_key, 0)], false);
        let mut ty = vec![0u8; 1024];
        let basicsize = l.ob_type + 8; // a bare object header
        put(&mut ty, l.tp_basicsize, basicsize);
        put(&mut ty, l.ht_cached_keys, cached);
        let thread = match l.instance_dict {
            InstanceDict::DictOffset => {
                let keys = mem.keys(l, &[(other_key, ident_val), (name_key, name_val)], false);
                let dict = mem.dict(l, keys, 0);
                put(&mut ty, l.tp_dictoffset, 16);
                let mut obj = vec![0u8; 32];
                put(&mut obj, 16, dict);
                let ty = mem.alloc(ty);
                put(&mut obj, l.ob_type, ty);
                mem.alloc(obj)
            }
            InstanceDict::Managed311 | InstanceDict::Managed312 => {
                let values = mem.alloc([ident_val, name_val].map(u64::to_le_bytes).concat());
                put(&mut ty, l.tp_flags, TPFLAGS_MANAGED_DICT);
                let ty = mem.alloc(ty);
                let mut pre = vec![0u8; 48];
                if l.instance_dict == InstanceDict::Managed311 {
                    put(&mut pre, 0, values); // obj - 32
                } else {
                    put(&mut pre, 8, values - 1); // obj - 24, tagged
                }
                put(&mut pre, 32 + l.ob_type, ty);
                mem.alloc_with_prefix(0, pre) + 32
            }
            InstanceDict::Managed313 { .. } => {
                put(
                    &mut ty,
                    l.tp_flags,
                    TPFLAGS_MANAGED_DICT | TPFLAGS_INLINE_VALUES,
                );
                let ty = mem.alloc(ty);
                // 32 bytes of pre-header, the object, then its inline values.
                let values = 32 + basicsize;
                let mut obj = vec![0u8; values as usize + 8 + 16];
                put(&mut obj, 32 + l.ob_type, ty);
                obj[values as usize] = 2; // capacity
                obj[values as usize + 1] = 2; // size
                obj[values as usize + 3] = 1; // valid
                put(&mut obj, values + 8, ident_val);
                put(&mut obj, values + 16, name_val);
                mem.alloc(obj) + 32
            }
        };
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
        for (base, bytes) in reader.mem.regions.iter_mut() {
            if let Some(at) = slot.checked_sub(*base).filter(|a| *a < bytes.len() as u64) {
                put(bytes, at, renamed);
            }
        }
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
        for (base, bytes) in mem.regions.iter_mut() {
            if *base == tstate {
                put(bytes, l.tstate_next, tstate);
            }
        }
        let reader = ThreadNameReader::with_layout(mem, Some(l), runtime, None);
        assert_eq!(reader.tstate_tids(interp, &l).len(), 1);
    }
}
