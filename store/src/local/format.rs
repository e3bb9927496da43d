//! The store file's format: its encoder and its streaming, verifying parser.
//!
//! # Version 2
//!
//! All integers are big-endian; `short`, `medium` and `long` fields carry a
//! u8, u16 or u32 length prefix. Version 1 files (without the fields marked
//! "v2") are read as if every v2 field were 0; writes produce version 2.
//!
//! | field                    | encoding                                   |
//! |--------------------------|--------------------------------------------|
//! | magic                    | 8 bytes, `RTRSTORE`                        |
//! | format version           | u8, `2`                                    |
//! | store id                 | 16 random bytes, fixed at creation         |
//! | KEK id                   | short, UTF-8                               |
//! | wrapped MAC key          | medium: the file's HMAC key, KEK-wrapped   |
//! | generation               | u64, +1 on every write                     |
//! | max versions (v2)        | u32, the store's retention; 0: the default (10) |
//! | secret count             | u32                                        |
//! | per secret, by name      | name (medium, UTF-8), next version (u64), max versions (u32, 0: the store's; v2), removed through (u64, the highest version number retention removed, 0: none; v2), version count (u32) |
//! | per version, ascending   | number (u64), created-at (u64, Unix ms), stage bits (u8: 1 CURRENT, 2 PENDING, 4 PREVIOUS), sealed record (long, see `rotor_envelope`) |
//! | MAC                      | 32 bytes, HMAC-SHA256 over all of the above |
//! | checksum                 | 32 bytes, SHA-256 over all of the above, MAC included |
//!
//! The checksum catches any accidental change (a flipped bit, truncation)
//! before a key is needed. The MAC, under a random key that only the KEK can
//! unwrap, catches deliberate edits: reordering, truncation at a record
//! boundary, or a record pasted from another store. Each sealed record is
//! also bound to the store id, its secret's name and its version by its AAD.
//! The format alone cannot detect a rollback of the whole file to an older
//! copy made under the same key: a running handle refuses one (see above),
//! and the generation counter lets an operator see one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use ring::{digest, hmac};
use rotor_envelope::wire::Writer;
use zeroize::Zeroizing;

use super::LocalStore;
use super::state::{Sealed, Secret, State, Version};
use crate::{Error, Result, Stages, validate_secret_name};

pub(super) const MAGIC: &[u8; 8] = b"RTRSTORE";
pub(super) const FORMAT: u8 = 2;
pub(super) const HASH_LEN: usize = 32;
/// The buffer that reading and writing stream the file through.
pub(super) const IO_BUFFER: usize = 64 * 1024;

impl LocalStore {
    /// Writes `state` to `out` in the current format and returns where each
    /// version's record landed (offset, length), in file order. Records
    /// still in the source file are copied one at a time.
    pub(super) fn encode(&self, state: &State, out: &mut impl Write) -> Result<Vec<(u64, u32)>> {
        let malformed = |e: rotor_envelope::Error| self.corrupt(e.to_string());
        let write = |e| self.io("write")(e);
        let mut sink = Sink::new(out, &state.mac_key[..]);
        let mut w = Writer::with_capacity(512);
        w.bytes(MAGIC)
            .u8(FORMAT)
            .bytes(&state.store_id)
            .short("kek id", state.kek_id.as_bytes())
            .map_err(malformed)?
            .medium("wrapped MAC key", &state.wrapped_mac_key)
            .map_err(malformed)?
            .u64(state.generation)
            .u32(state.max_versions)
            .u32(u32::try_from(state.secrets.len()).map_err(|_| {
                malformed(rotor_envelope::Error::TooLarge {
                    field: "secret count",
                    len: state.secrets.len(),
                    max: u32::MAX as usize,
                })
            })?);
        sink.put(w.as_slice()).map_err(write)?;
        let mut places = Vec::new();
        for (name, secret) in &state.secrets {
            let mut w = Writer::with_capacity(64 + name.len());
            w.medium("secret name", name.as_bytes())
                .map_err(malformed)?
                .u64(secret.next_version)
                .u32(secret.max_versions)
                .u64(secret.removed_through)
                .u32(secret.versions.len() as u32);
            sink.put(w.as_slice()).map_err(write)?;
            for v in &secret.versions {
                let sealed = self.record(state.source.as_deref(), &v.sealed)?;
                let len = u32::try_from(sealed.len()).map_err(|_| {
                    malformed(rotor_envelope::Error::TooLarge {
                        field: "sealed record",
                        len: sealed.len(),
                        max: u32::MAX as usize,
                    })
                })?;
                let mut w = Writer::with_capacity(32);
                w.u64(v.number)
                    .u64(v.created_at_ms)
                    .u8(v.stages.bits())
                    .u32(len);
                sink.put(w.as_slice()).map_err(write)?;
                places.push((sink.written, len));
                sink.put(&sealed).map_err(write)?;
            }
        }
        sink.finish().map_err(write)?;
        Ok(places)
    }

