//! Run progress both the SchedulerActor and the LeaseActor need, below both of them: the
//! decision that follows a finished step ([`decide`]: the scheduler takes it in an advance's
//! transaction, the lease owner in a completion's, on the scheduler's behalf), what that
//! decision leaves to carry out ([`outcome`]), the prompts of queued steps ([`prompts`]) and
//! what a run's row says beyond its columns ([`run`]), and the copies of a run's files in its
//! log directories ([`logs`]). It imports neither owner.

pub mod decide;
pub mod logs;
pub mod outcome;
pub mod prompts;
pub mod run;
