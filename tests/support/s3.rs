//! An S3 server inside the test process: `s3s-fs` over a temp directory, on `127.0.0.1:<port>`,
//! SigV4 enforced with a fixed test key pair. It can be stopped (listener closed and every
//! open connection cut, like a crash) and restarted on the same port, so tests can take the
//! store away in the middle of an upload. Dropped = stopped and its directory removed.
//!
//! Include it from any integration test binary with
//! `#[path = "../support/s3.rs"] mod s3;` and start it with `s3::S3Server::start().await`.

#![allow(dead_code)] // each test binary uses a different part of it

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use loopd::settings::{ArtifactSettings, ArtifactStoreType, Secret};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The only access key the server accepts.
pub const ACCESS_KEY: &str = "LOOPDTESTACCESSKEY01";
/// Its secret.
pub const SECRET_KEY: &str = "loopd-test-secret-key-do-not-log-0123456";
/// The bucket that exists from the start.
pub const BUCKET: &str = "loopd-test";
/// Any region works (s3s does not check it); opendal needs one.
pub const REGION: &str = "us-east-1";

/// A running (or stopped) in-process S3 server.
pub struct S3Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    service: S3Service,
    running: Option<Running>,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl S3Server {
    /// Starts a server on a free port with the bucket [`BUCKET`] already created.
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir for the S3 server");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket directory");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs over the temp dir");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = bind("127.0.0.1:0".parse().expect("address")).await;
        let addr = listener.local_addr().expect("local address");
        let running = Some(serve(listener, service.clone()));
        S3Server {
            dir,
            addr,
            service,
            running,
        }
    }

    /// `http://127.0.0.1:<port>` (the same across restarts).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The server's whole directory: buckets, plus s3s-fs' own files (`.upload-<id>.json`
    /// while a multipart upload is open).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The directory holding the bucket's objects: object `k` is the file `bucket_dir()/k`.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join(BUCKET)
    }

    /// Settings for an `s3` artifact store on this server: no prefix, and quick retries
    /// (3 attempts, 20 ms base backoff) so failure tests finish fast. Adjust fields freely.
    pub fn settings(&self) -> ArtifactSettings {
        ArtifactSettings {
            kind: ArtifactStoreType::S3,
            root: None,
            bucket: Some(BUCKET.into()),
            endpoint: Some(self.endpoint()),
            region: REGION.into(),
            prefix: String::new(),
            access_key_id: Some(Secret::new(ACCESS_KEY)),
            secret_access_key: Some(Secret::new(SECRET_KEY)),
            upload_attempts: 3,
            retry_backoff_ms: 20,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the listener and cuts every open connection; returns once the port is closed.
    /// Requests in flight fail as if the server had crashed. Stopping twice is fine.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// Starts serving again on the same port, with the same objects.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = bind(self.addr).await;
        self.running = Some(serve(listener, self.service.clone()));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            // Aborting drops the accept loop, its listener and its set of connection tasks.
            running.task.abort();
        }
    }
}

/// Binds with SO_REUSEADDR so a restart can take the port back while old connections of the
/// stopped server linger in TIME_WAIT.
async fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind S3 test server to {addr}: {e}"));
    socket.listen(128).expect("listen")
}

fn serve(listener: TcpListener, service: S3Service) -> Running {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { continue };
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    conns.spawn(async move {
                        let _ = conn.await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        // Abort, not drain: a stopped server must look dead to clients mid-request.
        conns.shutdown().await;
    });
    Running { stop, task }
}
