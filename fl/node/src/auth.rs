//! Authentication: API keys and JWT (HS256, with expiry and audience). mTLS is at the
//! connection level (see `tls.rs`); these decide *who* a request acts for.
//!
//! - API-key file: one `<key> <principal>` per line (`#` comments); the principal is a client
//!   id or `admin`. Sent as `x-api-key: <key>`.
//! - JWT: `Authorization: Bearer <token>`, HS256 with the shared secret of `--jwt-secret-file`;
//!   claims `sub` (the client id), `aud` (must contain `--jwt-audience`), `exp` (seconds since
//!   the epoch, required), optional `nbf`, optional `role: "admin"`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// jsonwebtoken's `Validation::leeway` default: 60 s of clock skew tolerated on `exp`/`nbf`
/// (jsonwebtoken docs, `Validation`).
pub const JWT_LEEWAY_S: u64 = 60;

/// Bound on a token's length (a larger header is refused before any decoding).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A worker: may act only for this client id.
    Client(String),
    /// An operator: may act for any client and read everything.
    Admin,
    /// `--no-auth`: every request is trusted.
    Open,
}

impl Principal {
    /// Whether this principal may act for `client`.
    pub fn may_act_for(&self, client: &str) -> bool {
        match self {
            Principal::Client(c) => c == client,
            Principal::Admin | Principal::Open => true,
        }
    }
}

/// Why a request was not authenticated (HTTP 401).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `authorization: Bearer <jwt>` or `x-api-key`")]
    Missing,
    #[error("unknown api key")]
    UnknownKey,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {exp} (now {now}, leeway {JWT_LEEWAY_S} s)")]
    Expired { exp: u64, now: u64 },
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("token audience {found:?} does not include `{expected}`")]
    WrongAudience {
        expected: String,
        found: Vec<String>,
    },
}

impl AuthError {
    /// Metric label.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::UnknownKey => "unknown_api_key",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotYetValid { .. } => "token_not_yet_valid",
            AuthError::WrongAudience { .. } => "wrong_audience",
        }
    }
}

/// HS256 settings.
#[derive(Clone)]
pub struct JwtConfig {
    pub secret: Vec<u8>,
    pub audience: String,
}

/// The configured authenticators.
#[derive(Clone, Default)]
pub struct Auth {
    /// sha256(key) -> principal (hashing first keeps lookups independent of key bytes).
    api_keys: BTreeMap<[u8; 32], Principal>,
    jwt: Option<JwtConfig>,
    open: bool,
}

impl Auth {
    pub fn open() -> Self {
        Self {
            open: true,
            ..Self::default()
        }
    }

    pub fn new(api_key_file: Option<&Path>, jwt: Option<JwtConfig>) -> Result<Self> {
        let mut api_keys = BTreeMap::new();
        if let Some(path) = api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading api-key file {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (Some(key), Some(who), None) = (parts.next(), parts.next(), parts.next())
                else {
                    bail!(
                        "api-key file {} line {}: expected `<key> <client-id|admin>`",
                        path.display(),
                        i + 1
                    );
                };
                let p = if who == "admin" {
                    Principal::Admin
                } else {
                    Principal::Client(who.to_owned())
                };
                api_keys.insert(Sha256::digest(key.as_bytes()).into(), p);
            }
        }
        if api_keys.is_empty() && jwt.is_none() {
            bail!(
                "no authentication configured: give --api-keys and/or --jwt-secret-file, or --no-auth"
            );
        }
        Ok(Self {
            api_keys,
            jwt,
            open: false,
        })
    }

    /// Authenticates a request from its `authorization` and `x-api-key` header values.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        api_key: Option<&str>,
        now_ms: u64,
    ) -> Result<Principal, AuthError> {
        if self.open {
            return Ok(Principal::Open);
        }
        if let Some(key) = api_key {
            let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            return self.api_keys.get(&h).cloned().ok_or(AuthError::UnknownKey);
        }
        if let (Some(token), Some(jwt)) = (bearer, &self.jwt) {
            return verify_jwt(token, jwt, now_ms / 1000);
        }
        if bearer.is_some() {
            return Err(AuthError::Malformed(
                "bearer tokens are not enabled on this coordinator".into(),
            ));
        }
        Err(AuthError::Missing)
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    exp: Option<u64>,
    nbf: Option<u64>,
    role: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

type HmacSha256 = Hmac<Sha256>;

fn verify_jwt(token: &str, cfg: &JwtConfig, now_s: u64) -> Result<Principal, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed(format!(
            "token is over {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let dec = |what: &str, v: &str| {
        URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|e| AuthError::Malformed(format!("{what}: {e}")))
    };
    let header: serde_json::Value = serde_json::from_slice(&dec("header", h)?)
        .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::Malformed(format!(
            "alg {} is not HS256",
            header.get("alg").unwrap_or(&serde_json::Value::Null)
        )));
    }
    let sig = dec("signature", s)?;
    let mut mac =
        HmacSha256::new_from_slice(&cfg.secret).map_err(|e| AuthError::Malformed(e.to_string()))?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| AuthError::BadSignature)?;
    let claims: Claims = serde_json::from_slice(&dec("payload", p)?)
        .map_err(|e| AuthError::Malformed(format!("claims: {e}")))?;
    let exp = claims
        .exp
        .ok_or_else(|| AuthError::Malformed("claim `exp` is required".into()))?;
    if exp.saturating_add(JWT_LEEWAY_S) <= now_s {
        return Err(AuthError::Expired { exp, now: now_s });
    }
    if let Some(nbf) = claims.nbf
        && nbf > now_s.saturating_add(JWT_LEEWAY_S)
    {
        return Err(AuthError::NotYetValid { nbf, now: now_s });
    }
    let auds = match claims.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(v)) => v,
        None => Vec::new(),
    };
    if !auds.iter().any(|a| a == &cfg.audience) {
        return Err(AuthError::WrongAudience {
            expected: cfg.audience.clone(),
            found: auds,
        });
    }
    if claims.role.as_deref() == Some("admin") {
        return Ok(Principal::Admin);
    }
    match claims.sub {
        Some(s) if !s.is_empty() => Ok(Principal::Client(s)),
        _ => Err(AuthError::Malformed(
            "claim `sub` (the client id) is required".into(),
        )),
    }
}

