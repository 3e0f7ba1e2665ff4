use super::keys::ed25519_from_pem_file;
use super::*;
use crate::store::keys::StoredKey;
use base64::engine::general_purpose::STANDARD;

fn tokens_with(alg: Algorithm, keys: Vec<StoredKey>, ttl: u64) -> Tokens {
    let cfg = config::Tokens {
        algorithm: alg,
        access_ttl: config::Dur::secs(ttl),
        ..config::Tokens::default()
    };
    Tokens::with_keys(&cfg, build_keys(alg, keys).unwrap(), b"refresh key")
}

fn ed() -> Tokens {
    tokens_with(
        Algorithm::EdDSA,
        vec![generate(Algorithm::EdDSA).unwrap()],
        60,
    )
}

fn sign_raw(t: &Tokens, header: &Header, claims: &serde_json::Value) -> String {
    let keys = t.keys.load();
    jsonwebtoken::encode(header, claims, &keys.signing).unwrap()
}

fn claims_json(iat: i64, exp: i64, typ: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": "usher", "sub": Uuid::new_v4(), "sid": Uuid::new_v4(), "jti": Uuid::new_v4(),
        "iat": iat, "nbf": iat, "exp": exp, "roles": ["user"], "rv": 0, "typ": typ,
    })
}

fn header(t: &Tokens, alg: jsonwebtoken::Algorithm) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(t.keys.load().signing_kid.clone());
    h
}

#[test]
fn issued_tokens_verify_with_their_claims() {
    let t = ed();
    let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
    let (token, claims) = t.issue(user, sid, vec!["user".into()], 3).unwrap();
    let back = t.verify(&token).unwrap();
    assert_eq!(back, claims);
    assert_eq!(
        (back.sub, back.sid, back.rv, back.typ.as_str()),
        (user, sid, 3, "access")
    );
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert!(header.kid.unwrap().starts_with("ed-"));
}

#[test]
fn another_key_is_refused() {
    let t = ed();
    let other = ed();
    let (token, _) = other
        .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
        .unwrap();
    assert_eq!(t.verify(&token), Err(TokenError::Invalid));
    // even with the kid forged to ours
    let now = chrono::Utc::now().timestamp();
    let forged = sign_raw(
        &other,
        &header(&t, jsonwebtoken::Algorithm::EdDSA),
        &claims_json(now, now + 60, "access"),
    );
    assert_eq!(t.verify(&forged), Err(TokenError::Invalid));
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let t = ed();
    let (token, _) = t.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
    let mut parts = token.split('.');
    let (_, payload) = (parts.next(), parts.next().unwrap());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(
        t.verify(&format!("{none_header}.{payload}.")),
        Err(TokenError::Invalid)
    );
    // an HS256 token keyed with the public key (algorithm confusion)
    let keys = t.keys.load();
    let public = t.jwks();
    let hs = jsonwebtoken::encode(
        &header(&t, jsonwebtoken::Algorithm::HS256),
        &claims_json(0, i64::MAX / 2, "access"),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    drop(keys);
    assert_eq!(t.verify(&hs), Err(TokenError::Invalid));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let t = ed();
    let now = chrono::Utc::now().timestamp();
    let h = header(&t, jsonwebtoken::Algorithm::EdDSA);
    let expired = sign_raw(&t, &h, &claims_json(now - 120, now - 60, "access"));
    assert_eq!(t.verify(&expired), Err(TokenError::Expired));
    let future = sign_raw(&t, &h, &claims_json(now + 600, now + 900, "access"));
    assert_eq!(t.verify(&future), Err(TokenError::Invalid));
    let refresh_typed = sign_raw(&t, &h, &claims_json(now, now + 60, "refresh"));
    assert_eq!(t.verify(&refresh_typed), Err(TokenError::Invalid));
}

#[test]
fn a_token_expires_after_the_second_its_exp_names() {
    let t = ed();
    let (token, claims) = t.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
    assert_eq!(claims.exp - claims.iat, 60);
    assert!(t.verify_at(&token, claims.iat).is_ok());
    assert!(t.verify_at(&token, claims.exp).is_ok());
    assert_eq!(
        t.verify_at(&token, claims.exp + 1),
        Err(TokenError::Expired)
    );
    // and it was not valid before it was issued, beyond the leeway for clock skew
    assert!(t.verify_at(&token, claims.iat - LEEWAY_SECS).is_ok());
    assert_eq!(
        t.verify_at(&token, claims.iat - LEEWAY_SECS - 1),
        Err(TokenError::Invalid)
    );
}

#[test]
fn iat_and_nbf_may_be_up_to_30_s_ahead() {
    let t = ed();
    let now = chrono::Utc::now().timestamp();
    let h = header(&t, jsonwebtoken::Algorithm::EdDSA);
    // a replica whose clock runs 20 s ahead issued it
    let ahead = sign_raw(&t, &h, &claims_json(now + 20, now + 80, "access"));
    assert!(t.verify(&ahead).is_ok());
    let too_far = sign_raw(&t, &h, &claims_json(now + 60, now + 120, "access"));
    assert_eq!(t.verify(&too_far), Err(TokenError::Invalid));
    // each claim on its own
    let mut nbf_only = claims_json(now, now + 120, "access");
    nbf_only["nbf"] = (now + 60).into();
    assert_eq!(
        t.verify(&sign_raw(&t, &h, &nbf_only)),
        Err(TokenError::Invalid)
    );
    let mut iat_only = claims_json(now, now + 120, "access");
    iat_only["iat"] = (now + 60).into();
    assert_eq!(
        t.verify(&sign_raw(&t, &h, &iat_only)),
        Err(TokenError::Invalid)
    );
    // the leeway is not stretched to `exp`
    let just_expired = sign_raw(&t, &h, &claims_json(now - 60, now - 1, "access"));
    assert_eq!(t.verify(&just_expired), Err(TokenError::Expired));
}

#[test]
fn a_retired_key_leaves_the_jwks_and_stops_verifying() {
    let old = generate(Algorithm::EdDSA).unwrap();
    let signer = tokens_with(
        Algorithm::EdDSA,
        vec![StoredKey {
            kid: old.kid.clone(),
            private_key: old.private_key.clone(),
            public_key: old.public_key.clone(),
            retires_at: None,
        }],
        600,
    );
    let (token, _) = signer
        .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let with_old_retiring_at = |at: i64| {
        let old = StoredKey {
            retires_at: Some(at),
            ..StoredKey {
                kid: old.kid.clone(),
                private_key: old.private_key.clone(),
                public_key: old.public_key.clone(),
                retires_at: None,
            }
        };
        tokens_with(
            Algorithm::EdDSA,
            vec![generate(Algorithm::EdDSA).unwrap(), old],
            600,
        )
    };
    let before = with_old_retiring_at(now + 60);
    assert!(before.verify(&token).is_ok());
    let jwks: serde_json::Value = serde_json::from_slice(&before.jwks()).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let after = with_old_retiring_at(now);
    assert_eq!(after.verify(&token), Err(TokenError::Invalid));
    let jwks: serde_json::Value = serde_json::from_slice(&after.jwks()).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 1);
    assert!(!kids.contains(&old.kid.as_str()));
}

