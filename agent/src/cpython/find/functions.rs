//! Finds `take_gil` and `drop_gil` for `--precise`, and every copy of
//! `_PyParkingLot_Park` for the lock probe, in stripped files too.
//!
//! They are static functions. With a `.symtab`, every copy is found by name
//! (compilers clone them: 3.8 has `take_gil` and `take_gil.constprop.0`).
//! Stripped, every copy of `take_gil` is found as a function that calls
//! `pthread_cond_timedwait` through the PLT: in CPython only `take_gil` does (its
//! timed wait on `gil->cond`). Walking calls from `PyEval_RestoreThread` is not
//! enough: it reaches one clone, while the eval loop may call another. `drop_gil` is inlined in
//! LTO builds and is only probed when it has a symbol.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationTarget};

use crate::cpython::find::elf::{bytes_at, file_offset_of, Elf};

/// Where a probed function was found, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundFunction {
    /// Link-time virtual address.
    pub address: u64,
    /// File offset, what a uprobe attaches to.
    pub file_offset: u64,
    pub how: FoundBy,
}

/// The evidence a function address rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    SymbolTable,
    Disassembly,
}

/// Longest function body decoded when the size is unknown.
const MAX_BODY: u64 = 8192;

/// What one function body calls and jumps to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Branches {
    pub calls: Vec<u64>,
    pub jumps: Vec<u64>,
}

fn is_padding(i: &Instruction) -> bool {
    matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Int3)
}

/// Direct call and jump targets of the function at `address`. Without a known
/// size the body ends at the first return or jump followed by alignment padding.
pub fn branches(code: &[u8], address: u64, known_size: bool) -> Branches {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut out = Branches::default();
    let mut i = Instruction::default();
    let mut after_exit = false;
    while decoder.can_decode() {
        decoder.decode_out(&mut i);
        if i.is_invalid() || (!known_size && after_exit && is_padding(&i)) {
            break;
        }
        after_exit = matches!(
            i.flow_control(),
            FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
        );
        match i.flow_control() {
            FlowControl::Call if i.is_call_near() => out.calls.push(i.near_branch_target()),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
                if i.is_jmp_near() || i.is_jcc_near() || i.is_jmp_short() || i.is_jcc_short() =>
            {
                let target = i.near_branch_target();
                // Jumps inside the body are control flow, not tail calls.
                // Saturating: a body at the top of the address space must not overflow.
                if target < address || target >= address.saturating_add(code.len() as u64) {
                    out.jumps.push(target);
                }
            }
            _ => {}
        }
    }
    out
}

/// Address of the PLT stub that jumps to `symbol` (e.g. `pthread_cond_timedwait`).
pub fn plt_stub(file: &Elf<'_>, symbol: &str) -> Option<u64> {
    let dynsyms = file.dynamic_symbol_table()?;
    let got_slot = file.dynamic_relocations()?.find_map(|(offset, reloc)| {
        let RelocationTarget::Symbol(index) = reloc.target() else {
            return None;
        };
        let name = dynsyms.symbol_by_index(index).ok()?.name().ok()?;
        (name == symbol || name.split('@').next() == Some(symbol)).then_some(offset)
    })?;
    file.sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".plt")))
        .find_map(|section| {
            let data = section.data().ok()?;
            let mut decoder = Decoder::with_ip(64, data, section.address(), DecoderOptions::NONE);
            let mut i = Instruction::default();
            while decoder.can_decode() {
                decoder.decode_out(&mut i);
                if i.mnemonic() == Mnemonic::Jmp
                    && i.is_ip_rel_memory_operand()
                    && i.ip_rel_memory_address() == got_slot
                {
                    // PLT entries are 16 bytes; calls target the entry start (endbr64 first under IBT).
                    return Some(i.ip() & !0xf);
                }
            }
            None
        })
}

fn symbol_size_at(file: &Elf<'_>, address: u64) -> Option<u64> {
    file.symbols()
        .chain(file.dynamic_symbols())
        .find(|s| s.address() == address && s.size() > 0)
        .map(|s| s.size())
}

