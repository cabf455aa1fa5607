//! Ids in request paths. Every id loopd hands out is a UUID string; anything else names nothing,
//! so it is answered 404 before it reaches storage (where a NUL byte, say, is an error of its
//! own and would surface as a 5xx). Used by the route handlers of `runs.rs`, `streams.rs` and
//! `workers.rs`.

use super::error::ApiError;

/// `raw` when it is a UUID, else a 404 naming `what`.
pub fn id(raw: String, what: &str) -> Result<String, ApiError> {
    match uuid::Uuid::try_parse(&raw) {
        Ok(_) => Ok(raw),
        Err(_) => Err(ApiError::not_found(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::id;

    #[test]
    fn only_uuids_are_ids() {
        let good = uuid::Uuid::now_v7().to_string();
        assert_eq!(id(good.clone(), "run").ok(), Some(good));
        for bad in ["", "not-a-uuid", "\0", "x';--", "../etc"] {
            let e = id(bad.to_string(), "run").expect_err(bad);
            assert_eq!(e.status.as_u16(), 404, "{bad:?}");
        }
    }
}
