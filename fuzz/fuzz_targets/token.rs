//! Token verification (`relay/src/auth.rs`), with real tenant keys: Ed25519, P-256 and
//! RSA tenants and a tenant with two keys, plus signers the relay does not trust (one of
//! them reusing a trusted `kid`).
//!
//! Cases:
//! - arbitrary strings: never verify;
//! - forged near-JWTs (three base64url parts of arbitrary header and claims JSON, with
//!   arbitrary signature bytes, HMAC signatures keyed with public key material, or a real
//!   signature lifted from another token): never verify;
//! - tokens really signed over arbitrary claims and headers: verify exactly when
//!   `docs/tokens.md` says they should (a model of the contract decides, independently of
//!   the code), and the principal carries the claims; any change to a signed token's
//!   text makes it fail;
//! - claim mapping (`docs/tokens.md` §8): tokens signed for tenants with the `entra`,
//!   `keycloak` and `okta` presets (selected by issuer), over arbitrary nested claim JSON,
//!   verify exactly when a model of §8 says, with the principal the model predicts; and
//!   every preset with arbitrary overrides, applied to arbitrary claims, agrees with the
//!   model.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use remote_help_relay::auth::{MAX_TOKEN_LEN, PrincipalKind, TenantKeys, TenantTrust, Verifier};
use remote_help_relay::claim_map::{ClaimMapping, ClaimPath, ENTRIES, Preset};
use remote_help_relay::core::TenantId;
use remote_help_relay::issuer::TokenSigner;
use serde_json::{Map, Value, json};

const AUDIENCE: &str = "remote-help-relay";
const LEEWAY: u64 = 60;
const NOW: u64 = 1_750_000_000;

/// Throwaway P-256 keys, fuzzing only.
const EC_PEM_1: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZvE7bKIR6DemsHKe
IWye6PhCgIJ4nMAxp1loxONtxjShRANCAAQGQJVEGAXxrfWXhEcsKChZ3Lu0B8Jk
PH9bAeh8vgWvyw6jkZJ099UcgpezmHW4U23pQxQrg63R925F4dudFoqa
-----END PRIVATE KEY-----
";
const EC_PEM_2: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBQhhGd14arNTMP57
NUdSmVP5HMLM2LGODgUg3qFf8YChRANCAARNXnGPcA9GIWU11XtEElUPlDud7sgu
vYBNBubu8CWzSH3bjfinFKbGlXMk0Xsio9TVK2okkI3spgbZmH9g3HBx
-----END PRIVATE KEY-----
";
/// The integration tests' throwaway RSA key.
const RSA_PEM: &str = include_str!("../../relay/tests/fixtures/rsa-test-key.pem");

/// A piece of key material (a private key), known by an index.
struct Material {
    algorithm: Algorithm,
    pem: String,
}

/// A trusted key: which tenant, which `kid`, which material.
struct TrustedKey {
    tenant: &'static str,
    kid: &'static str,
    material: usize,
}

/// A key the fuzzer signs with: its material, the `kid` it puts in the header and the
/// tenant its tokens claim by default.
struct SignerSpec {
    kid: &'static str,
    material: usize,
    tenant: &'static str,
}

const TENANTS: [(&str, &str); 4] = [
    ("ed", "https://ed.example/"),
    ("ec", "https://ec.example/"),
    ("rsa", "https://rsa.example/"),
    ("multi", "https://multi.example/"),
];

const TRUSTED: [TrustedKey; 5] = [
    TrustedKey {
        tenant: "ed",
        kid: "ed-1",
        material: 0,
    },
    TrustedKey {
        tenant: "ec",
        kid: "ec-1",
        material: 2,
    },
    TrustedKey {
        tenant: "rsa",
        kid: "rsa-1",
        material: 5,
    },
    TrustedKey {
        tenant: "multi",
        kid: "m-ed",
        material: 1,
    },
    // The same P-256 key as tenant "ec", under another kid.
    TrustedKey {
        tenant: "multi",
        kid: "m-ec",
        material: 2,
    },
];

/// Signers; RSA is left out (signing is slow) and verified through forged tokens only.
const SIGNERS: [SignerSpec; 6] = [
    SignerSpec {
        kid: "ed-1",
        material: 0,
        tenant: "ed",
    },
    SignerSpec {
        kid: "ec-1",
        material: 2,
        tenant: "ec",
    },
    SignerSpec {
        kid: "m-ed",
        material: 1,
        tenant: "multi",
    },
    SignerSpec {
        kid: "m-ec",
        material: 2,
        tenant: "multi",
    },
    // A stranger's Ed25519 key claiming tenant "ed"'s kid.
    SignerSpec {
        kid: "ed-1",
        material: 3,
        tenant: "ed",
    },
    // A stranger's P-256 key claiming tenant "multi"'s kid.
    SignerSpec {
        kid: "m-ec",
        material: 4,
        tenant: "multi",
    },
];

