//! The line a code object is at, from its line table and a byte offset into
//! its instructions — the three encodings CPython used, decoded as
//! `PyCode_Addr2Line` of each release decodes them:
//! - 3.8, 3.9 `co_lnotab`: (byte increment, signed line increment) pairs; the
//!   line is the sum of the increments of every pair whose address is ≤ the offset.
//! - 3.10 `co_linetable`: (byte delta, signed line delta) pairs, each a range
//!   `[end, end + delta)` at the running line, -128 meaning "no line".
//! - 3.11+ location table (`Objects/locations.md`): entries whose first byte
//!   (bit 7 set) holds a kind (bits 3-6) and a length in code units (bits 0-2,
//!   plus one); the kind says how the line moves (15 none, 14 long and 13
//!   no-column forms: a signed varint, 10-12 one-line forms: 0-2, others: 0).
//!
//! The table comes from the target and may be cut (capped) or garbage: every
//! index is checked, and running off a cut table means "no line", never a guess.

use crate::cpython::layout::frames::LineFormat;

/// A line table as read from a code object.
#[derive(Debug, Clone, Copy)]
pub struct LineTable<'a> {
    pub format: LineFormat,
    pub bytes: &'a [u8],
    /// False when the table was longer than what was read.
    pub complete: bool,
    /// `co_firstlineno`.
    pub first_line: i32,
}

impl LineTable<'_> {
    /// The line of the instruction at byte `offset` of the code; an offset
    /// before the first instruction (a frame not started) is at the first line.
    pub fn line_at(&self, offset: i64) -> Option<u32> {
        let first = i64::from(self.first_line);
        let line = if offset < 0 {
            Some(first)
        } else {
            match self.format {
                LineFormat::Lnotab => self.lnotab(offset, first),
                LineFormat::LineTable310 => linetable_310(self.bytes, offset, first),
                LineFormat::Locations => locations(self.bytes, offset, first),
            }
        };
        line.and_then(|l| u32::try_from(l).ok())
    }

    fn lnotab(&self, offset: i64, first: i64) -> Option<i64> {
        let mut line = first;
        let mut addr = 0i64;
        for pair in self.bytes.chunks_exact(2) {
            addr += i64::from(pair[0]);
            if addr > offset {
                return Some(line);
            }
            line += i64::from(pair[1] as i8);
        }
        // Past the last pair the line stands, unless the pairs were cut short.
        self.complete.then_some(line)
    }
}

fn linetable_310(bytes: &[u8], offset: i64, first: i64) -> Option<i64> {
    let mut line = first;
    let mut end = 0i64;
    for pair in bytes.chunks_exact(2) {
        let start = end;
        end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if start <= offset && offset < end {
            return here;
        }
    }
    None
}

/// Longest varint read (6 bits a byte): more is garbage.
const MAX_VARINT_BYTES: usize = 10;

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..MAX_VARINT_BYTES {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 63) << (6 * i);
        if b & 64 == 0 {
            return Some(value);
        }
    }
    None
}

fn svarint(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let v = varint(bytes, at)?;
    let magnitude = i64::try_from(v >> 1).ok()?;
    Some(if v & 1 == 1 { -magnitude } else { magnitude })
}

