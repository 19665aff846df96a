//! Who may use the admin API, when it has a token: a request carries
//! `Authorization: Bearer <token>` (the scheme in any case, as RFC 9110
//! says), or the cookie of a dashboard session.
//!
//! - **Sessions**: `POST /admin/login` with the token opens one and sets
//!   its cookie (`HttpOnly`, `SameSite=Strict`): a random value that is not
//!   the token, so that what a browser sends every tier of this host (a
//!   cookie ignores ports) is no more than that session. It expires after
//!   [`SESSION_TTL`]; `POST /admin/logout` closes it; a restart closes all;
//!   at most [`MAX_SESSIONS`] are open (the oldest goes).
//! - **Guesses**: a wrong token or session costs its client (by address)
//!   one of [`GUESS_BURST`] tries, given back one per [`GUESS_REFILL`]; a
//!   client with none left is answered `429` with `Retry-After`, without a
//!   look at what it sent. Wrong tokens are logged (every 10 s at most,
//!   with how many and from where).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use crate::serve::admission::RateLimited;

/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions open at once.
pub const MAX_SESSIONS: usize = 256;
/// Wrong tokens a client may send in a row.
pub const GUESS_BURST: u32 = 10;
/// How often a client gets back one try.
pub const GUESS_REFILL: Duration = Duration::from_secs(1);
/// Clients whose wrong tries are counted at once.
pub const MAX_CLIENTS: usize = 4096;
/// The cookie of a dashboard session.
pub const COOKIE: &str = "orchestrator_session";

/// Who may use the admin API.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The bearer token every request but health and readiness must carry.
    pub token: Option<Arc<str>>,
    sessions: Arc<Sessions>,
    guesses: Arc<Guesses>,
}

/// The address a request came from, put in its extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct Client(pub IpAddr);

/// What the guard makes of a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// None given.
    Missing,
    /// Wrong: counted against its client.
    Wrong,
    /// The client has no try left: not even looked at. Seconds to wait.
    Throttled(u64),
}

impl Access {
    pub fn new(token: Option<Arc<str>>) -> Self {
        Self { token, sessions: Arc::default(), guesses: Arc::default() }
    }

    /// Whether `headers`, from `client`, carry the token or a live session.
    pub fn check(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Verdict {
        let Some(token) = &self.token else { return Verdict::Allowed };
        let bearer = bearer(headers);
        let session = session_cookie(headers);
        if bearer.is_none() && session.is_none() {
            return Verdict::Missing;
        }
        if let Some(wait) = self.guesses.throttled(client) {
            return Verdict::Throttled(wait);
        }
        let good = bearer.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
            || session.is_some_and(|id| self.sessions.valid(id));
        if good {
            return Verdict::Allowed;
        }
        self.guesses.wrong(client, "a request with a wrong token or session");
        Verdict::Wrong
    }

    /// Opens a session if `token` is the token; its id.
    pub fn login(&self, token: &str, client: Option<IpAddr>) -> Result<Option<String>, Verdict> {
        let Some(expected) = &self.token else { return Ok(None) };
        if let Some(wait) = self.guesses.throttled(client) {
            return Err(Verdict::Throttled(wait));
        }
        if !same_secret(token.trim().as_bytes(), expected.as_bytes()) {
            self.guesses.wrong(client, "a login with a wrong token");
            return Err(Verdict::Wrong);
        }
        self.sessions.open().map(Some).map_err(|_| Verdict::Wrong)
    }

    /// Closes the session `headers` carry, if any.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            self.sessions.close(id);
        }
    }
}

/// The token of an `Authorization: Bearer …` header (scheme in any case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The session a request's cookie names, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|id| !id.is_empty())
}

/// Compares two secrets in time that depends on their lengths only.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[derive(Debug, Default)]
struct Sessions {
    /// Session id → when it expires.
    open: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn open(&self) -> std::io::Result<String> {
        let id = plugin_api::files::random_hex(32)?;
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, expires| *expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, e)| **e).map(|(id, _)| id.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), now + SESSION_TTL);
        Ok(id)
    }

    fn valid(&self, id: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Compared whole against each: no early exit on a prefix.
        open.iter().any(|(known, expires)| same_secret(id.as_bytes(), known.as_bytes()) && *expires > Instant::now())
    }

    fn close(&self, id: &str) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

#[derive(Debug, Default)]
struct Guesses {
    /// Client → tries left, and when they were counted.
    clients: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    warnings: RateLimited,
}

