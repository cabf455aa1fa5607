//! Plan checkbox parsing: finds the unchecked tasks of a markdown plan. Pure; the run pipeline
//! uses it to name the "Selected Task" in the implementation prompt. Completion is never decided
//! from checkboxes, only from the agent's token.

/// One unchecked task of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTask {
    /// The text after `- [ ] `, trimmed.
    pub label: String,
    /// 1-based line number in the plan.
    pub line: usize,
    /// The `## ` heading the task is under, if any.
    pub section: Option<String>,
}

/// The first unchecked task of the plan, if any.
pub fn select_task(text: &str) -> Option<PlanTask> {
    pending_tasks(text).next()
}

/// How many unchecked tasks the plan has (the same set [`select_task`] picks from).
pub fn count_pending(text: &str) -> usize {
    pending_tasks(text).count()
}

fn pending_tasks(text: &str) -> impl Iterator<Item = PlanTask> + '_ {
    let mut in_code = false;
    let mut section: Option<String> = None;
    let mut skipping_section = false;
    text.lines().enumerate().filter_map(move |(index, raw)| {
        let line = raw.trim();
        if line.starts_with("```") {
            in_code = !in_code;
            return None;
        }
        if in_code {
            return None;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            let heading = heading.trim();
            skipping_section = is_verification_section(heading);
            section = Some(heading.to_string());
            return None;
        }
        if skipping_section {
            return None;
        }
        let label = line.strip_prefix("- [ ] ")?.trim();
        (!label.is_empty()).then(|| PlanTask {
            label: label.to_string(),
            line: index + 1,
            section: section.clone(),
        })
    })
}

/// Sections whose checkboxes are for humans (verification lists, manual QA), not the agent.
fn is_verification_section(heading: &str) -> bool {
    let lower = heading.to_lowercase();
    lower.contains("verification") || lower.contains("checklist") || lower.starts_with("manual qa")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_unchecked_task_is_selected_with_its_line_and_section() {
        let plan = "# Plan\n\n## Phase 1\n- [x] done\n- [~] in progress\n  - [ ]   Write the parser  \n- [ ] later\n";
        let task = select_task(plan).unwrap();
        assert_eq!(task.label, "Write the parser");
        assert_eq!(task.line, 6);
        assert_eq!(task.section.as_deref(), Some("Phase 1"));
        assert_eq!(count_pending(plan), 2);
    }

    #[test]
    fn a_task_before_any_level_two_heading_has_no_section() {
        let task = select_task("# Title\n### Sub\n- [ ] first\n").unwrap();
        assert_eq!(task.section, None);
        assert_eq!(task.line, 3);
    }

    #[test]
    fn only_level_two_headings_change_the_section() {
        let plan = "## Build\n### Details\n# Top\n- [ ] task\n";
        assert_eq!(select_task(plan).unwrap().section.as_deref(), Some("Build"));
    }

    #[test]
    fn look_alike_checkboxes_are_not_tasks() {
        let plan = "- [ ]? manual check\n* [ ] star\n-[ ] tight\n- [x] done\n- [~] doing\n- [R] review\n- [ ]\n- [ ]    \n- [ ]no-space\n";
        assert_eq!(count_pending(plan), 0);
        assert_eq!(select_task(plan), None);
    }

    #[test]
    fn tasks_inside_code_blocks_are_ignored() {
        let plan = "```md\n- [ ] example\n```\n- [ ] real\n";
        let task = select_task(plan).unwrap();
        assert_eq!(task.label, "real");
        assert_eq!(count_pending(plan), 1);
    }

    #[test]
    fn verification_checklist_and_manual_qa_sections_are_skipped_until_the_next_heading() {
        let plan = "## Verification steps\n- [ ] v\n## Release Checklist\n- [ ] c\n## Manual QA notes\n- [ ] m\n### still skipped\n- [ ] s\n## QA manual is fine\n- [ ] kept\n";
        let task = select_task(plan).unwrap();
        assert_eq!(task.label, "kept");
        assert_eq!(task.section.as_deref(), Some("QA manual is fine"));
        assert_eq!(count_pending(plan), 1);
    }

    #[test]
    fn an_empty_plan_has_nothing_pending() {
        assert_eq!(select_task(""), None);
        assert_eq!(count_pending(""), 0);
    }
}
