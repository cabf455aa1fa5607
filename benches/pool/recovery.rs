//! Recovery: real worker processes with default settings; a step runs on worker A (its agent
//! sleeps), A is killed with SIGKILL, and the time until the step runs on worker B is measured.
//! Soak: 200 simulated workers hold a lease each and heartbeat at the controller's interval;
//! every heartbeat answer must say `continue` for the lease (a lost lease is counted).

use crate::cluster::{poll, Cluster, Lease, SimWorker, Task, JOIN};
use crate::support::proc::Loopd;
use crate::{Opts, Table};
use serde_json::json;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn worker(c: &Cluster, name: &str) -> Loopd {
    let url = c.base.clone();
    Loopd::spawn(
        &c.dir.path().join(name),
        &["--role", "worker", "--controller", &url],
        &[("LOOPD_WORKER_JOIN_TOKEN", JOIN)],
    )
}

/// The step's (status, worker id).
async fn step_state(
    c: &Cluster,
    run: &str,
    step: Option<&str>,
) -> Option<(String, String, String)> {
    let steps = c.steps(run).await;
    let s = steps
        .iter()
        .find(|s| step.is_none_or(|id| s["id"] == id) && s["phase"] == "implementation")?;
    Some((
        s["id"].as_str()?.to_string(),
        s["status"].as_str()?.to_string(),
        s["worker_id"].as_str().unwrap_or_default().to_string(),
    ))
}

pub async fn recovery(t: &mut Table) {
    println!("recovery: kill -9 of a worker running a step, default settings");
    let c = Cluster::start("recovery", &[]).await;
    let pids = c.dir.path().join("agent.pids");
    let agent = c.dir.path().join("agent.sh");
    std::fs::write(
        &agent,
        format!("echo $$ >> {}\nexec sleep 300\n", pids.display()),
    )
    .expect("agent script");
    let mut a = worker(&c, "worker-a");
    a.wait_ready("/ready").await;
    let cfg =
        json!({"reviewer": false, "iterations": 1, "agent_cmd": format!("sh {}", agent.display())});
    let run = c.submit("recovery", cfg).await;
    let started = poll(Duration::from_secs(60), || async {
        let (id, status, w) = step_state(&c, &run, None).await?;
        let agent_up = std::fs::read_to_string(&pids).is_ok_and(|s| !s.is_empty());
        (status == "IN_PROGRESS" && agent_up).then_some((id, w))
    })
    .await;
    let Some((step, on_a)) = started else {
        t.add(
            "recovery after kill -9 (s)",
            "step never started".into(),
            "<= 15",
            Some(false),
        );
        return;
    };
    let b = worker(&c, "worker-b");
    b.wait_ready("/ready").await;
    let t0 = Instant::now();
    a.kill9();
    let moved = poll(Duration::from_secs(120), || async {
        let (_, status, w) = step_state(&c, &run, Some(&step)).await?;
        (status == "IN_PROGRESS" && !w.is_empty() && w != on_a).then_some(())
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    match moved {
        Some(()) => t.add(
            "recovery after kill -9 (s)",
            format!("{secs:.1}"),
            "<= 15",
            Some(secs <= 15.0),
        ),
        None => t.add(
            "recovery after kill -9 (s)",
            "not recovered in 120 s".into(),
            "<= 15",
            Some(false),
        ),
    }
    // Clean up: cancel the run (B kills its agent), then A's orphaned agent by its pid.
    let _ = c
        .http
        .post(format!("{}/runs/{run}/cancel", c.base))
        .send()
        .await;
    poll(Duration::from_secs(30), || async {
        let (_, status, _) = step_state(&c, &run, Some(&step)).await?;
        (status != "IN_PROGRESS").then_some(())
    })
    .await;
    drop(b);
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.starts_with("sleep") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

const SOAK_WORKERS: usize = 200;

pub async fn soak(o: &Opts, t: &mut Table) {
    println!(
        "soak: {SOAK_WORKERS} workers holding leases, {} s",
        o.soak_secs
    );
    let c = Cluster::start("soak", &[]).await;
    let lost = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let beats = Arc::new(AtomicU64::new(0));
    let holding = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..SOAK_WORKERS {
        let (http, base) = (c.http.clone(), c.base.clone());
        let (lost, errors, beats, holding) =
            (lost.clone(), errors.clone(), beats.clone(), holding.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = SimWorker::register(&http, &base, &format!("s{i}")).await;
            let held: Arc<Mutex<Vec<Lease>>> = Arc::default();
            // Heartbeats run from registration on, like a real worker's.
            let (hw, hh) = (w.clone(), held.clone());
            let _beat = Task(tokio::spawn(async move {
                // Spread the beats over the interval.
                let every = Duration::from_millis(hw.heartbeat_ms);
                tokio::time::sleep(every.mul_f64(i as f64 / SOAK_WORKERS as f64)).await;
                loop {
                    let leases = hh.lock().expect("held").clone();
                    let status = if leases.is_empty() { "idle" } else { "busy" };
                    match hw.heartbeat(status, &leases).await {
                        Ok(actions) => {
                            beats.fetch_add(1, Ordering::Relaxed);
                            let kept = actions.iter().filter(|a| *a == "continue").count();
                            if kept < leases.len() {
                                lost.fetch_add((leases.len() - kept) as u64, Ordering::Relaxed);
                                hh.lock().expect("held").clear();
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("soak heartbeat: {e}");
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            }));
            loop {
                match w.claim(30_000).await {
                    Ok(Some(l)) => {
                        held.lock().expect("held").push(l);
                        holding.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Ok(None) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            std::future::pending::<()>().await;
        })));
    }
    for n in 0..SOAK_WORKERS {
        c.submit(
            &format!("s{n}"),
            json!({"reviewer": false, "iterations": 1}),
        )
        .await;
    }
    let all = poll(Duration::from_secs(120), || async {
        (holding.load(Ordering::SeqCst) == SOAK_WORKERS).then_some(())
    })
    .await;
    let b0 = beats.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(o.soak_secs)).await;
    let during = beats.load(Ordering::Relaxed) - b0;
    let expired = c.metric("loopd_lease_expired_total").await;
    drop(tasks);
    let (l, e) = (lost.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    t.add(
        &format!("lease losses, {SOAK_WORKERS} workers, {} s", o.soak_secs),
        format!(
            "{l} (expired {expired}, heartbeat errors {e}, {during} beats, all leased: {})",
            all.is_some()
        ),
        "0",
        Some(l == 0 && e == 0 && expired == 0.0 && all.is_some()),
    );
}
