//! Remote URLs, the allow-lists, the causes read from git's words, and pushes to a local
//! remote (accepted, idempotent, refused with the remote's reason).

use super::support::{commit_file, file_url, git, init_repo, remotes_under};
use crate::workspace::remote::{classify, Access, Op, RemoteError, RemoteUrl, Scheme};
use crate::workspace::{write_bundle, Mirrors, WorkspaceError};
use std::path::Path;

#[test]
fn urls_of_every_supported_form_parse_with_their_host() {
    let cases = [
        (
            "https://git.example.com/team/app.git",
            Scheme::Https,
            "git.example.com",
            None,
        ),
        (
            "https://x-token@Git.Example.com:8443/app",
            Scheme::Https,
            "git.example.com",
            Some(8443),
        ),
        (
            "ssh://git@git.example.com:2222/team/app.git",
            Scheme::Ssh,
            "git.example.com",
            Some(2222),
        ),
        (
            "git@git.example.com:team/app.git",
            Scheme::Ssh,
            "git.example.com",
            None,
        ),
        (
            "git.example.com:app.git",
            Scheme::Ssh,
            "git.example.com",
            None,
        ),
        ("file:///srv/git/app", Scheme::File, "", None),
        ("/srv/git/app", Scheme::File, "", None),
    ];
    for (text, scheme, host, port) in cases {
        let url = RemoteUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            (url.scheme, url.host.as_str(), url.port),
            (scheme, host, port),
            "{text}"
        );
        assert_eq!(url.as_str(), text);
    }
}

#[test]
fn urls_with_passwords_options_or_other_transports_are_refused_without_echoing_secrets() {
    let refused = [
        "https://user:hunter2-secret@git.example.com/app.git",
        "ssh://git:hunter2-secret@git.example.com/app.git",
        "user:hunter2-secret@git.example.com:app.git",
        "ext::sh -c touch% /tmp/pwned",
        "git://git.example.com/app.git",
        "-uhelp@host:x",
        "ssh://-oProxyCommand=x/app",
        "relative/path",
        "",
    ];
    for text in refused {
        let error = RemoteUrl::parse(text).expect_err(text).to_string();
        assert!(!error.contains("hunter2"), "{text}: {error}");
    }
    let error = RemoteUrl::parse(refused[0]).unwrap_err().to_string();
    assert!(
        error.contains("[[git.credentials]]"),
        "says what to do: {error}"
    );
    assert_eq!(
        crate::workspace::remote::redact(refused[0]),
        "https://user:***@git.example.com/app.git"
    );
}

#[test]
fn a_remote_names_its_github_repository_as_gh_repo_takes_it() {
    let gh = |u: &str| RemoteUrl::parse(u).expect(u).gh_repo();
    for url in [
        "https://github.com/octo/app.git",
        "https://github.com/octo/app",
        "https://ci@github.com/octo/app/",
        "ssh://git@github.com/octo/app.git",
        "ssh://git@ssh.github.com:443/octo/app.git",
        "git@github.com:octo/app.git",
        "github.com:octo/app",
        "git@github.com:/octo/app.git",
    ] {
        assert_eq!(gh(url).as_deref(), Some("octo/app"), "{url}");
    }
    for (url, want) in [
        (
            "https://ghe.example.com/octo/my.app.git",
            "ghe.example.com/octo/my.app",
        ),
        ("https://127.0.0.1:8443/octo/app.git", "127.0.0.1/octo/app"),
        (
            "ssh://git@GHE.example.com:2222/octo/app",
            "ghe.example.com/octo/app",
        ),
        (
            "git@ghe.example.com:octo/app.git",
            "ghe.example.com/octo/app",
        ),
    ] {
        assert_eq!(gh(url).as_deref(), Some(want), "{url}");
    }
    for url in [
        "file:///srv/git/app.git",
        "/srv/git/app.git",
        "https://github.com/app.git",
        "https://gitlab.example.com/group/sub/app.git",
        "git@github.com:octo/app%20x.git",
    ] {
        assert_eq!(gh(url), None, "{url}");
    }
}

fn access(schemes: &[&str], hosts: &[&str], roots: &[&Path]) -> Access {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let roots: Vec<_> = roots.iter().map(|r| r.to_path_buf()).collect();
    Access::new(&s(schemes), &s(hosts), &roots)
}

#[test]
fn the_allow_lists_check_scheme_host_and_file_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let inside = init_repo(&tmp.path().join("repos/app"));
    let a = access(
        &["https", "ssh", "file"],
        &["git.example.com", "*.corp.example"],
        &[&tmp.path().join("repos")],
    );
    let check = |t: &str| a.check(&RemoteUrl::parse(t).unwrap());
    assert!(check("https://git.example.com/app").is_ok());
    assert!(check("git@build.corp.example:app").is_ok());
    assert!(check("https://corp.example.evil/app").is_err());
    assert!(check("https://10.0.0.5:6379/app")
        .unwrap_err()
        .contains("git.allowed_hosts"));
    assert!(check(&file_url(&inside)).is_ok());
    assert!(check(&inside.join("../../../etc").display().to_string()).is_err());
    assert!(check("file:///etc").unwrap_err().contains("git.file_roots"));
    let http = RemoteUrl::parse("http://git.example.com/app").unwrap();
    assert!(a.check(&http).unwrap_err().contains("git.allowed_schemes"));
    let no_roots = access(&["file"], &["*"], &[]);
    assert!(no_roots
        .check(&RemoteUrl::parse(&file_url(&inside)).unwrap())
        .is_err());
}

