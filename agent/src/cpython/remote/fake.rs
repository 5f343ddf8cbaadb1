//! A made-up address space holding CPython objects, built byte by byte the way
//! each layout lays them out: what the readers' tests read instead of a process.
//! Test code only (declared under `#[cfg(test)]`).

use crate::cpython::layout::debug_offsets::{self, block_layout, DebugOffsets};
use crate::cpython::layout::frames::{CodeLayout, FrameWalk, InstrKind, StackLayout};
use crate::cpython::layout::versions::{layout_for, PyVersion, StackSource};
use crate::cpython::remote::memory::Memory;
use crate::cpython::remote::objects::{
    object_layout_for, InstanceDict, KeysLayout, ObjectLayout, TPFLAGS_INLINE_VALUES,
    TPFLAGS_MANAGED_DICT,
};

/// The `ob_type` of every made-up `str`.
const STR_TYPE: u64 = 0x5_0000;
/// The `ob_type` of every made-up `int`.
const INT_TYPE: u64 = 0x5_1000;
/// The `ob_type` of every made-up code object (`PyCode_Type`).
pub const CODE_TYPE: u64 = 0x5_2000;

/// The object layout of a release line, completed for 3.13+ with what its
/// debug offsets say (`ptype /o struct _Py_DebugOffsets` values).
pub fn layout(minor: u8, free_threaded: bool) -> ObjectLayout {
    let l = object_layout_for(PyVersion { major: 3, minor }, free_threaded).expect("known");
    if l.complete() {
        return l;
    }
    ObjectLayout {
        interp_modules: 0x3a0,
        interp_threads_head: 0x1d00,
        tstate_next: 8,
        tstate_thread_id: 0x98,
        tstate_native_thread_id: Some(0xa0),
        ..l
    }
}

/// A `_Py_DebugOffsets` block as 3.13 (pyenv 3.13.0, or 3.13.5t when
/// `free_threaded`) or 3.14 (sid's 3.14.10) carry it: the values are those
/// builds' own (`print _PyRuntime.debug_offsets` in gdb), at the positions
/// [`block_layout`] knows.
pub fn debug_block(minor: u8, free_threaded: bool) -> Vec<u8> {
    let line = PyVersion { major: 3, minor };
    let p = block_layout(line).expect("a debug-offsets release line");
    let mut b = vec![0u8; debug_offsets::BLOCK_LEN];
    b[..8].copy_from_slice(b"xdebugpy");
    let mut set = |at: usize, v: u64| put(&mut b, at as u64, v);
    set(8, 0x0300_00f0 | u64::from(minor) << 16);
    set(16, u64::from(free_threaded));
    let ft = |plain: u64, threaded: u64| if free_threaded { threaded } else { plain };
    for (at, v) in [
        (p.interpreters_head, 40),
        (p.interp_next, 8),
        (p.ceval_gil, 16),
        (p.gil_runtime_state, 0x1e68),
        (p.gil_locked, 0x1e78),
        (p.gil_holder, 0x1e70),
        (p.native_thread_id, 160),
        (p.threads_head, 0x1c80),
        (p.imports_modules, 0x3a0),
        (p.tstate_next, 8),
        (p.thread_id, 152),
        (p.ob_type, ft(8, 24)),
        (p.tp_flags, ft(168, 184)),
        (p.ma_keys, ft(32, 48)),
        (p.ma_values, ft(40, 56)),
        (p.long_tag, ft(16, 32)),
        (p.long_digits, ft(24, 40)),
        (p.unicode_state, ft(32, 48)),
        (p.unicode_length, ft(16, 32)),
        (p.ascii_size, ft(40, 56)),
    ] {
        set(at, v);
    }
    let s = p.stack;
    let (tstate, frame, owner, code, adaptive) = match (minor, free_threaded) {
        (13, false) => (304, 80, 70, 208, 200),
        (13, true) => (304, 80, 70, 224, 216),
        _ => (832, 88, 74, 216, 208),
    };
    let code_at = |plain: u64| ft(plain, plain + 16);
    for (at, v) in [
        (s.tstate_size, tstate),
        (s.current_frame, 72),
        (s.frame_size, frame),
        (s.frame_previous, 8),
        (s.frame_executable, 0),
        (s.frame_instr_ptr, 56),
        (s.frame_owner, owner),
        (s.code_size, code),
        (s.code_filename, code_at(112)),
        (s.code_qualname, code_at(128)),
        (s.code_linetable, code_at(136)),
        (s.code_firstlineno, code_at(68)),
        (s.code_adaptive, adaptive),
        (s.bytes_size, ft(16, 32)),
        (s.bytes_data, ft(32, 48)),
    ] {
        set(at, v);
    }
    b
}

