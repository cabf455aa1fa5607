//! The diesel table definitions shared by both backends (generated, then kept by hand).

// @generated automatically by Diesel CLI.

diesel::table! {
    api_accounts (account) {
        account -> Text,
        concurrency_limit -> Int4,
        max_concurrent -> Int4,
        successes -> Int4,
        last_signal -> Nullable<Text>,
        last_signal_at -> Nullable<Int8>,
        decreased_at -> Nullable<Int8>,
        pause_until -> Nullable<Int8>,
        updated_at -> Int8,
        ceiling -> Nullable<Int4>,
    }
}

diesel::table! {
    artifacts (id) {
        id -> Text,
        run_id -> Text,
        step_id -> Nullable<Text>,
        name -> Text,
        kind -> Text,
        size -> Int8,
        sha256 -> Text,
        store -> Text,
        object_key -> Text,
        created_at -> Int8,
    }
}

diesel::table! {
    events (id) {
        id -> Text,
        run_id -> Nullable<Text>,
        run_seq -> Nullable<Int8>,
        step_id -> Nullable<Text>,
        event_type -> Text,
        payload_json -> Text,
        created_at -> Int8,
    }
}

diesel::table! {
    runs (id) {
        id -> Text,
        name -> Text,
        name_source -> Text,
        status -> Text,
        workspace_root -> Text,
        spec_path -> Text,
        plan_path -> Nullable<Text>,
        worktree_json -> Nullable<Text>,
        worktree_cleanup_status -> Nullable<Text>,
        worktree_cleaned_at -> Nullable<Int8>,
        config_json -> Nullable<Text>,
        created_at -> Int8,
        updated_at -> Int8,
        review_status -> Text,
        review_action_at -> Nullable<Int8>,
        pr_url -> Nullable<Text>,
        merge_commit -> Nullable<Text>,
        workspace_source -> Text,
        repo_url -> Nullable<Text>,
        repo_ref -> Nullable<Text>,
        artifact_store -> Text,
        labels -> Text,
        waiting_reason -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        started_at -> Nullable<Int8>,
        ended_at -> Nullable<Int8>,
        pushed_branch -> Nullable<Text>,
        pushed_commit -> Nullable<Text>,
        run_branch -> Nullable<Text>,
    }
}

diesel::table! {
    run_state (run_id) {
        run_id -> Text,
        iterations_done -> Int4,
        verify_failures -> Int4,
        review_failures -> Int4,
        watchdog_rewrites -> Int4,
        pending_prompt -> Nullable<Text>,
        runner_notes -> Nullable<Text>,
        last_worker_id -> Nullable<Text>,
        checkpoint_name -> Nullable<Text>,
        checkpoint_head -> Nullable<Text>,
        finishing -> Nullable<Text>,
        event_seq -> Int8,
    }
}

diesel::table! {
    steps (id) {
        id -> Text,
        run_id -> Text,
        seq -> Int4,
        phase -> Text,
        status -> Text,
        attempt -> Int4,
        infra_attempts -> Int4,
        is_final -> Bool,
        settled -> Bool,
        queued_at -> Int8,
        started_at -> Nullable<Int8>,
        ended_at -> Nullable<Int8>,
        exit_code -> Nullable<Int4>,
        prompt -> Nullable<Text>,
        prompt_path -> Nullable<Text>,
        output_path -> Nullable<Text>,
        output_tail -> Nullable<Text>,
        runner_notes -> Nullable<Text>,
        output_size -> Int8,
        completion_detected -> Nullable<Bool>,
        worker_id -> Nullable<Text>,
        lease_epoch -> Int8,
        required_labels -> Text,
        preferred_worker_id -> Nullable<Text>,
        failure_reason -> Nullable<Text>,
        completion_digest -> Nullable<Text>,
        lease_granted_at -> Nullable<Int8>,
        lease_expires_at -> Nullable<Int8>,
        not_before -> Nullable<Int8>,
        account -> Nullable<Text>,
    }
}

diesel::table! {
    step_usage (step_id) {
        step_id -> Text,
        run_id -> Text,
        model -> Text,
        total_cost_usd -> Double,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cache_creation_input_tokens -> Int8,
        cache_read_input_tokens -> Int8,
        num_turns -> Int8,
        duration_api_ms -> Int8,
        is_error -> Bool,
        subtype -> Nullable<Text>,
        session_id -> Nullable<Text>,
        created_at -> Int8,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        hostname -> Text,
        token_hash -> Text,
        instance_id -> Nullable<Text>,
        labels -> Text,
        slots -> Int4,
        version -> Text,
        status -> Text,
        registered_at -> Int8,
        last_heartbeat_at -> Int8,
        metrics_json -> Nullable<Text>,
    }
}

diesel::joinable!(artifacts -> runs (run_id));
diesel::joinable!(run_state -> runs (run_id));
diesel::joinable!(steps -> runs (run_id));
diesel::joinable!(step_usage -> runs (run_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_accounts,
    artifacts,
    events,
    run_state,
    runs,
    step_usage,
    steps,
    workers
);