fn locations(bytes: &[u8], offset: i64, first: i64) -> Option<i64> {
    let mut line = first;
    let mut end = 0i64;
    let mut at = 0usize;
    while let Some(&head) = bytes.get(at) {
        if head & 0x80 == 0 {
            return None; // not an entry's first byte: garbage
        }
        at += 1;
        let kind = (head >> 3) & 15;
        let units = i64::from(head & 7) + 1;
        let delta = match kind {
            13 | 14 => svarint(bytes, &mut at)?,
            10..=12 => i64::from(kind - 10),
            _ => 0,
        };
        line = line.checked_add(delta)?;
        let start = end;
        end += units * 2;
        if start <= offset && offset < end {
            return (kind != 15).then_some(line);
        }
        // The rest of the entry (columns, end line): bytes without bit 7.
        while bytes.get(at).is_some_and(|b| b & 0x80 == 0) {
            at += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(format: LineFormat, bytes: &[u8], first_line: i32) -> LineTable<'_> {
        LineTable {
            format,
            bytes,
            complete: true,
            first_line,
        }
    }

    #[test]
    fn lnotab_sums_the_increments_up_to_the_offset() {
        // def f():        line 10
        //     a = 1       bytes 0-3 at line 11
        //     b = 2       bytes 4-7 at line 12, then a jump back of -1 at 8
        let t = table(LineFormat::Lnotab, &[0, 1, 4, 1, 4, 0xff], 10);
        assert_eq!(t.line_at(0), Some(11));
        assert_eq!(t.line_at(3), Some(11));
        assert_eq!(t.line_at(4), Some(12));
        assert_eq!(t.line_at(8), Some(11), "signed increments (3.8+)");
        assert_eq!(t.line_at(100), Some(11));
        assert_eq!(t.line_at(-1), Some(10), "not started: the first line");
        let cut = LineTable {
            complete: false,
            ..t
        };
        assert_eq!(cut.line_at(100), None, "a cut table does not guess");
        assert_eq!(cut.line_at(4), Some(12));
    }

    #[test]
    fn the_310_linetable_gives_each_range_its_line_or_none() {
        // [0,6) line 5+1, [6,8) no line, [8,12) line 6+2 (the -128 did not move it)
        let t = table(LineFormat::LineTable310, &[6, 1, 2, 0x80, 4, 2], 5);
        assert_eq!(t.line_at(0), Some(6));
        assert_eq!(t.line_at(5), Some(6));
        assert_eq!(t.line_at(6), None);
        assert_eq!(t.line_at(8), Some(8));
        assert_eq!(t.line_at(12), None, "past the table");
    }

    #[test]
    fn location_entries_of_every_kind_move_the_line() {
        let bytes = [
            0x80 | (13 << 3),     // no-column form, 1 unit ([0,2))
            0x02,                 //   svarint +1 -> line 21
            0x80 | (5 << 3) | 1,  // short form, 2 units ([2,6)), same line
            0x11,                 //   column byte
            0x80 | (12 << 3),     // one-line form +2, 1 unit ([6,8)) -> 23
            0x04,                 //   col
            0x08,                 //   end col
            0x80 | (15 << 3) | 2, // no location, 3 units ([8,14))
            0x80 | (14 << 3),     // long form, 1 unit ([14,16))
            0x40 | 16,            //   svarint, first chunk 16, more follows
            0x01,                 //   second chunk: v = 16 | 1 << 6 = 80 -> +40 = 63
            0x00,                 //   end line delta
            0x01,                 //   col + 1
            0x03,                 //   end col + 1
            0x80 | (13 << 3),     // no-column form, 1 unit ([16,18))
            0x07,                 //   svarint 7 -> -3 = 60
            0x80 | (10 << 3),     // one-line form +0, 1 unit ([18,20))
            0x00,
            0x00,
        ];
        let t = table(LineFormat::Locations, &bytes, 20);
        assert_eq!(t.line_at(0), Some(21));
        assert_eq!(t.line_at(2), Some(21));
        assert_eq!(t.line_at(5), Some(21));
        assert_eq!(t.line_at(6), Some(23));
        assert_eq!(t.line_at(8), None, "no location");
        assert_eq!(t.line_at(13), None);
        assert_eq!(t.line_at(14), Some(63), "long form, two-byte varint");
        assert_eq!(t.line_at(16), Some(60), "negative delta");
        assert_eq!(t.line_at(19), Some(60));
        assert_eq!(t.line_at(20), None, "past the table");
    }

    #[test]
    fn garbage_tables_end_without_a_line_or_a_panic() {
        let t = table(LineFormat::Locations, &[0x05, 0x80], 1);
        assert_eq!(t.line_at(0), None, "no entry head");
        let runaway = [
            0x80 | (14 << 3),
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
        ];
        assert_eq!(table(LineFormat::Locations, &runaway, 1).line_at(0), None);
        assert_eq!(table(LineFormat::LineTable310, &[1], 1).line_at(0), None);
        assert_eq!(table(LineFormat::Lnotab, &[], 7).line_at(0), Some(7));
    }

    /// Tables CPython itself wrote for one function (a loop, an if/else, 150
    /// blank lines, a two-line list), with the line of every instruction as
    /// that interpreter's `dis.findlinestarts` (3.8) or `co_lines()` says:
    /// (release, table, runs of `[start, end)` byte offsets at a line).
    type Fixture = (
        &'static str,
        LineFormat,
        &'static str,
        &'static [(i64, i64, u32)],
    );
    const REAL_TABLES: &[Fixture] = &[
        (
            "3.8",
            LineFormat::Lnotab,
            "000104010c0108010a020a7f0019020102ff0402",
            &[(0, 4, 3), (4, 16, 4), (16, 24, 5), (24, 34, 6), (34, 44, 8), (44, 46, 160), (46, 48, 161), (48, 52, 160), (52, 56, 162)],
        ),
        (
            "3.10",
            LineFormat::LineTable310,
            "04010c0108010a010a02007f0219020104ff0402",
            &[(0, 4, 3), (4, 16, 4), (16, 24, 5), (24, 34, 6), (34, 44, 8), (44, 46, 160), (46, 48, 161), (48, 52, 160), (52, 56, 162)],
        ),
        (
            "3.11",
            LineFormat::Locations,
            "8000d80c0d8045dd0d12903189588c58f000040517f0000405178801d80b0c88718935f000030917d80c119051894a88458845e00c119051894a88458845f07004000a0fd8090af00301090c8041e00b0c8048",
            &[(0, 2, 2), (2, 6, 3), (6, 40, 4), (40, 50, 5), (50, 62, 6), (62, 74, 8), (74, 76, 160), (76, 78, 161), (78, 82, 160), (82, 86, 162)],
        ),
        (
            "3.12",
            LineFormat::Locations,
            "8000d80c0d8045dc0d1290318b58f2000405178801d80b0c88718a35d80c119051894a8945e00c119051894a8945f009040517f07804000a0fd8090af00301090c8041e00b0c8048",
            &[(0, 2, 2), (2, 6, 3), (6, 34, 4), (34, 44, 5), (44, 56, 6), (56, 68, 8), (68, 70, 4), (70, 72, 160), (72, 74, 161), (74, 78, 160), (78, 82, 162)],
        ),
        (
            "3.14",
            LineFormat::Locations,
            "8000d80c0d8045dc0d1290318e588801d80b0c88718f358c35d80c118d4a8a45e00c1190518d4a8a45f109000e16f07804000a0fd8090af00301090c8041e00b0c8048",
            &[(0, 2, 2), (2, 6, 3), (6, 34, 4), (34, 64, 5), (64, 84, 6), (84, 106, 8), (106, 110, 4), (110, 112, 160), (112, 114, 161), (114, 118, 160), (118, 122, 162)],
        ),
    ];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn tables_written_by_real_interpreters_give_their_own_lines() {
        for (release, format, hex, runs) in REAL_TABLES {
            let bytes = unhex(hex);
            let t = table(*format, &bytes, 2);
            for (start, end, line) in *runs {
                for offset in (*start..*end).step_by(2) {
                    assert_eq!(t.line_at(offset), Some(*line), "{release} at byte {offset}");
                }
            }
        }
    }
}
