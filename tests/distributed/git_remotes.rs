//! Git runs from real remotes started by the tests on loopback: a smart-HTTP server over TLS
//! (git-http-backend, a CA made per run, basic auth) and sshd with its own host key. A
//! controller and two workers complete runs from each, and the run branch arrives on the
//! remote with every task's commit once; a worker killed mid-run costs one step; each kind of
//! failure is refused with its reason and without a retry storm; no secret reaches a log, an
//! event, the run's JSON or an error.

use crate::cluster::{git, path_str, Cluster, Extra, Timings};
use crate::support::git_https::GitHttps;
use crate::support::repo::{subjects_at, Repo};
use crate::support::sshd::{keygen, ssh_tests_here, ssh_tests_run, Sshd, SKIP_VAR};
use crate::support::{test_dir, TestDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const USER: &str = "loopd-ci";
const PASSWORD: &str = "https-token-7f3c9a-never-logged";
const PASSPHRASE: &str = "ssh-passphrase-51be0d-never-logged";

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write");
    path.to_path_buf()
}

/// A git run's submission of `url` (spec and plan of [`Repo`]).
fn git_run(url: &str, repo_ref: Option<&str>) -> Value {
    json!({
        "spec_path": "specs/demo.md",
        "plan_path": "PLAN.md",
        "workspace_root": "demo",
        "workspace_source": "git",
        "repo_url": url,
        "repo_ref": repo_ref,
    })
}

/// Everything the cluster's processes wrote, and what the API shows of `id`.
async fn everything_shown(c: &Cluster, id: Option<&str>) -> String {
    let mut all = c.controller.log_text();
    for w in &c.workers {
        all.push_str(&w.log_text());
    }
    if let Some(id) = id {
        all.push_str(&c.run(id).await.to_string());
        all.push_str(&Value::from(c.events(id).await).to_string());
        all.push_str(&Value::from(c.steps(id).await).to_string());
    }
    all
}

async fn assert_no_secret(c: &Cluster, id: Option<&str>, secrets: &[&str]) {
    let all = everything_shown(c, id).await;
    for s in secrets {
        assert!(!all.contains(s), "a secret leaked into the output");
    }
}

/// The remote branch's commit subjects, oldest first.
fn remote_subjects(bare: &Path, branch: &str) -> Vec<String> {
    subjects_at(bare, branch)
}

/// An HTTPS remote with a three-task repository, and a cluster whose controller has the
/// credential in its settings and whose workers have it in their git credential helper.
async fn https_cluster(
    name: &str,
    mode: &str,
    tasks: usize,
) -> (TestDir, GitHttps, String, Cluster) {
    https_cluster_with(name, mode, tasks, "app.git", &[]).await
}

