//! Why `ShouldRateLimit` refused a descriptor without asking the store: counted in
//! `ratelimitd_envoy_refusals_total` by reason, and logged at most once per reason every
//! 10 s with the count since (never the key).

use crate::metrics;
use crate::sync::LogEvery;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The key entry's value is not UTF-8 (obs-text in a header): no API key is.
    KeyNotUtf8,
    KeyEmpty,
    /// Longer than any key id the service accepts.
    KeyTooLong,
    /// A cost above the key's lowest limit: it can never be allowed.
    CostNeverFits,
    /// More distinct keys than one request may name.
    TooManyKeys,
    /// `is_negative_hits`: answered as a check that counts nothing, not refused.
    NegativeHits,
}

/// The pacing of each reason's log line.
static LOGGED: [LogEvery; 6] = [const { LogEvery::new() }; 6];

impl Refusal {
    pub(super) const ALL: [Self; 6] = [
        Self::KeyNotUtf8,
        Self::KeyEmpty,
        Self::KeyTooLong,
        Self::CostNeverFits,
        Self::TooManyKeys,
        Self::NegativeHits,
    ];

    /// The `reason` label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::KeyNotUtf8 => "key_not_utf8",
            Self::KeyEmpty => "key_empty",
            Self::KeyTooLong => "key_too_long",
            Self::CostNeverFits => "cost_never_fits",
            Self::TooManyKeys => "too_many_keys",
            Self::NegativeHits => "negative_hits",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::KeyNotUtf8 => "an API key entry that is not UTF-8: answered OVER_LIMIT",
            Self::KeyEmpty => "an empty API key entry: answered OVER_LIMIT",
            Self::KeyTooLong => "an API key entry longer than 256 bytes: answered OVER_LIMIT",
            Self::CostNeverFits => "a hits_addend above the key's limit: answered OVER_LIMIT",
            Self::TooManyKeys => "more than 16 API keys in one request: answered OVER_LIMIT",
            Self::NegativeHits => "is_negative_hits: answered without counting (only time frees capacity)",
        }
    }

    /// Counts this refusal, and logs it if its reason was not logged lately.
    pub(super) fn note(self) {
        metrics::envoy_refusal(self.as_str());
        if let Some(since) = LOGGED[self as usize].due() {
            tracing::warn!(reason = self.as_str(), descriptors = since, "ShouldRateLimit: {}", self.what());
        }
    }
}
