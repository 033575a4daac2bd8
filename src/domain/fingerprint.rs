//! Keyed fingerprints of API keys: the only identifier of a key that ratelimitd
//! stores, logs or exports, since a `key_id` may be the secret key itself.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The first 16 bytes of HMAC-SHA-256(secret, key_id): 128 bits, so collisions
/// between distinct keys are out of reach, and without the secret a fingerprint
/// cannot be linked back to its key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 32 hex digits [`Fingerprint::hex`] prints (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 32 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(bytes))
    }
}

impl Fingerprint {
    /// Lower-case hex, 32 characters: the form used in Redis key names and logs.
    pub fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Computes fingerprints with the configured secret. Every replica that shares a
/// Redis must use the same secret, or they would count a key under different names.
#[derive(Clone)]
pub struct Fingerprinter {
    mac: Hmac<Sha256>,
}

impl Fingerprinter {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        Self { mac }
    }

    pub fn fingerprint(&self, key_id: &str) -> Fingerprint {
        let mut mac = self.mac.clone();
        mac.update(key_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Fingerprint(bytes)
    }
}

/// The secret never appears in debug output.
impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_stable_per_secret_and_hides_the_key() {
        let a = Fingerprinter::new(b"secret-a");
        let b = Fingerprinter::new(b"secret-b");
        let key = "sk_live_0123456789";
        assert_eq!(a.fingerprint(key), a.fingerprint(key));
        assert_ne!(a.fingerprint(key), b.fingerprint(key));
        assert_ne!(a.fingerprint(key), a.fingerprint("sk_live_0123456788"));
        let shown = a.fingerprint(key).to_string();
        assert_eq!(shown.len(), 32);
        assert!(!shown.contains(key));
    }

    #[test]
    fn matches_hmac_sha256_truncated() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let fp = Fingerprinter::new(b"Jefe").fingerprint("what do ya want for nothing?");
        assert_eq!(fp.to_string(), "5bdcc146bf60754e6a042426089575c7");
    }
}
