//! Floor 0: the one helper every floor shares.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex. A poisoned one still holds consistent data (nothing here
/// panics while changing guarded state), so it is used rather than failing every
/// later call.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
