//! Reads another process's memory without stopping it (`process_vm_readv`), the way
//! py-spy's non-blocking mode does. Values may be torn or stale by the time they
//! are used; callers treat them as samples, never as a consistent snapshot.

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_unmapped_address_is_an_error() {
        let mem = RemoteMemory::new(std::process::id());
        assert!(mem.read_u64(8).is_err());
    }
}
