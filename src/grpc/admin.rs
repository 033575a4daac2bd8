//! `ratelimit.admin.v1.Admin`, the support desk's service (on its own listener, see
//! `--admin-listen`): Inspect and Explain read a key's exact history without counting
//! anything. Every call needs `authorization: Bearer <token>`, a token of
//! `--admin-tokens-file`, whose name is the actor of the call's log line, or a client
//! certificate of `--admin-client-ca` (checked in the TLS handshake), whose subject is; or
//! both, where both are configured.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::to_status;
use crate::domain::Fingerprint;
use crate::limiter::Limiter;
use crate::limiter::desk::Inspection;
use crate::store::Store;

pub mod pb {
    tonic::include_proto!("ratelimit.admin.v1");
}

use pb::admin_server::{Admin, AdminServer};
use pb::key_request::Key;
use pb::{CountedRequest, ExplainResponse, InspectResponse, KeyRequest, ResetRequest, ResetResponse, WindowState};

/// The callers the desk knows: each token's SHA-256, to the name it acts under (no tokens:
/// none needed), and whether callers show a certificate (mutual TLS).
#[derive(Clone)]
pub struct Callers {
    tokens: Option<Arc<HashMap<[u8; 32], Arc<str>>>>,
    certificates: bool,
}

impl Callers {
    /// From (name, token) pairs, as `--admin-tokens-file` lists them (none: callers are known
    /// by `certificates` alone), and whether the listener requires client certificates.
    pub fn new(entries: &[(String, String)], certificates: bool) -> Self {
        let map = entries.iter().map(|(name, token)| (Sha256::digest(token.as_bytes()).into(), name.as_str().into()));
        let tokens = (!entries.is_empty()).then(|| Arc::new(map.collect()));
        Self { tokens, certificates }
    }

    /// The interceptor that refuses a call without a known token or certificate, and
    /// records its actor: the token's name, the certificate's subject, or both.
    fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let subject = if self.certificates {
            let certificates = request.peer_certs().unwrap_or_default();
            let first = certificates.first().ok_or_else(|| {
                Status::unauthenticated("the admin service needs a client certificate (--admin-client-ca)")
            })?;
            Some(subject(first.as_ref())?)
        } else {
            None
        };
        let name = match &self.tokens {
            Some(tokens) => Some(token_name(tokens, &request)?),
            None => None,
        };
        let actor: Arc<str> = match (name, subject) {
            (Some(name), Some(subject)) => format!("{name} ({subject})").into(),
            (Some(name), None) => name,
            (None, Some(subject)) => subject.into(),
            (None, None) => return Err(Status::unauthenticated("the admin service knows no caller")),
        };
        request.extensions_mut().insert(Actor(actor));
        Ok(request)
    }
}

/// The subject of a client certificate (DER), as `CN=..., O=...`.
fn subject(der: &[u8]) -> Result<String, Status> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| Status::unauthenticated("the client certificate cannot be read"))?;
    Ok(certificate.subject().to_string())
}

/// The name of the token a request carries, or why it is refused.
fn token_name(tokens: &HashMap<[u8; 32], Arc<str>>, request: &Request<()>) -> Result<Arc<str>, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("the admin service needs `authorization: Bearer <token>` (--admin-tokens-file)")
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
    let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    tokens
        .get(&digest)
        .cloned()
        .ok_or_else(|| Status::permission_denied("this token is not one of --admin-tokens-file"))
}

/// Who made an admin call: its token's name, its certificate's subject, or both.
#[derive(Clone)]
struct Actor(Arc<str>);

/// The actor the token check recorded for `request`.
fn actor<T>(request: &Request<T>) -> Arc<str> {
    request.extensions().get::<Actor>().map_or_else(|| "?".into(), |a| a.0.clone())
}

/// A fingerprint in a request. Not echoed when wrong: it may be a raw key pasted in the
/// wrong field, which must not travel back or reach a log line.
fn fingerprint(hex: &str) -> Result<Fingerprint, Status> {
    Fingerprint::from_hex(hex).ok_or_else(|| {
        Status::invalid_argument(format!("fingerprint is not 32 hex digits (got {} characters)", hex.chars().count()))
    })
}

pub struct AdminService<S> {
    limiter: Arc<Limiter<S>>,
}

