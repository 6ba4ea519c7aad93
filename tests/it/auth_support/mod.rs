//! Helpers for the key-auth / jwt / acl tests: real keys generated in the test (aws-lc),
//! real tokens signed with `jsonwebtoken`, hand-made malicious tokens.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), lf)
}

/// A key pair as PEM: private (PKCS#8) for signing, public (SPKI) for the gateway.
pub struct Pair {
    pub private_pem: String,
    pub public_pem: String,
}

pub fn rsa_pair() -> Pair {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    Pair {
        private_pem: pem("PRIVATE KEY", kp.as_der().unwrap().as_ref()),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

pub fn ec_pair(p384: bool) -> Pair {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self as sig, KeyPair};
    let alg = if p384 {
        &sig::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &sig::ECDSA_P256_SHA256_FIXED_SIGNING
    };
    let kp = sig::EcdsaKeyPair::generate(alg).unwrap();
    Pair {
        private_pem: pem("PRIVATE KEY", kp.to_pkcs8v1().unwrap().as_ref()),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

pub fn sign_hs(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

pub fn sign_rsa(alg: Algorithm, pair: &Pair, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(pair.private_pem.as_bytes()).unwrap();
    encode(&Header::new(alg), claims, &key).unwrap()
}

pub fn sign_ec(alg: Algorithm, pair: &Pair, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(pair.private_pem.as_bytes()).unwrap();
    encode(&Header::new(alg), claims, &key).unwrap()
}

/// A token from raw JSON header and claims plus a given signature part.
pub fn raw_token(header: &str, claims: &str, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// HMAC-SHA256 over `header.claims` with `key`: builds HS256 tokens with arbitrary JSON.
pub fn hs256_raw(header: &str, claims: &str, key: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let unsigned = raw_token(header, claims, "");
    let input = unsigned.trim_end_matches('.');
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}
