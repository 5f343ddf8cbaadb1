//! Walks a thread's Python frames in the target without stopping it: from a
//! thread state (or any frame) through each frame's caller, keeping of each
//! frame its code object and position ([`RawFrame`]) — naming them is the
//! symbolizer's job ([`super::symbols`]).
//!
//! The target keeps running, so the chain may be torn: a walk is bounded
//! ([`MAX_DEPTH`] Python frames, [`MAX_STEPS`] frames in all), a frame seen
//! twice ends it as a loop, an unreadable frame or an impossible field as
//! garbage, and a thread whose innermost frame is not the same after the walk
//! as before it as changed. Each is an answer ([`BrokenStack`]), never a panic.

use crate::core::stacks::{BrokenStack, RawFrame};
use crate::cpython::layout::frames::{FrameWalk, InstrKind, OWNER_MAX, OWNER_NOT_PYTHON};
use crate::cpython::remote::memory::{le_u32, le_u64, Memory, MIN_POINTER};

/// Python frames kept at most; a deeper chain keeps its innermost ones.
pub const MAX_DEPTH: usize = 128;
/// Frames visited at most, C-stack entry frames included (one per Python
/// frame at worst, as every Python-to-Python call through C adds one).
pub const MAX_STEPS: usize = 2 * MAX_DEPTH + 2;

/// The frames of one walk, innermost first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawStack {
    pub frames: Vec<RawFrame>,
    /// The chain went on past [`MAX_DEPTH`] (or [`MAX_STEPS`]).
    pub truncated: bool,
}

/// A pointer read from the target: 0 means "none", a small value is garbage.
fn pointer_or_null(v: u64) -> Result<Option<u64>, BrokenStack> {
    match v {
        0 => Ok(None),
        p if p < MIN_POINTER => Err(BrokenStack::Garbage),
        p => Ok(Some(p)),
    }
}

/// The innermost frame of the thread state at `tstate`; `None` when the thread
/// runs no Python code now (a thread state being set up, or idle in C).
pub fn innermost_frame(
    mem: &impl Memory,
    tstate: u64,
    walk: &FrameWalk,
) -> Result<Option<u64>, BrokenStack> {
    let read = |at: Option<u64>| {
        at.and_then(|a| mem.u64_at(a))
            .ok_or(BrokenStack::Garbage)
            .and_then(pointer_or_null)
    };
    let first = read(tstate.checked_add(walk.tstate_to_frame.first))?;
    match (first, walk.tstate_to_frame.second) {
        (Some(cframe), Some(second)) => read(cframe.checked_add(second)),
        (first, _) => Ok(first),
    }
}

/// What one frame holds, read in one go.
struct FrameRead {
    previous: Option<u64>,
    /// `None`: a frame the walk skips (C-stack entry or interpreter-owned).
    raw: Option<RawFrame>,
}

fn read_frame(
    mem: &impl Memory,
    at: u64,
    walk: &FrameWalk,
    buf: &mut [u8],
) -> Result<FrameRead, BrokenStack> {
    if !mem.read_bytes(at, buf) {
        return Err(BrokenStack::Garbage);
    }
    let word = |off: u64| le_u64(buf, off).ok_or(BrokenStack::Garbage);
    let previous = pointer_or_null(word(walk.frame_previous)?)?;
    if let Some(off) = walk.frame_owner {
        let owner = *usize::try_from(off)
            .ok()
            .and_then(|o| buf.get(o))
            .ok_or(BrokenStack::Garbage)?;
        if owner > OWNER_MAX {
            return Err(BrokenStack::Garbage);
        }
        if owner >= OWNER_NOT_PYTHON {
            return Ok(FrameRead {
                previous,
                raw: None,
            });
        }
    }
    let code = word(walk.frame_code)? & !walk.code_tag_mask;
    if code < MIN_POINTER {
        return Err(BrokenStack::Garbage);
    }
    let instr = match walk.instr {
        InstrKind::Pointer => word(walk.frame_instr)?,
        InstrKind::LastiBytes | InstrKind::LastiUnits => {
            u64::from(le_u32(buf, walk.frame_instr).ok_or(BrokenStack::Garbage)?)
        }
    };
    Ok(FrameRead {
        previous,
        raw: Some(RawFrame { code, instr }),
    })
}

