//! The file layer: the YAML file (`--config`), read against the definitions'
//! keys. A key no setting has is an error naming it: a typo must not silently
//! fall back to a default.

use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::cli::settings::def::{Def, Given, Many, Origin, Source};
use crate::cli::settings::defs::ALL;
use crate::error::RunError;

/// The values a config file gave, by setting, in file order.
#[derive(Debug, Clone, Default)]
pub struct FileValues {
    /// `None`: no file.
    path: Option<PathBuf>,
    given: Vec<(&'static str, Given)>,
}

impl FileValues {
    /// No config file: nothing given.
    pub fn none() -> Self {
        FileValues::default()
    }

    /// What the file gave for the setting called `name`.
    pub fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Given> + 'a {
        self.given
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, g)| g)
    }

    /// A key as errors name it: `/etc/gilscope.yaml: export.compression`
    /// (`: key` without a file).
    pub fn source_name(&self, key: &str) -> String {
        let file = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        format!("{file}: {key}")
    }
}

/// Reads and parses the YAML config file.
pub fn read_file(path: &Path) -> Result<FileValues, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses config text (an empty file gives nothing).
pub fn parse_file(path: &Path, text: &str) -> Result<FileValues, RunError> {
    let mut file = FileValues {
        path: Some(path.to_path_buf()),
        given: Vec::new(),
    };
    if text.trim().is_empty() {
        return Ok(file);
    }
    let bad = |why: String| RunError::ConfigParse {
        path: path.to_path_buf(),
        why,
    };
    let root: Value = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
    if !root.is_null() {
        walk(&root, "", &mut file).map_err(bad)?;
    }
    Ok(file)
}

/// Adds the settings under `prefix` (`""`: the top, `export`, `export.spool`).
fn walk(node: &Value, prefix: &str, file: &mut FileValues) -> Result<(), String> {
    let Value::Mapping(map) = node else {
        let what = if prefix.is_empty() {
            "the file"
        } else {
            prefix
        };
        return Err(format!("{what} must be a mapping of keys"));
    };
    for (key, value) in map {
        let key = scalar(key).ok_or_else(|| format!("a key under `{prefix}` is not text"))?;
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        let def = ALL.iter().map(|s| s.def()).find(|d| d.key == Some(&path));
        let section = ALL.iter().filter_map(|s| s.def().key).any(|k| {
            k.strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
        });
        match def {
            _ if value.is_null() && (def.is_some() || section) => {}
            Some(def) => {
                let source = Source {
                    origin: Origin::File,
                    name: file.source_name(&path),
                };
                for text in texts(def, &path, value)? {
                    let source = source.clone();
                    file.given.push((def.name, Given { text, source }));
                }
            }
            None if section => walk(value, &path, file)?,
            None => return Err(unknown(prefix, &path)),
        }
    }
    Ok(())
}

/// The texts a YAML value gives a setting: one scalar, a list's items, or a
/// mapping's entries as `KEY=VALUE`.
fn texts(def: &Def, path: &str, value: &Value) -> Result<Vec<String>, String> {
    match (def.many, value) {
        (Many::One, v) => scalar(v)
            .map(|t| vec![t])
            .ok_or_else(|| format!("`{path}` takes one value, not a list or a mapping")),
        (Many::List, Value::Sequence(items)) => items
            .iter()
            .map(|v| scalar(v).ok_or_else(|| format!("`{path}` must be a list of values")))
            .collect(),
        (Many::List, _) => Err(format!("`{path}` must be a list")),
        (Many::Map, Value::Mapping(entries)) => entries
            .iter()
            .map(|(k, v)| match (scalar(k), scalar(v)) {
                (Some(k), Some(v)) => Ok(format!("{k}={v}")),
                _ => Err(format!("`{path}` must map names to values")),
            })
            .collect(),
        (Many::Map, _) => Err(format!("`{path}` must be a mapping of names to values")),
    }
}

/// A YAML scalar as text (`10`, `true`, `10s`).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The error for a key no setting has, with the keys that would fit there.
fn unknown(prefix: &str, path: &str) -> String {
    let mut known: Vec<&str> = Vec::new();
    for key in ALL.iter().filter_map(|s| s.def().key) {
        let rest = if prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
        };
        if let Some(next) = rest.and_then(|r| r.split('.').next()) {
            if !known.contains(&next) {
                known.push(next);
            }
        }
    }
    let place = if prefix.is_empty() {
        "at the top".to_string()
    } else {
        format!("under `{prefix}`")
    };
    format!("unknown key `{path}` (known {place}: {})", known.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse_file(Path::new("g.yaml"), text)
            .expect_err(text)
            .to_string()
    }

    #[test]
    fn values_of_the_wrong_shape_are_named() {
        let err = error("include:\n  cmdline: gunicorn\n");
        assert!(err.contains("`include.cmdline` must be a list"), "{err}");
        let err = error("interval: [1s, 2s]\n");
        assert!(err.contains("`interval` takes one value"), "{err}");
        let err = error("export: 3\n");
        assert!(err.contains("export must be a mapping"), "{err}");
        let err = error("export:\n  headers: [a]\n");
        assert!(err.contains("`export.headers` must be a mapping"), "{err}");
        let err = error("- interval\n");
        assert!(err.contains("the file must be a mapping"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_named_with_the_keys_that_fit_there() {
        let err = error("export:\n  compresion: gzip\n");
        assert!(
            err.starts_with("config file g.yaml is not valid: "),
            "{err}"
        );
        assert!(err.contains("unknown key `export.compresion`"), "{err}");
        assert!(
            err.contains("under `export`: endpoint, protocol, headers"),
            "{err}"
        );
        // A key with nothing after it is still checked.
        assert!(error("intervall:\n").contains("`intervall`"));
    }

    #[test]
    fn scalars_are_read_as_text_and_empty_keys_are_not_given() {
        let file = parse_file(
            Path::new("g.yaml"),
            "sample_hz: 20\nsummary: true\nexport:\nspans:\n  threshold: 20ms\n",
        )
        .expect("valid");
        let text = |name| file.of(name).map(|g| g.text.clone()).collect::<Vec<_>>();
        assert_eq!(text("sample_hz"), ["20"]);
        assert_eq!(text("summary"), ["true"]);
        assert_eq!(text("span_threshold"), ["20ms"]);
        assert_eq!(text("endpoint"), Vec::<String>::new());
        let source = file.of("sample_hz").next().map(|g| g.source.name.clone());
        assert_eq!(source.as_deref(), Some("g.yaml: sample_hz"));
    }
}
