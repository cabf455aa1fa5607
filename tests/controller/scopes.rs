//! The auth matrix of a controller: every route of both APIs × every kind of token (none, a
//! wrong one, the join token, a worker's token, and client tokens with the scopes read,
//! submit, admin, and submit+exec). A client route answers 401 to anything but a client
//! token and 403 `forbidden` to one without its scope; a worker route takes only a worker
//! token (the join token for registration). No refused request changes a row. A run request
//! that names commands or paths needs the `exec` scope, in every form it can take.

use crate::harness::{answer, refused, Answer, Ctl, Worker, CLIENT};
use crate::support::pool::JOIN;
use crate::support::repo::Repo;
use reqwest::Method;
use serde_json::{json, Value};

const READ: &str = "dashboard-read-token-01";
const SUBMIT: &str = "ci-submit-token-000001";
const ADMIN: &str = "ops-admin-token-000001";
const EXEC: &str = "trusted-exec-token-0001";

fn tokens_toml() -> String {
    format!(
        "[[auth.tokens]]\nname = \"dashboard\"\ntoken = \"{READ}\"\nscopes = [\"read\"]\n\
         [[auth.tokens]]\nname = \"ci\"\ntoken = \"{SUBMIT}\"\nscopes = [\"submit\"]\n\
         [[auth.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nscopes = [\"admin\"]\n\
         [[auth.tokens]]\nname = \"trusted\"\ntoken = \"{EXEC}\"\nscopes = [\"submit\", \"exec\"]\n"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Wrong,
    Join,
    WorkerToken,
    Read,
    Submit,
    Admin,
    Exec,
    /// The unnamed `auth.token`: read, submit and admin.
    Unnamed,
}

const KINDS: [Kind; 9] = [
    Kind::None,
    Kind::Wrong,
    Kind::Join,
    Kind::WorkerToken,
    Kind::Read,
    Kind::Submit,
    Kind::Admin,
    Kind::Exec,
    Kind::Unnamed,
];

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Submit,
    Admin,
    /// A worker token (of the path's worker, for `/workers/{id}/…`).
    Worker,
    /// The join token.
    Join,
}

/// What `kind` gets from a route that needs `need`: `None` = let through (the handler
/// answers), `Some((status, code))` = refused by authentication.
fn expected(kind: Kind, need: Need) -> Option<(u16, &'static str)> {
    let unauthorized = Some((401, "unauthorized"));
    let forbidden = Some((403, "forbidden"));
    let client = |ok: bool| if ok { None } else { forbidden };
    match (need, kind) {
        (Need::Join, Kind::Join) | (Need::Worker, Kind::WorkerToken) => None,
        (Need::Join | Need::Worker, _) => unauthorized,
        (_, Kind::None | Kind::Wrong | Kind::Join | Kind::WorkerToken) => unauthorized,
        (Need::Read, _) => None,
        (Need::Submit, k) => client(k != Kind::Read),
        (Need::Admin, k) => client(matches!(k, Kind::Admin | Kind::Unnamed)),
    }
}

struct Live {
    run: String,
    worker: Worker,
    step: String,
    epoch: i64,
}

fn header(kind: Kind, live: &Live) -> Option<String> {
    let t = match kind {
        Kind::None => return None,
        Kind::Wrong => "not-a-token-of-this-controller",
        Kind::Join => JOIN,
        Kind::WorkerToken => &live.worker.token,
        Kind::Read => READ,
        Kind::Submit => SUBMIT,
        Kind::Admin => ADMIN,
        Kind::Exec => EXEC,
        Kind::Unnamed => CLIENT,
    };
    Some(format!("Bearer {t}"))
}

