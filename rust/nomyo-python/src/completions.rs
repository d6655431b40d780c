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
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::errors::CoreError;
use crate::reply::Outcome;

pub(crate) struct Queue {
    items: Mutex<Vec<(u64, Outcome)>>,
    reader: UnixStream,
    writer: UnixStream,
}

impl Queue {
    /// Put `items` back at the front (ahead of any pushed meanwhile) and wake the loop.
    fn put_back(&self, items: impl Iterator<Item = (u64, Outcome)>) {
        {
            let mut queue = self.items.lock().unwrap_or_else(|e| e.into_inner());
            let newer = std::mem::take(&mut *queue);
            queue.extend(items);
            queue.extend(newer);
        }
        let _ = (&self.writer).write(&[1]);
    }

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

/// Append `(token, ok, Reply | exception)` for one request to `list`, leaving `outcome`
/// as it was, so that it can be handed over again if this fails. PyO3 panics where CPython
/// cannot allocate an object it assumed it could; that counts as a failure here too, and so
/// does a request's exception that came out as a MemoryError while it was being made.
fn handed_over(list: &Bound<'_, PyList>, token: u64, outcome: &Outcome) -> PyResult<()> {
    let py = list.py();
    let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| -> PyResult<()> {
        let (ok, value) = match outcome {
            Ok(reply) => (true, Py::new(py, reply.clone())?.into_any()),
            Err(failure) => {
                let err = PyErr::from(CoreError(failure.clone()));
                if err.is_instance_of::<PyMemoryError>(py) {
                    return Err(err); // not the request's own error
                }
                (false, err.into_value(py).into_any())
            }
        };
        list.append((token, ok, value))
    }));
    attempt.unwrap_or_else(|_| {
        Err(PyMemoryError::new_err(
            "could not hand over a finished request",
        ))
    })
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

    /// The requests finished since the last call: `[(token, ok, Reply | exception)]`.
    ///
    /// Nothing is lost when Python runs out of memory on the way: a request leaves the queue
    /// only once it is in the returned list. Those that could not be handed over stay
    /// queued, in order, and the loop is woken again to come back for them; when not even
    /// the first could, the error is raised (the event loop reports it and calls again).
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Before the wake bytes are read: if this fails the descriptor stays readable.
        let list = std::panic::catch_unwind(|| PyList::new(py, std::iter::empty::<Py<PyAny>>()))
            .unwrap_or_else(|_| Err(PyMemoryError::new_err(())))?;
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
        let stuck = items
            .iter()
            .enumerate()
            .find_map(|(handed, (token, outcome))| {
                handed_over(&list, *token, outcome)
                    .err()
                    .map(|err| (handed, err))
            });
        if let Some((handed, err)) = stuck {
            self.queue.put_back(items.into_iter().skip(handed));
            if handed == 0 {
                return Err(err);
            }
        }
        Ok(list)
    }

    fn __repr__(&self) -> String {
        format!("<Completions fd={}>", self.queue.reader.as_raw_fd())
    }
}
