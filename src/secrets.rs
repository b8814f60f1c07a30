//! Credentials trainyard stores to use later (a run's webhook `Authorization` value): sealed
//! with ChaCha20-Poly1305 (`ring`) under a 32-byte key read from the environment variable that
//! `training.secrets_key_env` names, so the database never holds them in the clear. API
//! processes seal, workers open; both need the same key.
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";

/// A key that seals and opens secrets.
pub struct SecretBox {
    key: LessSafeKey,
}

impl SecretBox {
    /// The key in `var` (base64 of 32 bytes): None when the variable is unset or empty, an
    /// error when it holds something else.
    pub fn from_env(var: &str) -> Result<Option<SecretBox>, String> {
        let Ok(text) = std::env::var(var) else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("{var} is not base64: {e}"))?;
        SecretBox::from_key(&bytes)
            .map(Some)
            .map_err(|e| format!("{var}: {e}"))
    }

    pub fn from_key(bytes: &[u8]) -> Result<SecretBox, String> {
        if bytes.len() != 32 {
            return Err(format!("the key must be 32 bytes, not {}", bytes.len()));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| "the key is not a ChaCha20-Poly1305 key".to_string())?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
        })
    }

    /// `sealed:v1:` + base64(nonce ‖ ciphertext ‖ tag), a fresh random nonce each time.
    pub fn seal(&self, plain: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "the system random source failed".to_string())?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// The secret `seal` sealed; an error for anything else (another key, altered text).
    pub fn open(&self, sealed: &str) -> Result<String, String> {
        let encoded = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| "not a sealed secret".to_string())?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "a sealed secret that is not base64".to_string())?;
        if bytes.len() < NONCE_LEN {
            return Err("a sealed secret too short to hold its nonce".into());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| "the secret was sealed with another key, or altered".to_string())?;
        String::from_utf8(plain.to_vec()).map_err(|_| "a sealed secret that is not text".into())
    }

    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_their_key_only() {
        let a = SecretBox::from_key(&[7u8; 32]).unwrap();
        let b = SecretBox::from_key(&[8u8; 32]).unwrap();
        let sealed = a.seal("Bearer s3cret").unwrap();
        assert!(SecretBox::is_sealed(&sealed) && !sealed.contains("s3cret"));
        assert_ne!(
            sealed,
            a.seal("Bearer s3cret").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(a.open(&sealed).unwrap(), "Bearer s3cret");
        assert!(b.open(&sealed).is_err());
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(a.open(&altered).is_err());
        assert!(SecretBox::from_key(&[0u8; 16]).is_err());
    }
}
