//! What procfs says about a whole process: who it is (start time, executable),
//! its command line, its CPU, its children, whether it still lives. Every read
//! is bounded; a process that vanished reads as absent, not as an error.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Bytes of `/proc/PID/cmdline` the rules are matched against at most.
const CMDLINE_LIMIT: u64 = 128 * 1024;

/// The command line the rules see: every argument (NULs to spaces), up to
/// [`CMDLINE_LIMIT`]. Not the shortened one shown to people, so a pattern that
/// matches a late argument (an include, or an exclude) still applies.
pub fn full_command_line(pid: u32) -> String {
    use std::io::Read;
    let mut raw = Vec::new();
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/cmdline")) {
        let _ = f.take(CMDLINE_LIMIT).read_to_end(&mut raw);
    }
    let text = String::from_utf8_lossy(&raw);
    text.split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether two readings of `/proc/PID/exe` name the same executable. A file
/// replaced on disk while it runs (a package upgrade renames a new one over it)
/// reads as `PATH (deleted)`: still the same program, not an exec.
pub fn same_executable(before: &Path, now: &Path) -> bool {
    let strip = |p: &Path| -> PathBuf {
        let bytes = p.as_os_str().as_bytes();
        PathBuf::from(std::ffi::OsStr::from_bytes(
            bytes.strip_suffix(b" (deleted)").unwrap_or(bytes),
        ))
    };
    before == now || strip(before) == strip(now)
}

/// The pids in /proc (processes, not threads).
pub fn list_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// The number of processes of the node, in one `stat`: procfs gives /proc a link
/// count of its own few links plus one per process (thread group, not thread).
/// Listing /proc walks every *thread* of the node in the kernel, which at a
/// thousand threads costs more than everything else the poll does.
pub fn process_count() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc").ok().map(|m| m.nlink())
}

/// Start time in ticks after boot, from `/proc/PID/stat` (after the `comm` field,
/// which may hold spaces and parentheses).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of a `/proc/PID/stat` line.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ')' come field 3 (state) onwards: starttime is field 22, the 20th here.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Seconds since boot.
pub fn uptime_s() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A process's command line as one short line (NULs to spaces, at most 200 chars).
pub fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 200 {
        text = text.chars().take(199).collect::<String>() + "…";
    }
    text
}

/// CPU of the whole process (utime + stime of every thread, exited ones
/// included) in clock ticks, from `/proc/PID/stat`; `None` when unreadable.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, past the
/// `comm` field (which may hold spaces and parentheses).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut after = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After ')' comes field 3 (state): utime is the 12th from there.
    let utime: u64 = after.nth(11)?.parse().ok()?;
    let stime: u64 = after.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// Every live descendant of `root` (children, grandchildren, ...), from procfs.
///
/// The kernel here has no `/proc/PID/task/TID/children`, so this reads the
/// parent pid of every process; a process that vanishes meanwhile is skipped.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = all
        .filter_map(|p| p.ok())
        .filter_map(|p| p.stat().ok())
        .filter(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
        .filter_map(|s| Some((u32::try_from(s.pid).ok()?, u32::try_from(s.ppid).ok()?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && pid != root && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

/// A process is gone once /proc forgets it or it is a zombie waiting to be reaped.
pub fn is_alive(pid: u32) -> bool {
    match procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => !matches!(stat.state, 'Z' | 'X' | 'x'),
        Err(_) => false,
    }
}

/// Live threads of a process (0 once it is gone).
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let found = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn process_cpu_is_utime_plus_stime_past_an_odd_command_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(8));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        assert!(process_cpu_ticks(std::process::id()).is_some());
    }

    #[test]
    fn command_lines_are_joined_with_spaces() {
        let own = command_line(std::process::id());
        assert!(!own.contains('\0'));
        assert!(!own.is_empty());
    }

    #[test]
    fn a_replaced_executable_is_the_same_program() {
        let p = |s: &str| PathBuf::from(s);
        assert!(same_executable(
            &p("/usr/bin/python3.11"),
            &p("/usr/bin/python3.11 (deleted)")
        ));
        assert!(same_executable(&p("/x (deleted)"), &p("/x")));
        assert!(!same_executable(&p("/usr/bin/python3.11"), &p("/bin/sh")));
        assert!(!same_executable(
            &p("/usr/bin/python3.11"),
            &p("/usr/bin/python3.1")
        ));
    }

    #[test]
    fn rules_see_arguments_past_the_shortened_command_line() {
        let long = "x".repeat(300);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5", &long, "late-marker"])
            .spawn()
            .expect("spawn sh");
        // Until the child has exec'd (before, it shows the test's own command line).
        let mut full = String::new();
        for _ in 0..200 {
            full = full_command_line(child.id());
            if full.starts_with("sh ") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let shown = command_line(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(full.ends_with(&format!("{long} late-marker")), "{full}");
        assert!(!shown.contains("late-marker"), "{shown}");
    }

    #[test]
    fn start_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        let own = start_ticks(std::process::id());
        assert!(own.is_some_and(|t| t > 0));
    }
}
