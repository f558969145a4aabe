//! What Redis sees: key names that are HMACs and values that are sealed, so neither a user id nor
//! a token can be read there, and a value cannot be moved to another key.
//!
//! From `encryption_key` two keys are derived (HMAC-SHA256 as a PRF over fixed labels), one per
//! use: an HMAC key for names and an AES-256-GCM key for values. A value is
//! `version ‖ nonce ‖ AES-256-GCM(expires_at ‖ lifetime ‖ token)`, a random nonce each time, the
//! Redis key name as associated data. Anything that does not open (another key, a rotated key,
//! a value copied to another name, a truncated one) is a miss, never an error.

use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;

use crate::exchange::cached::CacheKey;
use crate::exchange::ExternalToken;

/// First byte of every value: the format, so a later one can be told apart.
const VERSION: u8 = 1;
/// `expires_at` (u64) and `lifetime_ms` (u64) before the token.
const HEADER: usize = 16;

/// The two keys derived from `encryption_key`.
pub(crate) struct Keys {
    names: hmac::Key,
    seal: LessSafeKey,
}

/// What is shared: a token, when it expires (Unix seconds), and how long it lived when minted
/// (which decides its refresh margin on every replica alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedToken {
    pub(crate) token: ExternalToken,
    pub(crate) expires_at: u64,
    pub(crate) lifetime: Duration,
}

impl Keys {
    pub(crate) fn derive(master: &[u8; 32]) -> Keys {
        let prf = hmac::Key::new(hmac::HMAC_SHA256, master);
        let names = hmac::sign(&prf, b"extoken shared token cache v1: key names");
        let seal = hmac::sign(&prf, b"extoken shared token cache v1: value encryption");
        let unbound = UnboundKey::new(&AES_256_GCM, seal.as_ref())
            .expect("an HMAC-SHA256 tag is 32 bytes, an AES-256 key");
        Keys {
            names: hmac::Key::new(hmac::HMAC_SHA256, names.as_ref()),
            seal: LessSafeKey::new(unbound),
        }
    }

    /// The name of `key`'s entry: an HMAC of the connector name and the key's digest (which covers
    /// the connector's settings fingerprint and the mint inputs), lower-case hex.
    pub(crate) fn name(&self, key: &CacheKey) -> String {
        let mut ctx = hmac::Context::with_key(&self.names);
        ctx.update(&(key.connector.len() as u64).to_be_bytes());
        ctx.update(key.connector.as_bytes());
        ctx.update(key.digest());
        hex(ctx.sign().as_ref())
    }

    /// `token` sealed for the Redis key `aad`.
    pub(crate) fn seal(&self, aad: &str, t: &SharedToken) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut body = Vec::with_capacity(HEADER + t.token.as_str().len() + 16);
        body.extend_from_slice(&t.expires_at.to_be_bytes());
        let ms = u64::try_from(t.lifetime.as_millis()).unwrap_or(u64::MAX);
        body.extend_from_slice(&ms.to_be_bytes());
        body.extend_from_slice(t.token.as_str().as_bytes());
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The token sealed in `value` for the Redis key `aad`; `None` if it does not open.
    pub(crate) fn open(&self, aad: &str, value: &[u8]) -> Option<SharedToken> {
        let (&version, rest) = value.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .ok()?;
        if plain.len() <= HEADER {
            return None;
        }
        let (header, token) = plain.split_at(HEADER);
        let expires_at = u64::from_be_bytes(header[..8].try_into().ok()?);
        let lifetime_ms = u64::from_be_bytes(header[8..].try_into().ok()?);
        Some(SharedToken {
            token: ExternalToken::new(std::str::from_utf8(token).ok()?)?,
            expires_at,
            lifetime: Duration::from_millis(lifetime_ms),
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
