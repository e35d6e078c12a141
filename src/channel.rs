//! A bounded queue with one receiver that holds no memory while it is empty: what every
//! agent's mailbox and every WebSocket's outbound queue are. Tens of thousands of them sit idle
//! at once, and general-purpose channels keep per-channel buffers and waiter nodes allocated
//! while idle (about 440 bytes each with flume, 1.5 KB with tokio's mpsc; see BENCHMARKS.md).
//! Here the queue's storage is given back whenever it drains, and waiting takes no allocation:
//! the receiver and full senders wait on [`tokio::sync::Notify`], whose waiters live in the
//! waiting futures themselves.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A queue holding at most `capacity` values.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            receiver_gone: false,
            aborted: false,
        }),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        ready: Notify::new(),
        room: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    senders: AtomicUsize,
    /// Wakes the receiver: a value, the last sender gone, or an abort. The receiver is the
    /// only one waiting here, so `notify_one`'s stored permit covers a value that arrives
    /// between its look at the queue and its wait.
    ready: Notify,
    /// Wakes a sender waiting for room.
    room: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    receiver_gone: bool,
    aborted: bool,
}

impl<T> Shared<T> {
    /// Closes the queue as `mark` says, drops what it holds (outside the lock) and wakes every
    /// sender waiting for room, to learn it is closed.
    fn close(&self, mark: impl FnOnce(&mut State<T>)) {
        let dropped = {
            let mut state = self.state.lock();
            mark(&mut state);
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
        self.room.notify_waiters();
    }
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` values.
    Full(T),
    /// The receiver is gone, or the queue was aborted.
    Closed(T),
}

/// The receiver is gone, or the queue was aborted; the value comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<T>(pub T);

#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Every sender is gone and nothing is left in the queue.
    Closed,
    /// A sender gave up on the queue: what it held is dropped.
    Aborted,
}

impl<T> Sender<T> {
    /// Queues `value` if there is room.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.shared.state.lock();
            if state.receiver_gone || state.aborted {
                return Err(TrySendError::Closed(value));
            }
            if state.queue.len() >= self.shared.capacity {
                return Err(TrySendError::Full(value));
            }
            state.queue.push_back(value);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Queues `value`, waiting for room.
    pub async fn send(&self, mut value: T) -> Result<(), Closed<T>> {
        loop {
            // Registered before the look at the queue, so room made in between wakes it.
            let mut room = pin!(self.shared.room.notified());
            room.as_mut().enable();
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(Closed(v)),
                Err(TrySendError::Full(v)) => value = v,
            }
            room.await;
        }
    }

    /// Gives up on the queue: the receiver's next `recv` says so at once, even when the queue
    /// is full, and what it holds is dropped.
    pub fn abort(&self) {
        self.shared.close(|state| state.aborted = true);
        self.shared.ready.notify_one();
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("queued", &self.shared.state.lock().queue.len())
            .finish()
    }
}

impl<T> Receiver<T> {
    /// The next value, waiting for one.
    pub async fn recv(&self) -> Result<T, RecvError> {
        loop {
            if let Some(next) = self.try_recv() {
                return next;
            }
            self.shared.ready.notified().await;
        }
    }

    /// The next value if there is one, or why there will be none.
    fn try_recv(&self) -> Option<Result<T, RecvError>> {
        let value = {
            let mut state = self.shared.state.lock();
            if state.aborted {
                return Some(Err(RecvError::Aborted));
            }
            let Some(value) = state.queue.pop_front() else {
                // Read under the lock: a sender queues under it before it leaves, so with no
                // sender left, nothing more can arrive after this look at the queue.
                let gone = self.shared.senders.load(Ordering::Acquire) == 0;
                return gone.then_some(Err(RecvError::Closed));
            };
            if state.queue.is_empty() && state.queue.capacity() > 0 {
                state.queue = VecDeque::new();
            }
            value
        };
        self.shared.room.notify_one();
        Some(Ok(value))
    }

    pub fn is_empty(&self) -> bool {
        self.shared.state.lock().queue.is_empty()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.close(|state| state.receiver_gone = true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn values_arrive_in_order_and_a_full_queue_says_so() {
        let (tx, rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Ok(1));
        tx.try_send(3).unwrap();
        assert_eq!(rx.recv().await, Ok(2));
        assert_eq!(rx.recv().await, Ok(3));
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_storage_back() {
        let (tx, rx) = bounded(8);
        for i in 0..8 {
            tx.try_send(i).unwrap();
        }
        assert!(rx.shared.state.lock().queue.capacity() >= 8);
        for _ in 0..8 {
            rx.recv().await.unwrap();
        }
        assert_eq!(rx.shared.state.lock().queue.capacity(), 0);
    }

    // Paused: the sleep only lets the other task reach its wait, at no cost in real time.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_receiver_wakes_for_a_value_from_another_task() {
        let (tx, rx) = bounded(1);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.try_send("hello").unwrap();
        assert_eq!(waiting.await.unwrap(), Ok("hello"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_waits_for_room() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(2).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!blocked.is_finished(), "no room yet");
        assert_eq!(rx.recv().await, Ok(1));
        blocked.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_receiver_sees_the_last_values_then_the_senders_leaving() {
        let (tx, rx) = bounded(4);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        drop(tx);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            let third = rx.recv().await;
            (first, second, third)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx2.try_send(2).unwrap();
        drop(tx2);
        assert_eq!(
            waiting.await.unwrap(),
            (Ok(1), Ok(2), Err(RecvError::Closed))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn senders_learn_the_receiver_is_gone_even_while_waiting() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(2).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(Closed(2)));
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    /// The last sender queues a value and leaves while the receiver looks: the value is never
    /// mistaken for a closed, empty queue.
    #[test]
    fn a_last_value_racing_the_last_sender_leaving_is_still_received() {
        for _ in 0..20_000 {
            let (tx, rx) = bounded::<u32>(1);
            let sender = std::thread::spawn(move || {
                tx.try_send(7).unwrap();
                drop(tx);
            });
            let got = loop {
                if let Some(got) = rx.try_recv() {
                    break got;
                }
                std::thread::yield_now();
            };
            sender.join().unwrap();
            assert_eq!(got, Ok(7));
        }
    }

    #[tokio::test]
    async fn an_abort_reaches_the_receiver_past_a_full_queue() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
        tx.abort();
        assert_eq!(rx.recv().await, Err(RecvError::Aborted));
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }
}
