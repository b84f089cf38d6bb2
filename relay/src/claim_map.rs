//! Per-tenant claim mapping: where in a verified token's claims the relay finds the user
//! id, the profile, groups, roles, licences and device claims.
//!
//! Identity providers name these claims their own way (Entra ID's `oid` and `roles`,
//! Keycloak's nested `realm_access.roles`, Okta's `uid`), so each tenant picks a
//! [`Preset`] and may override single entries. The default preset is this project's own
//! claim shape (`docs/tokens.md` §4), so a tenant that names no mapping reads exactly the
//! claims it always did. Registered claims (`iss`, `aud`, `exp`, `nbf`, `iat`, `jti`) are
//! fixed by RFC 7519 and never mapped.
//!
//! Pure: no I/O. The verifier (`auth.rs`) applies a mapping to the claims of a token whose
//! signature, issuer and audience it has already checked.

use std::fmt;

use serde_json::{Map, Value};

/// A named starting point for a tenant's claim mapping (`claims = "…"` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// This project's own claim shape (`docs/tokens.md` §4); tenant selected by `tid`.
    #[default]
    Relay,
    /// Microsoft Entra ID v2.0 access tokens: `oid`, `name`, `groups` and `roles`.
    Entra,
    /// Keycloak access tokens: `sub`, `name`, `groups` and `realm_access.roles`.
    Keycloak,
    /// Okta (custom authorization server) access tokens: `uid`, `name` and `groups`.
    Okta,
}

impl Preset {
    /// Every preset, as named in the config.
    pub const ALL: [Preset; 4] = [Preset::Relay, Preset::Entra, Preset::Keycloak, Preset::Okta];

    /// The preset named `name` in the config, if any.
    pub fn parse(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Relay => "relay",
            Preset::Entra => "entra",
            Preset::Keycloak => "keycloak",
            Preset::Okta => "okta",
        }
    }
}

/// How the verifier finds a token's tenant before it checks the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSelector {
    /// The token's `tid` equals the tenant's configured `id`.
    Tid,
    /// The token's `iss` equals the tenant's configured `issuer` (providers whose tokens
    /// carry no `tid`, or whose `tid` is a provider-side GUID).
    Issuer,
}

impl TenantSelector {
    /// The config spelling (`select_by = "tid" | "iss"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TenantSelector::Tid => "tid",
            TenantSelector::Issuer => "iss",
        }
    }
}

/// A claim's location: a top-level claim name, or dot-separated names descending into
/// JSON objects (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    text: String,
}

impl ClaimPath {
    /// Parses a path; the error is a sentence for the config report.
    pub fn parse(text: &str) -> Result<ClaimPath, String> {
        if text.is_empty() {
            return Err("a claim path must not be empty".into());
        }
        if text.split('.').any(str::is_empty) {
            return Err(format!(
                "{text:?} has an empty part; write names separated by single dots, e.g. \"realm_access.roles\""
            ));
        }
        Ok(ClaimPath { text: text.into() })
    }

    fn literal(text: &str) -> ClaimPath {
        ClaimPath { text: text.into() }
    }

    /// The value at this path. A claim whose whole name equals the path wins (namespaced
    /// claims such as `https://contoso.example/roles` contain dots); otherwise the dots
    /// descend into objects. `Err` when a step on the way is present but not an object.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Result<Option<&'a Value>, String> {
        if let Some(value) = claims.get(&self.text) {
            return Ok(Some(value));
        }
        let mut parts = self.text.split('.');
        let mut object = claims;
        let mut walked = String::new();
        let mut part = parts.next().unwrap_or_default();
        loop {
            let Some(value) = object.get(part) else {
                return Ok(None);
            };
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(part);
            match parts.next() {
                None => return Ok(Some(value)),
                Some(next) => match value {
                    Value::Object(inner) => {
                        object = inner;
                        part = next;
                    }
                    Value::Null => return Ok(None),
                    _ => {
                        return Err(format!(
                            "claim {walked} must be an object (the tenant's mapping reads {self})"
                        ));
                    }
                },
            }
        }
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The JSON type a mapped entry must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimType {
    /// A string (`null` counts as absent).
    String,
    /// A boolean (`null` counts as absent).
    Bool,
    /// An array of strings (`null` is a type error).
    Strings,
}

/// One entry of a mapping: a relay-side name and the claim paths read for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedEntry {
    /// The relay-side name (`subject`, `groups`, …), as the config's `claim_map` keys it.
    pub name: &'static str,
    /// The claim's type.
    pub kind: ClaimType,
    /// Claim paths read, in order. Single values take the first present path; lists are
    /// the union of all. Empty: the entry is not read.
    pub paths: Vec<ClaimPath>,
}

