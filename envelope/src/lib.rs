//! Envelope encryption for Rotor.
//!
//! Every record is sealed with a fresh 256-bit data key (DEK) drawn from
//! ring's [`SystemRandom`](ring::rand::SystemRandom), under AES-256-GCM with a
//! random 96-bit nonce. The additional authenticated data binds the record's
//! identity ([`RecordId`]: store id, secret name, version), so a ciphertext
//! copied to another name or version fails to open. The DEK is wrapped by a
//! key-encryption key (KEK) behind the [`Kek`] trait; rotating the KEK
//! ([`rewrap`]) re-wraps every DEK without touching the data ciphertext.
//!
//! # Sealed record format, version 1
//!
//! All integers are big-endian.
//!
//! | offset        | size    | field                                   |
//! |---------------|---------|-----------------------------------------|
//! | 0             | 4       | magic `RTRE`                            |
//! | 4             | 1       | format version, `1`                     |
//! | 5             | 1       | KEK id length `k` (1..=255)             |
//! | 6             | k       | KEK id, UTF-8                           |
//! | 6+k           | 2       | wrapped DEK length `w`                  |
//! | 8+k           | w       | wrapped DEK (opaque to this format)     |
//! | 8+k+w         | 12      | nonce                                   |
//! | 20+k+w        | n + 16  | AES-256-GCM ciphertext and tag          |
//!
//! The AAD of the data ciphertext is `"rotor/record/v1"`, then the store id,
//! the secret name (each prefixed with a 2-byte length) and the version as a
//! u64. The KEK id and the wrapped DEK are deliberately *not* in the AAD, so
//! that [`rewrap`] can replace them; the KEK authenticates the wrapped DEK.
//!
//! Nothing here that holds key material or plaintext implements `Debug` or
//! `Serialize`; keys and plaintexts are zeroized on drop.

mod aead;
mod error;
mod kek;
mod keyfile;
mod keyring;
mod record;
pub mod wire;

pub use error::{Error, Result};
pub use kek::{DataKey, Kek};
pub use keyfile::KeyFileKek;
pub use keyring::Keyring;
pub use record::{MAGIC, RecordId, VERSION, kek_id, open, plaintext_len, rewrap, seal};

/// A decrypted value. Its `Debug` prints `[REDACTED]`, and it is zeroized
/// when dropped. Read it with [`secrecy::ExposeSecret`].
pub type Plaintext = secrecy::SecretSlice<u8>;

pub use secrecy::ExposeSecret;
