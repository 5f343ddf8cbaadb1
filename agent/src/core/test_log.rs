//! Tests' view of the log: what `tracing` prints while a closure runs, as the
//! daemon would print it on stderr (no colours, no time).

use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::FormatFields;

/// A writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The text `log` makes `tracing` print, its fields written by `fields`.
pub fn captured_log<N>(fields: N, log: impl FnOnce()) -> String
where
    N: for<'writer> FormatFields<'writer> + Send + Sync + 'static,
{
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .fmt_fields(fields)
        .finish();
    tracing::subscriber::with_default(subscriber, log);
    let text = out.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&text).into_owned()
}