const KIDS: [&str; 6] = ["ed-1", "ec-1", "rsa-1", "m-ed", "m-ec", "nope"];

const ALGS: [&str; 10] = [
    "EdDSA", "ES256", "RS256", "none", "HS256", "HS512", "PS256", "ES384", "RS512", "eddsa",
];

/// Optional listed claims and the JSON type each must have (`null` = absent for scalars).
const STRING_CLAIMS: [&str; 12] = [
    "jti",
    "given_name",
    "family_name",
    "job_title",
    "company_name",
    "picture",
    "domain",
    "device_id",
    "device_name",
    "platform",
    "os_version",
    "manufacturer",
];
const BOOL_CLAIMS: [&str; 3] = ["domain_verified", "enrolled", "compliant"];
const ARRAY_CLAIMS: [&str; 3] = ["groups", "licenses", "device_groups"];

struct World {
    verifier: Verifier,
    materials: Vec<Material>,
    encoding: Vec<EncodingKey>,
    /// A real token whose signature forged tokens may borrow.
    lifted: String,
    /// Public JWKs as JSON text: the classic HMAC-confusion secrets.
    public_jwks: Vec<Vec<u8>>,
}

fn ed_pem(seed: u8) -> String {
    // PKCS#8 v1 wrapping of an Ed25519 seed, as `issuer::TokenSigner::generate_ed25519`.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(&[seed; 32]);
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let materials = vec![
            Material {
                algorithm: Algorithm::EdDSA,
                pem: ed_pem(1),
            },
            Material {
                algorithm: Algorithm::EdDSA,
                pem: ed_pem(2),
            },
            Material {
                algorithm: Algorithm::ES256,
                pem: EC_PEM_1.into(),
            },
            Material {
                algorithm: Algorithm::EdDSA,
                pem: ed_pem(3),
            },
            Material {
                algorithm: Algorithm::ES256,
                pem: EC_PEM_2.into(),
            },
            Material {
                algorithm: Algorithm::RS256,
                pem: RSA_PEM.into(),
            },
            // Keys of the identity-provider tenants (PROVIDERS).
            Material {
                algorithm: Algorithm::EdDSA,
                pem: ed_pem(4),
            },
            Material {
                algorithm: Algorithm::EdDSA,
                pem: ed_pem(5),
            },
            Material {
                algorithm: Algorithm::EdDSA,
                pem: ed_pem(6),
            },
        ];
        let encoding = materials
            .iter()
            .map(|m| match m.algorithm {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(m.pem.as_bytes()).unwrap(),
                Algorithm::ES256 => EncodingKey::from_ec_pem(m.pem.as_bytes()).unwrap(),
                _ => EncodingKey::from_rsa_pem(m.pem.as_bytes()).unwrap(),
            })
            .collect();
        let mut public_jwks = Vec::new();
        let tenants = TENANTS
            .iter()
            .map(|(id, issuer)| {
                let keys = TRUSTED
                    .iter()
                    .filter(|k| k.tenant == *id)
                    .map(|k| {
                        let m = &materials[k.material];
                        let jwk = TokenSigner::from_pem(k.kid, m.algorithm, &m.pem)
                            .unwrap()
                            .public_jwk()
                            .unwrap();
                        public_jwks.push(serde_json::to_vec(&jwk).unwrap());
                        jwk
                    })
                    .collect();
                TenantTrust::new(
                    TenantId::new(id),
                    (*issuer).into(),
                    TenantKeys::from_jwks(&JwkSet { keys }).unwrap(),
                )
            })
            .chain(PROVIDERS.iter().map(|p| {
                let m = &materials[p.material];
                let jwk = TokenSigner::from_pem(p.kid, m.algorithm, &m.pem)
                    .unwrap()
                    .public_jwk()
                    .unwrap();
                TenantTrust {
                    audience: p.audience.map(String::from),
                    claims: ClaimMapping::preset(p.preset),
                    ..TenantTrust::new(
                        TenantId::new(p.id),
                        p.issuer.into(),
                        TenantKeys::from_jwks(&JwkSet { keys: vec![jwk] }).unwrap(),
                    )
                }
            }))
            .collect();
        let verifier = Verifier::new(AUDIENCE.into(), Duration::from_secs(LEEWAY), tenants);
        let mut world = World {
            verifier,
            materials,
            encoding,
            lifted: String::new(),
            public_jwks,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed-1".into());
        let claims = json!({"tid": "ed", "iss": "https://ed.example/", "aud": AUDIENCE,
            "sub": "lifted", "exp": NOW + 3600});
        world.lifted = jsonwebtoken::encode(&header, &claims, &world.encoding[0]).unwrap();
        assert!(
            world.verifier.verify(&world.lifted, NOW).is_ok(),
            "the lifted token is valid"
        );
        world
    })
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Strs(Vec<String>),
    Mixed(Vec<Scalar>),
    Obj(Vec<(String, Scalar)>),
}

