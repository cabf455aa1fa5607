//! The runs API as the tests read it: submitting runs, reading runs, steps, workers, events
//! and artifacts, waiting on their states, and the run branch of a run's final bundle.

use crate::cluster::{git, path_str, Cluster, RUN_TIMEOUT};
use crate::support::repo::Repo;
use crate::support::wait_for;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

impl Cluster {
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

    /// Every step of the run, a postmortem's too (`?phases=all`).
    pub async fn steps(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/runs/{id}/steps?phases=all")).await["steps"]
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

    /// The object file of a run-level artifact (one the controller made) in the S3 bucket.
    pub fn object_path(&self, id: &str, name: &str) -> PathBuf {
        self.s3.bucket_dir().join("runs").join(id).join(name)
    }

    /// The object file of artifact `a` (an entry of the run's listing) when it is under the
    /// prefix of the lease that stored it, `runs/<run>/steps/<step>/<epoch>/<name>`, as every
    /// step's upload is (the controller's own files are under the run's). `steps` is the run's
    /// step listing.
    pub fn lease_object(&self, id: &str, a: &Value, steps: &[Value]) -> Option<PathBuf> {
        let name = a["name"].as_str().expect("artifact name");
        let sid = a["step_id"].as_str()?;
        let step = steps.iter().find(|s| s["id"] == sid).expect("its step");
        let epoch = step["lease_epoch"].as_i64().expect("epoch");
        let path = self.object_path(id, &format!("steps/{sid}/{epoch}/{name}"));
        path.is_file().then_some(path)
    }

    /// Whether a checkpoint bundle of the run (`checkpoints/<step>.bundle`, under the prefix of
    /// the lease that stored it) is in the bucket.
    pub fn checkpoint_stored(&self, id: &str) -> bool {
        fn walk(dir: &std::path::Path) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            entries.flatten().any(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    p.extension().is_some_and(|x| x == "bundle")
                        && p.parent()
                            .and_then(|d| d.file_name())
                            .is_some_and(|d| d == "checkpoints")
                }
            })
        }
        walk(&self.object_path(id, ""))
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
}
