//! The parsers of setting values: text in (a flag argument, a variable, a YAML
//! scalar), a typed value or a reason out. The reason says what is wrong and what
//! is accepted; the caller puts the source's name in front of it.

use std::path::PathBuf;
use std::time::Duration;

use crate::otel::export::{Compression, Protocol};
use crate::otel::Temporality;

/// The most threads the kernel's per-thread maps may be sized for (entries cost
/// memory only when used, but a typo must not ask the kernel for billions).
pub const MAX_THREAD_CAPACITY: u32 = 1 << 22;
/// Shorter thresholds turn ordinary 5 ms switch-interval waits into spans.
const MIN_SPAN_THRESHOLD: Duration = Duration::from_millis(1);

/// Parses `268435456`, `256MiB`, `1GiB`, `500MB`, `64KiB` (a bare number is bytes;
/// KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024, and a bare `k` is refused as ambiguous).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = split_number(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 268435456, 256MiB, 1GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("size '{text}' must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Parses `10`, `10s`, `500ms`, `2m`, `1.5s`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = split_number(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("duration '{text}' must be positive"));
    }
    // A huge number ("1111...1h") is finite but overflows a Duration: an error, not a panic.
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("duration '{text}' is too long (at most ~584 billion years)"))
}

/// `1.5MiB` -> (`1.5`, `MiB`).
fn split_number(text: &str) -> (&str, &str) {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(split)
}

/// A number of milliseconds, as the `OTEL_*` variables give durations.
pub fn millis(text: &str) -> Result<Duration, String> {
    let ms: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of milliseconds"))?;
    if !ms.is_finite() || ms <= 0.0 {
        return Err("must be a positive number of milliseconds".to_string());
    }
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| format!("'{text}' milliseconds is too long"))
}

/// The OTLP transport: `grpc` or `http/protobuf` (`http`).
pub fn protocol(text: &str) -> Result<Protocol, String> {
    match text.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
        other => Err(format!(
            "protocol '{other}' is not supported (use grpc or http/protobuf)"
        )),
    }
}

/// Request compression: `gzip`, `zstd` or `none` (also empty, as the spec allows).
pub fn compression(text: &str) -> Result<Compression, String> {
    match text.trim() {
        "gzip" => Ok(Compression::Gzip),
        "zstd" => Ok(Compression::Zstd),
        "none" | "" => Ok(Compression::None),
        other => Err(format!(
            "compression '{other}' is not supported (use gzip, zstd or none)"
        )),
    }
}

/// `cumulative` or `delta` (`lowmemory` too, as the spec names it), any case.
pub fn temporality(text: &str) -> Result<Temporality, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "cumulative" => Ok(Temporality::Cumulative),
        // lowmemory means delta for counters and histograms: all of ours that have a temporality.
        "delta" | "lowmemory" => Ok(Temporality::Delta),
        other => Err(format!(
            "temporality '{other}' is not supported (use cumulative or delta)"
        )),
    }
}

/// `lean` (true) or `standard` (false): the request shape.
pub fn lean(text: &str) -> Result<bool, String> {
    match text.trim() {
        "lean" => Ok(true),
        "standard" => Ok(false),
        other => Err(format!(
            "encoding '{other}' is not supported (use lean or standard)"
        )),
    }
}

/// `true` or `false` (a switch, a YAML bool).
pub fn boolean(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("'{other}' is not true or false")),
    }
}

/// Any text, as given.
pub fn text(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

/// A file or directory (surrounding blanks dropped).
pub fn path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text.trim()))
}

/// A whole number, for counts with no bound but the type's.
pub fn count(text: &str) -> Result<usize, String> {
    whole(text)
}

/// A count of at least one (batch and queue sizes).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match whole(text)? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(n),
    }
}

fn whole<N: std::str::FromStr>(text: &str) -> Result<N, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number"))
}

/// GIL state samples per second: 1-1000.
pub fn sample_hz(text: &str) -> Result<u32, String> {
    in_range(whole(text)?, 1, 1000)
}

/// Threads the kernel's per-thread maps are sized for.
pub fn thread_capacity(text: &str) -> Result<u32, String> {
    in_range(whole(text)?, 1, MAX_THREAD_CAPACITY)
}

fn in_range(n: u32, low: u32, high: u32) -> Result<u32, String> {
    if (low..=high).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is out of range ({low}-{high})"))
    }
}

/// A span threshold: a duration of at least 1 ms.
pub fn span_threshold(text: &str) -> Result<Duration, String> {
    let threshold = parse_duration(text)?;
    if threshold < MIN_SPAN_THRESHOLD {
        return Err(format!(
            "{threshold:?} is below 1ms: every ordinary 5 ms GIL hand-over would be a span"
        ));
    }
    Ok(threshold)
}

/// Spans per second: a positive number.
pub fn span_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(format!(
            "{rate} spans per second: must be positive (to send none, set spans.enabled: false)"
        ));
    }
    Ok(rate)
}

/// An OTLP endpoint URL.
pub fn endpoint(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.to_string())
    } else {
        Err(format!("'{text}' must start with http:// or https://"))
    }
}

/// `host:port` (`0.0.0.0:9464`, `[::]:9464`, `localhost:9464`), resolved to one address.
pub fn listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    if text
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!(
            "'{text}' is not host:port (examples: 0.0.0.0:9464, 127.0.0.1:9464, [::]:9464)"
        ));
    }
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{text}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{text}' resolves to no address"))
}

/// One request header, `KEY=VALUE`.
pub fn header(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// `k=v,k2=v2` with percent-encoding, as `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS` are written.
pub fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    Ok(crate::otel::resource::parse_key_values(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
