//! The OpenTelemetry resource of each watched process: who it is, where it runs.
//!
//! The one place that builds resources. `service.name` comes by a fixed chain:
//! the target's own `OTEL_SERVICE_NAME`, then `service.name` in its
//! `OTEL_RESOURCE_ATTRIBUTES` (only these two keys are read from
//! `/proc/PID/environ`, streamed in bounded memory and at most [`ENVIRON_LIMIT`]
//! bytes of it: the rest of a process's environment may hold secrets), then, in Kubernetes, its pod's
//! `resource.opentelemetry.io/service.name` annotation, `app.kubernetes.io/name`
//! label or owning workload's name ([`crate::otel::kube`]), then `python:<script or
//! module>` from its command line. `tenant.id` is never taken from a target
//! unless a rule says so, since any process can set its own environment.

use std::io::Read;

use crate::otel::kube::PodMetadata;

/// Splits `k=v,k2=v2` (the `OTEL_*_HEADERS` / `OTEL_RESOURCE_ATTRIBUTES` format),
/// percent-decoding keys and values; entries without `=` are skipped.
pub fn parse_key_values(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = percent_decode(k.trim());
            (!k.is_empty()).then(|| (k, percent_decode(v.trim())))
        })
        .collect()
}

/// `%XX` decoding; malformed escapes are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes of `/proc/PID/environ` scanned at most. The environment is streamed
/// (never held whole), so this bounds the time spent on a huge one, not memory.
pub const ENVIRON_LIMIT: u64 = 4 * 1024 * 1024;

/// Longest `OTEL_*` entry kept; a longer one is ignored (a cut-off attribute list
/// would give wrong attributes).
pub const ENVIRON_ENTRY_LIMIT: usize = 16 * 1024;

/// The keys read from a target's environment.
const OTEL_KEYS: [&[u8]; 2] = [b"OTEL_SERVICE_NAME=", b"OTEL_RESOURCE_ATTRIBUTES="];

/// Attributes of the target's own resource passed through as they are.
const PASSED_THROUGH: &[&str] = &[
    "service.namespace",
    "service.version",
    "deployment.environment",
    "deployment.environment.name",
];

/// How `tenant.id` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRule {
    /// The same value for every process on this node.
    Fixed(String),
    /// This key of the target's `OTEL_RESOURCE_ATTRIBUTES`.
    ResourceAttribute(String),
    /// This label of the pod's namespace (set by cluster admins, not by the pod).
    NamespaceLabel(String),
}

/// What the target says about itself in its environment (the two OTel keys only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetOtelEnv {
    pub service_name: Option<String>,
    pub resource_attributes: Vec<(String, String)>,
}

/// Reads only `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` from the target.
pub fn read_target_env(pid: u32) -> TargetOtelEnv {
    match std::fs::File::open(format!("/proc/{pid}/environ")) {
        Ok(f) => scan_target_env(f.take(ENVIRON_LIMIT)),
        Err(_) => TargetOtelEnv::default(),
    }
}

/// Picks the two OTel keys out of NUL-separated `KEY=value` entries.
pub fn parse_target_env(raw: &[u8]) -> TargetOtelEnv {
    scan_target_env(raw)
}

/// [`parse_target_env`] over a stream, in bounded memory: only an entry that can
/// still be one of the two keys is buffered, and at most [`ENVIRON_ENTRY_LIMIT`]
/// bytes of it. Entries without `=`, invalid UTF-8 and a last entry without its
/// NUL are all tolerated; a read error ends the scan with what was found.
pub fn scan_target_env(mut input: impl Read) -> TargetOtelEnv {
    let mut out = TargetOtelEnv::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut entry: Vec<u8> = Vec::new();
    let mut skipping = false;
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for (i, piece) in chunk[..n].split(|b| *b == 0).enumerate() {
            if i > 0 {
                // A NUL ended the entry before this piece.
                if !skipping {
                    take_entry(&entry, &mut out);
                }
                entry.clear();
                skipping = false;
            }
            if skipping || piece.is_empty() {
                continue;
            }
            if entry.len() + piece.len() > ENVIRON_ENTRY_LIMIT {
                skipping = true;
                entry.clear();
                continue;
            }
            entry.extend_from_slice(piece);
            let wanted = OTEL_KEYS.iter().any(|key| {
                let n = key.len().min(entry.len());
                entry[..n] == key[..n]
            });
            if !wanted {
                skipping = true;
                entry.clear();
            }
        }
    }
    if !skipping {
        take_entry(&entry, &mut out);
    }
    out
}