impl Guesses {
    /// Tries left for `client` now (given back since last counted).
    fn left(entry: &(f64, Instant), now: Instant) -> f64 {
        let back = now.duration_since(entry.1).as_secs_f64() / GUESS_REFILL.as_secs_f64();
        (entry.0 + back).min(f64::from(GUESS_BURST))
    }

    /// Seconds until `client` may try again, if it has no try left.
    fn throttled(&self, client: Option<IpAddr>) -> Option<u64> {
        let client = client?;
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let left = Self::left(clients.get(&client)?, Instant::now());
        (left < 1.0).then(|| ((1.0 - left) * GUESS_REFILL.as_secs_f64()).ceil().max(1.0) as u64)
    }

    fn wrong(&self, client: Option<IpAddr>, what: &str) {
        let now = Instant::now();
        if let Some(client) = client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
                // Those with every try back are forgotten first; else the longest counted.
                clients.retain(|_, e| Self::left(e, now) < f64::from(GUESS_BURST));
                if clients.len() >= MAX_CLIENTS
                    && let Some(oldest) = clients.iter().min_by_key(|(_, e)| e.1).map(|(c, _)| *c)
                {
                    clients.remove(&oldest);
                }
            }
            let entry = clients.entry(client).or_insert((f64::from(GUESS_BURST), now));
            *entry = (Self::left(entry, now) - 1.0, now);
        }
        if let Some(suppressed) = self.warnings.ready() {
            let from = client.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
            tracing::warn!(client = %from, refused_since_last_warning = suppressed + 1, "Admin API: refused {what}.");
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_static(v))).collect()
    }

    const TOKEN: &str = "a-token-of-enough-characters";

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc "] {
            assert_eq!(bearer(&headers(&[(header::AUTHORIZATION, value)])), Some("abc"), "{value}");
        }
        assert_eq!(bearer(&headers(&[(header::AUTHORIZATION, "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[(header::AUTHORIZATION, "Bearer")])), None);
    }

    #[test]
    fn a_session_is_not_the_token_and_ends_at_logout() {
        let access = Access::new(Some(TOKEN.into()));
        let client = Some(IpAddr::from([127, 0, 0, 1]));
        let id = access.login(TOKEN, client).unwrap().unwrap();
        assert_ne!(id, TOKEN);
        assert_eq!(id.len(), 64);
        let cookie = HeaderValue::from_str(&format!("a=1; {COOKIE}={id}; b=2")).unwrap();
        let mut with = HeaderMap::new();
        with.insert(header::COOKIE, cookie);
        assert_eq!(access.check(&with, client), Verdict::Allowed);
        access.logout(&with);
        assert_eq!(access.check(&with, client), Verdict::Wrong);
        // The token as a cookie is a wrong session.
        let mut token_cookie = HeaderMap::new();
        token_cookie.insert(header::COOKIE, HeaderValue::from_str(&format!("{COOKIE}={TOKEN}")).unwrap());
        assert_eq!(access.check(&token_cookie, client), Verdict::Wrong);
    }

    #[test]
    fn wrong_guesses_are_throttled_per_client_at_the_edge() {
        let access = Access::new(Some(TOKEN.into()));
        let (guesser, other) = (Some(IpAddr::from([10, 0, 0, 1])), Some(IpAddr::from([10, 0, 0, 2])));
        let wrong = headers(&[(header::AUTHORIZATION, "Bearer wrong-token-0000000000000")]);
        for _ in 0..GUESS_BURST {
            assert_eq!(access.check(&wrong, guesser), Verdict::Wrong);
        }
        // The burst is spent: the next is not even looked at, right or wrong.
        assert_eq!(access.check(&wrong, guesser), Verdict::Throttled(1));
        let right =
            HeaderMap::from_iter([(header::AUTHORIZATION, HeaderValue::from_str(&format!("bearer {TOKEN}")).unwrap())]);
        assert_eq!(access.check(&right, guesser), Verdict::Throttled(1));
        assert_eq!(access.login(TOKEN, guesser), Err(Verdict::Throttled(1)));
        // Another client is not held up.
        assert_eq!(access.check(&right, other), Verdict::Allowed);
        assert_eq!(access.check(&HeaderMap::new(), guesser), Verdict::Missing);
    }

    #[test]
    fn without_a_token_everything_is_allowed() {
        let access = Access::new(None);
        assert_eq!(access.check(&HeaderMap::new(), None), Verdict::Allowed);
        assert_eq!(access.login("anything", None), Ok(None));
    }

    #[test]
    fn secrets_are_compared_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcde", b"0123456789abcdef"));
    }
}
