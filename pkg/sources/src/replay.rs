//! Replay protection for signed webhook requests: what the signature covers, the timestamp
//! window, and a bounded memory of the delivery ids already seen.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Largest accepted `tolerance`: ids are remembered this long at most.
pub(crate) const MAX_TOLERANCE: Duration = Duration::from_secs(3600);
/// Default `tolerance` when a timestamp or delivery-id header is set (Slack and Stripe use 5 minutes).
pub(crate) const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// Delivery ids remembered per route; beyond it the id closest to expiry is forgotten first.
pub(crate) const MAX_SEEN_IDS: usize = 4096;

/// One piece of the signed content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Timestamp,
    DeliveryId,
    Body,
}

/// What the HMAC covers, e.g. `v0:{timestamp}:{body}` (Slack) or `{timestamp}.{body}` (Stripe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedContent(Vec<Part>);

impl SignedContent {
    /// Just the raw body.
    pub(crate) fn body() -> Self {
        SignedContent(vec![Part::Body])
    }

    /// Reads a format with the placeholders `{timestamp}`, `{deliveryId}` and `{body}`; `{body}`
    /// must appear exactly once.
    pub(crate) fn parse(format: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let Some(len) = rest[start..].find('}') else {
                return Err(format!("{format:?} has a '{{' without '}}'"));
            };
            let part = match &rest[start + 1..start + len] {
                "timestamp" => Part::Timestamp,
                "deliveryId" => Part::DeliveryId,
                "body" => Part::Body,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; use {{timestamp}}, {{deliveryId}} or {{body}}"
                    ));
                }
            };
            parts.push(part);
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts.iter().filter(|p| **p == Part::Body).count() != 1 {
            return Err(format!("{format:?} must contain {{body}} exactly once"));
        }
        Ok(SignedContent(parts))
    }

    /// Whether the signature covers the timestamp.
    pub(crate) fn has_timestamp(&self) -> bool {
        self.0.contains(&Part::Timestamp)
    }

    /// Whether the signature covers the delivery id.
    pub(crate) fn has_delivery_id(&self) -> bool {
        self.0.contains(&Part::DeliveryId)
    }

    /// Feeds the signed bytes to `update` piece by piece, without copying the body.
    pub(crate) fn feed(&self, timestamp: &str, delivery_id: &str, body: &[u8], mut update: impl FnMut(&[u8])) {
        for part in &self.0 {
            match part {
                Part::Literal(text) => update(text.as_bytes()),
                Part::Timestamp => update(timestamp.as_bytes()),
                Part::DeliveryId => update(delivery_id.as_bytes()),
                Part::Body => update(body),
            }
        }
    }
}

/// Checks a Unix-seconds timestamp against `now`; returns the time after which the request can
/// no longer be accepted (the timestamp plus the tolerance).
pub(crate) fn check_timestamp(text: &str, now: i64, tolerance: Duration) -> Result<i64, &'static str> {
    let timestamp: i64 = text.trim().parse().map_err(|_| "the request timestamp is not a number of seconds")?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err("the request timestamp is outside the allowed window");
    }
    Ok(timestamp.saturating_add(tolerance))
}

/// Delivery ids seen recently (as SHA-256 digests, so any length costs the same), each until
/// its expiry, at most [`MAX_SEEN_IDS`].
#[derive(Debug, Default)]
pub(crate) struct SeenIds {
    expiry: HashMap<[u8; 16], i64>,
    by_expiry: BTreeSet<(i64, [u8; 16])>,
}

impl SeenIds {
    /// Records `id` until `expires` (Unix seconds, included); false when it was already recorded
    /// and has not expired at `now`.
    pub(crate) fn insert(&mut self, id: &str, expires: i64, now: i64) -> bool {
        while let Some(&(when, key)) = self.by_expiry.first() {
            if when >= now && self.expiry.len() < MAX_SEEN_IDS {
                break;
            }
            if when >= now {
                tracing::warn!(kept = MAX_SEEN_IDS, "delivery-id memory full; forgetting the id closest to expiry");
            }
            self.by_expiry.pop_first();
            self.expiry.remove(&key);
        }
        let key = digest(id);
        if self.expiry.contains_key(&key) {
            return false;
        }
        self.expiry.insert(key, expires);
        self.by_expiry.insert((expires, key));
        true
    }

