//! Which kernel thread a `PyThreadState *` belongs to.
//!
//! The GIL records its holder as a thread-state pointer (`last_holder`); reports
//! speak of tids. 3.11+ keeps the tid in the thread state (`native_thread_id`);
//! 3.8-3.10 keep only the `pthread_t`, which points at glibc's `struct pthread`
//! holding the tid. Either is read from the target's memory, cached briefly
//! (thread states are freed and reused), and turned from the target's PID
//! namespace into the host's, which BPF and `/proc` use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cpython::layout::versions::ThreadIdField;
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::remote::runtime;
use crate::os::pidns::TidMap;

/// Maps `PyThreadState *` to kernel tids by reading `native_thread_id` (3.11+), or
/// the `pthread_t` and then glibc's `struct pthread` (3.8-3.10), from the target.
#[derive(Debug)]
pub struct TstateResolver {
    mem: RemoteMemory,
    field: ThreadIdField,
    /// Offset of the tid inside glibc's `struct pthread`, for [`ThreadIdField::PthreadOnly`].
    pthread_tid_off: Option<u64>,
    cache: Mutex<HashMap<u64, (Option<u32>, Instant)>>,
    /// The target's own tids (its PID namespace) to the host's, which BPF and /proc use.
    tids: Mutex<TidMap>,
}

/// How long a tstate -> tid mapping is trusted (thread states are freed and reused).
const RESOLVE_TTL: Duration = Duration::from_secs(1);

/// Thread states remembered before old ones are dropped ([`RESOLVE_KEEP`]).
const RESOLVE_CACHE_MAX: usize = 4096;

/// A mapping not used for this long is dropped once the cache is full.
const RESOLVE_KEEP: Duration = Duration::from_secs(60);

impl TstateResolver {
    /// A resolver for one process.
    pub fn new(mem: RemoteMemory, field: ThreadIdField, pthread_tid_off: Option<u64>) -> Self {
        Self {
            mem,
            field,
            pthread_tid_off,
            cache: Mutex::new(HashMap::new()),
            tids: Mutex::new(TidMap::of(mem.pid())),
        }
    }

    /// The tid behind a thread state, `None` if unknown (null, freed, or no native id in this version).
    pub fn tid_of(&self, tstate: u64) -> Option<u32> {
        if tstate == 0 {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tid, at)) = cache.get(&tstate) {
            if at.elapsed() < RESOLVE_TTL || !self.can_read() {
                return *tid;
            }
        }
        let tid = self.read_tid(tstate);
        if tid.is_some() || !cache.contains_key(&tstate) {
            if cache.len() >= RESOLVE_CACHE_MAX {
                // Thread states of exited threads: a long-lived process whose threads
                // come and go would otherwise grow this forever.
                cache.retain(|_, (_, at)| at.elapsed() < RESOLVE_KEEP);
            }
            cache.insert(tstate, (tid, Instant::now()));
        }
        tid.or_else(|| cache.get(&tstate).and_then(|(t, _)| *t))
    }

    fn can_read(&self) -> bool {
        match self.field {
            ThreadIdField::NativeThreadId(_) => true,
            ThreadIdField::PthreadOnly(_) => self.pthread_tid_off.is_some(),
        }
    }

    fn read_tid(&self, tstate: u64) -> Option<u32> {
        let raw = match self.field {
            ThreadIdField::NativeThreadId(off) => {
                self.mem.read_u64(tstate.checked_add(off)?).ok()?
            }
            ThreadIdField::PthreadOnly(off) => {
                let pthread = self.mem.read_u64(tstate.checked_add(off)?).ok()?;
                u64::from(runtime::glibc_tid(
                    &self.mem,
                    pthread,
                    self.pthread_tid_off?,
                )?)
            }
        };
        let own = u32::try_from(raw).ok().filter(|tid| *tid != 0)?;
        self.tids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .host_tid(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_state_leads_to_its_tid_by_native_id_or_through_struct_pthread() {
        let mem = RemoteMemory::new(std::process::id());
        // glibc's struct pthread, its tid at byte 8.
        let pthread = Box::new([0u64, 777, 0]);
        // A thread state: pthread_t at 8, native_thread_id at 16.
        let tstate = Box::new([0u64, pthread.as_ptr() as u64, 4242]);
        let at = tstate.as_ptr() as u64;

        let native = TstateResolver::new(mem, ThreadIdField::NativeThreadId(16), None);
        assert_eq!(native.tid_of(at), Some(4242));
        assert_eq!(native.tid_of(0), None, "a null thread state is no thread");

        let pthread_only = TstateResolver::new(mem, ThreadIdField::PthreadOnly(8), Some(8));
        assert_eq!(pthread_only.tid_of(at), Some(777));
        let no_offset = TstateResolver::new(mem, ThreadIdField::PthreadOnly(8), None);
        assert_eq!(no_offset.tid_of(at), None, "no glibc offset: no tid");
    }
}
