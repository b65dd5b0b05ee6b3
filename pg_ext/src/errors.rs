//! Wire-codec errors reported as PostgreSQL errors.

use pgrx::prelude::*;
use trackway_wire::{DecodeError, ErrorKind};

/// The data-exception SQLSTATE (class 22) for a codec error.
pub fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
    match kind {
        ErrorKind::TooLarge => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::Syntax => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        ErrorKind::Missing => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        ErrorKind::WrongType => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::OutOfRange => PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        ErrorKind::Unsupported => PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
    }
}

/// Raises `error` as an ERROR; the message starts with the field path.
pub fn raise(error: &DecodeError) -> ! {
    ereport!(ERROR, sqlstate(error.kind), error.to_string());
}
