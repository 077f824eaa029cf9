//! The proxy's worker threads: one single-threaded tokio runtime each, like HAProxy's
//! `nbthread`. Every listener has a socket per worker (`SO_REUSEPORT`), and a connection lives
//! on one worker, with that worker's pool of connections to targets: a request never crosses
//! threads, so it costs no cross-core wake-up and no contended lock.
//!
//! The kernel spreads new connections over the sockets by a hash of their addresses, which
//! leaves workers unevenly loaded (64 connections over 2 workers: 36 and 28 or worse in a
//! third of cases), and the connections of the busier one wait longer. So a worker that
//! accepts a connection while it serves more than another hands it to the one serving fewest
//! (`Spread`), as HAProxy gives each new connection to its least loaded thread.

use std::{
    cell::Cell,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    thread::JoinHandle,
};

use tokio::{runtime, sync::oneshot};

thread_local! {
    /// This thread's worker index; 0 off the workers.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is (0 off the workers): picks per-worker state.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Running workers; stopped (their tasks dropped) when dropped.
pub struct Workers {
    handles: Vec<runtime::Handle>,
    spread: Arc<Spread>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Self {
            handles: Vec::new(),
            spread: Arc::new(Spread {
                handles: Vec::new(),
                connections: Vec::new(),
            }),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let runtime = runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            workers.threads.push(
                std::thread::Builder::new()
                    .name(format!("lb-proxy-{index}"))
                    .spawn(move || {
                        INDEX.with(|i| i.set(index));
                        // Serves whatever is spawned on it until told to stop.
                        let _ = runtime.block_on(async move {
                            match super::send_batch::start() {
                                Ok(flusher) => {
                                    tokio::spawn(flusher);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "io_uring is not available: each connection sends its own bytes");
                                }
                            }
                            stopped.await
                        });
                    })?,
            );
        }
        workers.spread = Arc::new(Spread {
            handles: workers.handles.clone(),
            connections: workers.handles.iter().map(|_| AtomicU32::new(0)).collect(),
        });
        Ok(workers)
    }

    /// The connections each worker serves, and the way to hand one to another.
    pub fn spread(&self) -> Arc<Spread> {
        self.spread.clone()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `make()`'s future on each worker (`make` is called once per worker, with its index).
    pub fn spawn_on_each<F, Fut>(&self, mut make: F)
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        for (index, handle) in self.handles.iter().enumerate() {
            handle.spawn(make(index));
        }
    }
}

/// The client connections each worker serves (over every listener), and the workers' runtimes
/// to hand a connection to.
pub struct Spread {
    handles: Vec<runtime::Handle>,
    connections: Vec<AtomicU32>,
}

impl Spread {
    /// The worker that serves a connection `accepting` has just accepted: `accepting` itself
    /// unless another serves fewer, then the one serving fewest. The choice is counted at
    /// once (a burst of accepts sees each other's choices); the mark uncounts it when dropped.
    pub fn choose(self: &Arc<Self>, accepting: usize) -> ServedBy {
        let load = |w: usize| {
            self.connections
                .get(w)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        let fewest = (0..self.connections.len())
            .min_by_key(|&w| load(w))
            .unwrap_or(accepting);
        let worker = if load(fewest) < load(accepting) {
            fewest
        } else {
            accepting
        };
        if let Some(count) = self.connections.get(worker) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        ServedBy {
            spread: self.clone(),
            worker,
        }
    }

    /// The runtime of `worker`, to spawn a handed-over connection's task on.
    pub fn handle(&self, worker: usize) -> Option<&runtime::Handle> {
        self.handles.get(worker)
    }

    /// The connections `worker` serves now.
    pub fn connections(&self, worker: usize) -> u32 {
        self.connections
            .get(worker)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A connection counted on the worker that serves it, until dropped.
pub struct ServedBy {
    spread: Arc<Spread>,
    worker: usize,
}

impl ServedBy {
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for ServedBy {
    fn drop(&mut self) {
        if let Some(count) = self.spread.connections.get(self.worker) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_its_share_on_its_own_thread() {
        let workers = Workers::start(2).expect("workers");
        let (sent, received) = std::sync::mpsc::channel();
        workers.spawn_on_each(|index| {
            let sent = sent.clone();
            async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = sent.send((index, current(), name));
            }
        });
        let mut seen: Vec<_> = (0..2)
            .map(|_| {
                received
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("each worker runs")
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                (0, 0, Some("lb-proxy-0".to_owned())),
                (1, 1, Some("lb-proxy-1".to_owned()))
            ]
        );
    }

    #[test]
    fn a_new_connection_goes_to_the_worker_serving_fewest_unless_the_accepting_one_does() {
        let workers = Workers::start(2).expect("workers");
        let spread = workers.spread();
        // Every connection accepted by worker 0 (as a skewed hash would have it): they
        // alternate between the workers, and each is counted at once.
        let marks: Vec<ServedBy> = (0..6).map(|_| spread.choose(0)).collect();
        let chosen: Vec<usize> = marks.iter().map(ServedBy::worker).collect();
        assert_eq!(chosen, [0, 1, 0, 1, 0, 1]);
        assert_eq!((spread.connections(0), spread.connections(1)), (3, 3));
        // Worker 1's connections end: the next goes there, though worker 0 accepts it.
        let on_0: Vec<ServedBy> = marks.into_iter().filter(|m| m.worker() == 0).collect();
        let next = spread.choose(0);
        assert_eq!(next.worker(), 1);
        // A worker serving fewer keeps what it accepts; so does one serving as many.
        assert_eq!(spread.choose(1).worker(), 1);
        let on_1 = spread.choose(1);
        assert_eq!((spread.connections(0), spread.connections(1)), (3, 2));
        let equal = spread.choose(1);
        assert_eq!(equal.worker(), 1, "3 and 2 before: 1 serves fewer");
        let equal_again = spread.choose(0);
        assert_eq!(
            equal_again.worker(),
            0,
            "3 and 3 before: no needless hand-over"
        );
        drop((on_0, next, on_1, equal, equal_again));
        assert_eq!((spread.connections(0), spread.connections(1)), (0, 0));
    }
}
