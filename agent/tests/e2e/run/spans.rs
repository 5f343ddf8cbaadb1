//! `gilscope run` exports one OTLP span per GIL contention episode: checked end
//! to end through rotel (an OTLP collector that logs every span it receives)
//! and VictoriaMetrics (the episode counters), against the truths of the
//! 4-thread CPU workload: its waiters and holders are its own `cpu-N` threads,
//! each span's wait is at least the threshold, the resource is the process's,
//! and the rate limit lets through at most its rate and counts the rest. The
//! musl build (condvar-wait probe) sends the same spans.
//!
//! Threshold: the workload's typical GIL wait is about 3 x 5 ms (three other
//! threads each run a switch interval); a wait of 50 ms (the default) needs
//! about nine lost hand-overs in a row, a few percent of the waits, which on a
//! quiet machine can be only a handful in a few seconds. The tests use 20 ms
//! (dozens of episodes a second anywhere) and 2^25 ns (33.6 ms, a bucket bound
//! of the kernel's log2 histogram, so the exported wait histogram counts the
//! same waits the episodes are made of).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::common::daemon::*;
use crate::common::receivers::*;
use crate::common::*;

/// One span as rotel's detailed debug log shows it, with its resource.
#[derive(Debug, Default, Clone)]
struct SeenSpan {
    resource: BTreeMap<String, String>,
    attributes: BTreeMap<String, String>,
    name: String,
    kind: String,
    start_ns: u64,
    end_ns: u64,
}

/// Parses rotel's `--debug-log traces --debug-log-verbosity detailed` output
/// (metrics blocks in the same log are skipped).
fn parse_spans(log: &str) -> Vec<SeenSpan> {
    let mut spans: Vec<SeenSpan> = Vec::new();
    let mut resource: Option<BTreeMap<String, String>> = None;
    let mut current: Option<SeenSpan> = None;
    for line in log.lines() {
        let line = line.trim();
        if line.starts_with("ResourceSpans #") || line.starts_with("ResourceMetrics #") {
            spans.extend(current.take());
            resource = line
                .starts_with("ResourceSpans")
                .then(BTreeMap::<String, String>::new);
            continue;
        }
        let Some(res) = resource.as_mut() else {
            continue;
        };
        if line.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(SeenSpan {
                resource: res.clone(),
                ..SeenSpan::default()
            });
        } else if let Some(kv) = line.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else {
                continue;
            };
            match current.as_mut() {
                Some(s) => s.attributes.insert(k.to_string(), v.to_string()),
                None => res.insert(k.to_string(), v.to_string()),
            };
        } else if let Some(s) = current.as_mut() {
            let field = |prefix: &str| {
                line.strip_prefix(prefix)
                    .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_string())
            };
            if let Some(v) = field("Name") {
                s.name = v;
            } else if let Some(v) = field("Kind") {
                s.kind = v;
            } else if let Some(v) = field("Start time") {
                s.start_ns = v.parse().unwrap_or(0);
            } else if let Some(v) = field("End time") {
                s.end_ns = v.parse().unwrap_or(0);
            }
        }
    }
    spans.extend(current);
    spans
}

/// `Str(x)` -> x, `Int(5)` -> 5, `Double(0.1)` -> 0.1 (rotel's value notation).
fn inner(v: &str) -> &str {
    v.split_once('(')
        .map_or(v, |(_, rest)| rest.strip_suffix(')').unwrap_or(rest))
}

/// `Slice(Int(1), Int(2))` -> ["1", "2"].
fn slice(v: &str) -> Vec<String> {
    let body = inner(v);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(", ").map(|x| inner(x).to_string()).collect()
}

/// The spans of `service` that rotel logged, after giving it time to flush.
fn spans_of(log: &Path, service: &str) -> Vec<SeenSpan> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    parse_spans(&text)
        .into_iter()
        .filter(|s| s.resource.get("service.name").map(|v| inner(v)) == Some(service))
        .collect()
}

fn tids_of(pid: u32) -> HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The last value of a counter series in VictoriaMetrics (cumulative temporality).
fn last(vm_port: u16, selector: &str) -> Option<f64> {
    scalar(&promql(vm_port, &format!("max_over_time({selector}[5m])")))
}

