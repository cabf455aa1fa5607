//! Parsing of the agent output formats.

use super::*;
use serde_json::json;

#[test]
fn text_is_extracted_from_the_three_documented_event_shapes() {
    let message = json!({"type":"assistant","message":{"content":[
        {"type":"text","text":"a"},{"type":"tool_use","name":"x"},{"type":"text","text":"b"}]}});
    assert_eq!(extract_text(&message).as_deref(), Some("ab"));
    let wrapped = json!({"type":"stream_event","event":{"type":"content_block_delta",
        "delta":{"type":"text_delta","text":"c"}}});
    assert_eq!(extract_text(&wrapped).as_deref(), Some("c"));
    let raw = json!({"type":"content_block_delta","delta":{"type":"text_delta","text":"d"}});
    assert_eq!(extract_text(&raw).as_deref(), Some("d"));
}

#[test]
fn other_events_contribute_nothing() {
    for event in [
        json!({"type":"system","subtype":"init"}),
        json!({"type":"result","result":"final text"}),
        json!({"type":"user","message":{"content":[{"type":"text","text":"no"}]}}),
        json!({"type":"assistant","message":{"content":[{"type":"tool_use"}]}}),
        json!({"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{"}}),
        json!({"no_type": true}),
    ] {
        assert_eq!(extract_text(&event), None, "{event}");
    }
}

#[test]
fn transient_api_errors_are_recognised() {
    assert!(is_transient_text("API Error: 503 Service Unavailable"));
    assert!(is_transient_text("done\nAPI Error: 500 oops"));
    assert!(is_transient_text("the API is overloaded"));
    assert!(!is_transient_text("API Error: 400 bad request"));
}

struct Files {
    _dir: tempfile::TempDir,
    log: PathBuf,
    jsonl: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    Files {
        log: dir.path().join("out.log"),
        jsonl: dir.path().join("out.jsonl"),
        _dir: dir,
    }
}

fn feed(output: AgentOutput, f: &Files, chunks: &[&[u8]]) -> AgentSink {
    let mut sink = AgentSink::new(output, &f.log, &f.jsonl).unwrap();
    for chunk in chunks {
        sink.write(Stream::Stdout, chunk).unwrap();
    }
    sink.finish().unwrap();
    sink
}

#[test]
fn ndjson_lines_split_across_chunks_and_an_unterminated_last_line_are_parsed() {
    let f = files();
    let line = br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}"#;
    let (a, b) = line.split_at(20);
    let sink = feed(AgentOutput::Auto, &f, &[b"\n  \n", a, b, b"\n", line]);
    assert_eq!(std::fs::read_to_string(&f.log).unwrap(), "hihi");
    assert_eq!(sink.text.total_bytes(), 4);
    assert_eq!(
        std::fs::read_to_string(&f.jsonl).unwrap().lines().count(),
        2
    );
}

#[test]
fn a_line_over_the_cap_goes_to_the_jsonl_file_unparsed() {
    let f = files();
    let big = vec![b'x'; LINE_CAP + 10];
    let after = br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"ok"}}"#;
    feed(
        AgentOutput::StreamJson,
        &f,
        &[
            &big[..LINE_CAP / 2],
            &big[LINE_CAP / 2..],
            b"\n",
            after,
            b"\n",
        ],
    );
    assert_eq!(std::fs::read_to_string(&f.log).unwrap(), "ok");
    let jsonl = std::fs::read(&f.jsonl).unwrap();
    assert_eq!(jsonl.len(), big.len() + 1 + after.len() + 1);
}

#[test]
fn whole_messages_start_on_a_new_line_but_deltas_do_not() {
    let f = files();
    let msg = |t: &str| {
        format!(
            "{}\n",
            json!({"type":"assistant","message":{"content":[{"type":"text","text":t}]}})
        )
    };
    let delta = |t: &str| {
        format!(
            "{}\n",
            json!({"type":"content_block_delta","delta":{"type":"text_delta","text":t}})
        )
    };
    let input = [
        msg("one"),
        delta("two"),
        delta("three"),
        msg("four\n"),
        msg("five"),
    ]
    .concat();
    feed(AgentOutput::Auto, &f, &[input.as_bytes()]);
    assert_eq!(
        std::fs::read_to_string(&f.log).unwrap(),
        "onetwothree\nfour\nfive"
    );
}

#[test]
fn stderr_is_kept_apart_from_the_text() {
    let f = files();
    let mut sink = AgentSink::new(AgentOutput::Text, &f.log, &f.jsonl).unwrap();
    sink.write(Stream::Stderr, b"warning\n").unwrap();
    sink.write(Stream::Stdout, b"text").unwrap();
    sink.finish().unwrap();
    assert_eq!(std::fs::read_to_string(&f.log).unwrap(), "text");
    assert_eq!(sink.stderr.text(), "warning\n");
    assert_eq!(sink.small_output().as_deref(), Some("text"));
}
