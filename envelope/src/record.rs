//! Sealing and opening single records; see the crate docs for the format.

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::aead::{self, NONCE_SIZE, TAG_LEN};
use crate::wire::{Reader, Writer};
use crate::{DataKey, Error, Kek, Plaintext, Result};

/// Magic bytes at the start of every sealed record.
pub const MAGIC: &[u8; 4] = b"RTRE";
/// The sealed-record format version this build writes and reads.
pub const VERSION: u8 = 1;
const AAD_DOMAIN: &[u8] = b"rotor/record/v1";

/// The identity a record is bound to through the AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordId<'a> {
    pub store_id: &'a [u8],
    pub name: &'a str,
    pub version: u64,
}

impl RecordId<'_> {
    fn aad(&self) -> Result<Vec<u8>> {
        let mut w =
            Writer::with_capacity(AAD_DOMAIN.len() + self.store_id.len() + self.name.len() + 12);
        w.bytes(AAD_DOMAIN)
            .medium("store id", self.store_id)?
            .medium("secret name", self.name.as_bytes())?
            .u64(self.version);
        Ok(w.into_vec())
    }

    fn describe(&self) -> String {
        format!("secret {:?} version {}", self.name, self.version)
    }
}

/// The parsed header of a sealed record.
struct Parsed<'a> {
    kek_id: &'a str,
    wrapped: &'a [u8],
    nonce: [u8; NONCE_SIZE],
    ciphertext: &'a [u8],
}

fn parse(sealed: &[u8]) -> Result<Parsed<'_>> {
    let mut r = Reader::new(sealed);
    if r.take("magic", MAGIC.len())? != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = r.u8("format version")?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let kek_id = r.short_str("kek id")?;
    if kek_id.is_empty() {
        return Err(Error::Malformed {
            field: "kek id",
            problem: "is empty".to_owned(),
        });
    }
    let wrapped = r.medium("wrapped data key")?;
    let nonce = r.array("nonce")?;
    let ciphertext = r.rest();
    if ciphertext.len() < TAG_LEN {
        return Err(Error::Truncated {
            field: "ciphertext",
            needed: TAG_LEN,
            available: ciphertext.len(),
        });
    }
    Ok(Parsed {
        kek_id,
        wrapped,
        nonce,
        ciphertext,
    })
}

fn encode(kek_id: &str, wrapped: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
    let mut w = Writer::with_capacity(
        MAGIC.len() + 4 + kek_id.len() + wrapped.len() + nonce.len() + ciphertext.len(),
    );
    w.bytes(MAGIC)
        .u8(VERSION)
        .short("kek id", kek_id.as_bytes())?
        .medium("wrapped data key", wrapped)?
        .bytes(nonce)
        .bytes(ciphertext);
    Ok(w.into_vec())
}

/// Seals `plaintext` under a fresh data key wrapped by `kek`, bound to `id`.
pub fn seal(kek: &dyn Kek, id: &RecordId<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let dek = DataKey::generate(&rng)?;
    let mut nonce = [0u8; NONCE_SIZE];
    rng.fill(&mut nonce).map_err(|_| Error::Random)?;
    let wrapped = kek.wrap(&dek)?;
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    aead::seal_in_place(&aead::key(dek.expose()), nonce, &id.aad()?, &mut buf)?;
    encode(kek.key_id(), &wrapped, &nonce, &buf)
}

/// Opens a sealed record, checking that it belongs to `id`.
pub fn open(kek: &dyn Kek, id: &RecordId<'_>, sealed: &[u8]) -> Result<Plaintext> {
    let p = parse(sealed)?;
    let dek = kek.unwrap(p.kek_id, p.wrapped)?;
    let mut buf = Zeroizing::new(p.ciphertext.to_vec());
    let n = aead::open_in_place(&aead::key(dek.expose()), p.nonce, &id.aad()?, &mut buf)
        .ok_or_else(|| Error::IntegrityFailed {
            record: id.describe(),
        })?;
    buf.truncate(n);
    Ok(Plaintext::from(std::mem::take(&mut *buf)))
}

/// The KEK id a sealed record names, without opening it.
pub fn kek_id(sealed: &[u8]) -> Result<&str> {
    Ok(parse(sealed)?.kek_id)
}

/// The length of the plaintext inside a sealed record, without opening it.
pub fn plaintext_len(sealed: &[u8]) -> Result<usize> {
    Ok(parse(sealed)?.ciphertext.len() - TAG_LEN)
}

