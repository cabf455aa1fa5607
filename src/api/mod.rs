//! Wire types of the HTTP contract (API.md), shared by the server, the worker's HTTP control
//! plane and the CLI.

pub mod review;
pub mod runs;
pub mod validate;
pub mod workers;

pub use review::*;
pub use runs::*;
pub use workers::*;
