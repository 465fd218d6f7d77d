//! The locks and condition variables of the chunk cache, in one place so that
//! interleaving tests can run the same code under shuttle's schedulers (as
//! mountpoint-s3 does with its own `sync` module).
//!
//! Normally these are parking_lot's. With the `shuttle` feature they are thin
//! wrappers over shuttle's, with parking_lot's calling convention, and with one
//! difference on purpose: `wait_for` waits with no timeout, so a wake-up that
//! never comes shows up as a deadlock that shuttle reports, where in production
//! it would only be a slow retry.

#[cfg(not(feature = "shuttle"))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
pub(crate) use model::{Condvar, Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
mod model {
    use std::ops::{Deref, DerefMut};
    use std::time::Duration;

    /// A mutex whose `lock` cannot fail (a poisoned lock panics: tests only).
    #[derive(Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    pub(crate) struct MutexGuard<'a, T>(Option<shuttle::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(t: T) -> Mutex<T> {
            Mutex(shuttle::sync::Mutex::new(t))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().expect("a lock poisoned by a panic")))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0
                .as_ref()
                .expect("a guard is only empty inside wait_for")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0
                .as_mut()
                .expect("a guard is only empty inside wait_for")
        }
    }

    #[derive(Default)]
    pub(crate) struct Condvar(shuttle::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(shuttle::sync::Condvar::new())
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        /// Waits for a notification, with no timeout (see the module doc).
        pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, _timeout: Duration) {
            let inner = guard
                .0
                .take()
                .expect("a guard is only empty inside wait_for");
            guard.0 = Some(self.0.wait(inner).expect("a lock poisoned by a panic"));
        }
    }
}
