//! Work splitting. Without `std` everything runs on the calling thread; with `std` a persistent
//! pool (built once, with the workspace) runs one closure on every thread and waits for all of
//! them. Dispatching a job allocates nothing, so a forward pass stays allocation-free. In a child
//! of `fork()` (whose workers stayed in the parent) a pool runs every share on the calling thread.
//! In the browser's threaded build (wasm32 with atomics) the workers are Web Workers that the
//! page starts (`par::web`, compiled only there).

use core::sync::atomic::{AtomicUsize, Ordering};

/// Runs `f(thread_index, thread_count)` on every thread of the pool and returns when all are done.
pub struct Parallel {
    #[cfg(feature = "std")]
    pool: Option<pool::Pool>,
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    web: Option<alloc::sync::Arc<web::Shared>>,
}

impl Parallel {
    /// Everything on the calling thread.
    pub fn sequential() -> Self {
        Parallel {
            #[cfg(feature = "std")]
            pool: None,
            #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
            web: None,
        }
    }

    /// `threads` in all (at most 64), the calling thread included, the others Web Workers that
    /// the embedder starts: each calls [`web::worker_loop`] with [`Self::web_handle`] and its
    /// index `1..threads`. Until every one of them has, work runs on the calling thread alone.
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    pub fn for_web_workers(threads: usize) -> Self {
        let mut p = Self::sequential();
        if threads > 1 {
            p.web = Some(web::Shared::start(threads.min(web::MAX_THREADS)));
        }
        p
    }

    /// What [`web::worker_loop`] takes (0 for a pool without workers).
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    pub fn web_handle(&self) -> usize {
        self.web
            .as_ref()
            .map_or(0, |s| alloc::sync::Arc::as_ptr(s) as usize)
    }

    /// `threads` workers in all (the caller counts as one). 0 means all available cores.
    #[cfg(feature = "std")]
    pub fn with_threads(threads: usize) -> Self {
        let n = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        Parallel {
            pool: (n > 1).then(|| pool::Pool::new(n)),
            #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
            web: None,
        }
    }

    /// Threads that run work, the caller included.
    pub fn threads(&self) -> usize {
        #[cfg(feature = "std")]
        if let Some(p) = &self.pool {
            return p.threads();
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
        if let Some(s) = &self.web {
            return s.n;
        }
        1
    }

    /// Runs `f(i, n)` for `i` in `0..n` on the threads and waits for all of them.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        #[cfg(feature = "std")]
        if let Some(p) = &self.pool {
            p.run(f);
            return;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
        if let Some(s) = &self.web {
            s.run(f);
            return;
        }
        f(0, 1)
    }

    /// How many of `n` items to put in each work unit for [`Self::run_units`]: about four units
    /// per thread, so that a slower thread can hand work over, and at least one item.
    pub fn unit_size(&self, n: usize) -> usize {
        n.div_ceil(4 * self.threads()).max(1)
    }

    /// Runs `f(thread, unit)` once for each `unit` in `0..units`, the units handed out one at
    /// a time from a shared counter to whichever thread is free, and waits for all of them. A
    /// thread that runs slower (its core busy with other work) takes fewer units instead of
    /// holding the others up at the end, as an even split would; which thread runs a unit never
    /// changes what it computes.
    pub fn run_units(&self, units: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let next = AtomicUsize::new(0);
        self.run(&|t, _| loop {
            let u = next.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                break;
            }
            f(t, u);
        });
    }
}

/// The half-open range of `0..n` that thread `t` of `nt` owns (contiguous, balanced).
pub fn split(n: usize, t: usize, nt: usize) -> (usize, usize) {
    let base = n / nt;
    let rem = n % nt;
    let lo = t * base + t.min(rem);
    let hi = lo + base + usize::from(t < rem);
    (lo, hi)
}

/// A raw pointer that may cross threads; users guarantee disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Use this inside closures (a method call captures the whole `Sync` wrapper).
    #[inline]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
impl Drop for Parallel {
    fn drop(&mut self) {
        if let Some(s) = &self.web {
            s.stop();
        }
    }
}

