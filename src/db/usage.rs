//! Queries on `step_usage`: what each agent step reported it spent, and the sums of runs.

use super::schema::{runs, step_usage};
use super::{on_conn, Conn, DbError};
use crate::domain::usage::{RunUsage, StepUsage};
use diesel::prelude::*;
use std::collections::HashMap;

/// One step's row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = step_usage)]
pub struct UsageRow {
    pub step_id: String,
    pub run_id: String,
    pub model: String,
    pub total_cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_creation_input_tokens: i64,
    pub cache_read_input_tokens: i64,
    pub num_turns: i64,
    pub duration_api_ms: i64,
    pub is_error: bool,
    pub subtype: Option<String>,
    pub session_id: Option<String>,
    pub created_at: i64,
}

fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl UsageRow {
    pub fn new(step_id: &str, run_id: &str, model: &str, u: &StepUsage, now: i64) -> Self {
        UsageRow {
            step_id: step_id.to_string(),
            run_id: run_id.to_string(),
            model: model.to_string(),
            total_cost_usd: u.total_cost_usd,
            input_tokens: db_int(u.input_tokens),
            output_tokens: db_int(u.output_tokens),
            cache_creation_input_tokens: db_int(u.cache_creation_input_tokens),
            cache_read_input_tokens: db_int(u.cache_read_input_tokens),
            num_turns: db_int(u.num_turns),
            duration_api_ms: db_int(u.duration_api_ms),
            is_error: u.is_error,
            subtype: u.subtype.clone(),
            session_id: u.session_id.clone(),
            created_at: now,
        }
    }

    pub fn usage(&self) -> StepUsage {
        let n = |v: i64| v.max(0) as u64;
        StepUsage {
            total_cost_usd: self.total_cost_usd,
            input_tokens: n(self.input_tokens),
            output_tokens: n(self.output_tokens),
            cache_creation_input_tokens: n(self.cache_creation_input_tokens),
            cache_read_input_tokens: n(self.cache_read_input_tokens),
            num_turns: n(self.num_turns),
            duration_api_ms: n(self.duration_api_ms),
            is_error: self.is_error,
            subtype: self.subtype.clone(),
            session_id: self.session_id.clone(),
        }
    }
}

/// Records a step's usage; a step reports once (a repeated completion changes nothing).
pub fn record(conn: &mut Conn, row: &UsageRow) -> Result<bool, DbError> {
    let n = on_conn!(conn, |c| diesel::insert_into(step_usage::table)
        .values(row)
        .on_conflict(step_usage::step_id)
        .do_nothing()
        .execute(c))?;
    Ok(n > 0)
}

/// The usage of each step of a run that reported one.
pub fn for_run(conn: &mut Conn, run_id: &str) -> Result<HashMap<String, StepUsage>, DbError> {
    let rows: Vec<UsageRow> = on_conn!(conn, |c| step_usage::table
        .filter(step_usage::run_id.eq(run_id))
        .select(UsageRow::as_select())
        .load(c))?;
    Ok(rows
        .iter()
        .map(|r| (r.step_id.clone(), r.usage()))
        .collect())
}

/// A run's usage: the sum of its steps' (`None` when no step reported any).
pub fn run_total(conn: &mut Conn, run_id: &str) -> Result<Option<RunUsage>, DbError> {
    let steps = for_run(conn, run_id)?;
    Ok((!steps.is_empty()).then(|| steps.values().collect()))
}

/// The usage of each of `run_ids` that has any.
pub fn run_totals(
    conn: &mut Conn,
    run_ids: &[String],
) -> Result<HashMap<String, RunUsage>, DbError> {
    let mut totals: HashMap<String, RunUsage> = HashMap::new();
    // Bounded lists of bound parameters (SQLite's limit).
    for ids in run_ids.chunks(500) {
        let rows: Vec<UsageRow> = on_conn!(conn, |c| step_usage::table
            .filter(step_usage::run_id.eq_any(ids))
            .select(UsageRow::as_select())
            .load(c))?;
        for r in &rows {
            totals.entry(r.run_id.clone()).or_default().add(&r.usage());
        }
    }
    Ok(totals)
}

/// What the runs of `workspace_root` spent since `since` (ms): the daily budget's figure.
pub fn workspace_since(
    conn: &mut Conn,
    workspace_root: &str,
    since: i64,
) -> Result<RunUsage, DbError> {
    let rows: Vec<UsageRow> = on_conn!(conn, |c| step_usage::table
        .inner_join(runs::table)
        .filter(runs::workspace_root.eq(workspace_root))
        .filter(step_usage::created_at.ge(since))
        .select(UsageRow::as_select())
        .load(c))?;
    Ok(rows
        .iter()
        .map(|r| r.usage())
        .collect::<Vec<_>>()
        .iter()
        .collect())
}
