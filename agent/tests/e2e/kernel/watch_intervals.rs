//! A watched process measured over an interval in the middle of its life (the
//! way `top` and the daemon see it): the interval's figures are the truths of
//! that interval, not totals since attaching.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use gilscope::core::analyse::analyse;
use gilscope::probes::wait::WaitProbe;
use gilscope::watch::session::{Sampling, Session, SessionOptions};

#[test]
fn an_interval_of_four_cpu_threads_shows_that_interval_serialized() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let mut child = Command::new(&python)
        .args([&workload("cpu_threads.py"), "4", "6"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    let pid = child.id();
    let mut probe = WaitProbe::load().expect("load the wait probe");
    let mut watch = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(w) = Session::attach(pid, &mut probe, &sampled_at(250)) {
            watch = Some(w);
            break;
        }
    }
    let mut watch = watch.expect("the interpreter is watchable within 5 s");
    std::thread::sleep(Duration::from_secs(1));
    watch.tick(&mut probe);
    let first = watch.snapshot(&probe);
    std::thread::sleep(Duration::from_secs(2));
    watch.tick(&mut probe);
    let second = watch.snapshot(&probe);
    let total = watch.measurement(&watch.first_snapshot(), &second);
    let interval = watch.measurement(&first, &second);
    let _ = watch.release(&mut probe);
    let _ = child.kill();
    let _ = child.wait();

    assert!((1.8..2.6).contains(&interval.wall_s), "{}", interval.wall_s);
    let (process, threads) = analyse(&interval);
    assert!(process.gil_utilization >= 0.85, "{process:?}");
    assert!(process.effective_parallelism <= 1.2, "{process:?}");
    let workers: Vec<_> = threads.iter().filter(|t| t.tid != pid).collect();
    assert_eq!(workers.len(), 4, "{threads:?}");
    for w in &workers {
        let share = w.gil_wait_s / interval.wall_s;
        assert!(
            (0.55..=0.85).contains(&share),
            "interval wait share {share}: {w:?}"
        );
        assert!(w.cpu_s > 0.2 && w.cpu_s < 1.2, "interval CPU only: {w:?}");
    }
    // The interval is a part of the total, not the total.
    let (total_process, _) = analyse(&total);
    assert!(total_process.gil_wait_s > process.gil_wait_s * 1.2);
    assert!(interval.gil.samples > 300 && interval.gil.samples < total.gil.samples);
}

/// A watcher's options, sampling the GIL on a thread of its own at `hz`.
fn sampled_at(hz: u32) -> SessionOptions<'static> {
    SessionOptions {
        sampling: Sampling::Own(hz),
        ..SessionOptions::watcher(None)
    }
}
