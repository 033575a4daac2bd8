//! The Rust half of `lua/sliding_window.lua`'s contract (its header lays out KEYS, ARGV
//! and the reply): how a batch of checks becomes one script call, and how the flat reply
//! becomes one decision per check.

use redis::{Script, ScriptInvocation, Value};

use crate::domain::{Decision, Limits, MAX_WINDOWS, Mode, WindowCheck};
use crate::store::StoreError;

/// The script's source, loaded once per Redis (EVALSHA, reloaded on NOSCRIPT).
pub const SOURCE: &str = include_str!("../../../lua/sliding_window.lua");

/// The same script flagged `allow-oom`, for calls made while Redis is full (maxmemory):
/// with ` existing` it counts only where a key has room, so no value grows.
pub const FULL_SOURCE: &str = concat!("#!lua flags=allow-oom\n", include_str!("../../../lua/sliding_window.lua"));

/// The script, ready to invoke.
pub fn script() -> Script {
    Script::new(SOURCE)
}

/// [`FULL_SOURCE`], ready to invoke.
pub fn full_script() -> Script {
    Script::new(FULL_SOURCE)
}

/// One check of a script call.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The Redis key of the API key's history.
    pub key: &'a [u8],
    pub limits: &'a Limits,
    pub cost: u32,
    pub mode: Mode,
}

/// A request a failure mode admitted `age_ms` ago, while Redis could not answer: the script
/// counts it, fitting or not (rule 4; see the script's "Owed requests").
#[derive(Debug, Clone, Copy)]
pub struct Owed<'a> {
    pub key: &'a [u8],
    pub limits: &'a Limits,
    pub cost: u32,
    pub age_ms: u64,
}

/// One check's decision as the script replied it: allowed, decided_at_ms, newest_ms,
/// then spare and retry_after_ms for each window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    values: Vec<u64>,
}

impl Reply {
    /// A reply from its values, as the script returns them.
    pub fn from_values(values: Vec<u64>) -> Self {
        Self { values }
    }

    /// Whether the script allowed the check.
    pub fn allowed(&self) -> bool {
        self.values.first() == Some(&1)
    }

    pub fn values(&self) -> &[u64] {
        &self.values
    }
}

/// What a script call says besides its checks (its ARGV[1]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The caller's clock in Unix ms, or `None` for Redis's clock.
    pub clock: Option<u64>,
    /// Also count the previous release's ring of each key (a rolling upgrade).
    pub previous_layout: bool,
    /// Count nothing if Redis runs the call after this time on its clock (Unix ms): its
    /// callers have stopped waiting.
    pub deadline: Option<u64>,
    /// Redis is full: count only in keys with room (with [`full_script`]).
    pub existing_only: bool,
}

impl CallOptions {
    /// On the caller's clock `ms`, this layout only: how tests replay a timeline.
    pub fn at(ms: u64) -> Self {
        Self { clock: Some(ms), ..Self::default() }
    }

    /// The script's first argument: `[<clock ms>][ previous][ existing][ by <deadline ms>]`.
    fn arg(self) -> String {
        let mut arg = self.clock.map(|ms| ms.to_string()).unwrap_or_default();
        if self.previous_layout {
            arg.push_str(" previous");
        }
        if self.existing_only {
            arg.push_str(" existing");
        }
        if let Some(deadline) = self.deadline {
            arg.push_str(&format!(" by {deadline}"));
        }
        arg
    }
}