    /// Verifies and decodes one file, streaming it once: the checksum and
    /// the MAC are computed over the very bytes the index is parsed from, so
    /// nothing can change between checking and parsing. Records are not
    /// kept; the index says where they are in `file`, which the state keeps.
    pub(super) fn decode(&self, file: File, len: u64) -> Result<State> {
        let bad_magic = || self.corrupt("not a Rotor store file (bad magic bytes)");
        if len < MAGIC.len() as u64 {
            return Err(bad_magic());
        }
        let mut src = Source::new(&file, len.saturating_sub(2 * HASH_LEN as u64));
        let mut magic = [0u8; 8];
        src.inner.read_exact(&mut magic).map_err(self.io("read"))?;
        if magic != *MAGIC {
            return Err(bad_magic());
        }
        if len < (MAGIC.len() + 1 + 2 * HASH_LEN) as u64 {
            return Err(self.corrupt(format!("file is truncated ({len} bytes)")));
        }
        src.hash(&magic);
        // Structural problems found while parsing are reported after the
        // checksum and the MAC, which say more: "damaged" or "edited".
        let parsed = self.parse(&mut src);
        if let Err(e @ Error::Io { .. }) = parsed {
            return Err(e);
        }
        let (checksum_ok, mac_ok) = src.finish().map_err(|e| match e {
            Short::Io(e) => self.io("read")(e),
            Short::Truncated(_) => self.corrupt(format!("file is truncated ({len} bytes)")),
        })?;
        if !checksum_ok {
            return Err(
                self.corrupt("checksum mismatch: the file was truncated, damaged or edited")
            );
        }
        if mac_ok == Some(false) {
            return Err(self.corrupt(
                "authentication failed: the contents were changed without the store's key \
                 (edited, reordered, or records pasted from another store)",
            ));
        }
        let mut state = parsed?;
        if mac_ok.is_none() {
            return Err(self.corrupt("the file's MAC key was never read"));
        }
        state.source = Some(Arc::new(file));
        Ok(state)
    }

    fn short(&self, e: Short) -> Error {
        match e {
            Short::Io(e) => self.io("read")(e),
            Short::Truncated(field) => self.corrupt(format!("field `{field}` is truncated")),
        }
    }