/// The relay-side names a mapping has, with their types, in documentation order.
pub const ENTRIES: [(&str, ClaimType); 21] = [
    ("subject", ClaimType::String),
    ("kind", ClaimType::String),
    ("display_name", ClaimType::String),
    ("given_name", ClaimType::String),
    ("family_name", ClaimType::String),
    ("job_title", ClaimType::String),
    ("company_name", ClaimType::String),
    ("picture", ClaimType::String),
    ("domain", ClaimType::String),
    ("domain_verified", ClaimType::Bool),
    ("groups", ClaimType::Strings),
    ("roles", ClaimType::Strings),
    ("licenses", ClaimType::Strings),
    ("device_id", ClaimType::String),
    ("device_name", ClaimType::String),
    ("device_groups", ClaimType::Strings),
    ("platform", ClaimType::String),
    ("os_version", ClaimType::String),
    ("manufacturer", ClaimType::String),
    ("enrolled", ClaimType::Bool),
    ("compliant", ClaimType::Bool),
];

/// A tenant's complete claim mapping: a preset with any overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The preset it started from.
    pub preset: Preset,
    /// How tokens select this tenant.
    pub select_by: TenantSelector,
    entries: Vec<MappedEntry>,
}

impl Default for ClaimMapping {
    fn default() -> ClaimMapping {
        ClaimMapping::preset(Preset::Relay)
    }
}

/// The claims a mapping read from a token, typed. Absent single values are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappedClaims {
    /// `subject` (required, non-empty is checked by the caller).
    pub subject: String,
    /// The claim path `subject` was read from, for the caller's messages.
    pub subject_claim: String,
    /// `kind`.
    pub kind: Option<String>,
    /// `display_name`.
    pub display_name: Option<String>,
    /// `given_name`.
    pub given_name: Option<String>,
    /// `family_name`.
    pub family_name: Option<String>,
    /// `job_title`.
    pub job_title: Option<String>,
    /// `company_name`.
    pub company_name: Option<String>,
    /// `picture`.
    pub picture: Option<String>,
    /// `domain`.
    pub domain: Option<String>,
    /// `domain_verified`.
    pub domain_verified: Option<bool>,
    /// `groups` and `roles`, in that order, duplicates removed.
    pub groups: Vec<String>,
    /// `licenses`.
    pub licenses: Vec<String>,
    /// `device_id`.
    pub device_id: Option<String>,
    /// `device_name`.
    pub device_name: Option<String>,
    /// `device_groups`.
    pub device_groups: Vec<String>,
    /// `platform`.
    pub platform: Option<String>,
    /// `os_version`.
    pub os_version: Option<String>,
    /// `manufacturer`.
    pub manufacturer: Option<String>,
    /// `enrolled`.
    pub enrolled: Option<bool>,
    /// `compliant`.
    pub compliant: Option<bool>,
}

impl ClaimMapping {
    /// The mapping a preset defines, before overrides (tabled in `docs/tokens.md` §8).
    pub fn preset(preset: Preset) -> ClaimMapping {
        let select_by = match preset {
            Preset::Relay => TenantSelector::Tid,
            Preset::Entra | Preset::Keycloak | Preset::Okta => TenantSelector::Issuer,
        };
        let entries = ENTRIES
            .iter()
            .map(|&(name, kind)| {
                let own: &[&str] = match (preset, name) {
                    // The user's immutable object id; Entra's `sub` is pairwise per
                    // application and Okta's is the changeable login name.
                    (Preset::Entra, "subject") => &["oid"],
                    (Preset::Okta, "subject") => &["uid"],
                    (Preset::Relay, "display_name") => &[],
                    (_, "display_name") => &["name"],
                    (Preset::Relay, "roles") => &[],
                    (Preset::Entra, "roles") => &["roles"],
                    (Preset::Keycloak, "roles") => &["realm_access.roles"],
                    (Preset::Okta, "roles") => &[],
                    (Preset::Entra, "licenses") => &["roles"],
                    (Preset::Keycloak, "licenses") => &["realm_access.roles"],
                    (Preset::Okta, "licenses") => &["groups"],
                    // Providers issue none of the relay's profile extras or device claims
                    // by default; every preset reads the relay's own names, so an
                    // administrator who adds them as custom claims needs no override.
                    (_, "subject") => &["sub"],
                    (_, other) => return own_name(other, kind),
                };
                MappedEntry {
                    name,
                    kind,
                    paths: own.iter().map(|p| ClaimPath::literal(p)).collect(),
                }
            })
            .collect();
        ClaimMapping {
            preset,
            select_by,
            entries,
        }
    }

