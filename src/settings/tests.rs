//! Layering and validation of the settings tree.

use super::*;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn compiled_defaults_give_a_single_role_on_sqlite() {
    let s = Settings::load(&Overrides::default(), &[]).unwrap();
    assert_eq!(s.role, Role::Single);
    assert_eq!(s.bind, "127.0.0.1:7700");
    assert_eq!(s.storage.kind, StorageType::Sqlite);
    assert_eq!(s.scheduler.max_concurrent_runs, 3);
    assert_eq!(s.lease.ttl_ms, 30_000);
    assert_eq!(s.worker.heartbeat_interval_ms, 2000);
    assert_eq!(
        (s.worker.clone_keep_hours, s.worker.clone_sweep_interval_ms),
        (168, 3_600_000)
    );
}

#[test]
fn file_then_env_then_flags_each_override_the_layer_below() {
    let f = file(
        "role = \"controller\"\nbind = \"127.0.0.1:9000\"\n[storage]\ntype = \"postgres\"\nurl = \"postgres://a@b/c\"\n[lease]\nttl_ms = 5000\n[scheduler]\nmax_concurrent_runs = 7\n",
    );
    let flags = Overrides {
        config: Some(f.path().to_path_buf()),
        bind: Some("127.0.0.1:9100".into()),
        ..Default::default()
    };
    let s = Settings::load(
        &flags,
        &env(&[
            ("LOOPD__LEASE__TTL_MS", "7000"),
            ("LOOPD_AUTH_TOKEN", "client-secret-0001"),
        ]),
    )
    .unwrap();
    assert_eq!(s.role, Role::Controller);
    assert_eq!(s.scheduler.max_concurrent_runs, 7, "file beats defaults");
    assert_eq!(s.lease.ttl_ms, 7000, "env beats file");
    assert_eq!(s.bind, "127.0.0.1:9100", "flags beat file");
    assert_eq!(s.auth.token.unwrap().expose(), "client-secret-0001");
}

#[test]
fn env_lists_and_the_join_token_reach_the_worker_section() {
    let s = Settings::load(
        &Overrides {
            role: Some(Role::Worker),
            controller: Some("http://127.0.0.1:7700".into()),
            ..Default::default()
        },
        &env(&[
            ("LOOPD__WORKER__LABELS", "gpu,linux"),
            ("LOOPD_WORKER_JOIN_TOKEN", "join-token-0000001"),
        ]),
    )
    .unwrap();
    assert_eq!(s.worker.labels, vec!["gpu", "linux"]);
    assert_eq!(s.worker.join_token.unwrap().expose(), "join-token-0000001");
    assert_eq!(
        s.auth.worker_join_token.unwrap().expose(),
        "join-token-0000001"
    );
}

#[test]
fn a_worker_without_a_controller_is_refused_with_what_to_fix() {
    let e = Settings::load(
        &Overrides {
            role: Some(Role::Worker),
            join_token: Some("t".into()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("--controller"), "{e}");
}

#[test]
fn postgres_without_a_url_is_refused() {
    let f = file("[storage]\ntype = \"postgres\"\n");
    let e = Settings::load(
        &Overrides {
            config: Some(f.path().to_path_buf()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("storage.url"), "{e}");
}

#[test]
fn an_unknown_role_in_the_file_is_refused() {
    let f = file("role = \"boss\"\n");
    let e = Settings::load(
        &Overrides {
            config: Some(f.path().to_path_buf()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("boss") && !text.contains('\n'), "{text}");
}

#[test]
fn an_unreadable_file_is_named_in_the_error() {
    let e = Settings::load(
        &Overrides {
            config: Some("/nonexistent/loopd.toml".into()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/loopd.toml"), "{e}");
}

#[test]
fn a_misspelt_key_is_refused_rather_than_ignored() {
    let f = file("[lease]\nttl = 5\n");
    let e = Settings::load(
        &Overrides {
            config: Some(f.path().to_path_buf()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("ttl"), "{e}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let s = Settings::load(
        &Overrides::default(),
        &env(&[("LOOPD_AUTH_TOKEN", "hunter2-very-secret")]),
    )
    .unwrap();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
}

#[test]
fn a_single_host_runs_as_many_steps_at_once_as_runs_unless_slots_are_set() {
    let s = Settings::load(&Overrides::default(), &[]).unwrap();
    assert_eq!(s.worker.slots, 3, "max_concurrent_runs");
    let s = Settings::load(
        &Overrides::default(),
        &env(&[("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "5")]),
    )
    .unwrap();
    assert_eq!(s.worker.slots, 5);
    let s = Settings::load(
        &Overrides::default(),
        &env(&[("LOOPD__WORKER__SLOTS", "2")]),
    )
    .unwrap();
    assert_eq!(s.worker.slots, 2);
    let worker = Overrides {
        role: Some(Role::Worker),
        controller: Some("http://127.0.0.1:7700".into()),
        join_token: Some("join-token-0000001".into()),
        ..Default::default()
    };
    assert_eq!(Settings::load(&worker, &[]).unwrap().worker.slots, 1);
}

#[test]
fn git_settings_default_to_https_ssh_and_no_local_roots_and_take_credentials_from_the_file() {
    let s = Settings::load(&Overrides::default(), &[]).unwrap();
    assert_eq!(s.git.allowed_schemes, ["https", "ssh", "file"]);
    assert!(s.git.file_roots.is_empty() && s.git.push_run_branch);
    let f = file(
        "[git]\nallowed_hosts = [\"git.example.com\"]\n[[git.credentials]]\nhost = \"git.example.com\"\nusername = \"u\"\npassword_file = \"/run/secrets/t\"\n",
    );
    let flags = Overrides {
        config: Some(f.path().to_path_buf()),
        ..Default::default()
    };
    let s = Settings::load(&flags, &env(&[("LOOPD__GIT__FILE_ROOTS", "/srv/a,/srv/b")])).unwrap();
    assert_eq!(s.git.allowed_hosts, ["git.example.com"]);
    assert_eq!(s.git.credentials[0].username.as_deref(), Some("u"));
    assert_eq!(s.git.file_roots.len(), 2, "a list from the environment");
    let bad = Settings::load(
        &flags,
        &env(&[("LOOPD__GIT__ALLOWED_SCHEMES", "https,ext")]),
    );
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("\"ext\" is not one of"));
}
