//! Parallel work of the matmuls and the forward pass, dispatched in one place.
//!
//! Work comes as a *claiming* closure: every thread that takes part calls it with its
//! index (0 for the caller), and each call claims pieces from a counter the closure
//! shares until none are left. So the work is done whether one thread or all of them
//! take part, and no thread waits for another to start.
//!
//! Outside a forward pass a dispatch is a `rayon::broadcast` over the current pool.
//! A forward pass runs inside [`with_team`]: the pool's other threads then wait for
//! its jobs by spinning (for up to [`SPIN`] between jobs, then asleep), so each job
//! starts on every thread at once. Why: on this project's 2-vCPU test machine a rayon
//! worker falls asleep about 20 us after its last job, and waking it took 12-72 us;
//! decode dispatches about 120 jobs per token.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a team's idle thread spins for its next job before it sleeps.
pub const SPIN: Duration = Duration::from_micros(500);

// `Team::state`: epoch << 32 | STOP | OPEN | helpers in the current job.
const OPEN: u64 = 1 << 30;
const STOP: u64 = 1 << 31;
const JOINED: u64 = OPEN - 1;

type Work<'a> = &'a (dyn Fn(usize) + Sync);

/// The threads of one forward pass: a leader that publishes jobs and runs its part
/// of each, and helpers that spin for them.
struct Team {
    state: AtomicU64,
    /// The open job. Written by the leader only while no helper is in a job and none
    /// can join (OPEN clear); read by a helper after it joins.
    job: UnsafeCell<Option<Work<'static>>>,
    /// Helpers that joined the open job so far: each one's index is the count before it.
    entered: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    panicked: AtomicBool,
}

// SAFETY: `job` is only touched under the protocol described on it.
unsafe impl Sync for Team {}

thread_local! {
    /// The team this thread leads, inside `with_team`.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// Set while this thread runs a team's job as a helper: a dispatch from inside it
    /// runs on this thread alone.
    static HELPING: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    fn new() -> Team {
        Team {
            state: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            entered: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
        }
    }

    /// Set a new state (a new epoch) and wake the helpers that sleep.
    fn publish(&self, state: u64) {
        self.state.store(state, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    /// Leader: run `work` on itself and on every helper that joins before it is done.
    fn run(&self, work: Work<'_>) {
        let epoch = self.state.load(Ordering::Relaxed) >> 32;
        // SAFETY: no helper is in a job (the last `close` waited) and none can join one
        // (OPEN is clear) until the store below. `close` (on every exit, unwinding
        // included) waits for the helpers to leave before `work`'s borrow ends.
        unsafe { *self.job.get() = Some(std::mem::transmute::<Work<'_>, Work<'static>>(work)) };
        self.entered.store(1, Ordering::Relaxed);
        self.publish((epoch + 1) << 32 | OPEN);
        struct Close<'t>(&'t Team);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                let team = self.0;
                team.state.fetch_and(!OPEN, Ordering::AcqRel);
                while team.state.load(Ordering::Acquire) & JOINED != 0 {
                    std::hint::spin_loop();
                }
                if team.panicked.swap(false, Ordering::Relaxed) && !std::thread::panicking() {
                    panic!("a thread of the pool panicked in a parallel job");
                }
            }
        }
        let _close = Close(self);
        work(0);
    }

    /// Helper: run the jobs of each new epoch until the leader stops the team.
    fn help(&self) {
        let mut seen = 0; // epochs start at 1
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s & STOP != 0 {
                return;
            }
            if s >> 32 != seen {
                if s & OPEN == 0 {
                    seen = s >> 32; // closed before this thread came
                    continue;
                }
                if self.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                // SAFETY: joined while OPEN: the leader wrote the job before opening it and
                // keeps it alive until this thread leaves (the fetch_sub below).
                let work = unsafe { (*self.job.get()).expect("an open job") };
                let index = self.entered.fetch_add(1, Ordering::Relaxed);
                HELPING.set(true);
                if catch_unwind(AssertUnwindSafe(|| work(index))).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
                HELPING.set(false);
                seen = s >> 32;
                self.state.fetch_sub(1, Ordering::Release);
                idle_since = Instant::now();
                spins = 0;
                continue;
            }
            spins += 1;
            if spins % 64 == 0 && idle_since.elapsed() > SPIN {
                let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                while self.state.load(Ordering::SeqCst) >> 32 == seen {
                    held = self.wake.wait(held).unwrap_or_else(|e| e.into_inner());
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(held);
                idle_since = Instant::now();
                spins = 0;
            }
            std::hint::spin_loop();
        }
    }

    /// Leader: end the team (every helper returns).
    fn stop(&self) {
        let epoch = self.state.load(Ordering::Relaxed) >> 32;
        self.publish((epoch + 1) << 32 | STOP);
    }
}

/// Run `body` with the current rayon pool's threads as a team: the dispatches `body`
/// makes on this thread (`run`, `for_each`) reach the other threads without waking
/// them. Inside a team, or with one thread, just `body()`.
pub fn with_team<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() <= 1 || !LEADING.get().is_null() || HELPING.get() {
        return body();
    }
    let team = Team::new();
    // Lead from this thread when it is one of the pool's (it is already awake).
    let leader = rayon::current_thread_index().unwrap_or(0);
    let body = Mutex::new(Some(body));
    let out = Mutex::new(None);
    rayon::broadcast(|ctx| {
        if ctx.index() != leader {
            return team.help();
        }
        struct Stop<'t>(&'t Team);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                LEADING.set(std::ptr::null());
                self.0.stop();
            }
        }
        let _stop = Stop(&team);
        LEADING.set(&team);
        let body = body.lock().unwrap_or_else(|e| e.into_inner()).take().expect("one leader");
        let r = body();
        *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner()).expect("the leader ran the body")
}

