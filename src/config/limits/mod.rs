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

mod de;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};

use self::de::{FingerprintKey, Length, PolicyName, Unique, Validated, check_alias};
use crate::domain::{DEFAULT_POLICY, FailureMode, Limits, Override, Policies, Policy, Window};

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("--limits-file {path}: cannot read it: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("--limits-file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Reads and validates the file. `default_policy` is the default policy when the file has
/// none. Returns the policies and the bytes they came from.
pub fn load(path: &Path, default_policy: &Policy) -> Result<(Policies, Vec<u8>), LimitsError> {
    let bytes = std::fs::read(path).map_err(|source| LimitsError::Read { path: path.display().to_string(), source })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| LimitsError::Invalid {
        path: path.display().to_string(),
        message: format!("the file is not UTF-8: {e}"),
    })?;
    let policies = parse(text, default_policy)
        .map_err(|message| LimitsError::Invalid { path: path.display().to_string(), message })?;
    Ok((policies, bytes))
}

/// Validates a limits file's text; the error says what is wrong, where.
pub fn parse(text: &str, default_policy: &Policy) -> Result<Policies, String> {
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
    Ok(file.into_policies(default_policy))
}

/// Whether the file's text names `overrides` at its top level (even as an empty map):
/// an explicit "no overrides", unlike a file that leaves them out.
pub fn declares_overrides(text: &str) -> bool {
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|value| value.as_mapping().map(|map| map.contains_key("overrides")))
        .unwrap_or(false)
}

