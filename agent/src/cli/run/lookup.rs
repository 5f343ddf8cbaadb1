//! What the exporters need to know about a watched process, looked up on the
//! watcher's side: `otel` sees neither the watcher nor the target's memory, so
//! the daemon answers its questions ([`ThreadLookup`]) and hands it plain facts.

use crate::core::stacks::Frame;
use crate::os::mapped_files;
use crate::otel::resource::ProcessFacts;
use crate::otel::spans::ThreadLookup;
use crate::watch::session::Session;

/// A watched process resolves a contention record's thread states and names its threads.
impl ThreadLookup for Session {
    fn tid_of_tstate(&self, tstate: u64) -> Option<u32> {
        Session::tid_of_tstate(self, tstate)
    }
    fn thread_name(&self, tid: u32) -> String {
        Session::thread_name(self, tid)
    }
    fn holder_code(&self, stack: u64) -> Option<Frame> {
        Session::holder_code(self, stack)
    }
}

/// The facts a process's resource is built from, its executable found inside
/// its own mount namespace (a container's `/usr/bin/python3`, not the host's).
pub fn process_facts(pid: u32, start_ticks: u64, runtime_version: String) -> ProcessFacts {
    let exe = mapped_files::exe_in_process(pid)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    ProcessFacts::read(pid, start_ticks, exe, runtime_version)
}
