//! The CLI verbs over the runs API, for people and scripts: `loopd run|list|inspect|tail|
//! pause|resume|cancel|retry|workers|artifacts|health` and the review verbs (`review.rs`). Every verb but `health` first probes
//! the daemon; every failure is one `error: …` line on stderr and exit status 1.

mod health;
mod render;
mod review;
mod submit;
mod tail;

use crate::api::ErrorBody;
use crate::cli::{ClientArgs, Command};
use crate::domain::RunStatus;
use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A client failure, printed as one line.
#[derive(Debug)]
pub struct ClientError(pub String);

type Result<T> = std::result::Result<T, ClientError>;

/// Runs one verb and returns the process exit status.
pub fn run(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// A connection to the daemon: to one of the addresses `LOOPD_ADDR` (or `--addr`) names,
/// separated by commas (several controllers on one database): the first that answers the
/// probe, tried in order.
pub struct Daemon {
    http: reqwest::Client,
    addrs: Vec<String>,
    /// The address in use (the first until a probe found another).
    chosen: std::sync::Mutex<String>,
    token: Option<String>,
    pub json: bool,
}

impl Daemon {
    fn new(c: &ClientArgs) -> Result<Daemon> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        let mut addrs = crate::settings::split_urls(&c.addr);
        if addrs.is_empty() {
            addrs.push(c.addr.trim_end_matches('/').to_string());
        }
        Ok(Daemon {
            http,
            chosen: std::sync::Mutex::new(addrs[0].clone()),
            addrs,
            token: c.token.clone().filter(|t| !t.is_empty()),
            json: c.json,
        })
    }

    /// The address in use.
    fn addr(&self) -> String {
        self.chosen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The addresses, for messages: one, or the list.
    fn addrs(&self) -> String {
        self.addrs.join(", ")
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_to(&self.addr(), method, path)
    }

    fn request_to(&self, addr: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{addr}{path}"));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError(format!("daemon not running at {}", self.addr()))
        } else {
            ClientError(format!("request to {} failed: {e}", self.addr()))
        }
    }

    /// Waits for `GET /health` to answer 2xx (old loopctl behaviour: 200, 400, 800 … ms
    /// backoff within a budget, 5 s unless LOOPD_READY_TIMEOUT_MS says otherwise).
    async fn probe(&self) -> Result<()> {
        let budget = std::env::var("LOOPD_READY_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000u64);
        let start = Instant::now();
        let left = || Duration::from_millis(budget).saturating_sub(start.elapsed());
        // Whether every failed probe so far found nothing listening.
        let refused = AtomicBool::new(true);
        // Each round asks every address in order; the first that answers is used.
        let probe_once = || async {
            let mut failed = Probe::NotReady;
            for addr in &self.addrs {
                let r = self
                    .request_to(addr, Method::GET, "/health")
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        *self.chosen.lock().unwrap_or_else(|e| e.into_inner()) = addr.clone();
                        return Ok(());
                    }
                    Ok(r) if r.status() == StatusCode::UNAUTHORIZED => failed = Probe::Unauthorized,
                    Ok(_) => refused.store(false, Ordering::Relaxed),
                    Err(e) => {
                        if !e.is_connect() {
                            refused.store(false, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(failed)
        };
        let pauses = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(200))
            .without_max_delay()
            .without_max_times();
        let probed = probe_once
            .retry(pauses)
            .sleep(tokio::time::sleep)
            .when(|e| *e == Probe::NotReady && !left().is_zero())
            .adjust(|_, pause| pause.map(|p| p.min(left())))
            .notify(|_, wait| {
                let (addr, wait) = (self.addrs(), wait.as_millis());
                eprintln!("waiting for daemon at {addr} (retrying in {wait}ms)");
            })
            .await;
        match probed {
            Ok(()) => Ok(()),
            Err(Probe::Unauthorized) => Err(ClientError(
                "unauthorized: check LOOPD_TOKEN env var or --token flag".into(),
            )),
            Err(Probe::NotReady) if refused.load(Ordering::Relaxed) => Err(ClientError(format!(
                "daemon not running at {}",
                self.addrs()
            ))),
            Err(Probe::NotReady) => Err(ClientError(format!(
                "daemon not ready after {budget}ms at {}",
                self.addrs()
            ))),
        }
    }

    /// Sends a request; any non-2xx answer becomes the error line the old CLI printed.
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        self.check(resp, what).await
    }

    /// A 2xx answer as it is; any other becomes the error line the old CLI printed.
    async fn check(&self, resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Option<ErrorBody> = resp.json().await.ok();
        let (msg, code) = body
            .map(|b| (b.error, b.code))
            .unwrap_or_else(|| ("unknown error".into(), String::new()));
        Err(ClientError(match status {
            StatusCode::UNAUTHORIZED => {
                "unauthorized: check LOOPD_TOKEN env var or --token flag".into()
            }
            // The server's message usually says the same ("run not found"): once is enough.
            StatusCode::NOT_FOUND if msg.ends_with("not found") => format!("{what} not found"),
            StatusCode::NOT_FOUND if msg.starts_with(&format!("{what} not found")) => msg,
            StatusCode::NOT_FOUND => format!("{what} not found: {msg}"),
            StatusCode::SERVICE_UNAVAILABLE if code == "no_capacity" => {
                format!("no capacity: {msg}")
            }
            StatusCode::CONFLICT if code == "invalid_transition" => format!("not allowed: {msg}"),
            // Refusals that explain themselves (a merge conflict, gh missing …).
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => msg,
            StatusCode::FORBIDDEN => format!("forbidden: {msg}"),
            s => format!("HTTP error: {} - {msg}", s.as_u16()),
        }))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<(T, serde_json::Value)> {
        let resp = self.send(self.request(Method::GET, path), what).await?;
        let value: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| ClientError(format!("invalid response: {e}")))?;
        let typed = serde_json::from_value(value.clone())
            .map_err(|e| ClientError(format!("invalid response: {e}")))?;
        Ok((typed, value))
    }
}

/// How a readiness probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Not answering, or not healthy yet: worth another try within the budget.
    NotReady,
    Unauthorized,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run(args) => {
            let d = Daemon::new(&args.client)?;
            d.probe().await?;
            submit::run(&d, &args).await
        }
        Command::List {
            client,
            status,
            workspace,
        } => {
            let d = Daemon::new(&client)?;
            d.probe().await?;
            let mut q = Vec::new();
            if let Some(s) = status {
                let s: RunStatus = s.to_uppercase().parse().map_err(|_| {
                    let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ClientError(format!(
                        "invalid --status {s}: use one of {}",
                        all.join(", ")
                    ))
                })?;
                q.push(format!("status={}", s.as_str()));
            }
            if let Some(w) = workspace {
                q.push(format!(
                    "workspace_root={}",
                    enc(&submit::workspace_filter(&w))
                ));
            }
            let path = if q.is_empty() {
                "/runs".into()
            } else {
                format!("/runs?{}", q.join("&"))
            };
            let (runs, raw): (crate::api::RunsEnvelope, _) = d.get_json(&path, "runs").await?;
            render::print(d.json, &raw, || render::runs(&runs.runs));
            Ok(())
        }
        Command::Inspect { client, id } => {
            let d = Daemon::new(&client)?;
            d.probe().await?;
            let (run, raw_run): (crate::api::RunEnvelope, _) =
                d.get_json(&format!("/runs/{}", enc(&id)), "run").await?;
            let (steps, raw_steps): (crate::api::StepsEnvelope, _) = d
                .get_json(&format!("/runs/{}/steps?phases=all", enc(&id)), "run")
                .await?;
            let raw = serde_json::json!({"run": raw_run["run"], "steps": raw_steps["steps"]});
            render::print(d.json, &raw, || render::inspect(&run.run, &steps.steps));
            Ok(())
        }
        Command::Tail {
            client, id, offset, ..
        } => {
            let d = Daemon::new(&client)?;
            d.probe().await?;
            tail::follow(&d, &id, offset).await
        }
        Command::Diff { client, id, patch } => {
            let d = connect(&client).await?;
            review::diff(&d, &id, patch).await
        }
        Command::Merge {
            client,
            id,
            strategy,
        } => review::merge(&connect(&client).await?, &id, strategy).await,
        Command::Scrap { client, id } => {
            let d = connect(&client).await?;
            review::action(&d, &id, "scrap", "scrapped (worktree and branch removed)").await
        }
        Command::Pr {
            client,
            id,
            title,
            body,
        } => review::pr(&connect(&client).await?, &id, title, body).await,
        Command::Reset { client, id } => {
            let d = connect(&client).await?;
            review::action(&d, &id, "reset", "reset (worktree and branch removed)").await
        }
        Command::Worktrees {
            client,
            workspace,
            workspace_flag,
        } => review::worktrees(&connect(&client).await?, workspace.or(workspace_flag)).await,
        Command::WorktreeRm {
            client,
            path,
            workspace,
            force,
        } => review::worktree_rm(&connect(&client).await?, &path, workspace, force).await,
        Command::Analyze {
            client,
            id,
            model,
            prompt_only,
        } => review::analyze(&connect(&client).await?, &id, model, prompt_only).await,
        Command::Health { addr } => health::check(&addr).await,
        Command::Pause { client, id } => control(&client, &id, "pause", "paused").await,
        Command::Resume { client, id } => control(&client, &id, "resume", "resumed").await,
        Command::Cancel { client, id } => control(&client, &id, "cancel", "canceled").await,
        Command::Retry { client, id } => control(&client, &id, "retry", "re-queued").await,
        Command::Workers { client } => {
            let d = Daemon::new(&client)?;
            d.probe().await?;
            let (w, raw): (crate::api::WorkersEnvelope, _) =
                d.get_json("/workers", "workers").await?;
            render::print(d.json, &raw, || {
                render::workers(&w.workers) + &render::accounts(&w.accounts)
            });
            Ok(())
        }
        Command::Artifacts {
            client,
            id,
            get,
            output,
        } => {
            let d = Daemon::new(&client)?;
            d.probe().await?;
            match get {
                Some(name) => tail::download(&d, &id, &name, output.as_deref()).await,
                None => {
                    let (a, raw): (crate::api::ArtifactsEnvelope, _) = d
                        .get_json(&format!("/runs/{}/artifacts", enc(&id)), "run")
                        .await?;
                    render::print(d.json, &raw, || render::artifacts(&a.artifacts));
                    Ok(())
                }
            }
        }
    }
}

/// A daemon that answered its probe.
async fn connect(client: &ClientArgs) -> Result<Daemon> {
    let d = Daemon::new(client)?;
    d.probe().await?;
    Ok(d)
}

async fn control(client: &ClientArgs, id: &str, verb: &str, done: &str) -> Result<()> {
    let d = Daemon::new(client)?;
    d.probe().await?;
    d.send(
        d.request(Method::POST, &format!("/runs/{}/{verb}", enc(id))),
        "run",
    )
    .await?;
    if d.json {
        println!(
            "{}",
            serde_json::json!({"id": id, "action": verb, "ok": true})
        );
    } else {
        println!("Run {id} {done}");
    }
    Ok(())
}
