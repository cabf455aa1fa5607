//! Where Postgres spends a window's time, statement by statement, the batch function's own
//! statements included: read from `pg_stat_statements` when the server has it loaded with
//! `pg_stat_statements.track = all` (e.g. a cluster started for the bench with
//! `-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all`, named by
//! `LOOPD_BENCH_PG`); on any other server the bench goes on without it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Nullable<Text>)]
    track: Option<String>,
}

#[derive(QueryableByName)]
struct Stat {
    #[diesel(sql_type = BigInt)]
    calls: i64,
    #[diesel(sql_type = Double)]
    ms: f64,
    #[diesel(sql_type = Text)]
    query: String,
}

/// Starts counting afresh on the database at `url`; `false` (and nothing changed) when the
/// server does not count nested statements.
pub fn start(url: &str) -> bool {
    let Ok(mut c) = PgConnection::establish(url) else {
        return false;
    };
    let track =
        diesel::sql_query("SELECT current_setting('pg_stat_statements.track', true) AS track")
            .get_result::<Setting>(&mut c);
    if !matches!(track, Ok(Setting { track: Some(t) }) if t == "all") {
        return false;
    }
    diesel::sql_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut c)
        .and_then(|_| diesel::sql_query("SELECT pg_stat_statements_reset()").execute(&mut c))
        .is_ok()
}

/// The statements of this database that took the most time since [`start`], each as its
/// share of the time of the costliest (the statement the controller sends, whose time
/// includes theirs), its calls per cycle and the start of its text.
pub fn report(url: &str, cycles: f64) -> Option<String> {
    let mut c = PgConnection::establish(url).ok()?;
    let stats: Vec<Stat> = diesel::sql_query(
        "SELECT calls, total_exec_time AS ms, \
                left(regexp_replace(query, '\\s+', ' ', 'g'), 48) AS query \
           FROM pg_stat_statements \
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
          ORDER BY total_exec_time DESC LIMIT 9",
    )
    .load(&mut c)
    .ok()?;
    let top = stats.first()?.ms.max(f64::MIN_POSITIVE);
    let parts: Vec<String> = (stats.iter())
        .map(|s| {
            format!(
                "{:.0} % `{}…` ({:.2} a cycle)",
                s.ms / top * 100.0,
                s.query,
                s.calls as f64 / cycles.max(1.0)
            )
        })
        .collect();
    Some(parts.join("; "))
}
