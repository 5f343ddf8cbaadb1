//! `deploy/`: the plain manifests and the Helm chart are valid Kubernetes objects,
//! the chart renders exactly the plain manifests, and the ConfigMap's gilscope.yaml
//! with the DaemonSet's environment is a configuration `gilscope run` accepts.
//!
//! Validation is `kubernetes-validate --strict` (the API's OpenAPI schemas, unknown
//! fields rejected) against the newest Kubernetes it knows and the oldest the chart
//! supports; rendering is Helm's own Go engine through `deploy/helm/render.py`. Both
//! tools live in the venv tests/setup.sh makes in /var/cache/gilscope/k8s-tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{missing, receivers::scratch};
use serde::Deserialize;
use serde_json::Value;

/// Kubernetes versions validated against: the tool's newest and the chart's floor
/// (`kubeVersion` in Chart.yaml; `appArmorProfile` needs 1.30).
const KUBE_VERSIONS: [&str; 2] = ["1.37", "1.30"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The venv's bin directory, or None (skip outside CI, fail under CI=true).
fn tools() -> Option<PathBuf> {
    let root = std::env::var("GILSCOPE_K8S_TOOLS")
        .unwrap_or_else(|_| "/var/cache/gilscope/k8s-tools".into());
    let bin = Path::new(&root).join("venv/bin");
    let ok = bin.join("kubernetes-validate").exists()
        && Command::new(bin.join("python"))
            .args(["-c", "import helm_python"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        Some(bin)
    } else {
        missing(&format!(
            "kubernetes-validate / helm-python-sdk are not installed in {root}/venv: run bash tests/setup.sh"
        ));
        None
    }
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("manifests"))
        .expect("deploy/manifests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "manifests: {files:?}");
    files
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `deploy/helm/render.py`: the chart rendered by Helm's engine with `values` (JSON).
fn render_chart(bin: &Path, values: &str) -> String {
    let out = run(Command::new(bin.join("python"))
        .arg(deploy().join("helm/render.py"))
        .arg(deploy().join("helm/gilscope"))
        .args([
            "--name",
            "gilscope",
            "--namespace",
            "gilscope",
            "--set-json",
            values,
        ]));
    assert!(out.status.success(), "render failed:\n{}", text(&out));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// Runs kubernetes-validate --strict on `files` for `version`.
fn validate(bin: &Path, version: &str, files: &[PathBuf]) -> Output {
    run(Command::new(bin.join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .args(files))
}

/// Every YAML document of `text`, as JSON values (empty documents skipped).
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Objects by `Kind/name`, with the ConfigMap's embedded gilscope.yaml parsed so that
/// key order and flow style do not count.
fn objects(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|mut doc| {
            let key = format!(
                "{}/{}",
                doc["kind"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
            if let Some(cfg) = doc["data"]["gilscope.yaml"].as_str() {
                let parsed: Value = serde_norway::from_str(cfg).expect("gilscope.yaml is YAML");
                doc["data"]["gilscope.yaml"] = parsed;
            }
            (key, doc)
        })
        .collect()
}

fn plain_objects() -> BTreeMap<String, Value> {
    let mut docs = vec![];
    for file in manifest_files() {
        docs.extend(documents(
            &std::fs::read_to_string(&file).expect("read manifest"),
        ));
    }
    objects(docs)
}

#[test]
fn manifests_and_rendered_chart_pass_kubernetes_validate() {
    let Some(bin) = tools() else { return };
    let rendered = scratch("deploy-rendered").join("chart.yaml");
    std::fs::write(
        &rendered,
        render_chart(&bin, r#"{"namespace":{"create":true}}"#),
    )
    .expect("write rendered chart");
    let mut files = manifest_files();
    files.push(rendered);
    for version in KUBE_VERSIONS {
        let out = validate(&bin, version, &files);
        let said = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{said}"
        );
        // 7 plain objects + the same 7 rendered, each said to pass.
        let passed = said
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(passed, 14, "kubernetes-validate {version}:\n{said}");
    }
}

#[test]
fn kubernetes_validate_rejects_a_broken_daemonset() {
    let Some(bin) = tools() else { return };
    let good = std::fs::read_to_string(deploy().join("manifests/daemonset.yaml"))
        .expect("read daemonset.yaml");
    // A misspelt securityContext field would be silently dropped by a lax apply.
    let broken = good.replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:");
    assert_ne!(good, broken);
    let file = scratch("deploy-broken").join("daemonset.yaml");
    std::fs::write(&file, broken).expect("write broken manifest");
    let out = validate(&bin, KUBE_VERSIONS[0], &[file]);
    let said = text(&out);
    assert!(!out.status.success(), "a broken DaemonSet passed:\n{said}");
    assert!(said.contains("readOnlyRootFileSystem"), "{said}");
}

#[test]
fn the_chart_renders_the_plain_manifests() {
    let Some(bin) = tools() else { return };
    let chart = objects(documents(&render_chart(
        &bin,
        r#"{"namespace":{"create":true}}"#,
    )));
    let plain = plain_objects();
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, object) in &plain {
        assert_eq!(
            &chart[key], object,
            "{key}: helm (left) and deploy/manifests (right) differ"
        );
    }
    // Defaults leave the namespace to `helm install --create-namespace`.
    let default = objects(documents(&render_chart(&bin, "{}")));
    assert!(!default.contains_key("Namespace/gilscope"));
    assert_eq!(default.len(), plain.len() - 1);
    // /metrics admits only the scrapers, on the agent's port.
    let policy = &plain["NetworkPolicy/gilscope"]["spec"];
    assert_eq!(policy["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(
        policy["ingress"][0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 9464}])
    );
    let open = objects(documents(&render_chart(
        &bin,
        r#"{"networkPolicy":{"enabled":false}}"#,
    )));
    assert!(!open.contains_key("NetworkPolicy/gilscope"));
}

#[test]
fn the_chart_adds_sys_admin_only_for_uprobes() {
    let Some(bin) = tools() else { return };
    let caps = |values: &str| {
        let objs = objects(documents(&render_chart(&bin, values)));
        objs["DaemonSet/gilscope"]["spec"]["template"]["spec"]["containers"][0]["securityContext"]
            ["capabilities"]["add"]
            .clone()
    };
    assert_eq!(
        caps("{}"),
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"])
    );
    assert_eq!(
        caps(r#"{"uprobes":{"enabled":true}}"#),
        serde_json::json!([
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "SYS_ADMIN"
        ])
    );
}

#[test]
fn the_chart_passes_helm_lint_strict() {
    let Some(bin) = tools() else { return };
    let out = run(Command::new(bin.join("python"))
        .arg(deploy().join("helm/render.py"))
        .arg(deploy().join("helm/gilscope"))
        .arg("--lint"));
    assert!(out.status.success(), "helm lint --strict:\n{}", text(&out));
}

/// The DaemonSet's plain `env` values, with Kubernetes' `$(VAR)` references expanded
/// from earlier entries (downward-API entries stand in as `<VAR>`).
fn daemonset_env(daemonset: &Value) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let list = daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    for entry in list {
        let name = entry["name"].as_str().expect("env name").to_string();
        let mut value = match entry["value"].as_str() {
            Some(v) => v.to_string(),
            None => format!("<{name}>"),
        };
        for (k, v) in &env {
            value = value.replace(&format!("$({k})"), v.as_str());
        }
        env.insert(name, value);
    }
    env
}

#[test]
fn the_configmap_and_env_are_a_config_gilscope_run_accepts() {
    use gilscope::cli::settings::{resolve, Flags};
    use gilscope::otel::export::Protocol;
    let plain = plain_objects();
    let daemonset = &plain["DaemonSet/gilscope"];
    let args = &daemonset["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "run");
    assert_eq!(args[2], "/etc/gilscope/gilscope.yaml");
    let raw = std::fs::read_to_string(deploy().join("manifests/configmap.yaml")).expect("read");
    let cm: Value = serde_norway::from_str(&raw).expect("configmap.yaml");
    let file = scratch("deploy-config").join("gilscope.yaml");
    std::fs::write(
        &file,
        cm["data"]["gilscope.yaml"].as_str().expect("gilscope.yaml"),
    )
    .expect("write config");

    let mut env = daemonset_env(daemonset);
    // /metrics on the pod's address, never every interface (issue 14).
    assert_eq!(env["GILSCOPE_LISTEN"], "<POD_IP>:9464");
    env.insert("GILSCOPE_LISTEN".into(), "10.244.1.7:9464".into());
    let flags = Flags::parse([std::ffi::OsString::from("--config"), file.into_os_string()])
        .expect("gilscope run --config FILE");
    let settings = resolve(&flags, &|k: &str| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("gilscope run refuses the deployed config: {e}"));
    let export = settings
        .export
        .expect("an export endpoint from the environment");
    assert_eq!(export.endpoint, env["OTEL_EXPORTER_OTLP_ENDPOINT"]);
    assert_eq!(export.protocol, Protocol::Grpc);
    assert_eq!(settings.interval, std::time::Duration::from_secs(10));
    assert_eq!(settings.agent_service_name, "gilscope");
    assert!(
        settings
            .agent_attributes
            .iter()
            .any(|(k, v)| k == "k8s.node.name" && v == "<NODE_NAME>"),
        "the node name reaches the agent's resource: {:?}",
        settings.agent_attributes
    );
    let listen = settings.listen.expect("the HTTP endpoints listen");
    assert_eq!(listen.addr.to_string(), "10.244.1.7:9464");
}
