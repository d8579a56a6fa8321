//! Pseudo-terminals for processes: open a pair, read and write the master
//! side asynchronously, resize.

use locale2b_protocol::PtySize;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The master side of a pseudo-terminal, non-blocking.
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

fn winsize(size: PtySize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a pseudo-terminal of `size`: the master (for the agent) and the
/// slave (the child's stdin, stdout and stderr).
///
/// # Errors
/// The OS error (no `/dev/ptmx`, no devpts).
pub fn open(size: PtySize) -> io::Result<(PtyMaster, OwnedFd)> {
    let pair = nix::pty::openpty(&winsize(size), None).map_err(io::Error::from)?;
    let (master, slave) = (pair.master.as_raw_fd(), pair.slave.as_raw_fd());
    // Neither end may leak into other children (a leaked slave keeps the
    // terminal open after its process exits; the child gets the slave as
    // fds 0-2, which dup2 makes inheritable again).
    // SAFETY: fcntl on descriptors we own; these commands take no pointers.
    unsafe {
        let flags = libc::fcntl(master, libc::F_GETFL);
        if flags < 0
            || libc::fcntl(master, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            || libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC) < 0
            || libc::fcntl(slave, libc::F_SETFD, libc::FD_CLOEXEC) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the OwnedFd keeps the descriptor open, and refers to the same
    // file, for as long as the AsyncFd owns it.
    let fd = unsafe { AsyncFd::register(pair.master) }?;
    Ok((PtyMaster { fd }, pair.slave))
}

impl PtyMaster {
    /// Reads what the terminal's programs wrote; `Ok(0)` once every slave
    /// descriptor is closed (the kernel reports that as EIO).
    ///
    /// # Errors
    /// Other OS errors.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: read(2) into a buffer we own, of its length.
                let n = unsafe {
                    libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the terminal (keystrokes for its programs).
    ///
    /// # Errors
    /// The OS error (EIO once the terminal's programs are gone).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: write(2) from a buffer we own, of its length.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal size (its programs get SIGWINCH).
    ///
    /// # Errors
    /// The OS error.
    pub fn resize(&self, size: PtySize) -> io::Result<()> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
        let rc = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
