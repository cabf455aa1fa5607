//! A smart-HTTP git server over TLS inside the test process: git's own `git-http-backend`
//! run as CGI for each request behind a small hyper + rustls server on `127.0.0.1:<port>`, with
//! a CA made for this server alone (its PEM is written to `ca.pem` in the server's
//! directory), and basic auth for one user. Pushes are allowed to the authenticated user.
//! It counts requests and refused ones, so tests can tell a retry storm from one attempt.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// A running HTTPS git server; stopped when dropped.
pub struct GitHttps {
    pub port: u16,
    /// Bare repositories served as `https://127.0.0.1:<port>/<name>`.
    pub root: PathBuf,
    /// The PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    refused: AtomicUsize,
}

struct Config {
    root: PathBuf,
    home: PathBuf,
    authorization: String,
    user: String,
    counts: Arc<Counts>,
}

/// Which of the server's certificates is out of date, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    No,
    /// The CA's validity ended in 2001.
    Ca,
    /// The server's certificate's validity ended in 2001.
    Server,
}

/// A CA (its PEM) and a certificate it signed for 127.0.0.1 and localhost (cert PEM, key PEM).
pub fn make_ca_and_server_cert(expired: Expired) -> (String, String, String) {
    let past = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "loopd test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if expired == Expired::Ca {
        past(&mut ca);
    }
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    leaf.use_authority_key_identifier_extension = true;
    if expired == Expired::Server {
        past(&mut leaf);
    }
    let key = KeyPair::generate().expect("server key");
    let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

impl GitHttps {
    /// Starts a server for repositories under `dir/repos`, accepting `user` / `password`.
    pub async fn start(dir: &Path, user: &str, password: &str) -> GitHttps {
        Self::start_with(dir, user, password, Expired::No).await
    }

    /// [`GitHttps::start`] with a CA or server certificate that has `expired`.
    pub async fn start_with(dir: &Path, user: &str, password: &str, expired: Expired) -> GitHttps {
        let root = dir.join("repos");
        std::fs::create_dir_all(&root).expect("repos dir");
        let (ca_pem, cert_pem, key_pem) = make_ca_and_server_cert(expired);
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("ca.pem");
        let tls = tls_config(&cert_pem, &key_pem);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(Counts::default());
        let cfg = Arc::new(Config {
            root: root.clone(),
            home: dir.to_path_buf(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            user: user.to_string(),
            counts: counts.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, tls, cfg));
        GitHttps {
            port,
            root,
            ca_file,
            counts,
            task,
        }
    }

    /// Serves the repository at `source` (any git repository) as `<name>`, a bare copy.
    pub fn publish(&self, source: &Path, name: &str) -> String {
        let target = self.root.join(name);
        let out = std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(source)
            .arg(&target)
            .output()
            .expect("git clone --bare");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// TCP connections accepted so far (a client that distrusts the CA makes no request).
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// Requests served so far (every answer counts, refused ones too).
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Requests answered 401 because their credentials were wrong (not merely absent).
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttps {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem")];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key pem");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    Arc::new(config)
}

async fn accept_loop(listener: TcpListener, tls: Arc<rustls::ServerConfig>, cfg: Arc<Config>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        cfg.counts.connections.fetch_add(1, Ordering::SeqCst);
        let (acceptor, cfg) = (acceptor.clone(), cfg.clone());
        tokio::spawn(async move {
            // A client that does not trust the CA hangs up during the handshake.
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let cfg = cfg.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&cfg, req).await) }
            });
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(cfg: &Config, req: Request<Incoming>) -> Response<Full<Bytes>> {
    cfg.counts.requests.fetch_add(1, Ordering::SeqCst);
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if auth.as_deref() != Some(cfg.authorization.as_str()) {
        if auth.is_some() {
            cfg.counts.refused.fetch_add(1, Ordering::SeqCst);
        }
        let mut r = text(StatusCode::UNAUTHORIZED, "authentication required\n");
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"git\""),
        );
        return r;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (content_type, encoding, protocol) = (
        header("content-type"),
        header("content-encoding"),
        header("git-protocol"),
    );
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad body\n"),
    };
    let mut cmd = tokio::process::Command::new(BACKEND);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &cfg.home)
        .env("GIT_PROJECT_ROOT", &cfg.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("CONTENT_TYPE", &content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", &cfg.user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if !encoding.is_empty() {
        cmd.env("HTTP_CONTENT_ENCODING", &encoding);
    }
    if !protocol.is_empty() {
        cmd.env("GIT_PROTOCOL", &protocol);
    }
    let Ok(mut child) = cmd.spawn() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot run git-http-backend\n",
        );
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let Ok(out) = child.wait_with_output().await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git-http-backend failed\n",
        );
    };
    let _ = writer.await;
    cgi_response(&out.stdout)
}

/// Turns CGI output (headers, blank line, body) into a response.
fn cgi_response(out: &[u8]) -> Response<Full<Bytes>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let Some((end, body_start)) = split else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "bad CGI output\n");
    };
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(&out[body_start..])));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok());
            if let Some(code) = code.and_then(|c| StatusCode::from_u16(c).ok()) {
                *response.status_mut() = code;
            }
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.trim().as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}
