//! `Completions`: where the I/O workers put finished requests for an asyncio event loop.
//!
//! A worker appends the outcome and, when the queue was empty, writes one byte to a socket
//! pair whose other end the loop watches (`loop.add_reader(completions.fileno(), ...)`).
//! The loop then calls `drain()`, which turns the outcomes into Python objects. Workers never
//! wait for the GIL and no thread is woken besides the loop's own; many requests finishing
//! together cost one wake-up.
//!
//! No wake-up is lost: `drain` empties the socket before it takes the queue, and every push
//! onto an empty queue writes a byte after it. A full socket already holds unread bytes.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::transport::{Failure, PyExchange};

/// What one request ended with.
pub(crate) type Outcome = Result<PyExchange, Failure>;

pub(crate) struct Queue {
    items: Mutex<Vec<(u64, Outcome)>>,
    reader: UnixStream,
    writer: UnixStream,
}

impl Queue {
    /// Called on an I/O worker: never blocks on Python.
    pub(crate) fn push(&self, token: u64, outcome: Outcome) {
        let was_empty = {
            let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            items.push((token, outcome));
            items.len() == 1
        };
        if was_empty {
            // WouldBlock: the socket is full of unread wake bytes, so the loop wakes anyway.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// Finished requests for one event loop (see the module documentation).
#[pyclass(frozen, name = "Completions", module = "nomyo._core")]
pub struct PyCompletions {
    pub(crate) queue: Arc<Queue>,
}

#[pymethods]
impl PyCompletions {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(PyCompletions {
            queue: Arc::new(Queue {
                items: Mutex::new(Vec::new()),
                reader,
                writer,
            }),
        })
    }

    /// The descriptor that becomes readable when requests have finished.
    fn fileno(&self) -> i32 {
        self.queue.reader.as_raw_fd()
    }

    /// The requests finished since the last call: `[(token, ok, Exchange | exception)]`.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut wake = [0u8; 64];
        loop {
            match (&self.queue.reader).read(&mut wake) {
                Ok(n) if n == wake.len() => continue,
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let items =
            std::mem::take(&mut *self.queue.items.lock().unwrap_or_else(|e| e.into_inner()));
        let list = PyList::empty(py);
        for (token, outcome) in items {
            let (ok, value) = match outcome {
                Ok(exchange) => (true, Py::new(py, exchange)?.into_any()),
                Err(failure) => (false, failure.into_py().into_value(py).into_any()),
            };
            list.append((token, ok, value))?;
        }
        Ok(list)
    }

    fn __repr__(&self) -> String {
        format!("<Completions fd={}>", self.queue.reader.as_raw_fd())
    }
}
