//! The on-disk spool: where OTLP requests wait while the collector is away, so an
//! outage longer than the retry window loses nothing and memory stays bounded.
//!
//! One file per request, named by a sequence number that only grows (replay is
//! oldest first, across restarts too). A file is written under a temporary name,
//! fsync'd, renamed and its directory fsync'd, so after a crash a file is either
//! complete or absent; a stale temporary file is removed at startup. Each file
//! starts with a small header (magic, signal kind, item count, length, CRC-32)
//! so a damaged file is recognised, skipped and reported instead of sent or
//! crashing the daemon. The spool is capped in bytes: when a new request does not
//! fit, the oldest files go first and the caller counts their items as dropped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// Bytes on disk (headers included) the spool may take; the oldest requests
    /// are dropped beyond it.
    pub max_bytes: u64,
}

/// Default cap: an hour of a busy node at a 10 s interval fits easily.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

const MAGIC: &[u8; 8] = b"GILSPL01";
const HEADER: usize = 24;
const SUFFIX: &str = ".otlp";
const TEMP_SUFFIX: &str = ".tmp";

/// Which OTLP service a spooled request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Metrics,
    Traces,
}

/// One request on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: Kind,
    /// Data points or spans in the request (what is counted if it is dropped).
    pub items: u64,
    /// Size on disk, header included.
    pub bytes: u64,
}

/// What went wrong with the spool directory or one of its files.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The directory or a file cannot be written or read (permissions, disk full).
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not a complete spooled request (damaged disk, foreign file).
    #[error("spool file {path} is damaged ({why}); skipped")]
    Corrupt { path: PathBuf, why: String },
}

fn io(path: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The spool directory and the index of its files, oldest first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
}

impl Spool {
    /// Opens (creating it if needed) the spool, checks it can be written, and
    /// indexes what a previous run left. Damaged files are removed and returned
    /// (the caller reports and counts them); an unwritable directory is an error.
    pub fn open(settings: &SpoolSettings) -> Result<(Self, Vec<SpoolError>), SpoolError> {
        let dir = settings.dir.clone();
        // Spooled requests carry the node's telemetry: the agent's alone (0700/0600).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io(&dir, e))?;
        // Prove now that files can be created, synced and removed, not at the first outage.
        let probe = dir.join(format!(".probe{TEMP_SUFFIX}"));
        private_file(&probe)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| io(&dir, e))?;
        let mut found = Vec::new();
        let mut damaged = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let item = item.map_err(|e| io(&dir, e))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(TEMP_SUFFIX) {
                // Cut short by a crash before its rename: never counted as spooled.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue; // not ours: leave it alone
            };
            match read_header(&path) {
                Ok(entry) => found.push(Entry { seq, ..entry }),
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    damaged.push(e);
                }
            }
        }
        found.sort_by_key(|e| e.seq);
        let next_seq = found.last().map_or(0, |e| e.seq + 1);
        let bytes = found.iter().map(|e| e.bytes).sum();
        Ok((
            Self {
                dir,
                max_bytes: settings.max_bytes,
                entries: found.into(),
                bytes,
                next_seq,
            },
            damaged,
        ))
    }

    /// Requests waiting on disk.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the waiting requests take on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The file of the request numbered `seq` (for messages).
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// Writes one request durably behind the others. Returns the oldest entries
    /// removed to make room (their items are lost: the caller counts them). A
    /// request larger than the whole cap is not written: it comes back as the
    /// only "evicted" entry.
    pub fn push(&mut self, kind: Kind, items: u64, body: &[u8]) -> Result<Vec<Entry>, SpoolError> {
        let bytes = (HEADER + body.len()) as u64;
        let entry = Entry {
            seq: self.next_seq,
            kind,
            items,
            bytes,
        };
        if bytes > self.max_bytes {
            return Ok(vec![entry]);
        }
        let mut evicted = Vec::new();
        while self.bytes + bytes > self.max_bytes {
            match self.pop() {
                Some(old) => evicted.push(old),
                None => break,
            }
        }
        let path = self.path(entry.seq);
        let temp = self.dir.join(format!("{:020}{TEMP_SUFFIX}", entry.seq));
        let mut file = private_file(&temp).map_err(|e| io(&temp, e))?;
        let written = file
            .write_all(&header(kind, items, body))
            .and_then(|_| file.write_all(body))
            .and_then(|_| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|_| std::fs::rename(&temp, &path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(io(&path, e));
        }
        // The rename itself must survive a crash too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.next_seq += 1;
        self.bytes += bytes;
        self.entries.push_back(entry);
        Ok(evicted)
    }

    /// The oldest request and its body. A damaged file is an error; the caller
    /// then [`pop`](Self::pop)s it.
    pub fn read_oldest(&self) -> Option<Result<(Entry, Vec<u8>), SpoolError>> {
        let entry = self.entries.front()?.clone();
        let path = self.path(entry.seq);
        Some(read_body(&path).map(|body| (entry, body)))
    }

    /// Removes the oldest request (sent, or given up on).
    pub fn pop(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        let _ = std::fs::remove_file(self.path(entry.seq));
        Some(entry)
    }
}

