//! loopd: an orchestrator for AI coding-agent loops. One binary, three roles (`single`,
//! `controller`, `worker`) and a client. `app` is the only module that knows the roles.

pub mod actors;
pub mod api;
pub mod app;
pub mod artifacts;
pub mod cli;
pub mod client;
pub mod control_plane;
pub mod db;
pub mod domain;
pub mod exec;
pub mod http;
pub mod metrics;
pub mod output_store;
pub mod settings;
pub mod telemetry;
pub mod worker;
pub mod workspace;
