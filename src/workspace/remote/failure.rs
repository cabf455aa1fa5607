//! What went wrong talking to a remote, in words a user can act on: the operation, the host and
//! a cause class, never git's raw output (which may name internal addresses and ports; it goes
//! to the log of the process, at warn level, for the operator). The class decides whether a
//! failure is worth another attempt: network trouble is, a refused credential or host key is
//! not. Built by the git command runner from git's (C-locale) stderr.

use std::fmt;

/// What loopd was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Fetch,
    Push,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Fetch => "fetch",
            Op::Push => "push to",
        }
    }
}

/// Why a remote operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The URL or host is not allowed by `[git]` (nothing was contacted).
    NotAllowed(String),
    /// The URL is malformed or carries a password.
    BadUrl(String),
    /// The host refused the credential (or none was found).
    Auth,
    /// The ssh host key is not in the known_hosts file (or differs from it).
    HostKey { changed: bool },
    /// The https certificate is not trusted (CA or name), or out of its dates (`expired`).
    Tls { expired: bool },
    /// The host could not be reached or did not answer (name, connection, reset).
    Unreachable,
    /// The git command ran past `git.timeout_sec`.
    Timeout,
    /// The host answered with a server error (5xx).
    ServerError,
    /// The host has no repository at that path (or it is not a git repository).
    RepoNotFound,
    /// The push was refused by the remote: `reason` as the remote put it.
    Rejected(String),
    /// A configured credential cannot be read (a file or environment variable).
    Credential(String),
    /// Anything else; git's words are in the log.
    Other,
}

/// A failed remote operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RemoteError {
    pub op: Op,
    /// `host` or `host:port` ("a local repository" for file remotes).
    pub host: String,
    pub cause: Cause,
}

impl RemoteError {
    /// Whether another attempt may succeed (network trouble), as opposed to a failure that
    /// needs a change of settings or of the remote.
    pub fn retryable(&self) -> bool {
        matches!(
            self.cause,
            Cause::Unreachable | Cause::Timeout | Cause::ServerError
        )
    }

    /// A short name of the cause for `failure_reason` prefixes and metrics.
    pub fn class(&self) -> &'static str {
        match self.cause {
            Cause::NotAllowed(_) => "not_allowed",
            Cause::BadUrl(_) => "bad_url",
            Cause::Auth => "auth",
            Cause::HostKey { .. } => "host_key",
            Cause::Tls { .. } => "tls",
            Cause::Unreachable => "unreachable",
            Cause::Timeout => "timeout",
            Cause::ServerError => "server_error",
            Cause::RepoNotFound => "repo_not_found",
            Cause::Rejected(_) => "rejected",
            Cause::Credential(_) => "credential",
            Cause::Other => "other",
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, host) = (self.op.verb(), &self.host);
        match &self.cause {
            Cause::NotAllowed(why) => write!(f, "not allowed: {why}"),
            Cause::BadUrl(why) => f.write_str(why),
            Cause::Auth => write!(
                f,
                "cannot {op} {host}: authentication failed (check the [[git.credentials]] entry or the git credential helper / ssh key for this host)"
            ),
            Cause::HostKey { changed: false } => write!(
                f,
                "cannot {op} {host}: unknown ssh host key (add it to git.known_hosts, or set git.accept_new_host_keys = true)"
            ),
            Cause::HostKey { changed: true } => write!(
                f,
                "cannot {op} {host}: the ssh host key differs from the one in known_hosts"
            ),
            Cause::Tls { expired: false } => write!(
                f,
                "cannot {op} {host}: TLS certificate not trusted (not signed by a CA of git.ca_file or the system, issued for another name, or expired)"
            ),
            Cause::Tls { expired: true } => write!(
                f,
                "cannot {op} {host}: TLS certificate expired (the server's or its CA's: renew it, or check this machine's clock)"
            ),
            Cause::Unreachable => write!(f, "cannot {op} {host}: unreachable"),
            Cause::Timeout => write!(f, "cannot {op} {host}: timed out (git.timeout_sec)"),
            Cause::ServerError => write!(f, "cannot {op} {host}: server error"),
            Cause::RepoNotFound => write!(f, "cannot {op} {host}: repository not found"),
            Cause::Rejected(reason) => write!(f, "cannot {op} {host}: rejected ({reason})"),
            Cause::Credential(why) => write!(f, "cannot {op} {host}: {why}"),
            Cause::Other => write!(f, "cannot {op} {host}: git failed (see the log)"),
        }
    }
}

/// The cause git's stderr (LC_ALL=C) describes. The order matters: specific phrases before
/// the generic ones that often follow them.
pub fn classify(stderr: &str) -> Cause {
    let has = |needle: &str| stderr.contains(needle);
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("Host key for ") && has("has changed") {
        return Cause::HostKey { changed: true };
    }
    if has("Host key verification failed") || has("host key is known for") {
        return Cause::HostKey { changed: false };
    }
    if has("certificate has expired") || has("certificate is not yet valid") {
        return Cause::Tls { expired: true };
    }
    if has("SSL certificate problem")
        || has("server certificate verification failed")
        || has("no alternative certificate subject name")
        || has("certificate subject name")
        || has("unable to get local issuer certificate")
        || has("self-signed certificate")
        || has("self signed certificate")
    {
        return Cause::Tls { expired: false };
    }
    if has("Authentication failed")
        || has("Permission denied (")
        || has("Permission denied, please try again")
        || has("Too many authentication failures")
        || has("could not read Username")
        || has("could not read Password")
        || has("returned error: 401")
        || has("returned error: 403")
        || has("incorrect passphrase")
        || has("Load key")
    {
        return Cause::Auth;
    }
    if has("returned error: 404")
        || has("not found")
            && (has("repository '") || has("Repository not found") || has("does not exist"))
        || has("does not appear to be a git repository")
        || has("not valid: is this a git repository")
    {
        return Cause::RepoNotFound;
    }
    if has("returned error: 5") {
        return Cause::ServerError;
    }
    const NETWORK: &[&str] = &[
        "Could not resolve host",
        "Could not resolve hostname",
        "Failed to connect",
        "Couldn't connect to server",
        "Connection refused",
        "Connection timed out",
        "Connection reset",
        "Connection closed",
        "connection closed",
        "No route to host",
        "Network is unreachable",
        "Operation timed out",
        "Empty reply from server",
        "Recv failure",
        "Send failure",
        "transfer closed",
        "RPC failed",
        "kex_exchange_identification",
        "early EOF",
        "the remote end hung up",
        "SSL_ERROR_SYSCALL",
        "SSL_connect",
        "TLS connect error",
        "wrong version number",
        "packet_write_wait",
    ];
    if NETWORK.iter().any(|n| has(n)) {
        return Cause::Unreachable;
    }
    Cause::Other
}

/// The first refusal in `git push --porcelain` output (`!\t<src>:<dst>\t[rejected] (why)`),
/// as `[rejected] (why)` without the ref names.
pub fn push_rejection(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let rest = line.strip_prefix('!')?;
        let summary = rest.split('\t').nth(2).unwrap_or(rest).trim();
        let reason = summary
            .trim_start_matches("[rejected]")
            .trim_start_matches("[remote rejected]")
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        Some(if reason.is_empty() {
            "refused".to_string()
        } else {
            reason.to_string()
        })
    })
}