/// Takes one `KEY=value` entry if it is one of the two OTel keys.
fn take_entry(entry: &[u8], out: &mut TargetOtelEnv) {
    if let Some(v) = entry.strip_prefix(OTEL_KEYS[0]) {
        let v = String::from_utf8_lossy(v).trim().to_string();
        if !v.is_empty() {
            out.service_name = Some(v);
        }
    } else if let Some(v) = entry.strip_prefix(OTEL_KEYS[1]) {
        out.resource_attributes = parse_key_values(&String::from_utf8_lossy(v));
    }
}

/// `python:<script>` or `python:<module>` from a command line (arguments split).
pub fn python_service_name(args: &[String], exe_name: &str) -> String {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-m" => {
                if let Some(m) = it.next() {
                    return format!("python:{m}");
                }
            }
            "-c" => return format!("python:{exe_name}"),
            // Options that take a value.
            "-W" | "-X" | "--check-hash-based-pycs" => {
                it.next();
            }
            s if s.starts_with("-m") && s.len() > 2 => return format!("python:{}", &s[2..]),
            s if s.starts_with('-') => {}
            script => {
                let name = std::path::Path::new(script)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| script.to_string());
                return format!("python:{name}");
            }
        }
    }
    format!("python:{exe_name}")
}

/// The container id in `/proc/PID/cgroup` text: docker (`/docker/<id>`,
/// `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`, `/kubepods/.../<id>`),
/// cri-o (`crio-<id>.scope`) and podman (`libpod-<id>.scope`).
///
/// The outermost matching segment wins: that level is the container
/// runtime's. A process allowed to make child cgroups (a delegated cgroup v2
/// subtree) could name one after another tenant's container; that segment is
/// below its own container's and never read.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for segment in path.split('/') {
            let seg = segment.strip_suffix(".scope").unwrap_or(segment);
            if seg.starts_with("crio-conmon-") {
                continue;
            }
            let id = [
                "docker-",
                "cri-containerd-",
                "crio-",
                "libpod-",
                "containerd-",
            ]
            .iter()
            .find_map(|p| seg.strip_prefix(p))
            .unwrap_or(seg);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(id.to_ascii_lowercase());
            }
        }
    }
    None
}

/// The machine: same for every process.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub arch: String,
}

impl Host {
    /// Reads the host name; `host.arch` in OpenTelemetry's spelling.
    pub fn detect() -> Self {
        Self::detect_with(&|k| std::env::var(k).ok())
    }

    /// In a pod the UTS hostname is the pod's name, not the node's: the node name
    /// from the downward API (`NODE_NAME`, set by the DaemonSet) wins when present.
    pub fn detect_with(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let name = env("NODE_NAME")
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "x86",
            other => other,
        }
        .to_string();
        Self { name, arch }
    }
}

/// What resource building needs to know about one process.
#[derive(Debug, Clone)]
pub struct ProcessFacts {
    pub pid: u32,
    pub start_ticks: u64,
    pub exe: String,
    pub args: Vec<String>,
    pub runtime_version: String,
    pub env: TargetOtelEnv,
    pub cgroup: String,
}

