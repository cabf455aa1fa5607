//! A stand-in for the model API, on `127.0.0.1:<port>` inside the test (or bench) process: it
//! admits at most N concurrent calls and answers 429 (`rate_limit_error`) beyond them, can be
//! scripted to answer 529 (`overloaded_error`) for a window of time and to report the
//! account's usage limit until a reset time, and counts what it did. Each admitted call is held
//! for a fixed time (the model "thinking") and answers the usage and cost the stub agent
//! reports. The stub agent is `tests/fixtures/fake-agent.sh provider <url>` (see
//! [`Provider::agent_cmd`]): it calls `POST <url>/v1/messages` once and prints what Claude
//! Code prints for the answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Tokens an admitted call reports, of each kind.
pub const INPUT_TOKENS: u64 = 200;
pub const OUTPUT_TOKENS: u64 = 40;
pub const CACHE_CREATION_TOKENS: u64 = 5;
pub const CACHE_READ_TOKENS: u64 = 700;

/// What the provider did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Every call.
    pub calls: u64,
    /// Calls admitted and answered 200.
    pub accepted: u64,
    /// Calls beyond the concurrency limit, answered 429.
    pub rate_limited: u64,
    /// Calls inside an overload window, answered 529.
    pub overloaded: u64,
    /// Calls during a usage limit, answered 429 with the reset time.
    pub usage_limited: u64,
    /// The most calls admitted at once.
    pub peak: usize,
}

impl Counts {
    /// Calls answered with an error.
    pub fn rejected(&self) -> u64 {
        self.rate_limited + self.overloaded + self.usage_limited
    }
}

#[derive(Default)]
struct Script {
    /// 529 for calls arriving in [start, end).
    overloaded: Vec<(Instant, Instant)>,
    /// The usage limit is reached until this Unix time (seconds).
    usage_limit_until: Option<i64>,
}

struct State {
    max_concurrent: usize,
    call: Duration,
    cost_usd: f64,
    in_flight: AtomicUsize,
    /// Slots the test occupies itself (see [`Provider::occupy`]).
    occupied: AtomicUsize,
    peak: AtomicUsize,
    calls: AtomicU64,
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    overloaded: AtomicU64,
    usage_limited: AtomicU64,
    script: Mutex<Script>,
}

/// A running stand-in provider; dropped = stopped.
pub struct Provider {
    url: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

/// Slots of the provider the test holds (as if other agents were calling); freed on drop.
pub struct Occupied {
    state: Arc<State>,
    n: usize,
}

impl Drop for Occupied {
    fn drop(&mut self) {
        self.state.occupied.fetch_sub(self.n, Ordering::SeqCst);
    }
}

impl Provider {
    /// Starts a provider admitting `max_concurrent` calls at once, each held for `call`, each
    /// admitted call costing `cost_usd`.
    pub async fn start(max_concurrent: usize, call: Duration, cost_usd: f64) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the provider");
        let addr = listener.local_addr().expect("provider address");
        let state = Arc::new(State {
            max_concurrent,
            call,
            cost_usd,
            in_flight: AtomicUsize::new(0),
            occupied: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            usage_limited: AtomicU64::new(0),
            script: Mutex::new(Script::default()),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Provider {
            url: format!("http://{addr}"),
            state,
            task,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `agent_cmd` of a run whose agent is the stub calling this provider.
    pub fn agent_cmd(&self) -> String {
        format!("sh {} provider {}", super::fake_agent(), self.url)
    }

    /// Answers 529 to the calls that arrive from `start` for `length`.
    pub fn overload(&self, start: Instant, length: Duration) {
        self.script().overloaded.push((start, start + length));
    }

    /// Answers 529 from now until [`Provider::end_overload`].
    pub fn overload_now(&self) {
        let now = Instant::now();
        self.overload(now, Duration::from_secs(365 * 24 * 3600));
    }

    /// Ends every overload window now.
    pub fn end_overload(&self) {
        let now = Instant::now();
        for w in &mut self.script().overloaded {
            w.1 = w.1.min(now);
        }
    }

    /// Reports the usage limit reached, resetting at Unix time `reset_secs`, until then.
    pub fn usage_limit_until(&self, reset_secs: i64) {
        self.script().usage_limit_until = Some(reset_secs);
    }

    /// Holds `n` of the provider's slots until the returned value is dropped.
    pub fn occupy(&self, n: usize) -> Occupied {
        self.state.occupied.fetch_add(n, Ordering::SeqCst);
        Occupied {
            state: self.state.clone(),
            n,
        }
    }

    pub fn counts(&self) -> Counts {
        let s = &self.state;
        Counts {
            calls: s.calls.load(Ordering::SeqCst),
            accepted: s.accepted.load(Ordering::SeqCst),
            rate_limited: s.rate_limited.load(Ordering::SeqCst),
            overloaded: s.overloaded.load(Ordering::SeqCst),
            usage_limited: s.usage_limited.load(Ordering::SeqCst),
            peak: s.peak.load(Ordering::SeqCst),
        }
    }

    /// Dollars every admitted call reports.
    pub fn cost_usd(&self) -> f64 {
        self.state.cost_usd
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.state.script.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The API's error body of `kind` (as the Messages API answers it).
fn error(kind: &str, message: &str) -> String {
    format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#)
}

/// A call in flight, counted out when it ends (also when the client hangs up).
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(s: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/v1/messages" {
        return json(404, error("not_found_error", "Not found"));
    }
    s.calls.fetch_add(1, Ordering::SeqCst);
    let now = Instant::now();
    let (overloaded, usage_limit) = {
        let script = s.script.lock().unwrap_or_else(|e| e.into_inner());
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        (
            script.overloaded.iter().any(|(a, b)| *a <= now && now < *b),
            script.usage_limit_until.filter(|reset| unix < *reset),
        )
    };
    if let Some(reset) = usage_limit {
        s.usage_limited.fetch_add(1, Ordering::SeqCst);
        return json(
            429,
            format!(
                r#"{{"type":"error","error":{{"type":"usage_limit_error","message":"usage limit reached","resets_at":{reset}}}}}"#
            ),
        );
    }
    if overloaded {
        s.overloaded.fetch_add(1, Ordering::SeqCst);
        return json(529, error("overloaded_error", "Overloaded"));
    }
    // Admitted only while a slot is free (rejected calls never take one).
    let occupied = s.occupied.load(Ordering::SeqCst);
    let taken = s
        .in_flight
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n + occupied < s.max_concurrent).then_some(n + 1)
        });
    let Ok(before) = taken else {
        s.rate_limited.fetch_add(1, Ordering::SeqCst);
        return json(
            429,
            error(
                "rate_limit_error",
                "Number of concurrent connections has exceeded your rate limit. Please try again later.",
            ),
        );
    };
    let admitted = before + 1;
    let _guard = InFlight(s);
    s.peak.fetch_max(admitted, Ordering::SeqCst);
    tokio::time::sleep(s.call).await;
    s.accepted.fetch_add(1, Ordering::SeqCst);
    json(
        200,
        format!(
            r#"{{"total_cost_usd":{},"usage":{{"input_tokens":{INPUT_TOKENS},"cache_creation_input_tokens":{CACHE_CREATION_TOKENS},"cache_read_input_tokens":{CACHE_READ_TOKENS},"output_tokens":{OUTPUT_TOKENS}}}}}"#,
            s.cost_usd
        ),
    )
}
