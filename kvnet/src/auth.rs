//! Peer authentication: a shared cluster secret and HMAC-SHA256 tags over peer requests and
//! replies.
//!
//! A request's tag covers its method, its path and the exact body bytes, so one encoded frame
//! can still go to every replica unchanged (the tag travels beside it, in [`MAC_HEADER`]). The
//! reply's tag covers the request's tag, the status and the reply body, so a node can trust a
//! reply too: nothing on the way can forge one, alter one, or pass off the reply to another
//! request as the reply to this one. A tag does **not** stop replays: anyone who recorded a
//! request can send the same bytes again, and gets the same effect as the first time (a
//! CASPaxos message replayed is at worst refused as stale, but nothing here rejects it).
//!
//! # Tag input layout
//! Every length is big-endian; the label keeps a request tag from ever being read as a reply
//! tag.
//!
//! ```text
//! request: "kv-peer-request/1" | u32 len(method) | method | u32 len(path) | path | u64 len(body) | body
//! reply:   "kv-peer-reply/1"   | request tag (32 bytes) | u16 status | u64 len(body) | body
//! ```
//!
//! The tag is sent as 64 lowercase hex digits.
//!
//! # Rotating the secret
//! A [`Secret`] may hold several secrets, one per line: the first tags what the node sends,
//! and a tag under any of them is accepted. So the secret changes by rolling restarts without
//! ever stopping the cluster: every node first gets `old` then `new` (still tagging with the old
//! one, already accepting the new), then `new` then `old`, then `new` alone.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HTTP header that carries a peer request's or reply's tag.
pub const MAC_HEADER: &str = "x-kv-mac";

/// Shortest secret accepted, in bytes: shorter ones are guessable.
pub const MIN_SECRET_BYTES: usize = 16;

const REQUEST_LABEL: &[u8] = b"kv-peer-request/1";
const REPLY_LABEL: &[u8] = b"kv-peer-reply/1";

type HmacSha256 = Hmac<Sha256>;

/// A tag: HMAC-SHA256 output.
pub type Tag = [u8; 32];

/// The cluster secret every node shares. Cheap to clone; never printed (its `Debug` is
/// redacted), never serialized.
///
/// While the secret is being changed it holds more than one (see [the module](self)): tags
/// are made with the first and checked against each.
#[derive(Clone)]
pub struct Secret {
    text: Arc<[u8]>,
    /// HMAC keyed with each secret, the one that tags first, cloned for each tag: keying costs a
    /// hash block, so it is done once.
    keyed: Arc<[HmacSha256]>,
}

/// A secret that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(String);

