//! The enums of the run and step state machines, spelled exactly as the HTTP contract spells
//! them. Pure types: parsing from and printing to the strings stored in the database.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Defines a string-backed enum with `as_str`, `FromStr`, `Display` and serde in one place, so
/// the stored spelling and the wire spelling can never drift apart.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling used on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownVariant {
                        kind: stringify!($name),
                        value: other.to_string(),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A string that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} value '{value}'")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

string_enum!(
    /// Lifecycle of a run.
    RunStatus {
        Pending => "PENDING",
        Running => "RUNNING",
        Paused => "PAUSED",
        Completed => "COMPLETED",
        Failed => "FAILED",
        Canceled => "CANCELED",
    }
);

impl RunStatus {
    /// A run in a terminal state never changes again (except through `retry`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled
        )
    }
}

string_enum!(
    /// Lifecycle of one step (one iteration phase).
    StepStatus {
        Queued => "QUEUED",
        InProgress => "IN_PROGRESS",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Retrying => "RETRYING",
        Canceled => "CANCELED",
    }
);

impl StepStatus {
    /// Finished steps: they hold no lease and will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Canceled
        )
    }

    /// Steps waiting for a worker to claim them.
    pub fn is_claimable(self) -> bool {
        matches!(self, StepStatus::Queued | StepStatus::Retrying)
    }
}

string_enum!(
    /// What a step does.
    StepPhase {
        Implementation => "implementation",
        Review => "review",
        Verification => "verification",
        Watchdog => "watchdog",
        Merge => "merge",
        Postmortem => "postmortem",
    }
);

impl StepPhase {
    /// The short name used in artifact file names (`iter-NN-<slug>.log`).
    pub fn slug(self) -> &'static str {
        match self {
            StepPhase::Implementation => "impl",
            StepPhase::Review => "review",
            StepPhase::Verification => "verify",
            StepPhase::Watchdog => "watchdog",
            StepPhase::Merge => "merge",
            StepPhase::Postmortem => "postmortem",
        }
    }

    /// Phases of the pipeline that spawn the agent command with a prompt the pipeline builds.
    pub fn runs_agent(self) -> bool {
        matches!(self, StepPhase::Implementation | StepPhase::Review)
    }

    /// Phases whose step runs the agent (the pipeline's, and the postmortem's, whose prompt
    /// its own route builds).
    pub fn spawns_agent(self) -> bool {
        self.runs_agent() || self == StepPhase::Postmortem
    }
}

string_enum!(
    /// How a run's name was chosen.
    NameSource {
        SpecSlug => "spec_slug",
        Haiku => "haiku",
    }
);

string_enum!(
    /// How the run branch is merged into `merge_target_branch` on completion.
    MergeStrategy {
        None => "none",
        Merge => "merge",
        Squash => "squash",
    }
);

string_enum!(
    /// Review state of a finished run (kept for client compatibility).
    ReviewStatus {
        Pending => "pending",
        Reviewed => "reviewed",
        Scrapped => "scrapped",
        Merged => "merged",
        PrCreated => "pr_created",
    }
);

string_enum!(
    /// Where a run's workspace comes from.
    WorkspaceSource {
        SharedFs => "shared_fs",
        Git => "git",
    }
);

string_enum!(
    /// Which artifact store holds a run's artifacts.
    StoreKind {
        Fs => "fs",
        S3 => "s3",
    }
);

string_enum!(
    /// How the completion token is detected in the implementation output.
    CompletionMode {
        Exact => "exact",
        Trailing => "trailing",
    }
);

string_enum!(
    /// What a worker says it is doing.
    WorkerStatus {
        Idle => "idle",
        Busy => "busy",
        Draining => "draining",
        Offline => "offline",
        Revoked => "revoked",
    }
);

impl WorkerStatus {
    /// The statuses of online workers (see [`WorkerStatus::is_online`]).
    pub const ONLINE: &'static [WorkerStatus] = &[
        WorkerStatus::Idle,
        WorkerStatus::Busy,
        WorkerStatus::Draining,
    ];

    /// Online workers may hold leases and claim steps (draining ones only keep theirs).
    pub fn is_online(self) -> bool {
        matches!(
            self,
            WorkerStatus::Idle | WorkerStatus::Busy | WorkerStatus::Draining
        )
    }
}

string_enum!(
    /// What the controller tells a worker about a lease it reported in a heartbeat.
    LeaseAction {
        Continue => "continue",
        Cancel => "cancel",
        Stop => "stop",
    }
);

string_enum!(
    /// The outcome a worker reports for a step.
    StepOutcome {
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

string_enum!(
    /// How the agent prints its output.
    AgentOutput {
        Auto => "auto",
        Text => "text",
        StreamJson => "stream-json",
    }
);

string_enum!(
    /// Where copies of a run's files go besides the artifact store, as the existing daemon
    /// kept them: the workspace's log directory, the global one, or both.
    ArtifactMode {
        Workspace => "workspace",
        Global => "global",
        Mirror => "mirror",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_its_spelling() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        for s in StepStatus::ALL {
            assert_eq!(s.as_str().parse::<StepStatus>().unwrap(), *s);
        }
        for p in StepPhase::ALL {
            assert_eq!(p.as_str().parse::<StepPhase>().unwrap(), *p);
        }
    }

    #[test]
    fn unknown_spellings_are_rejected_with_the_kind_named() {
        let err = "running".parse::<RunStatus>().unwrap_err();
        assert_eq!(err.to_string(), "unknown RunStatus value 'running'");
    }
}
