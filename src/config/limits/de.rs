//! The limits file's building blocks for serde: maps whose keys must be unique,
//! policy names, fingerprints, aliases, window lengths, and the visitor that validates
//! a map while the parser still knows its line.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};

use crate::domain::{DEFAULT_POLICY, Fingerprint};

/// The longest policy name or alias.
const MAX_NAME: usize = 64;

/// Deserializes a map as `Raw`, then validates it into `T` while the deserializer
/// still points at that map, so an error carries the map's line.
pub(super) struct Validated<Raw, T> {
    expecting: &'static str,
    types: PhantomData<(Raw, T)>,
}

impl<Raw, T> Validated<Raw, T> {
    pub(super) fn new(expecting: &'static str) -> Self {
        Self { expecting, types: PhantomData }
    }
}

impl<'de, Raw: DeserializeOwned, T: TryFrom<Raw, Error = String>> Visitor<'de> for Validated<Raw, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
        T::try_from(raw).map_err(de::Error::custom)
    }
}

/// A map whose keys must be unique: YAML would silently keep the last of two entries
/// with one key, so a policy defined twice or a key overridden twice is an error.
pub(super) struct Unique<K, V>(pub(super) HashMap<K, V>);

/// The key of a [`Unique`] map: what the map is, and how to name a repeated key.
pub(super) trait UniqueKey: Eq + std::hash::Hash {
    const EXPECTING: &'static str;
    fn repeated(&self) -> String;
}

impl<K, V> Default for Unique<K, V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<'de, K: UniqueKey + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Unique<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K: UniqueKey + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
            type Value = Unique<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(K::EXPECTING)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = HashMap::new();
                while let Some(key) = map.next_key::<K>()? {
                    let value: V = map.next_value()?;
                    if entries.contains_key(&key) {
                        return Err(de::Error::custom(key.repeated()));
                    }
                    entries.insert(key, value);
                }
                Ok(Unique(entries))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

impl UniqueKey for PolicyName {
    const EXPECTING: &'static str = "a map from policy names to policies";
    fn repeated(&self) -> String {
        format!("policy `{}` is defined twice", self.0)
    }
}

impl UniqueKey for FingerprintKey {
    const EXPECTING: &'static str = "a map from key fingerprints to overrides";
    fn repeated(&self) -> String {
        format!("fingerprint {} is listed twice", self.0)
    }
}

#[derive(PartialEq, Eq, Hash)]
pub(super) struct FingerprintKey(pub(super) Fingerprint);

impl<'de> Deserialize<'de> for FingerprintKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Fingerprint::from_hex(&text).map(FingerprintKey).ok_or_else(|| {
            // The value is not echoed: it may be a raw API key put here by mistake.
            de::Error::custom(
                "an override is not keyed by a key fingerprint (32 hex digits, as `ratelimitd fingerprint` \
                 prints); raw API keys never belong in this file",
            )
        })
    }
}

#[derive(PartialEq, Eq, Hash)]
pub(super) struct PolicyName(pub(super) String);

impl<'de> Deserialize<'de> for PolicyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > MAX_NAME || !valid_chars {
            let reason = format!("1 to {MAX_NAME} letters, digits, '.', '_' or '-'");
            return Err(de::Error::custom(format!("policy name `{name}` is not valid: use {reason}")));
        }
        if name == DEFAULT_POLICY {
            return Err(de::Error::custom("`default` is set in the top-level `default` section, not under `policies`"));
        }
        Ok(Self(name))
    }
}

pub(super) fn check_alias(alias: &str) -> Result<(), String> {
    let valid_chars = alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '));
    if alias.trim().is_empty() || alias.len() > MAX_NAME || !valid_chars || alias.trim() != alias {
        return Err(format!(
            "alias {alias:?} is not valid: use 1 to {MAX_NAME} letters, digits, spaces, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// A window length such as `60s`, `1m` or `500ms`.
pub(super) struct Length(pub(super) Duration);

impl<'de> Deserialize<'de> for Length {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Length)
            .map_err(|e| de::Error::custom(format!("window `{text}`: {e} (expected e.g. 60s, 1m, 500ms)")))
    }
}
