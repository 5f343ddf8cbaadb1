//! The DaemonSet's pod spec run for real in runc (bookworm's; crun fails on
//! this machine's hybrid cgroups). The agent's OCI container is built from
//! `deploy/manifests/daemonset.yaml` and `configmap.yaml` themselves: exactly
//! the capabilities it adds (all others dropped), no new privileges, a
//! read-only root, the host's PID namespace, its memory and CPU limits, its
//! environment (downward-API fields filled in as the kubelet would) and its
//! volumes (the ConfigMap's gilscope.yaml, the host's BTF). It must measure a
//! CPU-bound workload in another runc container, one whose cgroup is a
//! kubelet's (`/kubepods/besteffort/pod<uid>/<container id>`), tell its true
//! GIL utilization and name it by that container id.
//!
//! The agent runs under `deploy/seccomp/gilscope.json`, the profile offered for
//! `seccompProfile: Localhost`, stricter than the manifest's `Unconfined`.
//!
//! What differs from a cluster, and why: the network is the host's (no CNI
//! here, so the pod IP is 127.0.0.1); the OTLP endpoint is VictoriaMetrics
//! over HTTP (it has no gRPC receiver) and the interval 1 s (the ConfigMap's
//! 10 s would make the test minutes), both set by flags over the file, as an
//! operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::container::{
    build_rootfs, container_id, copy, shared_libraries, Rootfs, PREFIX,
};
use crate::common::receivers::*;
use crate::common::*;

/// A YAML file of `deploy/manifests`, as JSON.
fn manifest(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/manifests")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read the manifest");
    serde_norway::from_str(&text).expect("the manifest is YAML")
}

/// `256Mi` -> bytes; `500m` -> millicores (the two units the manifest uses).
fn quantity(text: &str) -> u64 {
    let (number, factor) = match text {
        t if t.ends_with("Mi") => (&t[..t.len() - 2], 1 << 20),
        t if t.ends_with("Gi") => (&t[..t.len() - 2], 1 << 30),
        t if t.ends_with('m') => (&t[..t.len() - 1], 1),
        t => (t, 1000),
    };
    number.parse::<u64>().expect("a quantity") * factor
}

/// The agent's environment as the kubelet makes it: downward-API fields
/// filled in, `$(VAR)` references expanded from the variables before them.
fn environment(agent: &Value, pod_ip: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in agent["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("env name").to_string();
        let mut value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => "runc-node".to_string(),
            Some("metadata.name") => "gilscope-runc".to_string(),
            Some("metadata.namespace") => "gilscope".to_string(),
            Some("status.podIP") => pod_ip.to_string(),
            Some(other) => panic!("a downward-API field this test does not fill: {other}"),
            None => var["value"].as_str().expect("env value").to_string(),
        };
        for (earlier, v) in &env {
            value = value.replace(&format!("$({earlier})"), v);
        }
        env.push((name, value));
    }
    env
}

/// One runc container (its state under our own `--root`), killed and deleted on drop.
struct Runc {
    id: String,
    state: PathBuf,
    log: PathBuf,
}

