//! The Python stacks of a running process, read from outside: which function,
//! file and line each thread is in, for sampling holders of the GIL and loop
//! threads from user space, and the names of frames the kernel captured.
//!
//! [`stack_layout`] says how to walk frames in one process (the table's
//! figures for 3.8-3.12, the process's checked debug offsets for 3.13+); its
//! `walk` is the [`FrameWalk`] the kernel's capture uses too. [`StackReader`]
//! walks every thread's frames ([`remote::frames`]), names them through a
//! cache of code objects ([`remote::symbols`]), and maps the tids CPython
//! records to the host's (pid namespaces, as thread names do). Nothing here
//! stops the target; a stack that cannot be read is counted, not returned.

use std::collections::HashMap;

use crate::core::stacks::{BrokenStack, Frame, RawFrame, Stack, StackCounts};
use crate::cpython::find::locate::{self, Interpreter};
use crate::cpython::layout::debug_offsets::DebugOffsets;
use crate::cpython::layout::frames::{FrameWalk, StackLayout};
use crate::cpython::layout::versions::StackSource;
use crate::cpython::remote::code::CodeReader;
use crate::cpython::remote::frames::{self as remote_frames, RawStack};
use crate::cpython::remote::memory::{Memory, RemoteMemory};
use crate::cpython::remote::objects::ObjectLayout;
use crate::cpython::remote::runtime;
use crate::cpython::remote::symbols::Symbolizer;
use crate::error::{Error, Result};
use crate::os::pidns::TidMap;

/// How frames and code objects are laid out in the process of `interp`.
pub fn stack_layout(interp: &Interpreter, mem: &RemoteMemory) -> Result<StackLayout> {
    layout_with(interp, interp.debug_offsets(mem)?.as_ref())
}

/// [`stack_layout`] from debug offsets already read (`None` before 3.13).
fn layout_with(interp: &Interpreter, debug: Option<&DebugOffsets>) -> Result<StackLayout> {
    match (interp.layout.stack, debug) {
        (StackSource::Table(layout), _) => Ok(layout),
        (StackSource::DebugOffsets, Some(debug)) => debug.stack_layout().map_err(|why| {
            Error::Internal(format!(
                "process {}: its _PyRuntime.debug_offsets describe frames gilscope \
                 cannot trust ({why}); its Python stacks are not read",
                interp.pid
            ))
        }),
        (StackSource::DebugOffsets, None) => Err(Error::Internal(format!(
            "CPython {} keeps its frame layout in debug offsets, but none were read",
            interp.file.version
        ))),
    }
}

/// The frame walk of the process of `interp` (what the kernel's capture needs).
pub fn frame_walk(interp: &Interpreter, mem: &RemoteMemory) -> Result<FrameWalk> {
    stack_layout(interp, mem).map(|l| l.walk)
}

/// Reads and names the Python stacks of one process; keeps its cache of code
/// objects between calls, and counts what it could not read.
#[derive(Debug)]
pub struct StackReader<M: Memory = RemoteMemory> {
    mem: M,
    layout: StackLayout,
    objects: ObjectLayout,
    /// Runtime address of `_PyRuntime`.
    runtime: u64,
    /// Offset of the tid in glibc's `struct pthread` (3.8-3.10).
    pthread_tid_off: Option<u64>,
    /// The target's own tids (its PID namespace) to the host's.
    tids: TidMap,
    symbols: Symbolizer,
    counts: StackCounts,
}

impl StackReader<RemoteMemory> {
    /// A reader for the process of `interp`: reads its debug offsets (3.13+)
    /// and, where thread states keep no tid (3.8-3.10), glibc's tid offset.
    pub fn new(interp: &Interpreter, mem: RemoteMemory) -> Result<Self> {
        let debug = interp.debug_offsets(&mem)?;
        let layout = layout_with(interp, debug.as_ref())?;
        let line = interp.file.version.line;
        let objects = ObjectLayout::of_process(line, debug.as_ref())
            .ok_or_else(|| Error::Internal(format!("no object layout for CPython {line}")))?;
        let pthread_tid_off = objects
            .tstate_native_thread_id
            .is_none()
            .then(|| locate::glibc_pthread_tid_offset(interp.pid))
            .flatten();
        let mut reader = Self::with_parts(
            mem,
            layout,
            objects,
            interp.py_runtime(),
            interp.code_type(),
            pthread_tid_off,
        );
        reader.tids = TidMap::of(interp.pid);
        Ok(reader)
    }
}