/// Every route with the ids it is called with when the caller may be refused (the live
/// run, step and worker) and when it is let through (ids that name nothing, so that a
/// request that passes authentication changes nothing either), and a body.
fn routes(l: &Live) -> Vec<(Method, String, String, Need, Value)> {
    let (r, s, w, e) = (&l.run, &l.step, &l.worker.id, l.epoch);
    let none = "00000000-0000-7000-8000-000000000000";
    let mut v = vec![
        (
            Method::GET,
            "/runs".into(),
            "/runs".into(),
            Need::Read,
            Value::Null,
        ),
        (
            Method::POST,
            "/runs".into(),
            "/runs".into(),
            Need::Submit,
            json!({}),
        ),
        (
            Method::GET,
            "/workers".into(),
            "/workers".into(),
            Need::Read,
            Value::Null,
        ),
        (
            Method::GET,
            "/worktrees?workspace=/no/such/dir".into(),
            "/worktrees?workspace=/no/such/dir".into(),
            Need::Read,
            Value::Null,
        ),
        (
            Method::DELETE,
            "/worktrees?workspace=/no/such/dir&path=/no/such/dir/x".into(),
            "/worktrees?workspace=/no/such/dir&path=/no/such/dir/x".into(),
            Need::Submit,
            Value::Null,
        ),
        (
            Method::DELETE,
            format!("/workers/{w}"),
            format!("/workers/{none}"),
            Need::Admin,
            Value::Null,
        ),
        (
            Method::POST,
            "/workers/register".into(),
            "/workers/register".into(),
            Need::Join,
            json!({}),
        ),
    ];
    for p in [
        "",
        "/steps",
        "/events",
        "/output",
        "/artifacts",
        "/artifacts/report.tsv",
        "/diff",
    ] {
        v.push((
            Method::GET,
            format!("/runs/{r}{p}"),
            format!("/runs/{none}{p}"),
            Need::Read,
            Value::Null,
        ));
    }
    for verb in [
        "pause",
        "resume",
        "cancel",
        "retry",
        "scrap",
        "merge",
        "create-pr",
        "reset",
    ] {
        v.push((
            Method::POST,
            format!("/runs/{r}/{verb}"),
            format!("/runs/{none}/{verb}"),
            Need::Submit,
            Value::Null,
        ));
    }
    for verb in ["heartbeat", "claim"] {
        // Let through with a body that does not parse: nothing is renewed or claimed.
        v.push((
            Method::POST,
            format!("/workers/{w}/{verb}"),
            format!("/workers/{w}/{verb}"),
            Need::Worker,
            json!([]),
        ));
    }
    for (verb, body) in [
        ("output", json!({"epoch": e, "offset": 0, "content": "x"})),
        (
            "events",
            json!({"epoch": e, "event_type": "NOTE", "payload": {}}),
        ),
        (
            "complete",
            json!({"epoch": e, "status": "succeeded", "exit_code": 0}),
        ),
        ("release", json!({"epoch": e})),
    ] {
        v.push((
            Method::POST,
            format!("/steps/{s}/{verb}"),
            format!("/steps/{none}/{verb}"),
            Need::Worker,
            body,
        ));
    }
    for m in [Method::PUT, Method::GET] {
        v.push((
            m,
            format!("/steps/{s}/artifacts/a.txt?epoch={e}"),
            format!("/steps/{none}/artifacts/a.txt?epoch={e}"),
            Need::Worker,
            Value::Null,
        ));
    }
    v
}

