//! What a client token may do: its scopes, and which scope each kind of request needs. Pure;
//! the settings name scopes, the HTTP layer checks them.
//!
//! `read` < `submit` < `admin` is a ladder (a scope grants those below it); `exec` stands
//! apart: no other scope implies it, and it lets a run request name commands or paths that
//! are otherwise taken only from the repository's `.loop/config`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One permission a client token can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET routes and SSE streams.
    Read,
    /// Create and control runs (and read).
    Submit,
    /// Revoke workers (and everything submit may do).
    Admin,
    /// Name commands or paths in a run request (never implied).
    Exec,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Submit, Scope::Admin, Scope::Exec];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
            Scope::Exec => "exec",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Submit => 2,
            Scope::Admin => 4,
            Scope::Exec => 8,
        }
    }

    /// The scopes this one grants, itself included.
    fn grants(self) -> u8 {
        match self {
            Scope::Read => Scope::Read.bit(),
            Scope::Submit => Scope::Read.bit() | Scope::Submit.bit(),
            Scope::Admin => Scope::Read.bit() | Scope::Submit.bit() | Scope::Admin.bit(),
            Scope::Exec => Scope::Exec.bit(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of scopes a token holds, with the ladder applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// The scopes named, each with what it grants.
    pub fn of(list: &[Scope]) -> Scopes {
        Scopes(list.iter().fold(0, |acc, s| acc | s.grants()))
    }

    /// The single unnamed `auth.token` (and an open API): read, submit and admin; no exec.
    pub fn unnamed() -> Scopes {
        Scopes::of(&[Scope::Admin])
    }

    /// Whether `scope` is held.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The held scopes, for messages.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .iter()
            .filter(|s| self.has(**s))
            .map(|s| s.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_grants_the_ones_below_it_but_never_exec() {
        let read = Scopes::of(&[Scope::Read]);
        assert!(read.has(Scope::Read) && !read.has(Scope::Submit));
        let submit = Scopes::of(&[Scope::Submit]);
        assert!(submit.has(Scope::Read) && submit.has(Scope::Submit));
        assert!(!submit.has(Scope::Admin));
        let admin = Scopes::unnamed();
        assert_eq!(admin.names(), ["read", "submit", "admin"]);
        assert!(!admin.has(Scope::Exec));
        let exec = Scopes::of(&[Scope::Submit, Scope::Exec]);
        assert_eq!(exec.names(), ["read", "submit", "exec"]);
        assert!(!Scopes::of(&[Scope::Exec]).has(Scope::Read));
    }
}
