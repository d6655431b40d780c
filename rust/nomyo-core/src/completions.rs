//! A queue of finished requests for one event loop, with a descriptor that wakes the loop.
//!
//! A worker appends an item and, when the queue was empty, writes one byte to a socket pair
//! whose other end the loop watches (for asyncio: `loop.add_reader(queue.fd(), ...)`). The
//! loop then calls [`Queue::take`]. Workers never wait for the loop, and many requests
//! finishing together cost one wake-up.
//!
//! No wake-up is lost: `take` empties the socket before it takes the items, and every push
//! onto an empty queue writes a byte after it. A full socket already holds unread bytes, so
//! a write that would block is not needed.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};

/// Items under the caller's tokens, and the socket pair that signals them.
pub struct Queue<T> {
    items: Mutex<Vec<(u64, T)>>,
    reader: UnixStream,
    writer: UnixStream,
}

impl<T> Queue<T> {
    /// An empty queue with a fresh non-blocking socket pair.
    pub fn new() -> std::io::Result<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Queue {
            items: Mutex::new(Vec::new()),
            reader,
            writer,
        })
    }

    /// The descriptor that becomes readable when items are waiting.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    fn items(&self) -> MutexGuard<'_, Vec<(u64, T)>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        // WouldBlock: the socket is full of unread wake bytes, so the loop wakes anyway.
        let _ = (&self.writer).write(&[1]);
    }

    /// Append `item` under `token`; never blocks (called on an I/O worker).
    pub fn push(&self, token: u64, item: T) {
        let was_empty = {
            let mut items = self.items();
            items.push((token, item));
            items.len() == 1
        };
        if was_empty {
            self.wake();
        }
    }

    /// Put `items` back at the front (ahead of any pushed meanwhile), in their order, and
    /// wake the loop to come back for them.
    pub fn put_back(&self, items: impl IntoIterator<Item = (u64, T)>) {
        {
            let mut queue = self.items();
            let newer = std::mem::take(&mut *queue);
            queue.extend(items);
            queue.extend(newer);
        }
        self.wake();
    }

    /// Read the wake bytes, then take every item, oldest first.
    pub fn take(&self) -> std::io::Result<Vec<(u64, T)>> {
        let mut wake = [0u8; 64];
        loop {
            match (&self.reader).read(&mut wake) {
                Ok(n) if n == wake.len() => continue,
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut *self.items()))
    }

    /// [`take`](Self::take) every item and hand each to `hand_over`, oldest first, losing
    /// none: from the first one it refuses, the items go back to the front of the queue (see
    /// [`put_back`](Self::put_back)) and its error is returned with the number handed over.
    pub fn hand_over<E>(
        &self,
        mut hand_over: impl FnMut(u64, &T) -> Result<(), E>,
    ) -> std::io::Result<Option<(usize, E)>> {
        let items = self.take()?;
        let stuck = items
            .iter()
            .enumerate()
            .find_map(|(handed, (token, item))| {
                hand_over(*token, item).err().map(|err| (handed, err))
            });
        if let Some((handed, _)) = &stuck {
            self.put_back(items.into_iter().skip(*handed));
        }
        Ok(stuck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Whether the descriptor is readable right now.
    fn readable<T>(queue: &Queue<T>) -> bool {
        let mut poll = libc::pollfd {
            fd: queue.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        assert!(ready >= 0);
        ready == 1
    }

    /// Wake bytes waiting on the descriptor (read without taking the items).
    fn wake_bytes<T>(queue: &Queue<T>) -> usize {
        let mut count = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = (&queue.reader).read(&mut buf) {
            count += n;
        }
        count
    }

    #[test]
    fn a_push_onto_an_empty_queue_wakes_and_take_returns_it() {
        let queue = Queue::new().unwrap();
        assert!(!readable(&queue));
        queue.push(7, "done");
        assert!(readable(&queue));
        assert_eq!(queue.take().unwrap(), vec![(7, "done")]);
        assert!(!readable(&queue), "take read the wake byte");
        assert!(queue.take().unwrap().is_empty());
    }

    #[test]
    fn many_pushes_before_a_take_write_one_wake_byte() {
        let queue = Queue::new().unwrap();
        for token in 0..1000 {
            queue.push(token, token * 2);
        }
        assert_eq!(wake_bytes(&queue), 1);
        let items = queue.take().unwrap();
        assert_eq!(items.len(), 1000);
        assert!(items.iter().all(|&(token, item)| item == token * 2));
        assert!(items.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
    }

    #[test]
    fn put_back_keeps_its_items_ahead_of_newer_ones_and_wakes() {
        let queue = Queue::new().unwrap();
        queue.push(1, 'a');
        queue.push(2, 'b');
        queue.push(3, 'c');
        let mut taken = queue.take().unwrap();
        queue.push(4, 'd'); // finished while the first items were being handed over
        let stuck = taken.split_off(1);
        queue.put_back(stuck);
        assert!(readable(&queue));
        assert_eq!(queue.take().unwrap(), vec![(2, 'b'), (3, 'c'), (4, 'd')]);
    }

    #[test]
    fn hand_over_keeps_what_was_refused_in_order_ahead_of_newer_items() {
        let queue = Queue::new().unwrap();
        for token in 1..=4 {
            queue.push(token, token * 10);
        }
        let mut handed = Vec::new();
        let refused = queue
            .hand_over(|token, &item| {
                if token == 3 {
                    // As if finished while the others were being handed over.
                    queue.push(5, 50);
                    return Err("out of memory");
                }
                handed.push(item);
                Ok(())
            })
            .unwrap();
        assert_eq!(refused, Some((2, "out of memory")));
        assert_eq!(handed, [10, 20]);
        assert!(readable(&queue), "woken to come back for the rest");
        let mut rest = Vec::new();
        let refused = queue
            .hand_over(|token, &item| {
                rest.push((token, item));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(refused, None);
        assert_eq!(rest, [(3, 30), (4, 40), (5, 50)]);
    }

    #[test]
    fn no_wake_up_is_lost_when_pushes_race_a_drain() {
        const WORKERS: u64 = 4;
        const EACH: u64 = 5000;
        let queue = Arc::new(Queue::new().unwrap());
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        queue.push(w * EACH + i, ());
                    }
                })
            })
            .collect();
        // The loop: wait until readable, take. Every item must arrive through a wake-up; an
        // item queued without a readable descriptor would hang this loop (until the timeout).
        let mut seen = vec![false; (WORKERS * EACH) as usize];
        let mut count = 0;
        while count < seen.len() {
            let mut poll = libc::pollfd {
                fd: queue.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
            assert_eq!(
                ready, 1,
                "items queued but the descriptor never became readable"
            );
            for (token, ()) in queue.take().unwrap() {
                assert!(!std::mem::replace(&mut seen[token as usize], true));
                count += 1;
            }
        }
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(queue.take().unwrap().is_empty());
    }
}
