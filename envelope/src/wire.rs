//! Length-prefixed big-endian encoding shared by Rotor's binary formats.
//! A [`Reader`] names the field it failed on, so a truncated or malformed
//! input gets an error that says where.

use crate::{Error, Result};

/// Appends fields to a byte buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }
    /// A field prefixed with its length as a u8.
    pub fn short(&mut self, field: &'static str, b: &[u8]) -> Result<&mut Self> {
        let len = u8::try_from(b.len()).map_err(|_| too_large(field, b.len(), u8::MAX as usize))?;
        Ok(self.u8(len).bytes(b))
    }
    /// A field prefixed with its length as a u16.
    pub fn medium(&mut self, field: &'static str, b: &[u8]) -> Result<&mut Self> {
        let len =
            u16::try_from(b.len()).map_err(|_| too_large(field, b.len(), u16::MAX as usize))?;
        Ok(self.u16(len).bytes(b))
    }
    /// A field prefixed with its length as a u32.
    pub fn long(&mut self, field: &'static str, b: &[u8]) -> Result<&mut Self> {
        let len =
            u32::try_from(b.len()).map_err(|_| too_large(field, b.len(), u32::MAX as usize))?;
        Ok(self.u32(len).bytes(b))
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

fn too_large(field: &'static str, len: usize, max: usize) -> Error {
    Error::TooLarge { field, len, max }
}

/// Reads fields from a byte slice, front to back.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Truncated {
                field,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        Ok(self.take(field, N)?.try_into().expect("length checked"))
    }
    pub fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.take(field, 1)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    pub fn short(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.u8(field)? as usize;
        self.take(field, n)
    }
    pub fn medium(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.u16(field)? as usize;
        self.take(field, n)
    }
    pub fn long(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.u32(field)? as usize;
        self.take(field, n)
    }
    /// A UTF-8 string with a u8 length prefix.
    pub fn short_str(&mut self, field: &'static str) -> Result<&'a str> {
        utf8(field, self.short(field)?)
    }
    /// A UTF-8 string with a u16 length prefix.
    pub fn medium_str(&mut self, field: &'static str) -> Result<&'a str> {
        utf8(field, self.medium(field)?)
    }
    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

fn utf8<'a>(field: &'static str, b: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| Error::Malformed {
        field,
        problem: "is not valid UTF-8".to_owned(),
    })
}