fn branches_of(file: &Elf<'_>, address: u64) -> Option<Branches> {
    let size = symbol_size_at(file, address);
    let code = bytes_at(file, address, size.unwrap_or(MAX_BODY))?;
    Some(branches(code, address, size.is_some()))
}

/// Every copy of a static function named `name` (or a compiler clone `name.*`).
/// `name.*.cold` symbols are left out: they are the unlikely branches GCC moves
/// out of a function (entered by a jump, never called), not copies of it.
fn symbols_named(file: &Elf<'_>, name: &str) -> Vec<u64> {
    let mut found: Vec<u64> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter(|s| {
            s.name().is_ok_and(|n| {
                n == name
                    || n.strip_prefix(name).is_some_and(|rest| {
                        rest.starts_with('.') && !rest.split('.').any(|part| part == "cold")
                    })
            })
        })
        .map(|s| s.address())
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

fn found(file: &Elf<'_>, address: u64, how: FoundBy) -> Option<FoundFunction> {
    Some(FoundFunction {
        address,
        file_offset: file_offset_of(file, address)?,
        how,
    })
}

/// Every copy of `take_gil` by disassembly: the functions whose body calls
/// `pthread_cond_timedwait` through the PLT (compilers clone take_gil, so there
/// can be several). Function starts are the targets of direct calls; a call
/// site is attributed to the nearest start before it, and only if decoding that
/// function's body from its start reaches the site.
pub fn take_gil_by_disassembly(file: &Elf<'_>) -> Vec<FoundFunction> {
    let Some(timedwait) = plt_stub(file, "pthread_cond_timedwait") else {
        return Vec::new();
    };
    let mut entries: Vec<u64> = Vec::new();
    let mut sites: Vec<u64> = Vec::new();
    for section in file.sections().filter(|s| s.name() == Ok(".text")) {
        let Ok(data) = section.data() else { continue };
        let mut decoder = Decoder::with_ip(64, data, section.address(), DecoderOptions::NONE);
        let mut i = Instruction::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut i);
            if i.flow_control() == FlowControl::Call && i.is_call_near() {
                let target = i.near_branch_target();
                if target == timedwait {
                    sites.push(i.ip());
                } else {
                    entries.push(target);
                }
            }
        }
    }
    entries.sort_unstable();
    entries.dedup();
    let mut found_at: Vec<u64> = sites
        .iter()
        .filter_map(|&site| {
            let entry = *entries.get(entries.partition_point(|&e| e <= site).checked_sub(1)?)?;
            (site - entry < MAX_BODY).then_some(entry)
        })
        .filter(|&entry| branches_of(file, entry).is_some_and(|b| b.calls.contains(&timedwait)))
        .collect();
    found_at.sort_unstable();
    found_at.dedup();
    found_at
        .into_iter()
        .filter_map(|a| found(file, a, FoundBy::Disassembly))
        .collect()
}

/// Every copy of `take_gil`: from the symbol table, else the one disassembly finds.
pub fn find_take_gil(file: &Elf<'_>) -> Vec<FoundFunction> {
    let by_symbol: Vec<FoundFunction> = symbols_named(file, "take_gil")
        .into_iter()
        .filter_map(|a| found(file, a, FoundBy::SymbolTable))
        .collect();
    if !by_symbol.is_empty() {
        return by_symbol;
    }
    take_gil_by_disassembly(file)
}

/// Every copy of `drop_gil` that has a symbol; stripped, it is usually inlined too.
pub fn find_drop_gil(file: &Elf<'_>) -> Vec<FoundFunction> {
    symbols_named(file, "drop_gil")
        .into_iter()
        .filter_map(|a| found(file, a, FoundBy::SymbolTable))
        .collect()
}

/// Address of an exported (`.dynsym`) function.
fn exported(file: &Elf<'_>, name: &str) -> Option<u64> {
    file.dynamic_symbols()
        .find(|s| s.kind() == object::SymbolKind::Text && s.address() != 0 && s.name() == Ok(name))
        .map(|s| s.address())
}

