//! The limits file (`--limits-file`, YAML): the default policy, named policies (one
//! or several windows, optionally in shadow mode), and per-key overrides selected by
//! key fingerprint, never by raw key, with an optional alias for logs and metrics.
//!
//! ```yaml
//! default:                # optional; without it, --limit per --window
//!   limit: 300
//!   window: 60s
//! policies:
//!   partner-gold:
//!     windows:            # all enforced in one atomic call
//!       - { limit: 3000, window: 1m }
//!       - { limit: 100, window: 1s }
//!   trial:
//!     limit: 100
//!     window: 1m
//!     shadow: true        # computed and reported, never denies
//!     failure: open       # when Redis fails: open, closed or local (default: --failure-mode)
//! overrides:
//!   9f0c2d4e6a8b1c3d5e7f9a0b2c4d6e8f:   # `ratelimitd fingerprint` prints it
//!     policy: partner-gold
//!     alias: acme-health
//! ```
//!
//! The whole file is validated before it is used; an error names the line and the
//! field (e.g. `policies.gold.windows[1]: ... at line 9 column 9`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::limiter::{DEFAULT_POLICY, FailureMode, Fingerprint, Limits, Override, Policies, Policy, Window};

/// The longest policy name or alias.
const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("--limits-file {path}: cannot read it: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("--limits-file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads and validates the file. `fallback` is the default policy when the file has
/// none. Returns the policies and the bytes they came from.
pub fn load(path: &Path, fallback: &Policy) -> Result<(Policies, Vec<u8>), LimitsError> {
    let bytes = std::fs::read(path).map_err(|source| LimitsError::Read { path: path.display().to_string(), source })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| LimitsError::Invalid {
        path: path.display().to_string(),
        message: format!("the file is not UTF-8: {e}"),
    })?;
    let policies =
        parse(text, fallback).map_err(|message| LimitsError::Invalid { path: path.display().to_string(), message })?;
    Ok((policies, bytes))
}

/// Validates a limits file's text; the error says what is wrong, where.
pub fn parse(text: &str, fallback: &Policy) -> Result<Policies, String> {
    // Overrides may come before the policies they name, so a first pass collects the
    // names; the second checks each reference where it is, for an error with its line.
    let names = serde_yaml_ng::from_str::<Names>(text).map(|n| n.policies.into_keys().collect()).unwrap_or_default();
    let file: File = KNOWN_POLICIES
        .with(|known| {
            *known.borrow_mut() = names;
            let parsed = serde_yaml_ng::from_str::<File>(text);
            known.borrow_mut().clear();
            parsed
        })
        .map_err(|e| {
            let message = e.to_string();
            // serde_yaml_ng places errors inside maps; one about the top-level map itself has no place.
            if message.contains(" at line ") { message } else { format!("{message} (at the top level of the file)") }
        })?;
    Ok(file.into_policies(fallback))
}

