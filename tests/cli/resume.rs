//! `loopd tail -f` through a connection that drops mid-stream: it resumes after the last frame
//! it printed (`Last-Event-ID`), so what it prints is the run's output byte for byte.

use crate::proxy::Proxy;
use crate::support::proc::bin;
use crate::support::repo::Repo;
use crate::support::wait_for;
use crate::Env;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Collects what a child writes to `pipe`, as it comes.
fn collect(mut pipe: impl AsyncReadExt + Unpin + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().expect("sink").extend_from_slice(&buf[..n]);
        }
    });
    got
}

fn text(b: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&b.lock().expect("buffer")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_through_dropped_connections_without_losing_or_repeating_a_byte() {
    let env = Env::start("cli-tail-resume", &[]).await;
    // 60 lines a tenth of a second apart per implementation step (a stream that lasts), each
    // ending in multi-byte characters (the cursor counts UTF-16 units, not bytes).
    let repo = Repo::create(env.dir.path(), "ws", 1, "drip8 60", &[]);
    let id = env.submit(&repo).await;
    let upstream = env
        .daemon
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let proxy = Proxy::start(upstream).await;
    let mut child = tokio::process::Command::new(bin())
        .args(["tail", "-f", &id])
        .current_dir(&repo.path)
        .env("LOOPD_ADDR", proxy.url())
        .env_remove("LOOPD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    for line in ["drip line 10 of 60", "drip line 40 of 60"] {
        wait_for(line, Duration::from_secs(30), || async {
            text(&out).contains(line).then_some(())
        })
        .await;
        // The stream is open and the step still drips: the cut is mid-stream.
        assert!(proxy.cut() >= 1, "an open stream to cut");
    }
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("tail returns when the run has ended")
        .expect("wait");
    let (printed, stderr) = (text(&out), text(&err));
    assert!(status.success(), "tail failed: {stderr}");
    assert_eq!(
        stderr.matches("output stream interrupted").count(),
        2,
        "each cut seen and resumed: {stderr}"
    );
    assert_eq!(env.status(&id).await, "COMPLETED");
    // The whole output, read in one go once the run has ended.
    let replay = env.client(&repo.path, &["tail", &id]).await;
    assert_eq!(
        printed,
        replay.ok(),
        "the followed output is the run's output"
    );
    for n in 1..=60 {
        let line = format!("drip line {n} of 60 é 日本 🙂\n");
        assert!(printed.matches(&line).count() >= 1, "{line:?} missing");
    }
}
