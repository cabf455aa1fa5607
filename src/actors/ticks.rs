//! Periodic work of the actors: [`background_tick`] runs a job on a timer beside an actor's
//! mailbox, and [`PauseClock`] tells when this process itself did not run (stopped, suspended,
//! or cut off from its database) so that its workers do not pay for it. Used by the scheduler,
//! lease and registry actors; imports nothing of the crate.

use actix::{Actor, AsyncContext, Context};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Runs `job` every `every`, one run at a time, beside the actor's messages: unlike a
/// `ctx.wait` in `run_interval`, a slow run (a busy database) delays the next tick but never
/// holds the actor's mailbox, so claims, heartbeats and step completions go on meanwhile.
/// Stops with the actor.
pub fn background_tick<A, F, Fut>(ctx: &mut Context<A>, every: Duration, job: F)
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    ctx.spawn(actix::fut::wrap_future::<_, A>(async move {
        let start = tokio::time::Instant::now() + every;
        let mut t = tokio::time::interval_at(start, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            job().await;
        }
    }));
}

/// How long since this process last did something periodic (a lease sweep, an offline check):
/// a gap much longer than the period means the process itself did not run — stopped
/// (SIGSTOP; the monotonic clock counts it), on a suspended host (the wall clock does) — or
/// could not do it (a database outage), and its workers must not pay for that.
pub struct PauseClock {
    last: Mutex<(Instant, SystemTime)>,
}

impl PauseClock {
    pub fn new() -> Self {
        PauseClock {
            last: Mutex::new((Instant::now(), SystemTime::now())),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, (Instant, SystemTime)> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time since the last [`reset`](Self::reset), by whichever clock moved more.
    pub fn since(&self) -> Duration {
        let (i, w) = *self.last();
        let wall = SystemTime::now().duration_since(w).unwrap_or_default();
        i.elapsed().max(wall)
    }

    pub fn reset(&self) {
        *self.last() = (Instant::now(), SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::PauseClock;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_pause_counts_by_the_clock_that_moved_more() {
        let c = PauseClock::new();
        assert!(c.since() < Duration::from_secs(5));
        // A suspended host: the wall clock moved an hour, the monotonic one did not.
        c.last.lock().unwrap().1 = SystemTime::now() - Duration::from_secs(3600);
        assert!(c.since() >= Duration::from_secs(3600));
        c.reset();
        assert!(c.since() < Duration::from_secs(5));
    }
}