impl<M: Memory> StackReader<M> {
    /// A reader from parts (tests use made-up memory); tids are not mapped.
    pub fn with_parts(
        mem: M,
        layout: StackLayout,
        objects: ObjectLayout,
        runtime: u64,
        code_type: Option<u64>,
        pthread_tid_off: Option<u64>,
    ) -> Self {
        let reader = CodeReader {
            code: layout.code,
            objects,
            code_type,
        };
        Self {
            mem,
            layout,
            objects,
            runtime,
            pthread_tid_off,
            tids: TidMap::identity(),
            symbols: Symbolizer::new(reader, layout.walk.instr),
            counts: StackCounts::default(),
        }
    }

    /// How this process's frames are walked (what the kernel's capture needs).
    pub fn layout(&self) -> &StackLayout {
        &self.layout
    }

    /// What was read and what was given up on since the reader was made.
    pub fn counts(&self) -> StackCounts {
        StackCounts {
            code_reused: self.symbols.reused(),
            ..self.counts
        }
    }

    /// Host tid → Python stack of every thread of every interpreter now (an
    /// empty stack: the thread runs no Python code). Threads whose stack could
    /// not be read are left out and counted.
    pub fn thread_stacks(&mut self) -> HashMap<u32, Stack> {
        self.symbols.begin_pass();
        let mut stacks = HashMap::new();
        for (tid, tstate) in self.thread_states() {
            if let Ok(stack) = self.thread_stack(tstate) {
                stacks.insert(tid, stack);
            }
        }
        stacks
    }

    /// The stack of one thread (host tid) now; `None` when the process has no
    /// thread state for it (not a Python thread, or exited).
    pub fn stack_of_tid(&mut self, tid: u32) -> Option<std::result::Result<Stack, BrokenStack>> {
        self.symbols.begin_pass();
        let tstate = self
            .thread_states()
            .into_iter()
            .find_map(|(t, tstate)| (t == tid).then_some(tstate))?;
        Some(self.thread_stack(tstate))
    }

    /// (host tid, thread state address) of every thread of every interpreter.
    fn thread_states(&mut self) -> Vec<(u32, u64)> {
        let l = self.objects;
        let mut out = Vec::new();
        for interp in runtime::interpreters(&self.mem, self.runtime, &l) {
            for ts in runtime::thread_states(&self.mem, interp, &l) {
                let own = ts.own_tid(&self.mem, self.pthread_tid_off);
                if let Some(tid) = own.and_then(|t| self.tids.host_tid(t)) {
                    out.push((tid, ts.addr));
                }
            }
        }
        out
    }

    /// The stack of the thread whose `PyThreadState` is at `tstate`.
    pub fn thread_stack(&mut self, tstate: u64) -> std::result::Result<Stack, BrokenStack> {
        let raw = remote_frames::walk_thread(&self.mem, tstate, &self.layout.walk);
        self.named(raw)
    }

    /// The stack from the frame at `frame` (a `PyFrameObject` to 3.10, a
    /// `_PyInterpreterFrame` from 3.11) to the outermost one.
    pub fn stack_at_frame(&mut self, frame: u64) -> std::result::Result<Stack, BrokenStack> {
        let raw = remote_frames::walk_from_frame(&self.mem, frame, &self.layout.walk);
        self.named(raw)
    }

    /// Names a walked chain; any frame whose code cannot be read makes it garbage.
    fn named(
        &mut self,
        raw: std::result::Result<RawStack, BrokenStack>,
    ) -> std::result::Result<Stack, BrokenStack> {
        let named = raw.and_then(|raw| {
            let frames = raw
                .frames
                .iter()
                .rev()
                .map(|f| self.symbols.frame(&self.mem, *f))
                .collect::<Option<Vec<Frame>>>()
                .ok_or(BrokenStack::Garbage)?;
            Ok(Stack {
                frames,
                truncated: raw.truncated,
            })
        });
        match &named {
            Ok(stack) => {
                self.counts.read += 1;
                self.counts.truncated += u64::from(stack.truncated);
            }
            Err(why) => self.counts.broken(*why),
        }
        named
    }

