//! Ctrl-C and `kill`: SIGINT and SIGTERM remove every registered temp file and directory
//! ([`crate::io::tempfiles`]) and end the process with 130 or 143 (128 + the signal), as a
//! shell reports them. Locks (flock) and open devices are released by the kernel when the
//! process ends; worker threads end with it.
//!
//! The signals are blocked in every thread and taken by one thread with `sigwait(2)`, so the
//! cleanup runs as ordinary code (file removal, a message on stderr) rather than inside an
//! asynchronous signal handler, where almost nothing is allowed. [`install`] must run before any
//! other thread is started: threads inherit the blocked mask from the thread that starts them.

use std::io;

/// Block SIGINT and SIGTERM in this thread (and so in every thread it starts later) and start
/// the thread that handles them.
pub fn install() -> io::Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the calls only read and
    // write it and the calling thread's signal mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: waits for one of the signals in `set`, which this thread owns.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    interrupted(sig);
                }
            }
        })?;
    Ok(())
}

/// Remove the temps and exit with 128 + `sig`, keeping the registry locked so that no other
/// thread renames or registers a temp meanwhile.
fn interrupted(sig: libc::c_int) -> ! {
    let (removed, _held) = super::tempfiles::remove_all_and_hold();
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!("pi-image: interrupted by {name}; removed {removed} temporary file(s)");
    std::process::exit(128 + sig)
}
