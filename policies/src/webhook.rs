//! Verifying push webhooks: GitHub's `X-Hub-Signature-256`, an HMAC-SHA256 of the raw body
//! under the tenant's webhook secret, compared in constant time.

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Whether `header` (`sha256=<hex>`) is the signature of `body` under `secret`.
pub fn verify_github_signature(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    crate::ct_eq(&given, &hmac_sha256(secret.as_bytes(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_vectors() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (test case 6).
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signatures_are_checked() {
        let sig = format!("sha256={}", hex::encode(hmac_sha256(b"s3cret", b"{}")));
        assert!(verify_github_signature("s3cret", b"{}", Some(&sig)));
        assert!(!verify_github_signature("other", b"{}", Some(&sig)));
        assert!(!verify_github_signature("s3cret", b"{ }", Some(&sig)));
        assert!(!verify_github_signature("s3cret", b"{}", None));
        assert!(!verify_github_signature("s3cret", b"{}", Some("sha1=abc")));
        assert!(!verify_github_signature("s3cret", b"{}", Some("sha256=zz")));
    }
}