    /// Names frames captured elsewhere (the kernel), given innermost first as
    /// captured; the stack comes back root first. A code object that cannot be
    /// read (freed since) gives a frame named
    /// [`UNKNOWN_FUNCTION`](crate::core::stacks::UNKNOWN_FUNCTION), counted.
    /// Call [`StackReader::begin_pass`] before each batch.
    pub fn symbolize(&mut self, raw: &[RawFrame]) -> Stack {
        let frames = raw
            .iter()
            .rev()
            .map(|f| {
                self.symbols.frame(&self.mem, *f).unwrap_or_else(|| {
                    self.counts.unknown_code += 1;
                    Frame::unknown()
                })
            })
            .collect();
        Stack {
            frames,
            truncated: false,
        }
    }

    /// Starts a batch of [`StackReader::symbolize`] calls: cached code objects
    /// are checked again (once) before use, as their addresses may be reused.
    pub fn begin_pass(&mut self) {
        self.symbols.begin_pass();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stacks::UNKNOWN_FUNCTION;
    use crate::cpython::remote::fake::{
        first_line_of, Fake, FakeProcess, CODE_TYPE, PTHREAD_TID_OFF,
    };

    /// Every build kind the reader supports: (minor, free-threaded).
    const BUILDS: &[(u8, bool)] = &[
        (8, false),
        (9, false),
        (10, false),
        (11, false),
        (12, false),
        (13, false),
        (13, true),
        (14, false),
    ];

    const SPIN: &[(&str, i64)] = &[("main", 3), ("level_one", 5), ("level_two", 0), ("spin", 7)];
    const SLEEP: &[(&str, i64)] = &[("worker", 1), ("Pool.wait", 12)];

    fn reader(p: FakeProcess) -> StackReader<Fake> {
        StackReader::with_parts(
            p.mem,
            p.stack,
            p.objects,
            p.runtime,
            Some(CODE_TYPE),
            Some(PTHREAD_TID_OFF),
        )
    }

    /// The frames a chain must read as: function `i` (in order of first
    /// appearance) starts at `first_line_of(i)`, code unit `u` is 1 + u lines below.
    fn expected(chains: &[&[(&str, i64)]], chain: &[(&str, i64)]) -> Vec<Frame> {
        let mut order: Vec<&str> = Vec::new();
        for c in chains {
            for (f, _) in c.iter() {
                if !order.contains(f) {
                    order.push(f);
                }
            }
        }
        chain
            .iter()
            .map(|(f, unit)| {
                let i = order.iter().position(|o| o == f).expect("known");
                Frame {
                    function: f.to_string(),
                    file: "/srv/app.py".into(),
                    line: u32::try_from(i64::from(first_line_of(i)) + 1 + unit).ok(),
                }
            })
            .collect()
    }

    #[test]
    fn every_build_names_every_threads_frames_root_first() {
        for &(minor, ft) in BUILDS {
            let p = FakeProcess::new(minor, ft, &[(4242, SPIN), (4243, SLEEP)]);
            let mut r = reader(p);
            let stacks = r.thread_stacks();
            let label = format!("3.{minor}{}", if ft { "t" } else { "" });
            assert_eq!(stacks.len(), 2, "{label}: {stacks:?}");
            assert_eq!(
                stacks[&4242].frames,
                expected(&[SPIN, SLEEP], SPIN),
                "{label}"
            );
            assert_eq!(
                stacks[&4243].frames,
                expected(&[SPIN, SLEEP], SLEEP),
                "{label}"
            );
            assert!(!stacks[&4242].truncated);
            let c = r.counts();
            assert_eq!((c.read, c.failed()), (2, 0), "{label}: {c:?}");
            // Read again: the same, from the cache (checked once in the new pass).
            assert_eq!(r.thread_stacks(), stacks, "{label}");
        }
    }

    #[test]
    fn one_threads_stack_is_read_by_its_tid() {
        let p = FakeProcess::new(10, false, &[(4242, SPIN), (4243, SLEEP)]);
        let mut r = reader(p);
        let sleeper = r.stack_of_tid(4243).expect("a thread").expect("readable");
        assert_eq!(sleeper.frames, expected(&[SPIN, SLEEP], SLEEP));
        assert_eq!(r.stack_of_tid(99), None, "no such thread");
        assert_eq!(r.counts().read, 1);
    }

    #[test]
    fn a_thread_without_python_frames_has_an_empty_stack() {
        let p = FakeProcess::new(12, false, &[(7, &[])]);
        let stacks = reader(p).thread_stacks();
        assert_eq!(stacks.get(&7), Some(&Stack::default()));
    }

    #[test]
    fn a_chain_that_loops_ends_the_sample_and_is_counted() {
        for &(minor, ft) in BUILDS {
            let mut p = FakeProcess::new(minor, ft, &[(1, SPIN)]);
            let frames = p.threads[0].1.clone();
            // The root frame's caller is the innermost frame.
            let (root, top) = (frames[0], frames[frames.len() - 1]);
            p.mem.poke(root + p.stack.walk.frame_previous, top);
            let mut r = reader(p);
            assert!(r.thread_stacks().is_empty(), "3.{minor}");
            assert_eq!(r.counts().loops, 1, "3.{minor}: {:?}", r.counts());
        }
    }

    /// A way to spoil a made-up process.
    type Spoil = Box<dyn Fn(&mut FakeProcess)>;

    #[test]
    fn garbage_anywhere_ends_the_sample_and_is_counted() {
        for &(minor, ft) in BUILDS {
            let label = format!("3.{minor}{}", if ft { "t" } else { "" });
            let cases: Vec<(&str, Spoil)> = vec![
                (
                    "caller unmapped",
                    Box::new(|p| {
                        let f = p.threads[0].1[1];
                        p.mem.poke(f + p.stack.walk.frame_previous, 0xdead_0000);
                    }),
                ),
                (
                    "code not a code object",
                    Box::new(|p| {
                        let code = p.codes["level_one"];
                        p.mem.poke(code + p.objects.ob_type, 0x7777_0000);
                    }),
                ),
                (
                    "code pointer in the zero page",
                    Box::new(|p| {
                        let f = p.threads[0].1[2];
                        p.mem.poke(f + p.stack.walk.frame_code, 0x10);
                    }),
                ),
                (
                    "name not a str",
                    Box::new(|p| {
                        let code = p.codes["spin"];
                        let name = p.stack.code.name;
                        p.mem.poke(code + name, p.codes["main"]);
                    }),
                ),
            ];
            for (what, spoil) in cases {
                let mut p = FakeProcess::new(minor, ft, &[(1, SPIN)]);
                spoil(&mut p);
                let mut r = reader(p);
                assert!(r.thread_stacks().is_empty(), "{label}: {what}");
                assert_eq!(r.counts().garbage, 1, "{label}: {what}");
            }
            // Every byte garbage: nothing, and no panic.
            let mut p = FakeProcess::new(minor, ft, &[(1, SPIN), (2, SLEEP)]);
            for (_, bytes) in p.mem.regions.iter_mut() {
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(73) ^ 0x5a;
                }
            }
            let mut r = reader(p);
            assert!(r.thread_stacks().is_empty(), "{label}: all garbage");
        }
    }

