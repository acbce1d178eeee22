//! Postgres' legacy MD5 password scheme.
//!
//! * stored form (`pg_authid.rolpassword`): `"md5" || hex(md5(password || user))`
//! * wire response to `AuthenticationMD5Password(salt)`:
//!   `"md5" || hex(md5(hex(md5(password || user)) || salt))`
//!
//! The stored hash is itself a password-equivalent (knowing it is enough to
//! answer any challenge), which is what [`md5_response_from_stored`] relies on.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

const PREFIX: &str = "md5";
/// `"md5"` + 32 hex digits.
const STORED_LEN: usize = 35;

/// `"md5"` followed by the lowercase hex MD5 of the concatenated parts
/// (lowercase, as Postgres emits it; responses are compared byte-exact).
fn md5_hex(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let mut out = String::with_capacity(STORED_LEN);
    out.push_str(PREFIX);
    for b in h.finalize() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The `rolpassword` value Postgres stores for `user` / `password`.
pub fn md5_stored(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// What a client sends in its `PasswordMessage` for the given salt.
pub fn md5_response_from_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let stored = md5_stored(user, password);
    let inner = stored.strip_prefix(PREFIX).unwrap_or(&stored);
    md5_hex(&[inner.as_bytes(), &salt])
}

/// The response computed from a stored `md5<32 hex>` hash instead of the
/// plaintext (e.g. to log in upstream on behalf of a client). `None` when
/// `stored` is not in MD5 format.
pub fn md5_response_from_stored(stored: &str, salt: [u8; 4]) -> Option<String> {
    let hex = stored_hex(stored)?;
    // The hex digits are hashed as stored, exactly like Postgres does.
    Some(md5_hex(&[hex.as_bytes(), &salt]))
}

/// Check a client's `PasswordMessage` payload (without the trailing NUL)
/// against a stored `md5<32 hex>` hash. Returns `false` for a malformed
/// stored value.
pub fn md5_verify(stored: &str, salt: [u8; 4], response: &[u8]) -> bool {
    match md5_response_from_stored(stored, salt) {
        // Constant-time so response timing does not leak how many leading
        // bytes matched.
        Some(expected) => bool::from(expected.as_bytes().ct_eq(response)),
        None => false,
    }
}

fn stored_hex(stored: &str) -> Option<&str> {
    let hex = stored.strip_prefix(PREFIX)?;
    if stored.len() == STORED_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(hex)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with Python:
    //   "md5" + hashlib.md5(b"secretpostgres").hexdigest()
    //   "md5" + hashlib.md5(hashlib.md5(b"secretpostgres").hexdigest().encode()
    //                       + bytes([1, 2, 3, 4])).hexdigest()
    const STORED: &str = "md553f48b7c4b76a86ce72276c5755f217d";
    const RESPONSE_1234: &str = "md5bb41a296aab6baccb36ff243a562abff";

    #[test]
    fn stored_known_answer() {
        assert_eq!(md5_stored("postgres", "secret"), STORED);
    }

    #[test]
    fn response_known_answer() {
        assert_eq!(
            md5_response_from_password("postgres", "secret", [1, 2, 3, 4]),
            RESPONSE_1234
        );
        assert_eq!(
            md5_response_from_stored(STORED, [1, 2, 3, 4]).as_deref(),
            Some(RESPONSE_1234)
        );
    }

    #[test]
    fn verify() {
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let good = md5_response_from_password("postgres", "secret", salt);
        assert!(md5_verify(STORED, salt, good.as_bytes()));

        let wrong_pw = md5_response_from_password("postgres", "Secret", salt);
        assert!(!md5_verify(STORED, salt, wrong_pw.as_bytes()));
        let wrong_user = md5_response_from_password("alice", "secret", salt);
        assert!(!md5_verify(STORED, salt, wrong_user.as_bytes()));
        // Same password, different challenge: replay must fail.
        assert!(!md5_verify(STORED, [1, 2, 3, 4], good.as_bytes()));
        // Trailing NUL is the framing layer's job, not accepted here.
        let mut with_nul = good.clone().into_bytes();
        with_nul.push(0);
        assert!(!md5_verify(STORED, salt, &with_nul));
        assert!(!md5_verify(STORED, salt, b""));
    }

    #[test]
    fn malformed_stored() {
        let salt = [1, 2, 3, 4];
        let resp = RESPONSE_1234.as_bytes();
        assert!(!md5_verify("", salt, resp));
        assert!(!md5_verify("secret", salt, resp));
        // 31 hex digits, 33 hex digits, non-hex digit.
        for stored in [
            "md553f48b7c4b76a86ce72276c5755f217",
            "md553f48b7c4b76a86ce72276c5755f217dd",
            "md553f48b7c4b76a86ce72276c5755f217g",
        ] {
            assert!(!md5_verify(stored, salt, resp), "{stored}");
        }
        assert!(!md5_verify("SCRAM-SHA-256$4096:abc=$def=:ghi=", salt, resp));
        assert_eq!(md5_response_from_stored("plaintext", salt), None);
    }
}
