//! Reads a `str` object of the target: its header (`PyASCIIObject`) says how
//! long it is and how wide its code units are, then at most a caller-given
//! number of characters is read and decoded. Only compact strings are read —
//! every string made at run time is; legacy (non-compact) ones give `None`.

use crate::cpython::remote::memory::{le_u32, le_u64, Memory};
use crate::cpython::remote::objects::ObjectLayout;

/// Longest `str` a header may claim (CPython's own strings are far shorter; a
/// bigger length is garbage). Reads are capped by the caller's `max_chars` anyway.
const MAX_STR_LENGTH: u64 = 1 << 30;

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
    l.unicode_state
        .saturating_add(4)
        .max(l.unicode_length.saturating_add(8))
}

/// Parses a `str` header (`PyASCIIObject`); `None` for a legacy string or garbage.
pub fn parse_str_header(header: &[u8], l: &ObjectLayout) -> Option<StrShape> {
    let state = le_u32(header, l.unicode_state)?;
    let length = le_u64(header, l.unicode_length)?;
    let kind = u64::from((state >> 2) & 7);
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) || length > MAX_STR_LENGTH {
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

/// The shape of the `str` at `addr` (one read of its header).
fn read_str_shape(mem: &impl Memory, addr: u64, l: &ObjectLayout) -> Option<StrShape> {
    let header = mem.bytes_at(addr, str_header_len(l))?;
    parse_str_header(&header, l)
}

/// The first `max_chars` characters of a `str` of known shape (one read).
fn read_str_data(mem: &impl Memory, addr: u64, shape: &StrShape, max_chars: u64) -> Option<String> {
    let chars = shape.length.min(max_chars);
    let data = mem.bytes_at(addr.checked_add(shape.data_at)?, chars * shape.unit)?;
    decode_units(&data, shape.unit, shape.ascii)
}

/// Reads the compact `str` at `addr`, cut to `max_chars` characters: the
/// target says how long it is, the caller how much it will read.
pub fn read_str(mem: &impl Memory, addr: u64, l: &ObjectLayout, max_chars: u64) -> Option<String> {
    let shape = read_str_shape(mem, addr, l)?;
    read_str_data(mem, addr, &shape, max_chars)
}

/// Reads the compact `str` at `addr`, cut to what fits in `max_bytes` of
/// code units (1, 2 or 4 bytes a character): a bound on bytes read, whatever
/// the string's width.
pub fn read_str_bytes(
    mem: &impl Memory,
    addr: u64,
    l: &ObjectLayout,
    max_bytes: u64,
) -> Option<String> {
    let shape = read_str_shape(mem, addr, l)?;
    read_str_data(mem, addr, &shape, max_bytes / shape.unit)
}

/// Whether the `str` at `addr` is exactly `want` (lengths compared before any
/// data is read, so no more than `want` is ever read).
pub fn str_equals(mem: &impl Memory, addr: u64, l: &ObjectLayout, want: &str) -> bool {
    let Some(shape) = read_str_shape(mem, addr, l) else {
        return false;
    };
    shape.length == want.chars().count() as u64
        && read_str_data(mem, addr, &shape, shape.length).as_deref() == Some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, str_bytes, Fake};

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
    fn a_string_is_read_up_to_the_callers_cap_and_compared_whole() {
        let l = layout(12, false);
        let mut mem = Fake::default();
        let at = mem.str(&l, "pool_0");
        assert_eq!(read_str(&mem, at, &l, 4).as_deref(), Some("pool"));
        assert_eq!(read_str(&mem, at, &l, 100).as_deref(), Some("pool_0"));
        let wide = mem.str(&l, "поток");
        assert_eq!(read_str_bytes(&mem, wide, &l, 6).as_deref(), Some("пот"));
        assert_eq!(read_str_bytes(&mem, at, &l, 3).as_deref(), Some("poo"));
        assert!(str_equals(&mem, at, &l, "pool_0"));
        assert!(!str_equals(&mem, at, &l, "pool"));
        assert!(!str_equals(&mem, 0x10, &l, "pool_0"), "unreadable");
        // 3.13+ offsets come from the target: absurd ones read nothing.
        let absurd = ObjectLayout {
            unicode_length: u64::MAX - 4,
            ..l
        };
        assert_eq!(read_str(&mem, at, &absurd, 100), None);
    }
}
