//! Live step output kept in Postgres, where every controller on the database reads it (the
//! controller role's output store; `output_store` decides when it is used). A step's output
//! is its chunks (`output_chunks`: the bytes one append added, where they start in bytes and
//! in UTF-16 code units) and its totals (`output_heads`). Appends run under the step's row
//! lock, taken by [`held`], so two holders' posts are applied one after the other. Postgres
//! only: on SQLite each call answers [`DbError::Reply`].

use super::{Conn, DbError};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Binary, Nullable, Text};

/// What a step's output holds: bytes and UTF-16 code units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub bytes: u64,
    pub units: u64,
}

/// One stored chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub step_id: String,
    /// Where it starts in the step's output: byte, and UTF-16 code unit.
    pub byte_at: u64,
    pub unit_at: u64,
    pub content: Vec<u8>,
}

#[derive(QueryableByName)]
struct HeadRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    bytes: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    units: Option<i64>,
}

#[derive(QueryableByName)]
struct StepHeadRow {
    #[diesel(sql_type = Text)]
    step_id: String,
    #[diesel(sql_type = BigInt)]
    bytes: i64,
    #[diesel(sql_type = BigInt)]
    units: i64,
}

#[derive(QueryableByName)]
struct ChunkRow {
    #[diesel(sql_type = Text)]
    step_id: String,
    #[diesel(sql_type = BigInt)]
    byte_at: i64,
    #[diesel(sql_type = BigInt)]
    unit_at: i64,
    #[diesel(sql_type = Binary)]
    content: Vec<u8>,
}

impl From<ChunkRow> for Chunk {
    fn from(r: ChunkRow) -> Chunk {
        Chunk {
            step_id: r.step_id,
            byte_at: r.byte_at as u64,
            unit_at: r.unit_at as u64,
            content: r.content,
        }
    }
}

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn pg(conn: &mut Conn) -> Result<&mut diesel::pg::PgConnection, DbError> {
    match conn {
        Conn::Pg(c) => Ok(&mut **c),
        Conn::Sqlite(_) => Err(DbError::Reply(
            "output in the database is kept on Postgres only".into(),
        )),
    }
}

/// Locks the step's row (already locked by a lease check in the same transaction: nothing
/// more) and then reads what its output holds. `None` when there is no such step. Two
/// statements: in read committed, a statement that waited for the lock would read the joined
/// totals as they were before the holder it waited for wrote them.
pub fn held(conn: &mut Conn, step_id: &str) -> Result<Option<Held>, DbError> {
    let c = pg(conn)?;
    let step: Option<Total> =
        diesel::sql_query("SELECT 1::bigint AS n FROM steps WHERE id = $1 FOR UPDATE")
            .bind::<Text, _>(step_id)
            .get_result(c)
            .optional()?;
    if step.is_none() {
        return Ok(None);
    }
    Ok(Some(size(conn, step_id)?))
}

/// Stores `added`, which starts where the step's output ends (`before`, read by [`held`] in
/// this transaction), and the step's new totals, in one statement.
pub fn append(
    conn: &mut Conn,
    run_id: &str,
    step_id: &str,
    before: Held,
    added: &[u8],
    added_units: u64,
) -> Result<(), DbError> {
    let c = pg(conn)?;
    diesel::sql_query(
        "WITH chunk AS (INSERT INTO output_chunks (step_id, byte_at, unit_at, content) \
         VALUES ($1, $3, $4, $5)) \
         INSERT INTO output_heads (step_id, run_id, bytes, units) VALUES ($1, $2, $6, $7) \
         ON CONFLICT (step_id) DO UPDATE SET bytes = EXCLUDED.bytes, units = EXCLUDED.units",
    )
    .bind::<Text, _>(step_id)
    .bind::<Text, _>(run_id)
    .bind::<BigInt, _>(before.bytes as i64)
    .bind::<BigInt, _>(before.units as i64)
    .bind::<Binary, _>(added)
    .bind::<BigInt, _>((before.bytes + added.len() as u64) as i64)
    .bind::<BigInt, _>((before.units + added_units) as i64)
    .execute(c)?;
    Ok(())
}

/// What a step's output holds, without locking anything.
pub fn size(conn: &mut Conn, step_id: &str) -> Result<Held, DbError> {
    let c = pg(conn)?;
    let row: Option<HeadRow> =
        diesel::sql_query("SELECT bytes, units FROM output_heads WHERE step_id = $1")
            .bind::<Text, _>(step_id)
            .get_result(c)
            .optional()?;
    Ok(row
        .map(|r| Held {
            bytes: r.bytes.unwrap_or(0) as u64,
            units: r.units.unwrap_or(0) as u64,
        })
        .unwrap_or_default())
}

