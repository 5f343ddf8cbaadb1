//! A container built by hand for the tests that need one: a root filesystem
//! holding a copy of pyenv's CPython 3.11 (its executable, libpython, the part
//! of the stdlib a threaded script needs, and the C libraries `ldd` names),
//! entered with `unshare --mount --pid --fork` either through `pivot_root`
//! (as runc/containerd/CRI-O do) or a plain `chroot`; and cgroup-v2 cgroups
//! named the way container runtimes name theirs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{missing, workload};

/// Where the interpreter lives inside the container (and nowhere on the host).
pub const PREFIX: &str = "/opt/containerpython";
/// Stdlib entries not copied (big, and not needed by the workload).
const SKIPPED_STDLIB: &[&str] = &[
    "site-packages",
    "test",
    "idlelib",
    "__pycache__",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "distutils",
    "unittest",
];

/// A root filesystem in a temporary directory, removed on drop.
pub struct Rootfs {
    pub dir: PathBuf,
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("create rootfs directory");
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg("-L")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "copying {} to {}",
        from.display(),
        to.display()
    );
}

/// The C libraries (and loader) `ldd` says `python` needs, outside its own prefix.
pub fn shared_libraries(python: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(python).output().expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .filter(|p| !p.starts_with(python.parent().and_then(Path::parent).unwrap_or(p)))
        .collect()
}

/// Copies pyenv's 3.11 (`python` is its `bin/python3.11`) into a fresh rootfs.
/// `tag` keeps the rootfs of tests running at once apart.
pub fn build_rootfs(python: &Path, tag: &str) -> Rootfs {
    let install = python
        .parent()
        .and_then(Path::parent)
        .expect("pyenv layout: <prefix>/bin/python3.11");
    let dir = std::env::temp_dir().join(format!("gilscope-rootfs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = Rootfs { dir };
    let root = &rootfs.dir;
    let inside = root.join(PREFIX.trim_start_matches('/'));
    copy(python, &inside.join("bin/python3"));
    copy(
        &install.join("lib/libpython3.11.so.1.0"),
        &inside.join("lib/libpython3.11.so.1.0"),
    );
    let stdlib = install.join("lib/python3.11");
    for entry in std::fs::read_dir(&stdlib).expect("pyenv stdlib").flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if SKIPPED_STDLIB.contains(&name.as_ref()) || name.starts_with("config-") {
            continue;
        }
        copy(&entry.path(), &inside.join("lib/python3.11").join(&*name));
    }
    for lib in shared_libraries(python) {
        copy(&lib, &root.join(lib.strip_prefix("/").unwrap_or(&lib)));
    }
    // The workloads and the module they report their rate with.
    for script in ["cpu_threads.py", "rate.py", "known_stacks.py"] {
        copy(Path::new(&workload(script)), &root.join("app").join(script));
    }
    for d in ["proc", "oldroot", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs directory");
    }
    assert!(
        !Path::new(PREFIX).exists(),
        "{PREFIX} exists on the host: the test needs a path only the container has"
    );
    rootfs
}

/// How the container gets its root.
#[derive(Debug, Clone, Copy)]
pub enum Isolation {
    /// A mount namespace whose root is the rootfs (`pivot_root`), as container runtimes do.
    PivotRoot,
    /// `chroot` into the rootfs inside our own mount namespace.
    Chroot,
}

/// A container running a workload of /app, killed on drop.
pub struct Container {
    pub unshare: Child,
    /// The Python process, as the host numbers it.
    pub pid: u32,
    /// A cgroup made for it, removed once it is gone.
    pub cgroup: Option<TestCgroup>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // Its cgroup (a field) is removed after this, once the process is reaped.
    }
}

/// The process whose parent is `parent` (the kernel here has no `task/TID/children`).
pub fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ppid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

pub fn start(rootfs: &Rootfs, isolation: Isolation, seconds: u32) -> Container {
    let seconds = seconds.to_string();
    start_app(rootfs, isolation, &["/app/cpu_threads.py", "4", &seconds])
}