/// Checks one span against the workload's truths; what is wrong with it.
fn span_failures(
    s: &SeenSpan,
    threshold_s: f64,
    workers: &HashSet<u32>,
    tenant: &str,
) -> Vec<String> {
    let mut bad = Vec::new();
    let attr = |k: &str| s.attributes.get(k).map(|v| inner(v).to_string());
    if s.name != "gil.wait" || s.kind != "SPAN_KIND_INTERNAL" {
        bad.push(format!("name/kind {:?}/{:?}", s.name, s.kind));
    }
    let waiter: Option<u32> = attr("thread.id").and_then(|v| v.parse().ok());
    if !waiter.is_some_and(|t| workers.contains(&t)) {
        bad.push(format!(
            "waiter {waiter:?} is not a thread of the workload {workers:?}"
        ));
    }
    if !attr("thread.name").is_some_and(|n| n.starts_with("cpu-")) {
        bad.push(format!(
            "waiter name {:?}, expected a cpu-N worker",
            attr("thread.name")
        ));
    }
    let holders: Vec<u32> = s
        .attributes
        .get("cpython.gil.holder.thread.ids")
        .map(|v| slice(v).iter().filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    let names = s
        .attributes
        .get("cpython.gil.holder.thread.names")
        .map(|v| slice(v))
        .unwrap_or_default();
    if holders.is_empty()
        || holders.len() != names.len()
        || holders
            .iter()
            .any(|h| !workers.contains(h) || Some(*h) == waiter)
    {
        bad.push(format!(
            "holders {holders:?} ({names:?}): expected other threads of the workload"
        ));
    }
    let wait: f64 = attr("cpython.gil.wait.time")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let span_s = s.end_ns.saturating_sub(s.start_ns) as f64 / 1e9;
    if wait < threshold_s || span_s + 1e-6 < wait || span_s > 30.0 {
        bad.push(format!(
            "wait {wait} s over a span of {span_s} s, threshold {threshold_s} s"
        ));
    }
    let res = |k: &str| s.resource.get(k).map(|v| inner(v).to_string());
    if res("tenant.id").as_deref() != Some(tenant) {
        bad.push(format!(
            "resource tenant.id {:?}, expected {tenant}",
            res("tenant.id")
        ));
    }
    if res("process.runtime.name").as_deref() != Some("cpython") {
        bad.push(format!("resource {:?}", s.resource));
    }
    bad
}

#[test]
fn contention_spans_reach_rotel_with_waiter_holders_and_the_process_resource() {
    if !can_use_bpf() {
        return;
    }
    let (Some((rotel, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("spans via rotel", || {
        let tag = unique_tag("spans");
        let (_vm, vm_port) = start_vm(&vm, &tag);
        let (_rotel, grpc, rotel_log) = start_rotel(&rotel, vm_port, &tag);
        let service = format!("gil-spans-{tag}");
        let config = config_file(
            &tag,
            &format!(
                "include:\n  cmdline: ['{tag}']\ntenant:\n  resource_attribute: team\n\
                 spans:\n  threshold: 20ms\n  rate_per_second: 1000\n"
            ),
        );
        let work = workload_process(&python, 12, &service, &tag);
        let pid = work.0.id();
        let stderr = run_ok_for(
            daemon()
                .envs(otlp_grpc_env(grpc))
                .arg("--config")
                .arg(&config),
            7,
        );
        let workers = tids_of(pid);
        std::thread::sleep(Duration::from_secs(2));
        let spans = spans_of(&rotel_log, &service);
        eprintln!("spans: {} at rotel from threads {workers:?}", spans.len());
        let mut failures = Vec::new();
        if spans.len() < 10 {
            failures.push(format!("{} spans at rotel, expected dozens", spans.len()));
        }
        for s in &spans {
            let bad = span_failures(s, 0.020, &workers, "blue");
            if !bad.is_empty() {
                failures.push(format!("span {s:?}: {}", bad.join("; ")));
            }
        }
        // The holder's code: the workers only run `spin`, so a wait is behind
        // it, named with its file and a line inside it. 90 %: a wait behind a
        // worker still starting (threading's bootstrap) is behind other code.
        let in_spin = spans
            .iter()
            .filter(|s| {
                let attr = |k: &str| s.attributes.get(k).map(|v| inner(v).to_string());
                attr("code.function.name").as_deref() == Some("spin")
                    && attr("code.file.path").is_some_and(|f| f.ends_with("cpu_threads.py"))
                    && attr("code.line.number").is_some_and(|l| l.parse::<u32>().is_ok())
            })
            .count();
        if (in_spin as f64) < 0.9 * spans.len() as f64 {
            failures.push(format!(
                "{in_spin} of {} spans name spin as the holder's code: {:?}",
                spans.len(),
                spans.first()
            ));
        }
        // Every episode was sent (the rate was far above the workload's), and
        // the exported-episode counter says as many as rotel received.
        let exported = last(
            vm_port,
            &format!(
                "{{__name__=\"cpython.gil.episodes\",outcome=\"exported\",service.name=\"{service}\"}}"
            ),
        );
        if exported != Some(spans.len() as f64) {
            failures.push(format!(
                "cpython.gil.episodes{{outcome=exported}} = {exported:?}, rotel got {}",
                spans.len()
            ));
        }
        with_daemon_log(failures, &stderr)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn musl_condvar_waits_become_spans_too() {
    if !can_use_bpf() {
        return;
    }
    let (Some((rotel, vm)), Some(python)) = (receivers(), built_cpython("3.13-musl")) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("musl spans via rotel", || {
        let tag = unique_tag("musl");
        let (_vm, vm_port) = start_vm(&vm, &tag);
        let (_rotel, grpc, rotel_log) = start_rotel(&rotel, vm_port, &tag);
        let service = format!("gil-musl-{tag}");
        let work = workload_process(&python, 12, &service, &tag);
        let pid = work.0.id();
        let stderr = run_ok_for(
            daemon()
                .args(["--endpoint", &format!("http://127.0.0.1:{grpc}")])
                .args(["--include-cmdline", &tag, "--tenant", "acme"])
                .args(["--span-threshold", "20ms", "--span-rate", "1000"]),
            7,
        );
        let workers = tids_of(pid);
        std::thread::sleep(Duration::from_secs(2));
        let spans = spans_of(&rotel_log, &service);
        eprintln!("musl spans: {} at rotel", spans.len());
        let mut failures = Vec::new();
        if spans.len() < 10 {
            failures.push(format!("{} spans at rotel, expected dozens", spans.len()));
        }
        for s in &spans {
            let bad = span_failures(s, 0.020, &workers, "acme");
            if !bad.is_empty() {
                failures.push(format!("span {s:?}: {}", bad.join("; ")));
            }
        }
        with_daemon_log(failures, &stderr)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Waits of at least 2^25 ns in the exported wait histogram: its buckets end at
/// powers of two, so this is the count above the 0.033554432 s bound.
fn waits_over_2_25_ns(vm_port: u16, service: &str) -> Option<f64> {
    let sel = |name: &str, extra: &str| {
        format!("{{__name__=\"{name}\",service.name=\"{service}\"{extra}}}")
    };
    let total = last(vm_port, &sel("cpython.gil.wait.duration_count", ""))?;
    let below = last(
        vm_port,
        &sel("cpython.gil.wait.duration_bucket", ",le=\"0.033554432\""),
    )?;
    Some(total - below)
}

#[test]
fn the_rate_limit_sends_at_most_its_rate_and_counts_the_rest() {
    if !can_use_bpf() {
        return;
    }
    let (Some((rotel, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("span rate limit", || {
        let tag = unique_tag("limit");
        let (_vm, vm_port) = start_vm(&vm, &tag);
        let (_rotel, grpc, rotel_log) = start_rotel(&rotel, vm_port, &tag);
        let service = format!("gil-limit-{tag}");
        let work = workload_process(&python, 12, &service, &tag);
        let pid = work.0.id();
        let seconds = 7;
        let stderr = run_ok_for(
            daemon()
                .args(["--endpoint", &format!("http://127.0.0.1:{grpc}")])
                .args(["--include-cmdline", &tag, "--tenant", "acme"])
                .args(["--span-threshold", "33.554432ms", "--span-rate", "1"]),
            seconds,
        );
        let workers = tids_of(pid);
        std::thread::sleep(Duration::from_secs(3));
        let spans = spans_of(&rotel_log, &service);
        let mut failures = Vec::new();
        // One a second over the watched time, plus the burst of one.
        let cap = seconds as usize + 1;
        if spans.is_empty() || spans.len() > cap {
            failures.push(format!(
                "{} spans at rotel, expected 1..={cap}",
                spans.len()
            ));
        }
        for s in &spans {
            let bad = span_failures(s, 0.033, &workers, "acme");
            if !bad.is_empty() {
                failures.push(format!("span {s:?}: {}", bad.join("; ")));
            }
        }
        let counter = |outcome: &str| {
            last(
                vm_port,
                &format!(
                    "{{__name__=\"cpython.gil.episodes\",outcome=\"{outcome}\",service.name=\"{service}\"}}"
                ),
            )
        };
        let (exported, limited) = (counter("exported"), counter("rate_limited"));
        if exported != Some(spans.len() as f64) {
            failures.push(format!(
                "exported counter {exported:?}, rotel got {} spans",
                spans.len()
            ));
        }
        // The kernel's histogram counts the same waits: every one of them is an
        // episode, sent or held back (a few may merge, or end after the last drain).
        let truth = waits_over_2_25_ns(vm_port, &service);
        eprintln!(
            "rate limit: {} spans at rotel; exported {exported:?}, rate_limited {limited:?}, \
             waits >= 2^25 ns {truth:?}",
            spans.len()
        );
        match (exported, limited, truth) {
            (Some(e), Some(l), Some(t))
                if t >= 20.0 && l > 0.0 && e + l <= t && e + l >= 0.9 * t => {}
            other => failures.push(format!(
                "exported, rate_limited, waits >= 2^25 ns = {other:?}: expected \
                 exported + rate_limited = the waits (within 10%), and many held back"
            )),
        }
        with_daemon_log(failures, &stderr)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rotel_span_blocks_parse() {
    let log = "ResourceMetrics #0\nResource attributes:\n     -> service.name: Str(x)\n\
        ResourceSpans #0\nResource attributes:\n     -> service.name: Str(shop)\n\
        ScopeSpans #0\nSpan #0\n    Name           : gil.wait\n    Kind           : SPAN_KIND_INTERNAL\n\
        Start time: 10\nEnd time: 30\nAttributes:\n     -> thread.id: Int(7)\n\
             -> cpython.gil.holder.thread.ids: Slice(Int(8), Int(9))\nSpan #1\n    Name           : gil.wait\n";
    let spans = parse_spans(log);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].name, "gil.wait");
    assert_eq!((spans[0].start_ns, spans[0].end_ns), (10, 30));
    assert_eq!(inner(&spans[0].resource["service.name"]), "shop");
    assert_eq!(
        slice(&spans[0].attributes["cpython.gil.holder.thread.ids"]),
        vec!["8", "9"]
    );
    assert_eq!(spans[1].attributes.len(), 0);
}

/// A loop whose every handler runs 30 ms of CPU inline (inline_cpu_loop.py,
/// one thread): each such iteration is one `event_loop.iteration` span of the
/// loop thread, at least 30 ms long (the handler's spin is timed by the clock)
/// and under 100 ms (one handler an iteration; the rest is preemption on a
/// 2-core machine, tens of ms at worst).
#[test]
fn iterations_that_block_a_loop_become_spans() {
    if !can_use_bpf() {
        return;
    }
    let (Some((rotel, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("loop spans via rotel", || {
        let tag = unique_tag("loopspans");
        let (_vm, vm_port) = start_vm(&vm, &tag);
        let (_rotel, grpc, rotel_log) = start_rotel(&rotel, vm_port, &tag);
        let service = format!("gil-loop-{tag}");
        let work = Running(
            std::process::Command::new(&python)
                .args([&workload("inline_cpu_loop.py"), "10", "asyncio", "30", &tag])
                .env("OTEL_SERVICE_NAME", &service)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start inline_cpu_loop.py"),
        );
        let pid = work.0.id();
        let stderr = run_ok_for(
            daemon()
                .args(["--endpoint", &format!("http://127.0.0.1:{grpc}")])
                .args(["--include-cmdline", &tag, "--span-rate", "1000"])
                .arg("--event-loops"),
            7,
        );
        std::thread::sleep(Duration::from_secs(2));
        let spans: Vec<SeenSpan> = spans_of(&rotel_log, &service)
            .into_iter()
            .filter(|s| s.name == "event_loop.iteration")
            .collect();
        eprintln!("loop spans: {} at rotel", spans.len());
        let mut failures = Vec::new();
        if spans.len() < 20 {
            failures.push(format!(
                "{} loop spans at rotel, expected dozens",
                spans.len()
            ));
        }
        for s in &spans {
            let attr = |k: &str| s.attributes.get(k).map(|v| inner(v).to_string());
            let tid: Option<u32> = attr("thread.id").and_then(|v| v.parse().ok());
            let len: f64 = attr("cpython.event_loop.iteration.time")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if tid != Some(pid) || !(0.030..0.100).contains(&len) {
                failures.push(format!("loop span {s:?}: tid {tid:?}, {len} s"));
            }
        }
        with_daemon_log(failures, &stderr)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
