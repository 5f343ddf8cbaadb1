//! The files a process maps, as the process itself names them, read from
//! `/proc/PID/maps` in linear time and bounded memory.
//!
//! Any tenant decides how many files its process maps (numpy memmaps, a
//! storage engine, or malice: up to `vm.max_map_count`, 65,530 by default), so
//! the listing is streamed line by line, de-duplicated through a hash map, and
//! refused past [`MAX_MAPS_BYTES`] with one clear error rather than read whole.
//!
//! The kernel prints a mapped file's path relative to the *reader's* root: a
//! process in its own mount namespace (`pivot_root`, as container runtimes do)
//! shows its own paths, but one only chrooted inside our namespace shows host
//! paths (`/srv/rootfs/usr/lib/...`); [`path_in_process`] turns both into the
//! process's own view, which [`target_file::host_path`] then opens inside the
//! process's root.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::os::target_file;

/// The most of `/proc/PID/maps` read: 65,530 mappings (the kernel's default
/// `vm.max_map_count`) with paths of 500 bytes on average. A larger listing is
/// refused, not truncated: the interpreter may be mapped past any cut.
pub const MAX_MAPS_BYTES: u64 = 32 << 20;

/// A mapped file of a process, with the lowest address it is mapped at offset 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// The path as the process names it (see [`path_in_process`]).
    pub path: PathBuf,
    /// Start of its lowest offset-0 mapping: the load base of an ELF file.
    pub base: u64,
    /// End of the mapping at `base` (with `base`, its `/proc/PID/map_files` name).
    pub end: u64,
}

impl MappedFile {
    /// Where to read the file from the host. A file deleted or replaced on disk
    /// while mapped (`PATH (deleted)`, e.g. an interpreter upgraded under a running
    /// process) is read through `/proc/PID/map_files`, which is the mapped file itself.
    pub fn host_path(&self, pid: u32) -> PathBuf {
        let deleted = self
            .path
            .as_os_str()
            .as_encoded_bytes()
            .ends_with(b" (deleted)");
        if deleted {
            target_file::mapped_file_path(pid, self.base, self.end)
        } else {
            target_file::host_path(pid, &self.path)
        }
    }
}

/// One file mapping at offset 0 of a `/proc/PID/maps` line: (start, end, path).
///
/// Our own parser, not procfs's: procfs-core 0.17 panics on a mapped file whose
/// path starts with `/SYSV` and is shorter than 13 bytes (it slices a SysV shm
/// key out of it), and any process on the host can map such a file (found by
/// fuzzing, target `proc_parsers`).
pub fn parse_maps_line(line: &str) -> Option<(u64, u64, PathBuf)> {
    // address perms offset dev inode, then the path (which may hold spaces).
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let (range, _perms, offset, _dev, _inode) = (field(), field(), field(), field(), field());
    let path = rest.trim();
    if !path.starts_with('/') || u64::from_str_radix(offset, 16).ok()? != 0 {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    // The kernel prints a newline in a path as `\012` (`seq_file_path`'s
    // escape set is "\n"); the file's real name has the newline.
    let path = if path.contains("\\012") {
        PathBuf::from(path.replace("\\012", "\n"))
    } else {
        PathBuf::from(path)
    };
    Some((start, end, path))
}

/// Every file mapping at offset 0 of a whole `/proc/PID/maps` text, in order.
pub fn parse_maps(text: &str) -> Vec<(u64, u64, PathBuf)> {
    text.lines().filter_map(parse_maps_line).collect()
}

/// The distinct files of a maps listing, each with its lowest offset-0
/// mapping, in first-seen order; paths are put in the process's view by
/// `view`. Linear in the listing; at most `limit` bytes are read, and a longer
/// listing is [`Error::UnsafeFile`]. Non-UTF-8 paths are read lossily.
pub fn distinct_files(
    listing: impl Read,
    limit: u64,
    view: impl Fn(PathBuf) -> PathBuf,
) -> std::io::Result<Option<Vec<MappedFile>>> {
    let mut reader = BufReader::new(listing.take(limit + 1));
    let mut files: Vec<MappedFile> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut line = Vec::new();
    let mut read = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(Some(files));
        }
        read += n as u64;
        if read > limit {
            return Ok(None);
        }
        let Some((start, end, path)) = parse_maps_line(&String::from_utf8_lossy(&line)) else {
            continue;
        };
        let path = view(path);
        match index.get(&path) {
            // The lowest mapping: its start is the load base, and /proc/PID/map_files
            // names it by its exact range.
            Some(&i) if start < files[i].base => (files[i].base, files[i].end) = (start, end),
            Some(_) => {}
            None => {
                index.insert(path.clone(), files.len());
                files.push(MappedFile {
                    path,
                    base: start,
                    end,
                });
            }
        }
    }
}

