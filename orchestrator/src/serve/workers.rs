//! Connection workers: threads that each run a single-threaded runtime of
//! their own, like the worker threads of Envoy or nginx's worker processes.
//!
//! A connection accepted by a listener is handed to the worker with the
//! fewest connections and stays there: its requests, the handlers they call
//! and the connections those open to process tiers all run on one thread.
//! On the work-stealing runtime a request's task keeps moving between threads
//! (whichever thread saw its socket become ready runs it), paying a wake-up
//! across threads, cold caches and memory freed far from where it was
//! allocated, several times per request: a third more CPU per request
//! through a process tier (`docs/performance.md`).
//!
//! The price: a connection waits while its worker's thread waits for a core.
//! The orchestrator shares its machine with the programs of its process
//! tiers (and often with the clients), so by default it keeps one core out
//! of it: one worker per core but one. On the 2-core benchmark machine, one
//! worker against two gave the native path 1.3× the throughput and an eighth
//! of the p99 latency, and the path through a process tier a third of the
//! p99 for 10% less throughput. `--workers N` sets the count; `--workers
//! shared` ([`Workers::shared`]) serves connections on the work-stealing
//! runtime, where an idle thread takes over another's requests.
//!
//! With `--pin-workers`, each worker is bound to a CPU of its own (like
//! nginx's `worker_cpu_affinity`). Left to the scheduler, two busy workers
//! can end up taking turns on one core while the other runs the programs and
//! the clients: each connection of the waiting worker then waits a whole
//! scheduler tick (4 ms on the benchmark machine), which at times made the
//! p99 of two workers 3 to 4 times one worker's. Bound, it stays at one
//! worker's (`docs/performance.md`). It is not the default because a bound
//! worker cannot move away from a core that something else keeps busy.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::admission::Admission;
use super::timeouts;

/// How many threads serve connections (`orchestrator run --workers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkerThreads {
    /// One worker per core the process may use, but one (at least one).
    #[default]
    PerCore,
    /// This many workers.
    Count(std::num::NonZeroUsize),
    /// No workers: connections are served on the work-stealing runtime.
    Shared,
}

impl std::str::FromStr for WorkerThreads {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::PerCore),
            "shared" => Ok(Self::Shared),
            n => n.parse().map(Self::Count).map_err(|_| {
                format!("`{n}` is not a number of threads (1 or more), `auto` (one per core but one) or `shared`")
            }),
        }
    }
}

/// Why `--pin-workers` and `--workers shared` do not go together.
pub const PINNING_SHARED: &str = "`--pin-workers` binds worker threads to CPUs, and `--workers shared` has none";

/// The workers. Cheap to clone; the threads end when the last clone is dropped,
/// and with them the connections still open on them.
#[derive(Clone, Debug)]
pub struct Workers {
    pool: Arc<Pool>,
    /// The connections all listeners may have open at once.
    admission: Arc<Admission>,
    /// The timeouts of every connection served.
    timeouts: super::idle::Timeouts,
}

#[derive(Debug)]
enum Pool {
    /// Threads of our own; a connection goes to the least busy.
    Threads {
        workers: Vec<Worker>,
        /// Where the search for the least busy worker starts, so that ties rotate.
        next: AtomicUsize,
    },
    /// No threads: connections go to this (work-stealing) runtime.
    Shared(Handle),
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// The CPU it is bound to (`--pin-workers`).
    cpu: Option<usize>,
    connections: Arc<AtomicUsize>,
    /// Dropped with the workers: the thread's runtime then shuts down.
    _stop: oneshot::Sender<()>,
}

