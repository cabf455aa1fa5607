//! A distributed loopd for tests: a controller on a fresh Postgres database with its artifacts
//! in the in-process S3 server, and worker processes with their own data dirs, each started
//! with a label `w<N>` so that a test can tell which process holds a step. Short timings come
//! from [`Timings`]; helpers read the runs API the way a client would.

use crate::support::pg::TestDb;
use crate::support::proc::Loopd;
use crate::support::repo::Repo;
use crate::support::s3::S3Server;
use crate::support::{test_dir, wait_for};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
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

/// A controller, its database and S3 store, and its workers.
pub struct Cluster {
    pub workers: Vec<Loopd>,
    pub controller: Loopd,
    pub s3: S3Server,
    _db: TestDb,
    pub timings: Timings,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl Cluster {
    /// Starts the store, the controller and `workers` workers, and waits until all are up.
    pub async fn start(name: &str, workers: usize, timings: Timings) -> Cluster {
        let dir = test_dir(name);
        let db = TestDb::create();
        let s3 = S3Server::start().await;
        let controller = Loopd::spawn(
            &dir.path().join("controller"),
            &["--role", "controller"],
            &pairs(&controller_env(&db, &s3, &timings)),
        );
        controller.wait_ready("/ready").await;
        let mut cluster = Cluster {
            workers: Vec::new(),
            controller,
            s3,
            _db: db,
            timings,
            http: reqwest::Client::new(),
            dir,
        };
        for _ in 0..workers {
            cluster.add_worker(&[], &[]).await;
        }
        cluster
    }

    /// Starts one more worker (label `w<index>` plus `labels`) with extra environment, and
    /// waits until the controller lists it online.
    pub async fn add_worker(&mut self, labels: &[&str], extra_env: &[(&str, &str)]) -> usize {
        let url = self.controller.url();
        let index = self.spawn_worker(&url, labels, extra_env);
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

    pub async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.expect("GET");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("JSON body")
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// `POST /runs/{id}/<verb>` (pause, resume, cancel, retry); returns the HTTP status.
    pub async fn control(&self, id: &str, verb: &str) -> u16 {
        let resp = self
            .http
            .post(self.url(&format!("/runs/{id}/{verb}")))
            .send()
            .await
            .expect("POST control verb");
        resp.status().as_u16()
    }

    /// Submits a git run of `repo` (spec `specs/demo.md`, plan `PLAN.md`) and returns its id.
    pub async fn submit_git(&self, repo: &Repo, labels: &[&str]) -> String {
        self.submit(json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": "demo",
            "workspace_source": "git",
            "repo_url": repo.url(),
            "labels": labels,
        }))
        .await
    }

    /// Submits a run and returns its id (the submission must be accepted).
    pub async fn submit(&self, body: Value) -> String {
        let resp = self.post("/runs", body).await;
        let status = resp.status();
        let v: Value = resp.json().await.expect("JSON body");
        assert_eq!(status.as_u16(), 201, "POST /runs: {v}");
        v["run"]["id"].as_str().expect("run id").to_string()
    }

    pub async fn run(&self, id: &str) -> Value {
        self.get(&format!("/runs/{id}")).await["run"].clone()
    }

    pub async fn steps(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/runs/{id}/steps")).await["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the run has status `want` (panics early when it ends otherwise).
    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        let what = format!(
            "run {id} to be {want} (controller log: {})",
            self.controller.log.display()
        );
        wait_for(&what, RUN_TIMEOUT, || async move {
            let run = self.run(id).await;
            let status = run["status"].as_str().unwrap_or_default().to_string();
            let terminal = ["COMPLETED", "FAILED", "CANCELED"].contains(&status.as_str());
            if terminal && status != want {
                panic!("run {id} ended {status} instead of {want}: {run}");
            }
            (status == want).then_some(run)
        })
        .await
    }

    /// Waits for a step of the run that satisfies `pred`.
    pub async fn wait_step(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let pred = &pred;
        wait_for(what, RUN_TIMEOUT, || async move {
            self.steps(id).await.into_iter().find(|s| pred(s))
        })
        .await
    }