/// Run the claiming closure `work` on the threads at hand: the team's if this thread
/// leads one, this thread alone inside a team's job, else every thread of the current
/// rayon pool. `work` gets its thread's index (distinct, 0..threads; 0 for the calling
/// thread in a team) and must claim its own pieces until none are left.
pub fn run(work: &(dyn Fn(usize) + Sync)) {
    if HELPING.get() {
        return work(0);
    }
    let team = LEADING.get();
    if !team.is_null() {
        // SAFETY: set only while `with_team`'s leader runs its body on this thread.
        return unsafe { &*team }.run(work);
    }
    if rayon::current_num_threads() > 1 {
        rayon::broadcast(|ctx| work(ctx.index()));
    } else {
        work(0);
    }
}

/// f(i) for every i in 0..n, spread over the threads by `run`, one index per claim.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 {
        return (0..n).for_each(f);
    }
    let next = AtomicUsize::new(0);
    run(&|_| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
    }

    /// Each index once, across many jobs of a team, for 1-3 threads; the sum proves it.
    #[test]
    fn team_runs_every_piece_once() {
        for threads in 1..=3 {
            let sum = pool(threads).install(|| {
                with_team(|| {
                    let total = AtomicU64::new(0);
                    for job in 0..2000u64 {
                        let n = (job % 37) as usize;
                        for_each(n, |i| {
                            total.fetch_add(job * 1000 + i as u64, Ordering::Relaxed);
                        });
                    }
                    total.into_inner()
                })
            });
            let want: u64 = (0..2000u64).map(|j| (0..j % 37).map(|i| j * 1000 + i).sum::<u64>()).sum();
            assert_eq!(sum, want, "{threads} threads");
        }
    }

    /// The team's helpers take part, with indices 1.. (the leader's part waits, bounded,
    /// until one has).
    #[test]
    fn team_helpers_take_part() {
        let seen = pool(3).install(|| {
            with_team(|| {
                let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
                run(&|idx| {
                    seen[idx].fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    while idx == 0 && seen[1..].iter().all(|s| s.load(Ordering::Relaxed) == 0) {
                        assert!(t.elapsed() < Duration::from_secs(10), "no helper joined");
                        std::hint::spin_loop();
                    }
                });
                seen.iter().map(|s| s.load(Ordering::Relaxed)).collect::<Vec<_>>()
            })
        });
        assert_eq!(seen[0], 1, "{seen:?}");
        assert!(seen[1] <= 1 && seen[2] <= 1 && seen[1] + seen[2] >= 1, "{seen:?}");
    }

    /// Helpers that went to sleep (a gap over SPIN) wake for the next job.
    #[test]
    fn team_wakes_sleeping_helpers() {
        let helped = pool(2).install(|| {
            with_team(|| {
                let mut helped = 0;
                for _ in 0..5 {
                    std::thread::sleep(SPIN * 4);
                    let by = AtomicUsize::new(0);
                    let left = AtomicUsize::new(1);
                    // The leader waits (bounded) for a helper to take the one piece.
                    run(&|idx| {
                        if idx == 0 {
                            let t = Instant::now();
                            while left.load(Ordering::Relaxed) == 1 && t.elapsed() < Duration::from_secs(5) {
                                std::hint::spin_loop();
                            }
                        } else if left.fetch_sub(1, Ordering::Relaxed) == 1 {
                            by.store(idx, Ordering::Relaxed);
                        }
                    });
                    helped += (by.into_inner() != 0) as usize;
                }
                helped
            })
        });
        assert_eq!(helped, 5);
    }

    /// Two teams on one 2-thread pool at once (two sessions stepped from two threads):
    /// each leader gets no helper while the other leads, and neither deadlocks.
    #[test]
    fn concurrent_teams_on_one_pool_finish() {
        let p = pool(2);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|k| {
                    let p = &p;
                    s.spawn(move || {
                        p.install(|| {
                            with_team(|| {
                                let total = AtomicU64::new(0);
                                for _ in 0..300 {
                                    for_each(16, |i| {
                                        total.fetch_add(i as u64 + k, Ordering::Relaxed);
                                    });
                                }
                                total.into_inner()
                            })
                        })
                    })
                })
                .collect();
            for (k, h) in handles.into_iter().enumerate() {
                assert_eq!(h.join().unwrap(), 300 * (120 + 16 * k as u64));
            }
        });
    }

    /// A panic in the leader's or a helper's part reaches the caller, and the pool still
    /// works afterwards.
    #[test]
    fn team_panics_reach_the_caller() {
        let p = pool(2);
        for panic_on in [0usize, 1] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                p.install(|| {
                    with_team(|| {
                        let joined = AtomicBool::new(false);
                        run(&|idx| {
                            if idx == 0 {
                                let t = Instant::now();
                                while !joined.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(10) {
                                    std::hint::spin_loop();
                                }
                            } else {
                                joined.store(true, Ordering::Relaxed);
                            }
                            if idx == panic_on {
                                panic!("boom");
                            }
                        });
                    })
                })
            }));
            assert!(r.is_err(), "a panic in part {panic_on} was lost");
        }
        assert_eq!(p.install(|| with_team(|| 7)), 7);
    }
}
