//! Tests of the workspace module against real repositories in temp dirs. The git CLI sets
//! repositories up and checks them; the code under test uses git2, and the `git` program for
//! network operations only (here over local paths; https and ssh servers are in the
//! distributed tests).

mod bundle;
mod clone;
mod merge;
mod mirror;
mod remote;
mod support;
mod worktree;
