//! gilscope on a CPython inside a container: its own mount and PID namespace and
//! a root filesystem of its own, whose interpreter path
//! (`/opt/containerpython/bin/python3`, `/opt/containerpython/lib/libpython3.11.so.1.0`)
//! does not exist on the host. The test builds the container itself
//! ([`crate::common::container`]: a rootfs holding a copy of pyenv's CPython
//! 3.11), entered with `unshare --mount --pid --fork` in the two ways processes
//! get their root:
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

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::container::{
    build_rootfs, into_docker_cgroup, start, Container, Isolation, PREFIX,
};
use crate::common::*;

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
