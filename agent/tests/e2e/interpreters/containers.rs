//! gilscope on a CPython inside a container: its own mount and PID namespace and
//! a root filesystem of its own, whose interpreter path
//! (`/opt/containerpython/bin/python3`, `/opt/containerpython/lib/libpython3.11.so.1.0`)
//! does not exist on the host. No container runtime runs here, so the test
//! builds the container itself: a rootfs holding a copy of pyenv's CPython 3.11
//! (its executable, libpython, the part of the stdlib a threaded script needs,
//! and the C libraries `ldd` names), entered with `unshare --mount --pid --fork`
//! in the two ways processes get their root:
//! - `pivot_root` inside the new mount namespace, as runc/containerd/CRI-O do:
//!   the kernel then prints the container's own paths in `/proc/PID/maps`;
//! - a plain `chroot` inside our mount namespace (`unshare --root`): the kernel
//!   prints host paths (`/tmp/gilscope-rootfs-…/opt/…`) there.
//!
//! In both, the tids CPython records (and its thread names' keys) are the PID
//! namespace's (1, 2, …) while BPF and /proc use host tids: the measurement and
//! the thread names are only right when gilscope maps one to the other.
//! The pivot_root container also runs in a cgroup-v2 cgroup named like Docker's
//! (`docker-<64 hex>.scope`), so `gilscope run` must give it that `container.id`,
//! and, with `--kubernetes` pointed (by kubeconfig) at a stand-in API server
//! answering with recorded real responses whose pod status names that container
//! id (no cluster can run here), that pod's `k8s.*` attributes and service name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Where the interpreter lives inside the container (and nowhere on the host).
const PREFIX: &str = "/opt/containerpython";
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
struct Rootfs {
    dir: PathBuf,
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy(from: &Path, to: &Path) {
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
fn shared_libraries(python: &Path) -> Vec<PathBuf> {
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
fn build_rootfs(python: &Path, tag: &str) -> Rootfs {
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
    // The workload and the module it reports its rate with.
    for script in ["cpu_threads.py", "rate.py"] {
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
enum Isolation {
    /// A mount namespace whose root is the rootfs (`pivot_root`), as container runtimes do.
    PivotRoot,
    /// `chroot` into the rootfs inside our own mount namespace.
    Chroot,
}

/// A container running `cpu_threads.py`, killed on drop.
struct Container {
    unshare: Child,
    /// The Python process, as the host numbers it.
    pid: u32,
    cgroup: Option<PathBuf>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if let Some(dir) = &self.cgroup {
            // The cgroup empties once the process is reaped; give it a moment.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// The process whose parent is `parent` (the kernel here has no `task/TID/children`).
fn child_of(parent: u32) -> Option<u32> {
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

fn start(rootfs: &Rootfs, isolation: Isolation, seconds: u32) -> Container {
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
                .args(["/app/cpu_threads.py", "4", &seconds.to_string()]);
        }
        Isolation::PivotRoot => {
            // The host's sh, mount and pivot_root run before the switch; after it
            // only the rootfs exists (the old root stays mounted at /oldroot).
            let script = format!(
                "set -e; mount --make-rprivate /; mount --bind {root} {root}; \
                 mount -t proc proc {root}/proc; cd {root}; pivot_root . oldroot; \
                 exec {python} /app/cpu_threads.py 4 {seconds}"
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
fn cgroup2_root() -> Option<PathBuf> {
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

/// Moves the container's process into a new cgroup `docker-<id>.scope` (the
/// path Docker with the systemd driver gives a container) and returns the id.
fn into_docker_cgroup(container: &mut Container) -> Option<String> {
    let Some(root) = cgroup2_root() else {
        missing("no cgroup v2 hierarchy (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)");
        return None;
    };
    let id = format!(
        "{:064x}",
        u128::from(container.pid) * 0x9e37_79b9_7f4a_7c15 + 1
    );
    let dir = root
        .join("gilscope-test.slice")
        .join(format!("docker-{id}.scope"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        missing(&format!("cannot create cgroup {}: {e}", dir.display()));
        return None;
    }
    container.cgroup = Some(dir.clone());
    std::fs::write(dir.join("cgroup.procs"), container.pid.to_string())
        .unwrap_or_else(|e| panic!("moving {} into {}: {e}", container.pid, dir.display()));
    let text = std::fs::read_to_string(format!("/proc/{}/cgroup", container.pid))
        .expect("read /proc/PID/cgroup");
    assert!(text.contains(&format!("docker-{id}.scope")), "{text}");
    Some(id)
}

/// What `gilscope check --pid` measured of the container, against the truth of
/// cpu_threads.py (GIL held ~always, each of 4 workers waits ~3/4 of the time).
fn check_container(container: &Container, label: &str) -> Vec<String> {
    let pid = container.pid.to_string();
    let doc = check_json(&["--pid", &pid, "--duration", "4s"]);
    let mut failures = Vec::new();
    let p = &doc["process"];
    let wall = f(p, "wall_s");
    if f(p, "gil_utilization") < 0.9 {
        failures.push(format!("{label}: utilization {p}"));
    }
    let interp = &doc["interpreter"];
    if interp["library"].as_str() != Some(&format!("{PREFIX}/lib/libpython3.11.so.1.0")) {
        failures.push(format!(
            "{label}: the interpreter is named as the container sees it: {interp}"
        ));
    }
    let workers = workers(&doc);
    if workers.len() != 4 {
        failures.push(format!("{label}: four workers in {doc}"));
    }
    let mut names: Vec<String> = Vec::new();
    for w in &workers {
        let share = f(w, "gil_wait_s") / wall;
        if !(0.55..=0.85).contains(&share) {
            failures.push(format!("{label}: worker waits {share:.3} of wall: {w}"));
        }
        let tid = w["tid"].as_u64().unwrap_or(0);
        if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
            failures.push(format!("{label}: tid {tid} is not a host tid of {pid}"));
        }
        if f(w, "gil_hold_share") < 0.05 {
            failures.push(format!(
                "{label}: a worker holding the GIL a quarter of the time shows {w}"
            ));
        }
        names.push(w["python_name"].as_str().unwrap_or("").to_string());
    }
    names.sort();
    let shares: Vec<String> = workers
        .iter()
        .map(|w| format!("{:.2}", f(w, "gil_wait_s") / wall))
        .collect();
    eprintln!(
        "{label}: pid {pid}, GIL utilization {:.3}, worker wait shares {shares:?}, names {names:?}",
        f(p, "gil_utilization")
    );
    if names != ["cpu-0", "cpu-1", "cpu-2", "cpu-3"] {
        failures.push(format!("{label}: Python thread names {names:?}"));
    }
    failures
}

#[test]
fn check_measures_a_cpython_in_its_own_pid_and_mount_namespace() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let rootfs = build_rootfs(&python, "check");
    for isolation in [Isolation::PivotRoot, Isolation::Chroot] {
        let _machine = serial();
        let label = format!("{isolation:?}");
        let failures = twice_on_noise(&label, || {
            let container = start(&rootfs, isolation, 60);
            let nspid = std::fs::read_to_string(format!("/proc/{}/status", container.pid))
                .unwrap_or_default();
            assert!(
                nspid
                    .lines()
                    .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
                "the python is pid 1 of its own PID namespace: {nspid}"
            );
            check_container(&container, &label)
        });
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn run_gives_a_container_its_id_and_its_pod() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let rootfs = build_rootfs(&python, "run");
    let _machine = serial();
    let mut container = start(&rootfs, Isolation::PivotRoot, 60);
    let Some(id) = into_docker_cgroup(&mut container) else {
        return;
    };
    // The API lists the recorded pods of the node, none of them this container's
    // yet: the daemon attaches without pod metadata, then the watch says the
    // nginx pod now runs this container, and the next interval must carry it.
    let api = crate::common::kube_api::serve(crate::common::kube_api::NGINX_ID);
    let kubeconfig = api.kubeconfig(&rootfs.dir);
    let mut child = gilscope()
        .args([
            "-v",
            "run",
            "--interval",
            "2s",
            "--duration",
            "9s",
            "--kubernetes",
        ])
        .args(["--include-cgroup", &format!("docker-{id}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("NODE_NAME", crate::common::kube_api::NODE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gilscope run");
    let stdout_pipe = child.stdout.take().expect("stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout_pipe }, &mut text);
        text
    });
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr_pipe = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let pid = container.pid;
    let mut stderr = String::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    let watching = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                stderr.push_str(&line);
                stderr.push('\n');
                if line.contains(&format!("watching process {pid} ")) {
                    break line;
                }
            }
            Err(_) => panic!("run never watched {pid}:\n{stderr}"),
        }
    };
    assert!(
        watching.contains(&format!("container.id={id}")),
        "{watching}"
    );
    assert!(
        !watching.contains("k8s.pod.name"),
        "no pod runs this container yet: {watching}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&crate::common::kube_api::fixture("pods-on-node.json"))
            .expect("pod list");
    let mut pod = list["items"][0].clone();
    pod["metadata"]["resourceVersion"] = "2890230".into();
    pod["status"]["containerStatuses"][0]["containerID"] = format!("docker://{id}").into();
    api.events
        .push(serde_json::json!({"type": "MODIFIED", "object": pod}).to_string());
    let status = child.wait().expect("wait for gilscope run");
    stderr.extend(lines.iter().map(|l| l + "\n"));
    let stdout = stdout_reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "gilscope run failed ({status}):\n{stderr}"
    );
    // The resource as logged once the pod was seen.
    let described = stderr
        .lines()
        .find(|l| l.contains(&format!("process {pid} is ")))
        .unwrap_or_else(|| panic!("the pod of {pid} never reached its resource:\n{stderr}"));
    eprintln!("{described}");
    for part in [
        "service.name=nginx ",
        &format!("container.id={id}"),
        "k8s.namespace.name=default",
        "k8s.pod.name=nginx-77b4fdf86c-hp4x5",
        "k8s.container.name=nginx",
    ] {
        assert!(described.contains(part), "{part} in {described}");
    }
    // One row per interval; the machine is shared, so the best interval is judged.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(&format!("pid {pid:>7}")))
        .collect();
    assert!(!rows.is_empty(), "no summary row for {pid}:\n{stdout}");
    let last = rows.last().copied().unwrap_or_default();
    assert!(
        last.contains(" nginx "),
        "the pod's service name once known: {last}"
    );
    let mut held = 0.0f64;
    for row in &rows {
        let h: f64 = row
            .split("GIL held")
            .nth(1)
            .and_then(|r| r.trim_start().split('%').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no GIL held % in {row}"));
        held = held.max(h);
    }
    let rows = rows.join("\n");
    assert!(held >= 90.0, "GIL held {held}% in {rows}");
}
