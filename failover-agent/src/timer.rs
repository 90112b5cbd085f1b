//! The agent's round timer: a `timerfd` on `CLOCK_MONOTONIC` (the clock
//! std's `Instant` reads), woken through tokio's reactor. Tokio's own timer
//! wheel has a resolution of one millisecond and rounds every sleep up to
//! the next tick, so at `probe_interval_ms = 1` rounds came ~1.6 ms apart
//! (about 600 of 1000 a second) and a silent gateway was found late; a
//! `timerfd` wakes within microseconds of the deadline.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    time::Instant,
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::unix::AsyncFd;

/// Sleeps until a deadline, to the microsecond. One per agent; each
/// [`RoundTimer::sleep_until`] replaces the deadline of the one before
/// (a sleep dropped unfinished leaves nothing behind that could end the
/// next one early).
pub struct RoundTimer {
    fd: AsyncFd<Fd>,
}

/// The `timerfd`, as tokio's reactor takes it.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl RoundTimer {
    /// A timer on `CLOCK_MONOTONIC`.
    pub fn new() -> io::Result<Self> {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        // SAFETY: the `TimerFd` owns its descriptor; it stays open and the
        // same for as long as the `AsyncFd` holding it lives.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE)? };
        Ok(Self { fd })
    }

    /// Returns at `due` (at once if it has passed).
    pub async fn sleep_until(&self, due: Instant) {
        let Some(left) = due.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return;
        };
        // Arming anew also clears expirations of an earlier, dropped sleep.
        if self
            .fd
            .get_ref()
            .0
            .set(Expiration::OneShot(TimeSpec::from_duration(left)), TimerSetTimeFlags::empty())
            .is_err()
        {
            // Cannot happen with a valid relative time; never spin.
            tokio::time::sleep_until(due.into()).await;
            return;
        }
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                tokio::time::sleep_until(due.into()).await;
                return;
            };
            let mut ticks = [0u8; 8];
            match ready.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().0.as_fd(), &mut ticks)?)) {
                Ok(Ok(_)) => {
                    // Drained: not readable until it is armed and expires
                    // again (the next sleep waits instead of reading EAGAIN).
                    ready.clear_ready();
                    return;
                }
                // A cleared readiness (an old wake-up): wait again.
                Err(_would_block) => {}
                Ok(Err(_)) => {
                    tokio::time::sleep_until(due.into()).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn never_wakes_before_the_deadline_and_a_dropped_sleep_leaves_nothing_behind() {
        let timer = RoundTimer::new().expect("timerfd");
        for _ in 0..50 {
            let due = Instant::now() + Duration::from_micros(700);
            timer.sleep_until(due).await;
            assert!(Instant::now() >= due, "woke before the deadline");
        }
        // A sleep given up well before its deadline (another input won;
        // tokio's own timeout rounds to a millisecond, hence 2 of 20): the
        // next, longer one still waits its own time.
        let _ = tokio::time::timeout(
            Duration::from_millis(2),
            timer.sleep_until(Instant::now() + Duration::from_millis(20)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(25)).await; // the first one's expiry passes unread
        let due = Instant::now() + Duration::from_millis(40);
        timer.sleep_until(due).await;
        assert!(Instant::now() >= due, "an old expiry ended the next sleep early");
        // A deadline in the past: at once.
        timer.sleep_until(Instant::now().checked_sub(Duration::from_millis(5)).unwrap_or_else(Instant::now)).await;
    }
}
