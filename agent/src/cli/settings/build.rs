//! From resolved values to [`Settings`]: what depends on more than one setting
//! (export only with an endpoint, spans only when exporting, tenant from one
//! place, pod metadata in a pod) and what reads files (TLS certificates).

use std::time::Duration;

use crate::cli::settings::daemon::{Listen, Settings};
use crate::cli::settings::def::Origin;
use crate::cli::settings::defs::*;
use crate::cli::settings::layers::Layers;
use crate::error::RunError;
use crate::otel::export::spool::SpoolSettings;
use crate::otel::export::tls::{load_certificates, load_private_key, TlsSettings};
use crate::otel::export::{ExportSettings, Protocol};
use crate::otel::kube::KubeSettings;
use crate::otel::resource::TenantRule;
use crate::otel::spans::SpanSettings;
use crate::otel::Temporality;
use crate::watch::discover::{RulePatterns, Rules};

/// The daemon's settings from the resolved values. `env` is read for one
/// thing no setting gives: whether this runs in a pod.
pub fn settings(l: &Layers, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, RunError> {
    let per_thread = match l.value(&PER_THREAD)? {
        true => Some(l.value(&MAX_THREADS)?),
        false => None,
    };
    let kubernetes = kubernetes(l, env)?;
    let temporality = l.value(&TEMPORALITY)?;
    let export = export(l, temporality)?;
    let listen = l.get_with_source(&LISTEN)?.map(|(addr, source)| Listen {
        addr,
        source: source.name.clone(),
    });
    let (agent_service_name, agent_attributes) = agent_resource(l)?;
    // Nothing else shows what was measured: the summary on stdout.
    let nothing_else = export.is_none() && listen.is_none();
    Ok(Settings {
        interval: l.value(&INTERVAL)?,
        poll: l.value(&POLL)?,
        sample_hz: l.value(&SAMPLE_HZ)?,
        event_loops: l.get(&EVENT_LOOPS)?.unwrap_or(false),
        thread_capacity: l.get(&THREAD_CAPACITY)?,
        rules: rules(l)?,
        per_thread,
        tenant: tenant(l, kubernetes.as_ref())?,
        summary: l.get(&SUMMARY)?.unwrap_or(false) || nothing_else,
        spans: spans(l)?.filter(|_| export.is_some()),
        export,
        temporality,
        agent_service_name,
        agent_attributes,
        run_for: l.get(&DURATION)?,
        listen,
        byte_budget: l.get(&BYTE_BUDGET)?,
        lean_encoding: l.value(&ENCODING)?,
        max_delay: l.get(&MAX_DELAY)?.unwrap_or(Duration::ZERO),
        kubernetes,
    })
}

/// Discovery rules: the file's patterns, then the flags'.
fn rules(l: &Layers) -> Result<Rules, RunError> {
    Rules::new(
        &RulePatterns {
            include_exe: l.list(&INCLUDE_EXE)?,
            exclude_exe: l.list(&EXCLUDE_EXE)?,
            include_cmdline: l.list(&INCLUDE_CMDLINE)?,
            exclude_cmdline: l.list(&EXCLUDE_CMDLINE)?,
            include_cgroup: l.list(&INCLUDE_CGROUP)?,
            exclude_cgroup: l.list(&EXCLUDE_CGROUP)?,
        },
        l.get(&MIN_AGE)?.unwrap_or(Duration::ZERO),
    )
}

/// `tenant.id` from one place: a fixed value, a target's resource attribute
/// (the stronger source wins), or the pod's namespace label.
fn tenant(l: &Layers, kube: Option<&KubeSettings>) -> Result<Option<TenantRule>, RunError> {
    let rule = match (
        l.get_with_source(&TENANT)?,
        l.get_with_source(&TENANT_FROM)?,
    ) {
        (Some((_, a)), Some((_, b))) if a.origin == b.origin => {
            return Err(match a.origin {
                Origin::File => RunError::setting(
                    l.file_key("tenant"),
                    "give exactly one of `value` or `resource_attribute`",
                ),
                _ => RunError::setting(&a.name, format!("give {} or {}, not both", a.name, b.name)),
            });
        }
        (Some((_, a)), Some((key, b))) if b.origin > a.origin => {
            Some(TenantRule::ResourceAttribute(key))
        }
        (Some((value, _)), _) => Some(TenantRule::Fixed(value)),
        (None, Some((key, _))) => Some(TenantRule::ResourceAttribute(key)),
        (None, None) => None,
    };
    match kube.and_then(|k| k.tenant_label.clone()) {
        Some(_) if rule.is_some() => Err(RunError::setting(
            l.file_key("kubernetes.tenant_label"),
            "tenant.id would come from two places: give `tenant`/--tenant/--tenant-from \
             or the namespace label, not both",
        )),
        Some(label) => Ok(Some(TenantRule::NamespaceLabel(label))),
        None => Ok(rule),
    }
}

/// Pod metadata: asked for, or running in a pod and not turned off.
fn kubernetes(
    l: &Layers,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<KubeSettings>, RunError> {
    let enabled = l.get(&KUBERNETES)?;
    let in_pod = env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.trim().is_empty());
    let asked = enabled == Some(true);
    let wanted = asked || (in_pod && enabled != Some(false));
    if !wanted {
        return Ok(None);
    }
    let Some(node_name) = l.get(&NODE_NAME)?.filter(|n| !n.trim().is_empty()) else {
        if asked {
            return Err(RunError::setting(
                l.file_key("kubernetes.node_name"),
                "Kubernetes metadata needs this node's name: set NODE_NAME from the \
                 downward API (fieldRef spec.nodeName) or kubernetes.node_name",
            ));
        }
        tracing::warn!(
            "running in a pod but NODE_NAME is not set: no Kubernetes metadata \
             (set NODE_NAME from the downward API fieldRef spec.nodeName)"
        );
        return Ok(None);
    };
    let (label, source) = l
        .get_with_source(&TENANT_LABEL)?
        .map(|(label, source)| (label, source.origin))
        .unzip();
    // Naming a label switches tenant-from-namespace on.
    let label_given = source.is_some_and(|o| o > Origin::Default);
    let on = l.get(&TENANT_FROM_NAMESPACE)?.unwrap_or(label_given);
    Ok(Some(KubeSettings {
        node_name: node_name.trim().to_string(),
        tenant_label: label.filter(|_| on),
        api_url: None,
    }))
}

/// The exporter: on when an endpoint is given.
fn export(l: &Layers, temporality: Temporality) -> Result<Option<ExportSettings>, RunError> {
    let protocol = l.value(&PROTOCOL)?;
    let Some((url, source)) = l.get_with_source(&ENDPOINT)? else {
        return Ok(None);
    };
    // The signal-specific variable is a full URL; everything else is a base.
    let full = source.name == "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
    let tls = match url.starts_with("https://") {
        true => Some(tls(l)?),
        false => None,
    };
    let spool = match l.get(&SPOOL_DIR)? {
        Some(dir) => Some(SpoolSettings {
            dir,
            max_bytes: l.value(&SPOOL_MAX_BYTES)?,
        }),
        None => None,
    };
    let traces_endpoint = match (l.get(&TRACES_ENDPOINT)?, protocol) {
        (Some(t), _) => t,
        (None, Protocol::Grpc) => url.clone(),
        (None, Protocol::HttpProtobuf) => http_traces_url(&url),
    };
    let endpoint = match protocol {
        Protocol::HttpProtobuf if !full => http_metrics_url(&url),
        _ => url,
    };
    Ok(Some(ExportSettings {
        endpoint,
        traces_endpoint,
        protocol,
        headers: l.list(&HEADERS)?,
        timeout: l.value(&TIMEOUT)?,
        compression: l.value(&COMPRESSION)?,
        temporality,
        batch_points: l.value(&BATCH_SIZE)?,
        queue_requests: l.value(&QUEUE_SIZE)?,
        spool,
        tls,
    }))
}

/// The HTTP metrics URL: a base endpoint gets `/v1/metrics` appended.
fn http_metrics_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/metrics") {
        base.to_string()
    } else {
        format!("{base}/v1/metrics")
    }
}

