//! What makes a request valid, before anything is decided or written: a key id of
//! 1 to [`MAX_KEY_ID_BYTES`] bytes, and a cost (0 means 1) that can fit the key's
//! limits. Messages name the field and the value, never the key.

use std::fmt;

use super::Limits;

/// The longest `key_id` accepted, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 256;

/// Why a request cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidRequest {
    /// An empty `key_id`.
    EmptyKey,
    /// A `key_id` longer than [`MAX_KEY_ID_BYTES`]; `len` is its length in bytes.
    KeyTooLong { len: usize },
    /// A cost above the key's lowest limit: it can never be allowed, whatever happens.
    CostNeverFits { cost: u32, max: u32 },
}

impl InvalidRequest {
    /// The request field that was wrong.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptyKey | Self::KeyTooLong { .. } => "key_id",
            Self::CostNeverFits { .. } => "cost",
        }
    }

    /// What was wrong with the field, as a phrase that follows its name.
    pub fn reason(&self) -> String {
        match self {
            Self::EmptyKey => "must not be empty".into(),
            Self::KeyTooLong { len } => format!("is {len} bytes long; at most {MAX_KEY_ID_BYTES} are allowed"),
            Self::CostNeverFits { cost, max } => {
                format!("{cost} is greater than the key's limit of {max}, so it can never be allowed")
            }
        }
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field(), self.reason())
    }
}

impl std::error::Error for InvalidRequest {}

/// Checks a key id's length (its content is never looked at, nor shown).
pub fn validate_key(key_id: &str) -> Result<(), InvalidRequest> {
    if key_id.is_empty() {
        return Err(InvalidRequest::EmptyKey);
    }
    if key_id.len() > MAX_KEY_ID_BYTES {
        return Err(InvalidRequest::KeyTooLong { len: key_id.len() });
    }
    Ok(())
}

/// The cost to decide (0 means 1), if it can ever fit `limits`.
pub fn validate_cost(cost: u32, limits: &Limits) -> Result<u32, InvalidRequest> {
    let cost = cost.max(1);
    if cost > limits.max_cost() {
        return Err(InvalidRequest::CostNeverFits { cost, max: limits.max_cost() });
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_error_names_its_field_and_value() {
        assert_eq!(validate_key("").unwrap_err().to_string(), "key_id: must not be empty");
        let long = validate_key(&"k".repeat(MAX_KEY_ID_BYTES + 1)).unwrap_err();
        assert_eq!(long, InvalidRequest::KeyTooLong { len: MAX_KEY_ID_BYTES + 1 });
        assert!(validate_key(&"k".repeat(MAX_KEY_ID_BYTES)).is_ok());
        let limits = Limits::single(300, Duration::from_secs(60)).unwrap();
        assert_eq!(validate_cost(0, &limits), Ok(1));
        assert_eq!(validate_cost(300, &limits), Ok(300));
        let never = validate_cost(301, &limits).unwrap_err();
        assert_eq!((never.field(), never), ("cost", InvalidRequest::CostNeverFits { cost: 301, max: 300 }));
    }
}
