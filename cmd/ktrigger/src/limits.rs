//! Memory limits of the engine, the same flags for `run` and `controller`.

use clap::Args;
use ktrigger_core::{DedupLimits, EngineOptions, QueueLimits};

/// How much memory queued deliveries and dedup keys may take.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Most bytes one trigger's queued and in-flight deliveries may hold, estimated from the
    /// events (e.g. 512Ki, 8Mi); over it, deliveries are dead-lettered.
    #[arg(long, default_value = "8Mi", value_parser = parse_bytes)]
    max_queue_bytes_per_trigger: u64,
    /// Most bytes the deliveries of all triggers may hold together; each running trigger may
    /// always use an equal part of it (this divided by the number of triggers).
    #[arg(long, default_value = "64Mi", value_parser = parse_bytes)]
    max_queue_bytes: u64,
    /// Most dedup keys one trigger keeps; the least recently seen is forgotten first.
    #[arg(long, default_value_t = ktrigger_core::DEFAULT_MAX_DEDUP_KEYS_PER_TRIGGER)]
    max_dedup_keys_per_trigger: usize,
    /// Most dedup keys all triggers keep together; when reached, the trigger holding the most
    /// keys forgets its least recently seen one.
    #[arg(long, default_value_t = ktrigger_core::DEFAULT_MAX_DEDUP_KEYS)]
    max_dedup_keys: usize,
}

impl MemoryArgs {
    /// `options` with these limits.
    pub fn apply(&self, options: EngineOptions) -> EngineOptions {
        EngineOptions {
            queue_limits: QueueLimits { per_trigger: self.max_queue_bytes_per_trigger, total: self.max_queue_bytes },
            dedup_limits: DedupLimits { keys_per_trigger: self.max_dedup_keys_per_trigger, keys: self.max_dedup_keys },
            ..options
        }
    }
}

/// A byte size: a whole number, optionally followed by Ki, Mi or Gi as in Kubernetes quantities.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use a number of bytes, or Ki, Mi or Gi")),
    };
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a byte size such as 512Ki or 8Mi"))?;
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_BYTES_PER_TRIGGER};

    #[test]
    fn byte_sizes_take_binary_units_and_refuse_anything_else() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512Ki"), Ok(512 * 1024));
        assert_eq!(parse_bytes("8Mi"), Ok(DEFAULT_MAX_QUEUE_BYTES_PER_TRIGGER));
        assert_eq!(parse_bytes("64Mi"), Ok(DEFAULT_MAX_QUEUE_BYTES));
        assert!(parse_bytes("8MB").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999Gi").unwrap_err().contains("too large"));
    }
}