/// Every copy of `_PyParkingLot_Park` (3.13+), where a thread sleeps on a PyMutex.
///
/// The export alone is not enough: LTO builds clone it. In Debian's 3.14
/// every PyMutex path (`_PyMutex_LockTimed`, `PyEvent_WaitTimed`, the
/// `threading.Lock` code) calls `_PyParkingLot_Park.constprop.0`, and the
/// exported copy is reached only from the rwmutex, so a probe on the export
/// sees almost nothing. With a `.symtab` the clones are found by name;
/// stripped, as the direct callees of the exported `_PyMutex_LockTimed` and
/// `PyEvent_WaitTimed` that call `_PySemaphore_Wait` themselves (the park's
/// sleep; the raw-mutex slow path calls it too, but neither export calls that).
/// Clones keep the lock address in the first argument (only constants are
/// dropped: `size` in Debian's 3.14), which is what the lock probe reads.
pub fn find_park(file: &Elf<'_>) -> Vec<FoundFunction> {
    const PARK: &str = "_PyParkingLot_Park";
    // A static executable (musl's, say) has no .dynsym: the global is in .symtab only.
    let global = || {
        file.symbols()
            .find(|s| {
                s.kind() == object::SymbolKind::Text && s.address() != 0 && s.name() == Ok(PARK)
            })
            .map(|s| s.address())
    };
    let Some(export) = exported(file, PARK).or_else(global) else {
        return Vec::new();
    };
    let mut copies = symbols_named(file, PARK);
    let mut how = FoundBy::SymbolTable;
    if file.section_by_name(".symtab").is_none() {
        let sleeps: Vec<u64> = [
            exported(file, "_PySemaphore_Wait"),
            plt_stub(file, "_PySemaphore_Wait"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let calls_sleep = |address: u64| {
            branches_of(file, address).is_some_and(|b| b.calls.iter().any(|c| sleeps.contains(c)))
        };
        let mut clones: Vec<u64> = ["_PyMutex_LockTimed", "PyEvent_WaitTimed"]
            .into_iter()
            .filter_map(|caller| exported(file, caller))
            .filter_map(|caller| branches_of(file, caller))
            .flat_map(|b| b.calls.into_iter().chain(b.jumps))
            .filter(|&target| target != export && calls_sleep(target))
            .collect();
        clones.sort_unstable();
        clones.dedup();
        copies = clones;
        how = FoundBy::Disassembly;
    }
    let mut out: Vec<FoundFunction> = found(file, export, FoundBy::SymbolTable)
        .into_iter()
        .collect();
    out.extend(
        copies
            .into_iter()
            .filter(|&a| a != export)
            .filter_map(|a| found(file, a, how)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_tail_jumps_are_collected() {
        // push rbx; call +0x10; pop rbx; jmp +0x20; nop
        let code = [0x53, 0xe8, 0x10, 0, 0, 0, 0x5b, 0xe9, 0x20, 0, 0, 0, 0x90];
        let b = branches(&code, 0x1000, false);
        assert_eq!(b.calls, vec![0x1000 + 6 + 0x10]);
        assert_eq!(b.jumps, vec![0x1000 + 12 + 0x20]);
    }

    #[test]
    fn decoding_stops_at_padding_after_a_return() {
        // ret; nop; call +0 (belongs to the next function)
        let code = [0xc3, 0x90, 0xe8, 0, 0, 0, 0];
        assert!(branches(&code, 0x2000, false).calls.is_empty());
        assert_eq!(branches(&code, 0x2000, true).calls.len(), 1);
    }

    /// Found by fuzzing (fuzz/, target `disasm_finder`): a jump in a body that
    /// ends past `u64::MAX` overflowed the "inside the body" bound check.
    #[test]
    fn a_body_at_the_top_of_the_address_space_does_not_overflow() {
        // jmp +0 (short) then nops: 16 bytes at u64::MAX - 15, the jump stays inside.
        let mut code = vec![0xeb, 0x00];
        code.resize(16, 0x90);
        let b = branches(&code, u64::MAX - 15, true);
        assert_eq!(
            b,
            Branches::default(),
            "a jump inside the body is no tail call"
        );
    }

    #[test]
    fn garbage_code_yields_nothing_and_no_panic() {
        let _ = branches(&[0xff; 64], 0, false);
        let _ = branches(&[], 0, false);
    }
}