    #[test]
    fn an_owner_no_release_writes_is_garbage() {
        let mut p = FakeProcess::new(13, false, &[(1, SPIN)]);
        let f = p.threads[0].1[1];
        let owner = p.stack.walk.frame_owner.expect("3.13 frames have an owner");
        p.mem.poke_byte(f + owner, 9);
        let mut r = reader(p);
        assert!(r.thread_stacks().is_empty());
        assert_eq!(r.counts().garbage, 1);
    }

    #[test]
    fn a_deep_chain_keeps_its_innermost_128_frames() {
        let deep: Vec<(&str, i64)> = (0..300).map(|i| ("recurse", i % 7)).collect();
        for &(minor, ft) in BUILDS {
            let p = FakeProcess::new(minor, ft, &[(5, &deep)]);
            let mut r = reader(p);
            let stacks = r.thread_stacks();
            let s = &stacks[&5];
            assert!(s.truncated, "3.{minor}");
            assert_eq!(s.frames.len(), remote_frames::MAX_DEPTH, "3.{minor}");
            // The innermost frame (last, root first) is the chain's last one.
            let line = u32::try_from(first_line_of(0) + 1 + 299 % 7).ok();
            assert_eq!(s.frames.last().map(|f| f.line), Some(line), "3.{minor}");
            assert_eq!(r.counts().truncated, 1);
        }
    }

    /// Memory that moves a thread to another frame after a number of reads of
    /// its thread state: the walk sees one stack, the thread is in another.
    struct Moving {
        fake: Fake,
        slot: u64,
        after: std::cell::Cell<u32>,
        to: u64,
    }

