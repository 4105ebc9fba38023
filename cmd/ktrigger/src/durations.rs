//! Reading duration flags (`--shutdown-grace 30s`, `--resync 10m`).

use std::time::Duration;

/// A duration as TriggerService files write them (`30s`, `5m`, `1h30m`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    ktrigger_api::parse_duration(text)
}

/// A duration as [`parse_duration`] reads it, or zero (`0`, `0s`) to turn something off.
pub(crate) fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match text.trim().trim_end_matches('s') {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}
