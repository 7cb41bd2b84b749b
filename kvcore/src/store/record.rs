//! The byte layout of one stored key: everything the store keeps for it, in one run of bytes.
//!
//! A record is a 22-byte header, the key, the value and up to two optional 8-byte fields, all
//! integers little-endian:
//!
//! | bytes            | field                                                              |
//! |------------------|--------------------------------------------------------------------|
//! | 0..2             | `meta`: key length (bits 0-10), value kind (bits 11-13), flags     |
//! | 2..6             | value length, `u32`                                                |
//! | 6..14            | version, `u64`                                                     |
//! | 14..22           | accepted ballot, `u64` ([`Ballot::to_bits`])                       |
//! | 22..             | key bytes, then value bytes                                        |
//! | then, if flagged | promised ballot `u64` (bit 14), then expiry time `u64` (bit 15)    |
//!
//! The value kind is 0 for no value (a tombstone, or a key that was only promised) and
//! 1 + the [`Encoding`]'s index otherwise. The promised ballot is stored only when it differs
//! from the accepted one: after an accept they are equal, so a key pays for a promise only while
//! a proposal on it is in flight. The optional fields come after the value so that adding or
//! dropping a promise leaves the key and value where they are. The expiry time is the
//! replicated [`Register::expires`]: a key without a TTL does not pay for it.

use super::read_buffer::copy_out;
use crate::key::MAX_KEY_BYTES;
use crate::replica::{Ballot, Register};
use crate::store::{Entry, Version};
use crate::value::{Encoding, Value};

/// Bytes of the fixed header.
pub(super) const HEADER: usize = 22;

const KEY_LEN_MASK: u16 = (1 << 11) - 1;
const KIND_SHIFT: u32 = 11;
const KIND_MASK: u16 = 0b111;
const PROMISED: u16 = 1 << 14;
const EXPIRES: u16 = 1 << 15;

const _: () = assert!(MAX_KEY_BYTES <= KEY_LEN_MASK as usize);

/// A record's fields other than its key and value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    /// Version of the value (or of the tombstone).
    pub version: Version,
    /// Ballot the register was accepted with.
    pub ballot: Ballot,
    /// Highest ballot promised. Stored only when it differs from `ballot`; reads as `ballot`
    /// otherwise.
    pub promised: Ballot,
    /// When the value expires (milliseconds since 1970), if it does.
    pub expires: Option<u64>,
}

impl Meta {
    /// The metadata of `register` once accepted, with `promised` as the promise (at least the
    /// register's ballot).
    pub fn accepted(register: &Register, promised: Ballot) -> Meta {
        Meta {
            version: register.version,
            ballot: register.ballot,
            promised: promised.max(register.ballot),
            expires: register.expires,
        }
    }
}

/// Bytes a record with this key length, metadata and value length takes.
pub(super) fn encoded_len(key_len: usize, meta: &Meta, value_len: usize) -> usize {
    HEADER
        + key_len
        + value_len
        + 8 * usize::from(meta.promised != meta.ballot)
        + 8 * usize::from(meta.expires.is_some())
}

