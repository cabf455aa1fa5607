//! The `[auth]` rules: token files, token shapes, named tokens and their scopes, and the
//! loopback rule.

use crate::domain::access::Scope;
use crate::settings::{Overrides, Role, Settings};
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

fn load(config: &str, pairs: &[(&str, &str)]) -> Result<Settings, String> {
    let f = file(config);
    Settings::load(
        &Overrides {
            config: Some(f.path().to_path_buf()),
            ..Default::default()
        },
        &env(pairs),
    )
    .map_err(|e| e.to_string())
}

const TOKEN: &str = "a-client-token-0001";

#[test]
fn a_bind_beyond_loopback_needs_a_client_token_or_an_explicit_opt_out() {
    for role in ["single", "controller"] {
        let base = format!(
            "role = \"{role}\"\nbind = \"0.0.0.0:7700\"\n[storage]\nurl = \"postgres://a@b/c\"\n"
        );
        let e = load(&base, &[]).unwrap_err();
        assert!(
            e.contains("beyond loopback") && e.contains("allow_unauthenticated"),
            "{role}: {e}"
        );
        assert!(
            load(&base, &[("LOOPD_AUTH_TOKEN", TOKEN)]).is_ok(),
            "{role}"
        );
        let open = load(
            &format!("{base}[auth]\nallow_unauthenticated = true\n"),
            &[],
        )
        .unwrap();
        assert!(open.serves_unauthenticated_beyond_loopback());
    }
    for bind in ["127.0.0.1:7700", "127.0.0.2:7700", "[::1]:7700"] {
        let s = load(&format!("bind = \"{bind}\"\n"), &[]).unwrap();
        assert!(!s.binds_beyond_loopback(), "{bind}");
    }
    // A worker serves /health only: it needs no client token.
    let w = load(
        "role = \"worker\"\nbind = \"0.0.0.0:7701\"\n[worker]\ncontroller = \"http://c:7700\"\n",
        &[("LOOPD_WORKER_JOIN_TOKEN", "join-token-0000001")],
    );
    assert!(w.is_ok(), "{w:?}");
}

#[test]
fn tokens_shorter_than_16_characters_or_with_spaces_are_refused() {
    for (k, v) in [
        ("LOOPD_AUTH_TOKEN", "short-token"),
        ("LOOPD_WORKER_JOIN_TOKEN", "fifteen-chars-x"),
        ("LOOPD_AUTH_TOKEN", "sixteen chars ok"),
    ] {
        let e = load("", &[(k, v)]).unwrap_err();
        assert!(e.contains("at least 16"), "{k}={v}: {e}");
        assert!(!e.contains(v), "the error shows the token: {e}");
    }
    assert!(load("", &[("LOOPD_AUTH_TOKEN", "sixteen-chars-ok")]).is_ok());
}