/// The script call deciding `checks` in order.
pub fn invocation<'s>(script: &'s Script, checks: &[Check<'_>], options: CallOptions) -> ScriptInvocation<'s> {
    invoke(script, checks, options, mode_arg)
}

/// The script call deciding `checks` (each of another key) as one request: the consume
/// checks are counted only if every check fits, and then all of them are.
pub fn group_invocation<'s>(script: &'s Script, checks: &[Check<'_>], options: CallOptions) -> ScriptInvocation<'s> {
    invoke(script, checks, options, group_arg)
}

fn invoke<'s>(
    script: &'s Script,
    checks: &[Check<'_>],
    options: CallOptions,
    word: fn(Mode) -> &'static str,
) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(options.arg());
    // A batch's checks mostly repeat one argument (one policy, cost 1): it is written once
    // for each run of them (the invocation copies it).
    let mut arg = Vec::with_capacity(64);
    let mut written = None;
    for check in checks {
        let shape = (check.limits, check.cost, check.mode);
        if written != Some(shape) {
            write_check_arg(&mut arg, check.limits, check.cost, word(check.mode));
            written = Some(shape);
        }
        invocation.key(check.key).arg(arg.as_slice());
    }
    invocation
}

/// The script call counting `owed`, in order.
pub fn owed_invocation<'s>(script: &'s Script, owed: &[Owed<'_>], options: CallOptions) -> ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(options.arg());
    let mut arg = Vec::with_capacity(64);
    for request in owed {
        write_check_arg(&mut arg, request.limits, request.cost, &format!("owed {}", request.age_ms));
        invocation.key(request.key).arg(arg.as_slice());
    }
    invocation
}

/// Splits the reply of a call of `owed` requests: for each, counted or why not.
pub fn owed_replies(owed: usize, values: Vec<Value>) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    if values.len() != owed {
        return Err(malformed(format!("{} values for {owed} owed requests", values.len())));
    }
    let reply = |value| match value {
        Value::Int(1) => Ok(Ok(())),
        Value::BulkString(words) => Ok(Err(StoreError::Failed(String::from_utf8_lossy(&words).into_owned()))),
        Value::SimpleString(words) => Ok(Err(StoreError::Failed(words))),
        other => Err(malformed(format!("{other:?} for an owed request"))),
    };
    values.into_iter().map(reply).collect()
}

/// Makes `arg` a check's one script argument: `<cost> <mode> <L1> <W1> ...`, longest
/// window first.
pub fn write_check_arg(arg: &mut Vec<u8>, limits: &Limits, cost: u32, word: &str) {
    use std::io::Write as _;
    arg.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(arg, "{cost} {word}");
    for window in limits.windows() {
        let _ = write!(arg, " {} {}", window.limit(), window.window_ms());
    }
}

/// Splits a script call's flat reply into one per check: a decision's 3 + 2n values (n: the
/// check's windows), or the script's words for a check it could not decide.
pub fn replies_of(checks: &[Check<'_>], values: Vec<Value>) -> Result<Vec<Result<Reply, StoreError>>, StoreError> {
    let mut values = values.into_iter();
    let mut replies = Vec::with_capacity(checks.len());
    for (k, check) in checks.iter().enumerate() {
        let reply = match values.next() {
            Some(Value::BulkString(words)) => Err(StoreError::Failed(String::from_utf8_lossy(&words).into_owned())),
            Some(Value::SimpleString(words)) => Err(StoreError::Failed(words)),
            Some(first @ Value::Int(_)) => Ok(decision_values(k, checks.len(), check.limits, first, &mut values)?),
            Some(other) => return Err(malformed(format!("{other:?} starts check {k}"))),
            None => return Err(malformed(format!("it ends before check {k} of {}", checks.len()))),
        };
        replies.push(reply);
    }
    if values.next().is_some() {
        return Err(malformed(format!("values follow the last of {} checks", checks.len())));
    }
    Ok(replies)
}

/// Check `k`'s decision: `first`, then the rest of its 3 + 2n integers from `rest`.
fn decision_values(
    k: usize,
    checks: usize,
    limits: &Limits,
    first: Value,
    rest: &mut impl Iterator<Item = Value>,
) -> Result<Reply, StoreError> {
    let len = 3 + 2 * limits.windows().len();
    let mut values = Vec::with_capacity(len);
    for value in std::iter::once(first).chain(rest.take(len - 1)) {
        match value {
            Value::Int(v) => values.push(u64::try_from(v).map_err(|_| malformed(format!("{v} in check {k}")))?),
            other => return Err(malformed(format!("{other:?} in check {k}"))),
        }
    }
    if values.len() != len {
        return Err(malformed(format!("it ends in check {k} of {checks}")));
    }
    Ok(Reply { values })
}

fn malformed(what: String) -> StoreError {
    StoreError::Failed(format!("the script's reply is malformed: {what}"))
}

/// The script's `mode` argument.
pub fn mode_arg(mode: Mode) -> &'static str {
    match mode {
        Mode::Consume => "consume",
        Mode::Peek => "peek",
    }
}

