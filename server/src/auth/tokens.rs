//! Access tokens (JWT, HS256 pinned) and refresh tokens (random, stored hashed).

use fsync_common::{DeviceId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Lifetime of an access token: 15 minutes.
pub const ACCESS_TTL_SECS: u64 = 15 * 60;
/// Lifetime of a refresh token: 30 days.
pub const REFRESH_TTL_SECS: u64 = 30 * 24 * 3600;

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id, hex.
    pub sub: String,
    /// Device id, hex.
    pub device: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

/// Why a token was refused. The API answers 401 for all of them alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Bad signature, wrong algorithm, expired, malformed.
    #[error("invalid access token: {0}")]
    Invalid(String),
}

/// Issues and verifies access tokens with the server's secret.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenService(<secret>)")
    }
}

impl TokenService {
    /// A service keyed by `secret` (at least 32 bytes recommended).
    pub fn new(secret: &[u8]) -> Self {
        // The algorithm is pinned: a token claiming `none` or RS256 is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues an access token for `user` on `device`.
    pub fn issue(&self, user: UserId, device: DeviceId, now: u64) -> String {
        let claims = Claims {
            sub: user.to_hex(),
            device: device.to_hex(),
            iat: now,
            exp: now + ACCESS_TTL_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies a token and returns its user and device.
    pub fn verify(&self, token: &str) -> Result<(UserId, DeviceId, Claims), TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        let user = UserId::from_hex(&c.sub).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let device =
            DeviceId::from_hex(&c.device).map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok((user, device, c))
    }
}

/// A new random refresh token (hex) and the hash stored for it.
pub fn new_refresh_token() -> (String, String) {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// What the database stores for a refresh token: never the token itself.
pub fn hash_refresh_token(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_verifies_and_others_do_not() {
        let svc = TokenService::new(b"0123456789abcdef0123456789abcdef");
        let user = UserId::from_bytes([1; 16]);
        let dev = DeviceId::from_bytes([2; 8]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = svc.issue(user, dev, now);
        let (u, d, _) = svc.verify(&t).unwrap();
        assert_eq!((u, d), (user, dev));
        let other = TokenService::new(b"another secret another secret!!!");
        assert!(other.verify(&t).is_err());
        assert!(svc
            .verify(&svc.issue(user, dev, now - 2 * ACCESS_TTL_SECS))
            .is_err());
    }
}
