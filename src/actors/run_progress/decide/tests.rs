//! What the watchdog is given after a verification: the newest implementation step first, with
//! its prompt, whichever list it came from (the database sends prompts in the first alone).

use super::{finished, implementations_before, History};
use crate::db::models::{ImplStep, StepRow};
use crate::db::DbError;
use crate::domain::StepStatus::{self, Failed, Succeeded};

/// The two lists as the database sends them: prompts only in the first list's newest step.
struct Lists {
    recent: Vec<ImplStep>,
    succeeded: Vec<ImplStep>,
}

impl History for Lists {
    fn recent_implementations(&mut self, _: &str, limit: i64) -> Result<Vec<ImplStep>, DbError> {
        Ok(self.recent.iter().take(limit as usize).cloned().collect())
    }
    fn succeeded_implementations(&mut self, _: &str) -> Result<Vec<ImplStep>, DbError> {
        Ok(self.succeeded.clone())
    }
    fn next_attempt(&mut self, _: &str, _: &str) -> Result<i32, DbError> {
        Ok(1)
    }
    fn usage(&mut self, _: &str) -> Result<crate::domain::usage::RunUsage, DbError> {
        Ok(Default::default())
    }
}

fn step(id: &str, status: StepStatus, prompt: Option<&str>) -> ImplStep {
    ImplStep {
        id: id.into(),
        status: status.as_str().into(),
        output_tail: Some(format!("output of {id}")),
        prompt: prompt.map(String::from),
    }
}

fn verification() -> StepRow {
    StepRow::new("r", 9, "verification", Succeeded.as_str(), 1)
}

fn ids(l: &[ImplStep]) -> Vec<&str> {
    l.iter().map(|s| s.id.as_str()).collect()
}

#[test]
fn the_newest_keeps_its_prompt_when_it_is_also_the_newest_that_succeeded() {
    let mut h = Lists {
        recent: vec![
            step("i3", Succeeded, Some("the newest prompt")),
            step("i2", Failed, None),
            step("i1", Failed, None),
        ],
        succeeded: vec![step("i3", Succeeded, None), step("i0", Succeeded, None)],
    };
    let last = verification();
    let impls = implementations_before(&mut h, &last).unwrap();
    assert_eq!(ids(&impls), ["i3", "i0"]);
    let f = finished(&last, &impls);
    assert_eq!(f.last_impl_prompt, Some("the newest prompt"));
    assert_eq!(f.last_impl_output, Some("output of i3"));
    assert_eq!(f.previous_impl_output, Some("output of i0"));
}

#[test]
fn a_failed_newest_goes_in_front_of_the_two_that_succeeded() {
    let mut h = Lists {
        recent: vec![
            step("i3", Failed, Some("the newest prompt")),
            step("i2", Succeeded, None),
            step("i1", Failed, None),
        ],
        succeeded: vec![step("i2", Succeeded, None), step("i0", Succeeded, None)],
    };
    let last = verification();
    let impls = implementations_before(&mut h, &last).unwrap();
    assert_eq!(ids(&impls), ["i3", "i2", "i0"]);
    let f = finished(&last, &impls);
    assert_eq!(f.last_impl_prompt, Some("the newest prompt"));
    assert_eq!(f.last_impl_output, Some("output of i2"));
    assert_eq!(f.previous_impl_output, Some("output of i0"));
}
