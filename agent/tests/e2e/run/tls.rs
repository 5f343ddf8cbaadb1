//! `gilscope run` over TLS to real receivers, with a throwaway CA made by the
//! `openssl` CLI: OTLP/HTTP into VictoriaMetrics serving HTTPS itself, and
//! OTLP/gRPC through socat (a real TLS terminator that also demands a client
//! certificate: mutual TLS) into rotel. A wrong CA fails with one warning per
//! interval and counted drops; a bad CA file is one line at startup.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::daemon::*;
use crate::common::receivers::*;
use crate::common::*;
use serde_json::Value;

/// A CA and the certificates it signs, in a scratch directory.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA `ca`, a server certificate for 127.0.0.1 and a client certificate, and
    /// a second CA `other` that signed nothing here. None if openssl is missing.
    fn new(tag: &str) -> Option<Self> {
        if Command::new("openssl").arg("version").output().is_err() {
            missing("no openssl CLI: run tests/setup.sh");
            return None;
        }
        let dir = scratch(&format!("pki-{tag}"));
        for ca in ["ca", "other"] {
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=gilscope test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        for (leaf, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{leaf}.ext")), ext).expect("ext");
            openssl(
                &dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN=gilscope test {leaf}"),
                    "-keyout",
                    &format!("{leaf}.key"),
                    "-out",
                    &format!("{leaf}.csr"),
                ],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{leaf}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{leaf}.pem"),
                    "-extfile",
                    &format!("{leaf}.ext"),
                ],
            );
        }
        Some(Self { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// VictoriaMetrics serving HTTPS with the server certificate.
fn start_vm_tls(vm: &Path, pki: &Pki, tag: &str) -> (Receiver, u16) {
    let port = free_port();
    let dir = scratch(tag);
    let child = Command::new(vm)
        .arg(format!("-storageDataPath={}", dir.join("vm").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-tls")
        .arg(format!("-tlsCertFile={}", pki.path("server.pem")))
        .arg(format!("-tlsKeyFile={}", pki.path("server.key")))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vm.log")).expect("log"))
        .spawn()
        .expect("start victoria-metrics");
    let running = Receiver(Running(child), dir);
    wait_for_port(port, "victoria-metrics (https)");
    (running, port)
}

/// One PromQL query over HTTPS, trusting the test CA.
fn promql_tls(pki: &Pki, port: u16, query: &str) -> Option<f64> {
    let ca = std::fs::read(pki.dir.join("ca.pem")).expect("ca");
    let roots: Vec<_> = ureq::tls::parse_pem(&ca)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build(),
        )
        .build()
        .into();
    let body = agent
        .get(format!("https://127.0.0.1:{port}/api/v1/query"))
        .query("query", query)
        .query("latency_offset", "1ms")
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_else(|e| panic!("query {query}: {e}"));
    let doc: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    doc["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn workload_process(python: &Path, seconds: u32, service: &str, marker: &str) -> Running {
    Running(
        Command::new(python)
            .args([
                &workload("cpu_threads.py"),
                "2",
                &seconds.to_string(),
                marker,
            ])
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload"),
    )
}

/// The export totals the daemon logged at shutdown (it runs with `-v` here).
fn totals(stderr: &str) -> ExportTotals {
    export_totals(stderr).unwrap_or_else(|| panic!("no export totals logged:\n{stderr}"))
}

#[test]
fn https_into_victoria_metrics_trusting_the_given_ca() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let tag = unique_tag("https");
    let Some(pki) = Pki::new(&tag) else { return };
    let _machine = serial();
    let (_vm, port) = start_vm_tls(&vm, &pki, &tag);
    let service = format!("gil-tls-{tag}");
    let _work = workload_process(&python, 12, &service, &tag);
    let (code, stderr) = run_for(
        daemon()
            .args([
                "--endpoint",
                &format!("https://127.0.0.1:{port}/opentelemetry"),
            ])
            .args(["--protocol", "http/protobuf", "--include-cmdline", &tag])
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem"))
            .arg("-v"),
        5,
    );
    assert_eq!(code, Some(0), "{stderr}");
    std::thread::sleep(Duration::from_secs(4));
    let n = promql_tls(
        &pki,
        port,
        &format!("count_over_time({{__name__=\"cpython.gil.utilization\",service.name=\"{service}\"}}[5m])"),
    );
    assert!(
        n.unwrap_or(0.0) >= 4.0,
        "{n:?} intervals over HTTPS:\n{stderr}"
    );
    assert_eq!(totals(&stderr).points_dropped, 0, "{stderr}");
    assert!(!stderr.contains("failing"), "{stderr}");
}

#[test]
fn grpc_with_mutual_tls_through_a_tls_terminator_into_rotel() {
    if !can_use_bpf() {
        return;
    }
    let (Some((rotel, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    if Command::new("socat").arg("-V").output().is_err() {
        missing("no socat: run tests/setup.sh");
        return;
    }
    let tag = unique_tag("grpctls");
    let Some(pki) = Pki::new(&tag) else { return };
    let _machine = serial();
    let (_vm, vm_port) = start_vm(&vm, &tag);
    let (_rotel, grpc, _log) = start_rotel(&rotel, vm_port, &tag);
    // socat terminates TLS, requires a client certificate signed by the CA, and
    // passes the bytes (HTTP/2, no ALPN) to rotel's gRPC port.
    let tls_port = free_port();
    let _socat = Running(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem")
            ))
            .arg(format!("TCP:127.0.0.1:{grpc}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat"),
    );
    wait_for_port(tls_port, "socat");
    let service = format!("gil-tls-{tag}");
    let _work = workload_process(&python, 12, &service, &tag);
    let run = |with_client_cert: bool| {
        let mut cmd = daemon();
        cmd.args(["--endpoint", &format!("https://127.0.0.1:{tls_port}")])
            .args(["--protocol", "grpc", "--include-cmdline", &tag])
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem"));
        if with_client_cert {
            cmd.env(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                pki.path("client.pem"),
            )
            .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client.key"));
        }
        run_for(cmd.arg("-v"), 4)
    };
    let (code, stderr) = run(true);
    assert_eq!(code, Some(0), "{stderr}");
    std::thread::sleep(Duration::from_secs(4));
    let n = scalar(&promql(
        vm_port,
        &format!("count_over_time({{__name__=\"cpython.gil.utilization\",service.name=\"{service}\"}}[5m])"),
    ));
    assert!(
        n.unwrap_or(0.0) >= 3.0,
        "{n:?} intervals over gRPC+mTLS:\n{stderr}"
    );
    assert_eq!(totals(&stderr).points_dropped, 0, "{stderr}");
    // Without the client certificate the terminator refuses: failing, counted.
    let (code, stderr) = run(false);
    assert_eq!(code, Some(0), "{stderr}");
    let warnings = stderr.lines().filter(|l| l.contains("failing")).count();
    // 4 s of run and up to 5 s of shutdown grace, one message per 1 s interval at most
    assert!(
        (1..=10).contains(&warnings),
        "{warnings} warnings:\n{stderr}"
    );
    let ExportTotals {
        points_sent: sent,
        points_dropped: dropped,
        ..
    } = totals(&stderr);
    assert!(sent == 0 && dropped > 0, "{stderr}");
    // Why: the server's alert when it is read before the connection's reset,
    // else the hint that a client certificate may be needed and none is set.
    assert!(
        stderr.contains("CertificateRequired")
            || stderr.contains("if it requires a client certificate, none is configured"),
        "says why: {stderr}"
    );
}

#[test]
fn a_wrong_ca_is_one_warning_per_interval_and_counted_drops() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let tag = unique_tag("wrongca");
    let Some(pki) = Pki::new(&tag) else { return };
    let _machine = serial();
    let (_vm, port) = start_vm_tls(&vm, &pki, &tag);
    let _work = workload_process(&python, 10, "gil-wrong-ca", &tag);
    for protocol in ["http/protobuf", "grpc"] {
        let path = if protocol == "grpc" {
            ""
        } else {
            "/opentelemetry"
        };
        let (code, stderr) = run_for(
            daemon()
                .args(["--endpoint", &format!("https://127.0.0.1:{port}{path}")])
                .args(["--protocol", protocol, "--include-cmdline", &tag])
                .env("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("other.pem"))
                .arg("-v"),
            5,
        );
        assert_eq!(code, Some(0), "{stderr}");
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("failing")).collect();
        assert!(
            // 5 s of run and up to 5 s of shutdown grace, one message per 1 s interval at most
            (1..=11).contains(&warnings.len()),
            "{protocol}: expected about one warning per interval, got {}:\n{stderr}",
            warnings.len()
        );
        assert!(
            warnings[0].to_lowercase().contains("certificate"),
            "{protocol}: the warning says it is the certificate: {}",
            warnings[0]
        );
        let ExportTotals {
            points_sent: sent,
            points_dropped: dropped,
            ..
        } = totals(&stderr);
        assert!(
            sent == 0 && dropped > 0,
            "{protocol}: nothing sent, all counted as dropped:\n{stderr}"
        );
    }
}

#[test]
fn bad_tls_files_and_an_unwritable_spool_are_one_line_at_startup() {
    let tag = unique_tag("badtls");
    let dir = scratch(&tag);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    // (environment, flags, what the one line must say)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<String>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "/nonexistent/ca.pem".into(),
            )],
            vec![],
            "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem",
        ),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                garbage.display().to_string(),
            )],
            vec![],
            "holds no PEM certificate",
        ),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                garbage.display().to_string(),
            )],
            vec![],
            "both a client certificate and its key",
        ),
        (
            vec![],
            // A regular file where the spool directory should be.
            vec![
                "--spool-dir".into(),
                garbage.join("spool").display().to_string(),
            ],
            "must be a writable directory",
        ),
    ];
    for (env, args, want) in cases {
        let mut cmd = daemon();
        cmd.args(["--endpoint", "https://127.0.0.1:9", "--duration", "1s"])
            .args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run gilscope");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{want}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(want), "expected '{want}' in: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
