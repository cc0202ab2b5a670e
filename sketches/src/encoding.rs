//! The byte layout shared by every sketch, and a bounds-checked reader for it.
//!
//! Every encoding starts with two bytes: [`FORMAT_VERSION`] and a [`SketchKind`] tag. The
//! body that follows is the sketch's own (see [`crate::hll`] and [`crate::ddsketch`]); it
//! uses little-endian LEB128 varints for lengths and indices, and zigzag varints for signed
//! counts, because most numbers in a sketch are small.
//!
//! Decoding is strict so that untrusted `bytea` can never panic, allocate without bound or
//! be read two ways: every length is capped by the sketch's own limits before anything is
//! allocated, varints must be minimal, and trailing bytes are an error. One consequence,
//! relied on by the tests: whatever `from_bytes` accepts, `to_bytes` reproduces exactly.

use crate::error::SketchError;

/// The format version written as the first byte of every sketch. Bump it only together with
/// a reader for the old version: sketches are persisted in user tables.
pub const FORMAT_VERSION: u8 = 1;

/// Which sketch an encoding holds (its second byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SketchKind {
    /// A [`crate::Hll`].
    Hll = 1,
    /// A [`crate::DdSketch`].
    DdSketch = 2,
}

impl SketchKind {
    /// The kind named by a tag byte, if any.
    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Self::Hll),
            2 => Some(Self::DdSketch),
            _ => None,
        }
    }

    /// A human name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hll => "HyperLogLog",
            Self::DdSketch => "DDSketch",
        }
    }
}

/// Reads only the header of an encoded sketch: which kind it is, without decoding the body.
pub fn sketch_kind(bytes: &[u8]) -> Result<SketchKind, SketchError> {
    let mut reader = Reader::new(bytes);
    let tag = reader.version_and_tag()?;
    SketchKind::from_tag(tag).ok_or(SketchError::Corrupt("unknown sketch kind tag"))
}

/// Starts an encoding: the version byte and the kind tag.
pub(crate) fn put_header(out: &mut Vec<u8>, kind: SketchKind) {
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
}

/// Appends `value` as a minimal LEB128 varint (1 byte below 128, at most 10).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a signed value zigzag-encoded, so that small negative numbers stay short too.
pub(crate) fn put_zigzag(out: &mut Vec<u8>, value: i64) {
    put_varint(out, zigzag(value));
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// A cursor over untrusted bytes: every read checks bounds and reports [`SketchError`].
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn version_and_tag(&mut self) -> Result<u8, SketchError> {
        let version = self.u8()?;
        if version != FORMAT_VERSION {
            return Err(SketchError::UnsupportedVersion(version));
        }
        self.u8()
    }

    /// Checks the version byte and that the kind tag is `expected`.
    pub(crate) fn header(&mut self, expected: SketchKind) -> Result<(), SketchError> {
        let tag = self.version_and_tag()?;
        if tag != expected as u8 {
            return Err(SketchError::WrongKind {
                expected: expected.name(),
                found: tag,
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, SketchError> {
        let byte = *self.bytes.get(self.pos).ok_or(SketchError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    /// The next `len` bytes, borrowed.
    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], SketchError> {
        let end = self.pos.checked_add(len).ok_or(SketchError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(SketchError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// A minimal LEB128 varint of at most 64 bits.
    pub(crate) fn varint(&mut self) -> Result<u64, SketchError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let payload = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if shift == 63 && payload > 1 {
                return Err(SketchError::Corrupt("varint overflows 64 bits"));
            }
            value |= payload << shift;
            if byte & 0x80 == 0 {
                // A zero final byte after the first is padding: reject it so every number
                // has exactly one encoding and decode → encode is the identity.
                if byte == 0 && shift > 0 {
                    return Err(SketchError::Corrupt("varint is not minimal"));
                }
                return Ok(value);
            }
        }
        Err(SketchError::Corrupt("varint longer than 10 bytes"))
    }

    /// A zigzag varint.
    pub(crate) fn zigzag(&mut self) -> Result<i64, SketchError> {
        self.varint().map(unzigzag)
    }

    /// A varint that must fit `usize` and be at most `max`: the cap comes before any
    /// allocation sized by it.
    pub(crate) fn length(&mut self, max: usize, what: &'static str) -> Result<usize, SketchError> {
        let value = self.varint()?;
        usize::try_from(value)
            .ok()
            .filter(|&len| len <= max)
            .ok_or(SketchError::Corrupt(what))
    }

    /// Ends decoding: the input must be used up.
    pub(crate) fn finish(self) -> Result<(), SketchError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            extra => Err(SketchError::TrailingBytes(extra)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(value: u64) {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        let mut reader = Reader::new(&out);
        assert_eq!(reader.varint(), Ok(value));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for shift in 0..64 {
            let base = 1u64 << shift;
            for value in [base - 1, base, base + 1] {
                roundtrip(value);
            }
        }
        roundtrip(u64::MAX);
    }

    #[test]
    fn zigzag_keeps_small_magnitudes_small() {
        for value in [0i64, -1, 1, -64, 63, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert!(zigzag(-64) < 128);
    }

    #[test]
    fn non_minimal_and_overlong_varints_are_rejected() {
        let padded = [0x81, 0x00];
        assert!(matches!(
            Reader::new(&padded).varint(),
            Err(SketchError::Corrupt(_))
        ));
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            Reader::new(&too_big).varint(),
            Err(SketchError::Corrupt(_))
        ));
        let endless = [0x80; 11];
        assert!(Reader::new(&endless).varint().is_err());
        assert_eq!(Reader::new(&[0x80]).varint(), Err(SketchError::Truncated));
    }

    #[test]
    fn header_checks_version_and_kind() {
        assert_eq!(sketch_kind(&[]), Err(SketchError::Truncated));
        assert_eq!(sketch_kind(&[1]), Err(SketchError::Truncated));
        assert_eq!(
            sketch_kind(&[9, 1]),
            Err(SketchError::UnsupportedVersion(9))
        );
        assert_eq!(sketch_kind(&[1, 1]), Ok(SketchKind::Hll));
        assert_eq!(sketch_kind(&[1, 2, 0]), Ok(SketchKind::DdSketch));
        assert!(sketch_kind(&[1, 7]).is_err());
        assert!(matches!(
            Reader::new(&[1, 2]).header(SketchKind::Hll),
            Err(SketchError::WrongKind { found: 2, .. })
        ));
    }
}