/// The service behind its caller check, ready to serve.
pub fn server<S: Store>(
    limiter: Arc<Limiter<S>>,
    callers: Callers,
) -> tonic::service::interceptor::InterceptedService<
    AdminServer<AdminService<S>>,
    impl tonic::service::Interceptor + Clone,
> {
    AdminServer::with_interceptor(AdminService { limiter }, move |request| callers.check(request))
}

impl<S: Store> AdminService<S> {
    /// The key a request names, read (`method`: for the log line, with the actor).
    async fn read(&self, method: &str, request: Request<KeyRequest>) -> Result<Inspection, Status> {
        let actor = actor(&request);
        let (key, by_fingerprint) = match request.into_inner().key {
            Some(Key::KeyId(key_id)) => (self.limiter.fingerprint_of(&key_id).map_err(to_status)?, false),
            Some(Key::Fingerprint(hex)) => (fingerprint(&hex)?, true),
            None => return Err(Status::invalid_argument("name the key: key_id or fingerprint")),
        };
        let inspection = self.limiter.inspect(key).await.map_err(to_status)?;
        if by_fingerprint
            && inspection.held.requests.is_empty()
            && !inspection.listed
            && inspection.last_denied_ms.is_none()
        {
            return Err(Status::not_found(format!("fingerprint {key} has no history, no override and no denial")));
        }
        tracing::info!(audit = "admin read", method, actor = %actor, key = %key, "support desk read");
        Ok(inspection)
    }
}

#[tonic::async_trait]
impl<S: Store> Admin for AdminService<S> {
    async fn reset(&self, request: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        let actor = actor(&request);
        let ResetRequest { fingerprint: hex, reason } = request.into_inner();
        let key = fingerprint(&hex)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Status::invalid_argument("a reset needs a reason (it is written to the audit log)"));
        }
        let before = self.limiter.inspect(key).await.map_err(to_status)?;
        if before.held.requests.is_empty() && !before.listed {
            return Err(Status::not_found(format!("fingerprint {key} has no history and no override")));
        }
        let had_history = self.limiter.reset(key).await.map_err(to_status)?;
        let units: u64 = before.held.requests.iter().map(|(_, units)| units).sum();
        crate::metrics::key_reset();
        tracing::info!(
            audit = "key reset",
            actor = %actor,
            key = %key,
            alias = before.resolved.alias.as_deref().unwrap_or_default(),
            policy = %before.resolved.policy.name,
            before = units,
            after = 0,
            reason,
            "key reset: {units} units forgotten"
        );
        // Every replica reading the store drops what it cached of the key meanwhile.
        tokio::time::sleep(crate::limiter::desk::RESET_SEEN).await;
        Ok(Response::new(ResetResponse { fingerprint: key.to_string(), had_history }))
    }

    async fn inspect(&self, request: Request<KeyRequest>) -> Result<Response<InspectResponse>, Status> {
        let i = self.read("Inspect", request).await?;
        let windows = i
            .windows
            .iter()
            .map(|w| WindowState {
                limit: w.limit,
                window_ms: w.window_ms,
                counted: u32::try_from(w.counted).unwrap_or(u32::MAX),
                remaining: u32::try_from(w.remaining).unwrap_or(u32::MAX),
                next_free_unix_ms: w.next_free_ms,
                empty_unix_ms: w.empty_ms,
            })
            .collect();
        Ok(Response::new(InspectResponse {
            fingerprint: i.key.to_string(),
            alias: i.resolved.alias.as_deref().unwrap_or_default().to_owned(),
            policy: i.resolved.policy.name.to_string(),
            overridden: i.resolved.overridden,
            override_until_unix_ms: i.until_ms.unwrap_or(0),
            at_unix_ms: i.held.at_ms,
            windows,
            last_denied_unix_ms: i.last_denied_ms.unwrap_or(0),
        }))
    }

    async fn explain(&self, request: Request<KeyRequest>) -> Result<Response<ExplainResponse>, Status> {
        let i = self.read("Explain", request).await?;
        let longest = i.resolved.policy.limits.windows()[0];
        let requests = i
            .inside_longest()
            .into_iter()
            .map(|(at, units)| CountedRequest { at_unix_ms: at, cost: u32::try_from(units).unwrap_or(u32::MAX) })
            .collect();
        Ok(Response::new(ExplainResponse {
            fingerprint: i.key.to_string(),
            alias: i.resolved.alias.as_deref().unwrap_or_default().to_owned(),
            policy: i.resolved.policy.name.to_string(),
            at_unix_ms: i.held.at_ms,
            requests,
            limit: longest.limit(),
            window_ms: longest.window_ms(),
        }))
    }
}