impl ProcessFacts {
    /// Reads the rest from /proc (missing files give empty values). `exe` is the
    /// executable's path as the process sees it: finding it inside the process's
    /// mount namespace is the watcher's business, not the resource's.
    pub fn read(pid: u32, start_ticks: u64, exe: String, runtime_version: String) -> Self {
        let args = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Self {
            pid,
            start_ticks,
            exe,
            args,
            runtime_version,
            env: read_target_env(pid),
            cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
        }
    }
}

/// Attributes that say which workload a process is, in a log line
/// (`service.name=… container.id=… k8s.pod.name=…`), those present only.
pub fn identifying(resource: &[(String, String)]) -> String {
    const KEYS: &[&str] = &[
        "service.name",
        "container.id",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name",
        "tenant.id",
    ];
    KEYS.iter()
        .filter_map(|k| {
            resource
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The resource attributes of one process, in a stable order.
pub fn process_resource(
    p: &ProcessFacts,
    host: &Host,
    tenant: Option<&TenantRule>,
    pod: Option<&PodMetadata>,
) -> Vec<(String, String)> {
    let exe_name = std::path::Path::new(&p.exe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let attr = |k: &str| {
        p.env
            .resource_attributes
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let service = p
        .env
        .service_name
        .clone()
        .or_else(|| attr("service.name"))
        .or_else(|| pod.and_then(|m| m.service_name.clone()))
        .unwrap_or_else(|| python_service_name(&p.args, &exe_name));
    let mut out = vec![
        ("service.name".to_string(), service),
        (
            "service.instance.id".to_string(),
            format!("{}/{}/{}", host.name, p.pid, p.start_ticks),
        ),
        ("process.pid".to_string(), p.pid.to_string()),
        ("process.executable.name".to_string(), exe_name),
        ("process.executable.path".to_string(), p.exe.clone()),
        ("process.runtime.name".to_string(), "cpython".to_string()),
        (
            "process.runtime.version".to_string(),
            p.runtime_version.clone(),
        ),
        ("host.name".to_string(), host.name.clone()),
        ("host.arch".to_string(), host.arch.clone()),
    ];
    for key in PASSED_THROUGH {
        if let Some(v) = attr(key) {
            out.push((key.to_string(), v));
        }
    }
    if let Some(id) = container_id_from_cgroup(&p.cgroup) {
        out.push(("container.id".to_string(), id));
    }
    if let Some(m) = pod {
        out.extend(m.attributes.iter().cloned());
    }
    let tenant = match tenant {
        Some(TenantRule::Fixed(v)) => Some(v.clone()),
        Some(TenantRule::ResourceAttribute(k)) => attr(k),
        Some(TenantRule::NamespaceLabel(_)) => pod.and_then(|m| m.tenant.clone()),
        None => None,
    };
    if let Some(t) = tenant {
        out.push(("tenant.id".to_string(), t));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn in_a_pod_host_name_is_the_node_not_the_pod() {
        let pod = |k: &str| (k == "NODE_NAME").then(|| "node-a".to_string());
        assert_eq!(Host::detect_with(&pod).name, "node-a");
        let host = Host::detect_with(&|_| None).name;
        let uts = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        assert_eq!(host, uts.trim());
        let blank = |k: &str| (k == "NODE_NAME").then(|| " ".to_string());
        assert_eq!(Host::detect_with(&blank).name, host);
    }

    #[test]
    fn container_ids_come_from_every_runtime_path_format() {
        let cases = [
            format!("12:cpu,cpuacct:/docker/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice/cri-containerd-{ID}.scope\n"),
            format!("0::/kubepods.slice/kubepods-pod1a2b.slice/crio-{ID}.scope\n"),
            format!("11:memory:/kubepods/besteffort/pod1a2b-3c4d/{ID}\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
        ];
        for text in &cases {
            assert_eq!(
                container_id_from_cgroup(text).as_deref(),
                Some(ID),
                "{text}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(
            container_id_from_cgroup(&format!("0::/kubepods.slice/crio-conmon-{ID}.scope\n")),
            None
        );
    }

    /// Issue 14: a container that makes a child cgroup named after another
    /// container keeps its own id.
    #[test]
    fn a_nested_cgroup_named_after_another_container_does_not_move_a_process() {
        let other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        let text = format!(
            "0::/kubepods.slice/kubepods-pod1a2b.slice/cri-containerd-{ID}.scope/docker-{other}.scope\n"
        );
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
        let text = format!("0::/system.slice/docker-{ID}.scope/{other}\n");
        assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(ID));
    }

    #[test]
    fn only_the_two_otel_keys_are_taken_from_the_environ() {
        let raw = b"PATH=/bin\0AWS_SECRET=x\0OTEL_SERVICE_NAME=shop\0OTEL_RESOURCE_ATTRIBUTES=tenant.id=evil,service.namespace=web\0";
        let env = parse_target_env(raw);
        assert_eq!(env.service_name.as_deref(), Some("shop"));
        assert_eq!(env.resource_attributes.len(), 2);
    }

    /// A reader that hands out at most `step` bytes per read, to cross every
    /// chunk boundary inside entries and keys.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn keys_after_a_huge_environment_are_found_in_bounded_memory() {
        let mut raw = Vec::new();
        for i in 0..40 {
            raw.extend_from_slice(format!("BIG{i}=").as_bytes());
            raw.extend(std::iter::repeat_n(b'x', 100_000));
            raw.push(0);
        }
        // Longer than an entry may be: ignored, not cut.
        raw.extend_from_slice(b"OTEL_RESOURCE_ATTRIBUTES=a=");
        raw.extend(std::iter::repeat_n(b'y', ENVIRON_ENTRY_LIMIT));
        raw.push(0);
        raw.extend_from_slice(b"OTEL_SERVICE_NAME=late\0");
        let env = scan_target_env(raw.as_slice());
        assert_eq!(env.service_name.as_deref(), Some("late"));
        assert!(env.resource_attributes.is_empty());
        for step in [1, 7, 18, 65_536] {
            let env = scan_target_env(Trickle(&raw, step));
            assert_eq!(env.service_name.as_deref(), Some("late"), "step {step}");
        }
    }

    #[test]
    fn malformed_environments_are_tolerated() {
        // No '=', invalid UTF-8, empty entries, a last entry without its NUL.
        let raw = b"NOEQUALS\0\xff\xfe\x00\0\0OTEL_SERVICE_NAME=caf\xc3\xa9\xff\0OTEL_RESOURCE_ATTRIBUTES=team=blue";
        let env = parse_target_env(raw);
        assert_eq!(env.service_name.as_deref(), Some("café\u{fffd}"));
        assert_eq!(
            env.resource_attributes,
            vec![("team".to_string(), "blue".to_string())]
        );
        assert_eq!(
            parse_target_env(b"OTEL_SERVICE_NAME"),
            TargetOtelEnv::default()
        );
        assert_eq!(parse_target_env(b""), TargetOtelEnv::default());
    }

    fn facts(args: &[&str], env: TargetOtelEnv) -> ProcessFacts {
        ProcessFacts {
            pid: 42,
            start_ticks: 1000,
            exe: "/usr/bin/python3.11".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            runtime_version: "3.11.2".into(),
            env,
            cgroup: String::new(),
        }
    }

    fn get<'a>(r: &'a [(String, String)], k: &str) -> Option<&'a str> {
        r.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn service_name_follows_the_chain() {
        let host = Host {
            name: "node1".into(),
            arch: "amd64".into(),
        };
        let own = TargetOtelEnv {
            service_name: Some("shop".into()),
            resource_attributes: vec![("service.name".into(), "other".into())],
        };
        let r = process_resource(&facts(&["python3", "app.py"], own), &host, None, None);
        assert_eq!(get(&r, "service.name"), Some("shop"));
        let attrs = TargetOtelEnv {
            service_name: None,
            resource_attributes: vec![("service.name".into(), "from-attrs".into())],
        };
        let r = process_resource(&facts(&["python3", "app.py"], attrs), &host, None, None);
        assert_eq!(get(&r, "service.name"), Some("from-attrs"));
        let r = process_resource(
            &facts(
                &["python3", "-u", "/srv/app/worker.py", "--x"],
                TargetOtelEnv::default(),
            ),
            &host,
            None,
            None,
        );
        assert_eq!(get(&r, "service.name"), Some("python:worker.py"));
        assert_eq!(get(&r, "process.runtime.name"), Some("cpython"));
        assert_eq!(get(&r, "host.arch"), Some("amd64"));
        assert_eq!(get(&r, "service.instance.id"), Some("node1/42/1000"));
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            python_service_name(&args(&["python3", "-m", "gunicorn", "a:b"]), "python3"),
            "python:gunicorn"
        );
        assert_eq!(
            python_service_name(&args(&["python3", "-X", "dev", "-mhttp.server"]), "python3"),
            "python:http.server"
        );
        assert_eq!(
            python_service_name(&args(&["python3", "-c", "print(1)"]), "python3"),
            "python:python3"
        );
    }

    #[test]
    fn tenant_is_only_taken_from_the_target_when_a_rule_says_so() {
        let host = Host {
            name: "n".into(),
            arch: "amd64".into(),
        };
        let env = TargetOtelEnv {
            service_name: None,
            resource_attributes: vec![
                ("tenant.id".into(), "evil".into()),
                ("team".into(), "blue".into()),
            ],
        };
        let f = facts(&["python3", "a.py"], env);
        assert_eq!(
            get(&process_resource(&f, &host, None, None), "tenant.id"),
            None
        );
        let fixed = TenantRule::Fixed("acme".into());
        assert_eq!(
            get(
                &process_resource(&f, &host, Some(&fixed), None),
                "tenant.id"
            ),
            Some("acme")
        );
        let keyed = TenantRule::ResourceAttribute("team".into());
        assert_eq!(
            get(
                &process_resource(&f, &host, Some(&keyed), None),
                "tenant.id"
            ),
            Some("blue")
        );
    }

    #[test]
    fn a_pod_names_the_service_only_when_the_target_does_not() {
        let host = Host {
            name: "n".into(),
            arch: "amd64".into(),
        };
        let pod = PodMetadata {
            attributes: vec![
                ("k8s.namespace.name".into(), "shop".into()),
                ("k8s.pod.name".into(), "web-1".into()),
            ],
            service_name: Some("web".into()),
            tenant: Some("acme".into()),
        };
        let plain = facts(&["python3", "app.py"], TargetOtelEnv::default());
        let r = process_resource(&plain, &host, None, Some(&pod));
        assert_eq!(get(&r, "service.name"), Some("web"));
        assert_eq!(get(&r, "k8s.pod.name"), Some("web-1"));
        assert_eq!(get(&r, "tenant.id"), None, "no rule, no tenant");
        let rule = TenantRule::NamespaceLabel("tenant".into());
        let r = process_resource(&plain, &host, Some(&rule), Some(&pod));
        assert_eq!(get(&r, "tenant.id"), Some("acme"));
        let own = TargetOtelEnv {
            service_name: Some("checkout".into()),
            resource_attributes: vec![("tenant.id".into(), "evil".into())],
        };
        let r = process_resource(
            &facts(&["python3", "app.py"], own),
            &host,
            Some(&rule),
            Some(&pod),
        );
        assert_eq!(get(&r, "service.name"), Some("checkout"));
        assert_eq!(
            get(&r, "tenant.id"),
            Some("acme"),
            "never the target's own tenant.id"
        );
    }

    #[test]
    fn key_value_lists_are_percent_decoded() {
        assert_eq!(
            parse_key_values("service.name=shop%20api, tenant.id=t1,broken"),
            vec![
                ("service.name".to_string(), "shop api".to_string()),
                ("tenant.id".to_string(), "t1".to_string())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
