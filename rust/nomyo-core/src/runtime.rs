//! The process's Tokio runtime for requests run on behalf of a language binding, started on
//! first use.
//!
//! A forked child gets a runtime of its own: the parent's worker threads do not exist in it.
//! The parent's runtime object is leaked there rather than dropped, because dropping it
//! would wait for threads that will never answer.

use std::future::Future;
use std::sync::Mutex;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::AbortHandle;

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

fn start() -> std::io::Result<&'static Runtime> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let runtime = Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(16)
        .thread_name("nomyo-io")
        .enable_io()
        .enable_time()
        .build()?;
    Ok(Box::leak(Box::new(runtime)))
}

/// A handle to this process's runtime (a new one in a forked child).
pub fn handle() -> std::io::Result<Handle> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    match *slot {
        Some((owner, runtime)) if owner == pid => Ok(runtime.handle().clone()),
        _ => {
            let runtime = start()?;
            *slot = Some((pid, runtime));
            Ok(runtime.handle().clone())
        }
    }
}

/// Run `task` on this process's runtime; the handle stops it.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> std::io::Result<AbortHandle> {
    Ok(handle()?.spawn(task).abort_handle())
}