#[test]
fn git_s_words_map_to_causes_and_only_network_trouble_is_retried() {
    use crate::workspace::remote::Cause::*;
    let cases = [
        ("fatal: Authentication failed for 'https://h/r.git/'", Auth, false),
        ("fatal: could not read Username for 'https://h': terminal prompts disabled", Auth, false),
        ("git@h: Permission denied (publickey).\r\nfatal: Could not read from remote repository.", Auth, false),
        ("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.", HostKey { changed: false }, false),
        ("fatal: unable to access 'https://h/': SSL certificate problem: unable to get local issuer certificate", Tls { expired: false }, false),
        ("fatal: unable to access 'https://h/': SSL certificate problem: certificate has expired", Tls { expired: true }, false),
        ("fatal: unable to access 'https://127.0.0.1:1/r/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server", Unreachable, true),
        ("ssh: connect to host 127.0.0.1 port 1: Connection refused", Unreachable, true),
        ("fatal: repository 'https://h/nope/' not found", RepoNotFound, false),
        ("fatal: '/srv/x' does not appear to be a git repository", RepoNotFound, false),
        ("error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502", ServerError, true),
    ];
    for (stderr, cause, retried) in cases {
        let e = RemoteError {
            op: Op::Fetch,
            host: "127.0.0.1".into(),
            cause: classify(stderr),
        };
        assert_eq!(e.cause, cause, "{stderr}");
        assert_eq!(e.retryable(), retried, "{stderr}");
        assert!(!e.to_string().contains("port 1"), "no socket detail: {e}");
    }
}

/// A bare remote with one commit on main, a mirror of it, and a run branch's bundle.
struct PushSetup {
    _tmp: tempfile::TempDir,
    remote: std::path::PathBuf,
    url: String,
    mirrors: Mirrors,
    bundle: std::path::PathBuf,
    head: String,
}

fn push_setup() -> PushSetup {
    let tmp = tempfile::tempdir().unwrap();
    let work = init_repo(&tmp.path().join("work"));
    let remote = tmp.path().join("remote.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &work.display().to_string(),
            &remote.display().to_string(),
        ],
    );
    git(&work, &["checkout", "-q", "-b", "run/x"]);
    let head = commit_file(&work, "done.txt", "done\n", "task 1");
    let base = git(&work, &["rev-parse", "main"]).trim().to_string();
    let bundle = tmp.path().join("run.bundle");
    write_bundle(&work, "run/x", Some(&base), &bundle).unwrap();
    let url = file_url(&remote);
    let mirrors = Mirrors::new(tmp.path().join("mirrors"), remotes_under(tmp.path()));
    mirrors.fetch(&url).unwrap();
    PushSetup {
        _tmp: tmp,
        remote,
        url,
        mirrors,
        bundle,
        head,
    }
}

#[test]
fn a_run_branch_is_pushed_from_its_bundle_and_a_second_push_changes_nothing() {
    let s = push_setup();
    s.mirrors
        .push_branch(&s.url, Some(s.bundle.as_path()), &s.head, "run/x")
        .unwrap();
    let pushed = git(&s.remote, &["rev-parse", "refs/heads/run/x"]);
    assert_eq!(pushed.trim(), s.head);
    s.mirrors
        .push_branch(&s.url, Some(s.bundle.as_path()), &s.head, "run/x")
        .unwrap();
}

#[test]
fn a_push_the_remote_refuses_fails_with_the_remote_s_reason() {
    let s = push_setup();
    let main = git(&s.remote, &["rev-parse", "main"]).trim().to_string();
    let other = git(
        &s.remote,
        &[
            "commit-tree",
            "-m",
            "elsewhere",
            &format!("{main}^{{tree}}"),
        ],
    );
    git(&s.remote, &["update-ref", "refs/heads/run/x", other.trim()]);
    let error = s
        .mirrors
        .push_branch(&s.url, Some(s.bundle.as_path()), &s.head, "run/x")
        .unwrap_err();
    let WorkspaceError::Remote(remote) = &error else {
        panic!("{error}")
    };
    assert_eq!(remote.class(), "rejected", "{error}");
    // git's words for a non-fast-forward to a commit the pusher has never seen.
    assert!(
        error.to_string().ends_with("rejected (fetch first)"),
        "{error}"
    );
    assert!(!remote.retryable(), "a refusal is not retried");
}
