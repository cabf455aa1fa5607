//! What a decision leaves to be done once its transaction committed: the [`Advanced`] actions
//! the SchedulerActor carries out (wake a claimer for the queued step, finish the run, store a
//! rewritten prompt), and the [`FinishPlan`] stored in `run_state.finishing` while a run is
//! being finished. Built by `decide`; carried out by the scheduler, passed through by the
//! lease owner (a completion decided in its own transaction) as a [`FollowUp`].

use crate::domain::pipeline;

/// What a decision asks for, to act on after the commit.
pub enum Advanced {
    Nothing,
    Queued {
        labels: String,
        preferred: Option<String>,
    },
    Finish,
    Rewrite {
        name: String,
        prompt: String,
    },
}

/// A run whose step finished (or was given up), for the scheduler: what was already decided
/// in the step's own transaction, to carry out, or `None`: decide now.
pub struct FollowUp {
    pub run_id: String,
    pub decided: Option<Vec<Advanced>>,
}

/// A terminal decision being carried out, stored in `run_state.finishing`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FinishPlan {
    pub completed: bool,
    pub reason: Option<String>,
}

impl From<pipeline::Outcome> for FinishPlan {
    fn from(o: pipeline::Outcome) -> Self {
        match o {
            pipeline::Outcome::Completed => FinishPlan {
                completed: true,
                reason: None,
            },
            pipeline::Outcome::Failed { reason } => FinishPlan {
                completed: false,
                reason: Some(reason),
            },
        }
    }
}
