//! The agent accounts' limit state (`api_accounts`): each account's adaptive concurrency
//! limit and usage-limit pause, read by claims (which hold dispatch beyond them), written when
//! the agent API pushes back and when an account's steps complete. The rules are
//! [`LimitState`]'s; these functions read and write them, inside the caller's transaction
//! where it matters (a signal locks its row on Postgres, SQLite's write transaction is
//! exclusive already).

use super::schema::{api_accounts, steps};
use super::{on_conn, Conn, DbError};
use crate::domain::api_limit::account::LimitState;
use crate::domain::api_limit::ApiFailure;
use diesel::prelude::*;
use std::collections::HashMap;

/// One account's row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = api_accounts)]
#[diesel(treat_none_as_null = true)]
pub struct AccountRow {
    pub account: String,
    pub concurrency_limit: i32,
    pub max_concurrent: i32,
    pub successes: i32,
    pub last_signal: Option<String>,
    pub last_signal_at: Option<i64>,
    pub decreased_at: Option<i64>,
    pub pause_until: Option<i64>,
    pub updated_at: i64,
    pub ceiling: Option<i32>,
}

impl AccountRow {
    pub fn state(&self) -> LimitState {
        LimitState {
            limit: self.concurrency_limit,
            max: self.max_concurrent,
            successes: self.successes,
            last_signal: self.last_signal.clone(),
            last_signal_at: self.last_signal_at,
            decreased_at: self.decreased_at,
            pause_until: self.pause_until,
            ceiling: self.ceiling,
        }
    }

    fn from_state(account: &str, s: &LimitState, now: i64) -> Self {
        AccountRow {
            account: account.to_string(),
            concurrency_limit: s.limit,
            max_concurrent: s.max,
            successes: s.successes,
            last_signal: s.last_signal.clone(),
            last_signal_at: s.last_signal_at,
            decreased_at: s.decreased_at,
            pause_until: s.pause_until,
            updated_at: now,
            ceiling: s.ceiling,
        }
    }
}

/// An account as shown: its state and how many of its steps run now.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub account: String,
    pub state: LimitState,
    pub in_use: i64,
}

/// Steps in flight, per account.
pub fn in_use(conn: &mut Conn) -> Result<HashMap<String, i64>, DbError> {
    // The status as a literal: SQLite matches a bound one to the partial index
    // steps_account_in_flight anew, preparing the statement again, each time it runs.
    let in_flight = diesel::dsl::sql::<diesel::sql_types::Text>("'IN_PROGRESS'");
    let rows: Vec<(Option<String>, i64)> = on_conn!(conn, |c| steps::table
        .filter(steps::status.eq(in_flight.clone()))
        .filter(steps::account.is_not_null())
        .group_by(steps::account)
        .select((steps::account, diesel::dsl::count_star()))
        .load(c))?;
    Ok(rows
        .into_iter()
        .filter_map(|(a, n)| a.map(|a| (a, n)))
        .collect())
}

/// Every account with its steps in flight, by name.
pub fn list(conn: &mut Conn) -> Result<Vec<AccountView>, DbError> {
    let rows: Vec<AccountRow> = on_conn!(conn, |c| api_accounts::table
        .select(AccountRow::as_select())
        .order(api_accounts::account.asc())
        .load(c))?;
    let used = in_use(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| AccountView {
            in_use: used.get(&r.account).copied().unwrap_or(0),
            state: r.state(),
            account: r.account,
        })
        .collect())
}

/// The accounts whose steps no claim may take at `now`: paused, or with as many steps in
/// flight as their limit. (Claims on SQLite; Postgres' claim function asks the same.)
pub fn blocked(conn: &mut Conn, now: i64) -> Result<Vec<String>, DbError> {
    Ok(list(conn)?
        .into_iter()
        .filter(|a| a.state.paused(now) || a.in_use >= a.state.limit as i64)
        .map(|a| a.account)
        .collect())
}

/// Makes sure `account` has a row (a new one has every slot open).
pub fn ensure(conn: &mut Conn, account: &str, max: i32, now: i64) -> Result<(), DbError> {
    let row = AccountRow::from_state(account, &LimitState::fresh(max), now);
    on_conn!(conn, |c| diesel::insert_into(api_accounts::table)
        .values(&row)
        .on_conflict(api_accounts::account)
        .do_nothing()
        .execute(c))?;
    Ok(())
}

