//! The kind an artifact is recorded with (the artifacts table's `kind`, shown by the API),
//! derived from its file name as the old daemon did. Pure; the scheduler and the lease owner
//! call it when they record artifacts.

/// The artifact kind the old daemon used for a file name.
pub fn artifact_kind(name: &str) -> &'static str {
    let base = name.rsplit('/').next().unwrap_or(name);
    match base {
        "prompt.txt" => "prompt",
        "review-prompt.txt" => "review_prompt",
        "runner-notes.txt" => "runner_notes",
        "report.tsv" => "report",
        "summary.json" => "summary",
        "review-diff.json" => "review_diff",
        n if n.starts_with("prompt.rewrite.") => "prompt_rewrite",
        n if n.ends_with(".bundle") => "git_bundle",
        n if n.ends_with("-impl.log") => "implementation_output",
        n if n.ends_with("-impl.tail.txt") => "implementation_tail",
        n if n.ends_with("-review.log") => "review_output",
        n if n.ends_with("-review.tail.txt") => "review_tail",
        n if n.ends_with("-verify.log") => "verification_output",
        n if n.ends_with("-verify.tail.txt") => "verification_tail",
        n if n.ends_with(".jsonl") => "agent_events",
        _ => "file",
    }
}