thread_local! {
    /// The policy names of the file being parsed (see [`parse`]).
    static KNOWN_POLICIES: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

#[derive(Deserialize, Default)]
struct Names {
    #[serde(default)]
    policies: BTreeMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<PolicyBody>,
    #[serde(default)]
    policies: Unique<PolicyName, PolicyBody>,
    #[serde(default)]
    overrides: Unique<FingerprintKey, OverrideBody>,
}

impl File {
    fn into_policies(self, fallback: &Policy) -> Policies {
        let default = match self.default {
            Some(body) => body.into_policy(DEFAULT_POLICY, fallback),
            None => fallback.clone(),
        };
        let default = Arc::new(default);
        let named: HashMap<String, Arc<Policy>> = self
            .policies
            .0
            .into_iter()
            .map(|(PolicyName(name), body)| {
                let policy = body.into_policy(&name, fallback);
                (name, Arc::new(policy))
            })
            .collect();
        let overrides = self
            .overrides
            .0
            .into_iter()
            .map(|(FingerprintKey(key), o)| {
                let policy = named.get(&o.policy).cloned().unwrap_or_else(|| default.clone());
                (key, Override { policy, alias: o.alias.map(Into::into) })
            })
            .collect();
        Policies { default, overrides }
    }
}

/// A validated policy body: `limit` and `window`, or `windows`; `shadow`; `failure`.
struct PolicyBody {
    limits: Limits,
    shadow: bool,
    failure: Option<FailureMode>,
}

impl PolicyBody {
    /// Without a `failure` of its own, a policy has the default's (--failure-mode).
    fn into_policy(self, name: &str, fallback: &Policy) -> Policy {
        let failure = self.failure.unwrap_or(fallback.failure);
        Policy { name: name.into(), limits: self.limits, shadow: self.shadow, failure }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    limit: Option<u32>,
    window: Option<Length>,
    windows: Option<Vec<RawWindow>>,
    #[serde(default)]
    shadow: bool,
    failure: Option<FailureMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    limit: u32,
    window: Length,
}

impl TryFrom<RawPolicy> for PolicyBody {
    type Error = String;

    fn try_from(raw: RawPolicy) -> Result<Self, String> {
        let windows = match (raw.limit, raw.window, raw.windows) {
            (Some(limit), Some(window), None) => vec![(limit, window)],
            (None, None, Some(windows)) => windows.into_iter().map(|w| (w.limit, w.window)).collect(),
            (_, _, Some(_)) => return Err("give either `limit` and `window`, or `windows`, not both".into()),
            _ => return Err("a policy needs `limit` and `window` (or a list of `windows`)".into()),
        };
        let windows = windows
            .into_iter()
            .map(|(limit, window)| Window::new(limit, window.0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let limits = Limits::new(&windows).map_err(|e| e.to_string())?;
        Ok(Self { limits, shadow: raw.shadow, failure: raw.failure })
    }
}

impl<'de> Deserialize<'de> for PolicyBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(Checked::<RawPolicy, Self>::new("a policy: `limit` and `window`, or `windows`"))
    }
}

/// An override's body: which policy, and an optional alias.
struct OverrideBody {
    policy: String,
    alias: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    policy: String,
    alias: Option<String>,
}

impl TryFrom<RawOverride> for OverrideBody {
    type Error = String;

    fn try_from(raw: RawOverride) -> Result<Self, String> {
        let known = KNOWN_POLICIES.with(|known| raw.policy == DEFAULT_POLICY || known.borrow().contains(&raw.policy));
        if !known {
            let defined = KNOWN_POLICIES.with(|known| known.borrow().iter().cloned().collect::<Vec<_>>().join(", "));
            return Err(format!("policy `{}` is not defined under `policies` (defined: {defined})", raw.policy));
        }
        if let Some(alias) = &raw.alias {
            check_alias(alias)?;
        }
        Ok(Self { policy: raw.policy, alias: raw.alias })
    }
}

impl<'de> Deserialize<'de> for OverrideBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(Checked::<RawOverride, Self>::new("an override: `policy` and an optional `alias`"))
    }
}

/// Deserializes a map as `Raw`, then validates it into `T` while the deserializer
/// still points at that map, so an error carries the map's line.
struct Checked<Raw, T> {
    expecting: &'static str,
    types: PhantomData<(Raw, T)>,
}

impl<Raw, T> Checked<Raw, T> {
    fn new(expecting: &'static str) -> Self {
        Self { expecting, types: PhantomData }
    }
}

