//! The `[budgets]` section: what the agent steps of one workspace's runs may spend in a UTC
//! day, pool-wide (`daily_cost_usd`, `daily_tokens`), with `[[budgets.workspace]]` entries for
//! particular workspaces (`path` = the run's `workspace_root`). A workspace that reached its
//! budget has its new steps held until 00:00 UTC (see `actors::scheduler::budget`). The
//! control roles install the section once at start ([`BudgetSettings::install`]), where the
//! run decisions read it ([`installed`]).

use super::{err, SettingsError};
use crate::domain::usage::DailyBudget;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// One workspace's own daily budget; a key it leaves out is the section's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceBudget {
    /// The runs' `workspace_root` (a path on a single host, a git run's workspace name).
    pub path: String,
    pub daily_cost_usd: Option<f64>,
    pub daily_tokens: Option<u64>,
}

/// Missing keys take their defaults: no budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Dollars each workspace's agent steps may spend in a UTC day.
    pub daily_cost_usd: Option<f64>,
    /// Tokens (the four kinds added up) each workspace's agent steps may use in a UTC day.
    pub daily_tokens: Option<u64>,
    pub workspace: Vec<WorkspaceBudget>,
}

static INSTALLED: RwLock<Option<Arc<BudgetSettings>>> = RwLock::new(None);

/// The budgets this process enforces (`None`: none configured).
pub fn installed() -> Option<Arc<BudgetSettings>> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl BudgetSettings {
    /// Whether any budget is configured.
    pub fn is_set(&self) -> bool {
        self.daily_cost_usd.is_some()
            || self.daily_tokens.is_some()
            || self
                .workspace
                .iter()
                .any(|w| w.daily_cost_usd.is_some() || w.daily_tokens.is_some())
    }

    /// The daily budget of `workspace_root`: its own entry's keys, else the section's.
    pub fn for_workspace(&self, workspace_root: &str) -> DailyBudget {
        let own = self.workspace.iter().find(|w| w.path == workspace_root);
        DailyBudget {
            cost_usd: own.and_then(|w| w.daily_cost_usd).or(self.daily_cost_usd),
            tokens: own.and_then(|w| w.daily_tokens).or(self.daily_tokens),
        }
    }

    /// Makes these the budgets of this process (none when nothing is set).
    pub fn install(&self) {
        let value = self.is_set().then(|| Arc::new(self.clone()));
        *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = value;
    }

    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let dollars = |key: &str, v: Option<f64>| match v {
            Some(d) if !d.is_finite() || d < 0.0 => Err(err(format!(
                "{key} = {d} must be a number of dollars, 0 or more"
            ))),
            _ => Ok(()),
        };
        dollars("budgets.daily_cost_usd", self.daily_cost_usd)?;
        for w in &self.workspace {
            if w.path.trim().is_empty() {
                return Err(err("every [[budgets.workspace]] needs a path"));
            }
            dollars(
                &format!("budgets.workspace \"{}\" daily_cost_usd", w.path),
                w.daily_cost_usd,
            )?;
        }
        Ok(())
    }
}