/// Walks from the frame at `frame` to the outermost one.
pub fn walk_from_frame(
    mem: &impl Memory,
    frame: u64,
    walk: &FrameWalk,
) -> Result<RawStack, BrokenStack> {
    let len = usize::try_from(walk.frame_len()).map_err(|_| BrokenStack::Garbage)?;
    let mut buf = vec![0u8; len];
    let mut stack = RawStack::default();
    let mut seen: Vec<u64> = Vec::with_capacity(16);
    let mut at = pointer_or_null(frame)?;
    while let Some(addr) = at {
        if seen.contains(&addr) {
            return Err(BrokenStack::Loop);
        }
        if stack.frames.len() >= MAX_DEPTH || seen.len() >= MAX_STEPS {
            stack.truncated = true;
            break;
        }
        seen.push(addr);
        let read = read_frame(mem, addr, walk, &mut buf)?;
        stack.frames.extend(read.raw);
        at = read.previous;
    }
    Ok(stack)
}

/// The words of the innermost frame a change of the stack would alter: its
/// caller and its code (the position moves while it runs, and may).
fn frame_identity(mem: &impl Memory, frame: u64, walk: &FrameWalk) -> Option<(u64, u64)> {
    let previous = mem.u64_at(frame.checked_add(walk.frame_previous)?)?;
    let code = mem.u64_at(frame.checked_add(walk.frame_code)?)?;
    Some((previous, code))
}

/// Walks the frames of the thread state at `tstate`, then checks that the
/// thread is still in the same innermost frame, with the same caller and code.
pub fn walk_thread(
    mem: &impl Memory,
    tstate: u64,
    walk: &FrameWalk,
) -> Result<RawStack, BrokenStack> {
    let Some(top) = innermost_frame(mem, tstate, walk)? else {
        return Ok(RawStack::default());
    };
    let before = frame_identity(mem, top, walk).ok_or(BrokenStack::Garbage)?;
    let stack = walk_from_frame(mem, top, walk)?;
    let still = innermost_frame(mem, tstate, walk)? == Some(top)
        && frame_identity(mem, top, walk) == Some(before);
    if still {
        Ok(stack)
    } else {
        Err(BrokenStack::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{stack_layout, Fake};

    #[test]
    fn a_chain_of_nothing_but_entry_frames_ends_at_the_step_bound() {
        let l = stack_layout(12, false);
        let mut mem = Fake::default();
        let mut previous = 0;
        for _ in 0..1000 {
            previous = mem.frame(&l.walk, &l.code, previous, 0x2_0000, 0, OWNER_NOT_PYTHON);
        }
        let walked = walk_from_frame(&mem, previous, &l.walk).expect("no error");
        assert!(walked.frames.is_empty());
        assert!(walked.truncated, "cut at {MAX_STEPS} frames");
    }

    #[test]
    fn a_null_frame_is_an_empty_stack_and_a_zero_page_one_garbage() {
        let l = stack_layout(8, false);
        let mem = Fake::default();
        assert_eq!(walk_from_frame(&mem, 0, &l.walk), Ok(RawStack::default()));
        assert_eq!(
            walk_from_frame(&mem, 0x18, &l.walk),
            Err(BrokenStack::Garbage)
        );
        assert_eq!(
            walk_thread(&mem, 0x10_0000, &l.walk),
            Err(BrokenStack::Garbage)
        );
    }

    #[test]
    fn a_frame_that_is_its_own_caller_is_a_loop() {
        let l = stack_layout(11, false);
        let mut mem = Fake::default();
        let f = mem.frame(&l.walk, &l.code, 0, 0x3_0000, 1, 0);
        mem.poke(f + l.walk.frame_previous, f);
        assert_eq!(walk_from_frame(&mem, f, &l.walk), Err(BrokenStack::Loop));
    }
}
