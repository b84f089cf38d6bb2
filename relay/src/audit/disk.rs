//! The file operations the audit writer makes, behind a trait so that unit tests can make
//! any one of them fail (`ENOSPC`, `EROFS`, a short write) and check that nothing is lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// Opens files for the audit writer.
pub(crate) trait Disk: Send {
    /// Opens (creating) a file for appending.
    fn open_append(&mut self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens (creating) a file for writing anywhere in it (the reserve).
    fn open_rw(&mut self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Makes a folder's entries (new files) durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// One open file.
pub(crate) trait DiskFile: Send {
    /// Writes some of `buf` (appending, or at the cursor for [`Disk::open_rw`] files).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Moves the cursor (reserve files only).
    fn seek_end(&mut self) -> io::Result<u64>;
    /// `fdatasync`.
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts (or extends) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The file's size now.
    fn len(&mut self) -> io::Result<u64>;
    /// Allocates real blocks up to `len` bytes (`fallocate`), growing the file;
    /// `Unsupported` where the file system cannot.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
}

/// Writes all of `buf`, going on after short writes (which a full disk produces).
pub(crate) fn write_all(file: &mut dyn DiskFile, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an error says the disk (or the quota) is full, which the reserve can relieve.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
}

/// The real file system.
pub(crate) struct RealDisk;

impl Disk for RealDisk {
    fn open_append(&mut self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open_rw(&mut self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

struct RealFile(File);

impl DiskFile for RealFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn seek_end(&mut self) -> io::Result<u64> {
        self.0.seek(SeekFrom::End(0))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&mut self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    #[cfg(target_os = "linux")]
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: the descriptor is open for writing for the duration of the call, and
        // fallocate reads nothing from our memory.
        let result = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, 0, len) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        Err(match error.raw_os_error() {
            Some(libc::EOPNOTSUPP) => io::Error::new(io::ErrorKind::Unsupported, error),
            _ => error,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn allocate(&mut self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "no fallocate"))
    }
}

#[cfg(test)]
pub(crate) use faults::{Fault, FaultPlan, FaultyDisk, Pause};

#[cfg(test)]
mod faults {
    //! A disk of limited size that fails the N-th operation the way a full or read-only
    //! disk does.

    use std::io;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::{Disk, DiskFile, RealDisk};

    /// How the chosen operation fails.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fault {
        /// The disk is full from this operation on (`ENOSPC`; a sync fails too).
        NoSpace,
        /// The file system turns read-only (`EROFS` from every operation).
        ReadOnly,
        /// A write lands half its bytes, then the disk is full.
        ShortWrite,
    }

    /// The disk's state, shared with the test.
    #[derive(Debug, Default)]
    pub(crate) struct FaultPlan {
        /// Operations so far.
        pub(crate) ops: usize,
        /// The operation (by index) that fails, and how.
        pub(crate) fail_at: Option<(usize, Fault)>,
        /// Bytes left on the disk (`None`: unlimited).
        pub(crate) free: Option<u64>,
        /// The file system is read-only.
        pub(crate) read_only: bool,
        /// The next file opened waits here first (once): to catch the writer in the
        /// middle of something, e.g. its last checkpoint at a stop.
        pub(crate) pause_next_open: Option<Pause>,
    }

    /// Where the paused operation stops: it says so on `reached`, then waits until the
    /// test sends on (or drops) the sender of `release`.
    #[derive(Debug)]
    pub(crate) struct Pause {
        pub(crate) reached: tokio::sync::oneshot::Sender<()>,
        pub(crate) release: std::sync::mpsc::Receiver<()>,
    }

    impl FaultPlan {
        /// Counts an operation; returns the fault if it is this one, applied.
        fn begin(&mut self) -> Option<Fault> {
            let index = self.ops;
            self.ops += 1;
            let (at, fault) = self.fail_at?;
            if at != index {
                return None;
            }
            match fault {
                Fault::NoSpace | Fault::ShortWrite => self.free = Some(0),
                Fault::ReadOnly => self.read_only = true,
            }
            Some(fault)
        }

        fn check_writable(&self) -> io::Result<()> {
            if self.read_only {
                Err(io::Error::from_raw_os_error(libc::EROFS))
            } else {
                Ok(())
            }
        }

        /// Takes `bytes` from the free space, all or nothing.
        fn take(&mut self, bytes: u64) -> io::Result<()> {
            match &mut self.free {
                Some(free) if *free < bytes => Err(no_space()),
                Some(free) => {
                    *free -= bytes;
                    Ok(())
                }
                None => Ok(()),
            }
        }

        fn give(&mut self, bytes: u64) {
            if let Some(free) = &mut self.free {
                *free += bytes;
            }
        }

        /// Space is back and the file system writable again.
        pub(crate) fn clear(&mut self) {
            self.read_only = false;
            self.free = None;
            self.fail_at = None;
        }
    }

    fn no_space() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    /// The real disk with the limits and faults of a [`FaultPlan`].
    pub(crate) struct FaultyDisk(pub(crate) Arc<Mutex<FaultPlan>>);

    impl FaultyDisk {
        fn open(&self) -> io::Result<()> {
            let pause = self.0.lock().unwrap().pause_next_open.take();
            if let Some(Pause { reached, release }) = pause {
                let _ = reached.send(());
                let _ = release.recv();
            }
            let mut plan = self.0.lock().unwrap();
            plan.begin();
            plan.check_writable()
        }
    }

    impl Disk for FaultyDisk {
        fn open_append(&mut self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
            self.open()?;
            let inner = RealDisk.open_append(path)?;
            Ok(Box::new(FaultyFile {
                inner,
                plan: self.0.clone(),
            }))
        }

        fn open_rw(&mut self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
            self.open()?;
            let inner = RealDisk.open_rw(path)?;
            Ok(Box::new(FaultyFile {
                inner,
                plan: self.0.clone(),
            }))
        }

        fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
            let mut plan = self.0.lock().unwrap();
            if plan.begin() == Some(Fault::NoSpace) {
                return Err(no_space());
            }
            plan.check_writable()?;
            RealDisk.sync_dir(dir)
        }
    }

    struct FaultyFile {
        inner: Box<dyn DiskFile>,
        plan: Arc<Mutex<FaultPlan>>,
    }

    impl DiskFile for FaultyFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut plan = self.plan.lock().unwrap();
            let fault = plan.begin();
            plan.check_writable()?;
            let mut n = buf.len();
            if fault == Some(Fault::ShortWrite) && n > 1 {
                n /= 2;
            } else if let Some(free) = plan.free {
                if free == 0 {
                    return Err(no_space());
                }
                n = n.min(free as usize);
            }
            if let Some(free) = &mut plan.free {
                *free = free.saturating_sub(n as u64);
            }
            self.inner.write(&buf[..n])
        }

        fn seek_end(&mut self) -> io::Result<u64> {
            self.inner.seek_end()
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut plan = self.plan.lock().unwrap();
            if plan.begin() == Some(Fault::NoSpace) {
                // Delayed allocation: the disk filled before the data reached it.
                return Err(no_space());
            }
            plan.check_writable()?;
            self.inner.sync()
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            let mut plan = self.plan.lock().unwrap();
            plan.begin();
            plan.check_writable()?;
            let now = self.inner.len()?;
            if len > now {
                plan.take(len - now)?;
            } else {
                plan.give(now - len);
            }
            self.inner.set_len(len)
        }

        fn len(&mut self) -> io::Result<u64> {
            self.inner.len()
        }

        fn allocate(&mut self, len: u64) -> io::Result<()> {
            let mut plan = self.plan.lock().unwrap();
            plan.begin();
            plan.check_writable()?;
            let now = self.inner.len()?;
            plan.take(len.saturating_sub(now))?;
            // A plain extension stands in for fallocate (the temp folder may not have it).
            if len > now {
                self.inner.set_len(len)?;
            }
            Ok(())
        }
    }
}