/// One request; worker routes get the worker's instance header (it registered with one).
async fn call(
    c: &Ctl,
    m: &Method,
    path: &str,
    auth: Option<&str>,
    body: &Value,
    l: &Live,
) -> Answer {
    let mut req = c.bare.request(m.clone(), c.url(path));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if !body.is_null() {
        req = req.json(body);
    } else if *m == Method::PUT {
        req = req.body("artifact bytes");
    }
    if let Some(i) = &l.worker.instance {
        req = req.header("X-Loopd-Instance", i);
    }
    answer(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_every_token_kind_it_should_and_nothing_changes() {
    // The worker here does not heartbeat: its lease must outlive a slow machine.
    let quiet = [
        ("LOOPD__LEASE__TTL_MS", "600000"),
        ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
    ];
    let c = Ctl::start_with_file("scopes", &tokens_toml(), &quiet).await;
    let worker = c.worker("matrix", &[]).await;
    let run = c.submit("ws", 2, &[]).await;
    let (lease, _) = worker.take().await;
    let live = Live {
        run,
        step: lease.step.clone(),
        epoch: lease.epoch,
        worker,
    };
    let before = c.snapshot();
    let mut checked = 0;
    for (method, refused_path, through_path, need, body) in routes(&live) {
        for kind in KINDS {
            let auth = header(kind, &live);
            match expected(kind, need) {
                Some((status, code)) => {
                    let a = call(&c, &method, &refused_path, auth.as_deref(), &body, &live).await;
                    assert!(
                        a.0 == status && a.1["code"] == code,
                        "{method} {refused_path} with {kind:?}: expected {status} {code}, got {a:?}"
                    );
                }
                None => {
                    let a = call(&c, &method, &through_path, auth.as_deref(), &body, &live).await;
                    assert!(
                        a.0 != 401 && a.0 != 403,
                        "{method} {through_path} with {kind:?} was refused: {a:?}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 200, "only {checked} cases");
    assert_eq!(
        c.snapshot(),
        before,
        "a refused request changed the database"
    );
    // The worker route that checks the path's worker: another worker's id is 403.
    let other = c.worker("other", &[]).await;
    let a = other
        .post(
            &format!("/workers/{}/heartbeat", live.worker.id),
            json!({"status": "idle"}),
        )
        .await;
    refused(&a, 403, "forbidden");
    // Open routes need nothing.
    for path in ["/health", "/ready", "/metrics"] {
        let a = answer(c.bare.get(c.url(path))).await;
        assert_eq!(a.0, 200, "{path}");
    }
}

/// A run request body over a fresh repository, with `extra` fields.
fn run_body(c: &Ctl, name: &str, extra: Value) -> Value {
    let repo = Repo::create(c.dir.path(), name, 1, "tick", &[]);
    let mut body = json!({"spec_path": "specs/demo.md", "plan_path": "PLAN.md",
                          "workspace_root": repo.path, "name": name});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    body
}

async fn submit_as(c: &Ctl, token: &str, body: &Value) -> Answer {
    answer(c.bare.post(c.url("/runs")).bearer_auth(token).json(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_overrides_need_the_exec_scope_in_every_form() {
    let c = Ctl::start_with_file("exec-scope", &tokens_toml(), &[]).await;
    let agent = format!("sh {} tick", crate::support::fake_agent());
    let forms = [
        json!({"config_override": {"agent_cmd": agent}}),
        json!({"config_override": format!("reviewer=false\nagent_cmd={agent}\n")}),
        json!({"config_override": json!({"verify_cmds": ["id > /tmp/pwned"]}).to_string()}),
        json!({"config_override": {"prompt_file": "/etc/passwd"}}),
        json!({"config_override": {"context_files": "/etc/shadow"}}),
        json!({"config_override": {"specs_dir": "/etc"}}),
        json!({"worktree_path_template": "/tmp/elsewhere"}),
    ];
    let before = c.snapshot();
    for (i, form) in forms.iter().enumerate() {
        let body = run_body(&c, &format!("f{i}"), form.clone());
        // Without exec: submit, admin and the unnamed token alike (exec is never implied).
        for token in [SUBMIT, ADMIN, CLIENT] {
            let a = submit_as(&c, token, &body).await;
            refused(&a, 403, "forbidden");
            assert!(
                a.1["error"]
                    .as_str()
                    .is_some_and(|m| m.contains("exec") && m.contains(".loop/config")),
                "{a:?}"
            );
        }
        // A read token does not even get that far.
        refused(&submit_as(&c, READ, &body).await, 403, "forbidden");
    }
    assert_eq!(
        c.snapshot(),
        before,
        "a refused run request stored something"
    );
    // Plain overrides need no exec; command overrides with exec are taken.
    let plain = run_body(&c, "plain", json!({"config_override": {"reviewer": false}}));
    assert_eq!(submit_as(&c, SUBMIT, &plain).await.0, 201);
    let body = run_body(&c, "exec", forms[0].clone());
    let (status, v) = submit_as(&c, EXEC, &body).await;
    assert_eq!(status, 201, "{v}");
    let config: Value =
        serde_json::from_str(v["run"]["config_json"].as_str().expect("config_json")).expect("JSON");
    assert_eq!(config["agent_cmd"], agent.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_may_allow_command_overrides_for_every_submit_token() {
    let c = Ctl::start_with_file(
        "exec-allowed",
        &tokens_toml(),
        &[("LOOPD__AUTH__ALLOW_REQUEST_COMMANDS", "true")],
    )
    .await;
    let body = run_body(
        &c,
        "ws",
        json!({"config_override": {"verify_cmds": "true"}}),
    );
    let (status, v) = submit_as(&c, SUBMIT, &body).await;
    assert_eq!(status, 201, "{v}");
    // Still only for tokens that may submit.
    let body = run_body(
        &c,
        "ws2",
        json!({"config_override": {"verify_cmds": "true"}}),
    );
    refused(&submit_as(&c, READ, &body).await, 403, "forbidden");
}
