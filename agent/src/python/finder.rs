//! Finds `take_gil` and `drop_gil` for `--precise`, in stripped files too.
//!
//! They are static functions: in `.symtab` when it survived, otherwise `take_gil`
//! is the first call in the exported `PyEval_RestoreThread` (3.9-3.12) that goes
//! to a local function (not a PLT stub, not another exported function).
//! `drop_gil` is inlined in LTO builds and is then not probed at all.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};
use object::{Object, ObjectSection, ObjectSymbol};

use super::elf::{bytes_at, file_offset_of, InterpreterFile};

/// Where `take_gil` was found, and how.
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

/// Direct call targets of the code at `address..address+len`, in order.
pub fn call_targets(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut targets = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            break;
        }
        if instruction.flow_control() == FlowControl::Call && instruction.is_call_near() {
            targets.push(instruction.near_branch_target());
        }
    }
    targets
}

/// True when `address` is inside a PLT section (a call into another object).
fn in_plt(file: &object::File<'_>, address: u64) -> bool {
    file.sections().any(|s| {
        s.name().is_ok_and(|n| n.starts_with(".plt"))
            && address >= s.address()
            && address < s.address() + s.size()
    })
}

fn is_exported_function(file: &object::File<'_>, address: u64) -> bool {
    file.dynamic_symbols().any(|s| s.address() == address)
}

/// Finds `take_gil`: from the symbol table, else by disassembling `PyEval_RestoreThread`.
pub fn find_take_gil(file: &object::File<'_>, info: &InterpreterFile) -> Option<FoundFunction> {
    if let Some(f) = info.take_gil {
        return Some(FoundFunction {
            address: f.address,
            file_offset: file_offset_of(file, f.address)?,
            how: FoundBy::SymbolTable,
        });
    }
    let restore = info.restore_thread?;
    let len = if restore.size > 0 { restore.size } else { 128 };
    let code = bytes_at(file, restore.address, len)?;
    let address = call_targets(code, restore.address)
        .into_iter()
        .find(|&t| !in_plt(file, t) && !is_exported_function(file, t))?;
    Some(FoundFunction {
        address,
        file_offset: file_offset_of(file, address)?,
        how: FoundBy::Disassembly,
    })
}

/// `drop_gil` only from the symbol table: where it is stripped it is usually inlined too.
pub fn find_drop_gil(file: &object::File<'_>, info: &InterpreterFile) -> Option<FoundFunction> {
    let f = info.drop_gil?;
    Some(FoundFunction {
        address: f.address,
        file_offset: file_offset_of(file, f.address)?,
        how: FoundBy::SymbolTable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_targets_decodes_relative_calls() {
        // push rbx; call +0x10; pop rbx; ret
        let code = [0x53, 0xe8, 0x10, 0x00, 0x00, 0x00, 0x5b, 0xc3];
        assert_eq!(call_targets(&code, 0x1000), vec![0x1000 + 6 + 0x10]);
    }

    #[test]
    fn garbage_code_yields_no_targets_and_no_panic() {
        let code = [0xff; 16];
        let _ = call_targets(&code, 0);
    }
}
