//! Taking the standard library's locks whatever a panicking thread left behind, and waiting for
//! a deadline that may not be set: the one helpers for every crate of the workspace.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, recovering the data if a thread panicked while holding it: every value kept
/// behind these mutexes stays consistent between statements, so a poisoned lock is not a reason to
/// stop serving.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `lock` for reading, recovering the data if a writer panicked (see [`lock`]).
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `lock` for writing, recovering the data if a writer panicked (see [`lock`]).
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sleeps until `deadline`; forever when there is none (a `select!` branch that never fires).
/// The timer is boxed when there is a deadline, so that a loop waiting on it with none (most of
/// the time, in every trigger's tasks) does not carry a timer's room in its own future.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_yields_its_data() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let held = mutex.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poisoning the lock");
        })
        .join();
        assert!(panicked.is_err() && mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }

    #[test]
    fn a_poisoned_rwlock_still_yields_its_data() {
        let rwlock = std::sync::Arc::new(RwLock::new(1));
        let held = rwlock.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = held.write().unwrap();
            panic!("poisoning the lock");
        })
        .join();
        assert!(panicked.is_err() && rwlock.is_poisoned());
        *write(&rwlock) += 1;
        assert_eq!(*read(&rwlock), 2);
    }
}
