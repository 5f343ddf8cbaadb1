//! The names of a watched process's threads, as people know them: the Python
//! `threading` name where there is one, else the OS name. Read again when
//! threads come or go, and now and then (a thread may rename itself after it
//! starts); the last name of every thread is kept, so a thread that exited is
//! still named in the report.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cpython::thread_names::ThreadNameReader;

/// How often names are read again although no thread came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRefresh {
    /// At every refresh: a short measurement (`check`) names what it saw at once.
    EveryRefresh,
    /// When threads come or go, and at least this often: a watcher of a
    /// thousand threads reads names only when something changed.
    OnChangeOrEvery(Duration),
}

/// Python thread names of one process and when to read them.
pub struct ThreadNames {
    reader: ThreadNameReader,
    /// The last Python name of every thread seen.
    names: HashMap<u32, String>,
    policy: NameRefresh,
    /// Read at the next refresh: threads came or went at the last one (a new
    /// thread may name itself just after it appears).
    pending: bool,
    read_at: Instant,
}

impl ThreadNames {
    /// Nothing read yet; the first refresh reads every name.
    pub fn new(reader: ThreadNameReader, policy: NameRefresh) -> Self {
        Self {
            reader,
            names: HashMap::new(),
            policy,
            pending: true,
            read_at: Instant::now(),
        }
    }

    /// Whether the next refresh should read every thread's OS name too.
    pub fn all_due(&self) -> bool {
        match self.policy {
            NameRefresh::EveryRefresh => true,
            NameRefresh::OnChangeOrEvery(every) => self.pending || self.read_at.elapsed() >= every,
        }
    }

    /// Reads the Python names when due: `threads_changed` says threads came or
    /// went in this refresh.
    pub fn refresh(&mut self, threads_changed: bool) {
        let all = self.all_due();
        if all || threads_changed {
            self.names.extend(self.reader.read());
        }
        if all {
            self.read_at = Instant::now();
        }
        self.pending = threads_changed;
    }

    /// The Python name of a thread, if it has one.
    pub fn get(&self, tid: u32) -> Option<&String> {
        self.names.get(&tid)
    }

    /// Every Python name seen, by tid.
    pub fn all(&self) -> &HashMap<u32, String> {
        &self.names
    }

    /// The names, for retiring exited threads (theirs are removed).
    pub fn names_mut(&mut self) -> &mut HashMap<u32, String> {
        &mut self.names
    }
}
