//! The agent command: spawning, retries with backoff, and output capture.

use super::*;
use crate::exec::test_support::{script, test_env};
use std::sync::atomic::{AtomicU32, Ordering};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A request running `sh <script>` with `body` as the script.
    fn request(&self, body: &str) -> AgentRequest {
        let path = script(self.dir.path(), "agent.sh", body);
        let file = |ext: &str| self.dir.path().join(format!("iter-01-impl.{ext}"));
        AgentRequest {
            argv: vec!["sh".into(), path.to_str().unwrap().into()],
            prompt: "do the task".into(),
            cwd: self.dir.path().to_path_buf(),
            env: test_env(),
            output: AgentOutput::Auto,
            completion_mode: CompletionMode::Trailing,
            timeout: None,
            grace: Duration::from_secs(2),
            retry: RetryPolicy {
                retries: 0,
                backoff: Duration::ZERO,
            },
            files: AgentFiles {
                log: file("log"),
                jsonl: file("jsonl"),
                tail: file("tail.txt"),
            },
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

async fn run(req: &AgentRequest) -> AgentResult {
    run_agent(req, &CancellationToken::new(), |_| {})
        .await
        .unwrap()
}

const NDJSON: &str = r#"cat <<'JSON'
{"type":"system","subtype":"init","model":"opus"}
{"type":"assistant","message":{"content":[{"type":"text","text":"Hello "},{"type":"tool_use","name":"Bash"},{"type":"text","text":"world"}]}}
{"type":"user","message":{"content":[{"type":"tool_result","content":"ignored"}]}}
not json at all
{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":" and"}}}
{"type":"content_block_delta","delta":{"type":"text_delta","text":" more\n"}}
{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{}"}}

{"type":"assistant","message":{"content":[{"type":"text","text":"<promise>COMPLETE</promise>"}]}}
{"type":"result","result":"ignored"}
JSON
"#;

#[tokio::test]
async fn stream_json_text_is_extracted_and_raw_lines_are_kept() {
    let f = Fixture::new();
    let req = f.request(NDJSON);
    let result = run(&req).await;
    assert!(result.succeeded(), "{result:?}");
    let expected = "Hello world and more\n<promise>COMPLETE</promise>";
    assert_eq!(read(&req.files.log), expected);
    assert_eq!(result.output_bytes, expected.len() as u64);
    assert_eq!(result.tail, expected);
    assert_eq!(read(&req.files.tail), expected);
    assert!(result.complete);
    let jsonl = read(&req.files.jsonl);
    assert_eq!(
        jsonl.lines().count(),
        9,
        "blank lines dropped, others verbatim"
    );
    assert!(jsonl.contains("not json at all\n"));
    assert_eq!((result.exit, result.attempts), (Some(Exit::Code(0)), 1));
}

#[tokio::test]
async fn text_output_is_taken_as_is_and_the_prompt_is_the_last_argument() {
    let f = Fixture::new();
    let mut req = f.request("printf 'got: %s\\n' \"$1\"\necho '{\"no\": \"type\"}'\n");
    req.prompt = "line one\nline two".into();
    let result = run(&req).await;
    let expected = "got: line one\nline two\n{\"no\": \"type\"}\n";
    assert_eq!(read(&req.files.log), expected);
    assert!(!req.files.jsonl.exists());
    assert!(!result.complete);
}

#[tokio::test]
async fn completion_follows_the_mode() {
    let f = Fixture::new();
    let mut req = f.request("echo 'all done'\necho '<promise>COMPLETE</promise>'\n");
    req.output = AgentOutput::Text;
    assert!(run(&req).await.complete);
    req.completion_mode = CompletionMode::Exact;
    assert!(!run(&req).await.complete);
    let mut req = f.request("echo\necho '  <promise>COMPLETE</promise>'\n");
    req.completion_mode = CompletionMode::Exact;
    assert!(run(&req).await.complete);
}

#[tokio::test]
async fn a_failed_attempt_is_retried_and_both_attempts_stay_in_the_log() {
    let f = Fixture::new();
    let marker = f.dir.path().join("tried");
    let body = format!(
        "if [ -e '{m}' ]; then echo second; else touch '{m}'; echo first; echo boom >&2; exit 1; fi\n",
        m = marker.display()
    );
    let mut req = f.request(&body);
    req.retry.retries = 1;
    let spawns = AtomicU32::new(0);
    let result = run_agent(&req, &CancellationToken::new(), |_| {
        spawns.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .unwrap();
    assert!(result.succeeded(), "{result:?}");
    assert_eq!(result.attempts, 2);
    assert_eq!(spawns.load(Ordering::SeqCst), 2);
    assert_eq!(read(&req.files.log), "first\n\n--- retry 1 ---\nsecond\n");
    assert_eq!(result.tail, "second\n");
}

#[tokio::test]
async fn a_failure_without_retries_reports_the_exit_code_and_stderr() {
    let f = Fixture::new();
    let req = f.request("echo partial\necho 'fatal: bad' >&2\nexit 1\n");
    let result = run(&req).await;
    assert_eq!(
        result.failure.as_deref(),
        Some("process failed with exit code 1")
    );
    assert_eq!(result.exit, Some(Exit::Code(1)));
    assert_eq!(result.stderr_tail, "fatal: bad\n");
    assert_eq!(read(&req.files.tail), "partial\n");
}

#[tokio::test]
async fn transient_errors_are_retried_up_to_their_own_limit() {
    let f = Fixture::new();
    let req = f.request("echo 'API Error: 500 Internal server error'\nexit 1\n");
    let result = run(&req).await;
    assert_eq!(result.attempts, MAX_TRANSIENT_FAILURES);
    assert_eq!(
        result.failure.as_deref(),
        Some("transient API error (exit code 1)")
    );
    assert_eq!(read(&req.files.log).matches("--- retry").count(), 4);
}

#[tokio::test]
async fn an_overloaded_api_hands_the_step_back_at_once_without_retrying_in_place() {
    let f = Fixture::new();
    let req = f.request("echo 'API Error: 529 overloaded'\nexit 1\n");
    let result = run(&req).await;
    assert_eq!(result.attempts, 1);
    assert_eq!(result.pressure, Some(ApiFailure::Overloaded));
    assert_eq!(read(&req.files.log).matches("--- retry").count(), 0);
}

#[test]
fn transient_pauses_double_are_capped_and_run_out_before_the_fifth_failure() {
    let f = Fixture::new();
    let mut req = f.request("true");
    req.retry.backoff = Duration::from_secs(5);
    let secs =
        |p: &RetryPolicy| -> Vec<u64> { p.transient_pauses().map(|d| d.as_secs()).collect() };
    assert_eq!(secs(&req.retry), vec![5, 10, 20, 40]);
    req.retry.backoff = Duration::from_secs(50);
    assert_eq!(secs(&req.retry), vec![50, 100, 120, 120]);
}

#[test]
fn other_failures_pause_flat_as_often_as_retries_allow() {
    let f = Fixture::new();
    let mut req = f.request("true");
    req.retry.backoff = Duration::from_secs(7);
    req.retry.retries = 2;
    let pauses: Vec<u64> = req.retry.other_pauses().map(|d| d.as_secs()).collect();
    assert_eq!(pauses, vec![7, 7]);
}

#[tokio::test]
async fn a_missing_agent_command_is_named() {
    let f = Fixture::new();
    let mut req = f.request("true");
    req.argv = vec!["loopd-no-such-agent".into()];
    let result = run(&req).await;
    assert_eq!(
        result.failure.as_deref(),
        Some("agent command not found: loopd-no-such-agent")
    );
    assert_eq!((result.exit, result.attempts), (None, 1));
}

#[tokio::test]
async fn a_timeout_fails_the_attempt_with_the_documented_reason() {
    let f = Fixture::new();
    let mut req = f.request("echo working\nsleep 1000\n");
    req.timeout = Some(Duration::from_millis(300));
    req.grace = Duration::from_millis(300);
    let result = run(&req).await;
    assert_eq!(result.exit, Some(Exit::TimedOut));
    assert_eq!(result.failure.as_deref(), Some("timeout after 0.3 seconds"));
    assert_eq!(read(&req.files.log), "working\n");
}

#[tokio::test]
async fn cancellation_is_never_retried() {
    let f = Fixture::new();
    let mut req = f.request("sleep 1000\n");
    req.retry.retries = 3;
    let cancel = CancellationToken::new();
    let result = run_agent(&req, &cancel, |_| cancel.cancel()).await.unwrap();
    assert_eq!(result.failure.as_deref(), Some("cancelled"));
    assert_eq!((result.exit, result.attempts), (Some(Exit::Cancelled), 1));
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The peak-RSS figure is process-wide, so other tests running beside it in this binary would
/// raise it: the test re-runs itself alone in a child process, where the peak is its own.
#[test]
fn fifty_megabytes_of_output_stream_to_disk_with_bounded_memory() {
    const NAME: &str = "exec::agent::tests::fifty_megabytes_of_output_measured_alone";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            NAME,
            "--exact",
            "--test-threads=1",
            "--include-ignored",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "run alone in a child process by fifty_megabytes_of_output_stream_to_disk_with_bounded_memory"]
async fn fifty_megabytes_of_output_measured_alone() {
    const TOTAL: u64 = 50_000_000;
    let f = Fixture::new();
    let body = format!(
        "yes 'a line of agent output, 40 bytes..' | head -c {TOTAL}\necho\necho last line\n"
    );
    let req = f.request(&body);
    let before = peak_rss_bytes();
    let result = run(&req).await;
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(result.succeeded(), "{result:?}");
    let expected_bytes = TOTAL + "\nlast line\n".len() as u64;
    assert_eq!(result.output_bytes, expected_bytes);
    assert_eq!(
        std::fs::metadata(&req.files.log).unwrap().len(),
        expected_bytes
    );
    assert!(result.tail.ends_with("\nlast line\n"));
    assert_eq!(result.tail.lines().count(), TAIL_LINES);
    assert!(grown < 25 * 1024 * 1024, "peak RSS grew by {grown} bytes");
}
