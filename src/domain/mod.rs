//! Floor 1, the domain: policies, decisions, the history of a key (in process),
//! fingerprints, the validation of a request, and the exactness oracle. Plain data
//! and pure functions: nothing here imports the rest of the crate, gRPC or Redis.

mod decision;
mod fingerprint;
mod history;
pub mod inspect;
pub mod oracle;
mod policy;
mod validation;

pub use decision::{Decision, Mode, WindowCheck};
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use history::History;
pub use policy::{
    DEFAULT_POLICY, FailureMode, Limits, MAX_LIMIT, MAX_WINDOW, MAX_WINDOWS, Override, Policies, Policy, PolicyError,
    Resolved, SharedPolicies, Window, unix_ms,
};
pub use validation::{InvalidRequest, MAX_KEY_ID_BYTES, validate_cost, validate_key};
