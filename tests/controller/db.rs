//! Direct reads of the controller's database: row fingerprints (to check that a
//! refused request changed nothing), stored events, instance pins, held output.

use crate::harness::Ctl;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use serde_json::Value;

impl Ctl {
    pub fn pg(&self) -> PgConnection {
        PgConnection::establish(&self.db.url).expect("connect to the test database")
    }

    /// A fingerprint of every row a worker request could change (lease expiry times and
    /// worker liveness left out: heartbeats move them).
    pub fn snapshot(&self) -> Vec<(i64, String)> {
        #[derive(QueryableByName)]
        struct Digest {
            #[diesel(sql_type = BigInt)]
            n: i64,
            #[diesel(sql_type = Text)]
            md5: String,
        }
        let queries = [
            "SELECT count(*) AS n, coalesce(md5(string_agg(id || status || coalesce(waiting_reason,'') || coalesce(failure_reason,''), ',' ORDER BY id)), '') AS md5 FROM runs",
            "SELECT count(*) AS n, coalesce(md5(string_agg(id || status || lease_epoch::text || infra_attempts::text || coalesce(worker_id,'') || coalesce(exit_code::text,'') || coalesce(completion_digest,'') || coalesce(output_tail,''), ',' ORDER BY id)), '') AS md5 FROM steps",
            "SELECT count(*) AS n, coalesce(md5(string_agg(id, ',' ORDER BY id)), '') AS md5 FROM events",
            "SELECT count(*) AS n, coalesce(md5(string_agg(id || sha256, ',' ORDER BY id)), '') AS md5 FROM artifacts",
            "SELECT count(*) AS n, coalesce(md5(string_agg(id || token_hash || coalesce(instance_id,''), ',' ORDER BY id)), '') AS md5 FROM workers",
            "SELECT count(*) AS n, coalesce(md5(string_agg(step_id || worker_id || epoch::text, ',' ORDER BY step_id)), '') AS md5 FROM leases",
            "SELECT count(*) AS n, coalesce(md5(string_agg(step_id || bytes::text || units::text, ',' ORDER BY step_id)), '') AS md5 FROM output_heads",
        ];
        let mut c = self.pg();
        queries
            .iter()
            .map(|q| {
                let d: Digest = diesel::sql_query(*q).get_result(&mut c).expect(q);
                (d.n, d.md5)
            })
            .collect()
    }

    /// The instance id a worker is pinned to, as stored.
    pub fn instance_of(&self, worker: &str) -> Option<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Nullable<Text>)]
            instance_id: Option<String>,
        }
        let r: Row = diesel::sql_query("SELECT instance_id FROM workers WHERE id = $1")
            .bind::<Text, _>(worker)
            .get_result(&mut self.pg())
            .expect("worker row");
        r.instance_id
    }

    /// When a step was (last) queued, by the database clock.
    pub fn queued_at(&self, step: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            queued_at: i64,
        }
        let r: Row = diesel::sql_query("SELECT queued_at FROM steps WHERE id = $1")
            .bind::<Text, _>(step)
            .get_result(&mut self.pg())
            .expect("step row");
        r.queued_at
    }

    /// Stored events of `types` (all types when empty), oldest first.
    pub fn events(&self, types: &[&str]) -> Vec<Event> {
        let rows: Vec<Event> = diesel::sql_query(
            "SELECT event_type, run_id, step_id, payload_json, created_at FROM events \
             ORDER BY created_at, run_seq NULLS LAST, id",
        )
        .load(&mut self.pg())
        .expect("events");
        rows.into_iter()
            .filter(|e| types.is_empty() || types.contains(&e.event_type.as_str()))
            .collect()
    }

    /// Events of one step, of `types`.
    pub fn step_events(&self, step: &str, types: &[&str]) -> Vec<Event> {
        self.events(types)
            .into_iter()
            .filter(|e| e.step_id.as_deref() == Some(step))
            .collect()
    }

    /// Bytes of live output the controller holds for a step.
    pub fn output_size(&self, _run: &str, step: &str) -> u64 {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let r: Option<Row> =
            diesel::sql_query("SELECT bytes AS n FROM output_heads WHERE step_id = $1")
                .bind::<Text, _>(step)
                .get_result(&mut self.pg())
                .optional()
                .expect("output_heads");
        r.map_or(0, |r| r.n as u64)
    }
}

/// One stored event.
#[derive(QueryableByName, Debug, Clone)]
pub struct Event {
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub run_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub step_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub payload_json: String,
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
}

impl Event {
    pub fn payload(&self) -> Value {
        serde_json::from_str(&self.payload_json).expect("payload JSON")
    }
}
