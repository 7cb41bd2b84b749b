//! Key and value size limits.

use crate::error::{Error, Result};
use crate::value::Value;

/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Default limit on a value's encoded size: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// Size limits applied to every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted value, in encoded bytes.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl Limits {
    /// Checks a value against the size limit.
    pub fn check_value(&self, value: &Value) -> Result<()> {
        if value.len() > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// Checks that `key` is usable: non-empty and at most [`MAX_KEY_BYTES`] bytes.
///
/// Any UTF-8 is allowed, including `/`, spaces and non-Latin scripts.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "key must not be empty".into(),
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey {
            reason: format!(
                "key is {} bytes, over the limit of {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_non_empty_and_bounded() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key("ключ").is_ok());
        assert!(validate_key("a b/c:d").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(validate_key("").unwrap_err().code(), "invalid_key");
        let long = validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert_eq!(long.code(), "invalid_key");
        // The limit counts bytes, not characters.
        assert!(validate_key(&"я".repeat(MAX_KEY_BYTES / 2 + 1)).is_err());
    }

    #[test]
    fn values_over_the_limit_are_refused() {
        let limits = Limits { max_value_bytes: 4 };
        assert!(limits.check_value(&Value::string("four")).is_ok());
        let e = limits.check_value(&Value::string("five!")).unwrap_err();
        assert_eq!(e, Error::ValueTooLarge { size: 5, limit: 4 });
    }
}
