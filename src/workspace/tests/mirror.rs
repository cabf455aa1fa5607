//! The controller's bare mirrors: fetch, resolve and read at a ref.

use super::support::{commit_file, file_url, git, init_repo_on, remotes_under};
use crate::workspace::{Mirrors, WorkspaceError};
use std::path::PathBuf;

/// An upstream repository on `branch` (one commit), its file URL, and an empty mirror cache,
/// all in a temporary directory kept alive by the first value.
fn upstream_and_mirrors(branch: &str) -> (tempfile::TempDir, PathBuf, String, Mirrors) {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = init_repo_on(&tmp.path().join("upstream"), branch);
    let url = file_url(&upstream);
    let mirrors = Mirrors::new(tmp.path().join("mirrors"), remotes_under(tmp.path()));
    (tmp, upstream, url, mirrors)
}

#[test]
fn a_mirror_resolves_the_remote_head_and_branches_and_reads_files() {
    let (_tmp, upstream, url, mirrors) = upstream_and_mirrors("trunk");
    let trunk = commit_file(&upstream, "specs/a.md", "# Spec A\n", "spec");
    git(&upstream, &["checkout", "-q", "-b", "feature"]);
    let feature = commit_file(&upstream, "specs/b.md", "# Spec B\n", "spec b");
    git(&upstream, &["checkout", "-q", "trunk"]);

    mirrors.fetch(&url).unwrap();
    assert_eq!(
        mirrors.resolve_ref(&url, None).unwrap(),
        ("trunk".to_string(), trunk.clone())
    );
    assert_eq!(
        mirrors.resolve_ref(&url, Some("feature")).unwrap(),
        ("feature".to_string(), feature.clone())
    );
    assert_eq!(
        mirrors.resolve_ref(&url, Some(&trunk[..10])).unwrap().1,
        trunk
    );

    let spec = mirrors.read_file(&url, &trunk, "specs/a.md").unwrap();
    assert_eq!(spec.as_deref(), Some(&b"# Spec A\n"[..]));
    assert_eq!(mirrors.read_file(&url, &trunk, "specs/b.md").unwrap(), None);
    assert!(mirrors
        .read_file(&url, &feature, "specs/b.md")
        .unwrap()
        .is_some());
    assert_eq!(
        mirrors.read_file(&url, &trunk, "specs").unwrap(),
        None,
        "a directory"
    );
}

#[test]
fn a_second_fetch_brings_new_commits() {
    let (tmp, upstream, url, mirrors) = upstream_and_mirrors("main");
    mirrors.fetch(&url).unwrap();
    let newer = commit_file(&upstream, "plan.md", "- [ ] x\n", "plan");
    assert_ne!(mirrors.resolve_ref(&url, Some("main")).unwrap().1, newer);
    mirrors.fetch(&url).unwrap();
    assert_eq!(mirrors.resolve_ref(&url, Some("main")).unwrap().1, newer);
    assert!(mirrors
        .path_of(&url)
        .starts_with(tmp.path().join("mirrors")));
}

#[test]
fn unknown_refs_and_unfetched_urls_are_clear_errors() {
    let (tmp, _upstream, url, mirrors) = upstream_and_mirrors("main");

    let error = mirrors.resolve_ref(&url, None).unwrap_err();
    assert!(matches!(error, WorkspaceError::NoMirror { .. }), "{error}");
    mirrors.fetch(&url).unwrap();
    let error = mirrors.resolve_ref(&url, Some("nope")).unwrap_err();
    assert_eq!(error.to_string(), format!("ref not found in {url}: nope"));

    let missing = tmp.path().join("missing");
    let error = mirrors.fetch(&file_url(&missing)).unwrap_err().to_string();
    assert_eq!(
        error,
        format!("cannot fetch {}: repository not found", missing.display())
    );
    let outside = mirrors.fetch("file:///etc").unwrap_err().to_string();
    assert_eq!(
        outside,
        "not allowed: local repositories are allowed only inside git.file_roots"
    );
}

#[test]
fn files_read_at_a_commit_are_kept_and_failures_are_not() {
    let (_tmp, upstream, url, mirrors) = upstream_and_mirrors("main");
    mirrors.fetch(&url).unwrap();
    let newer = commit_file(&upstream, "p.txt", "v2\n", "p");
    // Not fetched yet: an error, and not remembered as one.
    assert!(mirrors.read_file(&url, &newer, "p.txt").is_err());
    mirrors.fetch(&url).unwrap();
    let read = mirrors.read_file(&url, &newer, "p.txt").unwrap();
    assert_eq!(read.as_deref(), Some(&b"v2\n"[..]));
    // A commit's files never change: a second read does not open the mirror again.
    std::fs::remove_dir_all(mirrors.path_of(&url)).unwrap();
    assert_eq!(mirrors.read_file(&url, &newer, "p.txt").unwrap(), read);
    let error = mirrors.read_file(&url, &newer, "q.txt").unwrap_err();
    assert!(matches!(error, WorkspaceError::NoMirror { .. }), "{error}");
}

#[test]
fn fetches_of_one_mirror_at_once_all_succeed() {
    let (_tmp, upstream, url, mirrors) = upstream_and_mirrors("main");
    mirrors.fetch(&url).unwrap();
    let newer = commit_file(&upstream, "n.txt", "n\n", "newer");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| mirrors.fetch(&url))).collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    });
    assert_eq!(mirrors.resolve_ref(&url, Some("main")).unwrap().1, newer);
}
