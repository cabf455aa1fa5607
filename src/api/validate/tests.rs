//! The body checks of create-run and register requests.

use super::*;
use serde_json::json;

fn req(extra: serde_json::Value) -> CreateRunRequest {
    let mut v = json!({"spec_path": "specs/a.md", "workspace_root": "/srv/ws"});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

fn refused(extra: serde_json::Value) -> String {
    match create_run(&mut req(extra.clone())) {
        Err(Invalid::Request(m)) => m,
        other => panic!("{extra} gave {other:?}"),
    }
}

#[test]
fn names_are_short_and_plain() {
    let mut ok = req(json!({"name": "a".repeat(200)}));
    assert_eq!(create_run(&mut ok), Ok(()));
    assert!(refused(json!({"name": "a".repeat(201)})).contains("at most 200"));
    for bad in ["two\nlines", "\u{1b}[2J", "rtl\u{202E}", "\u{FFFD}"] {
        assert!(refused(json!({ "name": bad })).contains("control characters"));
    }
}

#[test]
fn labels_are_at_most_32_of_at_most_64_plain_characters() {
    let labels: Vec<String> = (0..32).map(|i| format!("l{i}")).collect();
    assert_eq!(create_run(&mut req(json!({ "labels": labels }))), Ok(()));
    let labels: Vec<String> = (0..33).map(|i| format!("l{i}")).collect();
    assert!(refused(json!({ "labels": labels })).contains("at most 32"));
    assert!(refused(json!({"labels": ["x".repeat(65)]})).contains("invalid label"));
    assert!(refused(json!({"labels": ["has space"]})).contains("invalid label"));
}

#[test]
fn a_relative_workspace_root_is_refused_for_shared_fs_but_is_a_label_for_git() {
    assert!(refused(json!({"workspace_root": "ws"})).contains("absolute"));
    assert!(refused(json!({"workspace_root": "../etc"})).contains("absolute"));
    let mut git = req(json!({"workspace_root": "team/app", "repo_url": "file:///r"}));
    assert_eq!(create_run(&mut git), Ok(()));
}

#[test]
fn a_text_override_becomes_an_object_and_a_path_is_never_read() {
    let mut r = req(json!({"config_override": "reviewer=false\n# c\niterations = 3\n"}));
    create_run(&mut r).unwrap();
    assert_eq!(
        r.config_override,
        Some(ConfigOverride::Object(
            json!({"reviewer": "false", "iterations": "3"})
                .as_object()
                .unwrap()
                .clone()
        ))
    );
    let mut j = req(json!({"config_override": "{\"reviewer\": false}"}));
    create_run(&mut j).unwrap();
    assert!(matches!(j.config_override, Some(ConfigOverride::Object(m)) if m["reviewer"] == false));
    // A path is not key=value text: refused with what to do, and without echoing it.
    let m = refused(json!({"config_override": "/etc/shadow"}));
    assert!(m.contains("reads no files") && !m.contains("shadow"), "{m}");
    assert!(refused(json!({"config_override": "{nope"})).contains("not a JSON object"));
    // A path with a `=` in it is key=value text, but its key is no config key.
    let m = refused(json!({"config_override": "/srv/a=b.conf"}));
    assert!(m.contains("reads no files") && !m.contains("srv"), "{m}");
    assert!(refused(json!({"config_override": {"Agent Cmd": "x"}})).contains("snake_case"));
}

#[test]
fn an_override_past_the_cap_is_too_large() {
    let big = format!("model={}", "a".repeat(MAX_OVERRIDE_BYTES));
    let e = create_run(&mut req(json!({ "config_override": big })));
    assert!(matches!(e, Err(Invalid::TooLarge(_))), "{e:?}");
    let obj = json!({"config_override": {"model": "a".repeat(MAX_OVERRIDE_BYTES)}});
    assert!(matches!(
        create_run(&mut req(obj)),
        Err(Invalid::TooLarge(_))
    ));
}

#[test]
fn command_keys_lists_what_names_commands_or_paths_in_either_form() {
    let mut r = req(json!({
        "config_override": "agent_cmd=sh x\nreviewer=false\nverify_cmds=make",
        "worktree_path_template": "/tmp/x"
    }));
    create_run(&mut r).unwrap();
    assert_eq!(
        command_keys(&r),
        ["agent_cmd", "verify_cmds", "worktree_path_template"]
    );
    let mut r = req(json!({"config_override": {"prompt_file": "/etc/passwd", "model": "m"}}));
    create_run(&mut r).unwrap();
    assert_eq!(command_keys(&r), ["prompt_file"]);
    let mut plain = req(json!({"config_override": {"reviewer": false}, "base_branch": "main"}));
    create_run(&mut plain).unwrap();
    assert!(command_keys(&plain).is_empty());
}

#[test]
fn registration_checks_the_instance_id_and_label_count_and_defaults_capabilities() {
    let r: RegisterRequest = serde_json::from_value(json!({"hostname": "h"})).unwrap();
    assert_eq!(r.capabilities.slots, 1, "no capabilities: one slot");
    assert_eq!(register(&r), Ok(()));
    for bad in ["", "has space", "tab\t", "é"] {
        let r: RegisterRequest =
            serde_json::from_value(json!({"hostname": "h", "instance_id": bad})).unwrap();
        assert!(register(&r).is_err(), "{bad:?}");
    }
    let long: RegisterRequest =
        serde_json::from_value(json!({"hostname": "h", "instance_id": "i".repeat(129)})).unwrap();
    assert!(register(&long).is_err());
    let labels: Vec<String> = (0..33).map(|i| format!("l{i}")).collect();
    let many: RegisterRequest = serde_json::from_value(
        json!({"hostname": "h", "capabilities": {"labels": labels, "slots": 1, "version": "v"}}),
    )
    .unwrap();
    assert!(register(&many).is_err());
}
