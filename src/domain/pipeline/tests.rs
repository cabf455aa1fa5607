//! The pipeline's decisions, one rule per test.

use super::*;

fn cfg() -> RunConfig {
    RunConfig::default()
}

fn done(phase: StepPhase, ok: bool) -> Finished<'static> {
    Finished {
        phase: Some(phase),
        succeeded: ok,
        last_impl_output: Some("changed a.rs\nadded tests\ncommitted"),
        previous_impl_output: Some("something else entirely\nline two"),
        last_impl_prompt: Some("the prompt"),
        ..Default::default()
    }
}

fn enqueued(d: &Decision) -> (StepPhase, bool) {
    match &d.next {
        Next::Enqueue { phase, is_final } => (*phase, *is_final),
        other => panic!("expected a step, got {other:?}"),
    }
}

fn failure(d: &Decision) -> String {
    match &d.next {
        Next::Finish(Outcome::Failed { reason }) => reason.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_run_starts_with_an_implementation_step_and_counts_it() {
    let d = first_step(&Counters::default(), &cfg());
    assert_eq!(enqueued(&d), (StepPhase::Implementation, false));
    assert_eq!(d.counters.iterations_done, 1);
}

#[test]
fn implementation_is_followed_by_review_then_verification() {
    let d = after_step(
        &done(StepPhase::Implementation, true),
        &Counters::default(),
        &cfg(),
    );
    assert_eq!(enqueued(&d), (StepPhase::Review, false));
    let d = after_step(&done(StepPhase::Review, true), &Counters::default(), &cfg());
    assert_eq!(enqueued(&d), (StepPhase::Verification, false));
}

#[test]
fn without_a_reviewer_implementation_goes_straight_to_verification() {
    let mut c = cfg();
    c.reviewer = false;
    let d = after_step(
        &done(StepPhase::Implementation, true),
        &Counters::default(),
        &c,
    );
    assert_eq!(enqueued(&d), (StepPhase::Verification, false));
}

#[test]
fn the_completion_token_leads_to_a_final_verification_then_completion() {
    let mut f = done(StepPhase::Implementation, true);
    f.completion_detected = true;
    let d = after_step(&f, &Counters::default(), &cfg());
    assert_eq!(enqueued(&d), (StepPhase::Verification, true));
    let mut v = done(StepPhase::Verification, true);
    v.is_final = true;
    let d = after_step(&v, &Counters::default(), &cfg());
    assert_eq!(d.next, Next::Finish(Outcome::Completed));
}

#[test]
fn a_failed_final_verification_sends_the_agent_back_with_runner_notes() {
    let mut v = done(StepPhase::Verification, false);
    v.is_final = true;
    v.runner_notes = Some("--- FAILED: cargo test (exit 1) ---");
    let d = after_step(&v, &Counters::default(), &cfg());
    assert_eq!(enqueued(&d), (StepPhase::Implementation, false));
    assert_eq!(
        d.effects.runner_notes.as_deref(),
        Some("--- FAILED: cargo test (exit 1) ---")
    );
    assert_eq!(d.counters.verify_failures, 1);
}

#[test]
fn a_passing_verification_clears_notes_and_the_failure_counter() {
    let c = Counters {
        verify_failures: 2,
        ..Default::default()
    };
    let d = after_step(&done(StepPhase::Verification, true), &c, &cfg());
    assert_eq!(d.counters.verify_failures, 0);
    assert_eq!(d.effects.runner_notes.as_deref(), Some(""));
    assert_eq!(enqueued(&d), (StepPhase::Implementation, false));
}

#[test]
fn consecutive_verification_failures_fail_the_run_at_the_limit() {
    let c = Counters {
        verify_failures: 2,
        ..Default::default()
    };
    let d = after_step(&done(StepPhase::Verification, false), &c, &cfg());
    assert_eq!(failure(&d), "max_consecutive_failures:verification:3");
}

#[test]
fn a_failing_review_moves_on_and_is_bounded() {
    let d = after_step(
        &done(StepPhase::Review, false),
        &Counters::default(),
        &cfg(),
    );
    assert_eq!(enqueued(&d), (StepPhase::Verification, false));
    let c = Counters {
        review_failures: 2,
        ..Default::default()
    };
    let d = after_step(&done(StepPhase::Review, false), &c, &cfg());
    assert_eq!(failure(&d), "max_consecutive_failures:review:3");
}

#[test]
fn the_iteration_limit_fails_the_run_before_another_implementation() {
    let mut c = cfg();
    c.iterations = 2;
    let counters = Counters {
        iterations_done: 2,
        ..Default::default()
    };
    let d = after_step(&done(StepPhase::Verification, true), &counters, &c);
    assert_eq!(failure(&d), "iteration_limit_reached:2");
}

#[test]
fn a_failed_implementation_fails_the_run_with_the_runner_reason() {
    let mut f = done(StepPhase::Implementation, false);
    f.failure_reason = Some("process failed with exit code 1");
    let d = after_step(&f, &Counters::default(), &cfg());
    assert_eq!(
        failure(&d),
        "runner_execution_failed:process failed with exit code 1"
    );
}

#[test]
fn a_stuck_agent_gets_a_watchdog_rewrite_then_fails_after_the_limit() {
    let mut v = done(StepPhase::Verification, true);
    v.last_impl_output = Some("I'm stuck and cannot continue");
    let d = after_step(&v, &Counters::default(), &cfg());
    let rw = d.effects.rewrite.clone().expect("a rewrite");
    assert_eq!(rw.signal, "no_progress");
    assert!(rw.prompt.contains("Watchdog Intervention") && rw.prompt.contains("the prompt"));
    assert_eq!(d.counters.watchdog_rewrites, 1);
    let c = Counters {
        watchdog_rewrites: 2,
        ..Default::default()
    };
    let d = after_step(&v, &c, &cfg());
    assert_eq!(failure(&d), "watchdog_failed:NoProgress");
}

#[test]
fn lost_leases_fail_the_run_as_an_infrastructure_failure() {
    let mut f = done(StepPhase::Verification, false);
    f.infra_failure = true;
    f.failure_reason = Some("lost its lease 3 times");
    let d = after_step(&f, &Counters::default(), &cfg());
    assert_eq!(failure(&d), "infrastructure_failed:lost its lease 3 times");
}
