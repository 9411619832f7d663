//! A one-value channel that is also a future: wgpu's map callback sends, the forward pass awaits.
//! (Natively the value is already there after `poll`; in a browser it arrives from the event loop.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

type Slot<T> = Arc<Mutex<(Option<T>, Option<Waker>)>>;

pub(crate) struct Oneshot<T>(Slot<T>);

impl<T> Default for Oneshot<T> {
    fn default() -> Self {
        Oneshot(Arc::new(Mutex::new((None, None))))
    }
}

impl<T> Clone for Oneshot<T> {
    fn clone(&self) -> Self {
        Oneshot(self.0.clone())
    }
}

impl<T> Oneshot<T> {
    pub fn send(&self, v: T) {
        if let Ok(mut s) = self.0.lock() {
            s.0 = Some(v);
            if let Some(w) = s.1.take() {
                w.wake();
            }
        }
    }
}

impl<T> Future for Oneshot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = match self.0.lock() {
            Ok(s) => s,
            Err(e) => e.into_inner(),
        };
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