    /// Parses the body after the magic bytes, keying the MAC as soon as
    /// its key is read.
    fn parse(&self, src: &mut Source<'_>) -> Result<State> {
        let short = |e| self.short(e);
        let utf8 = |field: &str, b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| self.corrupt(format!("{field} is not valid UTF-8")))
        };
        let format = src.u8("format version").map_err(short)?;
        if format != 1 && format != FORMAT {
            return Err(self.corrupt(format!(
                "unsupported store format version {format} (this build reads versions 1 and {FORMAT})"
            )));
        }
        let v2 = format >= 2;
        let store_id: [u8; 16] = src.array("store id").map_err(short)?;
        let n = src.u8("kek id").map_err(short)? as usize;
        let kek_id = utf8("kek id", src.vec(n, "kek id").map_err(short)?)?;
        let n = src.u16("wrapped MAC key").map_err(short)? as usize;
        let wrapped_mac_key = src.vec(n, "wrapped MAC key").map_err(short)?;
        let mac_key = self
            .0
            .kek
            .unwrap(&kek_id, &wrapped_mac_key)
            .map_err(|e| self.envelope(e))?;
        src.key(mac_key.expose());
        let generation = src.u64("generation").map_err(short)?;
        let max_versions = if v2 {
            src.u32("max versions").map_err(short)?
        } else {
            0
        };
        let count = src.u32("secret count").map_err(short)?;
        let mut secrets = BTreeMap::new();
        let mut last_name: Option<String> = None;
        let mut scratch = Vec::new();
        for _ in 0..count {
            let n = src.u16("secret name").map_err(short)? as usize;
            let name = utf8("secret name", src.vec(n, "secret name").map_err(short)?)?;
            validate_secret_name(&name).map_err(|e| self.corrupt(e.to_string()))?;
            if last_name.as_ref().is_some_and(|last| *last >= name) {
                return Err(self.corrupt(format!("secret {name:?} is out of order")));
            }
            let next_version = src.u64("next version").map_err(short)?;
            let (secret_max, removed_through) = if v2 {
                (
                    src.u32("max versions").map_err(short)?,
                    src.u64("removed through").map_err(short)?,
                )
            } else {
                (0, 0)
            };
            let n = src.u32("version count").map_err(short)?;
            let mut versions: Vec<Version> = Vec::with_capacity(n.min(1024) as usize);
            let mut seen = Stages::NONE;
            for _ in 0..n {
                let number = src.u64("version number").map_err(short)?;
                let created_at_ms = src.u64("created-at").map_err(short)?;
                let bits = src.u8("stages").map_err(short)?;
                let stages = Stages::from_bits(bits).ok_or_else(|| {
                    self.corrupt(format!("secret {name:?}: bad stage bits {bits}"))
                })?;
                let len = src.u32("sealed record").map_err(short)?;
                let offset = src.pos;
                src.fill_vec(&mut scratch, len as usize, "sealed record")
                    .map_err(short)?;
                if versions.last().is_some_and(|v| v.number >= number) || number >= next_version {
                    return Err(
                        self.corrupt(format!("secret {name:?}: version {number} is out of order"))
                    );
                }
                if seen.bits() & stages.bits() != 0 {
                    return Err(self.corrupt(format!(
                        "secret {name:?}: a stage label is on more than one version"
                    )));
                }
                seen = Stages::from_bits(seen.bits() | stages.bits()).expect("valid bits");
                versions.push(Version {
                    number,
                    created_at_ms,
                    stages,
                    size: rotor_envelope::plaintext_len(&scratch).unwrap_or(0),
                    sealed: Sealed::InFile { offset, len },
                });
            }
            last_name = Some(name.clone());
            secrets.insert(
                name,
                Secret {
                    next_version,
                    max_versions: secret_max,
                    removed_through,
                    versions,
                },
            );
        }
        if src.pos != src.body_end {
            return Err(self.corrupt(format!(
                "{} unexpected bytes after the last secret",
                src.body_end - src.pos
            )));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        if mac_key.expose().len() != raw.len() {
            return Err(self.corrupt("the file's MAC key has the wrong length"));
        }
        raw.copy_from_slice(mac_key.expose());
        Ok(State {
            store_id,
            kek_id,
            wrapped_mac_key,
            mac_key: Arc::new(raw),
            generation,
            max_versions,
            secrets,
            source: None,
        })
    }
}

/// Why a read of the body stopped.
enum Short {
    /// The field would run into the trailer or past the end.
    Truncated(&'static str),
    Io(std::io::Error),
}

/// The store file read front to back through one buffer, every byte of the
/// body fed to the checksum and (once its key is known) the MAC.
struct Source<'f> {
    inner: BufReader<&'f File>,
    /// Bytes consumed so far.
    pos: u64,
    /// Where the body ends and the MAC and checksum begin.
    body_end: u64,
    sum: digest::Context,
    mac: Option<hmac::Context>,
    /// Body bytes read before the MAC key was known.
    unkeyed: Vec<u8>,
}