thread_local! {
    /// The policy names of the file being parsed (see [`parse`]), so that an override
    /// naming an unknown policy is refused with its own line. A thread-local because
    /// serde's derived `Deserialize` takes no context: passing the names down would mean
    /// hand-written seeds for the file, its maps and the override body. It is set and
    /// cleared around one synchronous parse, so no other parse can see it.
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
    fn into_policies(self, default_policy: &Policy) -> Policies {
        let default = match self.default {
            Some(body) => body.into_policy(DEFAULT_POLICY, default_policy),
            None => default_policy.clone(),
        };
        let default = Arc::new(default);
        let named: HashMap<String, Arc<Policy>> = self
            .policies
            .0
            .into_iter()
            .map(|(PolicyName(name), body)| {
                let policy = body.into_policy(&name, default_policy);
                (name, Arc::new(policy))
            })
            .collect();
        let overrides = self
            .overrides
            .0
            .into_iter()
            .map(|(FingerprintKey(key), o)| {
                let find = |name: &str| named.get(name).cloned().unwrap_or_else(|| default.clone());
                let mut entry = Override::new(find(&o.policy), o.alias.map(Into::into));
                entry.until_ms = o.until_ms;
                entry.then = o.then.as_deref().map(find);
                (key, entry)
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
    fn into_policy(self, name: &str, default_policy: &Policy) -> Policy {
        let failure = self.failure.unwrap_or(default_policy.failure);
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
        d.deserialize_map(Validated::<RawPolicy, Self>::new("a policy: `limit` and `window`, or `windows`"))
    }
}

/// An override's body: which policy, an optional alias, and optionally until when (then
/// which policy).
struct OverrideBody {
    policy: String,
    alias: Option<String>,
    until_ms: Option<u64>,
    then: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    policy: String,
    alias: Option<String>,
    until: Option<String>,
    then: Option<String>,
}

impl TryFrom<RawOverride> for OverrideBody {
    type Error = String;

    fn try_from(raw: RawOverride) -> Result<Self, String> {
        check_known(&raw.policy)?;
        if let Some(alias) = &raw.alias {
            check_alias(alias)?;
        }
        let until_ms = raw.until.as_deref().map(until).transpose()?;
        match (&raw.then, until_ms) {
            (Some(_), None) => return Err("`then` is the policy after `until`: give `until` too".into()),
            (Some(then), Some(_)) => check_known(then)?,
            _ => {}
        }
        Ok(Self { policy: raw.policy, alias: raw.alias, until_ms, then: raw.then })
    }
}

/// Refuses a policy name that is neither `default` nor defined under `policies`.
fn check_known(policy: &str) -> Result<(), String> {
    let known = KNOWN_POLICIES.with(|known| policy == DEFAULT_POLICY || known.borrow().contains(policy));
    if known {
        return Ok(());
    }
    let defined = KNOWN_POLICIES.with(|known| known.borrow().iter().cloned().collect::<Vec<_>>().join(", "));
    Err(format!("policy `{policy}` is not defined under `policies` (defined: {defined})"))
}

/// An override's end, `until`: an RFC 3339 time in UTC, still to come (one already past
/// would describe nothing: remove it).
fn until(text: &str) -> Result<u64, String> {
    let at = humantime::parse_rfc3339(text)
        .map_err(|e| format!("until `{text}` is not a time ({e}): use RFC 3339 in UTC, e.g. 2027-01-31T00:00:00Z"))?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if ms <= crate::domain::unix_ms() {
        return Err(format!("until `{text}` has passed: remove the override, or give it a later end"));
    }
    Ok(ms)
}

impl<'de> Deserialize<'de> for OverrideBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(Validated::<RawOverride, Self>::new(
            "an override: `policy`, an optional `alias`, and optionally `until` (then `then`)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Fingerprint;

    const FP: &str = "00112233445566778899aabbccddeeff";

    fn default_policy() -> Policy {
        Policy::default_with(300, Duration::from_secs(60)).unwrap()
    }

    fn error(text: &str) -> String {
        parse(text, &default_policy()).err().unwrap_or_else(|| panic!("accepted:\n{text}"))
    }

    #[test]
    fn a_full_file_loads() {
        let text = format!(
            "default:\n  limit: 100\n  window: 1m\npolicies:\n  gold:\n    windows:\n      - {{ limit: 20, window: 1s }}\n      \
             - {{ limit: 3000, window: 1m }}\n    failure: closed\n  trial:\n    limit: 5\n    window: 10s\n    shadow: true\n\
             overrides:\n  {FP}:\n    policy: gold\n    alias: Acme Health\n"
        );
        let policies = parse(&text, &default_policy()).unwrap();
        assert_eq!(policies.default.limits, Limits::single(100, Duration::from_secs(60)).unwrap());
        let key = Fingerprint::from_hex(FP).unwrap();
        let resolved = policies.lookup(&key);
        assert_eq!((&*resolved.policy.name, resolved.alias.as_deref()), ("gold", Some("Acme Health")));
        assert_eq!((resolved.policy.limits.capacity(), resolved.policy.limits.max_cost()), (3000, 20));
        assert_eq!((resolved.policy.failure, policies.default.failure), (FailureMode::Closed, FailureMode::Local));
    }

    #[test]
    fn without_a_default_section_the_flags_apply() {
        let policies = parse("policies: {}\n", &default_policy()).unwrap();
        assert_eq!(*policies.default, default_policy());
        assert!(parse("", &default_policy()).is_ok(), "an empty file is the flags' default and no overrides");
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
            (&format!("overrides:\n  {FP}:\n    policy: default\n    until: tomorrow\n"), "is not a time", "line 3"),
            (
                &format!("overrides:\n  {FP}:\n    policy: default\n    until: 2020-01-31T00:00:00Z\n"),
                "has passed",
                "line 3",
            ),
            (&format!("overrides:\n  {FP}:\n    policy: default\n    then: default\n"), "give `until` too", "line 3"),
            (
                &format!("overrides:\n  {FP}:\n    policy: default\n    until: 2999-01-01T00:00:00Z\n    then: nope\n"),
                "policy `nope` is not defined",
                "line 3",
            ),
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
    fn an_override_may_end_at_a_time_and_name_the_policy_after() {
        let text = format!(
            "policies:\n  raised:\n    limit: 3000\n    window: 1m\n  gold:\n    limit: 1000\n    window: 1m\n\
             overrides:\n  {FP}:\n    policy: raised\n    until: 2999-01-31T00:00:00Z\n    then: gold\n"
        );
        let policies = parse(&text, &default_policy()).unwrap();
        let key = Fingerprint::from_hex(FP).unwrap();
        let end = policies.overrides[&key].until_ms.unwrap();
        assert_eq!(end, 32_474_736_000_000, "2999-01-31T00:00:00Z");
        assert_eq!(&*policies.lookup_at(&key, end - 1).policy.name, "raised");
        assert_eq!(&*policies.lookup_at(&key, end).policy.name, "gold");
        assert_eq!(&*policies.lookup(&key).policy.name, "raised", "now, before its end");
    }

    #[test]
    fn a_policy_may_be_referenced_before_it_is_defined() {
        let text = format!("overrides:\n  {FP}:\n    policy: late\npolicies:\n  late:\n    limit: 1\n    window: 1s\n");
        assert!(parse(&text, &default_policy()).is_ok());
    }
}
