//! Reads a `dict` of the target: its keys object (`PyDictKeysObject`, whose
//! header changed in 3.11) and, for a split dict, the values array it shares
//! keys with. Sizes come from the target and are refused past what a real dict
//! has, so one read of the entries is bounded.

use crate::cpython::remote::memory::{le_u64, Memory, MIN_POINTER};
use crate::cpython::remote::objects::{KeysLayout, ObjectLayout};
use crate::cpython::remote::str::str_equals;

/// Dict slots read at most (sys.modules of a big service has a few thousand).
const MAX_DICT_SLOTS: u64 = 1 << 16;

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

/// Slots, where the entries start, whether entries carry a hash, and entries
/// in use, as a keys header says (before any check).
struct KeysHeader {
    slots: u64,
    entries_at: u64,
    general: bool,
    nentries: u64,
}

/// 3.8-3.10: `dk_size` at 8 (its magnitude sets the index width), `dk_nentries` at 32.
fn sized_header(h: &[u8]) -> Option<KeysHeader> {
    let slots = le_u64(h, 8)?;
    let width = match slots {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    };
    Some(KeysHeader {
        slots,
        entries_at: slots.checked_mul(width)?.checked_add(40)?,
        general: true,
        nentries: le_u64(h, 32)?,
    })
}

/// 3.11+: log2 of the slots and of the index bytes at 8 and 9, the kind at 10,
/// `dk_nentries` at 24.
fn log2_header(h: &[u8]) -> Option<KeysHeader> {
    let log2_size = u32::from(*h.get(8)?);
    let log2_index_bytes = u32::from(*h.get(9)?);
    let kind = *h.get(10)?;
    if log2_size > 30 || log2_index_bytes > 40 || kind > 2 {
        return None;
    }
    Some(KeysHeader {
        slots: 1u64 << log2_size,
        entries_at: 32 + (1u64 << log2_index_bytes),
        general: kind == 0,
        nentries: le_u64(h, 24)?,
    })
}

/// Parses a `PyDictKeysObject` header, refusing sizes no real dict has.
pub fn parse_keys_header(h: &[u8], l: &ObjectLayout) -> Option<KeysShape> {
    let header = match l.keys {
        KeysLayout::Sized => sized_header(h)?,
        KeysLayout::Log2 => log2_header(h)?,
    };
    let KeysHeader {
        slots,
        entries_at,
        general,
        nentries,
    } = header;
    if !slots.is_power_of_two() || slots > MAX_DICT_SLOTS || nentries > slots {
        return None;
    }
    Some(KeysShape {
        nentries,
        entries_at,
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

/// The entries of the keys object at `keys` (two reads: header, then entries).
pub fn read_keys(
    mem: &impl Memory,
    keys: u64,
    l: &ObjectLayout,
) -> Option<(KeysShape, Vec<(u64, u64)>)> {
    let mut header = [0u8; KEYS_HEADER_LEN];
    mem.read_bytes(keys, &mut header).then_some(())?;
    let shape = parse_keys_header(&header, l)?;
    let len = shape.nentries * shape.entry_size;
    let bytes = mem.bytes_at(keys.checked_add(shape.entries_at)?, len)?;
    let entries = parse_entries(&bytes, &shape);
    Some((shape, entries))
}

/// One live entry of a dict, and where its value pointer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DictItem {
    pub key: u64,
    pub value: u64,
    /// Address of the value pointer (re-read to see whether the value changed).
    pub slot: u64,
}

/// Live entries of the dict at `dict`, combined or split.
pub fn dict_items(mem: &impl Memory, dict: u64, l: &ObjectLayout) -> Option<Vec<DictItem>> {
    let keys = mem.ptr_at(dict.checked_add(l.ma_keys)?)?;
    let values = mem.u64_at(dict.checked_add(l.ma_values)?)?;
    let (shape, entries) = read_keys(mem, keys, l)?;
    let entries_at = keys.checked_add(shape.entries_at)?;
    let mut items: Vec<DictItem> = entries
        .iter()
        .zip(0u64..)
        .map(|((key, value), i)| DictItem {
            key: *key,
            value: *value,
            slot: entries_at + i * shape.entry_size + shape.key_at + 8,
        })
        .collect();
    if values >= MIN_POINTER {
        // Split dict: the keys are shared, the values are the instance's own.
        let array = values.checked_add(l.values_array)?;
        let raw = mem.bytes_at(array, items.len() as u64 * 8)?;
        for ((item, v), i) in items.iter_mut().zip(raw.chunks_exact(8)).zip(0u64..) {
            item.value = le_u64(v, 0).unwrap_or(0);
            item.slot = array + 8 * i;
        }
    }
    items.retain(|i| i.key >= MIN_POINTER && i.value >= MIN_POINTER);
    Some(items)
}

/// The entry of `dict[name]` for a `str` key (so `key`'s type is `str`).
pub fn dict_get_str(
    mem: &impl Memory,
    dict: u64,
    l: &ObjectLayout,
    name: &str,
) -> Option<DictItem> {
    dict_items(mem, dict, l)?
        .into_iter()
        .find(|i| str_equals(mem, i.key, l, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, put, Fake};

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

    #[test]
    fn a_str_key_is_found_in_a_combined_and_in_a_split_dict() {
        for minor in [9, 12] {
            let l = layout(minor, false);
            let mut mem = Fake::default();
            let (a, b) = (mem.str(&l, "a"), mem.str(&l, "b"));
            let (one, two) = (mem.long(&l, 1), mem.long(&l, 2));
            let keys = mem.keys(&l, &[(a, one), (b, two)], false);
            let combined = mem.dict(&l, keys, 0);
            let found = dict_get_str(&mem, combined, &l, "b").expect("b");
            assert_eq!((found.key, found.value), (b, two), "3.{minor}");
            assert_eq!(
                mem.u64_at(found.slot),
                Some(two),
                "the slot holds the value"
            );
            assert_eq!(dict_get_str(&mem, combined, &l, "c"), None);

            let shared = mem.keys(&l, &[(a, 0), (b, 0)], false);
            let values = mem.alloc([two, one].map(u64::to_le_bytes).concat());
            let split = mem.dict(&l, shared, values - l.values_array);
            let found = dict_get_str(&mem, split, &l, "a").expect("a");
            assert_eq!((found.value, found.slot), (two, values), "3.{minor}");
        }
    }
}
