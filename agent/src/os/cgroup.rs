//! CPU limits and throttling of a process's cgroup, v1 or v2.
//!
//! On Kubernetes a CPU limit often masquerades as GIL contention: a throttled
//! process stops for the rest of each CFS period, threads pile up, and latency
//! looks like lock contention. So the cgroup's `cpu.stat` throttled time is read
//! at the start and end of a measurement, and the CPU quota (the tightest one on
//! the path to the root) bounds how many cores the process could use.
//!
//! Paths come from `/proc/PID/cgroup`; mount points of the cgroup file systems
//! from `/proc/self/mountinfo` (v1 controllers can be mounted anywhere, together
//! or apart). Anything unreadable means "unknown", never an error.

use std::path::{Path, PathBuf};

use crate::core::cpu::Throttling;

/// Where a process's CPU controller lives, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuCgroup {
    /// The cgroup directory of the process (leaf).
    pub dir: PathBuf,
    /// Directories from the leaf up to the controller's mount point.
    pub ancestry: Vec<PathBuf>,
    pub v2: bool,
}

/// Parses `cpu.stat`: v2 has `throttled_usec`, v1 `throttled_time` (ns).
pub fn parse_cpu_stat(text: &str) -> Throttling {
    let mut t = Throttling::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "nr_periods" => t.periods = value,
            "nr_throttled" => t.throttled_periods = value,
            "throttled_usec" => t.throttled_ns = value.saturating_mul(1000),
            "throttled_time" => t.throttled_ns = value,
            _ => {}
        }
    }
    t
}

/// Parses a quota in cores: v2 `cpu.max` ("max 100000" or "20000 100000").
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota = words.next()?;
    let period: f64 = words.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// Parses a v1 quota in cores from `cpu.cfs_quota_us` and `cpu.cfs_period_us` (-1: none).
pub fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0.0).then(|| quota as f64 / period)
}

/// One cgroup file-system mount: its root inside the hierarchy and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    v2: bool,
    cpu: bool,
}

/// The cgroup mounts listed in a mountinfo text.
fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let options = right.get(2).copied().unwrap_or("");
        let mount = |v2, cpu| Mount {
            root: root.to_string(),
            point: PathBuf::from(point),
            v2,
            cpu,
        };
        match *fstype {
            "cgroup2" => out.push(mount(true, true)),
            "cgroup" => out.push(mount(false, options.split(',').any(|o| o == "cpu"))),
            _ => {}
        }
    }
    out
}

/// The CPU cgroup of `pid`, given its `/proc/PID/cgroup` text and our mountinfo.
fn locate(cgroup_text: &str, mounts: &[Mount]) -> Option<CpuCgroup> {
    // v1 "N:cpu,cpuacct:/path" first: on a hybrid host the cpu controller is there.
    let v1 = cgroup_text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| path.to_string())
    });
    let (path, v2) = match v1 {
        Some(path) => (path, false),
        None => (
            cgroup_text
                .lines()
                .find_map(|l| l.strip_prefix("0::"))?
                .to_string(),
            true,
        ),
    };
    let mount = mounts.iter().find(|m| m.v2 == v2 && m.cpu)?;
    let relative = path
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(&path)
        .trim_start_matches('/');
    let dir = mount.point.join(relative);
    let mut ancestry = Vec::new();
    let mut cur: &Path = &dir;
    loop {
        ancestry.push(cur.to_path_buf());
        if cur == mount.point {
            break;
        }
        match cur.parent() {
            Some(parent) if parent.starts_with(&mount.point) => cur = parent,
            _ => break,
        }
    }
    Some(CpuCgroup { dir, ancestry, v2 })
}

impl CpuCgroup {
    /// The CPU cgroup a `/proc/PID/cgroup` text names under the mounts a
    /// mountinfo text lists, without checking the directory exists: the
    /// parsing half of [`Self::of`], public so the fuzz harness can feed it text.
    pub fn from_texts(cgroup_text: &str, mountinfo: &str) -> Option<Self> {
        locate(cgroup_text, &parse_mounts(mountinfo))
    }

