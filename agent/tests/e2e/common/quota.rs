//! A CPU quota for a test workload: a fresh cgroup (v1 `cpu` or v2 with `cpu`).

use std::path::{Path, PathBuf};

/// A fresh CPU cgroup (v1 `cpu` controller or v2 with `cpu` enabled) with a
/// quota of `cores`, removed on drop.
pub struct QuotaCgroup {
    pub dir: PathBuf,
}

impl QuotaCgroup {
    pub fn new(cores: f64) -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("gilscope-test-{}-{n}", std::process::id());
        for line in mountinfo.lines() {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or("");
            let period = 100_000u64;
            let quota = (cores * period as f64) as u64;
            if fstype == "cgroup" && options.split(',').any(|o| o == "cpu") {
                let dir = Path::new(point).join(&name);
                std::fs::create_dir_all(&dir).ok()?;
                std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string()).ok()?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).ok()?;
                return Some(Self { dir });
            }
            if fstype == "cgroup2" {
                let root = Path::new(point);
                let controllers =
                    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                if !controllers.split_whitespace().any(|c| c == "cpu") {
                    continue;
                }
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
                let dir = root.join(&name);
                std::fs::create_dir_all(&dir).ok()?;
                if std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).is_err() {
                    let _ = std::fs::remove_dir(&dir);
                    continue;
                }
                return Some(Self { dir });
            }
        }
        None
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        // Empty by now: the workload exited.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
