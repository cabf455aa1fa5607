//! Prompt building from spec, plan, notes, context files and templates.

use super::*;

fn inputs<'a>(ctx: &'a [String]) -> PromptInputs<'a> {
    PromptInputs {
        spec_path: "/wt/specs/feature.md",
        plan_path: Some("/wt/specs/planning/feature-plan.md"),
        runner_notes_path: "/ws/logs/loop/run-7/runner-notes.txt",
        context_files: ctx,
        learnings_path: None,
        custom_template: None,
        completion_mode: CompletionMode::Trailing,
    }
}

#[test]
fn the_refs_line_lists_spec_plan_notes_context_and_learnings_in_order() {
    let ctx = vec!["/wt/a.md".to_string(), "/wt/b.md".to_string()];
    let mut i = inputs(&ctx);
    i.learnings_path = Some("/wt/specs/LEARNINGS.md");
    assert_eq!(
        refs_line(&i),
        "@/wt/specs/feature.md @/wt/specs/planning/feature-plan.md \
         @/ws/logs/loop/run-7/runner-notes.txt @/wt/a.md @/wt/b.md @/wt/specs/LEARNINGS.md"
    );
    i.plan_path = None;
    i.learnings_path = None;
    assert_eq!(
        refs_line(&i),
        "@/wt/specs/feature.md @/ws/logs/loop/run-7/runner-notes.txt @/wt/a.md @/wt/b.md"
    );
}

#[test]
fn the_builtin_prompt_starts_with_refs_and_substitutes_the_paths() {
    let prompt = implementation_prompt(&inputs(&[]));
    let (first, rest) = prompt.split_once("\n\n").unwrap();
    assert_eq!(first, refs_line(&inputs(&[])));
    assert!(rest.starts_with("You are an implementation agent."));
    assert!(rest.contains("/wt/specs/planning/feature-plan.md for the spec /wt/specs/feature.md"));
    assert!(!prompt.contains("SPEC_PATH") && !prompt.contains("PLAN_PATH"));
    assert!(prompt.contains("git commit"));
    assert!(prompt.contains("one task per iteration"));
    for mark in ["`[ ]`", "`[~]`", "`[x]`", "`[R]`", "`[ ]?`"] {
        assert!(prompt.contains(mark), "legend lacks {mark}");
    }
    assert!(!prompt.contains("Selected Task"));
}

#[test]
fn the_completion_note_depends_on_the_mode() {
    let trailing = implementation_prompt(&inputs(&[]));
    assert!(trailing.contains("print exactly <promise>COMPLETE</promise> as the last line"));
    let mut i = inputs(&[]);
    i.completion_mode = CompletionMode::Exact;
    let exact = implementation_prompt(&i);
    assert!(exact.contains("whole response must be exactly <promise>COMPLETE</promise>"));
    assert!(!exact.contains("as the last line"));
}

#[test]
fn a_custom_template_replaces_the_builtin_body_with_paths_substituted() {
    let mut i = inputs(&[]);
    i.custom_template = Some("Do SPEC_PATH then PLAN_PATH.");
    let prompt = implementation_prompt(&i);
    assert_eq!(
        prompt,
        format!(
            "{}\n\nDo /wt/specs/feature.md then /wt/specs/planning/feature-plan.md.",
            refs_line(&i)
        )
    );
    i.custom_template = Some("  \n");
    assert!(implementation_prompt(&i).contains("You are an implementation agent."));
    i.custom_template = Some("Plan: PLAN_PATH");
    i.plan_path = None;
    assert!(implementation_prompt(&i).ends_with("Plan: (no plan file)"));
}

#[test]
fn the_selected_task_section_names_the_task_and_its_section() {
    let mut task = PlanTask {
        label: "Write the parser".into(),
        line: 4,
        section: Some("Phase 1".into()),
    };
    assert_eq!(
        selected_task_section(&task),
        "\n\n## Selected Task\n\nWork on this specific task:\n> Write the parser\n(Section: Phase 1)\n"
    );
    task.section = None;
    assert_eq!(
        selected_task_section(&task),
        "\n\n## Selected Task\n\nWork on this specific task:\n> Write the parser\n"
    );
    assert_eq!(
        task_under_review_section(&task),
        "\n\n## Task Under Review\n\n> Write the parser\n"
    );
}

#[test]
fn the_review_prompt_has_the_refs_and_asks_for_approved_or_issues() {
    let prompt = review_prompt(&inputs(&[]));
    assert!(prompt.starts_with(&format!("{}\n\n", refs_line(&inputs(&[])))));
    assert!(prompt.contains("APPROVED"));
    assert!(prompt.contains("list of concrete issues"));
}
