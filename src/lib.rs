//! loopd: an orchestrator for AI coding-agent loops. One binary, three roles (`single`,
//! `controller`, `worker`) and a client. `app` is the only module that knows the roles.

pub mod api;
pub mod artifacts;
pub mod db;
pub mod domain;
pub mod exec;
pub mod settings;
pub mod workspace;
