//! The worker API of a real controller (`loopd --role controller` on a fresh Postgres
//! database), driven by the tests playing workers over plain HTTP: every route's success
//! shape and refusals (checked against the database: a refused request changes nothing),
//! leases under short timings (expiry, offline detection, bounded infrastructure retries,
//! idempotent completion), long polls, heartbeat verdicts, revocation, instance pinning,
//! draining, completions that claim the next step, label routing and affinity, and what `GET /workers`, `/metrics`, the events and
//! the log show.

#[path = "../support/mod.rs"]
mod support;

mod db;
mod harness;

mod accounts;
mod leases;
mod limits;
mod logs;
mod next;
mod observe;
mod polling;
mod rejects;
mod routing;
mod scopes;
mod shapes;
mod uploads;
mod usage;