impl<'de, Raw: DeserializeOwned, T: TryFrom<Raw, Error = String>> Visitor<'de> for Checked<Raw, T> {
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
struct Unique<K, V>(HashMap<K, V>);

/// The key of a [`Unique`] map: what the map is, and how to name a repeated key.
trait UniqueKey: Eq + std::hash::Hash {
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
struct FingerprintKey(Fingerprint);

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
struct PolicyName(String);

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

fn check_alias(alias: &str) -> Result<(), String> {
    let valid_chars = alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '));
    if alias.trim().is_empty() || alias.len() > MAX_NAME || !valid_chars || alias.trim() != alias {
        return Err(format!(
            "alias {alias:?} is not valid: use 1 to {MAX_NAME} letters, digits, spaces, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// A window length such as `60s`, `1m` or `500ms`.
struct Length(Duration);

impl<'de> Deserialize<'de> for Length {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Length)
            .map_err(|e| de::Error::custom(format!("window `{text}`: {e} (expected e.g. 60s, 1m, 500ms)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "00112233445566778899aabbccddeeff";

    fn fallback() -> Policy {
        Policy::default_with(300, Duration::from_secs(60)).unwrap()
    }

    fn error(text: &str) -> String {
        parse(text, &fallback()).err().unwrap_or_else(|| panic!("accepted:\n{text}"))
    }

    #[test]
    fn a_full_file_loads() {
        let text = format!(
            "default:\n  limit: 100\n  window: 1m\npolicies:\n  gold:\n    windows:\n      - {{ limit: 20, window: 1s }}\n      \
             - {{ limit: 3000, window: 1m }}\n    failure: closed\n  trial:\n    limit: 5\n    window: 10s\n    shadow: true\n\
             overrides:\n  {FP}:\n    policy: gold\n    alias: Acme Health\n"
        );
        let policies = parse(&text, &fallback()).unwrap();
        assert_eq!(policies.default.limits, Limits::single(100, Duration::from_secs(60)).unwrap());
        let key = Fingerprint::from_hex(FP).unwrap();
        let resolved = policies.lookup(&key);
        assert_eq!((&*resolved.policy.name, resolved.alias.as_deref()), ("gold", Some("Acme Health")));
        assert_eq!((resolved.policy.limits.capacity(), resolved.policy.limits.max_cost()), (3000, 20));
        assert_eq!((resolved.policy.failure, policies.default.failure), (FailureMode::Closed, FailureMode::Local));
    }

    #[test]
    fn without_a_default_section_the_flags_apply() {
        let policies = parse("policies: {}\n", &fallback()).unwrap();
        assert_eq!(*policies.default, fallback());
        assert!(parse("", &fallback()).is_ok(), "an empty file is the flags' default and no overrides");
    }

    #[test]
    fn every_error_names_its_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("polices: {}\n", "unknown field `polices`", "top level"),
            ("default:\n  limit: 0\n  window: 1m\n", "limit must be between 1", "line 2"),
            ("default:\n  limit: 5\n  window: soon\n", "window `soon`", "line 2"),
            ("default:\n  limit: 5\n", "needs `limit` and `window`", "line 2"),
            ("default:\n  limit: 5\n  window: 1s\n  windows: []\n", "not both", "line 2"),
            (
                "policies:\n  g:\n    windows:\n      - { limit: 1, window: 1s }\n      - { limit: 2, window: 1s }\n",
                "same length",
                "line 3",
            ),
            ("policies:\n  g:\n    limit: -1\n    window: 1s\n", "limit", "line 3"),
            ("policies:\n  bad name!:\n    limit: 1\n    window: 1s\n", "policy name `bad name!`", "line 2"),
            ("policies:\n  default:\n    limit: 1\n    window: 1s\n", "top-level `default`", "line 2"),
            ("overrides:\n  sk_live_123:\n    policy: default\n", "not keyed by a key fingerprint", "line 2"),
            (&format!("overrides:\n  {FP}:\n    policy: gold\n"), "policy `gold` is not defined", "line 3"),
            (&format!("overrides:\n  {FP}:\n    policy: default\n    alias: \"a\\nb\"\n"), "alias", "line 3"),
            (
                &format!("overrides:\n  {FP}:\n    policy: default\n    colour: red\n"),
                "unknown field `colour`",
                "line 4",
            ),
            (
                &format!("overrides:\n  {FP}:\n    policy: default\n  {FP}:\n    policy: default\n"),
                "listed twice",
                "line",
            ),
            (
                "policies:\n  g:\n    limit: 1\n    window: 1s\n  g:\n    limit: 2\n    window: 1s\n",
                "defined twice",
                "line",
            ),
            ("default: [1, 2]\n", "expected a policy", "line 1"),
            ("default:\n  limit: 5\n  window: 1s\n  failure: maybe\n", "unknown variant `maybe`", "line 4"),
            ("default:\n  limit: 5\n   window: 1s\n", "default.limit", "line 2"),
        ];
        for (text, what, line) in cases {
            let message = error(text);
            assert!(message.contains(what) && message.contains(line), "{text:?}: {message}");
            assert!(!message.contains("sk_live_123"), "a raw key was echoed: {message}");
        }
    }

    #[test]
    fn a_policy_may_be_referenced_before_it_is_defined() {
        let text = format!("overrides:\n  {FP}:\n    policy: late\npolicies:\n  late:\n    limit: 1\n    window: 1s\n");
        assert!(parse(&text, &fallback()).is_ok());
    }
}
