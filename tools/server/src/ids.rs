//! How an AMS session (namespace, user id, session id) maps onto one library [`SessionId`].
//!
//! The library id is `{session_id}:{namespace}:{user_id}`, an absent (or empty) namespace or user
//! id being the empty string. Each part is 1 to [`MAX_PART_BYTES`] bytes of the library's id
//! alphabet without `:` (`[A-Za-z0-9-_.@]`), so the three parts are recovered by splitting at the
//! two colons: the map is injective, and the whole id (at most 2 + 3 parts) stays within
//! [`palimpsest::MAX_SESSION_ID_BYTES`]. The session id comes first, so every session sharing an
//! AMS session id is one short key range: the upstream fallback "a unique match by session id
//! alone" is a bounded prefix scan, not a walk over every session.

use palimpsest::{MAX_SESSION_ID_BYTES, SessionId};

/// Longest session id, namespace or user id, in bytes: three parts and two colons fit the
/// library's 128-byte id.
pub const MAX_PART_BYTES: usize = (MAX_SESSION_ID_BYTES - 2) / 3;

/// An AMS session's identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionKey {
    /// The AMS session id.
    pub session_id: String,
    /// The namespace, if any (empty reads as none, as upstream's key builder does).
    pub namespace: Option<String>,
    /// The user id, if any (empty reads as none).
    pub user_id: Option<String>,
}

/// Why a part of a session's identity is refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadPart {
    /// `session_id`, `namespace` or `user_id`.
    pub field: &'static str,
    /// Which rule it breaks.
    pub reason: String,
}

fn check_part(field: &'static str, value: &str) -> Result<(), BadPart> {
    let reason = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_PART_BYTES {
        format!("is {} bytes, at most {MAX_PART_BYTES}", value.len())
    } else if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.@".contains(*c))) {
        format!("contains {c:?}; allowed: letters, digits and - _ . @")
    } else {
        return Ok(());
    };
    Err(BadPart { field, reason })
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_string)
}

impl SessionKey {
    /// Validates the parts (an empty namespace or user id is none).
    pub fn new(session_id: &str, namespace: Option<&str>, user_id: Option<&str>) -> Result<Self, BadPart> {
        check_part("session_id", session_id)?;
        let key =
            Self { session_id: session_id.to_string(), namespace: non_empty(namespace), user_id: non_empty(user_id) };
        if let Some(ns) = &key.namespace {
            check_part("namespace", ns)?;
        }
        if let Some(user) = &key.user_id {
            check_part("user_id", user)?;
        }
        Ok(key)
    }

    /// The library id: `{session_id}:{namespace}:{user_id}`.
    pub fn library_id(&self) -> SessionId {
        let id = format!(
            "{}:{}:{}",
            self.session_id,
            self.namespace.as_deref().unwrap_or(""),
            self.user_id.as_deref().unwrap_or("")
        );
        SessionId::new(id).expect("three checked parts and two colons make a valid library id")
    }

    /// The key a library id stands for, if it is one this server made.
    pub fn parse(id: &SessionId) -> Option<Self> {
        let mut parts = id.as_str().split(':');
        let (sid, ns, user) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Self::new(sid, Some(ns), Some(user)).ok()
    }

    /// The smallest library id above every id of sessions named `session_id` is not needed: they
    /// all start with this prefix, and ids sort bytewise.
    pub fn prefix_of(session_id: &str) -> String {
        format!("{session_id}:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_injective_and_reversible() {
        let cases = [
            SessionKey::new("s", None, None),
            SessionKey::new("s", Some("n"), None),
            SessionKey::new("s", None, Some("n")),
            SessionKey::new("s", Some("n"), Some("u")),
            SessionKey::new("s", Some(""), Some("")),
        ];
        let ids: Vec<_> = cases.iter().map(|k| k.as_ref().expect("valid").library_id()).collect();
        assert_eq!(ids[0], ids[4], "an empty namespace or user id is none, as upstream");
        let mut unique = ids[..4].to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        for (key, id) in cases.iter().zip(&ids) {
            assert_eq!(SessionKey::parse(id).as_ref(), key.as_ref().ok());
        }
    }

    #[test]
    fn parts_are_validated() {
        assert_eq!(SessionKey::new("", None, None).unwrap_err().field, "session_id");
        assert_eq!(SessionKey::new("a:b", None, None).unwrap_err().field, "session_id");
        assert_eq!(SessionKey::new("a", Some("n s"), None).unwrap_err().field, "namespace");
        assert_eq!(SessionKey::new("a", None, Some(&"u".repeat(MAX_PART_BYTES + 1))).unwrap_err().field, "user_id");
        let longest = "x".repeat(MAX_PART_BYTES);
        let key = SessionKey::new(&longest, Some(&longest), Some(&longest)).expect("the longest parts fit");
        assert!(key.library_id().as_str().len() <= MAX_SESSION_ID_BYTES);
        assert_eq!(SessionKey::parse(&SessionId::new("plain").expect("valid")), None);
    }
}