/// Writes a record into `dst`, which must be exactly [`encoded_len`] bytes long.
///
/// # Panics
/// If `dst` has the wrong length or the key is longer than [`MAX_KEY_BYTES`] (callers validate
/// keys first).
pub(super) fn encode(dst: &mut [u8], key: &[u8], meta: &Meta, value: Option<(Encoding, &[u8])>) {
    let value_bytes = value.map_or(&[][..], |(_, b)| b);
    assert_eq!(dst.len(), encoded_len(key.len(), meta, value_bytes.len()));
    assert!(key.len() <= MAX_KEY_BYTES, "key of {} bytes", key.len());
    let value_len = u32::try_from(value_bytes.len()).expect("checked by the caller");
    let mut bits = key.len() as u16 | value.map_or(0, |(e, _)| kind(e)) << KIND_SHIFT;
    if meta.promised != meta.ballot {
        bits |= PROMISED;
    }
    if meta.expires.is_some() {
        bits |= EXPIRES;
    }
    dst[0..2].copy_from_slice(&bits.to_le_bytes());
    dst[2..6].copy_from_slice(&value_len.to_le_bytes());
    dst[6..14].copy_from_slice(&meta.version.0.to_le_bytes());
    dst[14..22].copy_from_slice(&meta.ballot.to_bits().to_le_bytes());
    let (k, rest) = dst[HEADER..].split_at_mut(key.len());
    k.copy_from_slice(key);
    let (v, mut rest) = rest.split_at_mut(value_bytes.len());
    v.copy_from_slice(value_bytes);
    if meta.promised != meta.ballot {
        rest[..8].copy_from_slice(&meta.promised.to_bits().to_le_bytes());
        rest = &mut rest[8..];
    }
    if let Some(at) = meta.expires {
        rest[..8].copy_from_slice(&at.to_le_bytes());
    }
}

/// One record, borrowed from the arena it lives in. Fields are decoded on demand, straight from
/// the bytes: a read decodes only what it returns.
#[derive(Clone, Copy)]
pub(super) struct Record<'a> {
    /// From the record's first byte to the end of the arena.
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record starting at `offset`, which must be where [`encode`] wrote one.
    #[inline]
    pub fn at(arena: &'a [u8], offset: usize) -> Self {
        Record {
            bytes: &arena[offset..],
        }
    }

    /// The key of the record at `offset`, reading only what that takes: this is the comparison
    /// every lookup makes.
    #[inline]
    pub fn key_at(arena: &'a [u8], offset: usize) -> &'a [u8] {
        Record::at(arena, offset).key()
    }

    /// The fixed header, so that reading its fields takes one bounds check, not one each.
    #[inline]
    fn header(&self) -> &'a [u8; HEADER] {
        self.bytes[..HEADER]
            .try_into()
            .expect("a record starts with its header")
    }

    #[inline]
    fn bits(&self) -> u16 {
        let h = self.header();
        u16::from_le_bytes([h[0], h[1]])
    }

    #[inline]
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    #[inline]
    fn key_len(&self) -> usize {
        (self.bits() & KEY_LEN_MASK) as usize
    }

    /// Length of the value's bytes (0 when there is no value).
    #[inline]
    pub fn value_len(&self) -> usize {
        let h = self.header();
        u32::from_le_bytes([h[2], h[3], h[4], h[5]]) as usize
    }

    /// Length of the whole record, from its header alone.
    pub fn len(&self) -> usize {
        let bits = self.bits();
        HEADER
            + self.key_len()
            + self.value_len()
            + 8 * usize::from(bits & PROMISED != 0)
            + 8 * usize::from(bits & EXPIRES != 0)
    }

    /// The record's bytes.
    #[cfg(test)]
    pub fn as_bytes(&self) -> &'a [u8] {
        &self.bytes[..self.len()]
    }

    /// The key's bytes.
    #[inline]
    pub fn key(&self) -> &'a [u8] {
        &self.bytes[HEADER..HEADER + self.key_len()]
    }

    /// The key. Records are only written from `&str` keys.
    pub fn key_str(&self) -> &'a str {
        std::str::from_utf8(self.key()).expect("keys are stored from &str")
    }

    /// Whether the record holds a value (it is neither a tombstone nor only a promise).
    #[inline]
    pub fn has_value(&self) -> bool {
        self.bits() >> KIND_SHIFT & KIND_MASK != 0
    }

    /// The version.
    #[inline]
    pub fn version(&self) -> Version {
        let h = self.header();
        Version(u64::from_le_bytes([
            h[6], h[7], h[8], h[9], h[10], h[11], h[12], h[13],
        ]))
    }

    /// The value's encoding and bytes.
    #[inline]
    pub fn value(&self) -> Option<(Encoding, &'a [u8])> {
        let encoding = encoding(self.bits() >> KIND_SHIFT & KIND_MASK)?;
        let start = HEADER + self.key_len();
        Some((encoding, &self.bytes[start..start + self.value_len()]))
    }

    /// The value, copied out of the arena.
    #[inline]
    pub fn copied_value(&self) -> Option<Value> {
        self.value()
            .map(|(encoding, bytes)| Value::from_stored(encoding, copy_out(bytes)))
    }

    /// When the value expires, if it does.
    #[inline]
    pub fn expires(&self) -> Option<u64> {
        let bits = self.bits();
        if bits & EXPIRES == 0 {
            return None;
        }
        let promised = 8 * usize::from(bits & PROMISED != 0);
        Some(self.u64_at(HEADER + self.key_len() + self.value_len() + promised))
    }

    /// Everything but the key and value.
    pub fn meta(&self) -> Meta {
        let bits = self.bits();
        let ballot = Ballot::from_bits(self.u64_at(14));
        let mut tail = HEADER + self.key_len() + self.value_len();
        let promised = if bits & PROMISED != 0 {
            tail += 8;
            Ballot::from_bits(self.u64_at(tail - 8))
        } else {
            ballot
        };
        let expires = (bits & EXPIRES != 0).then(|| self.u64_at(tail));
        Meta {
            version: self.version(),
            ballot,
            promised,
            expires,
        }
    }

    /// The accepted register, its value copied out.
    pub fn register(&self) -> Register {
        Register {
            ballot: Ballot::from_bits(self.u64_at(14)),
            version: self.version(),
            value: self.copied_value(),
            expires: self.meta().expires,
        }
    }

    /// The client-visible entry, if the record holds a value.
    #[inline]
    pub fn entry(&self) -> Option<Entry> {
        Some(Entry {
            value: self.copied_value()?,
            version: self.version(),
            expires: self.expires(),
        })
    }
}