/// Accounts this process knows have a row (rows are never deleted).
static KNOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// [`ensure`] with the limit configured, skipped for an account this process wrote or saw
/// before: where a step of `account` is queued.
pub fn ensure_known(conn: &mut Conn, account: &str) -> Result<(), DbError> {
    let known = |a: &str| {
        KNOWN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|k| k == a)
    };
    if known(account) {
        return Ok(());
    }
    let now = conn.now_ms()?;
    ensure(
        conn,
        account,
        crate::domain::api_limit::account::max_concurrent(),
        now,
    )?;
    let mut k = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if k.len() < 4096 && !k.iter().any(|x| x == account) {
        k.push(account.to_string());
    }
    Ok(())
}

/// The account's row, locked until the transaction ends on Postgres; created (every slot
/// open) when missing.
fn locked(conn: &mut Conn, account: &str, max: i32, now: i64) -> Result<AccountRow, DbError> {
    ensure(conn, account, max, now)?;
    macro_rules! q {
        () => {
            api_accounts::table
                .find(account)
                .select(AccountRow::as_select())
        };
    }
    let row = match conn {
        Conn::Pg(c) => q!().for_update().get_result(&mut **c)?,
        Conn::Sqlite(c) => q!().get_result(&mut **c)?,
    };
    Ok(row)
}

/// Writes `row` back when `state` differs from it.
fn save(conn: &mut Conn, row: &AccountRow, state: &LimitState, now: i64) -> Result<(), DbError> {
    if row.state() == *state {
        return Ok(());
    }
    let new = AccountRow::from_state(&row.account, state, now);
    on_conn!(conn, |c| diesel::update(
        api_accounts::table.find(&row.account)
    )
    .set(&new)
    .execute(c))?;
    Ok(())
}

/// The agent API pushed back on a step of `account` granted at `granted_at` (see
/// [`LimitState::signal`]). Call it in a write transaction. Returns the state after.
pub fn signal(
    conn: &mut Conn,
    account: &str,
    kind: ApiFailure,
    granted_at: i64,
    pause_ms: i64,
    max: i32,
) -> Result<LimitState, DbError> {
    let now = conn.now_ms()?;
    let row = locked(conn, account, max, now)?;
    let mut state = row.state();
    state.signal(kind, granted_at, now, pause_ms);
    save(conn, &row, &state, now)?;
    Ok(state)
}

/// A step of `account` completed (see [`LimitState::success`]); writes only when the limit
/// is below its maximum. Call it in a write transaction. Returns whether the limit grew.
pub fn success(conn: &mut Conn, account: &str, recover_after: i32) -> Result<bool, DbError> {
    let now = conn.now_ms()?;
    macro_rules! q {
        () => {
            api_accounts::table
                .find(account)
                .filter(api_accounts::concurrency_limit.lt(api_accounts::max_concurrent))
                .select(AccountRow::as_select())
        };
    }
    let row = match conn {
        Conn::Pg(c) => q!().for_update().get_result(&mut **c).optional()?,
        Conn::Sqlite(c) => q!().get_result(&mut **c).optional()?,
    };
    let Some(row) = row else {
        return Ok(false);
    };
    let mut state = row.state();
    let grew = state.success(recover_after);
    save(conn, &row, &state, now)?;
    Ok(grew)
}

/// At start: every account's maximum becomes `max` (see [`LimitState::with_max`]).
pub fn apply_max(conn: &mut Conn, max: i32) -> Result<(), DbError> {
    let now = conn.now_ms()?;
    let rows: Vec<AccountRow> = on_conn!(conn, |c| api_accounts::table
        .filter(api_accounts::max_concurrent.ne(max))
        .select(AccountRow::as_select())
        .load(c))?;
    for row in rows {
        let mut state = row.state();
        state.with_max(max);
        save(conn, &row, &state, now)?;
    }
    Ok(())
}

/// At start with `[api_limits]` off: the steps not yet finished count against no account.
pub fn detach_unfinished(conn: &mut Conn) -> Result<usize, DbError> {
    let n = on_conn!(conn, |c| diesel::update(
        steps::table
            .filter(steps::account.is_not_null())
            .filter(steps::status.eq_any(["QUEUED", "RETRYING", "IN_PROGRESS"]))
    )
    .set(steps::account.eq(None::<String>))
    .execute(c))?;
    Ok(n)
}

/// The account of a step, if it has one.
pub fn of_step(conn: &mut Conn, step_id: &str) -> Result<Option<String>, DbError> {
    let a: Option<Option<String>> = on_conn!(conn, |c| steps::table
        .find(step_id)
        .select(steps::account)
        .get_result(c)
        .optional())?;
    Ok(a.flatten())
}