/// Signs an HS256 token (for `fl token`, workers and tests).
pub fn sign_jwt(secret: &[u8], sub: &str, audience: &str, exp_s: u64, admin: bool) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let mut claims = serde_json::json!({ "sub": sub, "aud": audience, "exp": exp_s });
    if admin {
        claims["role"] = "admin".into();
    }
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

/// `fl token --secret-file F --sub ID [--audience A] [--ttl-s N] [--admin]`: prints a token.
pub fn run_token(args: Vec<String>) -> Result<()> {
    #[derive(clap::Parser)]
    #[command(name = "fl token", about = "mint an HS256 JWT")]
    struct A {
        #[arg(long)]
        secret_file: std::path::PathBuf,
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "fl-coordinator")]
        audience: String,
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
        #[arg(long)]
        admin: bool,
    }
    let a = crate::parse_args::<A>("fl token", args);
    let secret = std::fs::read(&a.secret_file)
        .with_context(|| format!("reading {}", a.secret_file.display()))?;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "{}",
        sign_jwt(
            secret.trim_ascii(),
            &a.sub,
            &a.audience,
            now_s + a.ttl_s,
            a.admin
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JwtConfig {
        JwtConfig {
            secret: b"s3cret".to_vec(),
            audience: "fl".into(),
        }
    }

    #[test]
    fn jwt_roundtrip_expiry_audience_and_tamper() {
        let now = 1_000_000;
        let t = sign_jwt(b"s3cret", "w1", "fl", now + 100, false);
        assert_eq!(
            verify_jwt(&t, &cfg(), now),
            Ok(Principal::Client("w1".into()))
        );
        assert!(matches!(
            verify_jwt(&t, &cfg(), now + 100 + JWT_LEEWAY_S),
            Err(AuthError::Expired { .. })
        ));
        let other_aud = sign_jwt(b"s3cret", "w1", "other", now + 100, false);
        assert!(matches!(
            verify_jwt(&other_aud, &cfg(), now),
            Err(AuthError::WrongAudience { .. })
        ));
        let wrong_key = sign_jwt(b"nope", "w1", "fl", now + 100, false);
        assert_eq!(
            verify_jwt(&wrong_key, &cfg(), now),
            Err(AuthError::BadSignature)
        );
        let admin = sign_jwt(b"s3cret", "ops", "fl", now + 100, true);
        assert_eq!(verify_jwt(&admin, &cfg(), now), Ok(Principal::Admin));
        // Swap in another subject without re-signing.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"w2","aud":"fl","exp":{}}}"#, now + 100));
        parts[1] = &forged;
        assert_eq!(
            verify_jwt(&parts.join("."), &cfg(), now),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            verify_jwt("a.b", &cfg(), now),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn api_keys_map_to_principals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, "# comment\nk1 w1\nk2 admin\n").unwrap();
        let a = Auth::new(Some(&p), None).unwrap();
        assert_eq!(
            a.authenticate(None, Some("k1"), 0),
            Ok(Principal::Client("w1".into()))
        );
        assert_eq!(a.authenticate(None, Some("k2"), 0), Ok(Principal::Admin));
        assert_eq!(
            a.authenticate(None, Some("k3"), 0),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(a.authenticate(None, None, 0), Err(AuthError::Missing));
        std::fs::write(&p, "k1 w1 extra\n").unwrap();
        let Err(e) = Auth::new(Some(&p), None) else {
            panic!("a line with three words must be refused")
        };
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