    /// Forgets `id` again (its request was not handed to any trigger, so a retry must pass).
    pub(crate) fn remove(&mut self, id: &str) {
        let key = digest(id);
        if let Some(expires) = self.expiry.remove(&key) {
            self.by_expiry.remove(&(expires, key));
        }
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.expiry.len()
    }
}

fn digest(id: &str) -> [u8; 16] {
    let hash = Sha256::digest(id.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash[..16]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(format: &str, timestamp: &str, id: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        SignedContent::parse(format).unwrap().feed(timestamp, id, body, |bytes| out.extend_from_slice(bytes));
        out
    }

    #[test]
    fn signed_content_formats_of_slack_stripe_and_standard_webhooks() {
        assert_eq!(signed("v0:{timestamp}:{body}", "17", "", b"{}"), b"v0:17:{}");
        assert_eq!(signed("{timestamp}.{body}", "17", "", b"{}"), b"17.{}");
        assert_eq!(signed("{deliveryId}.{timestamp}.{body}", "17", "msg_1", b"{}"), b"msg_1.17.{}");
        assert_eq!(signed("{body}", "17", "x", b"raw"), b"raw");
    }

    #[test]
    fn signed_content_needs_the_body_once_and_known_placeholders() {
        assert!(SignedContent::parse("{timestamp}").unwrap_err().contains("{body}"));
        assert!(SignedContent::parse("{body}{body}").unwrap_err().contains("exactly once"));
        assert!(SignedContent::parse("{time}.{body}").unwrap_err().contains("unknown placeholder {time}"));
        assert!(SignedContent::parse("{body").unwrap_err().contains("without"));
        assert!(SignedContent::parse("{timestamp}.{body}").unwrap().has_timestamp());
        assert!(!SignedContent::parse("{body}").unwrap().has_delivery_id());
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let five_minutes = Duration::from_secs(300);
        assert_eq!(check_timestamp("1000", 1200, five_minutes), Ok(1300));
        assert_eq!(check_timestamp("1000", 1300, five_minutes), Ok(1300));
        assert!(check_timestamp("1000", 1301, five_minutes).is_err(), "too old");
        assert_eq!(check_timestamp("1300", 1000, five_minutes), Ok(1600));
        assert!(check_timestamp("1301", 1000, five_minutes).is_err(), "too far in the future");
        assert!(check_timestamp("abc", 1000, five_minutes).is_err());
        assert!(check_timestamp(&i64::MIN.to_string(), i64::MAX, MAX_TOLERANCE).is_err(), "no overflow");
        assert_eq!(check_timestamp(&i64::MAX.to_string(), i64::MAX, MAX_TOLERANCE), Ok(i64::MAX));
    }

    #[test]
    fn a_delivery_id_is_refused_until_it_expires() {
        let mut seen = SeenIds::default();
        assert!(seen.insert("gh-1", 1300, 1000));
        assert!(!seen.insert("gh-1", 1300, 1100), "seen twice within the window");
        assert!(!seen.insert("gh-1", 1300, 1300), "still within the window at its last second");
        assert!(seen.insert("gh-2", 1300, 1100));
        assert!(seen.insert("gh-1", 1700, 1301), "expired ids may come again");
        seen.remove("gh-2");
        assert!(seen.insert("gh-2", 1700, 1302), "a forgotten id passes again");
    }

    #[test]
    fn the_memory_of_ids_is_bounded_and_forgets_the_closest_expiry_first() {
        let mut seen = SeenIds::default();
        let count = i64::try_from(MAX_SEEN_IDS).unwrap();
        for i in 0..count + 10 {
            assert!(seen.insert(&format!("id-{i}"), 10_000 + i, 0));
        }
        assert_eq!(seen.len(), MAX_SEEN_IDS);
        assert!(seen.insert("id-0", 50_000, 1), "the oldest ids were forgotten");
        assert!(!seen.insert(&format!("id-{}", count + 9), 50_000, 1), "the newest are kept");
        assert!(seen.insert(&"x".repeat(100_000), 50_000, 1), "long ids cost a digest");
        assert_eq!(seen.len(), MAX_SEEN_IDS);
    }
}