/// The pool of the browser's threaded build: the page's thread runs share 0 of each job and
/// waits by spinning (a page may not block: `Atomics.wait` is refused there); each Web Worker
/// runs its share, spins a little for the next job, then sleeps in `memory.atomic.wait32` until
/// the page's thread bumps the generation.
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub mod web {
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::arch::wasm32::{memory_atomic_notify, memory_atomic_wait32};
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

    type Job = dyn Fn(usize, usize) + Sync;

    /// Threads a pool may have (one bit each in `Shared::claimed`).
    pub(super) const MAX_THREADS: usize = 64;

    /// The pools whose workers may still join, by address: `Shared::start` adds one, `stop`
    /// removes it before the pool's own reference goes, and [`worker_loop`] takes a reference
    /// only to a pool it finds here, under the same lock. So a handle is only ever a live pool.
    static LIVE: Registry = Registry {
        lock: AtomicBool::new(false),
        pools: UnsafeCell::new(Vec::new()),
    };

    struct Registry {
        lock: AtomicBool,
        pools: UnsafeCell<Vec<usize>>,
    }

    // SAFETY: `pools` is touched only while `lock` is held (`Registry::with`).
    unsafe impl Sync for Registry {}

    impl Registry {
        /// `f` on the list, under a spin lock (held for a few instructions; a page may not block).
        fn with<R>(&self, f: impl FnOnce(&mut Vec<usize>) -> R) -> R {
            while self
                .lock
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                core::hint::spin_loop();
            }
            // SAFETY: the lock is held until the store below.
            let r = f(unsafe { &mut *self.pools.get() });
            self.lock.store(false, Ordering::Release);
            r
        }
    }

    /// Spins before sleeping: a forward pass hands out ~90 jobs per image, back to back.
    const SPINS: u32 = 1 << 14;

    /// What the page's thread and the workers share.
    pub struct Shared {
        pub(super) n: usize,
        /// Bumped once per job (and at shutdown); the workers sleep on it.
        generation: AtomicI32,
        /// Workers still running the current job.
        remaining: AtomicUsize,
        /// Workers inside [`worker_loop`].
        started: AtomicUsize,
        /// Bit `t`: a worker has taken index `t`.
        claimed: AtomicU64,
        shutdown: AtomicBool,
        /// The current job: written by the page's thread only while no worker runs one.
        job: UnsafeCell<Option<*const Job>>,
    }

    // SAFETY: `job` is written only between jobs (after `remaining` reached 0, before the next
    // generation is published with Release) and read by workers only after they see that
    // generation with Acquire; the rest is atomics.
    unsafe impl Sync for Shared {}
    unsafe impl Send for Shared {}

    impl Shared {
        /// A pool of `n` threads, registered for its workers to join.
        pub(super) fn start(n: usize) -> Arc<Self> {
            let s = Arc::new(Shared {
                n,
                generation: AtomicI32::new(0),
                remaining: AtomicUsize::new(0),
                started: AtomicUsize::new(0),
                claimed: AtomicU64::new(0),
                shutdown: AtomicBool::new(false),
                job: UnsafeCell::new(None),
            });
            LIVE.with(|p| p.push(Arc::as_ptr(&s) as usize));
            s
        }

        pub(super) fn run<'a>(&self, f: &'a (dyn Fn(usize, usize) + Sync + 'a)) {
            if self.started.load(Ordering::Acquire) < self.n - 1 {
                // Not every worker is in yet: every share here, in order (the same results).
                for t in 0..self.n {
                    f(t, self.n);
                }
                return;
            }
            // SAFETY: no worker reads `job` now (the last job ended with `remaining` at 0); the
            // pointer is used only until `remaining` is 0 again, below, while `f` lives.
            unsafe {
                *self.job.get() = Some(core::mem::transmute::<
                    &'a (dyn Fn(usize, usize) + Sync + 'a),
                    &'static Job,
                >(f) as *const Job)
            };
            self.remaining.store(self.n - 1, Ordering::Release);
            self.generation.fetch_add(1, Ordering::Release);
            // SAFETY: a valid, aligned i32 in the shared memory.
            unsafe { memory_atomic_notify(self.generation.as_ptr(), u32::MAX) };
            f(0, self.n);
            while self.remaining.load(Ordering::Acquire) != 0 {
                core::hint::spin_loop();
            }
            // SAFETY: every worker is done with it.
            unsafe { *self.job.get() = None };
        }

        /// No worker joins any more; those in the loop leave it.
        pub(super) fn stop(&self) {
            let me = self as *const Shared as usize;
            LIVE.with(|p| p.retain(|&h| h != me));
            self.shutdown.store(true, Ordering::Release);
            self.generation.fetch_add(1, Ordering::Release);
            // SAFETY: as in `run`.
            unsafe { memory_atomic_notify(self.generation.as_ptr(), u32::MAX) };
        }
    }

    /// A Web Worker's life: runs share `tid` of every job of the pool behind `handle` (from
    /// `Parallel::web_handle`) and returns when that pool is dropped. Returns at once for a
    /// handle that is no live pool's, a `tid` outside `1..threads`, or one another worker took.
    pub fn worker_loop(handle: usize, tid: usize) {
        let found = LIVE.with(|p| {
            p.contains(&handle).then(|| {
                let ptr = handle as *const Shared;
                // SAFETY: a registered pool's `Arc` pointer; it leaves the list (under this
                // lock) before its owner's reference can go, so it is alive here. The worker
                // takes its own reference, so the state outlives a pool dropped meanwhile.
                unsafe {
                    Arc::increment_strong_count(ptr);
                    Arc::from_raw(ptr)
                }
            })
        });
        let Some(s) = found else { return };
        if tid == 0
            || tid >= s.n
            || s.claimed.fetch_or(1 << tid, Ordering::AcqRel) & (1 << tid) != 0
        {
            return;
        }
        s.started.fetch_add(1, Ordering::AcqRel);
        let mut seen = 0;
        loop {
            let mut spins = 0;
            loop {
                if s.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let g = s.generation.load(Ordering::Acquire);
                if g != seen {
                    seen = g;
                    break;
                }
                if spins < SPINS {
                    spins += 1;
                    core::hint::spin_loop();
                } else {
                    // SAFETY: a valid, aligned i32 in the shared memory; this is a worker, where
                    // waiting is allowed.
                    unsafe { memory_atomic_wait32(s.generation.as_ptr(), g, -1) };
                }
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            // SAFETY: published before this generation (see `Shared`); `f` outlives the job,
            // whose caller waits for `remaining` to reach 0.
            if let Some(f) = unsafe { *s.job.get() } {
                unsafe { (*f)(tid, s.n) };
            }
            s.remaining.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(feature = "std")]
mod pool {
    use std::format;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::vec::Vec;

    type Job = dyn Fn(usize, usize) + Sync;

    #[derive(Clone, Copy)]
    struct JobPtr(*const Job);
    unsafe impl Send for JobPtr {}

    struct State {
        generation: u64,
        job: Option<JobPtr>,
        panicked: bool,
        shutdown: bool,
    }

    struct Shared {
        state: Mutex<State>,
        work: Condvar,
        done: Condvar,
        /// Mirrors `State::generation`, so idle workers can spin on it before sleeping.
        generation: AtomicU64,
        /// Workers still running the current job.
        remaining: AtomicUsize,
    }

    /// Spins before sleeping on a condition variable: waking a sleeping thread costs ~40 µs in
    /// a VM, and a forward pass hands out ~90 jobs per image, back to back.
    const SPINS: u32 = 1 << 14;

    pub struct Pool {
        shared: Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
        n: usize,
        /// The process that started the workers. After `fork()` the child has only the thread
        /// that forked: the workers, and any lock one of them held, exist in the parent alone.
        pid: u32,
    }

    impl Pool {
        pub fn new(n: usize) -> Self {
            let shared = Arc::new(Shared {
                state: Mutex::new(State {
                    generation: 0,
                    job: None,
                    panicked: false,
                    shutdown: false,
                }),
                work: Condvar::new(),
                done: Condvar::new(),
                generation: AtomicU64::new(0),
                remaining: AtomicUsize::new(0),
            });
            let workers = (1..n)
                .map(|tid| {
                    let s = Arc::clone(&shared);
                    std::thread::Builder::new()
                        .name(format!("maple-{tid}"))
                        .spawn(move || worker(&s, tid, n))
                        .expect("spawning a worker thread")
                })
                .collect();
            let pool = Pool {
                shared,
                workers,
                n,
                pid: std::process::id(),
            };
            // Return only once every worker runs (thread start-up allocates; a forward pass must not).
            pool.run(&|_, _| {});
            pool
        }

        pub fn threads(&self) -> usize {
            self.n
        }

        /// Whether this is a child process forked after the pool started.
        fn forked(&self) -> bool {
            std::process::id() != self.pid
        }

        pub fn run<'a>(&self, f: &'a (dyn Fn(usize, usize) + Sync + 'a)) {
            if self.forked() {
                // A child of `fork()`: no worker exists here and the state's lock may be held
                // forever by one that did in the parent. Run every thread's share on this one,
                // in order, touching nothing shared: the same results, one core.
                for tid in 0..self.n {
                    f(tid, self.n);
                }
                return;
            }
            // SAFETY: the pointer is only dereferenced by workers between here and the wait
            // below, which returns only after every worker has finished with it.
            let ptr = JobPtr(unsafe {
                core::mem::transmute::<&'a (dyn Fn(usize, usize) + Sync + 'a), &'static Job>(f)
            });
            let sh = &*self.shared;
            {
                let mut st = lock(&sh.state);
                st.job = Some(ptr);
                st.panicked = false;
                st.generation = st.generation.wrapping_add(1);
                sh.remaining.store(self.n - 1, Ordering::Release);
                sh.generation.store(st.generation, Ordering::Release);
            }
            sh.work.notify_all();
            let mine = catch_unwind(AssertUnwindSafe(|| f(0, self.n)));
            for _ in 0..SPINS {
                if sh.remaining.load(Ordering::Acquire) == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            let mut st = lock(&sh.state);
            while sh.remaining.load(Ordering::Acquire) > 0 {
                st = sh.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.job = None;
            let panicked = st.panicked;
            drop(st);
            if let Err(p) = mine {
                std::panic::resume_unwind(p);
            }
            if panicked {
                panic!("a maple worker thread panicked");
            }
        }
    }

    fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker(s: &Shared, tid: usize, n: usize) {
        let mut seen = 0u64;
        loop {
            for _ in 0..SPINS {
                if s.generation.load(Ordering::Acquire) != seen {
                    break;
                }
                core::hint::spin_loop();
            }
            let job = {
                let mut st = lock(&s.state);
                while st.generation == seen && !st.shutdown {
                    st = s.work.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.shutdown {
                    return;
                }
                seen = st.generation;
                st.job
            };
            let ok = match job {
                // SAFETY: see `Pool::run`.
                Some(JobPtr(f)) => {
                    catch_unwind(AssertUnwindSafe(|| unsafe { (*f)(tid, n) })).is_ok()
                }
                None => true,
            };
            if !ok {
                lock(&s.state).panicked = true;
            }
            if s.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Under the lock, so the caller cannot miss it between its check and its wait.
                let _st = lock(&s.state);
                s.done.notify_one();
            }
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            if self.forked() {
                // The workers are the parent's: nothing to stop or join here.
                for w in self.workers.drain(..) {
                    core::mem::forget(w);
                }
                return;
            }
            lock(&self.shared.state).shutdown = true;
            self.shared.work.notify_all();
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn split_covers_everything_once() {
        for n in 0..20 {
            for nt in 1..5 {
                let mut next = 0;
                for t in 0..nt {
                    let (lo, hi) = split(n, t, nt);
                    assert_eq!(lo, next);
                    next = hi;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn run_units_runs_every_unit_once() {
        #[cfg(feature = "std")]
        let pools = [Parallel::sequential(), Parallel::with_threads(3)];
        #[cfg(not(feature = "std"))]
        let pools = [Parallel::sequential()];
        for p in pools {
            for units in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                p.run_units(units, &|t, u| {
                    assert!(t < p.threads());
                    hits[u].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn pool_runs_every_thread() {
        let p = Parallel::with_threads(3);
        let hits = AtomicUsize::new(0);
        for _ in 0..100 {
            p.run(&|t, n| {
                assert_eq!(n, 3);
                hits.fetch_add(1 << (8 * t), Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 100 + (100 << 8) + (100 << 16));
    }
}