/// Runs the container's python with `args` (a script under /app first, then
/// its arguments, e.g. a marker for a daemon's command-line rule).
pub fn start_app(rootfs: &Rootfs, isolation: Isolation, args: &[&str]) -> Container {
    let root = rootfs.dir.display().to_string();
    let python = format!("{PREFIX}/bin/python3");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--kill-child"])
        .env_clear()
        .env("LD_LIBRARY_PATH", format!("{PREFIX}/lib"))
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match isolation {
        Isolation::Chroot => {
            cmd.args(["--mount-proc", &format!("--root={root}"), &python])
                .args(args);
        }
        Isolation::PivotRoot => {
            // The host's sh, mount and pivot_root run before the switch; after it
            // only the rootfs exists (the old root stays mounted at /oldroot).
            let script = format!(
                "set -e; mount --make-rprivate /; mount --bind {root} {root}; \
                 mount -t proc proc {root}/proc; cd {root}; pivot_root . oldroot; \
                 exec {python} {}",
                args.join(" ")
            );
            cmd.args(["sh", "-c", &script]);
        }
    }
    let mut unshare = cmd.spawn().expect("run unshare (util-linux)");
    // The python process is unshare's child once it exec'd the interpreter.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Ok(Some(status)) = unshare.try_wait() {
            panic!("the container exited early ({status}): {isolation:?}");
        }
        let ready = child_of(unshare.id()).filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("libpython3.11"))
        });
        if let Some(pid) = ready {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no python in the container after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Container {
        unshare,
        pid,
        cgroup: None,
    }
}

/// The cgroup-v2 hierarchy: /sys/fs/cgroup itself, or /sys/fs/cgroup/unified on hybrid hosts.
pub fn cgroup2_root() -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: statfs writes into a zeroed struct we own; the path is NUL-terminated.
            let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
            let ok = unsafe { libc::statfs(c.as_ptr(), &mut fs) } == 0;
            ok && fs.f_type as i64 == CGROUP2_SUPER_MAGIC
        })
}

/// A cgroup-v2 cgroup made for a test, removed (with the parents made for it)
/// when dropped, once the processes in it are gone.
pub struct TestCgroup {
    pub dir: PathBuf,
    made: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes `relative` (e.g. `gilscope-test.slice/docker-<id>.scope`) under the
    /// cgroup-v2 root; `None` (skip, or fail under CI) without one.
    pub fn make(relative: &str) -> Option<Self> {
        let Some(root) = cgroup2_root() else {
            missing("no cgroup v2 hierarchy (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)");
            return None;
        };
        let mut made = Vec::new();
        let mut dir = root;
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
            if !dir.exists() {
                if let Err(e) = std::fs::create_dir(&dir) {
                    missing(&format!("cannot create cgroup {}: {e}", dir.display()));
                    return None;
                }
                made.push(dir.clone());
            }
        }
        Some(Self { dir, made })
    }

    /// Moves process `pid` into this cgroup.
    pub fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // A cgroup empties once its processes are reaped; give it a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A made-up container id (64 hex digits) derived from `seed`.
pub fn container_id(seed: u64) -> String {
    format!("{:064x}", u128::from(seed) * 0x9e37_79b9_7f4a_7c15 + 1)
}

/// Moves the container's process into a new cgroup `docker-<id>.scope` (the
/// path Docker with the systemd driver gives a container) and returns the id.
pub fn into_docker_cgroup(container: &mut Container) -> Option<String> {
    let id = container_id(u64::from(container.pid));
    let cgroup = TestCgroup::make(&format!("gilscope-test.slice/docker-{id}.scope"))?;
    cgroup.enter(container.pid);
    container.cgroup = Some(cgroup);
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", container.pid))
        .expect("read /proc/PID/cgroup");
    assert!(text.contains(&format!("docker-{id}.scope")), "{text}");
    Some(id)
}
