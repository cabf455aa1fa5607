//! Distributed mode end to end: a real controller (`loopd --role controller` on a fresh
//! Postgres database, artifacts in an in-process S3 server) and real worker processes
//! (`loopd --role worker`), running git-mode and shared_fs runs of the fake agent over real
//! git repositories, through crashes, drains, store outages, cancels and restarts.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod cluster;
mod proxy;
mod sse;

mod api_pressure;
mod cancel;
mod controllers;
mod drain;
mod failover;
mod git_remotes;
mod git_review;
mod git_runs;
mod output;
mod postmortem;
mod s3_outage;
mod secrets;
mod shared_fs;
mod startup;
