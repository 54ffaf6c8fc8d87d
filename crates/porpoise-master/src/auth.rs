//! Who may call AdminService: bearer tokens with a role ([`porpoise_core::auth`]). The check
//! wraps the whole service, so every call — and any added later — is covered: a call without a
//! valid token is UNAUTHENTICATED, one whose token's role is too low PERMISSION_DENIED. Tokens
//! are stored as their SHA-256; the master's bootstrap admin token (`PORPOISE_ADMIN_TOKEN`)
//! is only held in memory, hashed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use porpoise_core::auth::{Role, required_role};
use porpoise_store::Store;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tracing::{debug, warn};

/// How long a token lookup is reused: a deleted token stops working within this.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// The bootstrap admin token's name, as logs and refusals show it.
pub(crate) const BOOTSTRAP: &str = "bootstrap admin (PORPOISE_ADMIN_TOKEN)";

/// A token's SHA-256, hex: what the database keeps.
pub(crate) fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token secret: 32 random bytes, hex, after a `pp_` prefix that says what it is.
pub(crate) fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!("pp_{}", hex::encode(bytes)))
}

/// A token's holder (name and role), `None` for a secret nobody holds.
type Holder = Option<(String, Role)>;

/// What the master accepts as credentials.
#[derive(Clone)]
pub(crate) struct Tokens {
    store: Arc<dyn Store>,
    /// `false` (standalone on loopback): every call is allowed.
    required: bool,
    bootstrap: Option<String>,
    /// Lookups by hash, with when they were made.
    cache: Arc<Mutex<HashMap<String, (Holder, Instant)>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("required", &self.required).finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>, required: bool, bootstrap_secret: Option<&str>) -> Self {
        Self { store, required, bootstrap: bootstrap_secret.map(hash), cache: Arc::default() }
    }

    /// The name and role of the token whose secret is `secret`, if any.
    async fn holder(&self, secret: &str) -> Result<Holder, Status> {
        let hashed = hash(secret);
        if self.bootstrap.as_deref() == Some(hashed.as_str()) {
            return Ok(Some((BOOTSTRAP.to_string(), Role::Admin)));
        }
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hashed).cloned();
        if let Some((holder, at)) = cached
            && at.elapsed() < CACHE_FOR
        {
            return Ok(holder);
        }
        let found = self.store.api_token_by_hash(&hashed).await.map_err(|e| {
            crate::metrics::database_error("read_token", &e);
            Status::unavailable(format!("cannot check the token now: {e}"))
        })?;
        let holder = match found {
            Some(t) => match t.role.parse::<Role>() {
                Ok(role) => Some((t.name, role)),
                Err(e) => return Err(Status::internal(format!("token {} has a bad role: {e}", t.name))),
            },
            None => None,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(hashed, (holder.clone(), Instant::now()));
        Ok(holder)
    }

    /// Whether a call of `method` with `authorization` header may go on.
    async fn authorize(&self, authorization: Option<&str>, method: &str) -> Result<(), Status> {
        if !self.required {
            return Ok(());
        }
        let needed = required_role(method);
        let Some(secret) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
            metrics::counter!(crate::metrics::ADMIN_CALLS_REFUSED, "reason" => "no_token").increment(1);
            return Err(Status::unauthenticated(
                "this Porpoise server needs an API token: set PORPOISE_TOKEN (an admin makes one with `porpoise token create NAME --role viewer|operator|admin`)",
            ));
        };
        match self.holder(secret).await? {
            None => {
                metrics::counter!(crate::metrics::ADMIN_CALLS_REFUSED, "reason" => "unknown_token").increment(1);
                warn!(method, "AdminService call with an unknown token refused");
                Err(Status::unauthenticated("the API token is not valid (unknown or deleted)"))
            }
            Some((name, role)) if role < needed => {
                metrics::counter!(crate::metrics::ADMIN_CALLS_REFUSED, "reason" => "role").increment(1);
                warn!(method, token = %name, %role, %needed, "AdminService call refused: role too low");
                Err(Status::permission_denied(format!(
                    "token {name} is a {role} token: {method} needs {needed} (roles: viewer < operator < admin)"
                )))
            }
            Some((name, _)) => {
                debug!(method, token = %name, "AdminService call authorised");
                Ok(())
            }
        }
    }
}

/// A gRPC service that answers only authorised calls.
#[derive(Debug, Clone)]
pub(crate) struct Authorized<S> {
    pub inner: S,
    pub tokens: Tokens,
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authorized<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // the clone is the one polled ready; the original stays for the next call
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let header = request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
            match tokens.authorize(header.as_deref(), &method).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashes_fixed() {
        let (a, b) = (new_secret().expect("a secret"), new_secret().expect("another"));
        assert!(a.starts_with("pp_") && a.len() == 67 && a != b);
        assert_eq!(hash("x"), "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881");
    }
}
