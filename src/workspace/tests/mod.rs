//! Tests of the workspace module against real repositories in temp dirs. The git CLI only sets
//! repositories up and checks them; the code under test uses git2 alone.

mod merge;
mod support;
mod worktree;
