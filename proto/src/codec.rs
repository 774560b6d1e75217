//! Bounds-checked big-endian readers and writers for the control-plane
//! encodings (handshake, gossip). Every read checks its length once and
//! returns a typed error; nothing here can panic on peer input.

use crate::PeerName;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what} too long: {len} > {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: u64 },
    #[error("{count} trailing bytes after {what}")]
    Trailing { what: &'static str, count: usize },
}

/// A cursor over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { what, needed: n - self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(what, N)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Invalid { what, value: v.into() }),
        }
    }

    pub fn peer_name(&mut self, what: &'static str) -> Result<PeerName, DecodeError> {
        Ok(PeerName::from_bytes(self.array(what)?))
    }

    /// A string prefixed by its u8 length.
    pub fn short_str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u8(what)? as usize;
        std::str::from_utf8(self.bytes(what, len)?).map_err(|_| DecodeError::BadUtf8 { what })
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { what, count }),
        }
    }
}

/// Appends big-endian values to a `Vec<u8>`.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    pub fn peer_name(&mut self, v: PeerName) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// Writes a u8-length-prefixed string, truncated at a char boundary to
    /// 255 bytes so that the encoder can never produce what the decoder
    /// rejects.
    pub fn short_str(&mut self, v: &str) -> &mut Self {
        let mut end = v.len().min(u8::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8).bytes(&v.as_bytes()[..end])
    }
}

/// Test support for decoders: flips some bytes of a valid encoding and
/// cuts it short, then decodes both versions. The decoder must return
/// (anything) without panicking; arbitrary bytes alone rarely get past a
/// format's header, mutated valid encodings reach the per-record checks.
#[cfg(test)]
pub(crate) fn decode_mutated<T>(
    mut buf: Vec<u8>,
    flips: &[(proptest::sample::Index, u8)],
    cut: proptest::sample::Index,
    decode: impl Fn(&[u8]) -> T,
) {
    for (at, byte) in flips {
        let i = at.index(buf.len());
        buf[i] ^= byte;
    }
    let _ = decode(&buf);
    let _ = decode(&buf[..cut.index(buf.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn short_str_roundtrips_prefix(s in "\\PC{0,300}") {
            let mut buf = Vec::new();
            Writer::new(&mut buf).short_str(&s);
            let mut r = Reader::new(&buf);
            let got = r.short_str("s").expect("decodes");
            prop_assert!(s.starts_with(got));
            prop_assert!(got.len() <= 255);
            prop_assert!(r.finish("s").is_ok());
        }

        #[test]
        fn reader_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut r = Reader::new(&buf);
            let _ = r.u64("a");
            let _ = r.short_str("b");
            let _ = r.bool("c");
            let _ = r.peer_name("d");
        }
    }
}
