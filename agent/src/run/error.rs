//! The errors of `gilscope run` a user can cause: a bad config file, a bad flag
//! or environment variable, an exporter that cannot be set up.
//!
//! Each message names the source (file, flag or variable), what was wrong and
//! what is accepted, so one line on stderr is enough to fix it.

use std::path::PathBuf;

/// What can stop `gilscope run` from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for gilscope (unknown key, wrong type).
    #[error("config file {path} is not valid: {why}")]
    ConfigParse { path: PathBuf, why: String },
    /// A setting has a value gilscope cannot use.
    #[error("{source_name}: {why}")]
    BadSetting { source_name: String, why: String },
    /// The measuring core failed (BPF, permissions).
    #[error(transparent)]
    Core(#[from] crate::Error),
}

impl RunError {
    /// A bad setting in `source_name` (a flag, a variable or `file: key`).
    pub fn setting(source_name: impl Into<String>, why: impl Into<String>) -> Self {
        RunError::BadSetting {
            source_name: source_name.into(),
            why: why.into(),
        }
    }

    /// True when the user can fix it: exit code 2.
    pub fn is_user_error(&self) -> bool {
        match self {
            RunError::Core(e) => e.is_user_error(),
            _ => true,
        }
    }
}
