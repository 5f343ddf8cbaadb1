//! A made-up address space holding CPython objects, built byte by byte the way
//! each layout lays them out: what the readers' tests read instead of a process.
//! Test code only (declared under `#[cfg(test)]`).

use crate::cpython::layout::versions::PyVersion;
use crate::cpython::remote::memory::Memory;
use crate::cpython::remote::objects::{
    object_layout_for, InstanceDict, KeysLayout, ObjectLayout, TPFLAGS_INLINE_VALUES,
    TPFLAGS_MANAGED_DICT,
};

/// The `ob_type` of every made-up `str`.
const STR_TYPE: u64 = 0x5_0000;
/// The `ob_type` of every made-up `int`.
const INT_TYPE: u64 = 0x5_1000;

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