impl<'f> Source<'f> {
    fn new(file: &'f File, body_end: u64) -> Self {
        Self {
            inner: BufReader::with_capacity(IO_BUFFER, file),
            pos: 0,
            body_end,
            sum: digest::Context::new(&digest::SHA256),
            mac: None,
            unkeyed: Vec::new(),
        }
    }

    fn hash(&mut self, bytes: &[u8]) {
        self.pos += bytes.len() as u64;
        self.sum.update(bytes);
        match &mut self.mac {
            Some(mac) => mac.update(bytes),
            None => self.unkeyed.extend_from_slice(bytes),
        }
    }

    fn key(&mut self, key: &[u8]) {
        let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
        mac.update(&std::mem::take(&mut self.unkeyed));
        self.mac = Some(mac);
    }

    fn fill(&mut self, buf: &mut [u8], field: &'static str) -> Result<(), Short> {
        if self.pos + buf.len() as u64 > self.body_end {
            return Err(Short::Truncated(field));
        }
        read_exact(&mut self.inner, buf, field)?;
        self.hash(buf);
        Ok(())
    }

    fn fill_vec(&mut self, buf: &mut Vec<u8>, n: usize, field: &'static str) -> Result<(), Short> {
        if self.pos + n as u64 > self.body_end {
            return Err(Short::Truncated(field));
        }
        buf.clear();
        buf.resize(n, 0);
        self.fill(buf, field)
    }

    fn vec(&mut self, n: usize, field: &'static str) -> Result<Vec<u8>, Short> {
        let mut buf = Vec::new();
        self.fill_vec(&mut buf, n, field)?;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Short> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, field)?;
        Ok(buf)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Short> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, Short> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads what is left of the body and the trailer; says whether the
    /// checksum and (when keyed) the MAC match.
    fn finish(mut self) -> Result<(bool, Option<bool>), Short> {
        let mut buf = vec![0u8; IO_BUFFER];
        while self.pos < self.body_end {
            let n = (self.body_end - self.pos).min(IO_BUFFER as u64) as usize;
            self.fill(&mut buf[..n], "body")?;
        }
        let mut mac = [0u8; HASH_LEN];
        let mut checksum = [0u8; HASH_LEN];
        for (buf, field) in [(&mut mac, "MAC"), (&mut checksum, "checksum")] {
            read_exact(&mut self.inner, buf, field)?;
        }
        self.sum.update(&mac);
        let checksum_ok = equal(self.sum.finish().as_ref(), &checksum);
        let mac_ok = self.mac.map(|m| equal(m.sign().as_ref(), &mac));
        Ok((checksum_ok, mac_ok))
    }
}

/// Compares in time that depends only on the length.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the file is written: every byte also goes to the MAC and the
/// checksum, which `finish` appends.
struct Sink<'w, W: Write> {
    out: &'w mut W,
    written: u64,
    sum: digest::Context,
    mac: hmac::Context,
}

impl<'w, W: Write> Sink<'w, W> {
    fn new(out: &'w mut W, mac_key: &[u8]) -> Self {
        Self {
            out,
            written: 0,
            sum: digest::Context::new(&digest::SHA256),
            mac: hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, mac_key)),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.sum.update(bytes);
        self.mac.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let mac = self.mac.sign();
        self.out.write_all(mac.as_ref())?;
        self.sum.update(mac.as_ref());
        self.out.write_all(self.sum.finish().as_ref())
    }
}

/// Fills `buf` from `from`; the end of the file is `Short::Truncated`
/// naming the `field` being read.
fn read_exact(from: &mut impl Read, buf: &mut [u8], field: &'static str) -> Result<(), Short> {
    from.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Short::Truncated(field)
        } else {
            Short::Io(e)
        }
    })
}
