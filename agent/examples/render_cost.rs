//! What `--listen` costs the measuring loop: one interval's `Exposition::update`
//! plus `render` for 100 processes with the default series (no per-thread), as
//! `gilscope run` does it once per interval. Numbers in BENCHMARKS.md.
//!
//! `cargo run --release --example render_cost`

use gilscope::otel::catalog::*;
use gilscope::otel::prometheus::Exposition;
use gilscope::otel::series::*;
use gilscope::otel::Temporality;
use std::time::Instant;
fn main() {
    let now = Instant::now();
    let mut resources = Vec::new();
    for pid in 0..100 {
        let r: Vec<(String, String)> = vec![
            ("service.name".into(), format!("svc{pid}")),
            ("service.instance.id".into(), format!("node/{pid}/123")),
            ("process.pid".into(), pid.to_string()),
            ("process.executable.name".into(), "python3.11".into()),
            (
                "process.executable.path".into(),
                "/usr/bin/python3.11".into(),
            ),
            ("process.runtime.name".into(), "cpython".into()),
            ("process.runtime.version".into(), "3.11.7".into()),
            ("host.name".into(), "node".into()),
            ("host.arch".into(), "amd64".into()),
        ];
        let mut pts = Vec::new();
        for m in ALL.iter().take(14) {
            let value = match m.kind {
                Kind::Histogram => Value::Histogram {
                    counts: vec![3; wait_bounds_s().len() + 1],
                    sum_s: 1.0,
                },
                _ => Value::Double(0.5),
            };
            let n = if m.name == "cpython.diagnosis" { 6 } else { 1 };
            for k in 0..n {
                let mut attributes = Vec::new();
                if n > 1 {
                    attributes.push(("cpython.diagnosis.kind", format!("k{k}")));
                }
                pts.push(Point {
                    metric: m,
                    attributes,
                    value: value.clone(),
                    start: now,
                });
            }
        }
        resources.push((r, pts));
    }
    let mut e = Exposition::default();
    let t = Instant::now();
    let rounds = 20;
    let mut len = 0;
    for _ in 0..rounds {
        let batch: Vec<_> = resources
            .iter()
            .map(|(r, p)| (r.as_slice(), p.as_slice(), Temporality::Delta))
            .collect();
        e.update(&batch);
        len = e.render().len();
    }
    println!(
        "100 processes: update+render {:?} per interval, page {} bytes",
        t.elapsed() / rounds,
        len
    );
}
