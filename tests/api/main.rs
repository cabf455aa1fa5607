//! The runs API over HTTP, against a real `loopd` process per test (`support::proc::Loopd`,
//! `--role single` on its own data dir and port; a controller on Postgres for start-up):
//! success shapes as API.md §1 gives them and as the old loopctl parses them, JSON errors,
//! authentication before parsing, control verbs, SSE replay and resumption, settings checks.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod control;
mod errors;
mod exposure;
mod harness;
mod listing;
mod loopctl;
mod output;
mod overrides;
mod postmortem;
mod review;
mod shapes;
mod sse;
mod startup;
mod wire;