/// The HTTP traces URL next to a metrics URL or base endpoint.
fn http_traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1/metrics").unwrap_or(base);
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The TLS files, read now so a missing one stops the daemon at startup. Spans go
/// over the same connection settings, so the `TRACES_` variants are not read.
fn tls(l: &Layers) -> Result<TlsSettings, RunError> {
    let ca_pem = match l.get_with_source(&CERTIFICATE)? {
        Some((path, source)) => Some(load_certificates(&source.name, &path)?),
        None => None,
    };
    let client = match (
        l.get_with_source(&CLIENT_CERTIFICATE)?,
        l.get_with_source(&CLIENT_KEY)?,
    ) {
        (Some((cert, cs)), Some((key, ks))) => Some((
            load_certificates(&cs.name, &cert)?,
            load_private_key(&ks.name, &key)?,
        )),
        (Some((_, source)), None) | (None, Some((_, source))) => {
            return Err(RunError::setting(
                &source.name,
                "mutual TLS needs both a client certificate and its key \
                 (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)",
            ))
        }
        (None, None) => None,
    };
    Ok(TlsSettings { ca_pem, client })
}

/// Contention spans, unless a flag, the file or `OTEL_TRACES_EXPORTER=none` turns them off.
fn spans(l: &Layers) -> Result<Option<SpanSettings>, RunError> {
    let settings = SpanSettings {
        threshold: l.value(&SPAN_THRESHOLD)?,
        rate_per_second: l.value(&SPAN_RATE)?,
    };
    let on = l.value(&SPANS)? && l.value(&TRACES_EXPORTER)?.trim() != "none";
    Ok(on.then_some(settings))
}

/// The agent's own `service.name` and attributes.
fn agent_resource(l: &Layers) -> Result<(String, Vec<(String, String)>), RunError> {
    let mut attributes = l.get(&RESOURCE_ATTRIBUTES)?.unwrap_or_default();
    let name = l
        .get(&SERVICE_NAME)?
        .or_else(|| {
            attributes
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "gilscope".to_string());
    attributes.retain(|(k, _)| k != "service.name");
    Ok((name, attributes))
}