#[derive(Arbitrary, Debug)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
}

impl Scalar {
    fn value(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => (*b).into(),
            Scalar::Int(i) => (*i).into(),
            Scalar::Str(s) => s.clone().into(),
        }
    }
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => (*b).into(),
            Json::Int(i) => (*i).into(),
            Json::UInt(u) => (*u).into(),
            Json::Float(f) => (*f).into(),
            Json::Str(s) => s.clone().into(),
            Json::Strs(v) => v.clone().into(),
            Json::Mixed(v) => Value::Array(v.iter().map(Scalar::value).collect()),
            Json::Obj(v) => Value::Object(v.iter().map(|(k, s)| (k.clone(), s.value())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum StrSpec {
    /// One of the names the world knows (tenant ids, issuers, audience).
    Known(u8),
    Any(String),
    Json(Json),
    Absent,
}

#[derive(Arbitrary, Debug)]
enum TimeSpec {
    Relative(i32),
    Json(Json),
    Absent,
}

/// A token's claims. Every field left out (`None`, which is also what an input that ran
/// out of bytes gives) takes the value a valid token for `tenant` has, so that valid
/// tokens are common and each field can be spoiled on its own.
#[derive(Arbitrary, Debug)]
struct ClaimsSpec {
    tid: Option<StrSpec>,
    iss: Option<ListSpec>,
    aud: Option<ListSpec>,
    sub: Option<StrSpec>,
    exp: Option<TimeSpec>,
    nbf: Option<TimeSpec>,
    kind: Option<StrSpec>,
    optional: Vec<(u8, Json)>,
    extra: Vec<(String, Json)>,
}

/// A string claim, or an array of them (`aud` may be either; `iss` must be a string).
#[derive(Arbitrary, Debug)]
enum ListSpec {
    One(StrSpec),
    Many(Vec<StrSpec>),
}

impl ListSpec {
    fn value(&self) -> Option<Value> {
        match self {
            ListSpec::One(s) => s.value(),
            ListSpec::Many(items) => Some(Value::Array(
                items.iter().filter_map(StrSpec::value).collect(),
            )),
        }
    }
}

const KNOWN_STRINGS: [&str; 12] = [
    "ed",
    "ec",
    "rsa",
    "multi",
    "https://ed.example/",
    "https://ec.example/",
    "https://rsa.example/",
    "https://multi.example/",
    AUDIENCE,
    "user",
    "device",
    "",
];

impl StrSpec {
    fn value(&self) -> Option<Value> {
        match self {
            StrSpec::Known(i) => Some(KNOWN_STRINGS[usize::from(*i) % KNOWN_STRINGS.len()].into()),
            StrSpec::Any(s) => Some(s.clone().into()),
            StrSpec::Json(j) => Some(j.value()),
            StrSpec::Absent => None,
        }
    }
}

impl TimeSpec {
    fn value(&self) -> Option<Value> {
        match self {
            TimeSpec::Relative(delta) => Some(NOW.saturating_add_signed(i64::from(*delta)).into()),
            TimeSpec::Json(j) => Some(j.value()),
            TimeSpec::Absent => None,
        }
    }
}

impl ClaimsSpec {
    /// The claims, valid for `tenant` unless a field says otherwise.
    fn claims(&self, tenant: &str) -> Map<String, Value> {
        let issuer = TENANTS
            .iter()
            .find(|(id, _)| *id == tenant)
            .map_or("https://nowhere.example/", |(_, issuer)| issuer);
        let mut map = Map::new();
        let mut put = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(name.into(), value);
            }
        };
        put(
            "tid",
            self.tid
                .as_ref()
                .map_or(Some(tenant.into()), StrSpec::value),
        );
        put(
            "iss",
            self.iss
                .as_ref()
                .map_or(Some(issuer.into()), ListSpec::value),
        );
        put(
            "aud",
            self.aud
                .as_ref()
                .map_or(Some(AUDIENCE.into()), ListSpec::value),
        );
        put(
            "sub",
            self.sub
                .as_ref()
                .map_or(Some("user-1".into()), StrSpec::value),
        );
        put(
            "exp",
            self.exp
                .as_ref()
                .map_or(Some((NOW + 3600).into()), TimeSpec::value),
        );
        put("nbf", self.nbf.as_ref().and_then(TimeSpec::value));
        put("kind", self.kind.as_ref().and_then(StrSpec::value));
        let optional: Vec<&str> = STRING_CLAIMS
            .iter()
            .chain(&BOOL_CLAIMS)
            .chain(&ARRAY_CLAIMS)
            .chain(&["iat"])
            .copied()
            .collect();
        for (which, value) in &self.optional {
            put(
                optional[usize::from(*which) % optional.len()],
                Some(value.value()),
            );
        }
        for (name, value) in &self.extra {
            put(name, Some(value.value()));
        }
        map
    }
}