impl Workers {
    /// The workers `threads` asks for, each bound to a CPU of its own if
    /// `pin` (see the module's documentation). Must be called within a
    /// runtime (for `shared`).
    pub fn new(threads: WorkerThreads, pin: bool) -> std::io::Result<Self> {
        let count = match threads {
            WorkerThreads::PerCore => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                cores.saturating_sub(1).max(1)
            }
            WorkerThreads::Count(n) => n.get(),
            WorkerThreads::Shared if pin => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, PINNING_SHARED));
            }
            WorkerThreads::Shared => return Ok(Self::shared()),
        };
        let cpus = if pin { Some(allowed_cpus()?) } else { None };
        Self::start(count, cpus.as_deref())
    }

    /// Serves connections on the current (work-stealing) runtime: no threads
    /// of its own. Must be called within a runtime.
    pub fn shared() -> Self {
        Self {
            pool: Arc::new(Pool::Shared(Handle::current())),
            admission: Admission::new(usize::MAX),
            timeouts: super::idle::Timeouts::default(),
        }
    }

    /// Starts `count` (at least one) worker threads. With `cpus`, worker `i`
    /// is bound to `cpus[i]` (round and round if there are more workers than
    /// CPUs).
    pub fn start(count: usize, cpus: Option<&[usize]>) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let cpu = cpus.filter(|c| !c.is_empty()).map(|c| c[i % c.len()]);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let (bound, bound_rx) = std::sync::mpsc::channel();
            std::thread::Builder::new().name(format!("orch-worker-{i}")).spawn(move || {
                // Bound before it serves anything; it tells how that went.
                let binding = cpu.map_or(Ok(()), bind_this_thread);
                let failed = binding.is_err();
                let _ = bound.send(binding);
                if !failed {
                    timeouts::serve_on_this_thread(rt.handle());
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
            })?;
            match bound_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let cpu = cpu.unwrap_or_default();
                    return Err(std::io::Error::other(format!("cannot bind worker {i} to CPU {cpu}: {e}")));
                }
                Err(_) => return Err(std::io::Error::other(format!("worker {i} ended as it started"))),
            }
            workers.push(Worker { handle, cpu, connections: Arc::new(AtomicUsize::new(0)), _stop: stop });
        }
        match cpus {
            Some(cpus) => tracing::info!(workers = workers.len(), ?cpus, "Connection workers bound to CPUs."),
            None => tracing::debug!(workers = workers.len(), "Connection workers started."),
        }
        Ok(Self {
            pool: Arc::new(Pool::Threads { workers, next: AtomicUsize::new(0) }),
            admission: Admission::new(usize::MAX),
            timeouts: super::idle::Timeouts::default(),
        })
    }

    /// These workers, serving at most what `admission` admits.
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// The connection budget of every listener these workers serve.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// These workers, their connections held to `timeouts`.
    pub fn with_timeouts(mut self, timeouts: super::idle::Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The timeouts of every connection these workers serve.
    pub fn timeouts(&self) -> super::idle::Timeouts {
        self.timeouts
    }

    /// Runs the connection `serve` on the least busy worker. `serve` is
    /// called there, so what it registers (sockets, timers) belongs to that
    /// worker's runtime. The handle ends when the connection does.
    pub fn spawn_connection<F, Fut>(&self, serve: F) -> JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (workers, next) = match &*self.pool {
            Pool::Shared(runtime) => return runtime.spawn(async move { serve().await }),
            Pool::Threads { workers, next } => (workers, next),
        };
        let start = next.fetch_add(1, Ordering::Relaxed) % workers.len();
        let (after, before) = workers.split_at(start);
        let worker = after.iter().chain(before).min_by_key(|w| w.connections.load(Ordering::Relaxed));
        // `start` makes at least one worker, so there is a least busy one.
        let Some(worker) = worker else { unreachable!("a pool of worker threads is never empty") };
        worker.connections.fetch_add(1, Ordering::Relaxed);
        let guard = Counted(worker.connections.clone());
        worker.handle.spawn(async move {
            let _guard = guard;
            serve().await;
        })
    }

    /// Each worker thread's load and binding (none when shared), for the
    /// admin API's metrics.
    pub fn report(&self) -> Vec<WorkerReport> {
        match &*self.pool {
            Pool::Threads { workers, .. } => workers
                .iter()
                .map(|w| WorkerReport { connections: w.connections.load(Ordering::Relaxed), cpu: w.cpu })
                .collect(),
            Pool::Shared(_) => Vec::new(),
        }
    }
}