    /// Replaces the paths of the entry `name`; `Err` names the known entries.
    pub fn set(&mut self, name: &str, paths: Vec<ClaimPath>) -> Result<(), String> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| {
                format!(
                    "unknown entry {name:?}; known: select_by, {}",
                    ENTRIES.map(|(n, _)| n).join(", ")
                )
            })?;
        if name == "subject" && paths.len() != 1 {
            return Err("the subject is exactly one claim path".into());
        }
        entry.paths = paths;
        Ok(())
    }

    /// The paths read for entry `name` (empty if the entry is unknown or not read).
    pub fn paths(&self, name: &str) -> &[ClaimPath] {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map_or(&[], |e| e.paths.as_slice())
    }

    /// Every entry.
    pub fn entries(&self) -> &[MappedEntry] {
        &self.entries
    }

    /// Reads the mapped claims; `Err` is the reason phrase for `TOKEN_INVALID`.
    pub fn apply(&self, claims: &Map<String, Value>) -> Result<MappedClaims, String> {
        let string = |name: &str| self.first_string(claims, name);
        let boolean = |name: &str| -> Result<Option<bool>, String> {
            for path in self.paths(name) {
                match path.lookup(claims)? {
                    None | Some(Value::Null) => {}
                    Some(Value::Bool(b)) => return Ok(Some(*b)),
                    Some(_) => return Err(self.type_error(path, name, "a boolean")),
                }
            }
            Ok(None)
        };
        let subject_paths = self.paths("subject");
        let subject = string("subject")?.ok_or_else(|| {
            let named = subject_paths
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            match self.preset {
                // The message the relay has always given for its own shape.
                Preset::Relay if named == "sub" => "missing claim sub".to_string(),
                preset => format!(
                    "missing claim {named} (the user id under the tenant's {:?} claim mapping)",
                    preset.as_str()
                ),
            }
        })?;
        let mut groups = self.strings(claims, "groups")?;
        for role in self.strings(claims, "roles")? {
            if !groups.contains(&role) {
                groups.push(role);
            }
        }
        Ok(MappedClaims {
            subject,
            subject_claim: subject_paths
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
            kind: string("kind")?,
            display_name: string("display_name")?,
            given_name: string("given_name")?,
            family_name: string("family_name")?,
            job_title: string("job_title")?,
            company_name: string("company_name")?,
            picture: string("picture")?,
            domain: string("domain")?,
            domain_verified: boolean("domain_verified")?,
            groups,
            licenses: self.strings(claims, "licenses")?,
            device_id: string("device_id")?,
            device_name: string("device_name")?,
            device_groups: self.strings(claims, "device_groups")?,
            platform: string("platform")?,
            os_version: string("os_version")?,
            manufacturer: string("manufacturer")?,
            enrolled: boolean("enrolled")?,
            compliant: boolean("compliant")?,
        })
    }

    fn type_error(&self, path: &ClaimPath, name: &str, expected: &str) -> String {
        if path.text == name {
            format!("claim {path} must be {expected}")
        } else {
            format!("claim {path} (the tenant's {name}) must be {expected}")
        }
    }

    fn first_string(
        &self,
        claims: &Map<String, Value>,
        name: &str,
    ) -> Result<Option<String>, String> {
        for path in self.paths(name) {
            match path.lookup(claims)? {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(_) => return Err(self.type_error(path, name, "a string")),
            }
        }
        Ok(None)
    }

    fn strings(&self, claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, String> {
        let mut all: Vec<String> = Vec::new();
        for path in self.paths(name) {
            match path.lookup(claims)? {
                None => {
                    // Entra ID leaves `groups` out when a user has too many groups to
                    // list ("overage") and points at Microsoft Graph instead, as an OpenID
                    // Connect distributed claim (`_claim_names`). The relay does not fetch
                    // it; it says why instead of silently granting nothing. This project's
                    // own shape has no distributed claims, and reads as it always did.
                    let overage = self.preset != Preset::Relay
                        && claims
                            .get("_claim_names")
                            .and_then(Value::as_object)
                            .is_some_and(|names| names.contains_key(&path.text));
                    if overage {
                        return Err(format!(
                            "claim {path} was left out because the user has too many groups (group overage); \
                             limit the groups in the token (\"groups assigned to the application\") or use app roles"
                        ));
                    }
                }
                Some(Value::Array(items)) => {
                    for item in items {
                        let Value::String(s) = item else {
                            return Err(self.type_error(path, name, "an array of strings"));
                        };
                        if !all.contains(s) {
                            all.push(s.clone());
                        }
                    }
                }
                Some(_) => return Err(self.type_error(path, name, "an array of strings")),
            }
        }
        Ok(all)
    }
}

