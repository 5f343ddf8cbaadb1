//! Reads another process's memory without stopping it (`process_vm_readv`), the way
//! py-spy's non-blocking mode does. Values may be torn or stale by the time they
//! are used; callers treat them as samples, never as a consistent snapshot.
//!
//! [`Memory`] is what the object readers ([`super::str`], [`super::dict`], …)
//! read through: the process itself, or a test's made-up address space.

use std::io::IoSliceMut;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// A handle on one process's address space.
#[derive(Debug, Clone, Copy)]
pub struct RemoteMemory {
    pid: u32,
}

impl RemoteMemory {
    /// No syscall happens here; errors surface on the first read.
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// The process this handle reads.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fills `buf` from `addr` in the target.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let remote = [RemoteIoVec {
            base: usize::try_from(addr)
                .map_err(|_| Error::Internal(format!("address {addr:#x} out of range")))?,
            len,
        }];
        let mut local = [IoSliceMut::new(buf)];
        let pid = i32::try_from(self.pid).map_err(|_| Error::NoSuchProcess { pid: self.pid })?;
        match process_vm_readv(Pid::from_raw(pid), &mut local, &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(Error::Internal(format!(
                "short read of {n}/{len} bytes at {addr:#x} in process {}",
                self.pid
            ))),
            Err(nix::errno::Errno::ESRCH) => Err(Error::NoSuchProcess { pid: self.pid }),
            Err(nix::errno::Errno::EPERM) => Err(Error::Permission {
                what: format!("reading the memory of process {}", self.pid),
            }),
            Err(e) => Err(Error::Internal(format!(
                "cannot read {len} bytes at {addr:#x} in process {}: {e}",
                self.pid
            ))),
        }
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut buf = [0u8; 8];
        self.read(addr, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }
}

/// Lowest address taken for a pointer (null and the zero page are garbage).
pub const MIN_POINTER: u64 = 0x1000;

/// Most bytes one read of an object may take (a dict's entries at their cap
/// are 1.5 MiB). Lengths are computed from what the target says — on 3.13+
/// even the object offsets are — so none sizes an allocation unchecked.
pub const MAX_READ: u64 = 1 << 21;

/// Somewhere bytes of the target can be read from: the process, or a test's buffers.
pub trait Memory {
    /// Fills `buf` from `addr`; false when any byte is unreadable.
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// A little-endian u64, `None` when unreadable.
    fn u64_at(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// A pointer: a readable word that is not null or in the zero page.
    fn ptr_at(&self, addr: u64) -> Option<u64> {
        self.u64_at(addr).filter(|p| *p >= MIN_POINTER)
    }

    /// `len` bytes from `addr`; `None` when unreadable or longer than [`MAX_READ`].
    fn bytes_at(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        if len > MAX_READ {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        self.read_bytes(addr, &mut buf).then_some(buf)
    }
}

impl Memory for RemoteMemory {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read(addr, buf).is_ok()
    }
}

/// A [`Memory`] that reads at most a budget of bytes between two
/// [`ReadBudget::refill`]s and then reads nothing: one walk of a target's
/// objects costs at most that much, whatever sizes and chains the target
/// puts in its memory (issue 14: its interpreters, dicts and threads are each
/// capped, but their product is not).
#[derive(Debug)]
pub struct ReadBudget<M> {
    inner: M,
    budget: u64,
    left: std::cell::Cell<u64>,
}

impl<M> ReadBudget<M> {
    /// `inner`, with `budget` bytes to read now and after every refill.
    pub fn new(inner: M, budget: u64) -> Self {
        Self {
            inner,
            budget,
            left: std::cell::Cell::new(budget),
        }
    }

    /// The whole budget again (at the start of a walk).
    pub fn refill(&self) {
        self.left.set(self.budget);
    }

    /// Whether the budget ran out since the last refill.
    pub fn exhausted(&self) -> bool {
        self.left.get() == 0
    }
}

impl<M: Memory> Memory for ReadBudget<M> {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        let want = buf.len() as u64;
        let left = self.left.get();
        if want > left {
            self.left.set(0);
            return false;
        }
        self.left.set(left - want);
        self.inner.read_bytes(addr, buf)
    }
}

impl<M> std::ops::Deref for ReadBudget<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.inner
    }
}

impl<M> std::ops::DerefMut for ReadBudget<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.inner
    }
}

/// The little-endian u64 at byte `at` of bytes already read, `None` past the end.
pub fn le_u64(b: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(8)?)?
        .try_into()
        .ok()
        .map(u64::from_le_bytes)
}

/// The little-endian u32 at byte `at` of bytes already read, `None` past the end.
pub fn le_u32(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(4)?)?
        .try_into()
        .ok()
        .map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory where every address reads as its own low byte.
    struct Everywhere;
    impl Memory for Everywhere {
        fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
            buf.fill(addr as u8);
            true
        }
    }

    #[test]
    fn a_budget_stops_reads_until_it_is_refilled() {
        let mem = ReadBudget::new(Everywhere, 20);
        assert_eq!(mem.u64_at(0x1000), Some(0));
        assert_eq!(mem.u64_at(0x1001), Some(0x0101_0101_0101_0101));
        // 16 of 20 bytes read: a third word does not fit, and nothing more is read.
        assert_eq!(mem.u64_at(0x1002), None);
        assert!(mem.exhausted());
        let mut byte = [0u8; 1];
        assert!(!mem.read_bytes(0x1003, &mut byte));
        mem.refill();
        assert_eq!(mem.u64_at(0x1002), Some(0x0202_0202_0202_0202));
    }

    #[test]
    fn reads_its_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = RemoteMemory::new(std::process::id());
        let read = mem
            .read_u64(&value as *const u64 as u64)
            .expect("own memory is readable");
        assert_eq!(read, value);
    }

    #[test]
    fn a_read_longer_than_the_cap_is_refused_before_any_allocation() {
        let mem = RemoteMemory::new(std::process::id());
        let value = [7u8; 16];
        let at = value.as_ptr() as u64;
        assert_eq!(mem.bytes_at(at, 16).as_deref(), Some(&value[..]));
        assert_eq!(mem.bytes_at(at, u64::MAX), None);
        assert_eq!(mem.bytes_at(at, MAX_READ + 1), None);
    }

    #[test]
    fn an_unmapped_address_is_an_error() {
        let mem = RemoteMemory::new(std::process::id());
        assert!(mem.read_u64(8).is_err());
    }
}
