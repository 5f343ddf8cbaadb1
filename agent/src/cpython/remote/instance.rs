//! Finds where a plain Python object (a `threading.Thread`, say) keeps one of
//! its attributes, however its release line keeps them: a dict at
//! `tp_dictoffset` (3.8-3.10), a managed dict or a values array shared-key
//! indexed before the object (3.11, 3.12), or values inline after it (3.13+).
//! The answer is the address of the value pointer (its *slot*), so a caller can
//! later re-read one word to see whether the attribute changed.

use std::collections::HashMap;

use crate::cpython::remote::dict::{dict_get_str, read_keys};
use crate::cpython::remote::memory::{Memory, MIN_POINTER};
use crate::cpython::remote::objects::{
    InstanceDict, ObjectLayout, TPFLAGS_INLINE_VALUES, TPFLAGS_MANAGED_DICT,
};
use crate::cpython::remote::str::str_equals;

/// Largest `tp_dictoffset` and `tp_basicsize` taken (real types are a few hundred bytes).
const MAX_TYPE_OFFSET: u64 = 1 << 16;

/// Finds the slot of one named attribute in objects of any type, remembering
/// per type where the name sits in its shared keys (`ht_cached_keys`).
#[derive(Debug)]
pub struct AttrSlots {
    name: &'static str,
    /// Type address -> index of `name` in its cached (shared) keys.
    index: HashMap<u64, u64>,
}

impl AttrSlots {
    /// A finder of the attribute `name` (e.g. `_name`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            index: HashMap::new(),
        }
    }

    /// Forgets what was learnt of types (their addresses may be reused).
    pub fn clear(&mut self) {
        self.index.clear();
    }

    /// Where the object at `obj` keeps the pointer to the attribute's value.
    pub fn slot(&mut self, mem: &impl Memory, obj: u64, l: &ObjectLayout) -> Option<u64> {
        let ty = mem.ptr_at(obj.checked_add(l.ob_type)?)?;
        let flags = mem.u64_at(ty.checked_add(l.tp_flags)?)?;
        let managed = flags & TPFLAGS_MANAGED_DICT != 0;
        let dict = match l.instance_dict {
            InstanceDict::Managed311 if managed => match mem.ptr_at(obj.checked_sub(24)?) {
                Some(dict) => dict,
                None => {
                    let values = mem.ptr_at(obj.checked_sub(32)?)?;
                    return self.split_slot(mem, ty, values, l);
                }
            },
            InstanceDict::Managed312 if managed => {
                let word = mem.u64_at(obj.checked_sub(24)?)?;
                if word & 1 == 1 {
                    // `_PyDictOrValues_SetValues` stores `values - 1`.
                    return self.split_slot(mem, ty, word.checked_add(1)?, l);
                }
                Some(word).filter(|p| *p >= MIN_POINTER)?
            }
            InstanceDict::Managed313 { managed_dict } if managed => {
                match mem.ptr_at(obj.checked_add_signed(managed_dict)?) {
                    Some(dict) => dict,
                    None if flags & TPFLAGS_INLINE_VALUES != 0 => {
                        return self.inline_slot(mem, ty, obj, l);
                    }
                    None => return None,
                }
            }
            _ => {
                let off = mem.u64_at(ty.checked_add(l.tp_dictoffset)?)? as i64;
                if !(8..MAX_TYPE_OFFSET as i64).contains(&off) {
                    return None;
                }
                mem.ptr_at(obj.checked_add_signed(off)?)?
            }
        };
        dict_get_str(mem, dict, l, self.name).map(|item| item.slot)
    }

    /// Index of the name in a type's shared keys, cached per type.
    fn shared_key_index(&mut self, mem: &impl Memory, ty: u64, l: &ObjectLayout) -> Option<u64> {
        if let Some(i) = self.index.get(&ty) {
            return Some(*i);
        }
        let keys = mem.ptr_at(ty.checked_add(l.ht_cached_keys)?)?;
        let (_, entries) = read_keys(mem, keys, l)?;
        let index = entries
            .iter()
            .position(|(k, _)| *k >= MIN_POINTER && str_equals(mem, *k, l, self.name))?
            as u64;
        self.index.insert(ty, index);
        Some(index)
    }

    /// The slot of a dict-less instance's value (3.11/3.12): `&values[index of name]`.
    fn split_slot(
        &mut self,
        mem: &impl Memory,
        ty: u64,
        values: u64,
        l: &ObjectLayout,
    ) -> Option<u64> {
        let index = self.shared_key_index(mem, ty, l)?;
        values.checked_add(l.values_array)?.checked_add(index * 8)
    }

    /// The slot of a value stored inline after the object (3.13+), if the values are still valid.
    fn inline_slot(
        &mut self,
        mem: &impl Memory,
        ty: u64,
        obj: u64,
        l: &ObjectLayout,
    ) -> Option<u64> {
        let basicsize = mem.u64_at(ty.checked_add(l.tp_basicsize)?)?;
        if !(16..MAX_TYPE_OFFSET).contains(&basicsize) {
            return None;
        }
        let values = obj.checked_add(basicsize)?;
        let mut header = [0u8; 4]; // capacity, size, embedded, valid
        mem.read_bytes(values, &mut header).then_some(())?;
        let index = self.shared_key_index(mem, ty, l)?;
        if header[3] == 0 || index >= u64::from(header[0]) {
            return None;
        }
        values.checked_add(l.values_array)?.checked_add(index * 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, Fake};

    #[test]
    fn every_instance_layout_gives_the_slot_of_the_named_attribute() {
        for (minor, ft) in [
            (8, false),
            (11, false),
            (12, false),
            (13, false),
            (13, true),
        ] {
            let l = layout(minor, ft);
            let mut mem = Fake::default();
            let (ident, name) = (mem.str(&l, "_ident"), mem.str(&l, "_name"));
            let (one, two) = (mem.long(&l, 1), mem.str(&l, "cpu-0"));
            let obj = mem.instance(&l, &[(ident, one), (name, two)]);
            let mut finder = AttrSlots::new("_name");
            let slot = finder.slot(&mem, obj, &l).expect("found");
            assert_eq!(mem.u64_at(slot), Some(two), "3.{minor} ft={ft}");
            assert_eq!(finder.slot(&mem, obj, &l), Some(slot), "cached: same slot");
            assert_eq!(AttrSlots::new("_daemonic").slot(&mem, obj, &l), None);
        }
    }
}