/// The relay's own claim name for an entry (every entry but `display_name` and `roles`
/// has a claim of the same name in `docs/tokens.md` §4).
fn own_name(name: &'static str, kind: ClaimType) -> MappedEntry {
    MappedEntry {
        name,
        kind,
        paths: vec![ClaimPath::literal(name)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_relay_preset_reads_the_relay_claims() {
        let mapping = ClaimMapping::default();
        for (name, _) in ENTRIES {
            let expected: Vec<String> = match name {
                "subject" => vec!["sub".into()],
                "display_name" | "roles" => vec![],
                other => vec![other.into()],
            };
            let got: Vec<String> = mapping
                .paths(name)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(got, expected, "{name}");
        }
        assert_eq!(mapping.select_by, TenantSelector::Tid);
    }

    #[test]
    fn nested_paths_descend_and_dotted_names_match_whole() {
        let claims = object(json!({
            "realm_access": {"roles": ["a", "b"]},
            "https://contoso.example/roles": ["c"],
            "flat": "x"
        }));
        let get = |p: &str| ClaimPath::parse(p).unwrap().lookup(&claims);
        assert_eq!(get("realm_access.roles").unwrap(), Some(&json!(["a", "b"])));
        assert_eq!(
            get("https://contoso.example/roles").unwrap(),
            Some(&json!(["c"]))
        );
        assert_eq!(get("realm_access.missing").unwrap(), None);
        assert!(
            get("flat.deeper")
                .unwrap_err()
                .contains("flat must be an object")
        );
        assert!(ClaimPath::parse("a..b").is_err());
        assert!(ClaimPath::parse("").is_err());
    }

    #[test]
    fn roles_join_groups_without_duplicates_and_types_are_checked() {
        let mapping = ClaimMapping::preset(Preset::Keycloak);
        let mapped = mapping
            .apply(&object(json!({
                "sub": "u1",
                "groups": ["/helpdesk", "both"],
                "realm_access": {"roles": ["both", "remote-help"]}
            })))
            .unwrap();
        assert_eq!(mapped.groups, ["/helpdesk", "both", "remote-help"]);
        assert_eq!(mapped.licenses, ["both", "remote-help"]);
        let err = mapping
            .apply(&object(
                json!({"sub": "u1", "realm_access": {"roles": "x"}}),
            ))
            .unwrap_err();
        assert_eq!(
            err,
            "claim realm_access.roles (the tenant's roles) must be an array of strings"
        );
    }

    #[test]
    fn a_missing_subject_names_the_mapped_claim() {
        let entra = ClaimMapping::preset(Preset::Entra);
        let err = entra
            .apply(&object(json!({"sub": "pairwise"})))
            .unwrap_err();
        assert!(err.contains("missing claim oid"), "{err}");
        let relay = ClaimMapping::default();
        assert_eq!(relay.apply(&Map::new()).unwrap_err(), "missing claim sub");
    }

    #[test]
    fn entra_group_overage_is_named() {
        let entra = ClaimMapping::preset(Preset::Entra);
        let err = entra
            .apply(&object(json!({
                "oid": "o",
                "_claim_names": {"groups": "src1"},
                "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/"}}
            })))
            .unwrap_err();
        assert!(err.contains("group overage"), "{err}");
        // The relay's own shape ignores `_claim_names`, as it always did.
        let relay = ClaimMapping::default();
        let mapped = relay
            .apply(&object(
                json!({"sub": "s", "_claim_names": {"groups": "src1"}}),
            ))
            .unwrap();
        assert!(mapped.groups.is_empty());
    }

    #[test]
    fn overrides_replace_one_entry_and_unknown_names_are_refused() {
        let mut mapping = ClaimMapping::preset(Preset::Okta);
        mapping
            .set(
                "platform",
                vec![ClaimPath::parse("device.platform").unwrap()],
            )
            .unwrap();
        assert_eq!(mapping.paths("platform")[0].to_string(), "device.platform");
        assert_eq!(mapping.paths("subject")[0].to_string(), "uid");
        assert!(
            mapping
                .set("nickname", vec![])
                .unwrap_err()
                .contains("known:")
        );
        assert!(mapping.set("subject", vec![]).is_err());
    }
}
