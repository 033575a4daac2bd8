//! The support desk's admin service (`--admin-listen`): off unless given, and then only for
//! callers with a token of `--admin-tokens-file`, or a certificate of `--admin-client-ca`,
//! or both when both are given.

use std::net::SocketAddr;
use std::path::Path;

use super::ConfigError;
use super::cli::Cli;

/// The shortest token accepted: a guessable one would open the desk to anyone.
const MIN_TOKEN_BYTES: usize = 16;

/// Where the admin service listens and who may call it.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// (name, token): the name is the actor of the calls made with the token; none if
    /// callers are known by certificate alone.
    pub tokens: Vec<(String, String)>,
    /// `--admin-client-ca`: callers need a certificate it signed (PEM).
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token_names", &names)
            .field("mutual_tls", &self.client_ca.is_some())
            .finish()
    }
}

pub(super) fn admin(cli: &Cli) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(listen) = cli.admin_listen else {
        return match (&cli.admin_tokens_file, &cli.admin_client_ca) {
            (None, None) => Ok(None),
            (Some(_), _) => Err(ConfigError::Admin("--admin-tokens-file needs --admin-listen".into())),
            (None, Some(_)) => Err(ConfigError::Admin("--admin-client-ca needs --admin-listen".into())),
        };
    };
    let client_ca = match &cli.admin_client_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| ConfigError::Admin(format!("--admin-client-ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let tokens = match &cli.admin_tokens_file {
        Some(path) => tokens(path)?,
        None if client_ca.is_some() => Vec::new(),
        None => {
            return Err(ConfigError::Admin(
                "--admin-listen needs --admin-tokens-file or --admin-client-ca: the admin service serves only \
                 callers it knows"
                    .into(),
            ));
        }
    };
    Ok(Some(AdminConfig { listen, tokens, client_ca }))
}

/// `--admin-tokens-file`: one `name token` per line; blank lines and `#` comments ignored.
fn tokens(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let fail = |why: String| ConfigError::Admin(format!("--admin-tokens-file {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut tokens: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, token) = line.split_once(char::is_whitespace).map(|(a, b)| (a, b.trim())).unwrap_or((line, ""));
        if token.len() < MIN_TOKEN_BYTES || token.contains(char::is_whitespace) {
            return Err(fail(format!(
                "line {n}: need `name token`, the token at least {MIN_TOKEN_BYTES} bytes, no spaces"
            )));
        }
        if tokens.iter().any(|(other, _)| other == name) {
            return Err(fail(format!("line {n}: the name {name:?} is given twice")));
        }
        tokens.push((name.to_owned(), token.to_owned()));
    }
    if tokens.is_empty() {
        return Err(fail("it holds no token".into()));
    }
    Ok(tokens)
}
