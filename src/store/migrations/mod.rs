//! Versioned schema migrations, one list per engine. A `schema_version` table holds the
//! version; at open, each numbered migration above it runs in its own transaction, in order,
//! together with the version bump. A database newer than this binary is refused untouched.

pub mod postgres;
pub mod sqlite;

use consultant_actors::ports::StoreError;

pub fn too_new(found: i64, known: i64) -> StoreError {
    StoreError::Io(format!("database schema version {found} is newer than this binary supports ({known}); upgrade the consultant binary"))
}

pub(crate) fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("upgrading the database schema: {e}"))
}
