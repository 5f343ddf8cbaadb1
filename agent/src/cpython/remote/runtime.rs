//! Walks what hangs off `_PyRuntime` in the target: the list of interpreters,
//! each one's thread states, and its `sys.modules`. Lists are followed only so
//! far (a torn or cyclic list ends), and every pointer is checked.

use crate::cpython::remote::dict::{dict_get_str, DictItem};
use crate::cpython::remote::memory::{le_u64, Memory, MAX_READ, MIN_POINTER};
use crate::cpython::remote::objects::ObjectLayout;

/// Interpreters walked at most.
const MAX_INTERPRETERS: usize = 16;
/// Thread states read at most per interpreter.
pub const MAX_THREADS: usize = 4096;

/// Addresses of the process's interpreter states (`PyInterpreterState`), the
/// main interpreter's first; a repeated address ends the walk.
pub fn interpreters(mem: &impl Memory, runtime: u64, l: &ObjectLayout) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = runtime.checked_add(l.interpreters_head);
    while let Some(interp) = at.and_then(|a| mem.ptr_at(a)) {
        if out.contains(&interp) || out.len() >= MAX_INTERPRETERS {
            break;
        }
        out.push(interp);
        at = interp.checked_add(l.interp_next);
    }
    out
}

/// What one `PyThreadState` says about its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadState {
    /// Address of the thread state.
    pub addr: u64,
    /// `thread_id`: the `pthread_t` (0 when unreadable).
    pub thread_id: u64,
    /// `native_thread_id` (3.11+): the kernel tid in the target's PID namespace.
    pub native_thread_id: Option<u64>,
}

impl ThreadState {
    /// The kernel tid of this thread in the target's PID namespace:
    /// `native_thread_id` (3.11+), or the tid glibc keeps behind the
    /// `pthread_t` (3.8-3.10, `pthread_tid_off` from
    /// `locate::glibc_pthread_tid_offset`).
    pub fn own_tid(&self, mem: &impl Memory, pthread_tid_off: Option<u64>) -> Option<u32> {
        match self.native_thread_id {
            Some(native) => u32::try_from(native).ok().filter(|t| plausible_tid(*t)),
            None => glibc_tid(mem, self.thread_id, pthread_tid_off?),
        }
    }
}

/// Linux tids are below 2^30 (`PID_MAX_LIMIT` is 2^22); 0 is no thread.
fn plausible_tid(tid: u32) -> bool {
    tid != 0 && tid < 1 << 30
}

/// The tid glibc keeps in the `struct pthread` a `pthread_t` points to, at
/// `tid_off`; `None` when unreadable, or 0 (the thread exited).
pub fn glibc_tid(mem: &impl Memory, pthread: u64, tid_off: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read_bytes(pthread.checked_add(tid_off)?, &mut b)
        .then_some(())?;
    Some(u32::from_le_bytes(b)).filter(|t| plausible_tid(*t))
}

/// The thread states of one interpreter, in list order, one read each; at most
/// [`MAX_THREADS`] (a cyclic list repeats until then).
pub fn thread_states(mem: &impl Memory, interp: u64, l: &ObjectLayout) -> Vec<ThreadState> {
    let native = l.tstate_native_thread_id;
    let span = l
        .tstate_next
        .max(l.tstate_thread_id)
        .max(native.unwrap_or(0))
        .saturating_add(8);
    let mut out = Vec::new();
    if span > MAX_READ {
        return out;
    }
    let mut buf = vec![0u8; usize::try_from(span).unwrap_or(0)];
    let mut next = interp
        .checked_add(l.interp_threads_head)
        .and_then(|a| mem.ptr_at(a));
    while let Some(addr) = next {
        if out.len() >= MAX_THREADS || !mem.read_bytes(addr, &mut buf) {
            break;
        }
        out.push(ThreadState {
            addr,
            thread_id: le_u64(&buf, l.tstate_thread_id).unwrap_or(0),
            native_thread_id: native.and_then(|off| le_u64(&buf, off)),
        });
        next = le_u64(&buf, l.tstate_next).filter(|p| *p >= MIN_POINTER);
    }
    out
}

/// The entry of `sys.modules[name]` of one interpreter: its key (a `str`) and
/// the module object.
pub fn sys_module(
    mem: &impl Memory,
    interp: u64,
    l: &ObjectLayout,
    name: &str,
) -> Option<DictItem> {
    let modules = mem.ptr_at(interp.checked_add(l.interp_modules)?)?;
    dict_get_str(mem, modules, l, name)
}

/// The `__dict__` of a module object.
pub fn module_dict(mem: &impl Memory, module: u64, l: &ObjectLayout) -> Option<u64> {
    mem.ptr_at(module.checked_add(l.md_dict)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, put, Fake};

    #[test]
    fn cyclic_interpreter_and_thread_state_lists_end() {
        let l = layout(12, false);
        let mut mem = Fake::default();
        let interp = mem.alloc(vec![0u8; 0x2000]);
        let tstate = mem.alloc(vec![0u8; 512]);
        mem.poke(interp + l.interp_next, interp);
        mem.poke(interp + l.interp_threads_head, tstate);
        mem.poke(tstate + l.tstate_next, tstate);
        mem.poke(tstate + l.tstate_thread_id, 0x7f00_0000_1000);
        let mut runtime = vec![0u8; 256];
        put(&mut runtime, l.interpreters_head, interp);
        let runtime = mem.alloc(runtime);

        assert_eq!(interpreters(&mem, runtime, &l), vec![interp]);
        let states = thread_states(&mem, interp, &l);
        assert_eq!(states.len(), MAX_THREADS, "a cycle is cut at the cap");
        assert_eq!(states[0].thread_id, 0x7f00_0000_1000);
        assert_eq!(states[0].native_thread_id, Some(0));
    }
}
