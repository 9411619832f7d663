//! What every maple binary does when a signal ends it: the temporary files it is writing
//! (`--output`, `--report`, `--out`, checkpoints, cache files, converted weights) are removed,
//! since destructors do not run then, and the signal takes its usual course.
//!
//! SIGBUS is different: it means a memory-mapped file (the weights, or the packed-weight cache)
//! was cut short by another program while this one read it. The program says so in one line,
//! removes its temporary files and exits with status 1, instead of dying without a word.
//!
//! Shared by the binaries through `#[path]` (they have no library crate of their own).

/// Installs the handlers; `program` starts the SIGBUS line. Call first thing in `main`.
#[cfg(unix)]
pub fn install(program: &str) {
    use std::sync::atomic::Ordering;
    let line = format!(
        "{program}: a file in use (the model's weights or the packed-weight cache) was cut \
         short by another program while this one read it; stopped, and no partial output file \
         is left. Run again (a damaged cache file is rebuilt).\n"
    );
    let line: &'static [u8] = Box::leak(line.into_bytes().into_boxed_slice());
    BUS_LINE.store(line.as_ptr() as *mut u8, Ordering::SeqCst);
    BUS_LEN.store(line.len(), Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        unsafe {
            libc::signal(sig, on_end as *const () as libc::sighandler_t);
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGBUS, on_bus as *const () as libc::sighandler_t);
    }
}

#[cfg(not(unix))]
pub fn install(_program: &str) {}

#[cfg(unix)]
static BUS_LINE: std::sync::atomic::AtomicPtr<u8> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
#[cfg(unix)]
static BUS_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(unix)]
extern "C" fn on_end(sig: libc::c_int) {
    maple::outfile::remove_live_temporaries();
    // SAFETY: signal and raise are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

#[cfg(unix)]
extern "C" fn on_bus(_sig: libc::c_int) {
    use std::sync::atomic::Ordering;
    let (p, n) = (
        BUS_LINE.load(Ordering::SeqCst),
        BUS_LEN.load(Ordering::SeqCst),
    );
    if !p.is_null() {
        // SAFETY: `p` points to `n` leaked bytes that are never freed; write is
        // async-signal-safe.
        unsafe { libc::write(2, p as *const libc::c_void, n) };
    }
    maple::outfile::remove_live_temporaries();
    // SAFETY: _exit is async-signal-safe (no destructors, no atexit handlers).
    unsafe { libc::_exit(1) };
}
