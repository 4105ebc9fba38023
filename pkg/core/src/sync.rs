//! Small helpers for the standard library's locks, shared by every crate of the workspace.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the data if a thread panicked while holding it: every value kept
/// behind these mutexes stays consistent between statements, so a poisoned lock is not a reason to
/// stop serving.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
}
