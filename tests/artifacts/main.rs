//! The artifact store against a real directory (`fs`) and against an in-process S3 server
//! (`s3`): the same behaviour on both, plus what only S3 can do (be down, come back).

#[path = "../support/s3.rs"]
mod s3;

mod helpers;
mod on_both_stores;
mod s3_outages;