impl Secret {
    /// The secrets written in `text` (a file's contents or an environment variable), one per
    /// line, each without leading and trailing whitespace (so a file that ends in a newline
    /// works); blank lines are skipped. The first tags, every one is accepted. Refused if there
    /// is none, or one is shorter than [`MIN_SECRET_BYTES`].
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            return Err(SecretError(format!(
                "the cluster secret is empty; it must have at least {MIN_SECRET_BYTES} bytes \
                 (e.g. `openssl rand -hex 32`)"
            )));
        }
        for (i, line) in lines.iter().enumerate() {
            if line.len() < MIN_SECRET_BYTES {
                return Err(SecretError(format!(
                    "cluster secret {} of {} is {} bytes long; it must have at least \
                     {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    lines.len(),
                    line.len()
                )));
            }
        }
        Ok(Secret::new(&lines))
    }

    /// A fresh secret of 32 random bytes from the operating system, written as 64 hex digits
    /// (so [`to_text`](Self::to_text) gives something a file or variable can hold).
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret::new(&[hex(&bytes).as_str()])
    }

    fn new(secrets: &[&str]) -> Self {
        let keyed = secrets
            .iter()
            // HMAC takes keys of any length.
            .map(|s| HmacSha256::new_from_slice(s.as_bytes()).expect("HMAC takes every key"))
            .collect();
        Secret {
            text: Arc::from(secrets.join("\n").as_bytes()),
            keyed,
        }
    }

    /// How many secrets are accepted (more than one while the secret is being changed).
    pub fn len(&self) -> usize {
        self.keyed.len()
    }

    /// Always false: a secret holds at least one.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
    }

    /// The secret as text, for handing it to another process. Keep it out of logs.
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }

    /// The HMAC of the secret that tags.
    fn mac(&self) -> HmacSha256 {
        self.keyed[0].clone()
    }

    /// Whether `tag` is what one of the secrets gives for the input `feed` writes. Each
    /// comparison is constant-time.
    fn verify(&self, tag: &Tag, feed: impl Fn(&mut HmacSha256)) -> bool {
        self.keyed.iter().any(|keyed| {
            let mut mac = keyed.clone();
            feed(&mut mac);
            mac.verify_slice(tag).is_ok()
        })
    }

    /// Whether `token` is one of the secrets: how an administrative HTTP request
    /// (`Authorization: Bearer <secret>`) is checked. The comparison is constant-time: both
    /// sides are first turned into a tag of one fixed input.
    pub fn accepts_token(&self, token: &str) -> bool {
        let label = b"kv-admin-token/1";
        let Ok(mut theirs) = HmacSha256::new_from_slice(token.trim().as_bytes()) else {
            return false;
        };
        theirs.update(label);
        let tag: Tag = theirs.finalize().into_bytes().into();
        self.verify(&tag, |mac| mac.update(label))
    }

    /// The tag of a request: `method`, `path` and the exact `body` bytes.
    pub fn request_tag(&self, method: &str, path: &str, body: &[u8]) -> Tag {
        let mut mac = self.mac();
        request_input(&mut mac, method, path, body);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of this request under one of the secrets.
    pub fn verify_request(&self, tag: &Tag, method: &str, path: &str, body: &[u8]) -> bool {
        self.verify(tag, |mac| request_input(mac, method, path, body))
    }

    /// The tag of the reply (`status`, `body`) to the request whose tag is `request`.
    pub fn reply_tag(&self, request: &Tag, status: u16, body: &[u8]) -> Tag {
        let mut mac = self.mac();
        reply_input(&mut mac, request, status, body);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of this reply to the request tagged `request`, under one of the
    /// secrets.
    pub fn verify_reply(&self, tag: &Tag, request: &Tag, status: u16, body: &[u8]) -> bool {
        self.verify(tag, |mac| reply_input(mac, request, status, body))
    }
}

fn request_input(mac: &mut HmacSha256, method: &str, path: &str, body: &[u8]) {
    mac.update(REQUEST_LABEL);
    for part in [method.as_bytes(), path.as_bytes()] {
        // Methods and paths are far below 4 GiB; hyper refuses longer heads anyway.
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.update(&(body.len() as u64).to_be_bytes());
    mac.update(body);
}

fn reply_input(mac: &mut HmacSha256, request: &Tag, status: u16, body: &[u8]) {
    mac.update(REPLY_LABEL);
    mac.update(request);
    mac.update(&status.to_be_bytes());
    mac.update(&(body.len() as u64).to_be_bytes());
    mac.update(body);
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    /// Equal secrets: for comparing configurations, not for checking a peer (tags do that).
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Secret {}

/// A tag as sent in [`MAC_HEADER`]: 64 lowercase hex digits.
pub fn encode_tag(tag: &Tag) -> String {
    hex(tag)
}

/// Reads a tag sent in [`MAC_HEADER`]; `None` unless it is exactly 64 hex digits (either case).
pub fn decode_tag(text: &[u8]) -> Option<Tag> {
    if text.len() != 64 {
        return None;
    }
    let mut tag = [0u8; 32];
    for (byte, pair) in tag.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(tag)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_text("0123456789abcdef0123456789abcdef\n").unwrap()
    }

    #[test]
    fn an_admin_token_is_any_of_the_secrets() {
        let rotating =
            Secret::from_text("0123456789abcdef0123456789abcdef\nfedcba9876543210fedcba9876543210")
                .unwrap();
        assert!(rotating.accepts_token("0123456789abcdef0123456789abcdef"));
        assert!(rotating.accepts_token("fedcba9876543210fedcba9876543210\n"));
        assert!(!rotating.accepts_token("0123456789abcdef0123456789abcdee"));
        assert!(!rotating.accepts_token(""));
        assert!(!secret().accepts_token("fedcba9876543210fedcba9876543210"));
    }

    #[test]
    fn secrets_are_trimmed_refused_when_short_and_never_printed() {
        assert_eq!(secret().to_text(), "0123456789abcdef0123456789abcdef");
        assert!(Secret::from_text("  short \n").is_err());
        assert!(Secret::from_text("").is_err());
        let printed = format!("{:?} {:#?}", secret(), Some(secret()));
        assert!(!printed.contains("0123"), "{printed}");
        let random = Secret::random();
        assert_eq!(random.to_text().len(), 64);
        assert_ne!(random, Secret::random());
        assert_eq!(Secret::from_text(&random.to_text()).unwrap(), random);
    }

    #[test]
    fn while_the_secret_changes_the_first_tags_and_each_is_accepted() {
        let old = "old secret of enough length";
        let new = "new secret of enough length";
        let both = Secret::from_text(&format!("{old}\n\n  {new}  \n")).unwrap();
        assert_eq!(both.len(), 2);
        let (old, new) = (
            Secret::from_text(old).unwrap(),
            Secret::from_text(new).unwrap(),
        );
        let tag = both.request_tag("POST", "/p", b"x");
        assert_eq!(tag, old.request_tag("POST", "/p", b"x"));
        assert!(old.verify_request(&tag, "POST", "/p", b"x"));
        assert!(!new.verify_request(&tag, "POST", "/p", b"x"));
        for signer in [&old, &new] {
            let tag = signer.request_tag("POST", "/p", b"x");
            assert!(both.verify_request(&tag, "POST", "/p", b"x"));
            let reply = signer.reply_tag(&tag, 200, b"r");
            assert!(both.verify_reply(&reply, &tag, 200, b"r"));
        }
        let stranger = Secret::from_text("a third secret, not accepted").unwrap();
        let forged = stranger.request_tag("POST", "/p", b"x");
        assert!(!both.verify_request(&forged, "POST", "/p", b"x"));
        // Every secret must be long enough, not only the first.
        assert!(Secret::from_text("a long enough first secret\nshort").is_err());
        assert_eq!(Secret::from_text(&both.to_text()).unwrap(), both);
    }

    #[test]
    fn a_request_tag_covers_method_path_and_every_body_byte() {
        let s = secret();
        let tag = s.request_tag("POST", "/internal/v1/rpc", b"frame");
        assert!(s.verify_request(&tag, "POST", "/internal/v1/rpc", b"frame"));
        assert!(!s.verify_request(&tag, "PUT", "/internal/v1/rpc", b"frame"));
        assert!(!s.verify_request(&tag, "POST", "/internal/v1/rpx", b"frame"));
        assert!(!s.verify_request(&tag, "POST", "/internal/v1/rpc", b"framE"));
        assert!(!s.verify_request(&tag, "POST", "/internal/v1/rpc", b"frame "));
        // Lengths are part of the input, so bytes cannot move between the fields.
        assert_ne!(
            s.request_tag("POST", "/a", b"b"),
            s.request_tag("POST", "/ab", b"")
        );
        let other = Secret::from_text("another secret of enough length").unwrap();
        assert!(!other.verify_request(&tag, "POST", "/internal/v1/rpc", b"frame"));
        // Golden value: the layout is a protocol, pinned so a change is deliberate.
        assert_eq!(
            encode_tag(&s.request_tag("POST", "/internal/v1/rpc", b"")),
            encode_tag(&{
                let mut mac = s.mac();
                mac.update(b"kv-peer-request/1\0\0\0\x04POST\0\0\0\x10/internal/v1/rpc");
                mac.update(&[0; 8]);
                mac.finalize().into_bytes().into()
            })
        );
    }

    #[test]
    fn a_reply_tag_binds_the_reply_to_its_request() {
        let s = secret();
        let request = s.request_tag("POST", "/p", b"one");
        let other_request = s.request_tag("POST", "/p", b"two");
        let tag = s.reply_tag(&request, 200, b"reply");
        assert!(s.verify_reply(&tag, &request, 200, b"reply"));
        assert!(!s.verify_reply(&tag, &other_request, 200, b"reply"));
        assert!(!s.verify_reply(&tag, &request, 400, b"reply"));
        assert!(!s.verify_reply(&tag, &request, 200, b"replY"));
        // A request tag is never a valid reply tag, whatever the bytes.
        assert_ne!(s.reply_tag(&request, 200, b""), request);
    }

    #[test]
    fn tags_round_trip_as_hex_and_anything_else_is_refused() {
        let tag = secret().request_tag("POST", "/", b"x");
        let text = encode_tag(&tag);
        assert_eq!(text.len(), 64);
        assert_eq!(decode_tag(text.as_bytes()), Some(tag));
        assert_eq!(decode_tag(text.to_uppercase().as_bytes()), Some(tag));
        for bad in [
            "",
            "00",
            &text[1..],
            &format!("{text}0"),
            &text.replace('a', "g"),
        ] {
            if bad != text {
                assert_eq!(decode_tag(bad.as_bytes()), None, "{bad:?}");
            }
        }
    }
}
