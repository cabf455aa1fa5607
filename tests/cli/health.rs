//! `loopd health`: exit 0 when the daemon answers `/ready` with 200, else one error line that
//! says why (nothing listening, the daemon not ready and its reason, a bad address). Several
//! addresses: a line for each, and exit 0 only when all are ready.

use crate::support::pg::TestDb;
use crate::support::pool::{controller_env, refs};
use crate::support::proc::Loopd;
use crate::support::{self, test_dir, wait_for};
use crate::{client, Env};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_for_a_ready_daemon_and_names_one_that_is_not_running() {
    let env = Env::start("cli-health", &[]).await;
    let url = env.daemon.url();
    // The address from --addr, and from LOOPD_ADDR (which `client` sets).
    let out = client(
        "http://127.0.0.1:9",
        env.dir.path(),
        &["health", "--addr", &url],
        &[],
    )
    .await;
    assert_eq!(out.ok().trim(), "ready");
    let out = env.client(env.dir.path(), &["health"]).await;
    assert_eq!(out.ok().trim(), "ready");

    let down = format!("http://127.0.0.1:{}", support::free_port());
    let line = client(&down, env.dir.path(), &["health"], &[])
        .await
        .error_line();
    assert_eq!(line, format!("error: daemon not running at {down}"));

    // Several controllers: each is asked and reported; all must be ready.
    let both = format!("{url},{url}/");
    let out = client(&both, env.dir.path(), &["health"], &[]).await;
    assert_eq!(out.ok(), format!("ready at {url}\nready at {url}\n"));
    let out = client(&format!("{down},{url}"), env.dir.path(), &["health"], &[]).await;
    assert_eq!(
        out.stdout,
        format!("daemon not running at {down}\nready at {url}\n")
    );
    assert_eq!(
        out.error_line(),
        "error: 1 of 2 addresses not ready (see above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_with_the_reason_when_the_controllers_database_is_gone() {
    let dir = test_dir("cli-health-pg");
    let db = TestDb::create();
    let env = controller_env(&db.url, &[]);
    let controller = Loopd::spawn(
        &dir.path().join("c"),
        &["--role", "controller"],
        &refs(&env),
    );
    controller.wait_ready("/ready").await;
    let url = controller.url();
    let out = client(&url, dir.path(), &["health"], &[]).await;
    assert_eq!(out.ok().trim(), "ready");

    drop(db); // DROP DATABASE … WITH (FORCE): the controller is up but cannot answer
    let line = wait_for("health to fail", Duration::from_secs(30), || async {
        let out = client(&url, dir.path(), &["health"], &[]).await;
        (out.code != Some(0)).then(|| out.error_line())
    })
    .await;
    assert_eq!(
        line,
        format!("error: not ready at {url}: the database does not answer (HTTP 503)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_refuses_an_address_that_is_not_an_http_url() {
    let dir = test_dir("cli-health-bad");
    for addr in ["nonsense", "ftp://127.0.0.1:7700"] {
        let line = client(addr, dir.path(), &["health"], &[])
            .await
            .error_line();
        assert!(
            line.starts_with(&format!("error: invalid --addr {addr}: ")),
            "{line}"
        );
    }
}
