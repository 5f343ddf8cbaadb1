//! The log: one line per event on stderr, whatever the targets put in it.
//!
//! Log messages carry strings a watched process chose: its executable's path,
//! its service name, file names from its maps, text from its environment. A
//! newline in one would forge a second log line, an escape sequence would
//! rewrite the operator's terminal, and a megabyte would flood the log. So every
//! field of every event is written through [`EscapedFields`]: control and
//! bidirectional-format characters escaped (`\n`, `\u{1b}`), the event capped at
//! [`MAX_EVENT_CHARS`] characters. This is done once here, for every message,
//! rather than at each of the places that log a target's string.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The most characters of one event's fields written; the rest is counted.
pub const MAX_EVENT_CHARS: usize = 2048;

/// Logs to stderr: warnings by default, more with -v/-vv, or as `GILSCOPE_LOG` says.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "gilscope=warn",
        1 => "gilscope=info",
        _ => "gilscope=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GILSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .fmt_fields(EscapedFields)
        .init();
}

/// Formats an event's fields as the default formatter does (the message, then
/// `name=value`), with target-controlled text made harmless (see the module).
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            text: String::new(),
            chars: 0,
            cut: 0,
        };
        fields.record(&mut visitor);
        writer.write_str(&visitor.text)?;
        if visitor.cut > 0 {
            write!(writer, "… ({} more characters)", visitor.cut)?;
        }
        Ok(())
    }
}

struct EscapingVisitor {
    text: String,
    chars: usize,
    cut: usize,
}

impl EscapingVisitor {
    fn push(&mut self, raw: &str) {
        for c in raw.chars() {
            if self.chars >= MAX_EVENT_CHARS {
                self.cut += 1;
                continue;
            }
            let before = self.text.len();
            push_escaped(&mut self.text, c);
            self.chars += self.text[before..].chars().count();
        }
    }
}

impl Visit for EscapingVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.text.is_empty() {
            self.push(" ");
        }
        let text = if field.name() == "message" {
            format!("{value:?}")
        } else {
            format!("{}={value:?}", field.name())
        };
        self.push(&text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// Appends `c`, escaped when it could break a line, move the cursor, colour the
/// terminal or reorder what is shown (Unicode's bidirectional overrides).
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() || is_bidi_format(c) || c == '\u{2028}' || c == '\u{2029}' => {
            out.extend(c.escape_unicode())
        }
        c => out.push(c),
    }
}

/// U+202A..U+202E and U+2066..U+2069: embedding, override and isolate controls.
fn is_bidi_format(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::test_log::captured_log;

    fn logged(log: impl FnOnce()) -> String {
        captured_log(EscapedFields, log)
    }

    #[test]
    fn a_newline_in_a_target_string_cannot_forge_a_log_line() {
        let exe = "/usr/bin/python3\n2026-12-03T00:00:00Z  WARN gilscope: forged";
        let text = logged(|| tracing::warn!("not watching process 7 ({exe}): refused"));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("(/usr/bin/python3\\n2026-12-03T00:00:00Z  WARN gilscope: forged)"),
            "{text}"
        );
    }

    #[test]
    fn terminal_escapes_and_bidi_overrides_are_shown_not_obeyed() {
        let name = "svc\u{1b}[2J\u{202e}txt.exe\r";
        let text = logged(|| tracing::warn!(service = name, "service {name}"));
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(
            !text.trim_end_matches('\n').contains(['\r', '\n']),
            "{text}"
        );
        assert!(text.contains("svc\\u{1b}[2J\\u{202e}txt.exe\\r"), "{text}");
        assert!(text.contains("service=\"svc"), "{text}");
    }

    #[test]
    fn a_huge_message_is_cut_and_says_how_much_was_left_out() {
        let huge = "x".repeat(100_000);
        let text = logged(|| tracing::warn!("environment: {huge}"));
        assert_eq!(text.lines().count(), 1);
        assert!(text.len() < MAX_EVENT_CHARS + 200, "{} bytes", text.len());
        let shown = MAX_EVENT_CHARS - "environment: ".len();
        assert!(
            text.contains(&format!("({} more characters)", 100_000 - shown)),
            "{}",
            &text[text.len() - 60..]
        );
    }

    #[test]
    fn ordinary_messages_are_unchanged() {
        let text =
            logged(|| tracing::info!("watching process 12 (/usr/bin/python3.11), 3 threads"));
        assert!(
            text.ends_with("watching process 12 (/usr/bin/python3.11), 3 threads\n"),
            "{text}"
        );
    }
}