    impl Memory for Moving {
        fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
            let ok = self.fake.read_bytes(addr, buf);
            if addr == self.slot && buf.len() == 8 {
                let left = self.after.get();
                if left == 0 {
                    buf.copy_from_slice(&self.to.to_le_bytes());
                } else {
                    self.after.set(left - 1);
                }
            }
            ok
        }
    }

    #[test]
    fn a_stack_that_changes_under_the_reader_ends_the_sample() {
        for &(minor, ft) in BUILDS {
            let p = FakeProcess::new(minor, ft, &[(1, SPIN)]);
            let w = p.stack.walk;
            let (tstate, frames) = p.threads[0].clone();
            // The word holding the innermost frame (through cframe on 3.11/3.12).
            let first = tstate + w.tstate_to_frame.first;
            let slot = match w.tstate_to_frame.second {
                Some(second) => p.mem.u64_at(first).expect("cframe") + second,
                None => first,
            };
            let moving = Moving {
                fake: p.mem,
                slot,
                after: std::cell::Cell::new(1),
                to: frames[1],
            };
            let mut r = StackReader::with_parts(
                moving,
                p.stack,
                p.objects,
                p.runtime,
                Some(CODE_TYPE),
                Some(PTHREAD_TID_OFF),
            );
            assert_eq!(
                r.thread_stack(tstate),
                Err(BrokenStack::Changed),
                "3.{minor}"
            );
            assert_eq!(r.counts().changed, 1);
        }
    }

    #[test]
    fn a_code_object_replaced_at_its_address_is_read_again_in_the_next_pass() {
        for &(minor, ft) in BUILDS {
            let p = FakeProcess::new(minor, ft, &[(1, SPIN)]);
            let code = p.codes["spin"];
            let name_at = code + p.stack.code.name;
            let mut r = reader(p);
            let top =
                |stacks: HashMap<u32, Stack>| stacks[&1].frames.last().map(|f| f.function.clone());
            assert_eq!(top(r.thread_stacks()).as_deref(), Some("spin"));
            // Freed, and a new code object made at the same address.
            let l = r.objects;
            let renamed = r.mem.str(&l, "spin_again");
            r.mem.poke(name_at, renamed);
            assert_eq!(
                top(r.thread_stacks()).as_deref(),
                Some("spin_again"),
                "3.{minor}"
            );
            assert_eq!(r.counts().code_reused, 1, "3.{minor}");
            // Within one pass, a code object is checked once.
            let raw = RawFrame { code, instr: 0 };
            r.begin_pass();
            assert_eq!(r.symbolize(&[raw]).frames[0].function, "spin_again");
            let other = r.mem.str(&l, "third");
            r.mem.poke(name_at, other);
            assert_eq!(r.symbolize(&[raw]).frames[0].function, "spin_again");
            r.begin_pass();
            assert_eq!(r.symbolize(&[raw]).frames[0].function, "third");
        }
    }

    #[test]
    fn captured_frames_are_named_root_first_and_unknown_code_is_counted() {
        let p = FakeProcess::new(11, false, &[(1, SPIN)]);
        let (main, spin) = (p.codes["main"], p.codes["spin"]);
        let start = p.stack.code.code_start.expect("3.11 points into the code");
        let mut r = reader(p);
        r.begin_pass();
        let raw = [
            RawFrame {
                code: spin,
                instr: spin + start + 2 * 4,
            },
            RawFrame {
                code: 0xdead_0000,
                instr: 0,
            },
            RawFrame {
                code: main,
                instr: main + start - 2,
            },
        ];
        let s = r.symbolize(&raw);
        let names: Vec<&str> = s.frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["main", UNKNOWN_FUNCTION, "spin"]);
        assert_eq!(
            s.frames[0].line,
            u32::try_from(first_line_of(0)).ok(),
            "not started"
        );
        assert_eq!(
            s.frames[2].line,
            u32::try_from(first_line_of(3) + 1 + 4).ok()
        );
        assert_eq!(r.counts().unknown_code, 1);
    }

    #[test]
    fn names_and_files_are_cut_at_one_kib() {
        let long = "f".repeat(5000);
        let chain = [(long.as_str(), 0)];
        let p = FakeProcess::new(12, false, &[(1, &chain)]);
        let stacks = reader(p).thread_stacks();
        assert_eq!(stacks[&1].frames[0].function.len(), 1024);
    }
}