/// The `mode` argument of a check of an all-or-nothing call.
fn group_arg(mode: Mode) -> &'static str {
    match mode {
        Mode::Consume => "all",
        Mode::Peek => "ask",
    }
}

/// Turns the script's reply into a decision, as the in-process store does.
pub fn decode(limits: &Limits, cost: u32, reply: &Reply) -> Result<Decision, StoreError> {
    let (windows, reply) = (limits.windows().len(), reply.values());
    if reply.len() != 3 + 2 * windows {
        let expected = 3 + 2 * windows;
        return Err(StoreError::Failed(format!("the script replied {} values, expected {expected}", reply.len())));
    }
    let mut checks = [WindowCheck::default(); MAX_WINDOWS];
    for (check, pair) in checks.iter_mut().zip(reply[3..].chunks_exact(2)) {
        let spare =
            u32::try_from(pair[0]).map_err(|_| StoreError::Failed(format!("spare {} out of range", pair[0])))?;
        *check = WindowCheck { spare, retry_after_ms: pair[1] };
    }
    let decision = Decision::assemble(limits, cost, reply[1], reply[2], &checks[..windows]);
    if decision.allowed != (reply[0] == 1) {
        return Err(StoreError::Failed("the script's verdict disagrees with its windows".into()));
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::Value;

    use super::{Check, mode_arg, replies_of, write_check_arg};
    use crate::domain::{Limits, Mode, Window};
    use crate::store::StoreError;

    fn two_windows() -> Limits {
        let windows =
            [Window::new(300, Duration::from_secs(60)).unwrap(), Window::new(20, Duration::from_secs(1)).unwrap()];
        Limits::new(&windows).unwrap()
    }

    #[test]
    fn a_check_is_one_argument_longest_window_first() {
        let mut arg = b"left over".to_vec();
        write_check_arg(&mut arg, &two_windows(), 3, mode_arg(Mode::Peek));
        assert_eq!(arg, b"3 peek 300 60000 20 1000");
        let one = Limits::single(5, Duration::from_millis(1500)).unwrap();
        write_check_arg(&mut arg, &one, 1, mode_arg(Mode::Consume));
        assert_eq!(arg, b"1 consume 5 1500");
    }

    /// The flat reply splits by each check's window count; a string stands for a whole
    /// check; anything else is the call's error, not a wrong decision.
    #[test]
    fn a_flat_reply_splits_into_one_per_check() {
        let (one, two) = (Limits::single(5, Duration::from_secs(60)).unwrap(), two_windows());
        let check = |key: &'static [u8], limits, mode| Check { key, limits, cost: 1, mode };
        let checks =
            [check(b"a", &two, Mode::Consume), check(b"b", &one, Mode::Consume), check(b"c", &one, Mode::Peek)];
        let int = Value::Int;
        let words = Value::BulkString(b"WRONGTYPE".to_vec());
        let values = vec![
            int(1),
            int(100),
            int(90),
            int(7),
            int(0),
            int(2),
            int(0),
            words.clone(),
            int(0),
            int(100),
            int(90),
            int(0),
            int(40),
        ];
        let replies = replies_of(&checks, values.clone()).unwrap();
        assert_eq!(replies[0].as_ref().unwrap().values(), &[1, 100, 90, 7, 0, 2, 0]);
        assert!(matches!(&replies[1], Err(StoreError::Failed(w)) if w == "WRONGTYPE"));
        assert_eq!(replies[2].as_ref().unwrap().values(), &[0, 100, 90, 0, 40]);

        let short = values[..values.len() - 1].to_vec();
        let mut long = values.clone();
        long.push(int(1));
        let mut negative = values.clone();
        negative[4] = int(-1);
        let mut nested = values.clone();
        nested[2] = Value::Array(vec![int(90)]);
        for bad in [short, long, negative, nested, Vec::new()] {
            assert!(matches!(replies_of(&checks, bad), Err(StoreError::Failed(_))));
        }
    }
}