#[test]
fn tokens_are_read_from_files_without_their_newline() {
    let client = file(&format!("{TOKEN}\n"));
    let join = file("join-token-from-a-file\r\n");
    let s = load(
        &format!(
            "[auth]\ntoken_file = \"{}\"\nworker_join_token_file = \"{}\"\n",
            client.path().display(),
            join.path().display()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(s.auth.token.as_ref().map(|t| t.expose()), Some(TOKEN));
    assert_eq!(
        s.auth.worker_join_token.as_ref().map(|t| t.expose()),
        Some("join-token-from-a-file")
    );
    let w = load(
        &format!(
            "role = \"worker\"\n[worker]\ncontroller = \"http://c:7700\"\njoin_token_file = \"{}\"\n",
            join.path().display()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        w.worker.join_token.as_ref().map(|t| t.expose()),
        Some("join-token-from-a-file")
    );
}

#[test]
fn a_bad_token_file_is_named_without_showing_what_it_holds() {
    let e = load("[auth]\ntoken_file = \"/nonexistent/token\"\n", &[]).unwrap_err();
    assert!(
        e.contains("/nonexistent/token") && e.contains("not found"),
        "{e}"
    );
    let short = file("secret-but-short\n"); // 16 chars: fine
    assert!(load(
        &format!("[auth]\ntoken_file = \"{}\"\n", short.path().display()),
        &[]
    )
    .is_ok());
    let tiny = file("tiny-secret\n");
    let e = load(
        &format!("[auth]\ntoken_file = \"{}\"\n", tiny.path().display()),
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("at least 16") && !e.contains("tiny-secret"),
        "{e}"
    );
    let empty = file("\n");
    let e = load(
        &format!("[auth]\ntoken_file = \"{}\"\n", empty.path().display()),
        &[],
    )
    .unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = load(
        &format!("[auth]\ntoken_file = \"{}\"\n", dir.path().display()),
        &[],
    )
    .unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
    let both = file(&format!("{TOKEN}\n"));
    let e = load(
        &format!("[auth]\ntoken_file = \"{}\"\n", both.path().display()),
        &[("LOOPD_AUTH_TOKEN", TOKEN)],
    )
    .unwrap_err();
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn named_tokens_carry_their_scopes_and_the_unnamed_one_has_all_but_exec() {
    let f = file("dashboard-token-0001\n");
    let s = load(
        &format!(
            "[auth]\ntoken = \"{TOKEN}\"\n\
             [[auth.tokens]]\nname = \"dashboard\"\ntoken_file = \"{}\"\nscopes = [\"read\"]\n\
             [[auth.tokens]]\nname = \"ci\"\ntoken = \"ci-token-00000001\"\nscopes = [\"submit\", \"exec\"]\n",
            f.path().display()
        ),
        &[],
    )
    .unwrap();
    let tokens = s.client_tokens();
    let names: Vec<(&str, Vec<&str>)> = tokens
        .iter()
        .map(|t| (t.name.as_str(), t.scopes.names()))
        .collect();
    assert_eq!(
        names,
        [
            ("default", vec!["read", "submit", "admin"]),
            ("dashboard", vec!["read"]),
            ("ci", vec!["read", "submit", "exec"]),
        ]
    );
    assert_eq!(tokens[1].secret.expose(), "dashboard-token-0001");
    assert!(!tokens[0].scopes.has(Scope::Exec));
}

#[test]
fn named_tokens_need_a_plain_unique_name_a_value_and_scopes() {
    let t = |body: &str| load(&format!("[auth]\n{body}"), &[]).unwrap_err();
    let e =
        t("[[auth.tokens]]\nname = \"a b\"\ntoken = \"tok-000000000001\"\nscopes = [\"read\"]\n");
    assert!(e.contains("name"), "{e}");
    let e = t("[[auth.tokens]]\nname = \"a\"\ntoken = \"tok-000000000001\"\nscopes = [\"read\"]\n[[auth.tokens]]\nname = \"a\"\ntoken = \"tok-000000000002\"\nscopes = [\"read\"]\n");
    assert!(e.contains("twice"), "{e}");
    let e = t("[[auth.tokens]]\nname = \"a\"\nscopes = [\"read\"]\n");
    assert!(e.contains("token_file is required"), "{e}");
    let e = t("[[auth.tokens]]\nname = \"a\"\ntoken = \"tok-000000000001\"\nscopes = []\n");
    assert!(e.contains("scopes"), "{e}");
    let e = t("[[auth.tokens]]\nname = \"a\"\ntoken = \"tok-000000000001\"\nscopes = [\"root\"]\n");
    assert!(e.contains("root"), "{e}");
    let e = t(&format!("token = \"{TOKEN}\"\n[[auth.tokens]]\nname = \"a\"\ntoken = \"{TOKEN}\"\nscopes = [\"read\"]\n"));
    assert!(e.contains("same value") && !e.contains(TOKEN), "{e}");
}

#[test]
fn request_commands_are_allowed_by_default_only_on_a_single_host_on_loopback() {
    let s = load("", &[]).unwrap();
    assert!(s.request_commands_allowed());
    let c = load(
        "role = \"controller\"\n[storage]\ntype = \"postgres\"\nurl = \"postgres://a@b/c\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.role, Role::Controller);
    assert!(!c.request_commands_allowed());
    let wide = load("bind = \"0.0.0.0:7700\"\n", &[("LOOPD_AUTH_TOKEN", TOKEN)]).unwrap();
    assert!(!wide.request_commands_allowed());
    let opted = load("[auth]\nallow_request_commands = false\n", &[]).unwrap();
    assert!(!opted.request_commands_allowed());
    let c = load(
        "role = \"controller\"\n[storage]\ntype = \"postgres\"\nurl = \"postgres://a@b/c\"\n[auth]\nallow_request_commands = true\n",
        &[],
    )
    .unwrap();
    assert!(c.request_commands_allowed());
}