/// One worker thread, as [`Workers::report`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    /// Connections it serves now.
    pub connections: usize,
    /// The CPU it is bound to, if any.
    pub cpu: Option<usize>,
}

/// The CPUs this process may run on (its affinity mask: a container's
/// cpuset, `taskset`), in order.
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
    Ok((0..CpuSet::count()).filter(|&cpu| allowed.is_set(cpu).unwrap_or(false)).collect())
}

/// Binds the calling thread to `cpu`.
fn bind_this_thread(cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Counts a connection for as long as it is served.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open connections per worker thread.
    fn connections(workers: &Workers) -> Vec<usize> {
        workers.report().iter().map(|w| w.connections).collect()
    }

    #[tokio::test]
    async fn connections_spread_over_workers_and_are_counted_while_served() {
        let workers = Workers::start(2, None).unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        let (mut threads, mut served) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            let mut released = released.clone();
            served.push(workers.spawn_connection(move || async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
                let _ = released.wait_for(|r| *r).await;
            }));
            threads.push(rx.await.unwrap().unwrap());
        }
        threads.sort();
        assert_eq!(threads, ["orch-worker-0", "orch-worker-0", "orch-worker-1", "orch-worker-1"]);
        assert_eq!(connections(&workers), [2, 2]);

        release.send(true).unwrap();
        for connection in served {
            tokio::time::timeout(std::time::Duration::from_secs(10), connection)
                .await
                .expect("the connection ends once released")
                .unwrap();
        }
        assert_eq!(connections(&workers), [0, 0], "ended connections are no longer counted");
    }

    #[test]
    fn worker_threads_parse_from_the_command_line() {
        assert_eq!("auto".parse(), Ok(WorkerThreads::PerCore));
        assert_eq!("shared".parse(), Ok(WorkerThreads::Shared));
        assert_eq!("3".parse(), Ok(WorkerThreads::Count(3.try_into().unwrap())));
        let err = "0".parse::<WorkerThreads>().unwrap_err();
        assert!(err.contains("`0` is not a number of threads"), "{err}");
    }

    /// The CPUs the calling thread may run on.
    fn this_threads_cpus() -> Vec<usize> {
        let set = sched_getaffinity(Pid::from_raw(0)).unwrap();
        (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap()).collect()
    }

    #[tokio::test]
    async fn pinned_workers_each_run_on_one_allowed_cpu_in_turn() {
        let allowed = allowed_cpus().unwrap();
        let count = allowed.len() + 1;
        let workers = Workers::new(WorkerThreads::Count(count.try_into().unwrap()), true).unwrap();
        let mut bound = Vec::new();
        for _ in 0..count {
            let (tx, rx) = oneshot::channel();
            let (release, released) = oneshot::channel::<()>();
            // Held open until all are placed, so that each lands on a different worker.
            workers.spawn_connection(move || async move {
                let _ = tx.send((std::thread::current().name().map(str::to_owned), this_threads_cpus()));
                let _ = released.await;
            });
            bound.push((rx.await.unwrap(), release));
        }
        let mut placed: Vec<_> =
            bound.iter().map(|((thread, cpus), _)| (thread.clone().unwrap(), cpus.clone())).collect();
        placed.sort_by_key(|(thread, _)| thread["orch-worker-".len()..].parse::<usize>().unwrap());
        // One more worker than CPUs: the last one shares the first one's CPU.
        let expected: Vec<_> =
            (0..count).map(|i| (format!("orch-worker-{i}"), vec![allowed[i % allowed.len()]])).collect();
        assert_eq!(placed, expected);
        assert_eq!(this_threads_cpus(), allowed, "the caller's own affinity is left alone");
    }

    #[test]
    fn pinning_asks_for_worker_threads() {
        let err = Workers::new(WorkerThreads::Shared, true).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("`--workers shared` has none"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_workers_serve_on_the_runtime_they_were_made_in() {
        let workers = Workers::shared();
        assert!(workers.report().is_empty());
        let served = workers.spawn_connection(|| async {
            assert_eq!(std::thread::current().name(), Some("tokio-rt-worker"));
        });
        served.await.expect("served on the runtime's own threads");
    }
}
