//! Hand-offs between the daemon's threads that never allocate, not even the first time a
//! thread waits.
//!
//! They are crossbeam's bounded channels used only through `try_send` and `try_recv`,
//! which never allocate, plus a [`Doorbell`] that a receiver with nothing to take sleeps
//! on. crossbeam's own blocking receive allocates the first time a thread blocks (its
//! per-thread context) and the first time any thread waits on a channel (the channel's
//! list of waiters). In the daemon such a first wait can fall in any frame: a receiver that
//! always found a frame waiting blocks for the first time when the scheduler stops the
//! capture thread in the middle of replacing the queued frame. `daemon_alloc` caught it
//! under qemu (2 allocations, once in a few runs). The doorbell is a std `Mutex` and
//! `Condvar`, futexes on Linux, which allocate nothing.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use crossbeam_channel::{RecvTimeoutError, TryRecvError, TrySendError};

/// A generation counter that senders bump and receivers wait to see change (and that a
/// receiver about to wait bumps for a sender waiting for demand).
#[derive(Debug, Default)]
struct Doorbell {
    rung: Mutex<u64>,
    changed: Condvar,
    /// Receivers waiting for an item.
    receivers_waiting: AtomicUsize,
}

impl Doorbell {
    fn lock(&self) -> MutexGuard<'_, u64> {
        // A counter cannot be left half-updated.
        self.rung.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn generation(&self) -> u64 {
        *self.lock()
    }

    fn ring(&self) {
        let mut rung = self.lock();
        *rung = rung.wrapping_add(1);
        drop(rung);
        self.changed.notify_all();
    }

    /// Sleeps until the bell rang after `seen` was read, or `timeout` passed.
    fn wait_past(&self, seen: u64, timeout: Duration) {
        let rung = self.lock();
        if *rung == seen {
            let _ = self
                .changed
                .wait_timeout_while(rung, timeout, |rung| *rung == seen);
        }
    }
}

/// A bounded channel: its two ends share one doorbell.
pub fn bounded<T>(capacity: usize) -> (HandoffSender<T>, HandoffReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let bell = Arc::new(Doorbell::default());
    (
        HandoffSender {
            tx: ManuallyDrop::new(tx),
            bell: Arc::clone(&bell),
        },
        HandoffReceiver { rx, bell },
    )
}

/// The sending end. Dropping the last one wakes the receivers, which then see the channel
/// disconnected.
#[derive(Debug)]
pub struct HandoffSender<T> {
    /// Dropped by hand, before the bell rings: see `drop`.
    tx: ManuallyDrop<crossbeam_channel::Sender<T>>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for HandoffSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: ManuallyDrop::new(crossbeam_channel::Sender::clone(&self.tx)),
            bell: Arc::clone(&self.bell),
        }
    }
}

impl<T> HandoffSender<T> {
    /// Sends without waiting and wakes a waiting receiver.
    ///
    /// # Errors
    /// The item back when the channel is full or has no receiver.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item)?;
        self.bell.ring();
        Ok(())
    }

    /// Waits until a receiver waits on an empty channel, at most `timeout`; false when it
    /// timed out. For a producer that can make an item at any moment (an image sequence
    /// played as fast as possible): made on demand, an item neither waits in the channel
    /// nor is overtaken there.
    pub fn wait_for_demand(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Read before looking, so that a receiver starting to wait rings past it.
            let seen = self.bell.generation();
            if self.bell.receivers_waiting.load(Ordering::SeqCst) > 0 && self.tx.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.bell.wait_past(seen, deadline - now);
        }
    }
}

impl<T> Drop for HandoffSender<T> {
    fn drop(&mut self) {
        // The sender goes first, so that a receiver woken by the bell finds the channel
        // already disconnected when this was the last one.
        // SAFETY: `tx` is dropped once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.tx) };
        self.bell.ring();
    }
}

/// The receiving end.
#[derive(Debug)]
pub struct HandoffReceiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for HandoffReceiver<T> {
    fn clone(&self) -> Self {
        Self {
            rx: self.rx.clone(),
            bell: Arc::clone(&self.bell),
        }
    }
}