/// Overwrites the version and value of the record at the start of `bytes` in place, if the new
/// value is exactly as long as the old one and the record has no expiry (which a new value
/// drops); returns whether it did. This is the common overwrite, and it changes nothing else.
pub(super) fn overwrite_value(
    bytes: &mut [u8],
    version: Version,
    value: (Encoding, &[u8]),
) -> bool {
    let record = Record::at(bytes, 0);
    let bits = record.bits();
    if bits & EXPIRES != 0 || record.value_len() != value.1.len() {
        return false;
    }
    let start = HEADER + record.key_len();
    let bits = bits & !(KIND_MASK << KIND_SHIFT) | kind(value.0) << KIND_SHIFT;
    bytes[0..2].copy_from_slice(&bits.to_le_bytes());
    bytes[6..14].copy_from_slice(&version.0.to_le_bytes());
    bytes[start..start + value.1.len()].copy_from_slice(value.1);
    true
}

/// The value kind of an encoding: its [tag](Encoding::tag); 0 is no value.
fn kind(encoding: Encoding) -> u16 {
    u16::from(encoding.tag())
}

/// The encoding of a value kind; `None` for no value.
#[inline]
fn encoding(kind: u16) -> Option<Encoding> {
    Some(match kind {
        0 => return None,
        1 => Encoding::String,
        2 => Encoding::Integer,
        3 => Encoding::Float,
        4 => Encoding::Boolean,
        5 => Encoding::Binary,
        6 => Encoding::Json,
        _ => unreachable!("records are only written by `encode`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use proptest::prelude::*;

    fn encode_vec(key: &[u8], meta: &Meta, value: Option<(Encoding, &[u8])>) -> Vec<u8> {
        let len = encoded_len(key.len(), meta, value.map_or(0, |(_, b)| b.len()));
        let mut buf = vec![0; len];
        encode(&mut buf, key, meta, value);
        buf
    }

    #[test]
    fn value_kinds_follow_the_order_of_every_encoding() {
        for (i, e) in Encoding::ALL.into_iter().enumerate() {
            assert_eq!(kind(e), i as u16 + 1);
            assert_eq!(encoding(kind(e)), Some(e));
        }
        assert_eq!(encoding(0), None);
    }

    #[test]
    fn a_value_of_the_same_length_is_overwritten_in_place_and_nothing_else_changes() {
        let meta = Meta {
            version: Version(3),
            ballot: Ballot::new(9, NodeId(2)),
            promised: Ballot::new(11, NodeId(1)),
            expires: None,
        };
        let mut buf = encode_vec(b"key", &meta, Some((Encoding::String, b"abcd")));
        assert!(overwrite_value(
            &mut buf,
            Version(4),
            (Encoding::Binary, &[0, 1, 2, 3])
        ));
        let r = Record::at(&buf, 0);
        assert_eq!(
            r.meta(),
            Meta {
                version: Version(4),
                ..meta
            }
        );
        assert_eq!(r.value(), Some((Encoding::Binary, &[0u8, 1, 2, 3][..])));
        assert_eq!(r.key(), b"key");
        // Another length, or an expiry to drop, needs a new record.
        assert!(!overwrite_value(
            &mut buf,
            Version(5),
            (Encoding::Binary, &[0; 5])
        ));
        let expiring = Meta {
            expires: Some(7),
            ..meta
        };
        let mut buf = encode_vec(b"key", &expiring, Some((Encoding::String, b"abcd")));
        assert!(!overwrite_value(
            &mut buf,
            Version(4),
            (Encoding::String, b"efgh")
        ));
        // A tombstone of an empty value takes an empty value in place.
        let mut buf = encode_vec(b"key", &meta, None);
        assert!(overwrite_value(
            &mut buf,
            Version(4),
            (Encoding::String, b"")
        ));
        assert_eq!(
            Record::at(&buf, 0).value(),
            Some((Encoding::String, &b""[..]))
        );
    }

    #[test]
    fn a_typical_entry_is_the_header_key_and_value_only() {
        let meta = Meta {
            version: Version(3),
            ballot: Ballot::new(9, NodeId(2)),
            promised: Ballot::new(9, NodeId(2)),
            expires: None,
        };
        let value = [b'v'; 32];
        let buf = encode_vec(b"key:000000000001", &meta, Some((Encoding::String, &value)));
        assert_eq!(buf.len(), 22 + 16 + 32);
        let r = Record::at(&buf, 0);
        assert_eq!(r.meta(), meta);
        assert_eq!(r.key_str(), "key:000000000001");
        assert_eq!(r.value(), Some((Encoding::String, &value[..])));
    }

    #[test]
    fn a_pending_promise_and_an_expiry_cost_eight_bytes_each() {
        let base = Meta {
            version: Version(1),
            ballot: Ballot::new(1, NodeId(0)),
            promised: Ballot::new(1, NodeId(0)),
            expires: None,
        };
        let promised = Meta {
            promised: Ballot::new(2, NodeId(1)),
            ..base
        };
        let both = Meta {
            expires: Some(u64::MAX - 1),
            ..promised
        };
        let only_expiry = Meta {
            expires: Some(5),
            ..base
        };
        for (meta, extra) in [(base, 0), (promised, 8), (both, 16), (only_expiry, 8)] {
            let buf = encode_vec(b"k", &meta, Some((Encoding::Integer, &[7; 8])));
            assert_eq!(buf.len(), HEADER + 1 + 8 + extra);
            let r = Record::at(&buf, 0);
            assert_eq!(r.meta(), meta);
            assert_eq!(r.value(), Some((Encoding::Integer, &[7u8; 8][..])));
        }
    }

    #[test]
    fn tombstones_and_promises_hold_no_value_but_keep_their_metadata() {
        let tombstone = Meta {
            version: Version(4),
            ballot: Ballot::new(3, NodeId(1)),
            promised: Ballot::new(3, NodeId(1)),
            expires: None,
        };
        let promise_only = Meta {
            promised: Ballot::new(1, NodeId(5)),
            ..Meta::default()
        };
        for meta in [tombstone, promise_only] {
            let buf = encode_vec("ключ".as_bytes(), &meta, None);
            let r = Record::at(&buf, 0);
            assert!(!r.has_value());
            assert_eq!((r.value(), r.entry(), r.value_len()), (None, None, 0));
            assert_eq!(r.meta(), meta);
            assert_eq!(r.key_str(), "ключ");
            assert_eq!(r.register().version, meta.version);
        }
        // An empty value is a value, not a tombstone.
        let buf = encode_vec(b"k", &tombstone, Some((Encoding::Binary, &[])));
        assert!(Record::at(&buf, 0).has_value());
        assert_eq!(
            Record::at(&buf, 0).entry().unwrap().value,
            Value::binary(Vec::new())
        );
    }

    #[test]
    fn records_are_found_back_to_back_in_an_arena() {
        let metas = [
            Meta::default(),
            Meta {
                version: Version(2),
                ballot: Ballot::new(1, NodeId(1)),
                promised: Ballot::new(4, NodeId(0)),
                expires: Some(1),
            },
        ];
        let mut arena = Vec::new();
        let mut offsets = Vec::new();
        for (i, meta) in metas.iter().enumerate() {
            offsets.push(arena.len());
            let value = vec![b'x'; i * 100];
            arena.extend(encode_vec(
                format!("key{i}").as_bytes(),
                meta,
                Some((Encoding::String, &value)),
            ));
        }
        for (i, (&offset, meta)) in offsets.iter().zip(&metas).enumerate() {
            let r = Record::at(&arena, offset);
            assert_eq!(Record::key_at(&arena, offset), format!("key{i}").as_bytes());
            assert_eq!(r.key(), format!("key{i}").as_bytes());
            assert_eq!(r.meta(), *meta);
            assert_eq!(r.value_len(), i * 100);
        }
        assert_eq!(
            Record::at(&arena, offsets[1]).as_bytes().len() + offsets[1],
            arena.len()
        );
    }

    fn any_ballot() -> impl Strategy<Value = Ballot> {
        prop_oneof![Just(Ballot::ZERO), any::<u64>().prop_map(Ballot::from_bits)]
    }

    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z:0-9]{1,24}",
            // Up to the longest key, in multi-byte characters too.
            "[a-zé€😀]{1,256}".prop_filter("fits", |k| k.len() <= MAX_KEY_BYTES),
            (1..=MAX_KEY_BYTES).prop_map(|n| "k".repeat(n)),
        ]
    }

    fn any_value_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => (0..=1usize << 20, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            1 => Just(vec![0xa5; 1 << 20]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn every_field_round_trips(
            key in any_key(),
            version in any::<u64>(),
            ballot in any_ballot(),
            promised in any_ballot(),
            expires in any::<Option<u64>>(),
            encoding in proptest::option::of(proptest::sample::select(Encoding::ALL.to_vec())),
            value in any_value_bytes(),
            padding in 0..40usize,
        ) {
            let meta = Meta { version: Version(version), ballot, promised, expires };
            let value = encoding.map(|e| (e, &value[..]));
            let record = encode_vec(key.as_bytes(), &meta, value);
            // Records sit among others: reading one must not depend on where the arena ends.
            let mut arena = vec![0xee; padding];
            arena.extend_from_slice(&record);
            arena.extend(std::iter::repeat_n(0xff, padding));
            let r = Record::at(&arena, padding);
            prop_assert_eq!(r.as_bytes(), &record[..]);
            prop_assert_eq!(r.key_str(), key.as_str());
            prop_assert_eq!(Record::key_at(&arena, padding), key.as_bytes());
            prop_assert_eq!(r.meta(), meta);
            prop_assert_eq!(r.value(), value);
            prop_assert_eq!(r.has_value(), value.is_some());
            prop_assert_eq!(r.value_len(), value.map_or(0, |(_, b)| b.len()));
            let fixed = HEADER + key.len() + r.value_len();
            prop_assert_eq!(record.len() - fixed, 8 * usize::from(promised != ballot) + 8 * usize::from(expires.is_some()));
        }
    }
}
