//! Settings (GUCs) of the extension.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Payloads longer than this many bytes are rejected before they are parsed (`trackway.max_payload_bytes`).
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1 << 20);

/// Registers the settings; called from `_PG_init`.
pub fn register() {
    GucRegistry::define_int_guc(
        c"trackway.max_payload_bytes",
        c"Largest accepted position payload, in bytes.",
        c"Payloads above this size are reported as invalid without being parsed.",
        &MAX_PAYLOAD_BYTES,
        1024,
        64 << 20,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
}

/// The current payload limit.
pub fn max_payload_bytes() -> usize {
    usize::try_from(MAX_PAYLOAD_BYTES.get()).unwrap_or(trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES)
}
