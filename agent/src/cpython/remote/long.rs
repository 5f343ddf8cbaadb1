//! Reads an `int` (`PyLongObject`) of the target, as far as it fits in 64 bits:
//! a thread ident (`pthread_t`) is one. Digits are 30 bits; the digit count and
//! sign are the `ob_size` word (3.8-3.11) or packed in `lv_tag` (3.12+).

use crate::cpython::remote::memory::{le_u32, le_u64, Memory};
use crate::cpython::remote::objects::ObjectLayout;

/// Digits read at most: three 30-bit digits hold any u64 (a longer `int` is
/// refused before any digit is read).
const MAX_DIGITS: u64 = 3;

/// Bytes of an `int` object read: its header and [`MAX_DIGITS`] digits.
fn long_len(l: &ObjectLayout) -> u64 {
    l.long_digits.saturating_add(4 * MAX_DIGITS)
}

/// Parses a non-negative `int` that fits in 64 bits; `None` for a negative,
/// longer or truncated one.
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
    if ndigits > MAX_DIGITS {
        return None;
    }
    let mut value: u128 = 0;
    for i in (0..ndigits).rev() {
        let digit = le_u32(bytes, l.long_digits + 4 * i)?;
        value = (value << 30) | u128::from(digit & 0x3fff_ffff);
    }
    u64::try_from(value).ok()
}

/// Reads the `int` at `addr` (one read of a fixed size).
pub fn read_long(mem: &impl Memory, addr: u64, l: &ObjectLayout) -> Option<u64> {
    let bytes = mem.bytes_at(addr, long_len(l))?;
    parse_long(&bytes, l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, put, Fake};

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
    fn absurd_offsets_from_a_target_read_nothing_and_do_not_panic() {
        let l = layout(13, false);
        let mut mem = Fake::default();
        let at = mem.long(&l, 5);
        for long_digits in [u64::MAX - 2, 1 << 40] {
            let absurd = ObjectLayout { long_digits, ..l };
            assert_eq!(read_long(&mem, at, &absurd), None);
        }
    }
}
