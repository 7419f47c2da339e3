//! The server's access-token verification (and refresh-token hashing) on arbitrary
//! input. Input: `mode u8 | rest`.
//! - mode even: `rest` is the token text. Unless it carries a valid HS256 signature
//!   under the server's secret (the seeds do not), it must be refused.
//! - mode odd: `rest` is `header JSON | 0xff | claims JSON`, signed here with the
//!   server's secret, so the claims and header checks behind the signature are reached.
#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use fsync_server::{hash_refresh_token, TokenService};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

fn sign(message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(fsync_fuzz::TOKEN_SECRET).expect("any key");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `token` is `header.claims.signature` with a valid signature, and its
/// header says HS256.
fn genuinely_signed(token: &str) -> bool {
    let Some((signed, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Some((header, _)) = signed.split_once('.') else {
        return false;
    };
    let alg_ok = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .is_some_and(|h| h["alg"] == "HS256");
    alg_ok
        && URL_SAFE_NO_PAD
            .decode(sig)
            .is_ok_and(|s| s == sign(signed.as_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}"[..], rest),
        };
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = URL_SAFE_NO_PAD.encode(sign(signed.as_bytes()));
        format!("{signed}.{sig}")
    };
    let svc = TokenService::new(fsync_fuzz::TOKEN_SECRET);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    match svc.verify(&token) {
        Ok((user, device, claims)) => {
            assert!(
                genuinely_signed(&token),
                "accepted a token not signed with the secret"
            );
            assert!(
                claims.exp.saturating_add(5) >= now,
                "accepted an expired token"
            );
            assert_eq!(user.to_hex(), claims.sub);
            assert_eq!(device.to_hex(), claims.device);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let hash = hash_refresh_token(&token);
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
});
