//! Value generators for rotation. Passwords and random bytes draw from a
//! [`Random`] source (`rotor_store::random`: the system's in production, a
//! seeded one in tests); key pairs from ring's `SystemRandom`, which ring's key
//! generation requires. Generated values live in `Zeroizing` buffers and
//! are never logged.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rotor_contract::api::{Encoding, Generator, KeyAlgorithm, PasswordGenerator};
use rotor_store::random::Random;
use zeroize::Zeroizing;

use crate::{Error, Result};

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";

fn invalid(problem: String) -> Error {
    Error::InvalidPolicy(vec![problem])
}

/// A new value for `generator`, drawing from `rng`.
pub fn generate(generator: &Generator, rng: &dyn Random) -> Result<Zeroizing<Vec<u8>>> {
    match generator {
        Generator {
            password: Some(p), ..
        } => password(rng, p),
        Generator {
            random_bytes: Some(r),
            ..
        } => {
            let mut bytes = Zeroizing::new(vec![0u8; r.length as usize]);
            rng.fill(&mut bytes).map_err(|_| Error::Random)?;
            Ok(Zeroizing::new(match r.encoding {
                Encoding::Base64 => base64::engine::general_purpose::STANDARD
                    .encode(&*bytes)
                    .into_bytes(),
                Encoding::Hex => bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into_bytes(),
            }))
        }
        Generator {
            key_pair: Some(k), ..
        } => key_pair(&SystemRandom::new(), k.algorithm),
        _ => Err(invalid(
            "spec.generator: set exactly one of password, randomBytes, keyPair".to_owned(),
        )),
    }
}

/// A uniform index below `n`, by rejection sampling.
fn below(rng: &dyn Random, n: usize) -> Result<usize> {
    let n = n as u32;
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b).map_err(|_| Error::Random)?;
        let v = u32::from_le_bytes(b);
        if v < zone {
            return Ok((v % n) as usize);
        }
    }
}