/// The debug offsets of [`debug_block`], parsed.
pub fn debug(minor: u8, free_threaded: bool) -> DebugOffsets {
    let line = PyVersion { major: 3, minor };
    debug_offsets::parse(&debug_block(minor, free_threaded), line).expect("a valid block")
}

/// How frames are walked in a build of release line 3.`minor`: the table's
/// (3.8-3.12) or what [`debug`] says (3.13+).
pub fn stack_layout(minor: u8, free_threaded: bool) -> StackLayout {
    match layout_for(PyVersion { major: 3, minor })
        .expect("known")
        .stack
    {
        StackSource::Table(l) => l,
        StackSource::DebugOffsets => debug(minor, free_threaded)
            .stack_layout()
            .expect("plausible"),
    }
}

/// Made-up address space: byte regions at chosen addresses.
#[derive(Debug, Default)]
pub struct Fake {
    pub regions: Vec<(u64, Vec<u8>)>,
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

/// Writes a little-endian u64 at byte `at`.
pub fn put(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

impl Fake {
    /// Places `bytes` at a fresh address and returns it.
    pub fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
        if self.next == 0 {
            self.next = 0x10_0000;
        }
        let base = self.next;
        self.next += (bytes.len() as u64 + 0x100) & !0xf;
        self.regions.push((base, bytes));
        base
    }

    /// Overwrites the u64 at `addr`, wherever it was placed.
    pub fn poke(&mut self, addr: u64, v: u64) {
        for (base, bytes) in self.regions.iter_mut() {
            if let Some(at) = addr.checked_sub(*base).filter(|a| *a < bytes.len() as u64) {
                put(bytes, at, v);
            }
        }
    }

    /// Overwrites the byte at `addr`, wherever it was placed.
    pub fn poke_byte(&mut self, addr: u64, v: u8) {
        for (base, bytes) in self.regions.iter_mut() {
            if let Some(at) = addr.checked_sub(*base).filter(|a| *a < bytes.len() as u64) {
                bytes[at as usize] = v;
            }
        }
    }

    pub fn str(&mut self, l: &ObjectLayout, s: &str) -> u64 {
        self.alloc(str_bytes(l, s))
    }

    pub fn long(&mut self, l: &ObjectLayout, v: u64) -> u64 {
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
    pub fn keys(&mut self, l: &ObjectLayout, entries: &[(u64, u64)], general: bool) -> u64 {
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

    pub fn dict(&mut self, l: &ObjectLayout, keys: u64, values: u64) -> u64 {
        let mut b = vec![0u8; 64];
        put(&mut b, l.ma_keys, keys);
        put(&mut b, l.ma_values, values);
        self.alloc(b)
    }
}

impl Fake {
    /// A plain object whose attributes (`str` key, value) are kept the way `l`
    /// keeps instance attributes: a dict at `tp_dictoffset`, values before the
    /// object indexed like its type's shared keys, or values inline after it.
    pub fn instance(&mut self, l: &ObjectLayout, attrs: &[(u64, u64)]) -> u64 {
        let shared: Vec<(u64, u64)> = attrs.iter().map(|(k, _)| (*k, 0)).collect();
        let cached = self.keys(l, &shared, false);
        let values: Vec<u8> = attrs.iter().flat_map(|(_, v)| v.to_le_bytes()).collect();
        let mut ty = vec![0u8; 1024];
        let basicsize = l.ob_type + 8; // a bare object header
        put(&mut ty, l.tp_basicsize, basicsize);
        put(&mut ty, l.ht_cached_keys, cached);
        match l.instance_dict {
            InstanceDict::DictOffset => {
                let keys = self.keys(l, attrs, false);
                let dict = self.dict(l, keys, 0);
                put(&mut ty, l.tp_dictoffset, 16);
                let mut obj = vec![0u8; 32];
                put(&mut obj, 16, dict);
                let ty = self.alloc(ty);
                put(&mut obj, l.ob_type, ty);
                self.alloc(obj)
            }
            InstanceDict::Managed311 | InstanceDict::Managed312 => {
                let values = self.alloc(values);
                put(&mut ty, l.tp_flags, TPFLAGS_MANAGED_DICT);
                let ty = self.alloc(ty);
                let mut pre = vec![0u8; 48];
                if l.instance_dict == InstanceDict::Managed311 {
                    put(&mut pre, 0, values); // obj - 32
                } else {
                    put(&mut pre, 8, values - 1); // obj - 24, tagged
                }
                put(&mut pre, 32 + l.ob_type, ty);
                self.alloc(pre) + 32
            }
            InstanceDict::Managed313 { .. } => {
                let flags = TPFLAGS_MANAGED_DICT | TPFLAGS_INLINE_VALUES;
                put(&mut ty, l.tp_flags, flags);
                let ty = self.alloc(ty);
                // 32 bytes of pre-header, the object, then its inline values.
                let at = (32 + basicsize) as usize;
                let mut obj = vec![0u8; at + 8];
                put(&mut obj, 32 + l.ob_type, ty);
                obj[at] = attrs.len() as u8; // capacity
                obj[at + 1] = attrs.len() as u8; // size
                obj[at + 3] = 1; // valid
                obj.extend_from_slice(&values);
                self.alloc(obj) + 32
            }
        }
    }
}

/// What a made-up code object is: its names, first line and line table.
pub struct CodeSpec<'a> {
    pub name: &'a str,
    pub file: &'a str,
    pub first_line: i32,
    pub table: &'a [u8],
}

impl Fake {
    /// A `bytes` object holding `data`, laid out as `c` reads line tables.
    pub fn bytes(&mut self, c: &CodeLayout, data: &[u8]) -> u64 {
        let mut b = vec![0u8; c.bytes_data as usize];
        put(&mut b, c.bytes_size, data.len() as u64);
        b.extend_from_slice(data);
        self.alloc(b)
    }

    /// A code object of type [`CODE_TYPE`] with 64 code units of instructions.
    pub fn code(&mut self, l: &ObjectLayout, c: &CodeLayout, spec: &CodeSpec) -> u64 {
        let name = self.str(l, spec.name);
        let file = self.str(l, spec.file);
        let table = self.bytes(c, spec.table);
        let len = c.code_start.unwrap_or(c.header_len()) + 128;
        let mut b = vec![0u8; len as usize];
        put(&mut b, l.ob_type, CODE_TYPE);
        put(&mut b, c.name, name);
        put(&mut b, c.filename, file);
        put(&mut b, c.linetable, table);
        let at = c.firstlineno as usize;
        b[at..at + 4].copy_from_slice(&spec.first_line.to_le_bytes());
        self.alloc(b)
    }

    /// A frame of `w`'s shape: its caller, code, position (`units` code units
    /// into the code, or `f_lasti` of that many) and owner.
    pub fn frame(
        &mut self,
        w: &FrameWalk,
        c: &CodeLayout,
        previous: u64,
        code: u64,
        units: i64,
        owner: u8,
    ) -> u64 {
        let mut b = vec![0u8; w.frame_len() as usize];
        put(&mut b, w.frame_previous, previous);
        put(&mut b, w.frame_code, code | (w.code_tag_mask & 1));
        let at = w.frame_instr as usize;
        match w.instr {
            InstrKind::Pointer => {
                let start = code + c.code_start.unwrap_or(0);
                put(
                    &mut b,
                    w.frame_instr,
                    start.wrapping_add((units * 2) as u64),
                );
            }
            InstrKind::LastiBytes => {
                b[at..at + 4].copy_from_slice(&((units * 2) as i32).to_le_bytes())
            }
            InstrKind::LastiUnits => b[at..at + 4].copy_from_slice(&(units as i32).to_le_bytes()),
        }
        if let Some(o) = w.frame_owner {
            b[o as usize] = owner;
        }
        self.alloc(b)
    }
}

/// The bytes of a compact `str` object holding `s`.
pub fn str_bytes(l: &ObjectLayout, s: &str) -> Vec<u8> {
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

/// A line table of `format` whose code unit `u` is at line `first + 1 + u`
/// (64 units).
pub fn line_table(format: crate::cpython::layout::frames::LineFormat) -> Vec<u8> {
    use crate::cpython::layout::frames::LineFormat;
    let mut t = Vec::new();
    match format {
        LineFormat::Lnotab => {
            t.extend([0, 1]);
            for _ in 0..63 {
                t.extend([2, 1]);
            }
        }
        LineFormat::LineTable310 => {
            for _ in 0..64 {
                t.extend([2, 1]);
            }
        }
        LineFormat::Locations => {
            for _ in 0..64 {
                t.extend([0x80 | (13 << 3), 0x02]);
            }
        }
    }
    t
}

/// A made-up process: runtime → one interpreter → thread states, each with
/// a chain of frames of code objects, as one build lays them out.
pub struct FakeProcess {
    pub mem: Fake,
    pub runtime: u64,
    pub objects: ObjectLayout,
    pub stack: StackLayout,
    /// Per thread (in the order given): its thread state and its Python
    /// frames, root first.
    pub threads: Vec<(u64, Vec<u64>)>,
    /// Function name → its code object.
    pub codes: std::collections::HashMap<String, u64>,
}

/// The first line of made-up function number `i`.
pub fn first_line_of(i: usize) -> i32 {
    10 + 100 * i as i32
}

/// Where 3.8-3.10 made-up threads keep their tid: glibc's `struct pthread`
/// (the thread state's `thread_id` points here, the tid at +720).
pub const PTHREAD_TID_OFF: u64 = 720;

impl FakeProcess {
    /// Threads `(tid, [(function, code unit)] root first)` of release line
    /// 3.`minor`; from 3.12 each chain sits on a C-stack entry frame, and one
    /// more sits between the first two Python frames (a call through C).
    pub fn new(minor: u8, free_threaded: bool, threads: &[(u32, &[(&str, i64)])]) -> Self {
        let line = PyVersion { major: 3, minor };
        let stack = stack_layout(minor, free_threaded);
        let objects = if minor >= 13 {
            ObjectLayout::of_process(line, Some(&debug(minor, free_threaded))).expect("complete")
        } else {
            layout(minor, false)
        };
        let mut p = FakeProcess {
            mem: Fake::default(),
            runtime: 0,
            objects,
            stack,
            threads: Vec::new(),
            codes: std::collections::HashMap::new(),
        };
        let table = line_table(stack.code.lines);
        let mut tstates = Vec::new();
        for (tid, chain) in threads {
            let mut previous = p.shim(0);
            let mut frames = Vec::new();
            for (depth, (function, unit)) in chain.iter().enumerate() {
                let code = p.code_named(function, &table);
                if depth == 1 {
                    previous = p.shim(previous);
                }
                let (w, c) = (p.stack.walk, p.stack.code);
                let frame = p.mem.frame(&w, &c, previous, code, *unit, 0);
                frames.push(frame);
                previous = frame;
            }
            let tstate = p.thread_state(*tid, frames.last().copied().unwrap_or(0));
            tstates.push(tstate);
            p.threads.push((tstate, frames));
        }
        p.link(&tstates);
        p
    }

    /// A C-stack entry frame (3.12+; nothing before) whose caller is `previous`.
    fn shim(&mut self, previous: u64) -> u64 {
        if self.stack.walk.frame_owner.is_none() {
            return previous;
        }
        let (w, c) = (self.stack.walk, self.stack.code);
        let owner = if self.stack.walk.code_tag_mask != 0 {
            4
        } else {
            3
        };
        self.mem.frame(&w, &c, previous, 0x2_0000, 0, owner)
    }

    fn code_named(&mut self, function: &str, table: &[u8]) -> u64 {
        if let Some(code) = self.codes.get(function) {
            return *code;
        }
        let spec = CodeSpec {
            name: function,
            file: "/srv/app.py",
            first_line: first_line_of(self.codes.len()),
            table,
        };
        let (l, c) = (self.objects, self.stack.code);
        let code = self.mem.code(&l, &c, &spec);
        self.codes.insert(function.to_string(), code);
        code
    }

    /// A thread state whose innermost frame is `top`, named `tid`.
    fn thread_state(&mut self, tid: u32, top: u64) -> u64 {
        let l = self.objects;
        let w = self.stack.walk;
        let mut ts = vec![0u8; 1024];
        match w.tstate_to_frame.second {
            Some(second) => {
                let mut cframe = vec![0u8; 64];
                put(&mut cframe, second, top);
                let cframe = self.mem.alloc(cframe);
                put(&mut ts, w.tstate_to_frame.first, cframe);
            }
            None => put(&mut ts, w.tstate_to_frame.first, top),
        }
        match l.tstate_native_thread_id {
            Some(native) => put(&mut ts, native, u64::from(tid)),
            None => {
                let mut pthread = vec![0u8; 1024];
                pthread[PTHREAD_TID_OFF as usize..][..4].copy_from_slice(&tid.to_le_bytes());
                let pthread = self.mem.alloc(pthread);
                put(&mut ts, l.tstate_thread_id, pthread);
            }
        }
        self.mem.alloc(ts)
    }

    /// The runtime, one interpreter, and its list of thread states.
    fn link(&mut self, tstates: &[u64]) {
        let l = self.objects;
        for pair in tstates.windows(2) {
            self.mem.poke(pair[0] + l.tstate_next, pair[1]);
        }
        let mut interp = vec![0u8; 0x2000];
        put(
            &mut interp,
            l.interp_threads_head,
            tstates.first().copied().unwrap_or(0),
        );
        let interp = self.mem.alloc(interp);
        let mut runtime = vec![0u8; 1024];
        put(&mut runtime, l.interpreters_head, interp);
        self.runtime = self.mem.alloc(runtime);
    }
}