impl<T> HandoffReceiver<T> {
    /// Takes an item if one is waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`], or [`TryRecvError::Disconnected`] once every sender is gone
    /// and the channel is empty.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Takes an item, waiting at most `timeout` for one.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`], or [`RecvTimeoutError::Disconnected`] once every
    /// sender is gone and the channel is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.rx.try_recv() {
            Ok(item) => return Ok(item),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        // About to wait: say so, for a sender waiting for demand.
        self.bell.receivers_waiting.fetch_add(1, Ordering::SeqCst);
        self.bell.ring();
        let deadline = Instant::now() + timeout;
        let received = loop {
            // Read before looking, so that an item sent in between rings past it.
            let seen = self.bell.generation();
            match self.rx.try_recv() {
                Ok(item) => break Ok(item),
                Err(TryRecvError::Disconnected) => break Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(RecvTimeoutError::Timeout);
            }
            self.bell.wait_past(seen, deadline - now);
        };
        self.bell.receivers_waiting.fetch_sub(1, Ordering::SeqCst);
        received
    }
}

/// Puts `item` into a one-slot channel, taking out (and recycling) what was waiting there:
/// the newest item wins. Returns the recycled item's count (0 or 1).
///
/// # Errors
/// The channel has no receiver any more.
pub(crate) fn put_newest<T>(
    tx: &HandoffSender<T>,
    rx_for_dropping: &HandoffReceiver<T>,
    recycle: &HandoffSender<T>,
    item: T,
) -> Result<u64, ()> {
    let mut dropped = 0;
    let mut item = item;
    loop {
        match tx.try_send(item) {
            Ok(()) => return Ok(dropped),
            Err(TrySendError::Full(back)) => {
                item = back;
                if let Ok(old) = rx_for_dropping.try_recv() {
                    dropped += 1;
                    let _ = recycle.try_send(old);
                }
            }
            Err(TrySendError::Disconnected(_)) => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_item_wins_a_full_slot() {
        let (tx, rx) = bounded::<u32>(1);
        let (recycle_tx, recycle_rx) = bounded::<u32>(4);
        assert_eq!(put_newest(&tx, &rx, &recycle_tx, 1), Ok(0));
        assert_eq!(put_newest(&tx, &rx, &recycle_tx, 2), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(recycle_rx.try_recv(), Ok(1));
    }

    #[test]
    fn a_sender_waiting_for_demand_wakes_when_a_receiver_waits_on_an_empty_channel() {
        let (tx, rx) = bounded::<u32>(1);
        // Nobody waits: no demand.
        assert!(!tx.wait_for_demand(Duration::from_millis(5)));
        let receiver = std::thread::spawn(move || {
            let first = rx.recv_timeout(Duration::from_secs(60));
            (first, rx)
        });
        assert!(tx.wait_for_demand(Duration::from_secs(60)));
        tx.try_send(3).expect("room");
        let (first, rx) = receiver.join().expect("receiver");
        assert_eq!(first, Ok(3));
        // A full channel is no demand, even with a receiver counted as waiting (as one
        // is between announcing its wait and looking again).
        tx.try_send(4).expect("room");
        tx.bell.receivers_waiting.fetch_add(1, Ordering::SeqCst);
        assert!(!tx.wait_for_demand(Duration::from_millis(5)));
        assert_eq!(rx.try_recv(), Ok(4));
        assert!(tx.wait_for_demand(Duration::from_millis(5)));
        tx.bell.receivers_waiting.fetch_sub(1, Ordering::SeqCst);
    }

    #[test]
    fn a_waiting_receiver_wakes_for_an_item_long_before_its_timeout() {
        let (tx, rx) = bounded::<u32>(1);
        let started = Instant::now();
        let receiver = std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        tx.try_send(7).expect("room");
        assert_eq!(receiver.join().expect("receiver"), Ok(7));
        // Only that it did not sleep out its timeout: a busy machine may be slow.
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn an_empty_channel_times_out_and_a_dropped_sender_disconnects_it() {
        let (tx, rx) = bounded::<u32>(1);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        );
        tx.try_send(1).expect("room");
        drop(tx);
        // What was sent before the drop is still delivered.
        assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Ok(1));
        let started = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)),
            Err(RecvTimeoutError::Disconnected)
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_receiver_waiting_when_the_last_sender_drops_sees_the_disconnection() {
        let (tx, rx) = bounded::<u32>(1);
        let receiver = std::thread::spawn(move || {
            let started = Instant::now();
            (rx.recv_timeout(Duration::from_secs(60)), started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        let (received, waited) = receiver.join().expect("receiver");
        assert_eq!(received, Err(RecvTimeoutError::Disconnected));
        assert!(waited < Duration::from_secs(30));
    }
}
