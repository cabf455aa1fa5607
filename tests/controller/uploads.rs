//! Artifact uploads through the controller are checked before their body is read: the
//! declared size (413), the uploader's lease (409/403), and how many uploads the worker has
//! in flight (429). A refused upload stores nothing, and the controller stops taking its
//! bytes as soon as it has answered.

use crate::harness::{answer, refused, Ctl};
use crate::support::wait_for;
use reqwest::Method;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// The test's workers do not heartbeat: their leases must outlive a slow machine.
const QUIET: [(&str, &str); 2] = [
    ("LOOPD__LEASE__TTL_MS", "600000"),
    ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
];

/// A body of `total` bytes in 64 KiB chunks that counts how many bytes the client was asked
/// for, i.e. how much the server took before it answered.
fn counted_body(total: usize, pulled: Arc<AtomicUsize>) -> reqwest::Body {
    let chunk = vec![b'x'; 64 << 10];
    let n = total / chunk.len();
    let stream = futures_util::stream::iter((0..n).map(move |_| {
        pulled.fetch_add(64 << 10, Ordering::SeqCst);
        Ok::<_, std::io::Error>(chunk.clone())
    }));
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_answered_before_its_body_is_read_and_stores_nothing() {
    let cap = 128 * MIB;
    let cap_s = cap.to_string();
    let c = Ctl::start(
        "upload-early",
        &[
            ("LOOPD__LIMITS__ARTIFACT_BYTES", &cap_s),
            QUIET[0],
            QUIET[1],
        ],
    )
    .await;
    let a = c.worker("a", &[]).await;
    let b = c.worker("b", &[]).await;
    c.submit("ws", 1, &[]).await;
    let (lease, _) = a.take().await;
    let before = c.snapshot();
    let at = |epoch: i64| format!("/steps/{}/artifacts/big.bin?epoch={epoch}", lease.step);
    let (held, stale) = (at(lease.epoch), at(lease.epoch - 1));
    // (who, worker, path, body size, expected status, code)
    for (who, w, path, size, status, code) in [
        (
            "the holder, over the cap",
            &a,
            &held,
            2 * cap,
            413,
            "payload_too_large",
        ),
        (
            "another worker, under the cap",
            &b,
            &held,
            cap - MIB,
            403,
            "forbidden",
        ),
        (
            "a stale epoch, under the cap",
            &a,
            &stale,
            cap - MIB,
            409,
            "stale_lease",
        ),
    ] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let req = w
            .req(Method::PUT, path)
            .header("Content-Length", size.to_string())
            .body(counted_body(size, pulled.clone()));
        let got = answer(req).await;
        refused(&got, status, code);
        // Socket buffers take a few MiB whatever the server does; a read body is all of it.
        let taken = pulled.load(Ordering::SeqCst);
        assert!(
            taken < 32 * MIB,
            "{who}: the client was made to send {taken} of {size} bytes"
        );
    }
    assert_eq!(
        c.snapshot(),
        before,
        "a refused upload changed the database"
    );
    // The holder's upload under the cap is taken.
    assert_eq!(a.artifact(&lease, "ok.txt", b"fine").await.0, 201);
    assert_eq!(c.snapshot()[3].0, before[3].0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_uploads_in_flight_gets_429_until_one_ends() {
    let c = Ctl::start(
        "upload-cap",
        &[
            ("LOOPD__LIMITS__ARTIFACT_UPLOADS_PER_WORKER", "1"),
            QUIET[0],
            QUIET[1],
        ],
    )
    .await;
    let a = c.worker("a", &[]).await;
    let b = c.worker("b", &[]).await;
    c.submit("ws", 1, &[]).await;
    let (lease, _) = a.take().await;
    // The slow upload sends one chunk and then waits for the test. Probes name no step:
    // they get 429 (no place left) or 404 (a place, then no such step). A probe that takes
    // the place just before the slow upload arrives makes the slow one the 429: start it
    // again then.
    let none = "00000000-0000-7000-8000-000000000000";
    let probe = format!("/steps/{none}/artifacts/p.txt?epoch=1");
    let path = format!(
        "/steps/{}/artifacts/slow.txt?epoch={}",
        lease.step, lease.epoch
    );
    let (tx, slow, got) = wait_for(
        "a slow upload to hold the worker's only place",
        Duration::from_secs(30),
        || async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
            tx.send(Ok(b"first half ".to_vec())).await.expect("send");
            let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
            let slow = tokio::spawn(answer(a.req(Method::PUT, &path).body(body)));
            // Bounded: the outer deadline is only looked at between attempts.
            for _ in 0..400 {
                let r = answer(a.req(Method::PUT, &probe).body("p")).await;
                if r.0 == 429 {
                    return Some((tx, slow, r));
                }
                if slow.is_finished() {
                    let (status, _) = slow.await.expect("upload task");
                    assert_eq!(status, 429, "the slow upload lost its place to a probe");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the slow upload neither held the place nor was refused");
        },
    )
    .await;
    refused(&got, 429, "too_many_uploads");
    // Another worker has its own places.
    refused(
        &answer(b.req(Method::PUT, &probe).body("p")).await,
        404,
        "not_found",
    );
    tx.send(Ok(b"second half".to_vec())).await.expect("send");
    drop(tx);
    let (status, v) = slow.await.expect("upload task");
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["size"], 22);
    refused(
        &answer(a.req(Method::PUT, &probe).body("p")).await,
        404,
        "not_found",
    );
}

/// An mpsc receiver as a stream (without pulling in tokio-stream).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