fn password(rng: &dyn Random, p: &PasswordGenerator) -> Result<Zeroizing<Vec<u8>>> {
    let symbols = p.symbols.as_bytes();
    if !p.symbols.is_ascii()
        || symbols
            .iter()
            .any(|c| c.is_ascii_alphanumeric() || c.is_ascii_whitespace())
    {
        return Err(invalid(format!(
            "spec.generator.password.symbols {:?} must be printable ASCII punctuation",
            p.symbols
        )));
    }
    let mins = p.min_lower + p.min_upper + p.min_digits + p.min_symbols;
    if mins > p.length || p.length < 8 {
        return Err(invalid(format!(
            "spec.generator.password: length {} is below 8 or below the per-class minimums ({mins})",
            p.length
        )));
    }
    if p.min_symbols > 0 && symbols.is_empty() {
        return Err(invalid(
            "spec.generator.password: minSymbols is set but symbols is empty".to_owned(),
        ));
    }
    let all: Vec<u8> = [LOWER, UPPER, DIGITS, symbols].concat();
    let mut out = Zeroizing::new(Vec::with_capacity(p.length as usize));
    for (class, min) in [
        (LOWER, p.min_lower),
        (UPPER, p.min_upper),
        (DIGITS, p.min_digits),
        (symbols, p.min_symbols),
    ] {
        for _ in 0..min {
            out.push(class[below(rng, class.len())?]);
        }
    }
    while out.len() < p.length as usize {
        out.push(all[below(rng, all.len())?]);
    }
    // Fisher–Yates, so the required characters sit anywhere.
    for i in (1..out.len()).rev() {
        let j = below(rng, i + 1)?;
        out.swap(i, j);
    }
    Ok(out)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A key pair as JSON: `{"private_key": PKCS#8 PEM, "public_key": SPKI PEM}`,
/// so a pod can take either with `#private_key` or `#public_key`.
fn key_pair(rng: &SystemRandom, algorithm: KeyAlgorithm) -> Result<Zeroizing<Vec<u8>>> {
    let fail = |_| Error::KeyGeneration("key generation failed");
    let (pkcs8, spki) = match algorithm {
        KeyAlgorithm::Ed25519 => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(rng).map_err(fail)?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| Error::KeyGeneration("bad Ed25519 key"))?;
            let mut spki = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            spki.extend_from_slice(pair.public_key().as_ref());
            (Zeroizing::new(pkcs8.as_ref().to_vec()), spki)
        }
        KeyAlgorithm::EcdsaP256 => {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng).map_err(fail)?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), rng)
                    .map_err(|_| Error::KeyGeneration("bad P-256 key"))?;
            let mut spki = vec![
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ];
            spki.extend_from_slice(pair.public_key().as_ref());
            (Zeroizing::new(pkcs8.as_ref().to_vec()), spki)
        }
    };
    let private = Zeroizing::new(pem("PRIVATE KEY", &pkcs8));
    let json = serde_json::json!({ "private_key": private.as_str(), "public_key": pem("PUBLIC KEY", &spki) });
    Ok(Zeroizing::new(json.to_string().into_bytes()))
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
    use rotor_contract::api::{KeyPairGenerator, RandomBytesGenerator};

    use rotor_store::random::Seeded;

    use super::*;

    fn password_gen(length: u32, mins: [u32; 4]) -> Generator {
        Generator {
            password: Some(PasswordGenerator {
                length,
                symbols: "!#%+-.:=@^_~".into(),
                min_lower: mins[0],
                min_upper: mins[1],
                min_digits: mins[2],
                min_symbols: mins[3],
            }),
            random_bytes: None,
            key_pair: None,
        }
    }

    #[test]
    fn passwords_keep_length_and_class_minimums() {
        let rng = Seeded::new(1);
        for _ in 0..200 {
            let v = generate(&password_gen(12, [3, 3, 3, 3]), &rng).unwrap();
            assert_eq!(v.len(), 12);
            let count = |set: &[u8]| v.iter().filter(|c| set.contains(c)).count();
            assert!(
                count(LOWER) >= 3
                    && count(UPPER) >= 3
                    && count(DIGITS) >= 3
                    && count(b"!#%+-.:=@^_~") >= 3
            );
        }
        let a = generate(&password_gen(32, [1, 1, 1, 1]), &rng).unwrap();
        let b = generate(&password_gen(32, [1, 1, 1, 1]), &rng).unwrap();
        assert_ne!(*a, *b);
        // The same seed, the same password: nothing else is drawn from.
        let again = |seed| generate(&password_gen(32, [1, 1, 1, 1]), &Seeded::new(seed)).unwrap();
        assert_eq!(*again(7), *again(7));
        let err = generate(&password_gen(8, [3, 3, 3, 3]), &rng)
            .unwrap_err()
            .to_string();
        assert!(err.contains("below the per-class minimums (12)"), "{err}");
    }

    #[test]
    fn random_bytes_in_both_encodings() {
        for (encoding, len) in [(Encoding::Base64, 44), (Encoding::Hex, 64)] {
            let g = Generator {
                password: None,
                random_bytes: Some(RandomBytesGenerator {
                    length: 32,
                    encoding,
                }),
                key_pair: None,
            };
            assert_eq!(generate(&g, &Seeded::new(2)).unwrap().len(), len);
        }
    }

    fn der_of(pem_text: &str) -> Vec<u8> {
        let body: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    #[test]
    fn key_pairs_parse_as_pem_and_sign_and_verify() {
        let rng = SystemRandom::new();
        for algorithm in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let g = Generator {
                password: None,
                random_bytes: None,
                key_pair: Some(KeyPairGenerator { algorithm }),
            };
            let v: serde_json::Value =
                serde_json::from_slice(&generate(&g, &Seeded::new(3)).unwrap()).unwrap();
            let private = v["private_key"].as_str().unwrap();
            let public = v["public_key"].as_str().unwrap();
            assert!(
                private.starts_with("-----BEGIN PRIVATE KEY-----\n")
                    && private.ends_with("-----END PRIVATE KEY-----\n")
            );
            assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
            let pkcs8 = der_of(private);
            let spki = der_of(public);
            let message = b"rotor";
            match algorithm {
                KeyAlgorithm::Ed25519 => {
                    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
                    let sig = pair.sign(message);
                    UnparsedPublicKey::new(&ED25519, &spki[12..])
                        .verify(message, sig.as_ref())
                        .unwrap();
                }
                KeyAlgorithm::EcdsaP256 => {
                    let pair =
                        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
                            .unwrap();
                    let sig = pair.sign(&rng, message).unwrap();
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki[26..])
                        .verify(message, sig.as_ref())
                        .unwrap();
                }
            }
        }
    }
}