/// The files process `pid` maps (see [`distinct_files`]).
pub fn mapped_files(pid: u32) -> Result<Vec<MappedFile>> {
    let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
    let root = chroot_dir(pid);
    let listing = std::fs::File::open(&maps_path).map_err(|e| Error::io(&maps_path, e))?;
    match distinct_files(listing, MAX_MAPS_BYTES, |p| {
        in_process_view(root.as_deref(), p)
    }) {
        Ok(Some(files)) => Ok(files),
        Ok(None) => Err(Error::UnsafeFile {
            path: maps_path,
            why: format!(
                "it lists more than {} MiB of mappings",
                MAX_MAPS_BYTES >> 20
            ),
        }),
        Err(e) => Err(Error::io(&maps_path, e)),
    }
}

/// Every file mapped by process `pid` (as the process names it), for finding
/// something other than the interpreter (e.g. its libc's condvar wait).
pub fn mapped_paths(pid: u32) -> Result<Vec<PathBuf>> {
    Ok(mapped_files(pid)?.into_iter().map(|f| f.path).collect())
}

/// The root directory of `pid` as we see it when the process is chrooted inside
/// our mount namespace; `None` when it shares our root or has a mount namespace
/// of its own (then `/proc/PID/root` reads as `/`).
fn chroot_dir(pid: u32) -> Option<PathBuf> {
    let root = std::fs::read_link(format!("/proc/{pid}/root")).ok()?;
    (root.is_absolute() && root != Path::new("/")).then_some(root)
}

fn in_process_view(chroot: Option<&Path>, printed: PathBuf) -> PathBuf {
    match chroot.and_then(|root| printed.strip_prefix(root).ok()) {
        Some(rest) => Path::new("/").join(rest),
        None => printed,
    }
}

/// A path the kernel printed for `pid` (in `maps`, or `/proc/PID/exe`) as the
/// process itself names it, so that [`target_file::host_path`] finds the file.
pub fn path_in_process(pid: u32, printed: &Path) -> PathBuf {
    in_process_view(chroot_dir(pid).as_deref(), printed.to_path_buf())
}