/// Re-wraps the data key of a sealed record under `new`, leaving the nonce
/// and ciphertext byte-for-byte as they were. `old` must hold the record's
/// current KEK id.
pub fn rewrap(old: &dyn Kek, new: &dyn Kek, sealed: &[u8]) -> Result<Vec<u8>> {
    let p = parse(sealed)?;
    let dek = old.unwrap(p.kek_id, p.wrapped)?;
    let wrapped = new.wrap(&dek)?;
    encode(new.key_id(), &wrapped, &p.nonce, p.ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExposeSecret, KeyFileKek};

    const CANARY: &[u8] = b"canary-7f3a9c-do-not-leak";

    fn id(name: &str, version: u64) -> RecordId<'_> {
        RecordId {
            store_id: b"store-A",
            name,
            version,
        }
    }

    fn kek(seed: u8) -> KeyFileKek {
        KeyFileKek::from_bytes(&[seed; 32])
    }

    #[test]
    fn round_trip_of_several_sizes() {
        let k = kek(1);
        for len in [0usize, 1, 64, 1024, 65536] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = seal(&k, &id("db", 3), &plain).unwrap();
            assert_eq!(&sealed[..4], MAGIC);
            let opened = open(&k, &id("db", 3), &sealed).unwrap();
            assert_eq!(opened.expose_secret(), &plain[..]);
        }
    }

    #[test]
    fn two_seals_of_the_same_value_differ() {
        let k = kek(1);
        let a = seal(&k, &id("db", 1), CANARY).unwrap();
        let b = seal(&k, &id("db", 1), CANARY).unwrap();
        assert_ne!(a, b, "fresh data key and nonce per record");
    }

    #[test]
    fn every_single_bit_flip_is_refused_with_a_clear_error() {
        let k = kek(1);
        let sealed = seal(&k, &id("db", 3), CANARY).unwrap();
        let kek_id_len = k.key_id().len();
        // Field boundaries, from the format table.
        let wrapped_start = 6 + kek_id_len + 2;
        let nonce_start = wrapped_start + 60;
        let ct_start = nonce_start + NONCE_SIZE;
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                let err = open(&k, &id("db", 3), &bad)
                    .map(|_| ())
                    .expect_err(&format!("flip of byte {byte} bit {bit} was accepted"));
                let text = err.to_string();
                assert!(!text.is_empty());
                let expected_ok = match byte {
                    0..4 => matches!(err, Error::BadMagic),
                    4 => matches!(err, Error::UnsupportedVersion { .. }),
                    5 => matches!(
                        err,
                        Error::Truncated { .. }
                            | Error::Malformed { .. }
                            | Error::KeyUnavailable { .. }
                    ),
                    b if b < 6 + kek_id_len => {
                        matches!(err, Error::KeyUnavailable { .. } | Error::Malformed { .. })
                    }
                    b if b < wrapped_start => {
                        matches!(err, Error::Truncated { .. } | Error::UnwrapFailed { .. })
                    }
                    b if b < nonce_start => matches!(err, Error::UnwrapFailed { .. }),
                    b if b < ct_start => matches!(err, Error::IntegrityFailed { .. }),
                    _ => matches!(err, Error::IntegrityFailed { .. }),
                };
                assert!(
                    expected_ok,
                    "byte {byte} bit {bit}: unexpected error {err:?}"
                );
                assert!(!text.contains("canary"), "error leaks plaintext: {text}");
            }
        }
    }

    #[test]
    fn truncation_at_every_length_is_refused() {
        let k = kek(1);
        let sealed = seal(&k, &id("db", 3), CANARY).unwrap();
        for len in 0..sealed.len() {
            assert!(open(&k, &id("db", 3), &sealed[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn aad_swap_to_another_name_version_or_store_is_refused() {
        let k = kek(1);
        let sealed = seal(&k, &id("db", 3), CANARY).unwrap();
        for other in [
            id("db", 4),
            id("api", 3),
            RecordId {
                store_id: b"store-B",
                name: "db",
                version: 3,
            },
        ] {
            let err = open(&k, &other, &sealed).map(|_| ()).unwrap_err();
            assert!(matches!(err, Error::IntegrityFailed { .. }), "{err:?}");
        }
    }

    #[test]
    fn wrong_kek_is_refused_naming_the_key_id() {
        let sealed = seal(&kek(1), &id("db", 3), CANARY).unwrap();
        let err = open(&kek(2), &id("db", 3), &sealed)
            .map(|_| ())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(kek(1).key_id()) && text.contains("not available"),
            "{text}"
        );
    }

    #[test]
    fn rewrap_changes_only_the_key_and_keeps_the_ciphertext() {
        let (old, new) = (kek(1), kek(2));
        let sealed = seal(&old, &id("db", 3), CANARY).unwrap();
        let re = rewrap(&old, &new, &sealed).unwrap();
        assert_eq!(kek_id(&re).unwrap(), new.key_id());
        // nonce || ciphertext || tag are the last bytes of both, unchanged.
        let tail = NONCE_SIZE + CANARY.len() + TAG_LEN;
        assert_eq!(sealed[sealed.len() - tail..], re[re.len() - tail..]);
        assert_eq!(
            open(&new, &id("db", 3), &re).unwrap().expose_secret(),
            CANARY
        );
        assert!(open(&old, &id("db", 3), &re).is_err());
    }

    #[test]
    fn keyring_opens_records_of_every_member() {
        use std::sync::Arc;
        let (a, b) = (Arc::new(kek(1)), Arc::new(kek(2)));
        let ring = crate::Keyring::new(b.clone()).with_secondary(a.clone());
        let old = seal(&*a, &id("db", 1), CANARY).unwrap();
        assert_eq!(
            open(&ring, &id("db", 1), &old).unwrap().expose_secret(),
            CANARY
        );
        let new = seal(&ring, &id("db", 2), CANARY).unwrap();
        assert_eq!(kek_id(&new).unwrap(), b.key_id());
        let err = open(&kek(3), &id("db", 2), &new).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("not available"));
    }

    #[test]
    fn sealed_bytes_do_not_contain_the_plaintext() {
        let sealed = seal(&kek(1), &id("db", 3), CANARY).unwrap();
        assert!(!sealed.windows(CANARY.len()).any(|w| w == CANARY));
    }
}