fn header(kind: Kind, items: u64, body: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8] = match kind {
        Kind::Metrics => b'm',
        Kind::Traces => b't',
    };
    h[12..16].copy_from_slice(&(items.min(u32::MAX as u64) as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    h
}

struct Header {
    kind: Kind,
    items: u64,
    len: u64,
    crc: u32,
}

fn parse_header(path: &Path, h: &[u8]) -> Result<Header, SpoolError> {
    let corrupt = |why: &str| SpoolError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if h.len() < HEADER {
        return Err(corrupt("shorter than its header"));
    }
    if &h[..8] != MAGIC {
        return Err(corrupt("not a gilscope spool file"));
    }
    let kind = match h[8] {
        b'm' => Kind::Metrics,
        b't' => Kind::Traces,
        _ => return Err(corrupt("unknown signal kind")),
    };
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    Ok(Header {
        kind,
        items: u64::from(word(12)),
        len: u64::from(word(16)),
        crc: word(20),
    })
}

/// Indexes a file from its header and size alone (startup must be quick).
fn read_header(path: &Path) -> Result<Entry, SpoolError> {
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    let size = file.metadata().map_err(|e| io(path, e))?.len();
    let mut h = Vec::with_capacity(HEADER);
    Read::by_ref(&mut file)
        .take(HEADER as u64)
        .read_to_end(&mut h)
        .map_err(|e| io(path, e))?;
    let header = parse_header(path, &h)?;
    if size != HEADER as u64 + header.len {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            why: format!(
                "{size} bytes, its header says {}",
                HEADER as u64 + header.len
            ),
        });
    }
    Ok(Entry {
        seq: 0,
        kind: header.kind,
        items: header.items,
        bytes: size,
    })
}

/// A new file only the agent may read.
fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn read_body(path: &Path) -> Result<Vec<u8>, SpoolError> {
    let mut data = Vec::new();
    OpenOptions::new()
        .read(true)
        .open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io(path, e))?;
    body_from_bytes(path, data)
}