    /// The controller's view of worker `index` (found by its label).
    pub async fn worker_info(&self, index: usize) -> Option<Value> {
        let label = format!("w{index}");
        let list = self.get("/workers").await;
        list["workers"].as_array()?.iter().rev().find_map(|w| {
            let labels = w["labels"].as_array()?;
            labels
                .iter()
                .any(|l| l == label.as_str())
                .then(|| w.clone())
        })
    }

    /// Which worker process (index) a worker id belongs to.
    pub async fn index_of(&self, worker_id: &str) -> usize {
        for i in 0..self.workers.len() {
            if self
                .worker_info(i)
                .await
                .is_some_and(|w| w["id"] == worker_id)
            {
                return i;
            }
        }
        panic!("no worker process has id {worker_id}");
    }

    /// Waits until the controller lists worker `index` with `status`.
    pub async fn wait_worker_status(&self, index: usize, status: &str) -> Value {
        let what = format!("worker w{index} to be {status}");
        wait_for(&what, Duration::from_secs(30), || async move {
            self.worker_info(index)
                .await
                .filter(|w| w["status"] == status)
        })
        .await
    }

    /// The run's artifact listing.
    pub async fn artifacts(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/runs/{id}/artifacts")).await["artifacts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Downloads an artifact through the runs API.
    pub async fn download(&self, id: &str, name: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(self.url(&format!("/runs/{id}/artifacts/{name}")))
            .send()
            .await
            .expect("GET artifact");
        assert!(
            resp.status().is_success(),
            "GET artifact {name}: {}",
            resp.status()
        );
        resp.bytes().await.expect("artifact bytes").to_vec()
    }

    /// The object file of an artifact in the S3 server's bucket.
    pub fn object_path(&self, id: &str, name: &str) -> PathBuf {
        self.s3.bucket_dir().join("runs").join(id).join(name)
    }

    /// Every event of a finished run (the SSE stream ends after the terminal event).
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(self.url(&format!("/runs/{id}/events")))
            .send()
            .await
            .expect("GET events");
        let text = tokio::time::timeout(Duration::from_secs(30), resp.text())
            .await
            .expect("the event stream of a finished run ends")
            .expect("event stream");
        crate::sse::parse(&text)
            .into_iter()
            .filter_map(|f| serde_json::from_str(&f.data).ok())
            .collect()
    }

    /// The commit subjects of the run branch held by the run's final `run.bundle`, fetched
    /// into a fresh clone of `repo` (the bundle's prerequisite is the run's start commit).
    pub async fn bundle_subjects(&self, repo: &Repo, id: &str) -> Vec<String> {
        let bytes = self.download(id, "run.bundle").await;
        let check = self.dir.path().join(format!("check-{id}"));
        let bundle = self.dir.path().join(format!("{id}.bundle"));
        std::fs::write(&bundle, bytes).expect("write the bundle");
        git(
            self.dir.path(),
            &["clone", "-q", &repo.url(), &path_str(&check)],
        );
        let heads = git(&check, &["bundle", "list-heads", &path_str(&bundle)]);
        let head = heads
            .lines()
            .find_map(|l| l.split_once(" refs/heads/").map(|(_, b)| b.to_string()))
            .expect("the bundle names the run branch");
        let spec = format!("refs/heads/{head}:refs/heads/{head}");
        git(&check, &["fetch", "-q", &path_str(&bundle), &spec]);
        crate::support::repo::subjects_at(&check, &head)
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

/// The pids a `hang` agent wrote into its workspace, once the file is complete.
pub async fn hang_pids(workspace: &Path) -> Vec<i32> {
    let file = workspace.join(".hang.pids");
    let what = format!("{} to be written", file.display());
    let file = &file;
    wait_for(&what, Duration::from_secs(30), || async move {
        let text = std::fs::read_to_string(file).ok()?;
        let pids: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .await
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Milliseconds since the Unix epoch (the clock SSE timestamps use; same host).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
