//! `gilscope top` driven the way a person uses it: in a real terminal (tmux),
//! reading the screen (capture-pane) and pressing keys (send-keys).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A detached tmux session running one command; killed on drop.
struct Tmux {
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Option<Self> {
        let session = format!("gilscope-top-{}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "200",
                "-y",
                "50",
                command,
            ])
            .status()
            .ok()?;
        status.success().then_some(Self { session })
    }

    fn screen(&self) -> String {
        Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn keys(&self, keys: &str) {
        let _ = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, keys])
            .status();
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen shows `what`; returns the screen.
    fn wait_for(&self, what: impl Fn(&str) -> bool, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if what(&screen) {
                return Ok(screen);
            }
            if start.elapsed() > timeout {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status();
    }
}

fn has_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn top_shows_a_serialized_process_and_drills_into_its_threads() {
    if !can_use_bpf() {
        return;
    }
    if !has_tmux() {
        missing("tmux is not installed (apt-get install tmux)");
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let mut workload_proc = Command::new(&python)
        .args([&workload("cpu_threads.py"), "4", "30"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    let pid = workload_proc.id();
    let command = format!(
        "{} top --pid {pid} --interval 1s",
        env!("CARGO_BIN_EXE_gilscope")
    );
    let tmux = Tmux::start(&command).expect("tmux new-session");
    let result = (|| -> Result<(), String> {
        // The list: the process, with its GIL busy and threads queued behind it.
        let screen = tmux
            .wait_for(
                |s| s.contains("gil_serialized_threads") && s.contains(&pid.to_string()),
                Duration::from_secs(15),
            )
            .map_err(|s| format!("no serialized process on screen:\n{s}"))?;
        let row = screen
            .lines()
            .find(|l| l.contains(&pid.to_string()) && l.contains("cpu_threads.py"))
            .ok_or_else(|| format!("no row for {pid}:\n{screen}"))?;
        let numbers: Vec<&str> = row.split_whitespace().collect();
        let util = numbers
            .iter()
            .find(|w| w.ends_with('%'))
            .and_then(|w| w.trim_end_matches('%').parse::<f64>().ok())
            .ok_or_else(|| format!("no GIL % in {row}"))?;
        if util < 85.0 {
            return Err(format!("GIL utilization {util}% in {row}"));
        }
        // Drill in: the threads and the advice.
        tmux.keys("Enter");
        let screen = tmux
            .wait_for(|s| s.contains("BLOCKED BY"), Duration::from_secs(5))
            .map_err(|s| format!("Enter did not open the thread view:\n{s}"))?;
        let thread_rows = screen
            .lines()
            .filter(|l| l.contains("python3.11") || l.contains("cpu-"))
            .count();
        if thread_rows < 4 {
            return Err(format!("fewer than 4 thread rows:\n{screen}"));
        }
        if !screen.contains("More threads will not help") {
            return Err(format!("the advice is missing:\n{screen}"));
        }
        // The code: every worker runs `spin`, so the waits are behind it
        // (the main thread only joins; 90 % leaves room for a wait behind
        // the thread start-up code of the first interval).
        let screen = tmux
            .wait_for(
                |s| s.contains("GIL held while others waited"),
                Duration::from_secs(5),
            )
            .map_err(|s| format!("no holder code in the process view:\n{s}"))?;
        let share = screen
            .lines()
            .find(|l| l.contains("GIL held while others waited ("))
            .and_then(|l| l.split_once("spin (cpu_threads.py:"))
            .and_then(|(_, rest)| rest.split_once(") ")?.1.split_once('%'))
            .and_then(|(pct, _)| pct.trim().parse::<f64>().ok());
        match share {
            Some(pct) if pct >= 90.0 => {}
            _ => {
                return Err(format!(
                    "spin is not the GIL holder (share {share:?}):\n{screen}"
                ))
            }
        }
        // Back, re-sort, quit.
        tmux.keys("Escape");
        tmux.wait_for(|s| s.contains("TOP WAITER"), Duration::from_secs(5))
            .map_err(|s| format!("Esc did not return to the list:\n{s}"))?;
        tmux.keys("s");
        tmux.wait_for(
            |s| s.contains("sorted by GIL utilization"),
            Duration::from_secs(5),
        )
        .map_err(|s| format!("s did not change the order:\n{s}"))?;
        tmux.keys("q");
        let start = Instant::now();
        while tmux.alive() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if tmux.alive() {
            return Err(format!("q did not quit:\n{}", tmux.screen()));
        }
        Ok(())
    })();
    let _ = workload_proc.kill();
    let _ = workload_proc.wait();
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn top_in_batch_mode_prints_frames_and_exits() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let mut workload_proc = Command::new(&python)
        .args([&workload("io_threads.py"), "4", "10"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    let pid = workload_proc.id();
    std::thread::sleep(Duration::from_millis(300));
    let out = gilscope()
        .args([
            "top",
            "--batch",
            "2",
            "--interval",
            "500ms",
            "--pid",
            &pid.to_string(),
        ])
        .output()
        .expect("run gilscope top");
    let _ = workload_proc.kill();
    let _ = workload_proc.wait();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("gilscope top:").count(), 2, "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains(&pid.to_string()))
            .all(|l| l.contains("no_contention")),
        "{text}"
    );
}

#[test]
fn top_refuses_a_pid_that_does_not_exist() {
    let out = gilscope()
        .args(["top", "--batch", "1", "--pid", "999999999"])
        .output()
        .expect("run gilscope top");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process with pid 999999999"));
}
