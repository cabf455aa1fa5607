//! Git bundles (v2 format, as `git bundle` reads and writes them) of a git run's branch: the
//! checkpoint a worker uploads after each step and the next step's worker imports. libgit2 has
//! no bundle API, so the header is written and parsed here around a libgit2 packfile. Called by
//! the worker's step executor and by `prepare_clone`.

use super::error::{Context, WorkspaceError};
use super::{repo, Result};
use git2::{Oid, PackBuilder};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

const V2_SIGNATURE: &str = "# v2 git bundle";

/// Writes a bundle of `run_branch` of the repository at `dir` to `out` and returns the branch's
/// head sha. With `base` (a commit the receiver already has) the bundle lists it as its
/// prerequisite and packs only the commits after it with their new trees and blobs; without it
/// the bundle holds the whole history.
pub fn write_bundle(
    dir: &Path,
    run_branch: &str,
    base: Option<&str>,
    out: &Path,
) -> Result<String> {
    let repository = repo::open(dir)?;
    let head = repo::branch_commit(&repository, run_branch)?.id();
    let mut walk = repository
        .revwalk()
        .context(|| "cannot walk history".into())?;
    walk.push(head)
        .context(|| format!("cannot walk from {head}"))?;
    let mut header = format!("{V2_SIGNATURE}\n");
    if let Some(base) = base {
        let base = Oid::from_str(base)
            .and_then(|oid| repository.find_commit(oid))
            .map_err(|_| WorkspaceError::NotFound {
                what: "bundle base commit",
                name: base.to_string(),
                place: dir.display().to_string(),
            })?;
        walk.hide(base.id())
            .context(|| format!("cannot exclude {}", base.id()))?;
        header.push_str(&format!("-{}\n", base.id()));
    }
    header.push_str(&format!("{head} refs/heads/{run_branch}\n\n"));
    let mut builder = repository
        .packbuilder()
        .context(|| "cannot start a pack".into())?;
    builder
        .insert_walk(&mut walk)
        .context(|| format!("cannot pack {run_branch}"))?;

    write_atomically(out, &header, &mut builder)
        .context(|| format!("cannot write bundle {}", out.display()))?;
    Ok(head.to_string())
}

/// Imports the bundle file `bundle` into the object database of the repository at `dir` and
/// returns the sha of its (first branch) ref. Fails when the repository lacks a prerequisite
/// commit. Refs are not created: that is the caller's choice.
pub fn import_bundle(dir: &Path, bundle: &Path) -> Result<String> {
    let repository = repo::open(dir)?;
    let invalid = |reason: String| WorkspaceError::InvalidBundle {
        path: bundle.to_path_buf(),
        reason,
    };
    let file = File::open(bundle).context(|| format!("cannot open bundle {}", bundle.display()))?;
    let mut reader = BufReader::new(file);
    let header = read_header(&mut reader).map_err(|e| invalid(e.to_string()))?;
    let odb = repository
        .odb()
        .context(|| format!("cannot open the object database of {}", dir.display()))?;
    for sha in &header.prerequisites {
        if !odb.exists(*sha) {
            return Err(WorkspaceError::MissingPrerequisite {
                path: bundle.to_path_buf(),
                sha: sha.to_string(),
                repo: dir.to_path_buf(),
            });
        }
    }
    let head = header
        .refs
        .iter()
        .find(|(_, name)| name.starts_with("refs/heads/"))
        .or(header.refs.first())
        .map(|(sha, _)| *sha)
        .ok_or_else(|| invalid("it lists no refs".into()))?;
    let mut writer = odb
        .packwriter()
        .context(|| "cannot start writing a pack".into())?;
    io::copy(&mut reader, &mut writer)
        .map_err(|e| invalid(format!("cannot index its pack: {e}")))?;
    writer
        .commit()
        .map_err(|e| invalid(format!("cannot index its pack: {e}")))?;
    odb.refresh()
        .context(|| "cannot reload the object database".into())?;
    if !odb.exists(head) {
        return Err(invalid(format!("its pack lacks the head {head}")));
    }
    Ok(head.to_string())
}

/// What the header of a bundle declares.
struct Header {
    prerequisites: Vec<Oid>,
    refs: Vec<(Oid, String)>,
}

/// Reads the header up to and including the blank line that precedes the pack.
fn read_header(reader: &mut impl BufRead) -> io::Result<Header> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let signature = read_line(reader)?;
    let v3 = match signature.as_str() {
        V2_SIGNATURE => false,
        "# v3 git bundle" => true,
        other => return Err(bad(format!("unknown signature {other:?}"))),
    };
    let mut header = Header {
        prerequisites: Vec::new(),
        refs: Vec::new(),
    };
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(header);
        }
        if let Some(capability) = line.strip_prefix('@').filter(|_| v3) {
            if capability != "object-format=sha1" {
                return Err(bad(format!("unsupported capability {capability}")));
            }
            continue;
        }
        let (is_prerequisite, rest) = match line.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let (sha, name) = rest.split_once(' ').unwrap_or((rest, ""));
        let oid = Oid::from_str(sha)
            .ok()
            .filter(|_| sha.len() == 40)
            .ok_or_else(|| bad(format!("bad line {line:?}")))?;
        match is_prerequisite {
            true => header.prerequisites.push(oid),
            false if !name.is_empty() => header.refs.push((oid, name.to_string())),
            false => return Err(bad(format!("ref line without a name: {line:?}"))),
        }
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the header ends before the pack",
        ));
    }
    line.pop();
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Writes `header` and the pack to a staging file renamed to `out` when complete, so a reader
/// never sees half a bundle.
fn write_atomically(out: &Path, header: &str, builder: &mut PackBuilder) -> io::Result<()> {
    let staging = staging_path(out);
    let written = (|| {
        let mut writer = BufWriter::new(File::create(&staging)?);
        writer.write_all(header.as_bytes())?;
        let mut failure = None;
        let packed = builder.foreach(|chunk| match writer.write_all(chunk) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        packed.map_err(io::Error::other)?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        fs::rename(&staging, out)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&staging);
    }
    written
}

fn staging_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}
