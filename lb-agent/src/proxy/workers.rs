//! The proxy's worker threads: one single-threaded tokio runtime each, like HAProxy's
//! `nbthread`. Every listener has a socket per worker (`SO_REUSEPORT`: the kernel spreads new
//! connections over them), and a connection lives on the worker that accepted it, with that
//! worker's pool of connections to targets: a request never crosses threads, so it costs no
//! cross-core wake-up and no contended lock.

use std::{cell::Cell, future::Future, thread::JoinHandle};

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
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Self {
            handles: Vec::new(),
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
                        let _ = runtime.block_on(stopped);
                    })?,
            );
        }
        Ok(workers)
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
}
