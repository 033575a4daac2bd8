//! What the binary does before serving: the command line parsed into one line of error
//! (exit 2) or help, and the subcommands that never serve (`fingerprint`,
//! `check-limits`).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use super::cli::{AdminAction, Cli, Command};
use super::{ConfigError, fingerprint, limits};
use crate::domain::{Policies, Policy};

/// What `main` should do next.
pub enum Next {
    Serve(Box<Cli>),
    /// `ratelimitd probe TARGET`: a gRPC client, which this floor does not hold.
    Probe(String, String),
    /// `ratelimitd admin inspect|explain`: the admin service's client, with what it read.
    Admin(AdminAsk),
    Exit(ExitCode),
}

/// Parses the command line; help and version are printed, an error is one line naming
/// the flag (clap's own take three to five), and subcommands run here.
pub fn parse() -> Next {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return Next::Exit(ExitCode::SUCCESS);
        }
        Err(e) => return Next::Exit(fail(&one_line(&e.to_string()))),
    };
    match &cli.command {
        None => Next::Serve(Box::new(cli)),
        Some(Command::Fingerprint) => Next::Exit(print_fingerprint(&cli)),
        Some(Command::CheckLimits { file }) => Next::Exit(check_limits(&cli, file)),
        Some(Command::Probe { target, service }) => Next::Probe(target.clone(), service.clone()),
        Some(Command::Admin { action }) => match admin_ask(action) {
            Ok(ask) => Next::Admin(ask),
            Err(message) => Next::Exit(fail(&message)),
        },
    }
}

/// Clap's message on one line: its first line without `error: `, the indented lines that
/// continue it (the names of missing or conflicting arguments), and its tip, if any.
fn one_line(message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or("the command line does not parse");
    let mut text = first.strip_prefix("error: ").unwrap_or(first).trim().to_owned();
    let mut tip = None;
    for line in lines.take_while(|l| !l.starts_with("Usage:")) {
        let trimmed = line.trim();
        if let Some(t) = trimmed.strip_prefix("tip: ") {
            tip = Some(t.to_owned());
        } else if !trimmed.is_empty() && line.starts_with(' ') && tip.is_none() {
            text.push(' ');
            text.push_str(trimmed);
        }
    }
    match tip {
        Some(tip) => format!("{text} ({tip}; see --help)"),
        None => format!("{text} (see --help)"),
    }
}

pub fn fail(message: &str) -> ExitCode {
    eprintln!("ratelimitd: error: {message}");
    ExitCode::from(2)
}

/// `ratelimitd fingerprint`: reads a key on stdin, prints its fingerprint.
fn print_fingerprint(cli: &Cli) -> ExitCode {
    let mut input = String::new();
    let printed = std::io::stdin()
        .read_line(&mut input)
        .map_err(|e| ConfigError::FingerprintInput(e.to_string()))
        .and_then(|_| fingerprint(cli, &input));
    match printed {
        Ok(fingerprint) => {
            println!("{fingerprint}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `ratelimitd check-limits FILE`: validates a limits file as start-up would (exit 0
/// with what it holds, or 2 with the same message), serving nothing.
fn check_limits(cli: &Cli, file: &Path) -> ExitCode {
    let default = match Policy::default_with(cli.limit, cli.window) {
        Ok(policy) => policy,
        Err(e) => return fail(&format!("--limit/--window: {e}")),
    };
    match limits::load(file, &default) {
        Ok((policies, _)) => {
            println!("{}: valid: {}", file.display(), summary(&policies));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// The default policy, how many named policies the overrides use, and how many overrides.
pub fn summary(policies: &Policies) -> String {
    let windows: Vec<String> = policies
        .default
        .limits
        .windows()
        .iter()
        .map(|w| {
            format!("{} per {}", w.limit(), humantime::format_duration(std::time::Duration::from_millis(w.window_ms())))
        })
        .collect();
    let named: std::collections::HashSet<&str> = policies.overrides.values().map(|o| &*o.policy.name).collect();
    format!(
        "default {}; {} named policies in use; {} overrides",
        windows.join(" and "),
        named.len(),
        policies.overrides.len()
    )
}

/// One question for the admin service, its inputs read: the token and the key never come
/// from the command line.
#[derive(Debug, Clone)]
pub struct AdminAsk {
    /// `inspect`, `explain` or `reset`.
    pub what: &'static str,
    /// A reset's reason.
    pub reason: String,
    pub target: String,
    pub token: Option<String>,
    /// The raw key, or else the fingerprint.
    pub key_id: Option<String>,
    pub fingerprint: Option<String>,
    /// TLS: the service's CA, and this client's certificate and key (PEM).
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn admin_ask(action: &AdminAction) -> Result<AdminAsk, String> {
    let (what, args, reason) = match action {
        AdminAction::Inspect(args) => ("inspect", args, String::new()),
        AdminAction::Explain(args) => ("explain", args, String::new()),
        AdminAction::Reset { args, reason } => ("reset", args, reason.clone()),
    };
    let read = |path: &Path, flag: &str| -> Result<String, String> {
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("{flag} -: {e}"))?
        } else {
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?
        };
        Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned())
    };
    let token = args.token_file.as_deref().map(|path| read(path, "--token-file")).transpose()?;
    let token = token.map(|t| t.trim().to_owned());
    let key_id = args.key_file.as_deref().map(|path| read(path, "--key-file")).transpose()?;
    let pem = |path: &Path, flag: &str| std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()));
    let ca = args.ca_file.as_deref().map(|path| pem(path, "--ca-file")).transpose()?;
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some((pem(cert, "--client-cert")?, pem(key, "--client-key")?)),
        _ => None,
    };
    let fingerprint = args.fingerprint.clone();
    Ok(AdminAsk { what, reason, target: args.target.clone(), token, key_id, fingerprint, ca, identity })
}