/// Checks a whole spool file's bytes (header, length, CRC) and returns its
/// body; `path` only names the file in errors. The parsing half of reading an
/// entry back, public so the fuzz harness can feed it bytes.
pub fn body_from_bytes(path: &Path, mut data: Vec<u8>) -> Result<Vec<u8>, SpoolError> {
    let header = parse_header(path, &data)?;
    let body = data.split_off(HEADER);
    if body.len() as u64 != header.len {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            why: "truncated".into(),
        });
    }
    if crc32fast::hash(&body) != header.crc {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            why: "checksum mismatch".into(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gilscope-spool-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn open(d: &Path, max_bytes: u64) -> (Spool, Vec<SpoolError>) {
        Spool::open(&SpoolSettings {
            dir: d.to_path_buf(),
            max_bytes,
        })
        .expect("open spool")
    }

    #[test]
    fn requests_survive_a_restart_and_come_back_oldest_first() {
        let d = dir("order");
        let (mut s, damaged) = open(&d, 1 << 20);
        assert!(damaged.is_empty());
        for i in 0..5u8 {
            assert!(s
                .push(Kind::Metrics, u64::from(i), &[i; 10])
                .expect("push")
                .is_empty());
        }
        s.push(Kind::Traces, 7, b"spans").expect("push");
        drop(s);
        // A crash mid-write leaves a temporary file: it must not be replayed.
        std::fs::write(d.join("00000000000000000099.tmp"), b"half").expect("temp");
        let (mut s, damaged) = open(&d, 1 << 20);
        assert!(damaged.is_empty());
        assert_eq!(s.len(), 6);
        for i in 0..5u8 {
            let (entry, body) = s.read_oldest().expect("one").expect("readable");
            assert_eq!(
                (entry.kind, entry.items, body),
                (Kind::Metrics, u64::from(i), vec![i; 10])
            );
            s.pop();
        }
        let (entry, body) = s.read_oldest().expect("one").expect("readable");
        assert_eq!(
            (entry.kind, entry.items, &body[..]),
            (Kind::Traces, 7, &b"spans"[..])
        );
        s.pop();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        // New requests continue the sequence after a restart.
        s.push(Kind::Metrics, 1, b"x").expect("push");
        drop(s);
        let (s, _) = open(&d, 1 << 20);
        assert_eq!(s.entries.front().map(|e| e.seq), Some(6));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn spooled_requests_are_readable_by_the_agent_alone() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("private").join("spool");
        let (mut s, _) = open(&d, 1 << 20);
        s.push(Kind::Metrics, 1, b"x").expect("push");
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&d), 0o700);
        let files: Vec<_> = std::fs::read_dir(&d)
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(mode(&files[0]), 0o600);
        let _ = std::fs::remove_dir_all(d.parent().unwrap_or(&d));
    }

    #[test]
    fn damaged_files_are_skipped_and_reported_not_sent() {
        let d = dir("damaged");
        let (mut s, _) = open(&d, 1 << 20);
        for i in 0..3u8 {
            s.push(Kind::Metrics, 4, &[i; 100]).expect("push");
        }
        drop(s);
        // Truncate the first (seen at startup), flip a byte of the second (seen at read).
        let first = d.join(format!("{:020}{SUFFIX}", 0));
        let data = std::fs::read(&first).expect("read");
        std::fs::write(&first, &data[..50]).expect("truncate");
        let second = d.join(format!("{:020}{SUFFIX}", 1));
        let mut data = std::fs::read(&second).expect("read");
        data[60] ^= 0xff;
        std::fs::write(&second, &data).expect("flip");
        std::fs::write(d.join(format!("{:020}{SUFFIX}", 7)), b"garbage").expect("garbage");
        let (mut s, damaged) = open(&d, 1 << 20);
        assert_eq!(damaged.len(), 2, "{damaged:?}");
        assert!(damaged[0].to_string().contains("damaged"), "{}", damaged[0]);
        assert_eq!(s.len(), 2);
        let err = s.read_oldest().expect("one").expect_err("checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
        s.pop();
        let (_, body) = s.read_oldest().expect("one").expect("intact");
        assert_eq!(body, vec![2u8; 100]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_says_which() {
        let d = dir("full");
        let each = (HEADER + 100) as u64;
        let (mut s, _) = open(&d, each * 3);
        for i in 0..3u8 {
            assert!(s
                .push(Kind::Metrics, 10, &[i; 100])
                .expect("push")
                .is_empty());
        }
        let evicted = s.push(Kind::Metrics, 10, &[3; 100]).expect("push");
        assert_eq!(evicted.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes(), each * 3);
        let (_, body) = s.read_oldest().expect("one").expect("readable");
        assert_eq!(body, vec![1u8; 100]);
        // Larger than the whole cap: not written, handed back.
        let evicted = s.push(Kind::Metrics, 99, &[0; 1000]).expect("push");
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].items, 99);
        assert_eq!(s.len(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_directory_is_refused_at_open() {
        // A regular file where the directory should be.
        let d = dir("unwritable");
        std::fs::create_dir_all(&d).expect("dir");
        let file = d.join("not-a-dir");
        std::fs::write(&file, b"").expect("file");
        let err = Spool::open(&SpoolSettings {
            dir: file.join("spool"),
            max_bytes: 1 << 20,
        })
        .expect_err("refused");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