#[derive(Arbitrary, Debug)]
enum KidSpec {
    Own,
    Absent,
    Named(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum SignatureSpec {
    Bytes(Vec<u8>),
    Empty,
    /// HMAC-SHA256 keyed with a tenant's public JWK (algorithm confusion).
    HmacWithPublicKey(u8),
    /// The signature of another, valid token.
    Lifted,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Flip { at: u16, bit: u8 },
    Set { at: u16, byte: u8 },
    Truncate(u16),
    Append(String),
    Insert { at: u16, text: String },
}

#[derive(Arbitrary, Debug)]
enum Case {
    Raw(String),
    Forged {
        alg: u8,
        alg_text: Option<String>,
        kid: KidSpec,
        header_extra: Vec<(String, Json)>,
        raw_header: Option<Vec<u8>>,
        claims: ClaimsSpec,
        raw_claims: Option<Vec<u8>>,
        signature: SignatureSpec,
    },
    Signed {
        signer: u8,
        kid: KidSpec,
        typ: Option<String>,
        claims: ClaimsSpec,
        mutation: Option<Mutation>,
        /// A `crit` header (RFC 7515 §4.1.11): the token must then be refused.
        crit: Option<Vec<String>>,
    },
    /// A token signed for an identity-provider tenant over arbitrary claims.
    /// `subject` left out (`None`) puts a valid user id under the preset's subject claim,
    /// so that tokens that verify are common; `claims` may still replace it.
    Provider {
        tenant: u8,
        claims: Vec<(u8, Deep)>,
        iat: Option<Json>,
        crit: Option<Vec<String>>,
        subject: Option<Json>,
    },
    /// A preset with arbitrary overrides applied to arbitrary claims (`subject` as above).
    Mapping {
        preset: u8,
        overrides: Vec<(u8, Vec<u8>)>,
        claims: Vec<(u8, Deep)>,
        subject: Option<Json>,
    },
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|case: Case| {
    let world = world();
    match case {
        Case::Raw(token) => never_verifies(world, &token),
        Case::Forged {
            alg,
            alg_text,
            kid,
            header_extra,
            raw_header,
            claims,
            raw_claims,
            signature,
        } => {
            let header = match raw_header {
                Some(raw) => raw,
                None => {
                    let mut header = Map::new();
                    let alg =
                        alg_text.unwrap_or_else(|| ALGS[usize::from(alg) % ALGS.len()].to_string());
                    header.insert("alg".into(), alg.into());
                    header.insert("typ".into(), "JWT".into());
                    if let Some(kid) = kid_of(&kid, "ed-1") {
                        header.insert("kid".into(), kid.into());
                    }
                    for (name, value) in &header_extra {
                        header.insert(name.clone(), value.value());
                    }
                    serde_json::to_vec(&header).unwrap()
                }
            };
            let payload = raw_claims.unwrap_or_else(|| {
                serde_json::to_vec(&Value::Object(claims.claims("ed"))).unwrap()
            });
            let message = format!("{}.{}", b64(&header), b64(&payload));
            let signature = match signature {
                SignatureSpec::Bytes(bytes) => b64(&bytes),
                SignatureSpec::Empty => String::new(),
                SignatureSpec::HmacWithPublicKey(i) => {
                    let secret = &world.public_jwks[usize::from(i) % world.public_jwks.len()];
                    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                    b64(ring::hmac::sign(&key, message.as_bytes()).as_ref())
                }
                SignatureSpec::Lifted => world.lifted.rsplit('.').next().unwrap().to_string(),
            };
            never_verifies(world, &format!("{message}.{signature}"));
        }
        Case::Provider {
            tenant,
            claims,
            iat,
            crit,
            subject,
        } => provider_case(world, tenant, &claims, iat.as_ref(), crit, subject.as_ref()),
        Case::Mapping {
            preset,
            overrides,
            claims,
            subject,
        } => mapping_case(preset, &overrides, &claims, subject.as_ref()),
        Case::Signed {
            signer,
            kid,
            typ,
            claims,
            mutation,
            crit,
        } => {
            let signer = &SIGNERS[usize::from(signer) % SIGNERS.len()];
            let material = &world.materials[signer.material];
            let mut header = Header::new(material.algorithm);
            header.kid = kid_of(&kid, signer.kid);
            header.typ = typ;
            let critical = crit.is_some();
            header.crit = crit;
            let claims = claims.claims(signer.tenant);
            let token = jsonwebtoken::encode(
                &header,
                &Value::Object(claims.clone()),
                &world.encoding[signer.material],
            )
            .expect("signing");
            let verdict = world.verifier.verify(&token, NOW);
            let expected = if token.len() > MAX_TOKEN_LEN {
                Err("token too long".to_string())
            } else if critical {
                Err("a crit header".to_string())
            } else {
                contract(&claims, header.kid.as_deref(), signer.material)
            };
            match (&verdict, &expected) {
                (Ok(principal), Ok(())) => {
                    if std::env::var_os("FUZZ_TRACE").is_some() {
                        eprintln!("verified: {token}");
                    }
                    assert_eq!(principal.tenant.as_str(), claims["tid"].as_str().unwrap());
                    assert_eq!(principal.subject, claims["sub"].as_str().unwrap());
                    assert_eq!(principal.expires_at, claims["exp"].as_u64().unwrap());
                    let device = claims.get("kind").and_then(Value::as_str) == Some("device");
                    assert_eq!(principal.kind == PrincipalKind::Device, device);
                    if device {
                        assert!(principal.device.is_some());
                    }
                }
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "verdict {verdict:?} but the contract says {expected:?}\nheader {header:?}\nclaims {}",
                    Value::Object(claims.clone())
                ),
            }
            if let Some(mutation) = mutation {
                let mutated = mutate(&token, &mutation);
                if mutated != token {
                    never_verifies(world, &mutated);
                }
            }
        }
    }
});

fn kid_of(spec: &KidSpec, own: &str) -> Option<String> {
    match spec {
        KidSpec::Own => Some(own.into()),
        KidSpec::Absent => None,
        KidSpec::Named(i) => Some(KIDS[usize::from(*i) % KIDS.len()].into()),
        KidSpec::Any(s) => Some(s.clone()),
    }
}

fn mutate(token: &str, mutation: &Mutation) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let at = |i: u16, len: usize| usize::from(i) % len.max(1);
    match mutation {
        Mutation::Flip { at: i, bit } => {
            let i = at(*i, bytes.len());
            bytes[i] ^= 1 << (bit % 8);
        }
        Mutation::Set { at: i, byte } => {
            let i = at(*i, bytes.len());
            bytes[i] = *byte;
        }
        Mutation::Truncate(len) => bytes.truncate(usize::from(*len) % bytes.len()),
        Mutation::Append(text) => bytes.extend_from_slice(text.as_bytes()),
        Mutation::Insert { at: i, text } => {
            let i = at(*i, bytes.len() + 1);
            bytes.splice(i..i, text.bytes());
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Nothing but a token the tenant's key really signed may verify.
fn never_verifies(world: &World, token: &str) {
    if token == world.lifted {
        return;
    }
    if let Ok(principal) = world.verifier.verify(token, NOW) {
        panic!("a token nobody signed verified: {token:?} as {principal:?}");
    }
}

/// What `docs/tokens.md` says about a token signed with `material`, naming `kid`:
/// `Ok(())` if it must verify at `NOW`, else the first rule it breaks.
fn contract(claims: &Map<String, Value>, kid: Option<&str>, material: usize) -> Result<(), String> {
    let string = |name: &str| claims.get(name).and_then(Value::as_str);
    let tid = string("tid").ok_or("tid is not a string")?;
    let (_, issuer) = TENANTS
        .iter()
        .find(|(id, _)| *id == tid)
        .ok_or("unknown tenant")?;
    let keys: Vec<&TrustedKey> = TRUSTED.iter().filter(|k| k.tenant == tid).collect();
    let key = match kid {
        Some(kid) => keys.iter().find(|k| k.kid == kid),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .ok_or("no key selected")?;
    // The header's alg is the signer's; the selected key must have the same algorithm
    // and, to verify, the same material.
    let world = world();
    if world.materials[key.material].algorithm != world.materials[material].algorithm {
        return Err("algorithm refused".into());
    }
    if key.material != material {
        return Err("bad signature".into());
    }
    // Registered claims.
    if string("iss") != Some(issuer) {
        return Err("iss must be the tenant's issuer, as a string".into());
    }
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == AUDIENCE => {}
        Some(Value::Array(items))
            if items.iter().all(Value::is_string)
                && items.iter().any(|a| a.as_str() == Some(AUDIENCE)) => {}
        _ => return Err("aud must be or contain the audience".into()),
    }
    match string("sub") {
        Some(sub) if !sub.is_empty() => {}
        _ => return Err("sub must be a non-empty string".into()),
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or("exp must be a non-negative integer")?;
    let nbf = match claims.get("nbf") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("nbf must be a non-negative integer")?),
    };
    if !matches!(
        claims.get("iat"),
        None | Some(Value::Null | Value::Number(_))
    ) {
        return Err("iat must be a number".into());
    }
    // Types of the optional listed claims.
    for name in STRING_CLAIMS.iter().chain(&["kind"]) {
        if !matches!(
            claims.get(*name),
            None | Some(Value::Null | Value::String(_))
        ) {
            return Err(format!("{name} must be a string"));
        }
    }
    for name in BOOL_CLAIMS {
        if !matches!(claims.get(name), None | Some(Value::Null | Value::Bool(_))) {
            return Err(format!("{name} must be a boolean"));
        }
    }
    for name in ARRAY_CLAIMS {
        match claims.get(name) {
            None => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            _ => return Err(format!("{name} must be an array of strings")),
        }
    }
    if exp.saturating_add(LEEWAY) < NOW {
        return Err("expired".into());
    }
    if nbf.is_some_and(|nbf| nbf > NOW.saturating_add(LEEWAY)) {
        return Err("not yet valid".into());
    }
    if !matches!(string("kind"), None | Some("user" | "device")) {
        return Err("kind must be user or device".into());
    }
    Ok(())
}

/// An identity-provider tenant of the world: selected by issuer, with its own preset.
struct ProviderSpec {
    id: &'static str,
    issuer: &'static str,
    audience: Option<&'static str>,
    preset: Preset,
    kid: &'static str,
    material: usize,
}

const PROVIDERS: [ProviderSpec; 3] = [
    ProviderSpec {
        id: "entra",
        issuer: "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
        audience: Some("6e74172b-be56-4843-9ff4-e66a39bb12e3"),
        preset: Preset::Entra,
        kid: "entra-1",
        material: 6,
    },
    ProviderSpec {
        id: "kc",
        issuer: "https://sso.example/realms/kc",
        audience: None,
        preset: Preset::Keycloak,
        kid: "kc-1",
        material: 7,
    },
    ProviderSpec {
        id: "okta",
        issuer: "https://org.okta.com/oauth2/aus1",
        audience: Some("api://remote-help-relay"),
        preset: Preset::Okta,
        kid: "okta-1",
        material: 8,
    },
];

/// Claim names the mapping cases draw from: the presets' paths, the relay's names, a
/// dotted name that is also a nested path, and the Entra overage pointer. Registered
/// claims are left out (the provider cases set them valid).
const CLAIM_NAMES: [&str; 24] = [
    "sub",
    "oid",
    "uid",
    "name",
    "given_name",
    "family_name",
    "groups",
    "roles",
    "realm_access",
    "realm_access.roles",
    "licenses",
    "kind",
    "platform",
    "device_id",
    "device_groups",
    "enrolled",
    "compliant",
    "domain_verified",
    "_claim_names",
    "tid",
    "picture",
    "x",
    "",
    "remote-help",
];

/// Paths overrides draw from.
const PATHS: [&str; 10] = [
    "sub",
    "oid",
    "groups",
    "roles",
    "realm_access.roles",
    "realm_access",
    "x.y",
    "name",
    "licenses",
    "a..b",
];

/// Nested claim JSON.
#[derive(Arbitrary, Debug)]
enum Deep {
    Leaf(Json),
    Obj(Vec<(u8, Deep)>),
    Arr(Vec<Deep>),
}

impl Deep {
    fn value(&self) -> Value {
        match self {
            Deep::Leaf(j) => j.value(),
            Deep::Obj(members) => Value::Object(object_of(members)),
            Deep::Arr(items) => Value::Array(items.iter().map(Deep::value).collect()),
        }
    }
}

fn object_of(members: &[(u8, Deep)]) -> Map<String, Value> {
    members
        .iter()
        .map(|(name, value)| {
            (
                CLAIM_NAMES[usize::from(*name) % CLAIM_NAMES.len()].to_string(),
                value.value(),
            )
        })
        .collect()
}

/// docs/tokens.md §8.1's preset table, written out independently of the code.
fn preset_paths(preset: Preset, entry: &str) -> Vec<&'static str> {
    use Preset::*;
    let own = ENTRIES.iter().find(|(n, _)| *n == entry).unwrap().0;
    match (entry, preset) {
        ("subject", Entra) => vec!["oid"],
        ("subject", Okta) => vec!["uid"],
        ("subject", _) => vec!["sub"],
        ("display_name", Relay) => vec![],
        ("display_name", _) => vec!["name"],
        ("roles", Entra) => vec!["roles"],
        ("roles", Keycloak) => vec!["realm_access.roles"],
        ("roles", _) => vec![],
        ("licenses", Entra) => vec!["roles"],
        ("licenses", Keycloak) => vec!["realm_access.roles"],
        ("licenses", Okta) => vec!["groups"],
        _ => vec![own],
    }
}

/// What §8.1 says a mapping reads, as (subject, given name, groups, licences, kind,
/// platform, enrolled), or the first rule the claims break.
type Expected = (
    String,
    String,
    Vec<String>,
    Vec<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
);

fn model(
    preset: Preset,
    paths: &dyn Fn(&str) -> Vec<String>,
    claims: &Map<String, Value>,
) -> Result<Expected, String> {
    // §8.1: a whole-name match first, then dots descend; a non-object on the way (other
    // than null, which ends the walk as absent) is a type error.
    let lookup = |path: &str| -> Result<Option<Value>, String> {
        if let Some(v) = claims.get(path) {
            return Ok(Some(v.clone()));
        }
        let mut current = Value::Object(claims.clone());
        for part in path.split('.') {
            current = match current {
                Value::Object(map) => match map.get(part) {
                    Some(v) => v.clone(),
                    None => return Ok(None),
                },
                Value::Null => return Ok(None),
                _ => return Err(format!("{path}: a step is not an object")),
            };
        }
        Ok(Some(current))
    };
    let string = |entry: &str| -> Result<Option<String>, String> {
        for path in paths(entry) {
            match lookup(&path)? {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => return Ok(Some(s)),
                Some(_) => return Err(format!("{entry} ({path}) is not a string")),
            }
        }
        Ok(None)
    };
    let boolean = |entry: &str| -> Result<Option<bool>, String> {
        for path in paths(entry) {
            match lookup(&path)? {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => return Ok(Some(b)),
                Some(_) => return Err(format!("{entry} ({path}) is not a boolean")),
            }
        }
        Ok(None)
    };
    let list = |entry: &str| -> Result<Vec<String>, String> {
        let mut all: Vec<String> = Vec::new();
        for path in paths(entry) {
            match lookup(&path)? {
                None => {
                    // §8.1: only provider presets read distributed claims (overage).
                    if preset != Preset::Relay
                        && claims
                            .get("_claim_names")
                            .and_then(Value::as_object)
                            .is_some_and(|n| n.contains_key(&path))
                    {
                        return Err(format!("{path}: overage"));
                    }
                }
                Some(Value::Array(items)) => {
                    for item in items {
                        let Value::String(s) = item else {
                            return Err(format!("{entry} ({path}) has a non-string"));
                        };
                        if !all.contains(&s) {
                            all.push(s);
                        }
                    }
                }
                Some(_) => return Err(format!("{entry} ({path}) is not an array")),
            }
        }
        Ok(all)
    };
    // Every listed entry is type-checked, read or not.
    for (entry, _) in ENTRIES {
        match entry {
            "domain_verified" | "enrolled" | "compliant" => {
                boolean(entry)?;
            }
            "groups" | "roles" | "licenses" | "device_groups" => {
                list(entry)?;
            }
            _ => {
                string(entry)?;
            }
        }
    }
    let subject = string("subject")?.ok_or("the subject is missing")?;
    let mut groups = list("groups")?;
    for role in list("roles")? {
        if !groups.contains(&role) {
            groups.push(role);
        }
    }
    let (given, family, display) = (
        string("given_name")?,
        string("family_name")?,
        string("display_name")?,
    );
    let given = match (given, family, display) {
        (None, None, Some(display)) => display,
        (given, _, _) => given.unwrap_or_default(),
    };
    Ok((
        subject,
        given,
        groups,
        list("licenses")?,
        string("kind")?,
        string("platform")?,
        boolean("enrolled")?,
    ))
}

fn provider_case(
    world: &World,
    tenant: u8,
    claims: &[(u8, Deep)],
    iat: Option<&Json>,
    crit: Option<Vec<String>>,
    subject: Option<&Json>,
) {
    let provider = &PROVIDERS[usize::from(tenant) % PROVIDERS.len()];
    let mut map = object_of(claims);
    with_subject(
        &mut map,
        preset_paths(provider.preset, "subject")[0],
        subject,
    );
    map.insert("iss".into(), provider.issuer.into());
    map.insert("aud".into(), provider.audience.unwrap_or(AUDIENCE).into());
    map.insert("exp".into(), (NOW + 3600).into());
    if let Some(iat) = iat {
        map.insert("iat".into(), iat.value());
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(provider.kid.into());
    let critical = crit.is_some();
    header.crit = crit;
    let token = jsonwebtoken::encode(
        &header,
        &Value::Object(map.clone()),
        &world.encoding[provider.material],
    )
    .expect("signing");
    let paths = |entry: &str| -> Vec<String> {
        preset_paths(provider.preset, entry)
            .into_iter()
            .map(String::from)
            .collect()
    };
    let expected = if token.len() > MAX_TOKEN_LEN {
        Err("token too long".to_string())
    } else if critical {
        Err("a crit header".into())
    } else if !matches!(map.get("iat"), None | Some(Value::Null | Value::Number(_))) {
        Err("iat must be a number".into())
    } else if !matches!(map.get("sub"), None | Some(Value::Null | Value::String(_))) {
        // §4.1 / RFC 7519: `sub` is a string whatever the mapping reads.
        Err("sub must be a string".into())
    } else {
        model(provider.preset, &paths, &map).and_then(|e| {
            if e.0.is_empty() {
                Err("empty subject".into())
            } else if !matches!(e.4.as_deref(), None | Some("user" | "device")) {
                Err("kind".into())
            } else {
                Ok(e)
            }
        })
    };
    let verdict = world.verifier.verify(&token, NOW);
    match (&verdict, &expected) {
        (Ok(principal), Ok((subject, given, groups, licenses, _, platform, _))) => {
            if std::env::var_os("FUZZ_TRACE").is_some() {
                eprintln!("verified {}: {token}", provider.id);
            }
            assert_eq!(principal.tenant.as_str(), provider.id);
            assert_eq!(&principal.subject, subject);
            assert_eq!(&principal.profile.given_name, given);
            assert_eq!(&principal.groups, groups);
            assert_eq!(&principal.licenses, licenses);
            assert_eq!(
                principal.device.as_ref().map(|d| d.platform.clone()),
                principal
                    .device
                    .as_ref()
                    .and(platform.clone().or(Some(String::new())))
            );
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{}: verdict {verdict:?} but the model says {expected:?}\nclaims {}",
            provider.id,
            Value::Object(map)
        ),
    }
}

/// Puts `subject` (or, left out, a valid user id) under the claim named `name`, unless the
/// arbitrary claims already have it.
fn with_subject(map: &mut Map<String, Value>, name: &str, subject: Option<&Json>) {
    map.entry(name.to_string())
        .or_insert_with(|| subject.map_or_else(|| "user-1".into(), Json::value));
}

fn mapping_case(
    preset: u8,
    overrides: &[(u8, Vec<u8>)],
    claims: &[(u8, Deep)],
    subject: Option<&Json>,
) {
    let preset = Preset::ALL[usize::from(preset) % Preset::ALL.len()];
    let mut mapping = ClaimMapping::preset(preset);
    let mut table: Vec<(&str, Vec<String>)> = ENTRIES
        .iter()
        .map(|(name, _)| {
            (
                *name,
                preset_paths(preset, name)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            )
        })
        .collect();
    for (entry, picks) in overrides {
        let name = ENTRIES[usize::from(*entry) % ENTRIES.len()].0;
        let texts: Vec<&str> = picks
            .iter()
            .map(|p| PATHS[usize::from(*p) % PATHS.len()])
            .collect();
        let Ok(paths) = texts
            .iter()
            .map(|t| ClaimPath::parse(t))
            .collect::<Result<Vec<_>, _>>()
        else {
            // §8.1: a path with an empty part is refused.
            assert!(texts.iter().any(|t| t.split('.').any(str::is_empty)));
            continue;
        };
        let accepted = mapping.set(name, paths).is_ok();
        // §8.1: the subject is exactly one path; any other entry takes any list.
        assert_eq!(
            accepted,
            name != "subject" || texts.len() == 1,
            "{name} {texts:?}"
        );
        if accepted {
            let slot = table.iter_mut().find(|(n, _)| *n == name).unwrap();
            slot.1 = texts.iter().map(|t| t.to_string()).collect();
        }
    }
    let mut map = object_of(claims);
    let subject_path = table.iter().find(|(n, _)| *n == "subject").unwrap().1[0].clone();
    with_subject(&mut map, &subject_path, subject);
    let paths = |entry: &str| -> Vec<String> {
        table
            .iter()
            .find(|(n, _)| *n == entry)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    let expected = model(preset, &paths, &map);
    match (mapping.apply(&map), &expected) {
        (Ok(got), Ok((subject, _, groups, licenses, kind, platform, enrolled))) => {
            if std::env::var_os("FUZZ_TRACE").is_some() {
                eprintln!("mapped {preset:?}: {} groups", got.groups.len());
            }
            assert_eq!(&got.subject, subject);
            assert_eq!(&got.groups, groups);
            assert_eq!(&got.licenses, licenses);
            assert_eq!(&got.kind, kind);
            assert_eq!(&got.platform, platform);
            assert_eq!(&got.enrolled, enrolled);
        }
        (Err(_), Err(_)) => {}
        (got, _) => panic!(
            "{preset:?} {table:?}: mapping gave {got:?} but the model says {expected:?}\nclaims {}",
            Value::Object(map)
        ),
    }
}
