//! A distributed loopd for tests: a controller on a fresh Postgres database with its artifacts
//! in the in-process S3 server, and worker processes with their own data dirs, each started
//! with a label `w<N>` so that a test can tell which process holds a step. Short timings come
//! from [`Timings`]; `api.rs` reads the runs API the way a client would. Also small helpers:
//! git, hashes, the pids of a `hang` agent.

use crate::support::pg::TestDb;
use crate::support::proc::Loopd;
use crate::support::s3::S3Server;
use crate::support::{test_dir, wait_for};
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// The join token of every test cluster.
pub const JOIN_TOKEN: &str = "join-token-for-distributed-tests";

/// How long a test waits for a run to reach a status.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The timings of a cluster (all in ms), short so that failures show up quickly.
#[derive(Debug, Clone)]
pub struct Timings {
    pub heartbeat: u64,
    pub lease_ttl: u64,
    pub offline_after: u64,
    pub kill_grace: u64,
    pub drain_timeout: u64,
    pub affinity: u64,
    pub upload_attempts: u32,
    pub retry_backoff: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: 200,
            lease_ttl: 10_000,
            offline_after: 1500,
            kill_grace: 500,
            drain_timeout: 30_000,
            affinity: 300,
            upload_attempts: 3,
            retry_backoff: 50,
        }
    }
}

/// A controller, its database and S3 store, and its workers; perhaps more controllers on the
/// same database (`others`: the runs API calls of the helpers go to `controller`).
pub struct Cluster {
    pub workers: Vec<Loopd>,
    pub controller: Loopd,
    pub others: Vec<Loopd>,
    pub s3: S3Server,
    _db: TestDb,
    pub timings: Timings,
    pub http: reqwest::Client,
    pub dir: crate::support::TestDir,
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// What a test adds to the processes of a cluster.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub controller_args: Vec<String>,
    pub controller_env: Vec<(String, String)>,
    /// Given to every worker [`Cluster::start_with`] starts.
    pub worker_env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts the store, the controller and `workers` workers, and waits until all are up.
    pub async fn start(name: &str, workers: usize, timings: Timings) -> Cluster {
        Self::start_with(name, workers, timings, &Extra::default()).await
    }

    /// [`Cluster::start`] with extra arguments and environment for the processes.
    pub async fn start_with(
        name: &str,
        workers: usize,
        timings: Timings,
        extra: &Extra,
    ) -> Cluster {
        let dir = test_dir(name);
        let db = TestDb::create();
        let s3 = S3Server::start().await;
        let mut args = vec!["--role", "controller"];
        args.extend(extra.controller_args.iter().map(String::as_str));
        let mut env = controller_env(&db, &s3, &timings);
        env.extend(extra.controller_env.iter().cloned());
        let controller = Loopd::spawn(&dir.path().join("controller"), &args, &pairs(&env));
        controller.wait_ready("/ready").await;
        let mut cluster = Cluster {
            workers: Vec::new(),
            controller,
            others: Vec::new(),
            s3,
            _db: db,
            timings,
            http: reqwest::Client::new(),
            dir,
        };
        for _ in 0..workers {
            cluster.add_worker(&[], &pairs(&extra.worker_env)).await;
        }
        cluster
    }

    /// Starts one more controller on the same database and artifact store, with a data dir of
    /// its own (`controller<N>`: nothing is shared through it, live output included), and
    /// waits until it is ready.
    pub async fn add_controller(&mut self) -> &Loopd {
        let dir = self
            .dir
            .path()
            .join(format!("controller{}", self.others.len() + 1));
        let c = self.controller.sibling(&dir);
        c.wait_ready("/ready").await;
        self.others.push(c);
        self.others.last().expect("just added")
    }