#[test]
fn a_successor_is_the_same_for_one_token_and_needs_the_key() {
    let t = ed();
    let (token, _) = new_refresh_token().unwrap();
    let (a, ha) = t.successor(&token);
    let (b, hb) = t.successor(&token);
    assert_eq!((&a, &ha), (&b, &hb));
    assert_eq!(ha, hash_refresh_token(&a));
    assert_eq!(a.len(), 43);
    assert_ne!(t.successor(&a).0, a);
    let cfg = config::Tokens::default();
    let other_key = Tokens::with_keys(
        &cfg,
        build_keys(Algorithm::EdDSA, vec![generate(Algorithm::EdDSA).unwrap()]).unwrap(),
        b"another refresh key",
    );
    assert_ne!(other_key.successor(&token).0, a);
}

#[test]
fn garbage_is_refused() {
    let t = ed();
    for junk in [
        "",
        "a",
        "a.b",
        "a.b.c",
        "....",
        "ey.ey.ey",
        &"x".repeat(10_000),
        "\u{0}.\u{1}.\u{2}",
    ] {
        assert_eq!(t.verify(junk), Err(TokenError::Invalid), "{junk:?}");
    }
}

#[test]
fn hs256_works_and_ed_tokens_do_not_pass_it() {
    let hs = tokens_with(
        Algorithm::HS256,
        vec![generate(Algorithm::HS256).unwrap()],
        60,
    );
    let (token, _) = hs.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
    assert!(hs.verify(&token).is_ok());
    let (ed_token, _) = ed()
        .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
        .unwrap();
    assert_eq!(hs.verify(&ed_token), Err(TokenError::Invalid));
    assert_eq!(&hs.jwks()[..], br#"{"keys":[]}"#);
}

#[test]
fn rotated_keys_keep_verifying_old_tokens() {
    let first = generate(Algorithm::EdDSA).unwrap();
    let first_copy = StoredKey {
        kid: first.kid.clone(),
        private_key: first.private_key.clone(),
        public_key: first.public_key.clone(),
        retires_at: None,
    };
    let old = tokens_with(Algorithm::EdDSA, vec![first], 60);
    let (token, _) = old
        .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
        .unwrap();
    let second = generate(Algorithm::EdDSA).unwrap();
    let new_kid = second.kid.clone();
    let rotated = tokens_with(Algorithm::EdDSA, vec![second, first_copy], 60);
    assert!(rotated.verify(&token).is_ok());
    let (fresh, _) = rotated
        .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap(),
        new_kid
    );
    let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwks()).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn ed25519_keys_load_from_a_pem_file() {
    let key = generate(Algorithm::EdDSA).unwrap();
    let body = STANDARD.encode(&key.private_key);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let path = std::env::temp_dir().join(format!("usher-key-{}.pem", Uuid::new_v4()));
    std::fs::write(&path, pem).unwrap();
    let loaded = ed25519_from_pem_file(&path).unwrap();
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(ed25519_from_pem_file(&path).is_err());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.kid, key.kid);
    assert_eq!(loaded.public_key, key.public_key);
    let t = tokens_with(Algorithm::EdDSA, vec![loaded], 60);
    let (token, _) = t.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
    assert!(t.verify(&token).is_ok());
}

#[test]
fn refresh_tokens_are_long_random_and_hashed() {
    let (a, ha) = new_refresh_token().unwrap();
    let (b, _) = new_refresh_token().unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), 43);
    assert_eq!(ha, hash_refresh_token(&a));
    assert_eq!(ha.len(), 32);
}
