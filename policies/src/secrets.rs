//! Tenant secrets, sealed at rest.
//!
//! A secret's value is sealed with AES-256-GCM under the node's [`SecretKey`], with a fresh
//! random nonce per value and the tenant and key names as associated data, so a sealed value
//! copied to another row does not open. The key comes from the operator (a file or the
//! environment) and never enters the store; without it the store's secrets are noise.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

/// The longest secret name accepted.
pub const MAX_SECRET_NAME: usize = 64;
/// The largest secret value accepted, in bytes of JSON.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret key must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error("could not read or write the secret key file {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a valid secret name: use 1 to 64 letters, digits, '_', '-' or '.'")]
    BadName(String),
    #[error("the secret's value is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge,
    #[error("a stored secret does not open with this node's key")]
    Unsealable,
}

/// The node's key for sealing secrets.
#[derive(Clone)]
pub struct SecretKey(Aes256Gcm);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<hidden>)")
    }
}

/// A sealed value: nonce and ciphertext, hex-encoded for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: String,
    pub sealed: String,
}

impl SecretKey {
    /// A key from 64 hex digits.
    pub fn from_hex(text: &str) -> Result<SecretKey, SecretError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SecretError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey(cipher))
    }

    /// The key in `path`, generated (and written with mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key_file = |source| SecretError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => SecretKey::from_hex(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::getrandom(&mut bytes)
                    .expect("the operating system's random source failed");
                let text = hex::encode(bytes);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(key_file)?;
                file.write_all(format!("{text}\n").as_bytes())
                    .map_err(key_file)?;
                SecretKey::from_hex(&text)
            }
            Err(e) => Err(key_file(e)),
        }
    }

    /// Seals `value` for `tenant`'s secret `name`.
    pub fn seal(&self, tenant: &str, name: &str, value: &[u8]) -> Sealed {
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).expect("the operating system's random source failed");
        let aad = associated(tenant, name);
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("AES-GCM sealing of a bounded value cannot fail");
        Sealed {
            nonce: hex::encode(nonce),
            sealed: hex::encode(sealed),
        }
    }

    /// Opens a value sealed by [`SecretKey::seal`] for the same tenant and name.
    pub fn open(&self, tenant: &str, name: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
        let nonce = hex::decode(&sealed.nonce).map_err(|_| SecretError::Unsealable)?;
        let data = hex::decode(&sealed.sealed).map_err(|_| SecretError::Unsealable)?;
        if nonce.len() != 12 {
            return Err(SecretError::Unsealable);
        }
        let aad = associated(tenant, name);
        self.0
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &data,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Unsealable)
    }
}

fn associated(tenant: &str, name: &str) -> Vec<u8> {
    format!("falra-secret\0{tenant}\0{name}").into_bytes()
}

/// Checks a secret's name: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_row_and_key() {
        let key = SecretKey::from_hex(&"11".repeat(32)).unwrap();
        let other = SecretKey::from_hex(&"22".repeat(32)).unwrap();
        // A plaintext long enough that its hex cannot turn up in random ciphertext by chance.
        let plain = br#"{"access_key_id": "AKIAFALRATESTSEALEDPLAINTEXT"}"#;
        let sealed = key.seal("caro", "s3", plain);
        assert!(!sealed
            .sealed
            .contains(&hex::encode("AKIAFALRATESTSEALEDPLAINTEXT")));
        assert_eq!(key.open("caro", "s3", &sealed).unwrap(), plain);
        assert!(key.open("jc", "s3", &sealed).is_err());
        assert!(key.open("caro", "git", &sealed).is_err());
        assert!(other.open("caro", "s3", &sealed).is_err());
        // Every seal has its own nonce.
        assert_ne!(key.seal("caro", "s3", b"x"), key.seal("caro", "s3", b"x"));
    }

    #[test]
    fn keys_are_generated_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = SecretKey::load_or_create(&path).unwrap();
        let b = SecretKey::load_or_create(&path).unwrap();
        let sealed = a.seal("t", "k", b"v");
        assert_eq!(b.open("t", "k", &sealed).unwrap(), b"v");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(SecretKey::from_hex("abc").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("s3_prod.key-1").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
