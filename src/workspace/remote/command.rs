//! Runs one git network command (`clone`, `fetch`, `push`) the way a git user on this machine
//! would, plus what loopd's settings add: the user's git config, credential helpers,
//! `~/.ssh/config`, ssh-agent, proxies and trust store stay in force; a configured https
//! credential reaches git through an inline credential helper that reads it from the child's
//! environment (never the command line); an ssh key, known_hosts file and host-key policy go
//! into `GIT_SSH_COMMAND`; a key's passphrase is answered by loopd itself as `SSH_ASKPASS`.
//! Nothing may prompt, only the allowed protocols are enabled, and a command that runs past its
//! deadline is killed with its process group. Private to `workspace::remote`.

use super::credentials::Resolved;
use super::failure::{classify, push_rejection, Cause, Op, RemoteError};
use super::url::{RemoteUrl, Scheme};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable loopd reads when it runs as ssh's askpass program.
pub const ASKPASS_SECRET_ENV: &str = "LOOPD_INTERNAL_ASKPASS_SECRET";

/// Inline credential helper: answers `get` with the variables set for this command only.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || exit 0; printf 'username=%s\\npassword=%s\\n' \"$LOOPD_GIT_USERNAME\" \"$LOOPD_GIT_PASSWORD\"; }; f";

/// Most bytes of git's output kept (the tail matters).
const OUTPUT_CAP: usize = 64 << 10;

/// Everything a git command needs besides its arguments.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `GIT_ALLOW_PROTOCOL`.
    pub protocols: String,
    pub follow_redirects: bool,
    pub known_hosts: Option<PathBuf>,
    pub accept_new_host_keys: bool,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// loopd's own executable, used as `SSH_ASKPASS` for key passphrases.
    pub askpass: Option<PathBuf>,
}

/// What a successful command printed.
pub struct Output {
    pub stdout: String,
}

/// Runs `git <config> <args>` in `dir` (or the current directory) for `url`.
pub fn run(
    setup: &Setup,
    dir: Option<&Path>,
    url: &RemoteUrl,
    op: Op,
    creds: &Resolved,
    args: &[&str],
) -> Result<Output, RemoteError> {
    let fail = |cause| RemoteError {
        op,
        host: url.host_label(),
        cause,
    };
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    for (key, value) in config(setup, creds) {
        cmd.arg("-c").arg(format!("{key}={value}"));
    }
    cmd.args(args);
    environment(&mut cmd, setup, url, creds);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        tracing::error!(error = %e, "cannot start git: is it installed and on PATH?");
        fail(Cause::Other)
    })?;
    let stdout = child.stdout.take().map(reader);
    let stderr = child.stderr.take().map(reader);
    let deadline = Instant::now() + setup.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let join = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (join(stdout), join(stderr));
    let cause = match status {
        Some(s) if s.success() => return Ok(Output { stdout }),
        None => Cause::Timeout,
        Some(_) => match push_rejection(&stdout).filter(|_| op == Op::Push) {
            Some(reason) => Cause::Rejected(reason),
            None => classify(&stderr),
        },
    };
    let error = fail(cause);
    tracing::warn!(
        host = %error.host,
        class = error.class(),
        git = %tail(&stderr),
        "git {} failed",
        args.first().copied().unwrap_or("command")
    );
    Err(error)
}

/// Reads a pipe to its end on a thread, keeping the last [`OUTPUT_CAP`] bytes.
fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * OUTPUT_CAP {
                kept.drain(..kept.len() - OUTPUT_CAP);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// The last lines of git's stderr, on one line, for the log.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// `-c key=value` pairs.
fn config(setup: &Setup, creds: &Resolved) -> Vec<(&'static str, String)> {
    let mut c = vec![
        ("gc.auto", "0".to_string()),
        ("maintenance.auto", "false".into()),
        ("core.askPass", String::new()),
        ("fetch.recurseSubmodules", "false".into()),
    ];
    if !setup.follow_redirects {
        c.push(("http.followRedirects", "false".into()));
    }
    let env_path = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    match (&setup.ca_file, env_path("SSL_CERT_FILE")) {
        (Some(ca), _) => c.push(("http.sslCAInfo", ca.display().to_string())),
        (None, Some(file)) => c.push(("http.sslCAInfo", file.to_string_lossy().into())),
        (None, None) => {}
    }
    if setup.ca_file.is_none() {
        if let Some(dir) = env_path("SSL_CERT_DIR") {
            c.push(("http.sslCAPath", dir.to_string_lossy().into()));
        }
    }
    if creds.https.is_some() {
        // An empty value clears the helpers of the user's config: the configured credential
        // is the only one tried, so a wrong one fails once instead of falling through.
        c.push(("credential.helper", String::new()));
        c.push(("credential.helper", CREDENTIAL_HELPER.into()));
    }
    c
}

fn environment(cmd: &mut Command, setup: &Setup, url: &RemoteUrl, creds: &Resolved) {
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "LOOPD_GIT_USERNAME",
        "LOOPD_GIT_PASSWORD",
        ASKPASS_SECRET_ENV,
    ] {
        cmd.env_remove(var);
    }
    cmd.env("LC_ALL", "C")
        .env("LANGUAGE", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", &setup.protocols)
        .env("GIT_PROTOCOL_FROM_USER", "0");
    if let Some((user, password)) = &creds.https {
        cmd.env("LOOPD_GIT_USERNAME", user)
            .env("LOOPD_GIT_PASSWORD", password.expose());
    }
    if url.scheme == Scheme::Ssh {
        cmd.env("GIT_SSH_COMMAND", ssh_command(setup, creds));
        cmd.env("GIT_SSH_VARIANT", "ssh");
        if let (Some((_, Some(passphrase))), Some(askpass)) = (&creds.ssh_key, &setup.askpass) {
            cmd.env("SSH_ASKPASS", askpass)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env(ASKPASS_SECRET_ENV, passphrase.expose());
        }
    }
}

/// `ssh` (or the user's `GIT_SSH_COMMAND`) with loopd's host-key policy and key.
fn ssh_command(setup: &Setup, creds: &Resolved) -> String {
    let quote = |s: &str| {
        shlex::try_quote(s)
            .map(|q| q.into_owned())
            .unwrap_or_else(|_| s.to_string())
    };
    let base = std::env::var("GIT_SSH_COMMAND")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "ssh".into());
    let mut parts = vec![base];
    let mut opt = |o: String| {
        parts.push("-o".into());
        parts.push(quote(&o));
    };
    let passphrase = matches!(&creds.ssh_key, Some((_, Some(_))));
    if passphrase {
        // ssh asks loopd (SSH_ASKPASS) for the passphrase; every other prompt is off.
        opt("BatchMode=no".into());
        opt("PasswordAuthentication=no".into());
        opt("KbdInteractiveAuthentication=no".into());
        opt("NumberOfPasswordPrompts=1".into());
    } else {
        opt("BatchMode=yes".into());
    }
    let policy = if setup.accept_new_host_keys {
        "accept-new"
    } else {
        "yes"
    };
    opt(format!("StrictHostKeyChecking={policy}"));
    if let Some(known) = &setup.known_hosts {
        opt(format!("UserKnownHostsFile={}", known.display()));
    }
    opt("ConnectTimeout=30".into());
    if let Some((key, _)) = &creds.ssh_key {
        opt("IdentitiesOnly=yes".into());
        parts.push("-i".into());
        parts.push(quote(&key.display().to_string()));
    }
    parts.join(" ")
}