impl Runc {
    /// Writes `config` as `bundle/config.json` and starts it detached, its
    /// output in `bundle/output.log`.
    fn run(id: &str, bundle: &Path, config: &Value) -> Self {
        std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
        let state = bundle.join("state");
        let log = bundle.join("output.log");
        let output = std::fs::File::create(&log).expect("output log");
        let status = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log fd"))
            .stderr(output)
            .status()
            .expect("run runc");
        let container = Self {
            id: id.to_string(),
            state,
            log,
        };
        assert!(status.success(), "runc run {id}: {}", container.output());
        container
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's init process, as the host numbers it.
    fn pid(&self) -> u32 {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&self.state)
            .args(["state", &self.id])
            .output()
            .expect("runc state");
        let state: Value = serde_json::from_slice(&out.stdout).expect("runc state is JSON");
        assert_eq!(state["status"], "running", "{state}\n{}", self.output());
        state["pid"].as_u64().expect("pid") as u32
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let runc = || {
            let mut c = Command::new("runc");
            c.arg("--root").arg(&self.state);
            c
        };
        let _ = runc().args(["kill", &self.id, "KILL"]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while runc()
            .args(["delete", "--force", &self.id])
            .status()
            .is_ok_and(|s| !s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The mounts every container gets from its runtime (containerd's defaults).
fn runtime_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ]
}

/// containerd's masked and read-only paths, as a pod that is not privileged gets them.
fn runtime_linux(namespaces: &[&str], cgroups_path: &str, resources: Value) -> Value {
    json!({
        "namespaces": namespaces.iter().map(|n| json!({"type": n})).collect::<Vec<_>>(),
        "cgroupsPath": cgroups_path,
        "resources": resources,
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                        "/proc/scsi", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    })
}

/// The agent's OCI config, from the DaemonSet's container `agent` and pod `pod`.
fn agent_config(
    pod: &Value,
    agent: &Value,
    rootfs: &Path,
    config_dir: &Path,
    env: &[(String, String)],
    extra_args: &[String],
    cgroups_path: &str,
) -> Value {
    let security = &agent["securityContext"];
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let caps: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("capability")))
        .collect();
    let mut args: Vec<String> = vec!["/usr/bin/gilscope".into()];
    args.extend(
        agent["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("arg").to_string()),
    );
    args.extend(extra_args.iter().cloned());
    let mut mounts = runtime_mounts();
    for mount in agent["volumeMounts"].as_array().expect("volumeMounts") {
        let name = &mount["name"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| &v["name"] == name)
            .expect("the mount's volume");
        let source = match (
            volume["configMap"].is_object(),
            volume["hostPath"]["path"].as_str(),
        ) {
            (true, _) => config_dir.to_path_buf(),
            (false, Some(path)) => PathBuf::from(path),
            _ => panic!("a volume kind this test does not make: {volume}"),
        };
        let mut options = vec!["rbind"];
        if mount["readOnly"] == json!(true) {
            options.push("ro");
        }
        mounts.push(json!({"destination": mount["mountPath"], "type": "bind",
                           "source": source, "options": options}));
    }
    let limits = &agent["resources"]["limits"];
    let millicores = quantity(limits["cpu"].as_str().expect("cpu limit"));
    let resources = json!({
        "memory": {"limit": quantity(limits["memory"].as_str().expect("memory limit"))},
        "cpu": {"quota": millicores * 100, "period": 100_000},
    });
    // hostPID: no PID namespace of its own.
    assert_eq!(pod["hostPID"], json!(true));
    let namespaces = ["mount", "uts", "ipc"];
    let mut linux = runtime_linux(&namespaces, cgroups_path, resources);
    linux["seccomp"] = seccomp_profile();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": security["runAsUser"], "gid": 0},
            "args": args,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": security["allowPrivilegeEscalation"] == json!(false),
        },
        "root": {"path": rootfs, "readonly": security["readOnlyRootFilesystem"] == json!(true)},
        "hostname": "gilscope-runc",
        "mounts": mounts,
        "linux": linux,
    })
}

/// `deploy/seccomp/gilscope.json`, the profile offered for `seccompProfile:
/// Localhost` (the manifest's default stays `Unconfined`, which allows more:
/// the agent runs here under the stricter one). Checked to deny what
/// SECURITY.md says it denies.
fn seccomp_profile() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/seccomp/gilscope.json");
    let text = std::fs::read_to_string(&path).expect("read deploy/seccomp/gilscope.json");
    let profile: Value = serde_json::from_str(&text).expect("the profile is JSON");
    let denied: Vec<&str> = profile["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| rule["action"] == "SCMP_ACT_ERRNO")
        .flat_map(|rule| rule["names"].as_array().expect("names").iter())
        .filter_map(Value::as_str)
        .collect();
    for call in [
        "process_vm_writev",
        "ptrace",
        "pidfd_getfd",
        "mount",
        "setns",
        "init_module",
    ] {
        assert!(denied.contains(&call), "the profile allows {call}");
    }
    profile
}

/// A root filesystem holding only the agent and the C libraries it links.
fn agent_rootfs(dir: &Path) {
    let binary = Path::new(env!("CARGO_BIN_EXE_gilscope"));
    copy(binary, &dir.join("usr/bin/gilscope"));
    for lib in shared_libraries(binary) {
        copy(&lib, &dir.join(lib.strip_prefix("/").unwrap_or(&lib)));
    }
    for d in ["proc", "sys", "dev", "etc/gilscope"] {
        std::fs::create_dir_all(dir.join(d)).expect("rootfs directory");
    }
}

