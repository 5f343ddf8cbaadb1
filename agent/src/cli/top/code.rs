//! The code lines of `top`'s process view: which functions held the GIL
//! while others waited, and how long the process's event loops lagged, over
//! the last interval. The view's threads say who waited; these say what to
//! change.

use crate::core::event_loop::LONG_ITERATION_NS;

use super::live::ProcessView;

/// Holder functions named in the view.
const HOLDERS_SHOWN: usize = 3;

/// The view's code lines (none when the interval had neither GIL waits
/// behind a captured holder nor an event loop).
pub fn code_lines(v: &ProcessView) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(p) = v.profile.as_ref().filter(|p| p.wait_s > 0.0) {
        let named: Vec<String> = p
            .functions
            .iter()
            .take(HOLDERS_SHOWN)
            .map(|f| {
                let file = f.file.rsplit('/').next().unwrap_or(&f.file);
                let line = f.line.map(|l| format!(":{l}")).unwrap_or_default();
                format!("{} ({file}{line}) {:.0}%", f.function, f.share * 100.0)
            })
            .collect();
        lines.push(format!(
            "GIL held while others waited ({:.2}s of wait): {}",
            p.wait_s,
            named.join(", ")
        ));
    }
    for l in &v.event_loops {
        let code = l
            .functions
            .first()
            .map(|f| format!(", mostly in {}", f.function))
            .unwrap_or_default();
        lines.push(format!(
            "event loop {}: {} iterations, lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
             blocked {:.2}s (iterations ≥ {} ms){code}",
            l.tid,
            l.iterations,
            l.lag_p50_ms,
            l.lag_p99_ms,
            l.lag_max_ms,
            l.blocked_s,
            LONG_ITERATION_NS / 1_000_000
        ));
    }
    lines
}