    /// Every controller's URL, `controller` first, separated by commas.
    pub fn controller_urls(&self) -> String {
        std::iter::once(&self.controller)
            .chain(&self.others)
            .map(Loopd::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts one more worker (label `w<index>` plus `labels`) with extra environment, and
    /// waits until the controller lists it online.
    pub async fn add_worker(&mut self, labels: &[&str], extra_env: &[(&str, &str)]) -> usize {
        let url = self.controller.url();
        self.add_worker_of(&url, labels, extra_env).await
    }

    /// [`add_worker`](Self::add_worker) of the controllers `urls` (comma-separated).
    pub async fn add_worker_of(
        &mut self,
        urls: &str,
        labels: &[&str],
        extra_env: &[(&str, &str)],
    ) -> usize {
        let index = self.spawn_worker(urls, labels, extra_env);
        self.workers[index].wait_ready("/health").await;
        let what = format!("worker w{index} to be online");
        let me = &*self;
        wait_for(&what, Duration::from_secs(30), || async move {
            me.worker_info(index)
                .await
                .filter(|w| w["status"] != "offline")
        })
        .await;
        index
    }

    /// Spawns a worker of `controller` (label `w<index>` plus `labels`) without waiting for
    /// anything; returns its index.
    pub fn spawn_worker(
        &mut self,
        controller: &str,
        labels: &[&str],
        extra_env: &[(&str, &str)],
    ) -> usize {
        let index = self.workers.len();
        let label = std::iter::once(format!("w{index}"))
            .chain(labels.iter().map(|l| l.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        let t = &self.timings;
        let mut env = vec![
            (
                "LOOPD__WORKER__HEARTBEAT_INTERVAL_MS",
                t.heartbeat.to_string(),
            ),
            ("LOOPD__WORKER__KILL_GRACE_MS", t.kill_grace.to_string()),
            (
                "LOOPD__WORKER__DRAIN_TIMEOUT_MS",
                t.drain_timeout.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect::<Vec<_>>();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let worker = Loopd::spawn(
            &self.dir.path().join(format!("worker{index}")),
            &[
                "--role",
                "worker",
                "--controller",
                controller,
                "--join-token",
                JOIN_TOKEN,
                "--labels",
                &label,
            ],
            &pairs(&env),
        );
        self.workers.push(worker);
        index
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.controller.url())
    }

    /// Sends `sig` to worker `index`.
    pub fn signal_worker(&self, index: usize, sig: Signal) {
        self.workers[index].signal(sig);
    }
}

fn controller_env(db: &TestDb, s3: &S3Server, t: &Timings) -> Vec<(String, String)> {
    [
        ("LOOPD__STORAGE__TYPE", "postgres".to_string()),
        ("LOOPD__STORAGE__URL", db.url.clone()),
        ("LOOPD__STORAGE__POOL_SIZE", "4".into()),
        ("LOOPD_WORKER_JOIN_TOKEN", JOIN_TOKEN.into()),
        ("LOOPD__ARTIFACTS__TYPE", "s3".into()),
        ("LOOPD__ARTIFACTS__BUCKET", s3.bucket().into()),
        ("LOOPD__ARTIFACTS__ENDPOINT", s3.endpoint()),
        (
            "LOOPD__ARTIFACTS__REGION",
            crate::support::s3::REGION.into(),
        ),
        ("LOOPD__ARTIFACTS__ACCESS_KEY_ID", s3.access_key().into()),
        (
            "LOOPD__ARTIFACTS__SECRET_ACCESS_KEY",
            s3.secret_key().into(),
        ),
        (
            "LOOPD__ARTIFACTS__UPLOAD_ATTEMPTS",
            t.upload_attempts.to_string(),
        ),
        (
            "LOOPD__ARTIFACTS__RETRY_BACKOFF_MS",
            t.retry_backoff.to_string(),
        ),
        ("LOOPD__LEASE__TTL_MS", t.lease_ttl.to_string()),
        ("LOOPD__LEASE__SWEEP_INTERVAL_MS", "200".into()),
        (
            "LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS",
            t.offline_after.to_string(),
        ),
        (
            "LOOPD__WORKER__HEARTBEAT_INTERVAL_MS",
            t.heartbeat.to_string(),
        ),
        (
            "LOOPD__SCHEDULER__AFFINITY_WINDOW_MS",
            t.affinity.to_string(),
        ),
        ("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "500".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

/// Runs git in `dir` and returns stdout (panics on failure).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Lower-case hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Milliseconds since the Unix epoch (the clock SSE timestamps use; same host).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
