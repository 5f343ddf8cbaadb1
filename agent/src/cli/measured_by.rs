//! The `measured_by` lines of a `check` report: which mechanism measured what,
//! so a reader can tell an exact figure from a sampled one.

use crate::core::analyse::Measurement;
use crate::watch::session::Session;

/// One line per mechanism that contributed to `m`.
pub fn measured_by(session: &Session, m: &Measurement, sample_hz: u32) -> Vec<String> {
    let own = session.own_probes();
    let gil_wait_by = match &own.condwait {
        Some(c) => format!(
            "GIL wait (musl): uprobes on {} in {} for calls on the GIL's cond (take) and \
             switch_cond (forced switch), which only a thread that must block makes; other \
             futex waits from sched_switch, less those GIL sleeps",
            c.site.symbol,
            c.site.path_in_process.display()
        ),
        None => "GIL wait: threads blocking in futex() on the GIL's own memory (sched_switch \
                 tracepoint), nothing on the uncontended fast path"
            .to_string(),
    };
    let mut lines = vec![
        gil_wait_by,
        "blocked time outside the GIL (poll/io/sleep/other) and GIL retake waits after blocking \
         calls: every sleep of a watched thread, classed by its syscall (same tracepoint)"
            .to_string(),
        format!(
            "GIL hold share, utilization and hold stretches: {} samples of the GIL state at {} Hz",
            m.gil.samples, sample_hz
        ),
        "CPU and run-queue delay: /proc/PID/task/TID/schedstat".to_string(),
    ];
    lines.push(match session.cgroup() {
        Some(cg) => format!(
            "CPU throttling and quota: {} cpu.stat/quota, from {} up to the root",
            if cg.v2 { "cgroup v2" } else { "cgroup v1" },
            cg.dir.display()
        ),
        None => "CPU throttling: the process's CPU cgroup was not found".to_string(),
    });
    if m.loops.is_some() {
        lines.push(
            "event-loop lag: uprobes on the entry and return of this process's libc poll-family \
             functions (epoll_wait, poll, select and variants); an iteration runs from one call's \
             return to the thread's next call"
                .to_string(),
        );
    }
    if own.locks.is_some() {
        lines.push(
            "lock contention: uprobes on every copy of _PyParkingLot_Park (the PyMutex slow \
             path; parks from PyEvent_WaitTimed such as thread joins are left out)"
                .to_string(),
        );
    }
    if let Some(p) = &m.precise {
        let (probed, exact) = if p.holds_exact {
            (" and drop_gil", ", hold times exact")
        } else {
            (" (drop_gil is inlined or stripped: holds stay sampled)", "")
        };
        lines.push(format!(
            "--precise: uprobes on take_gil{probed}; GIL wait totals are exact take_gil times{exact}"
        ));
    }
    lines
}
