//! How store keys and queue names become NATS subjects and names.
//!
//! Keys are free text (`/`, spaces, any unicode from dedup keys), while KV keys allow only
//! `[-/_=.A-Za-z0-9]` and subjects split on `.`. Each `/`-separated segment of a key becomes one
//! subject token, `_` followed by the segment in unpadded base64url, so that every key has
//! exactly one encoding, decodes back, and a prefix ending in `/` is a subject wildcard the
//! server filters on. Tokens the store uses for itself never start with `_`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The KV key of a store key.
pub fn encode(key: &str) -> String {
    key.split('/').map(segment).collect::<Vec<_>>().join(".")
}

/// The store key of a KV key; `None` for the store's own entries or anything not written by
/// [`encode`].
pub fn decode(encoded: &str) -> Option<String> {
    let mut key = String::with_capacity(encoded.len());
    for (n, token) in encoded.split('.').enumerate() {
        let bytes = URL_SAFE_NO_PAD.decode(token.strip_prefix('_')?).ok()?;
        if n > 0 {
            key.push('/');
        }
        key.push_str(std::str::from_utf8(&bytes).ok()?);
    }
    Some(key)
}

/// The KV key filter (possibly with `>`) that every key starting with `prefix` matches; the
/// caller still checks the decoded keys against `prefix`, for a prefix not ending in `/`.
pub fn filter(prefix: &str) -> String {
    match prefix.rfind('/') {
        Some(end) => format!("{}.>", encode(&prefix[..end])),
        None => ">".to_string(),
    }
}

/// The subject token naming queue `name`: a digest, since names may be long and hold any text.
pub fn queue_token(name: &str) -> String {
    hex::encode(&Sha256::digest(name.as_bytes())[..16])
}

/// The start of the KV keys where queue `queue`'s deliveries keep their attempts.
pub fn attempts_of(queue: &str) -> String {
    format!("attempt.{queue}.")
}

/// The KV key where a delivery's attempts are kept while it waits for a retry.
pub fn attempt_key(queue: &str, delivery: &str) -> String {
    format!("{}{}", attempts_of(queue), segment(delivery))
}

/// The delivery id of a key under [`attempts_of`], without that start.
pub fn attempt_id(rest: &str) -> Option<String> {
    decode(rest)
}

fn segment(text: &str) -> String {
    format!("_{}", URL_SAFE_NO_PAD.encode(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid_kv_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key.chars().all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
    }

    proptest! {
        #[test]
        fn every_key_encodes_to_a_valid_kv_key_that_decodes_back(key in "\\PC{0,40}") {
            let encoded = encode(&key);
            prop_assert!(valid_kv_key(&encoded), "{encoded}");
            prop_assert_eq!(decode(&encoded), Some(key));
        }

        #[test]
        fn keys_under_a_directory_prefix_match_its_filter(dir in "[a-z/ é]{0,8}", rest in "[a-z/ é]{0,8}") {
            let prefix = format!("{dir}/");
            let key = format!("{prefix}{rest}");
            let filter = filter(&prefix);
            let stem = filter.strip_suffix('>').unwrap();
            prop_assert!(encode(&key).starts_with(stem), "{} vs {filter}", encode(&key));
        }
    }

    #[test]
    fn awkward_keys_round_trip() {
        for key in ["", "/", "a//b", "ns/svc/t/router/dedup/pod-restart/web 1", "ünï/çödé/🙂", "a.b>*"] {
            assert_eq!(decode(&encode(key)).as_deref(), Some(key), "{key}");
            assert!(valid_kv_key(&encode(key)), "{key} -> {}", encode(key));
        }
    }

    #[test]
    fn the_stores_own_entries_are_not_taken_for_keys() {
        assert_eq!(decode(&attempt_key(&queue_token("q"), "id")), None);
    }

    #[test]
    fn a_prefix_without_a_directory_filters_every_key() {
        assert_eq!(filter("abc"), ">");
        assert_eq!(filter(""), ">");
        assert_eq!(filter("ns/svc/"), format!("{}.>", encode("ns/svc")));
    }
}
