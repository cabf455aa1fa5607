//! Prompt building for implementation and review steps. Pure text: the caller resolves the
//! paths (remapped into the run's worktree), reads the custom template file and the plan, and
//! writes the result to `prompt.txt` / `review-prompt.txt`.

use crate::domain::completion::COMPLETION_TOKEN;
use crate::domain::plan::PlanTask;
use crate::domain::status::CompletionMode;

/// What goes into a prompt. Paths are as the agent should see them.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptInputs<'a> {
    /// The spec file.
    pub spec_path: &'a str,
    /// The plan file, if the run has one.
    pub plan_path: Option<&'a str>,
    /// `runner-notes.txt` of the run (failures of the last verification).
    pub runner_notes_path: &'a str,
    /// Extra files to reference.
    pub context_files: &'a [String],
    /// `<specs_dir>/LEARNINGS.md`, when it exists.
    pub learnings_path: Option<&'a str>,
    /// The text of the custom prompt template, if one was found.
    pub custom_template: Option<&'a str>,
    /// How the agent must print the completion token.
    pub completion_mode: CompletionMode,
}

/// What replaces `PLAN_PATH` in a template when the run has no plan.
const NO_PLAN: &str = "(no plan file)";

/// The `@file` references line: spec, plan, runner notes, context files, learnings.
pub fn refs_line(i: &PromptInputs) -> String {
    let mut refs = vec![i.spec_path];
    refs.extend(i.plan_path);
    refs.push(i.runner_notes_path);
    refs.extend(i.context_files.iter().map(String::as_str));
    refs.extend(i.learnings_path);
    refs.iter()
        .map(|r| format!("@{r}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The implementation prompt without the selected task (append [`selected_task_section`]):
/// the references line, then the custom template (if non-blank) or the built-in one, with
/// `SPEC_PATH` and `PLAN_PATH` replaced literally.
pub fn implementation_prompt(i: &PromptInputs) -> String {
    let body = match i.custom_template {
        Some(t) if !t.trim().is_empty() => t.to_string(),
        _ => builtin_template(i),
    };
    format!("{}\n\n{}", refs_line(i), body)
        .replace("SPEC_PATH", i.spec_path)
        .replace("PLAN_PATH", i.plan_path.unwrap_or(NO_PLAN))
}

fn builtin_template(i: &PromptInputs) -> String {
    format!(
        "You are an implementation agent. You work through the plan PLAN_PATH for the spec \
SPEC_PATH, exactly one task per iteration; another iteration follows yours.

## Rules
1. Read {notes} first. If it is not empty, the last verification failed: fix what it shows \
before any new plan work.
2. Work on ONE task: the selected task below if there is one, else the first unchecked task of \
the plan. Do not start a second task.
3. Implement the task completely, with tests where they make sense. Run the project's tests.
4. Update the task's checkbox in the plan (`[x]` when done, `[~]` if it needs another iteration).
5. Commit your work with git before you finish: `git add -A && git commit -m \"<what you did>\"`. \
Do not push.

## Plan checkbox legend
- `[ ]` to do
- `[~]` in progress
- `[x]` done
- `[R]` ready for a human review: leave it alone
- `[ ]?` manual QA for a human: not yours to do

## Response format
End with a short summary: the task you worked on, what changed, and the commit.

## Completion
{completion}
",
        notes = i.runner_notes_path,
        completion = completion_note(i.completion_mode),
    )
}

fn completion_note(mode: CompletionMode) -> String {
    match mode {
        CompletionMode::Trailing => format!(
            "When no unchecked task (`- [ ]`) is left in the plan and verification passes, print \
exactly {COMPLETION_TOKEN} as the last line of your response. Never print it while a task is left."
        ),
        CompletionMode::Exact => format!(
            "When no unchecked task (`- [ ]`) is left in the plan and verification passes, your \
whole response must be exactly {COMPLETION_TOKEN} and nothing else. Never print it while a task \
is left."
        ),
    }
}

/// The "Selected Task" section appended to the implementation prompt.
pub fn selected_task_section(t: &PlanTask) -> String {
    let mut text = format!(
        "\n\n## Selected Task\n\nWork on this specific task:\n> {}\n",
        t.label
    );
    if let Some(section) = &t.section {
        text.push_str(&format!("(Section: {section})\n"));
    }
    text
}

/// The "Task Under Review" section appended to the review prompt.
pub fn task_under_review_section(t: &PlanTask) -> String {
    let mut text = format!("\n\n## Task Under Review\n\n> {}\n", t.label);
    if let Some(section) = &t.section {
        text.push_str(&format!("(Section: {section})\n"));
    }
    text
}

/// The review prompt: the references line and the reviewer's instructions.
pub fn review_prompt(i: &PromptInputs) -> String {
    format!(
        "{refs}\n\nYou are a code reviewer. An implementation agent has just finished one \
iteration on the plan {plan} for the spec {spec}; its work is committed in this repository \
(see `git log -3 --stat` and `git show HEAD`).

Review that change against the spec and the plan:
- Does it do the task it claims, completely and correctly?
- Is the new behaviour tested?
- Does it break anything, or add security problems or obvious bugs?

If the change is acceptable, reply with APPROVED on the last line. Otherwise reply with a \
numbered list of concrete issues (file, problem, suggested fix) and do not print APPROVED.
",
        refs = refs_line(i),
        plan = i.plan_path.unwrap_or(NO_PLAN),
        spec = i.spec_path,
    )
}

#[cfg(test)]
mod tests;
