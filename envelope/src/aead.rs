//! The one place that calls ring's AES-256-GCM.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::{Error, Result};

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) use ring::aead::NONCE_LEN as NONCE_SIZE;

/// Builds an AES-256-GCM key. `key` must be 32 bytes.
pub(crate) fn key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    // A 32-byte slice is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

/// Encrypts `buf` in place and appends the tag.
pub(crate) fn seal_in_place(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
        .map_err(|_| Error::TooLarge {
            field: "plaintext",
            len: buf.len(),
            max: u32::MAX as usize,
        })
}

/// Decrypts `buf` (ciphertext followed by tag) in place and returns the
/// plaintext's length, or `None` when authentication fails.
pub(crate) fn open_in_place(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Option<usize> {
    key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
        .ok()
        .map(|plain| plain.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// AES-256-GCM known-answer vector: Test Case 16 of McGrew & Viega,
    /// "The Galois/Counter Mode of Operation (GCM)" (256-bit key, 96-bit IV,
    /// 60-byte plaintext, 20-byte AAD).
    #[test]
    fn aes_256_gcm_known_answer() {
        let k: [u8; 32] = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .try_into()
            .unwrap();
        let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = hex(concat!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ));
        let expected = hex(concat!(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b"
        ));
        let key = key(&k);
        let mut buf = plain.clone();
        seal_in_place(&key, iv, &aad, &mut buf).unwrap();
        assert_eq!(buf, expected);
        let n = open_in_place(&key, iv, &aad, &mut buf).unwrap();
        assert_eq!(&buf[..n], &plain[..]);
        buf[0] ^= 1;
        assert!(open_in_place(&key, iv, &aad, &mut buf.clone()).is_none());
    }
}