/// The totals of every step of a run that has output, by step id.
pub fn of_run(conn: &mut Conn, run_id: &str) -> Result<Vec<(String, Held)>, DbError> {
    let c = pg(conn)?;
    let rows: Vec<StepHeadRow> =
        diesel::sql_query("SELECT step_id, bytes, units FROM output_heads WHERE run_id = $1")
            .bind::<Text, _>(run_id)
            .load(c)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let h = Held {
                bytes: r.bytes as u64,
                units: r.units as u64,
            };
            (r.step_id, h)
        })
        .collect())
}

/// The run-wide unit where `step_id`'s output starts: the units of the run's steps before it.
pub fn step_start(conn: &mut Conn, step_id: &str) -> Result<u64, DbError> {
    let c = pg(conn)?;
    let t: Total = diesel::sql_query(
        "SELECT coalesce(sum(h.units), 0)::bigint AS n FROM steps me \
         JOIN steps s ON s.run_id = me.run_id AND s.seq < me.seq \
         JOIN output_heads h ON h.step_id = s.id WHERE me.id = $1",
    )
    .bind::<Text, _>(step_id)
    .get_result(c)?;
    Ok(t.n as u64)
}

/// The chunk holding unit `unit` of a step's output (the last one starting at or before it).
pub fn chunk_at_unit(conn: &mut Conn, step_id: &str, unit: u64) -> Result<Option<Chunk>, DbError> {
    let c = pg(conn)?;
    let row: Option<ChunkRow> = diesel::sql_query(
        "SELECT step_id, byte_at, unit_at, content FROM output_chunks \
         WHERE step_id = $1 AND unit_at <= $2 ORDER BY unit_at DESC, byte_at DESC LIMIT 1",
    )
    .bind::<Text, _>(step_id)
    .bind::<BigInt, _>(unit as i64)
    .get_result(c)
    .optional()?;
    Ok(row.map(Chunk::from))
}

/// Up to `max` bytes of a step's output from byte `offset` (fewer at its end).
pub fn read(conn: &mut Conn, step_id: &str, offset: u64, max: usize) -> Result<Vec<u8>, DbError> {
    let c = pg(conn)?;
    let rows: Vec<ChunkRow> = diesel::sql_query(
        "SELECT step_id, byte_at, unit_at, content FROM output_chunks WHERE step_id = $1 \
         AND byte_at >= coalesce((SELECT max(byte_at) FROM output_chunks \
                                  WHERE step_id = $1 AND byte_at <= $2), 0) \
         AND byte_at < $2 + $3 ORDER BY byte_at",
    )
    .bind::<Text, _>(step_id)
    .bind::<BigInt, _>(offset as i64)
    .bind::<BigInt, _>(max as i64)
    .load(c)?;
    let mut out = Vec::new();
    let mut at = offset;
    for r in rows {
        let (start, content) = (r.byte_at as u64, r.content);
        let end = start + content.len() as u64;
        if start > at || end <= at {
            // Chunks are contiguous; anything else is past what was asked or before it.
            if start > at {
                break;
            }
            continue;
        }
        out.extend_from_slice(&content[(at - start) as usize..]);
        at = end;
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    Ok(out)
}

/// The chunks that start at the given (step, byte) places, in no particular order.
pub fn chunks(conn: &mut Conn, places: &[(String, u64)]) -> Result<Vec<Chunk>, DbError> {
    let c = pg(conn)?;
    let steps: Vec<&str> = places.iter().map(|p| p.0.as_str()).collect();
    let bytes: Vec<i64> = places.iter().map(|p| p.1 as i64).collect();
    let rows: Vec<ChunkRow> = diesel::sql_query(
        "SELECT o.step_id, o.byte_at, o.unit_at, o.content FROM output_chunks o \
         JOIN unnest($1::text[], $2::bigint[]) AS p(step_id, byte_at) \
         ON o.step_id = p.step_id AND o.byte_at = p.byte_at",
    )
    .bind::<Array<Text>, _>(steps)
    .bind::<Array<BigInt>, _>(bytes)
    .load(c)?;
    Ok(rows.into_iter().map(Chunk::from).collect())
}