    /// The CPU cgroup of `pid`, or `None` when procfs or the mounts do not say.
    pub fn of(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let cg = Self::from_texts(&text, &mountinfo)?;
        cg.dir.is_dir().then_some(cg)
    }

    /// Throttling of every level from the leaf up (a parent's limit throttles the child).
    pub fn throttling(&self) -> Vec<Throttling> {
        self.ancestry
            .iter()
            .map(|dir| {
                std::fs::read_to_string(dir.join("cpu.stat"))
                    .map(|t| parse_cpu_stat(&t))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The tightest CPU quota on the path to the root, in cores; `None`: unlimited.
    pub fn quota_cores(&self) -> Option<f64> {
        self.ancestry
            .iter()
            .filter_map(|dir| {
                if self.v2 {
                    parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
                } else {
                    parse_cfs_quota(
                        &std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?,
                        &std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?,
                    )
                }
            })
            .reduce(f64::min)
    }
}

/// Throttling over a measurement: the level that throttled the most.
pub fn throttled_between(start: &[Throttling], end: &[Throttling]) -> Throttling {
    start
        .iter()
        .zip(end)
        .map(|(s, e)| Throttling {
            periods: e.periods.saturating_sub(s.periods),
            throttled_periods: e.throttled_periods.saturating_sub(s.throttled_periods),
            throttled_ns: e.throttled_ns.saturating_sub(s.throttled_ns),
        })
        .max_by_key(|t| t.throttled_ns)
        .unwrap_or_default()
}

/// CPUs the process may run on (its affinity mask), at least 1.
pub fn affinity_cpus(pid: u32) -> usize {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sched::sched_getaffinity(pid) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .count()
            .max(1),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_reads_v1_nanoseconds_and_v2_microseconds() {
        let v1 = parse_cpu_stat("nr_periods 50\nnr_throttled 40\nthrottled_time 3000000000\n");
        assert_eq!(v1.throttled_periods, 40);
        assert_eq!(v1.throttled_ns, 3_000_000_000);
        let v2 =
            parse_cpu_stat("usage_usec 1\nnr_periods 10\nnr_throttled 8\nthrottled_usec 2000\n");
        assert_eq!(v2.throttled_ns, 2_000_000);
        assert_eq!(
            parse_cpu_stat("garbage\nnr_periods x"),
            Throttling::default()
        );
    }

    #[test]
    fn quotas_are_in_cores() {
        assert_eq!(parse_cpu_max("20000 100000"), Some(0.2));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs_quota("-1", "100000"), None);
    }

    #[test]
    fn a_v1_cpu_controller_is_found_under_its_mount() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        let cg = locate(
            "4:memory:/x\n2:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n",
            &parse_mounts(mountinfo),
        )
        .expect("found");
        assert!(!cg.v2);
        assert_eq!(
            cg.dir,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1")
        );
        assert_eq!(cg.ancestry.len(), 4);
        assert_eq!(
            cg.ancestry.last(),
            Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
    }

    #[test]
    fn a_v2_only_host_uses_the_unified_path() {
        let mountinfo = "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        let cg = locate("0::/system.slice/app.service\n", &parse_mounts(mountinfo)).expect("v2");
        assert!(cg.v2);
        assert_eq!(
            cg.dir,
            PathBuf::from("/sys/fs/cgroup/system.slice/app.service")
        );
    }

    #[test]
    fn the_level_that_throttled_most_is_reported() {
        let s = [Throttling::default(), Throttling::default()];
        let e = [
            Throttling {
                periods: 10,
                throttled_periods: 1,
                throttled_ns: 5,
            },
            Throttling {
                periods: 10,
                throttled_periods: 9,
                throttled_ns: 900,
            },
        ];
        assert_eq!(throttled_between(&s, &e).throttled_ns, 900);
    }
}
