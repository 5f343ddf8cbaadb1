//! Settings of `gilscope run`: defaults, a YAML file, environment variables
//! (the standard `OTEL_*` ones and `GILSCOPE_*`) and flags, each stronger than
//! the one before.
//!
//! Every setting is defined once (`defs`: flag, variables, file key, default,
//! help, parser); the command line (`flags`), the file reader (`file`), the
//! resolution (`layers`) and the README table ([`table`]) are made from those
//! definitions. Everything here is parsing and checking; nothing is started. A bad
//! value is reported once, naming where it came from (`--interval`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `gilscope.yaml: export.compression`), so the
//! daemon never starts half-configured.

mod build;
mod daemon;
mod def;
mod defs;
mod file;
mod flags;
mod layers;
mod parse;
pub mod table;

pub use daemon::{Listen, Settings, DEFAULT_BATCH_POINTS};
pub use file::{parse_file, read_file, FileValues};
pub use flags::Flags;
pub use parse::{parse_bytes, parse_duration};

use crate::error::RunError;

/// Resolves the settings from the flags, the file `--config` names and `env`.
pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, RunError> {
    let file = match flags.config() {
        Some(path) => read_file(&path)?,
        None => FileValues::none(),
    };
    resolve_parsed(flags, file, env)
}

/// [`resolve`] with the config file already parsed: public so the fuzz harness
/// can feed file text without a file.
pub fn resolve_parsed(
    flags: &Flags,
    file: FileValues,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, RunError> {
    let layers = layers::Layers::gather(flags, file, env)?;
    build::settings(&layers, env)
}

#[cfg(test)]
mod tests {
    /// Found by fuzzing (fuzz/, target `config`): a finite duration too long for
    /// a `Duration` panicked in `Duration::from_secs_f64` and stopped the daemon.
    #[test]
    fn a_duration_too_long_for_a_duration_is_an_error_not_a_panic() {
        let huge = format!("{}h", "1".repeat(40));
        let err = super::parse_duration(&huge).expect_err("too long");
        assert!(err.contains("too long"), "{err}");
        let env = |key: &str| (key == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "1e300".to_string());
        let err = super::resolve(&super::Flags::default(), &env).expect_err("too long");
        assert!(err.to_string().contains("too long"), "{err}");
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/config/min-age-overflow"
        ))
        .expect("fixture");
        // The fuzz input: YAML up to the first NUL (environment entries follow).
        let text = String::from_utf8_lossy(&data);
        let yaml = text.split('\0').next().unwrap_or_default();
        let file = super::parse_file(std::path::Path::new("f.yaml"), yaml).expect("yaml");
        assert!(super::resolve_parsed(&super::Flags::default(), file, &|_| None).is_err());
    }

    use super::*;
    use crate::otel::export::spool::{SpoolSettings, DEFAULT_MAX_BYTES};
    use crate::otel::export::tls::TlsSettings;
    use crate::otel::export::{Compression, Protocol};
    use crate::otel::resource::TenantRule;
    use crate::otel::spans::SpanSettings;
    use crate::otel::Temporality;
    use std::time::Duration;

    fn args(given: &[&str]) -> Flags {
        Flags::parse(given).expect("flags")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_file(text: &str) -> Result<Settings, RunError> {
        let dir = std::env::temp_dir().join(format!("gilscope-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("c{}.yaml", text.len()));
        std::fs::write(&path, text).expect("write config");
        let flags = Flags::parse([std::ffi::OsString::from("--config"), path.into_os_string()])
            .expect("flags");
        resolve(&flags, &no_env)
    }

    #[test]
    fn thread_capacity_comes_from_the_flag_then_the_file_and_is_bounded() {
        assert_eq!(
            resolve(&Flags::default(), &no_env)
                .expect("defaults")
                .thread_capacity,
            None,
            "the built-in size unless asked"
        );
        assert_eq!(
            with_file("thread_capacity: 200000\n")
                .expect("file")
                .thread_capacity,
            Some(200_000)
        );
        let flag = args(&["--thread-capacity", "4"]);
        assert_eq!(
            resolve(&flag, &no_env).expect("flag").thread_capacity,
            Some(4)
        );
        for bad in ["thread_capacity: 0\n", "thread_capacity: 100000000\n"] {
            let err = with_file(bad).expect_err(bad).to_string();
            assert!(
                err.contains("thread_capacity") && err.contains("out of range"),
                "{err}"
            );
        }
    }

    #[test]
    fn kubernetes_is_on_in_a_pod_and_tenant_from_namespace_only_when_asked() {
        let in_pod = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_string()),
            "NODE_NAME" => Some("node-a".to_string()),
            _ => None,
        };
        let s = resolve(&Flags::default(), &in_pod).expect("in a pod");
        let k = s.kubernetes.expect("on by default in a pod");
        assert_eq!(k.node_name, "node-a");
        assert_eq!(
            k.tenant_label, None,
            "tenant from namespaces is off by default"
        );
        assert_eq!(s.tenant, None);
        assert!(resolve(&Flags::default(), &no_env)
            .expect("outside")
            .kubernetes
            .is_none());
        // Asked for without a node name: a configuration error, not a silent no-op.
        let asked = args(&["--kubernetes"]);
        assert!(resolve(&asked, &no_env).is_err());
        let s = with_file(
            "kubernetes:\n  enabled: true\n  node_name: n1\n  tenant_from_namespace: true\n",
        )
        .expect("tenant on");
        assert_eq!(
            s.tenant,
            Some(TenantRule::NamespaceLabel("tenant".into())),
            "default label name"
        );
        let s = with_file("kubernetes:\n  enabled: true\n  node_name: n1\n  tenant_label: team\n")
            .expect("own label");
        assert_eq!(s.tenant, Some(TenantRule::NamespaceLabel("team".into())));
        assert!(with_file(
            "tenant:\n  value: acme\nkubernetes:\n  enabled: true\n  node_name: n1\n  tenant_label: team\n"
        )
        .is_err());
    }

    #[test]
    fn nothing_configured_means_a_summary_on_stdout_every_ten_seconds() {
        let s = resolve(&Flags::default(), &no_env).expect("defaults");
        assert!(s.export.is_none());
        assert!(s.summary);
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.agent_service_name, "gilscope");
    }

    #[test]
    fn otel_variables_configure_the_exporter() {
        let env = |k: &str| -> Option<String> {
            match k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".into()),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
                "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=s%3Dcret,x-team=py".into()),
                "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("2500".into()),
                "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("zstd".into()),
                "OTEL_METRIC_EXPORT_INTERVAL" => Some("1000".into()),
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE" => Some("Delta".into()),
                "OTEL_SERVICE_NAME" => Some("node-agent".into()),
                "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=prod".into()),
                _ => None,
            }
        };
        let s = resolve(&Flags::default(), &env).expect("env");
        let e = s.export.expect("exporting");
        assert_eq!(e.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(e.traces_endpoint, "http://collector:4318/v1/traces");
        assert_eq!(e.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            e.headers,
            vec![
                ("api-key".to_string(), "s=cret".to_string()),
                ("x-team".to_string(), "py".to_string())
            ]
        );
        assert_eq!(e.timeout, Duration::from_millis(2500));
        assert_eq!(e.compression, Compression::Zstd);
        assert_eq!(e.temporality, Temporality::Delta);
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.agent_service_name, "node-agent");
        assert!(!s.summary);
    }

    #[test]
    fn flags_beat_the_environment() {
        let env = |k: &str| (k == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "1000".to_string());
        let flags = args(&["--interval", "3s", "--endpoint", "http://localhost:4317"]);
        let s = resolve(&flags, &env).expect("flags");
        assert_eq!(s.interval, Duration::from_secs(3));
        let e = s.export.expect("exporting");
        assert_eq!(e.protocol, Protocol::Grpc);
        assert_eq!(e.compression, Compression::Gzip);
    }

    #[test]
    fn a_config_file_sets_rules_tenant_and_export() {
        let s = with_file(
            "interval: 2s\n\
             export:\n  endpoint: http://vm:8428/opentelemetry\n  protocol: http/protobuf\n\
             include:\n  executables: ['*/python3*']\n\
             exclude:\n  cmdline: ['pip install']\n\
             min_age: 1s\n\
             tenant:\n  value: acme\n\
             per_thread:\n  enabled: true\n  max_threads: 5\n",
        )
        .expect("valid file");
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(
            s.export.expect("export").endpoint,
            "http://vm:8428/opentelemetry/v1/metrics"
        );
        assert_eq!(s.tenant, Some(TenantRule::Fixed("acme".into())));
        assert_eq!(s.per_thread, Some(5));
        assert_eq!(s.rules.min_age, Duration::from_secs(1));
        assert_eq!(s.byte_budget, None);
        assert!(s.lean_encoding);
        let s = with_file("export:\n  encoding: standard\n").expect("standard");
        assert!(!s.lean_encoding);
        let err = with_file("export:\n  encoding: tiny\n").expect_err("tiny");
        assert!(err.to_string().contains("lean or standard"), "{err}");
    }

    #[test]
    fn the_byte_budget_comes_from_flag_environment_or_file() {
        let s = with_file("export:\n  byte_budget_per_minute: 64KiB\n").expect("file");
        assert_eq!(s.byte_budget, Some(65536));
        let env = |k: &str| (k == "GILSCOPE_BYTE_BUDGET").then(|| "2KB".to_string());
        assert_eq!(
            resolve(&Flags::default(), &env).expect("env").byte_budget,
            Some(2000)
        );
        let flags = args(&["--byte-budget", "1000"]);
        assert_eq!(resolve(&flags, &env).expect("flag").byte_budget, Some(1000));
        let err = resolve(&args(&["--byte-budget", "lots"]), &no_env).expect_err("not a number");
        assert!(err.to_string().starts_with("--byte-budget:"), "{err}");
    }

    #[test]
    fn a_misspelled_key_is_named_in_the_error() {
        let err = with_file("intervall: 2s\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("intervall"), "{text}");
        assert!(text.contains("is not valid"), "{text}");
    }

    #[test]
    fn bad_values_name_their_source() {
        let err =
            with_file("export:\n  endpoint: http://x:4317\n  compression: lz4\n").expect_err("lz4");
        assert!(err.to_string().contains("export.compression"), "{err}");
        assert!(err.to_string().contains("gzip, zstd or none"), "{err}");
        let err = with_file("include:\n  cmdline: ['(unclosed']\n").expect_err("regex");
        assert!(err.to_string().contains("(unclosed"), "{err}");
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_string());
        let flags = args(&["--endpoint", "http://x:4318"]);
        let err = resolve(&flags, &env).expect_err("json");
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{err}"
        );
        let tls = args(&["--endpoint", "https://collector:4317"]);
        let bad_ca =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_CERTIFICATE").then(|| "/nonexistent/ca.pem".into());
        let err = resolve(&tls, &bad_ca).expect_err("missing CA");
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        let half =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_CLIENT_KEY").then(|| "/nonexistent/key.pem".into());
        let err = resolve(&tls, &half).expect_err("key without cert");
        assert!(
            err.to_string().contains("both a client certificate"),
            "{err}"
        );
        let https = resolve(&tls, &no_env).expect("https with the built-in roots");
        assert_eq!(
            https.export.and_then(|e| e.tls),
            Some(TlsSettings::default())
        );
        let err = resolve(&flags, &env).expect_err("json");
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{err}"
        );
    }

    #[test]
    fn the_listen_address_comes_from_flag_environment_or_file() {
        assert!(resolve(&Flags::default(), &no_env)
            .expect("defaults")
            .listen
            .is_none());
        let env = |k: &str| (k == "GILSCOPE_LISTEN").then(|| "127.0.0.1:9464".to_string());
        let s = resolve(&Flags::default(), &env).expect("env");
        let l = s.listen.expect("listening");
        assert_eq!(l.addr, "127.0.0.1:9464".parse().expect("addr"));
        assert_eq!(l.source, "GILSCOPE_LISTEN");
        // Serving /metrics is a way to show the figures: no summary on stdout then.
        assert!(!s.summary);
        let flags = args(&["--listen", "0.0.0.0:9000"]);
        let l = resolve(&flags, &env)
            .expect("flag")
            .listen
            .expect("listening");
        assert_eq!((l.addr.port(), l.source.as_str()), (9000, "--listen"));
        let s = with_file("listen: '[::]:9464'\n").expect("file");
        assert_eq!(s.listen.expect("listening").addr.port(), 9464);
        for bad in ["9464", "0.0.0.0", "0.0.0.0:http", "0.0.0.0:70000"] {
            let flags = args(&["--listen", bad]);
            let err = resolve(&flags, &no_env).expect_err(bad);
            assert!(err.to_string().starts_with("--listen: "), "{err}");
            assert!(err.to_string().contains("host:port"), "{err}");
        }
    }

    #[test]
    fn spans_are_on_when_exporting_and_layer_flags_over_the_file() {
        assert_eq!(
            resolve(&Flags::default(), &no_env).expect("defaults").spans,
            None
        );
        let s = with_file("export:\n  endpoint: http://x:4317\n").expect("file");
        assert_eq!(
            s.spans,
            Some(SpanSettings {
                threshold: Duration::from_millis(50),
                rate_per_second: 10.0
            })
        );
        let text =
            "export:\n  endpoint: http://x:4317\nspans:\n  threshold: 20ms\n  rate_per_second: 2\n";
        let s = with_file(text).expect("file");
        assert_eq!(
            s.spans,
            Some(SpanSettings {
                threshold: Duration::from_millis(20),
                rate_per_second: 2.0
            })
        );
        let span_flags = [
            "--endpoint",
            "http://x:4317",
            "--span-threshold",
            "100ms",
            "--span-rate",
            "0.5",
        ];
        let flags = args(&span_flags);
        let s = resolve(&flags, &no_env).expect("flags");
        assert_eq!(
            s.spans,
            Some(SpanSettings {
                threshold: Duration::from_millis(100),
                rate_per_second: 0.5
            })
        );
        let off = |k: &str| (k == "OTEL_TRACES_EXPORTER").then(|| "none".to_string());
        assert_eq!(resolve(&flags, &off).expect("env").spans, None);
        // The same flags, and --no-spans over them.
        let no = args(&[&span_flags[..], &["--no-spans"]].concat());
        assert_eq!(resolve(&no, &no_env).expect("flag").spans, None);
        let s = with_file("export:\n  endpoint: http://x:4317\nspans:\n  enabled: false\n")
            .expect("file");
        assert_eq!(s.spans, None);
    }

    #[test]
    fn bad_span_settings_name_their_source() {
        let err = with_file("spans:\n  threshold: 100us\n").expect_err("unit");
        assert!(err.to_string().contains("spans.threshold"), "{err}");
        let err = with_file("spans:\n  threshold: 0.5ms\n").expect_err("too short");
        assert!(err.to_string().contains("below 1ms"), "{err}");
        let err = with_file("spans:\n  rate_per_second: 0\n").expect_err("zero rate");
        assert!(err.to_string().contains("spans.rate_per_second"), "{err}");
        assert!(err.to_string().contains("enabled: false"), "{err}");
        let err = with_file("spans:\n  rate: 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("rate"), "{err}");
    }

    #[test]
    fn max_delay_is_zero_unless_asked_for() {
        let flags = args(&["--endpoint", "http://x:4317"]);
        assert_eq!(
            resolve(&flags, &no_env).expect("default").max_delay,
            Duration::ZERO
        );
        let s = with_file("export:\n  endpoint: http://x:4317\n  max_delay: 1m\n").expect("file");
        assert_eq!(s.max_delay, Duration::from_secs(60));
        let f = args(&["--endpoint", "http://x:4317", "--max-delay", "5s"]);
        assert_eq!(
            resolve(&f, &no_env).expect("flag").max_delay,
            Duration::from_secs(5)
        );
        let err = with_file("export:\n  max_delay: soon\n").expect_err("bad");
        assert!(err.to_string().contains("export.max_delay"), "{err}");
    }

    #[test]
    fn the_spool_is_off_unless_a_directory_is_given() {
        let flags = args(&["--endpoint", "http://x:4317"]);
        let s = resolve(&flags, &no_env).expect("no spool");
        assert_eq!(s.export.and_then(|e| e.spool), None);
        let env = |k: &str| (k == "GILSCOPE_SPOOL_DIR").then(|| "/var/lib/gilscope".to_string());
        let s = resolve(&flags, &env).expect("env spool");
        assert_eq!(
            s.export.and_then(|e| e.spool),
            Some(SpoolSettings {
                dir: "/var/lib/gilscope".into(),
                max_bytes: DEFAULT_MAX_BYTES
            })
        );
        let s = with_file(
            "export:\n  endpoint: http://x:4317\n  spool:\n    dir: /tmp/s\n    max_bytes: 64MiB\n",
        )
        .expect("file spool");
        assert_eq!(
            s.export.and_then(|e| e.spool).map(|s| s.max_bytes),
            Some(64 * 1024 * 1024)
        );
        let err = with_file(
            "export:\n  endpoint: http://x:4317\n  spool:\n    dir: /tmp/s\n    max_bytes: lots\n",
        )
        .expect_err("bad size");
        assert!(err.to_string().contains("export.spool.max_bytes"), "{err}");
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1.5MB"), Ok(1_500_000));
        assert!(parse_bytes("64k").is_err(), "KB or KiB?");
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn tenant_comes_from_one_place_the_stronger_source_first() {
        let s = with_file("tenant:\n  resource_attribute: team\n").expect("file");
        assert_eq!(s.tenant, Some(TenantRule::ResourceAttribute("team".into())));
        let dir = std::env::temp_dir().join(format!("gilscope-tenant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t.yaml");
        std::fs::write(&path, "tenant:\n  resource_attribute: team\n").expect("write");
        let config = path.display().to_string();
        let s = resolve(&args(&["--config", &config, "--tenant", "acme"]), &no_env).expect("flag");
        assert_eq!(s.tenant, Some(TenantRule::Fixed("acme".into())));
        let err = with_file("tenant:\n  value: a\n  resource_attribute: b\n").expect_err("both");
        assert!(
            err.to_string().contains(": tenant: give exactly one of"),
            "{err}"
        );
        let err = resolve(&args(&["--tenant", "a", "--tenant-from", "b"]), &no_env)
            .expect_err("both flags");
        assert!(err.to_string().starts_with("--tenant: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `OTEL_TRACES_EXPORTER` can only turn spans off: `otlp` does not undo the file's `false`.
    #[test]
    fn the_traces_exporter_variable_only_turns_spans_off() {
        let text = "export:\n  endpoint: http://x:4317\nspans:\n  enabled: false\n";
        let dir = std::env::temp_dir().join(format!("gilscope-spans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("s.yaml");
        std::fs::write(&path, text).expect("write");
        let flags = args(&["--config", &path.display().to_string()]);
        let otlp = |k: &str| (k == "OTEL_TRACES_EXPORTER").then(|| "otlp".to_string());
        assert_eq!(resolve(&flags, &otlp).expect("otlp").spans, None);
        let on = args(&["--endpoint", "http://x:4317"]);
        assert!(resolve(&on, &otlp).expect("otlp").spans.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