/// [`https_cluster`] with the repository served as `path` and `env` added to the
/// controller's environment.
async fn https_cluster_with(
    name: &str,
    mode: &str,
    tasks: usize,
    path: &str,
    env: &[(&str, &str)],
) -> (TestDir, GitHttps, String, Cluster) {
    let home = test_dir(&format!("{name}-remote"));
    let server = GitHttps::start(home.path(), USER, PASSWORD).await;
    let repo = Repo::create(home.path(), "app", tasks, mode, &[]);
    let url = server.publish(&repo.path, path);
    let password_file = write(&home.path().join("password"), &format!("{PASSWORD}\n"));
    let config = write(
        &home.path().join("controller.toml"),
        &format!(
            "[git]\nallowed_hosts = [\"127.0.0.1\"]\nca_file = \"{}\"\n\n[[git.credentials]]\nhost = \"127.0.0.1\"\nusername = \"{USER}\"\npassword_file = \"{}\"\n",
            server.ca_file.display(),
            password_file.display()
        ),
    );
    // What a git user has: a credential helper in their git config, the CA in the trust store.
    let store = write(
        &home.path().join("credentials"),
        &format!("https://{USER}:{PASSWORD}@127.0.0.1:{}\n", server.port),
    );
    let gitconfig = write(
        &home.path().join("gitconfig"),
        &format!(
            "[credential]\n\thelper = store --file={}\n",
            store.display()
        ),
    );
    let extra = Extra {
        controller_args: vec!["--config".into(), path_str(&config)],
        controller_env: pairs(&[&[("GIT_CONFIG_GLOBAL", "/dev/null")], env].concat()),
        worker_env: pairs(&[
            ("GIT_CONFIG_GLOBAL", &path_str(&gitconfig)),
            ("SSL_CERT_FILE", &path_str(&server.ca_file)),
        ]),
    };
    let c = Cluster::start_with(name, 2, Timings::default(), &extra).await;
    (home, server, url, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_run_from_an_https_remote_completes_on_two_workers_and_its_branch_is_pushed_back() {
    let (_home, server, url, c) = https_cluster("https-run", "tick", 3).await;
    let id = c.submit(git_run(&url, None)).await;
    let run = c.wait_status(&id, "COMPLETED").await;

    let branch = run["pushed_branch"]
        .as_str()
        .expect("pushed_branch")
        .to_string();
    let commit = run["pushed_commit"].as_str().expect("pushed_commit");
    let bare = server.root.join("app.git");
    assert_eq!(git(&bare, &["rev-parse", &branch]).trim(), commit);
    assert_eq!(
        remote_subjects(&bare, &branch),
        [
            "initial",
            "task 1: task number 1",
            "task 2: task number 2",
            "task 3: task number 3"
        ],
        "the run branch arrived on the remote with every task's commit once"
    );
    assert_eq!(run["repo_url"], url.as_str());
    assert_no_secret(&c, Some(&id), &[PASSWORD]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_on_an_https_remote_costs_one_step_and_the_run_still_pushes() {
    let (_home, server, url, mut c) = https_cluster("https-kill9", "slow 1", 2).await;
    let id = c.submit(git_run(&url, None)).await;
    let step = c
        .wait_step(&id, "the second implementation step to run", |s| {
            s["phase"] == "implementation" && s["attempt"] == 2 && s["status"] == "IN_PROGRESS"
        })
        .await;
    let holder = c
        .index_of(step["worker_id"].as_str().expect("worker"))
        .await;
    c.workers[holder].kill9();

    let run = c.wait_status(&id, "COMPLETED").await;
    let branch = run["pushed_branch"].as_str().expect("pushed_branch");
    assert_eq!(
        remote_subjects(&server.root.join("app.git"), branch),
        ["initial", "task 1: task number 1", "task 2: task number 2"],
        "each task's commit exactly once"
    );
    assert_no_secret(&c, Some(&id), &[PASSWORD]).await;
}

/// `ssh-agent -D -a SOCK` holding `key`; killed when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    async fn start(dir: &Path, key: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent");
        let s = socket.clone();
        crate::support::wait_for(
            "ssh-agent's socket",
            std::time::Duration::from_secs(10),
            || {
                let s = s.clone();
                async move { s.exists().then_some(()) }
            },
        )
        .await;
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .expect("ssh-add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Agent { child, socket }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_run_from_an_ssh_remote_completes_on_two_workers_and_its_branch_is_pushed_back() {
    let home = test_dir("ssh-remote");
    // The controller's key has a passphrase (from a file); the workers' key is in ssh-agent.
    if !ssh_tests_here() {
        return;
    }
    let controller_key = home.path().join("controller_key");
    keygen(&controller_key, PASSPHRASE);
    let Some(sshd) = Sshd::start(
        &home.path().join("sshd"),
        &[&controller_key.with_extension("pub")],
    )
    .await
    else {
        return;
    };
    let repo = Repo::create(home.path(), "app", 3, "tick", &[]);
    let bare = home.path().join("served/app.git");
    crate::support::repo::bare_copy(&repo.path, &bare);
    let url = sshd.url(&bare);
    let known_hosts = sshd.known_hosts("known_hosts");
    let passphrase_file = write(&home.path().join("passphrase"), &format!("{PASSPHRASE}\n"));
    let config = write(
        &home.path().join("controller.toml"),
        &format!(
            "[git]\nallowed_hosts = [\"127.0.0.1\"]\nknown_hosts = \"{}\"\n\n[[git.credentials]]\nhost = \"127.0.0.1\"\nssh_key_file = \"{}\"\nssh_key_passphrase_file = \"{}\"\n",
            known_hosts.display(),
            controller_key.display(),
            passphrase_file.display()
        ),
    );
    let agent = Agent::start(home.path(), &sshd.client_key).await;
    let extra = Extra {
        controller_args: vec!["--config".into(), path_str(&config)],
        controller_env: pairs(&[("SSH_AUTH_SOCK", "/nonexistent")]),
        worker_env: pairs(&[
            ("SSH_AUTH_SOCK", &path_str(&agent.socket)),
            ("LOOPD__GIT__KNOWN_HOSTS", &path_str(&known_hosts)),
        ]),
    };
    let c = Cluster::start_with("ssh-run", 2, Timings::default(), &extra).await;
    let id = c.submit(git_run(&url, None)).await;
    let run = c.wait_status(&id, "COMPLETED").await;
    let branch = run["pushed_branch"].as_str().expect("pushed_branch");
    assert_eq!(
        git(&bare, &["rev-parse", branch]).trim(),
        run["pushed_commit"].as_str().expect("pushed_commit")
    );
    assert_eq!(
        remote_subjects(&bare, branch),
        [
            "initial",
            "task 1: task number 1",
            "task 2: task number 2",
            "task 3: task number 3"
        ]
    );
    assert_no_secret(&c, Some(&id), &[PASSPHRASE]).await;
}

/// Submits `body` and returns the refusal's message (the submission must be refused).
async fn refusal(c: &Cluster, body: Value) -> String {
    let resp = c.post("/runs", body).await;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("JSON body");
    assert_eq!(status, 400, "refused: {v}");
    v["error"].as_str().expect("error").to_string()
}

/// A controller alone (no workers) whose `[git]` settings allow 127.0.0.1 and add `git`, with
/// neither the user's git config nor an ssh-agent: only what the settings name is used.
async fn lone_controller(name: &str, home: &Path, git: &str) -> Cluster {
    let config = write(
        &home.join("controller.toml"),
        &format!("[git]\nallowed_hosts = [\"127.0.0.1\"]\n{git}"),
    );
    let extra = Extra {
        controller_args: vec!["--config".into(), path_str(&config)],
        controller_env: pairs(&[
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("SSH_AUTH_SOCK", "/nonexistent"),
        ]),
        worker_env: Vec::new(),
    };
    Cluster::start_with(name, 0, Timings::default(), &extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_https_or_local_remote_failure_is_refused_with_its_reason_and_no_retry_storm()
{
    let home = test_dir("remote-failures");
    let good = GitHttps::start(&home.path().join("good"), USER, PASSWORD).await;
    let other_ca = GitHttps::start(&home.path().join("other-ca"), USER, PASSWORD).await;
    let repo = Repo::create(home.path(), "app", 1, "tick", &[]);
    let https_url = good.publish(&repo.path, "app.git");
    let other_ca_url = other_ca.publish(&repo.path, "app.git");
    let wrong_password = "wrong-password-0c41d2";
    let wrong_file = write(&home.path().join("wrong"), wrong_password);
    let git = format!(
        "ca_file = \"{}\"\nretry_backoff_ms = 100\n\n\
         [[git.credentials]]\nhost = \"127.0.0.1:{}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\n",
        good.ca_file.display(),
        good.port,
        wrong_file.display(),
    );
    let c = lone_controller("remote-failures", home.path(), &git).await;
    let retries = || c.controller.log_text().matches("trying again").count();

    let error = refusal(&c, git_run(&https_url, None)).await;
    assert_eq!(
        error,
        format!("cannot fetch 127.0.0.1:{}: authentication failed (check the [[git.credentials]] entry or the git credential helper / ssh key for this host)", good.port)
    );
    assert_eq!(good.refused(), 1, "the wrong password was tried once");

    let error = refusal(&c, git_run(&other_ca_url, None)).await;
    assert!(
        error.ends_with("TLS certificate not trusted (not signed by a CA of git.ca_file or the system, issued for another name, or expired)"),
        "{error}"
    );
    assert_eq!(
        (other_ca.connections(), other_ca.requests()),
        (1, 0),
        "one handshake, no request"
    );
    assert_eq!(retries(), 0, "none of these was tried again");

    let closed = crate::support::free_port();
    let error = refusal(
        &c,
        git_run(&format!("https://127.0.0.1:{closed}/app.git"), None),
    )
    .await;
    assert_eq!(
        error,
        format!("cannot fetch 127.0.0.1:{closed}: unreachable")
    );
    assert_eq!(
        retries(),
        2,
        "a network failure is tried git.network_attempts (3) times"
    );

    let error = refusal(&c, git_run(&repo.url(), Some("no-such-branch"))).await;
    assert_eq!(
        error,
        format!("ref not found in {}: no-such-branch", repo.url())
    );

    let error = refusal(
        &c,
        git_run(&format!("https://localhost:{}/app.git", good.port), None),
    )
    .await;
    assert_eq!(
        error,
        format!(
            "not allowed: host localhost:{} is not allowed here (git.allowed_hosts)",
            good.port
        )
    );
    let error = refusal(&c, git_run("file:///etc", None)).await;
    assert_eq!(
        error,
        "not allowed: local repositories are allowed only inside git.file_roots"
    );
    let error = refusal(
        &c,
        git_run(
            &format!("https://{USER}:{PASSWORD}@127.0.0.1:{}/app.git", good.port),
            None,
        ),
    )
    .await;
    assert!(
        error.contains("holds a password") && !error.contains(PASSWORD),
        "{error}"
    );

    assert_no_secret(&c, None, &[PASSWORD, wrong_password]).await;
}

/// The ssh half of the refusals above (skipped with `LOOPD_SKIP_SSH_TESTS=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_ssh_remote_failure_is_refused_with_its_reason_and_no_retry_storm() {
    let home = test_dir("remote-failures-ssh");
    let Some(keyed) = Sshd::start(&home.path().join("sshd-keyed"), &[]).await else {
        return;
    };
    let Some(unknown) = Sshd::start(&home.path().join("sshd-unknown"), &[]).await else {
        return;
    };
    let repo = Repo::create(home.path(), "app", 1, "tick", &[]);
    let bare = home.path().join("served/app.git");
    crate::support::repo::bare_copy(&repo.path, &bare);
    let wrong_key = home.path().join("wrong_key");
    keygen(&wrong_key, "");
    let known_hosts = keyed.known_hosts("known_hosts");
    let git = format!(
        "known_hosts = \"{}\"\nretry_backoff_ms = 100\n\n\
         [[git.credentials]]\nhost = \"127.0.0.1:{}\"\nssh_key_file = \"{}\"\n\n\
         [[git.credentials]]\nhost = \"127.0.0.1:{}\"\nssh_key_file = \"{}\"\n",
        known_hosts.display(),
        keyed.port,
        wrong_key.display(),
        unknown.port,
        unknown.client_key.display(),
    );
    let c = lone_controller("remote-failures-ssh", home.path(), &git).await;
    let retries = || c.controller.log_text().matches("trying again").count();

    let error = refusal(&c, git_run(&keyed.url(&bare), None)).await;
    assert!(
        error.contains(&format!("127.0.0.1:{}: authentication failed", keyed.port)),
        "{error}"
    );
    assert_eq!(
        keyed.connections(),
        1,
        "the wrong key was tried on one connection"
    );

    let error = refusal(&c, git_run(&unknown.url(&bare), None)).await;
    assert!(error.ends_with("unknown ssh host key (add it to git.known_hosts, or set git.accept_new_host_keys = true)"), "{error}");
    assert_eq!(
        unknown.failed_auths(),
        0,
        "no key was offered to an unknown host"
    );
    assert_eq!(retries(), 0, "none of these was tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_a_credential_fails_the_step_once_and_a_handed_credential_lets_it_clone() {
    let home = test_dir("handed-remote");
    let server = GitHttps::start(home.path(), USER, PASSWORD).await;
    let repo = Repo::create(home.path(), "app", 1, "tick", &[]);
    let url = server.publish(&repo.path, "app.git");
    let password_file = write(&home.path().join("password"), PASSWORD);
    let config = |hand: bool| {
        format!(
            "[git]\nallowed_hosts = [\"127.0.0.1\"]\nca_file = \"{}\"\nworker_credentials = \"{}\"\n\n[[git.credentials]]\nhost = \"127.0.0.1\"\nusername = \"{USER}\"\npassword_file = \"{}\"\n",
            server.ca_file.display(),
            if hand { "from_controller" } else { "own" },
            password_file.display()
        )
    };
    let worker_env = pairs(&[
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("LOOPD__GIT__CA_FILE", &path_str(&server.ca_file)),
    ]);

    let own = write(&home.path().join("own.toml"), &config(false));
    let extra = Extra {
        controller_args: vec!["--config".into(), path_str(&own)],
        controller_env: pairs(&[("GIT_CONFIG_GLOBAL", "/dev/null")]),
        worker_env: worker_env.clone(),
    };
    let c = Cluster::start_with("handed-own", 1, Timings::default(), &extra).await;
    let id = c.submit(git_run(&url, None)).await;
    let run = c.wait_status(&id, "FAILED").await;
    let reason = run["failure_reason"].as_str().expect("failure_reason");
    assert!(
        reason.starts_with(
            "runner_execution_failed:cannot prepare the clone: cannot fetch 127.0.0.1:"
        ) && reason.contains("authentication failed"),
        "{reason}"
    );
    let steps = c.steps(&id).await;
    assert_eq!(steps.len(), 1, "one step, not retried: {steps:#?}");
    assert_eq!(steps[0]["infra_attempts"], 0, "{steps:#?}");
    drop(c);

    let handed = write(&home.path().join("handed.toml"), &config(true));
    let extra = Extra {
        controller_args: vec!["--config".into(), path_str(&handed)],
        ..extra
    };
    let c = Cluster::start_with("handed-from-controller", 1, Timings::default(), &extra).await;
    let id = c.submit(git_run(&url, None)).await;
    c.wait_status(&id, "COMPLETED").await;
    let clone_config = std::fs::read_to_string(
        c.workers[0]
            .data_dir
            .join("work/clones")
            .join(&id)
            .join(".git/config"),
    )
    .expect("the clone's config");
    assert!(
        clone_config.contains(&url) && !clone_config.contains(PASSWORD),
        "{clone_config}"
    );
    assert_no_secret(&c, Some(&id), &[PASSWORD]).await;
}

/// A TCP listener on 127.0.0.1 that accepts connections and never says a word; it counts the
/// connections accepted and those their client closed (read to EOF).
struct Silent {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    fn start() -> Silent {
        use std::io::Read;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (accepted.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Silent {
            port,
            accepted,
            closed,
        }
    }

    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        (
            self.accepted.load(Ordering::SeqCst),
            self.closed.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_and_a_silent_host_fail_with_their_reason() {
    use crate::support::git_https::Expired;
    let home = test_dir("remote-failures-2");
    let expired_server = GitHttps::start_with(
        &home.path().join("expired-server"),
        USER,
        PASSWORD,
        Expired::Server,
    )
    .await;
    let expired_ca =
        GitHttps::start_with(&home.path().join("expired-ca"), USER, PASSWORD, Expired::Ca).await;
    let repo = Repo::create(home.path(), "app", 1, "tick", &[]);
    let server_url = expired_server.publish(&repo.path, "app.git");
    let ca_url = expired_ca.publish(&repo.path, "app.git");
    // Both CAs are trusted: what fails is the dates alone.
    let mut cas = std::fs::read_to_string(&expired_server.ca_file).expect("ca");
    cas.push_str(&std::fs::read_to_string(&expired_ca.ca_file).expect("ca"));
    let ca_file = write(&home.path().join("cas.pem"), &cas);
    let silent = Silent::start();
    let git = format!(
        "ca_file = \"{}\"\ntimeout_sec = 3\nnetwork_attempts = 2\nretry_backoff_ms = 100\n",
        ca_file.display(),
    );
    let c = lone_controller("remote-failures-2", home.path(), &git).await;
    let retries = || c.controller.log_text().matches("trying again").count();

    for server in [&expired_server, &expired_ca] {
        let url = if server.port == expired_server.port {
            &server_url
        } else {
            &ca_url
        };
        let error = refusal(&c, git_run(url, None)).await;
        // git's TLS library says "expired" (OpenSSL, newer GnuTLS builds of curl), or only
        // that verification failed (older GnuTLS builds, as in Debian 12).
        let host = format!("cannot fetch 127.0.0.1:{}: ", server.port);
        let expired = "TLS certificate expired (the server's or its CA's: renew it, or check this machine's clock)";
        let untrusted = "TLS certificate not trusted (not signed by a CA of git.ca_file or the system, issued for another name, or expired)";
        assert!(
            error == format!("{host}{expired}") || error == format!("{host}{untrusted}"),
            "{error}"
        );
        assert_eq!(
            (server.connections(), server.requests()),
            (1, 0),
            "one handshake, no request, not tried again"
        );
    }
    assert_eq!(retries(), 0, "none of these was tried again");

    // A host that accepts and never answers: each attempt is killed at git.timeout_sec, and a
    // time-out is tried again like any network failure.
    let started = std::time::Instant::now();
    let hung = git_run(&format!("https://127.0.0.1:{}/app.git", silent.port), None);
    let error = tokio::time::timeout(std::time::Duration::from_secs(60), refusal(&c, hung))
        .await
        .expect("the hanging git is killed at git.timeout_sec");
    let took = started.elapsed();
    assert_eq!(
        error,
        format!(
            "cannot fetch 127.0.0.1:{}: timed out (git.timeout_sec)",
            silent.port
        )
    );
    assert_eq!(retries(), 1, "git.network_attempts (2) attempts");
    assert!(
        took >= std::time::Duration::from_secs(6) && took < std::time::Duration::from_secs(30),
        "two attempts of 3 s each: {took:?}"
    );
    let counts = &silent;
    crate::support::wait_for(
        "both connections to be closed by the killed git",
        std::time::Duration::from_secs(10),
        || async move { (counts.counts() == (2, 2)).then_some(()) },
    )
    .await;
}

/// The ssh half of the failures above (skipped with `LOOPD_SKIP_SSH_TESTS=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_ssh_host_key_fails_with_its_reason_and_is_offered_no_key() {
    let home = test_dir("remote-failures-2-ssh");
    let Some(sshd) = Sshd::start(&home.path().join("sshd"), &[]).await else {
        return;
    };
    let repo = Repo::create(home.path(), "app", 1, "tick", &[]);
    let bare = home.path().join("served/app.git");
    crate::support::repo::bare_copy(&repo.path, &bare);
    // known_hosts names another key for this server (its key was changed, or someone is in
    // the middle); the client key is the right one.
    let other = home.path().join("other_host_key");
    keygen(&other, "");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
    let other_key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let known_hosts = write(
        &home.path().join("known_hosts"),
        &format!("[127.0.0.1]:{} {}\n", sshd.port, other_key.join(" ")),
    );
    let git = format!(
        "known_hosts = \"{}\"\ntimeout_sec = 3\nnetwork_attempts = 2\nretry_backoff_ms = 100\n\n\
         [[git.credentials]]\nhost = \"127.0.0.1:{}\"\nssh_key_file = \"{}\"\n",
        known_hosts.display(),
        sshd.port,
        sshd.client_key.display(),
    );
    let c = lone_controller("remote-failures-2-ssh", home.path(), &git).await;
    let retries = || c.controller.log_text().matches("trying again").count();

    let error = refusal(&c, git_run(&sshd.url(&bare), None)).await;
    assert_eq!(
        error,
        format!(
            "cannot fetch 127.0.0.1:{}: the ssh host key differs from the one in known_hosts",
            sshd.port
        )
    );
    assert_eq!(sshd.connections(), 1, "refused once, not tried again");
    let sshd_log = std::fs::read_to_string(&sshd.log).unwrap_or_default();
    assert!(
        !sshd_log.contains("Accepted publickey") && sshd.failed_auths() == 0,
        "no key was offered to a host whose key changed"
    );
    assert_eq!(retries(), 0, "it was not tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_merge_and_scrap_of_an_https_run_push_with_the_configured_credential() {
    let (_home, server, url, c) = https_cluster("https-review", "tick", 1).await;
    let id = c.submit(git_run(&url, None)).await;
    let run = c.wait_status(&id, "COMPLETED").await;
    let branch = run["pushed_branch"].as_str().expect("pushed_branch");
    let bare = server.root.join("app.git");
    assert!(git(&bare, &["branch", "--list", branch]).contains(branch));
    let before = server.requests();

    let resp = c
        .http
        .post(c.url(&format!("/runs/{id}/merge")))
        .send()
        .await
        .expect("merge");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("JSON");
    let commit = body["commit"].as_str().expect("commit");
    assert_eq!(git(&bare, &["rev-parse", "main"]).trim(), commit);
    assert_eq!(
        remote_subjects(&bare, "main"),
        ["initial", &format!("Squash merge from {branch}")]
    );
    let resp = c
        .http
        .post(c.url(&format!("/runs/{id}/scrap")))
        .send()
        .await
        .expect("scrap");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(git(&bare, &["branch", "--list", branch]), "", "deleted");
    assert!(
        server.requests() > before,
        "the review talked to the https remote"
    );
    assert_eq!(server.refused(), 0, "its credential was the right one");

    assert_no_secret(&c, Some(&id), &[PASSWORD]).await;
    let mut configs = String::new();
    for entry in std::fs::read_dir(c.controller.data_dir.join("mirrors")).expect("mirrors") {
        let config = entry.expect("entry").path().join("config");
        configs.push_str(&std::fs::read_to_string(config).unwrap_or_default());
    }
    assert!(configs.contains(&url), "{configs}");
    assert!(
        !configs.contains(PASSWORD),
        "no secret in the mirror's config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_pr_of_an_https_run_names_its_repository_to_gh() {
    let ghdir = test_dir("https-pr-gh");
    let bin = crate::git_review::stand_in_gh(ghdir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (_home, server, url, c) =
        https_cluster_with("https-pr", "tick", 1, "octo/app.git", &[("PATH", &path)]).await;
    let id = c.submit(git_run(&url, None)).await;
    c.wait_status(&id, "COMPLETED").await;
    let resp = c
        .http
        .post(c.url(&format!("/runs/{id}/create-pr")))
        .send()
        .await
        .expect("create-pr");
    assert_eq!(resp.status().as_u16(), 200);
    let args = std::fs::read_to_string(bin.join("gh-args.txt")).expect("gh ran");
    let args: Vec<&str> = args.lines().collect();
    // gh gets the run's repository from its URL, not from the mirror's remotes (the port is
    // the web's here, but an ssh URL's would not be).
    assert_eq!(
        args[..4],
        ["pr", "create", "--repo", "127.0.0.1/octo/app"],
        "{url}"
    );
    assert_eq!(server.refused(), 0);
}

#[test]
fn a_missing_sshd_fails_the_ssh_tests_unless_they_are_skipped() {
    let missing = std::path::Path::new("/nonexistent/sbin/sshd");
    let error = ssh_tests_run(missing, None).expect_err("a missing sshd is a failure");
    assert!(
        error.contains("apt-get install openssh-server") && error.contains(SKIP_VAR),
        "{error}"
    );
    assert!(ssh_tests_run(missing, Some("0")).is_err(), "only 1 skips");
    assert_eq!(ssh_tests_run(missing, Some("1")), Ok(false), "skipped");
    let present = std::env::current_exe().expect("an existing file");
    assert_eq!(ssh_tests_run(&present, None), Ok(true));
    assert_eq!(ssh_tests_run(&present, Some("1")), Ok(false));
}