/// The workload's OCI config: pyenv's 3.11 running four CPU-bound threads in
/// its own PID namespace, in a kubelet's cgroup.
fn workload_config(rootfs: &Rootfs, marker: &str, cgroups_path: &str) -> Value {
    let python = format!("{PREFIX}/bin/python3");
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [python, "/app/cpu_threads.py", "4", "300", marker],
            "env": [format!("LD_LIBRARY_PATH={PREFIX}/lib"), "PATH=/usr/bin:/bin"],
            "cwd": "/app",
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs.dir, "readonly": true},
        "hostname": "workload",
        "mounts": runtime_mounts(),
        "linux": runtime_linux(&["pid", "mount", "uts", "ipc", "network"], cgroups_path, json!({})),
    })
}

fn runc_installed() -> bool {
    Command::new("runc").arg("--version").output().is_ok()
        || missing("runc is not installed (apt-get install runc; tests/setup.sh does)")
}

#[test]
fn the_daemonset_pod_spec_in_runc_measures_a_workload_in_another_container() {
    let (Some(pyenv), Some((_, vm))) = (pyenv_python311(), receivers()) else {
        return;
    };
    if !can_use_bpf() || !runc_installed() {
        return;
    }
    let _machine = serial();
    let marker = format!("runc-pod-{}", std::process::id());
    let (_receiver, vm_port) = start_vm(&vm, &marker);
    let scratch_dir = scratch(&format!("{marker}-bundles"));

    // The workload, in a kubelet's cgroup.
    let workload_rootfs = build_rootfs(&pyenv, &marker);
    let cid = container_id(u64::from(std::process::id()));
    let pod_uid = "0c4f4d7e-5b1a-4c3e-9d2f-7a6b5c4d3e2f";
    let workload_bundle = scratch_dir.join("workload");
    std::fs::create_dir_all(&workload_bundle).expect("bundle");
    let cgroup = format!("/kubepods/besteffort/pod{pod_uid}/{cid}");
    let workload = Runc::run(
        &format!("{marker}-workload"),
        &workload_bundle,
        &workload_config(&workload_rootfs, &marker, &cgroup),
    );
    let workload_pid = workload.pid();

    // The agent, from the manifests.
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    let agent = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "gilscope")
        .expect("the gilscope container");
    let config_dir = scratch_dir.join("configmap");
    std::fs::create_dir_all(&config_dir).expect("configmap dir");
    let configmap = manifest("configmap.yaml");
    for (file, text) in configmap["data"].as_object().expect("configmap data") {
        std::fs::write(config_dir.join(file), text.as_str().expect("text")).expect("write");
    }
    let agent_bundle = scratch_dir.join("agent");
    let rootfs = agent_bundle.join("rootfs");
    agent_rootfs(&rootfs);
    let mut env = environment(agent, "127.0.0.1");
    let listen = free_port();
    for (name, value) in env.iter_mut() {
        match name.as_str() {
            "GILSCOPE_LISTEN" => *value = value.replace(":9464", &format!(":{listen}")),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                *value = format!("http://127.0.0.1:{vm_port}/opentelemetry")
            }
            _ => {}
        }
    }
    let extra: Vec<String> = ["--interval", "1s", "--protocol", "http/protobuf", "-v"]
        .map(String::from)
        .to_vec();
    let config = agent_config(
        pod,
        agent,
        &rootfs,
        &config_dir,
        &env,
        &extra,
        &format!("/gilscope-{marker}"),
    );
    let daemon = Runc::run(&format!("{marker}-agent"), &agent_bundle, &config);

    let healthy = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(listen, "/healthz") {
            Ok((200, _, _)) => break,
            other => assert!(
                Instant::now() < healthy,
                "the agent's /healthz: {other:?}\n{}",
                daemon.output()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let selector = format!(
        "{{__name__=\"cpython.gil.utilization\",process.pid=\"{workload_pid}\",container.id=\"{cid}\"}}"
    );
    let utilization = mean_of_five_intervals(vm_port, &selector, Duration::from_secs(40))
        .unwrap_or_else(|| {
            panic!(
                "no utilization of process {workload_pid} as container {cid}; agent output:\n{}",
                daemon.output()
            )
        });
    eprintln!("runc: the agent measured {workload_pid} (container {cid}) at {utilization:.3}");
    assert!(utilization >= 0.9, "GIL utilization {utilization:.3}");
    let output = daemon.output();
    assert!(
        !output.contains("permission denied") && !output.contains("Read-only file system"),
        "{output}"
    );
    daemon.pid();
    drop(workload);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&scratch_dir);
}
