//! `check --flamegraph FILE.svg`: the contention profile as an SVG flame
//! graph, drawn by inferno (the Rust port of flamegraph.pl) from folded
//! stacks weighted by the µs of GIL wait behind each holder stack: a picture
//! of which code the GIL was held by while others waited.

use crate::core::profile::ContentionProfile;
use crate::core::stacks::Frame;

/// A frame as the flame graph labels it: `function (file:line)`, with the
/// file's last path component (the full path is in the JSON and pprof).
/// `;` separates frames in the folded format, so none may stay in a label.
fn label(f: &Frame) -> String {
    let file = f.file.rsplit('/').next().unwrap_or(&f.file);
    let text = match (file.is_empty(), f.line) {
        (true, _) => f.function.clone(),
        (false, Some(line)) => format!("{} ({file}:{line})", f.function),
        (false, None) => format!("{} ({file})", f.function),
    };
    text.replace(';', ",")
}

/// The folded stacks (`root;…;leaf µs`), one line per stack with at least
/// one µs of wait behind it.
pub fn folded(profile: &ContentionProfile) -> Vec<String> {
    profile
        .stacks
        .iter()
        .filter_map(|s| {
            let us = (s.wait_ns + 500) / 1000;
            let frames: Vec<String> = s.frames.iter().map(label).collect();
            (us > 0).then(|| format!("{} {us}", frames.join(";")))
        })
        .collect()
}

/// The SVG of `profile`, titled with what it measured (`subtitle`: the process).
pub fn svg(profile: &ContentionProfile, subtitle: &str) -> std::io::Result<Vec<u8>> {
    let lines = folded(profile);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = "GIL held while others waited".into();
    opts.subtitle = Some(subtitle.to_string());
    opts.count_name = "µs of GIL wait".into();
    opts.deterministic = true;
    let mut out = Vec::new();
    if lines.is_empty() {
        // inferno refuses an empty input; an empty profile still gets a picture.
        inferno::flamegraph::from_lines(&mut opts, ["no GIL wait behind any holder 1"], &mut out)?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::profile::StackWait;

    #[test]
    fn stacks_fold_root_first_weighted_in_us_and_draw() {
        let frame = |function: &str, line| Frame {
            function: function.into(),
            file: "/srv/app/work.py".into(),
            line,
        };
        let p = ContentionProfile {
            wait_s: 0.0,
            functions: vec![],
            stacks: vec![
                StackWait {
                    frames: vec![frame("main", Some(3)), frame("a;b", None)],
                    wait_s: 2.5e-3,
                    wait_ns: 2_500_400,
                },
                StackWait {
                    frames: vec![frame("tiny", Some(1))],
                    wait_s: 4e-7,
                    wait_ns: 400,
                },
            ],
            frames_unnamed: 0,
        };
        assert_eq!(folded(&p), ["main (work.py:3);a,b (work.py) 2500"]);
        let svg = String::from_utf8(svg(&p, "pid 1").expect("svg")).expect("utf-8");
        assert!(svg.starts_with("<?xml"), "{}", &svg[..40]);
        assert!(svg.contains("main (work.py:3)") && svg.contains("pid 1"));
        let empty = svg_of_nothing();
        assert!(empty.contains("no GIL wait behind any holder"));
    }

    fn svg_of_nothing() -> String {
        let bytes = svg(&ContentionProfile::default(), "pid 2").expect("svg");
        String::from_utf8(bytes).expect("utf-8")
    }
}
