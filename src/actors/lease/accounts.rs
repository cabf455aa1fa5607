//! The lease service's side of the agent accounts' limits (`[api_limits]`): a hand-back with
//! the API's push-back is recorded against the step's account (in the release's transaction),
//! a completion of an account below its maximum counts towards growing it again, and a look at
//! the accounts every second wakes the claims that a freed slot, a grown limit or an ended
//! pause lets through (claims themselves hold dispatch: `loopd_claim`, `leases::claim`).

use super::waiters::WaitQueue;
use crate::db::{self, Conn, Db, DbError};
use crate::domain::api_limit::account;
use crate::domain::api_limit::ApiFailure;
use crate::settings::ApiLimitSettings;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// What the service knows of the accounts between two looks.
pub struct AccountLimits {
    settings: ApiLimitSettings,
    /// Accounts below their maximum at the last look: their completions count.
    limited: Mutex<HashSet<String>>,
    /// Accounts whose steps claims held at the last look.
    blocked: Mutex<HashSet<String>>,
    /// Accounts this process said were held by `max_concurrent` alone (said once each).
    told_capped: Mutex<HashSet<String>>,
}

impl AccountLimits {
    pub fn new(settings: ApiLimitSettings) -> Self {
        AccountLimits {
            settings,
            limited: Mutex::default(),
            blocked: Mutex::default(),
            told_capped: Mutex::default(),
        }
    }

    fn on(&self) -> bool {
        self.settings.enabled && account::enabled()
    }

    /// In a hand-back's transaction, before the lease is released: the API pushed back
    /// (`api`) on `step_id`, which is held back `pause_ms`. Records the signal against the
    /// step's account, if it has one.
    pub fn signal_in_tx(
        &self,
        c: &mut Conn,
        step_id: &str,
        api: ApiFailure,
        pause_ms: i64,
    ) -> Result<(), DbError> {
        if !self.on() || !api.is_pressure() {
            return Ok(());
        }
        let Some(acct) = db::accounts::of_step(c, step_id)? else {
            return Ok(());
        };
        let granted_at = db::leases::get(c, step_id)?.map_or(i64::MAX, |l| l.granted_at);
        let before = db::accounts::list(c)?
            .into_iter()
            .find(|a| a.account == acct)
            .map(|a| a.state.limit);
        let after = db::accounts::signal(c, &acct, api, granted_at, pause_ms, self.settings.max())?;
        if before != Some(after.limit) || after.pause_until.is_some() {
            tracing::warn!(account = %acct, signal = api.as_str(), limit = after.limit, max = after.max, pause_until = ?after.pause_until, "agent account pushed back");
        }
        self.limited_mut().insert(acct);
        Ok(())
    }

    /// A step completed: when its account may be below its maximum, count the success (in a
    /// transaction of its own, after the completion's); wakes the claims when the limit grew.
    pub fn completed(self: &Arc<Self>, db: &Db, waiters: &Arc<WaitQueue>, step_id: &str) {
        if !self.on() || self.limited_mut().is_empty() {
            return;
        }
        let (me, db, waiters, sid) = (
            self.clone(),
            db.clone(),
            waiters.clone(),
            step_id.to_string(),
        );
        let recover = self.settings.recover();
        tokio::spawn(async move {
            let grew = db
                .tx(move |c| -> Result<_, DbError> {
                    let Some(acct) = db::accounts::of_step(c, &sid)? else {
                        return Ok(None);
                    };
                    if !me.limited_mut().contains(&acct) {
                        return Ok(None);
                    }
                    Ok(Some((db::accounts::success(c, &acct, recover)?, acct)))
                })
                .await;
            match grew {
                Ok(Some((true, acct))) => {
                    tracing::info!(account = %acct, "agent account limit grew by one");
                    waiters.wake_all();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot count an agent account's success"),
            }
        });
    }

    /// Looks at every account: remembers those below their maximum, and wakes the claims
    /// here when an account's steps are no longer held (a slot freed on any controller, a
    /// limit grown, a pause over).
    pub async fn look(&self, db: &Db, waiters: &WaitQueue) {
        if !self.on() {
            return;
        }
        let max = self.settings.max();
        let got = db
            .run(move |c| -> Result<_, DbError> {
                let now = c.now_ms()?;
                let mut list = db::accounts::list(c)?;
                // Steps running for an account without a row (queued before it had one, by
                // a path that does not write it): its row, every slot open, from now on.
                let missing: Vec<String> = db::accounts::in_use(c)?
                    .into_keys()
                    .filter(|k| !list.iter().any(|a| &a.account == k))
                    .collect();
                if !missing.is_empty() {
                    for a in &missing {
                        db::accounts::ensure(c, a, max, now)?;
                    }
                    list = db::accounts::list(c)?;
                }
                Ok((list, now))
            })
            .await;
        let (list, now) = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the agent accounts");
                return;
            }
        };
        let limited: HashSet<String> = list
            .iter()
            .filter(|a| a.state.limit < a.state.max)
            .map(|a| a.account.clone())
            .collect();
        let blocked: HashSet<String> = list
            .iter()
            .filter(|a| a.state.paused(now) || a.in_use >= a.state.limit as i64)
            .map(|a| a.account.clone())
            .collect();
        self.tell_capped(&list, &blocked);
        *self.limited_mut() = limited;
        let freed = {
            let mut b = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            let freed = b.iter().any(|a| !blocked.contains(a));
            *b = blocked;
            freed
        };
        if freed {
            waiters.wake_all();
        }
    }

    /// Whether an account held claims at the last look: a step ending now may free a slot
    /// that a waiting claim can take (without a wake-up it would wait for the next look).
    pub fn holding(&self) -> bool {
        self.on()
            && !self
                .blocked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    /// Says once per account when steps wait for it only because of `max_concurrent`: the
    /// API never pushed back, so the account may allow more (the default maximum, 8, would
    /// otherwise cap a larger pool without a word in the log).
    fn tell_capped(&self, list: &[db::accounts::AccountView], blocked: &HashSet<String>) {
        let mut told = self.told_capped.lock().unwrap_or_else(|e| e.into_inner());
        for a in list {
            if blocked.contains(&a.account) && a.state.at_cap() && told.insert(a.account.clone()) {
                tracing::warn!(
                    account = %a.account,
                    max_concurrent = a.state.max,
                    "agent account at [api_limits] max_concurrent with steps waiting and no push-back from the API: raise max_concurrent if the account allows more"
                );
            }
        }
    }

    fn limited_mut(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.limited.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// At a controller's start: with `[api_limits]` on, every account's maximum is the one
/// configured; off, the steps not yet finished count against no account.
pub async fn prepare(db: &Db, settings: &ApiLimitSettings) -> Result<(), DbError> {
    account::configure(settings.enabled, settings.max());
    let (on, max) = (settings.enabled, settings.max());
    db.tx(move |c| -> Result<(), DbError> {
        if on {
            db::accounts::apply_max(c, max)
        } else {
            let n = db::accounts::detach_unfinished(c)?;
            if n > 0 {
                tracing::info!(
                    steps = n,
                    "api_limits off: unfinished steps count against no account"
                );
            }
            Ok(())
        }
    })
    .await
}