/// `ratelimitd admin inspect|explain`: asks the admin service at `target` about `key` and
/// prints the answer for a person; exit 0, or 1 with one line saying why there is none.
/// TLS for the client: the service's CA, and optionally this client's certificate and key.
pub type ClientTls = (Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

pub async fn ask(
    what: &str,
    reason: &str,
    target: &str,
    token: Option<&str>,
    key: Key,
    tls: Option<ClientTls>,
) -> std::process::ExitCode {
    match ask_and_print(what, reason, target, token, key, tls).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("ratelimitd: admin: {why}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn ask_and_print(
    what: &str,
    reason: &str,
    target: &str,
    token: Option<&str>,
    key: Key,
    tls: Option<ClientTls>,
) -> Result<(), String> {
    use pb::admin_client::AdminClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{target}"))
        .map_err(|e| format!("{target} is not host:port: {e}"))?
        .timeout(std::time::Duration::from_secs(10));
    if let Some((ca, identity)) = tls {
        let host = target.rsplit_once(':').map_or(target, |(host, _)| host).trim_matches(['[', ']']);
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(host);
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let bearer: Option<tonic::metadata::MetadataValue<_>> = token
        .map(|token| format!("Bearer {token}").parse())
        .transpose()
        .map_err(|_| "the token holds characters a header cannot".to_owned())?;
    let mut client = AdminClient::with_interceptor(channel, move |mut request: Request<()>| {
        if let Some(bearer) = &bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(request)
    });
    let refused = |status: Status| format!("{:?}: {}", status.code(), status.message());
    if what == "reset" {
        // A reset names the key by fingerprint: a raw key is turned into one by the service.
        let fingerprint = match key {
            Key::Fingerprint(hex) => hex,
            key => client.inspect(KeyRequest { key: Some(key) }).await.map_err(refused)?.into_inner().fingerprint,
        };
        let r =
            client.reset(ResetRequest { fingerprint, reason: reason.to_owned() }).await.map_err(refused)?.into_inner();
        let had = if r.had_history { "its history is forgotten" } else { "it held no history" };
        println!("key {} reset on every replica: {had}", r.fingerprint);
        return Ok(());
    }
    let request = KeyRequest { key: Some(key) };
    if what == "explain" {
        let r = client.explain(request).await.map_err(refused)?.into_inner();
        println!("{}", heading(&r.fingerprint, &r.alias, &r.policy, r.at_unix_ms));
        let units: u64 = r.requests.iter().map(|q| u64::from(q.cost)).sum();
        println!(
            "{} requests, {units} units in the last {} (limit {}):",
            r.requests.len(),
            humantime::format_duration(std::time::Duration::from_millis(r.window_ms)),
            r.limit
        );
        for q in &r.requests {
            println!("  {}  cost {}", time(q.at_unix_ms), q.cost);
        }
    } else {
        let r = client.inspect(request).await.map_err(refused)?.into_inner();
        println!("{}", heading(&r.fingerprint, &r.alias, &r.policy, r.at_unix_ms));
        if r.overridden || r.override_until_unix_ms > 0 {
            let until = if r.override_until_unix_ms > 0 {
                format!(" until {}", time(r.override_until_unix_ms))
            } else {
                String::new()
            };
            println!("override{until}");
        }
        for w in &r.windows {
            let length = humantime::format_duration(std::time::Duration::from_millis(w.window_ms));
            print!("window {length}: {} of {} counted, {} left", w.counted, w.limit, w.remaining);
            if w.counted > 0 {
                print!("; next unit frees at {}, empty at {}", time(w.next_free_unix_ms), time(w.empty_unix_ms));
            }
            println!();
        }
        match r.last_denied_unix_ms {
            0 => println!("not denied in the last 7 days"),
            at => println!("last denied at {}", time(at)),
        }
    }
    Ok(())
}

fn heading(fingerprint: &str, alias: &str, policy: &str, at: u64) -> String {
    let alias = if alias.is_empty() { String::new() } else { format!(" ({alias})") };
    format!("key {fingerprint}{alias}, policy {policy}, at {}", time(at))
}

fn time(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms)).to_string()
}
