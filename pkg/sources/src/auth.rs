//! Checking the credentials of a request to a webhook path: bearer tokens and HMAC signatures
//! with optional timestamps and delivery ids.

use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName};
use hmac::{Hmac, Mac};
use ktrigger_core::Secret;
use subtle::ConstantTimeEq;

use crate::replay::{SignedContent, check_timestamp};

/// How a request proves it may fire a webhook trigger. Two triggers may share a path only when
/// their `Auth` is equal.
#[derive(PartialEq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The expected token.
        token: Secret,
    },
    /// Hex HMAC-SHA256 of the signed content, in a header after a prefix.
    Hmac(HmacAuth),
}

/// HMAC-SHA256 signatures, optionally with a timestamp window and delivery ids.
#[derive(PartialEq)]
pub(crate) struct HmacAuth {
    /// The shared key.
    pub(crate) secret: Secret,
    /// Header carrying the signature.
    pub(crate) header: HeaderName,
    /// Text before the hex digits, e.g. `sha256=`.
    pub(crate) prefix: String,
    /// What the signature covers.
    pub(crate) signed: SignedContent,
    /// Header carrying the request's Unix time in seconds.
    pub(crate) timestamp_header: Option<HeaderName>,
    /// Header carrying an id that is unique per delivery.
    pub(crate) delivery_id_header: Option<HeaderName>,
    /// How far the timestamp may be from now, and how long delivery ids are remembered.
    pub(crate) tolerance: Duration,
}

/// The delivery id of an accepted request and until when (Unix seconds) it must not come again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryId {
    /// The header's value.
    pub id: String,
    /// Last second at which the same id counts as a replay.
    pub expires: i64,
}

/// The answer to a request that carries no valid credentials.
pub(crate) const NOT_ACCEPTED: &str = "credentials not accepted";

impl Auth {
    /// Checks the request's credentials at `now` (Unix seconds); comparisons take constant time.
    /// Accepted: the delivery id to remember, if the trigger asks for one. Refused: why, in words
    /// that reveal nothing of the secret.
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Option<DeliveryId>, &'static str> {
        match self {
            Auth::Bearer { token } => {
                let accepted = headers.get_all(AUTHORIZATION).iter().any(|value| {
                    let Some((scheme, given)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
                        return false;
                    };
                    scheme.eq_ignore_ascii_case("bearer")
                        && bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
                });
                if accepted { Ok(None) } else { Err(NOT_ACCEPTED) }
            }
            Auth::Hmac(hmac) => hmac.verify(headers, body, now),
        }
    }
}

impl HmacAuth {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Option<DeliveryId>, &'static str> {
        let text = |name: &Option<HeaderName>, missing: &'static str| match name {
            None => Ok(None),
            Some(name) => match headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim) {
                Some(value) if !value.is_empty() => Ok(Some(value.to_string())),
                _ => Err(missing),
            },
        };
        let timestamp = text(&self.timestamp_header, "the request has no timestamp header")?;
        let delivery_id = text(&self.delivery_id_header, "the request has no delivery-id header")?;
        let signature = headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .and_then(|text| text.trim().strip_prefix(self.prefix.as_str()))
            .and_then(|digits| hex::decode(digits).ok())
            .ok_or(NOT_ACCEPTED)?;
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(self.secret.expose().as_bytes()).map_err(|_| NOT_ACCEPTED)?;
        let (timestamp_text, id_text) = (timestamp.as_deref().unwrap_or(""), delivery_id.as_deref().unwrap_or(""));
        self.signed.feed(timestamp_text, id_text, body, |bytes| mac.update(bytes));
        mac.verify_slice(&signature).map_err(|_| NOT_ACCEPTED)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        let expires = match &timestamp {
            Some(text) => check_timestamp(text, now, self.tolerance)?,
            None => now.saturating_add(tolerance),
        };
        Ok(delivery_id.map(|id| DeliveryId { id, expires }))
    }
}
