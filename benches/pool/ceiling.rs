//! The database's own ceiling for the pool's cycle: the procedures of `ceiling.sql` make the
//! cycle the controller makes (a completion queuing the run's next step, leased at once to the
//! same worker, through `loopd_complete_and_claim` with the arguments the controller sends)
//! inside Postgres, from several sessions on their own runs, each cycle its own transaction or
//! several to one (as the controller writes completions that arrive together). What it reaches is what the cycle's statements cost the database alone: no controller, no
//! HTTP, no client protocol, no network.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

/// Sessions making cycles at once: enough to keep every core busy through the commits' waits.
pub const SESSIONS: usize = 8;
/// Cycles per call of the procedure.
const BATCH: u64 = 24;
/// Cycles to a transaction for the batched ceiling: about what the controller's batches carry
/// in the throughput section (7 to 8).
pub const PER_COMMIT: u64 = 8;

/// Cycles per second over `secs` seconds in the database at `url` (which holds the bench's
/// runs: the seeded runs copy one of them, so prompts and run configs have its sizes): first
/// through the lone function with each of `per_commit` cycles to a transaction in turn, then
/// through the batch function, [`PER_COMMIT`] cycles (of as many runs) to a batch, as the
/// controller sends them.
pub fn cycles_per_sec(url: &str, secs: u64, per_commit: &[u64]) -> Vec<f64> {
    let mut c = PgConnection::establish(url).expect("connect for the ceiling");
    c.batch_execute(include_str!("ceiling.sql"))
        .expect("install the ceiling's procedures");
    let runs = |i: usize| (0..PER_COMMIT).map(move |j| format!("ceiling-{i}-{j}"));
    for i in 0..SESSIONS {
        c.batch_execute(&format!(
            "CALL bench_ceiling_seed('ceiling-{i}', 'ceiling-w{i}')"
        ))
        .expect("seed a run for the ceiling");
        for run in runs(i) {
            c.batch_execute(&format!("CALL bench_ceiling_seed('{run}', '{run}-w')"))
                .expect("seed a batch's run for the ceiling");
        }
    }
    let phases = (loopd::domain::StepPhase::ALL.iter())
        .map(|p| format!("'{}'", p.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    // Simple protocol: a procedure that commits must not run in a transaction block.
    let rate = |call: String, cycles: u64| {
        crate::db_rate::per_second(url, SESSIONS, secs, move |i, c| {
            c.batch_execute(&call.replace("{i}", &i.to_string()))
                .expect("ceiling cycles");
            cycles
        })
    };
    let mut out: Vec<f64> = (per_commit.iter())
        .map(|n| {
            let call = format!(
                "CALL bench_ceiling_cycles('ceiling-{{i}}', 'ceiling-w{{i}}', {BATCH}, \
                 ARRAY[{phases}], {n})"
            );
            rate(call, BATCH)
        })
        .collect();
    let batches = BATCH / PER_COMMIT;
    let call = format!(
        "CALL bench_ceiling_batches(ARRAY[{}], {batches}, ARRAY[{phases}])",
        (0..PER_COMMIT)
            .map(|j| format!("'ceiling-{{i}}-{j}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push(rate(call, batches * PER_COMMIT));
    out
}