/// `/proc/PID/exe` as the process names it (see [`path_in_process`]).
pub fn exe_in_process(pid: u32) -> Option<PathBuf> {
    let printed = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(path_in_process(pid, &printed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_offset_zero_file_mappings_with_spaces_in_paths() {
        let text = "55d0c0000000-55d0c0001000 r--p 00000000 08:01 123      /usr/bin/python3.11\n\
                    55d0c0001000-55d0c0002000 r-xp 00001000 08:01 123      /usr/bin/python3.11\n\
                    7f0000000000-7f0000020000 r--p 00000000 08:01 456      /opt/my app/libpython3.12.so (deleted)\n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0        [stack]\n\
                    7ffd10000000-7ffd10001000 rw-s 00000000 00:01 7        /SYSV0000002a (deleted)\n";
        let maps = parse_maps(text);
        assert_eq!(
            maps,
            vec![
                (
                    0x55d0c0000000,
                    0x55d0c0001000,
                    PathBuf::from("/usr/bin/python3.11")
                ),
                (
                    0x7f0000000000,
                    0x7f0000020000,
                    PathBuf::from("/opt/my app/libpython3.12.so (deleted)")
                ),
                (
                    0x7ffd10000000,
                    0x7ffd10001000,
                    PathBuf::from("/SYSV0000002a (deleted)")
                ),
            ]
        );
    }

    /// Found by fuzzing (fuzz/, target `proc_parsers`): procfs's maps parser
    /// panicked on a mapped file named like a SysV segment but shorter
    /// (`/SYSVbin`), which any process can map; gilscope now parses maps itself.
    #[test]
    fn a_short_sysv_like_path_is_a_file_not_a_panic() {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/proc_parsers/maps-short-sysv-path"
        ))
        .expect("fixture");
        let maps = parse_maps(&String::from_utf8_lossy(&raw[1..]));
        assert!(
            maps.iter().any(|(_, _, p)| p == Path::new("/SYSVbin")),
            "{maps:?}"
        );
        let maps = parse_maps("7f00-7f01 r--p 00000000 08:01 9 /SYSVx\n\u{0}\u{ff} garbage");
        assert_eq!(maps, vec![(0x7f00, 0x7f01, PathBuf::from("/SYSVx"))]);
    }

    /// 60,000 mapped files (the 40,000-file tenant of issue 14, and more) are
    /// listed once each with their lowest mapping, in linear time.
    #[test]
    fn many_mapped_files_are_distinct_once_each_with_their_lowest_mapping() {
        let mut text = String::new();
        for i in 0..60_000u64 {
            // Two mappings per file, the higher one listed first.
            let (high, low) = (0x7f00_0000_0000 + i * 0x10000, 0x1000_0000 + i * 0x10000);
            text.push_str(&format!(
                "{high:x}-{:x} r--p 00000000 08:01 {i} /data/shard-{i}.bin\n",
                high + 0x1000
            ));
            text.push_str(&format!(
                "{low:x}-{:x} r--p 00000000 08:01 {i} /data/shard-{i}.bin\n",
                low + 0x2000
            ));
        }
        let files = distinct_files(text.as_bytes(), MAX_MAPS_BYTES, |p| p)
            .expect("read")
            .expect("within the limit");
        assert_eq!(files.len(), 60_000);
        assert_eq!(
            files[59_999],
            MappedFile {
                path: PathBuf::from("/data/shard-59999.bin"),
                base: 0x1000_0000 + 59_999 * 0x10000,
                end: 0x1000_0000 + 59_999 * 0x10000 + 0x2000,
            }
        );
    }

    #[test]
    fn a_listing_longer_than_the_limit_is_refused_not_cut() {
        let line = "7f00-7f01 r--p 00000000 08:01 9 /usr/lib/libpython3.12.so\n";
        let text = line.repeat(10);
        let limit = (line.len() * 10) as u64;
        assert!(distinct_files(text.as_bytes(), limit, |p| p)
            .expect("read")
            .is_some());
        assert!(distinct_files(text.as_bytes(), limit - 1, |p| p)
            .expect("read")
            .is_none());
    }

    /// A file name with a newline in it (a tenant's choice) is the file's own
    /// name again, not the kernel's escaped rendering of it.
    #[test]
    fn a_newline_the_kernel_escaped_is_a_newline_again() {
        let line = "7f00-7f01 r-xp 00000000 08:01 9 /tmp/python3.11\\012forged exe\n";
        assert_eq!(
            parse_maps_line(line),
            Some((0x7f00, 0x7f01, PathBuf::from("/tmp/python3.11\nforged exe")))
        );
    }

    #[test]
    fn a_chrooted_process_sees_its_paths_from_its_root() {
        let root = Path::new("/srv/rootfs");
        assert_eq!(
            in_process_view(Some(root), PathBuf::from("/srv/rootfs/usr/lib/libc.so.6")),
            PathBuf::from("/usr/lib/libc.so.6")
        );
        assert_eq!(
            in_process_view(Some(root), PathBuf::from("/usr/lib/libc.so.6")),
            PathBuf::from("/usr/lib/libc.so.6")
        );
    }
}
