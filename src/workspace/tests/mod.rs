//! Tests of the workspace module against real repositories in temp dirs. The git CLI only sets
//! repositories up and checks them; the code under test uses git2 alone.

mod bundle;
mod clone;
mod merge;
mod mirror;
mod support;
mod worktree;
