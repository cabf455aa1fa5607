//! An ssh git server for tests: Debian's `sshd` (openssh-server) run by the test on a free
//! port of 127.0.0.1 with its own host key, config and `authorized_keys`, logging to a file
//! (so tests can count authentication attempts). Git runs over it as the current user. Keys
//! are made with `ssh-keygen`. A missing `sshd` fails the test, saying how to install it;
//! `LOOPD_SKIP_SSH_TESTS=1` skips the tests that need it instead ([`Sshd::start`] then
//! returns `None` after printing so).

use super::{free_port, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";

/// `LOOPD_SKIP_SSH_TESTS=1` skips the tests that need sshd.
pub const SKIP_VAR: &str = "LOOPD_SKIP_SSH_TESTS";

/// Whether the ssh tests run with `sshd` at that path and the skip variable's value: `Ok(false)`
/// when skipped (the variable is `1`), else an error saying how to install a missing sshd.
pub fn ssh_tests_run(sshd: &Path, skip: Option<&str>) -> Result<bool, String> {
    if skip == Some("1") {
        return Ok(false);
    }
    if !sshd.exists() {
        return Err(format!(
            "{} is not installed; the ssh tests need it (Debian/Ubuntu: apt-get install \
             openssh-server), or set {SKIP_VAR}=1 to skip them",
            sshd.display()
        ));
    }
    Ok(true)
}

/// [`ssh_tests_run`] for this machine: panics when sshd is missing and the tests are not
/// skipped; a skip is printed straight to stderr (not captured by the test harness).
pub fn ssh_tests_here() -> bool {
    let skip = std::env::var(SKIP_VAR).ok();
    match ssh_tests_run(Path::new(SSHD), skip.as_deref()) {
        Ok(run) => {
            if !run {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: {SKIP_VAR}=1 (a test needing sshd)"
                );
            }
            run
        }
        Err(e) => panic!("{e}"),
    }
}

/// A running sshd; killed when dropped.
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    /// The `known_hosts` line of this server's host key.
    pub known_hosts_line: String,
    /// A private key whose public half is authorized.
    pub client_key: PathBuf,
    pub log: PathBuf,
    child: Child,
}

/// Makes an ed25519 key pair at `path` (and `path.pub`), with `passphrase` ("" for none).
pub fn keygen(path: &Path, passphrase: &str) {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-C",
            "loopd-test",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user git logs in as (the one running the tests).
pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd in `dir` (created), authorizing a fresh client key and `extra_keys` (paths
    /// of public keys); `None` when the ssh tests are skipped (see [`ssh_tests_here`]).
    pub async fn start(dir: &Path, extra_keys: &[&Path]) -> Option<Sshd> {
        if !ssh_tests_here() {
            return None;
        }
        std::fs::create_dir_all(dir).expect("sshd dir");
        if user() == "root" {
            // sshd started by root insists on its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        }
        let host_key = dir.join("host_key");
        keygen(&host_key, "");
        let client_key = dir.join("client_key");
        keygen(&client_key, "");
        let mut authorized =
            std::fs::read_to_string(client_key.with_extension("pub")).expect("client key");
        for k in extra_keys {
            authorized.push_str(&std::fs::read_to_string(k).expect("extra key"));
        }
        std::fs::write(dir.join("authorized_keys"), authorized).expect("authorized_keys");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
            host_key.display(),
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display(),
        );
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config).expect("sshd_config");
        let log = dir.join("sshd.log");
        let log_file = std::fs::File::create(&log).expect("sshd log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start sshd");
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).expect("host key");
        let key = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let sshd = Sshd {
            port,
            dir: dir.to_path_buf(),
            known_hosts_line: format!("[127.0.0.1]:{port} {key}\n"),
            client_key,
            log,
            child,
        };
        let what = format!("sshd on port {port} (log: {})", sshd.log.display());
        wait_for(&what, Duration::from_secs(20), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })
        .await;
        Some(sshd)
    }

    /// `ssh://<user>@127.0.0.1:<port><path>` of a repository on this machine.
    pub fn url(&self, repo: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", user(), self.port, repo.display())
    }

    /// Writes a known_hosts file holding this server's key and returns its path.
    pub fn known_hosts(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, &self.known_hosts_line).expect("known_hosts");
        path
    }

    /// How many public keys sshd refused so far.
    pub fn failed_auths(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("Failed publickey"))
            .count()
    }

    /// Connections that spoke ssh so far (the readiness probe of [`Sshd::start`] closes before
    /// the key exchange and is not counted).
    pub fn connections(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let opened = log
            .lines()
            .filter(|l| l.contains("Connection from"))
            .count();
        let probes = log
            .lines()
            .filter(|l| l.contains("kex_exchange_identification"))
            .count();
        opened.saturating_sub(probes)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
