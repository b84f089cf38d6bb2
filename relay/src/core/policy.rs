//! Remote Help policy: every rule about who may help whom, and how.
//!
//! Pure and I/O-free: the relay builds a [`TenantPolicy`] from config and asks it. The
//! rules follow Microsoft Intune Remote Help:
//!
//! - a tenant is **off** until enabled ([`Refusal::TenantDisabled`]);
//! - helpers and (user) sharers need the configured licence; a device agent with no user
//!   does not ([`Refusal::LicenseRequired`]);
//! - sharers' platforms are limited (Windows, Windows 365, macOS 13–15, Android dedicated
//!   devices from Samsung and Zebra) and unenrolled devices are refused unless allowed;
//! - role-based access: permissions (with implications), roles, and assignments of a role
//!   to member groups limited to scope groups. A helper may help a sharer only through an
//!   assignment that covers the sharer and grants both `offer_remote_assistance` and the
//!   permission the mode needs.

use std::collections::BTreeSet;

use remote_help_proto::ErrorCode;

use crate::auth::{Principal, PrincipalKind};
use crate::core::Mode;

/// A Remote Help permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// See the sharer's screen ("Remote Help app" category).
    ViewScreen,
    /// Control the sharer's device.
    TakeFullControl,
    /// Act on elevation (UAC) prompts.
    Elevation,
    /// Connect to a device agent without a user and without a consent prompt.
    UnattendedControl,
    /// Offer help at all ("Remote tasks" category).
    OfferRemoteAssistance,
    /// Read the tenant's session reports (the reports API). An administration permission:
    /// it counts for tokens presented to the reports API, never for a session.
    ReadReports,
    /// End the tenant's running sessions through the reports API (grants `read_reports`).
    EndSessions,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Permission::ViewScreen,
        Permission::TakeFullControl,
        Permission::Elevation,
        Permission::UnattendedControl,
        Permission::OfferRemoteAssistance,
        Permission::ReadReports,
        Permission::EndSessions,
    ];

    /// The permissions of helping (what the built-in Help Desk Operator role grants).
    pub const HELPING: [Permission; 5] = [
        Permission::ViewScreen,
        Permission::TakeFullControl,
        Permission::Elevation,
        Permission::UnattendedControl,
        Permission::OfferRemoteAssistance,
    ];

    /// The config and documentation name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ViewScreen => "view_screen",
            Permission::TakeFullControl => "take_full_control",
            Permission::Elevation => "elevation",
            Permission::UnattendedControl => "unattended_control",
            Permission::OfferRemoteAssistance => "offer_remote_assistance",
            Permission::ReadReports => "read_reports",
            Permission::EndSessions => "end_sessions",
        }
    }

    /// The permission a config name denotes.
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The permissions this one grants, itself included.
    ///
    /// `take_full_control` grants `view_screen`; `elevation` grants `view_screen` and
    /// `take_full_control`; `unattended_control` grants those three.
    pub fn implied(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            ViewScreen => &[ViewScreen],
            TakeFullControl => &[TakeFullControl, ViewScreen],
            Elevation => &[Elevation, ViewScreen, TakeFullControl],
            UnattendedControl => &[UnattendedControl, ViewScreen, TakeFullControl, Elevation],
            OfferRemoteAssistance => &[OfferRemoteAssistance],
            ReadReports => &[ReadReports],
            EndSessions => &[EndSessions, ReadReports],
        }
    }
}

/// A set of permissions, closed under implication when built with [`PermissionSet::granting`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    /// The permissions `listed` grant, with every implication added.
    pub fn granting(listed: impl IntoIterator<Item = Permission>) -> PermissionSet {
        PermissionSet(
            listed
                .into_iter()
                .flat_map(|p| p.implied().iter().copied())
                .collect(),
        )
    }

    /// Whether `permission` is granted.
    pub fn contains(&self, permission: Permission) -> bool {
        self.0.contains(&permission)
    }

    /// Adds every permission of `other`.
    pub fn extend(&mut self, other: &PermissionSet) {
        self.0.extend(other.0.iter().copied());
    }
}

/// The permission a helper needs for `mode`.
pub fn required_permission(mode: Mode) -> Permission {
    match mode {
        Mode::ViewOnly => Permission::ViewScreen,
        Mode::FullControl => Permission::TakeFullControl,
        Mode::Elevation => Permission::Elevation,
        Mode::Unattended => Permission::UnattendedControl,
    }
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role's name, as assignments refer to it.
    pub name: String,
    /// What it grants (closed under implication).
    pub permissions: PermissionSet,
}

/// The name of the built-in role with every permission.
pub const HELP_DESK_OPERATOR: &str = "Help Desk Operator";

impl Role {
    /// The built-in `Help Desk Operator` role: the five helping permissions (reports are
    /// granted by custom roles only).
    pub fn help_desk_operator() -> Role {
        Role {
            name: HELP_DESK_OPERATOR.into(),
            permissions: PermissionSet::granting(Permission::HELPING),
        }
    }
}

/// Whom an assignment's members may help.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Every user of the tenant.
    pub all_users: bool,
    /// Every device of the tenant.
    pub all_devices: bool,
    /// Users or devices in these groups.
    pub groups: BTreeSet<String>,
}

/// The scope entries meaning "every user" and "every device".
pub const ALL_USERS: &str = "all_users";
/// See [`ALL_USERS`].
pub const ALL_DEVICES: &str = "all_devices";

impl Scope {
    /// A scope from config entries: group ids, `all_users`, `all_devices`.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> Scope {
        let mut scope = Scope::default();
        for entry in entries {
            match entry {
                ALL_USERS => scope.all_users = true,
                ALL_DEVICES => scope.all_devices = true,
                group => {
                    scope.groups.insert(group.to_string());
                }
            }
        }
        scope
    }

    /// Whether the sharer's user or device is in this scope.
    pub fn covers(&self, sharer: &Principal) -> bool {
        let user_covered = sharer.kind == PrincipalKind::User
            && (self.all_users || sharer.groups.iter().any(|g| self.groups.contains(g)));
        let device_covered = sharer
            .device
            .as_ref()
            .is_some_and(|d| self.all_devices || d.groups.iter().any(|g| self.groups.contains(g)));
        user_covered || device_covered
    }
}

/// A role given to member groups, limited to a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// What the members may do.
    pub permissions: PermissionSet,
    /// The role's name, for logs.
    pub role: String,
    /// Helpers in any of these groups are members.
    pub members: BTreeSet<String>,
    /// Whom they may help.
    pub scope: Scope,
}

impl Assignment {
    fn applies_to(&self, helper: &Principal) -> bool {
        helper.groups.iter().any(|g| self.members.contains(g))
    }
}

/// Cloud environments; `gcc-high` and `dod` are refused at config load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudEnvironment {
    /// Commercial cloud.
    Commercial,
    /// US Government Community Cloud.
    Gcc,
}

/// One tenant's Remote Help settings and access control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Remote Help is enabled for the tenant (off by default).
    pub enabled: bool,
    /// Sharers on unenrolled devices are allowed (off by default).
    pub allow_unenrolled_devices: bool,
    /// The chat channel is refused (off by default: chat allowed).
    pub disable_chat: bool,
    /// All session data goes through the relay: no direct path is ever offered (off by
    /// default: peers go direct where their networks allow).
    pub relay_only: bool,
    /// Sessions must be protected end to end: parties whose announced suites have none in
    /// common are refused with `E2E_REQUIRED` before any consent prompt (on by default).
    pub require_end_to_end: bool,
    /// The licence name both parties need (default `remote-help`).
    pub license: String,
    /// The tenant's cloud.
    pub cloud: CloudEnvironment,
    /// Role assignments.
    pub assignments: Vec<Assignment>,
}

/// The default licence name.
pub const DEFAULT_LICENSE: &str = "remote-help";

impl Default for TenantPolicy {
    /// The defaults: disabled, unenrolled devices refused, chat allowed, direct paths
    /// allowed, end-to-end protection required, the `remote-help` licence, commercial
    /// cloud, no assignments.
    fn default() -> TenantPolicy {
        TenantPolicy {
            enabled: false,
            allow_unenrolled_devices: false,
            disable_chat: false,
            relay_only: false,
            require_end_to_end: true,
            license: DEFAULT_LICENSE.into(),
            cloud: CloudEnvironment::Commercial,
            assignments: Vec::new(),
        }
    }
}

/// Why policy refuses something. Each maps to one wire code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Remote Help is not enabled for the tenant.
    TenantDisabled,
    /// The party lacks the licence.
    LicenseRequired,
    /// The sharer's platform is not supported; the text says which.
    PlatformNotSupported(String),
    /// The sharer's device is not enrolled and the tenant does not allow that.
    UnenrolledDevice,
    /// No assignment of the helper covers this sharer.
    NotInScope,
    /// The helper lacks the permission; the text names it.
    PermissionDenied(Permission),
    /// The tenant requires end-to-end protection and the parties have no suite in common
    /// (or this party announced none).
    E2eRequired,
}

impl Refusal {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::TenantDisabled => ErrorCode::TenantDisabled,
            Refusal::LicenseRequired => ErrorCode::LicenseRequired,
            Refusal::PlatformNotSupported(_) => ErrorCode::PlatformNotSupported,
            Refusal::UnenrolledDevice => ErrorCode::UnenrolledDeviceNotAllowed,
            Refusal::NotInScope => ErrorCode::NotInScope,
            Refusal::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Refusal::E2eRequired => ErrorCode::E2eRequired,
        }
    }

    /// A sentence for the client.
    pub fn message(&self) -> String {
        match self {
            Refusal::TenantDisabled => "Remote Help is not enabled for your organisation".into(),
            Refusal::LicenseRequired => "a Remote Help licence is required".into(),
            Refusal::PlatformNotSupported(why) => format!("this device is not supported: {why}"),
            Refusal::UnenrolledDevice => {
                "this device is not enrolled, and your organisation requires enrolment".into()
            }
            Refusal::NotInScope => "this user or device is outside the helper's scope".into(),
            Refusal::PermissionDenied(p) => {
                format!("the helper lacks the {} permission", p.as_str())
            }
            Refusal::E2eRequired => ErrorCode::E2eRequired.describe().into(),
        }
    }
}

/// Whether a platform claim (with OS version and manufacturer) may share.
pub fn platform_supported(
    platform: &str,
    os_version: &str,
    manufacturer: &str,
) -> Result<(), String> {
    match platform {
        "windows" | "windows365" => Ok(()),
        "macos" => {
            let major = os_version.split('.').next().unwrap_or("").trim();
            match major {
                "13" | "14" | "15" => Ok(()),
                _ => Err(format!("macOS {os_version:?} (supported: 13, 14, 15)")),
            }
        }
        "android-dedicated" => {
            let maker = manufacturer.trim().to_ascii_lowercase();
            if maker == "samsung" || maker == "zebra" {
                Ok(())
            } else {
                Err(format!(
                    "Android dedicated devices from {manufacturer:?} (supported: Samsung, Zebra)"
                ))
            }
        }
        "" => Err("no platform claim".into()),
        other => Err(format!("platform {other:?}")),
    }
}

impl TenantPolicy {
    /// May this helper connect at all? (Checked at authentication.)
    pub fn admit_helper(&self, helper: &Principal) -> Result<(), Refusal> {
        if !self.enabled {
            return Err(Refusal::TenantDisabled);
        }
        if !helper.licenses.contains(&self.license) {
            return Err(Refusal::LicenseRequired);
        }
        Ok(())
    }

    /// May this sharer connect at all? (Checked at authentication.)
    pub fn admit_sharer(&self, sharer: &Principal) -> Result<(), Refusal> {
        if !self.enabled {
            return Err(Refusal::TenantDisabled);
        }
        // A device agent with no signed-in user needs no licence; only its helper does.
        if sharer.kind == PrincipalKind::User && !sharer.licenses.contains(&self.license) {
            return Err(Refusal::LicenseRequired);
        }
        let device = sharer.device.clone().unwrap_or_default();
        platform_supported(&device.platform, &device.os_version, &device.manufacturer)
            .map_err(Refusal::PlatformNotSupported)?;
        if !device.enrolled && !self.allow_unenrolled_devices {
            return Err(Refusal::UnenrolledDevice);
        }
        Ok(())
    }

    /// May a party that announced `suites` (its `Hello.e2e_suites`) create, join or wait for
    /// sessions? Only without protection where the tenant requires it: such a party could
    /// never be paired, so it is told at once.
    pub fn admit_announcement(&self, suites: &[u32]) -> Result<(), Refusal> {
        if self.require_end_to_end && suites.iter().all(|id| *id == 0) {
            return Err(Refusal::E2eRequired);
        }
        Ok(())
    }

    /// The protection suite of a session between parties that announced these suites:
    /// the first of the helper's list that the sharer's also holds (the helper's order
    /// wins), `None` for none in common, refused where the tenant requires protection.
    pub fn protection(&self, helper: &[u32], sharer: &[u32]) -> Result<Option<u32>, Refusal> {
        match super::choose_suite(helper, sharer) {
            None if self.require_end_to_end => Err(Refusal::E2eRequired),
            chosen => Ok(chosen),
        }
    }

    /// Everything this helper may do anywhere: the union of its assignments.
    pub fn helper_permissions(&self, helper: &Principal) -> PermissionSet {
        let mut all = PermissionSet::default();
        for a in self.assignments.iter().filter(|a| a.applies_to(helper)) {
            all.extend(&a.permissions);
        }
        all
    }

    /// What this tenant administrator may do in the reports API: the union of the
    /// administration permissions of the assignments whose members include them. Reports
    /// are tenant-wide: an assignment's scope does not narrow them (the audit log does not
    /// record the sharer's groups, so a scope could not be applied to past sessions).
    pub fn admin_permissions(&self, admin: &Principal) -> PermissionSet {
        let all = self.helper_permissions(admin);
        PermissionSet::granting(
            [Permission::ReadReports, Permission::EndSessions]
                .into_iter()
                .filter(|p| all.contains(*p)),
        )
    }

    /// May this helper open a session in `mode` at all (before any sharer is known)?
    pub fn may_offer(&self, helper: &Principal, mode: Mode) -> Result<(), Refusal> {
        let all = self.helper_permissions(helper);
        for needed in [Permission::OfferRemoteAssistance, required_permission(mode)] {
            if !all.contains(needed) {
                return Err(Refusal::PermissionDenied(needed));
            }
        }
        Ok(())
    }

    /// May this helper help this sharer in `mode`? Only assignments whose scope covers
    /// the sharer count, and one of them must grant both `offer_remote_assistance` and
    /// the mode's permission.
    ///
    /// A disabled tenant grants nothing: this is asked for every join, every unattended
    /// connect and every raised mode, so a tenant disabled by a reload while a session
    /// runs stops any further elevation in it (the session itself carries on, and may
    /// still be lowered or ended).
    pub fn may_help(
        &self,
        helper: &Principal,
        sharer: &Principal,
        mode: Mode,
    ) -> Result<(), Refusal> {
        if !self.enabled {
            return Err(Refusal::TenantDisabled);
        }
        let mine: Vec<&Assignment> = self
            .assignments
            .iter()
            .filter(|a| a.applies_to(helper))
            .collect();
        let covering: Vec<&Assignment> = mine
            .iter()
            .copied()
            .filter(|a| a.scope.covers(sharer))
            .collect();
        if covering.is_empty() {
            return Err(if mine.is_empty() {
                Refusal::PermissionDenied(Permission::OfferRemoteAssistance)
            } else {
                Refusal::NotInScope
            });
        }
        let needed = required_permission(mode);
        let granted = covering.iter().any(|a| {
            a.permissions.contains(Permission::OfferRemoteAssistance)
                && a.permissions.contains(needed)
        });
        if granted {
            return Ok(());
        }
        let offers = covering
            .iter()
            .any(|a| a.permissions.contains(Permission::OfferRemoteAssistance));
        Err(Refusal::PermissionDenied(if offers {
            needed
        } else {
            Permission::OfferRemoteAssistance
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{DeviceClaims, ProfileClaims};
    use crate::core::TenantId;

    #[test]
    fn a_tenant_requiring_protection_refuses_parties_with_no_suite_in_common() {
        let required = TenantPolicy::default();
        assert!(required.require_end_to_end, "required by default");
        assert_eq!(required.protection(&[2, 1], &[1, 2]), Ok(Some(2)));
        assert_eq!(required.protection(&[1], &[2]), Err(Refusal::E2eRequired));
        assert_eq!(required.protection(&[], &[1]), Err(Refusal::E2eRequired));
        assert_eq!(required.protection(&[1], &[]), Err(Refusal::E2eRequired));
        assert_eq!(required.admit_announcement(&[]), Err(Refusal::E2eRequired));
        assert_eq!(required.admit_announcement(&[0]), Err(Refusal::E2eRequired));
        assert_eq!(required.admit_announcement(&[9]), Ok(()));
        assert_eq!(Refusal::E2eRequired.code(), ErrorCode::E2eRequired);
        let optional = TenantPolicy {
            require_end_to_end: false,
            ..TenantPolicy::default()
        };
        assert_eq!(optional.protection(&[1], &[2]), Ok(None));
        assert_eq!(optional.protection(&[], &[]), Ok(None));
        assert_eq!(optional.protection(&[1, 2], &[2]), Ok(Some(2)));
        assert_eq!(optional.admit_announcement(&[]), Ok(()));
    }

    fn user(groups: &[&str], licenses: &[&str], device: Option<DeviceClaims>) -> Principal {
        Principal {
            tenant: TenantId::new("t"),
            subject: "u".into(),
            kind: PrincipalKind::User,
            profile: ProfileClaims::default(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            licenses: licenses.iter().map(|g| g.to_string()).collect(),
            device,
            token_id: None,
            expires_at: 0,
        }
    }

    fn device(
        platform: &str,
        os: &str,
        maker: &str,
        enrolled: bool,
        groups: &[&str],
    ) -> DeviceClaims {
        DeviceClaims {
            device_id: "d".into(),
            device_name: "D".into(),
            platform: platform.into(),
            os_version: os.into(),
            manufacturer: maker.into(),
            enrolled,
            compliant: true,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn windows() -> Option<DeviceClaims> {
        Some(device("windows", "10.0", "Contoso", true, &["laptops"]))
    }

    fn enabled() -> TenantPolicy {
        TenantPolicy {
            enabled: true,
            ..TenantPolicy::default()
        }
    }

    fn assignment(perms: &[Permission], members: &[&str], scope: &[&str]) -> Assignment {
        Assignment {
            permissions: PermissionSet::granting(perms.iter().copied()),
            role: "r".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            scope: Scope::from_entries(scope.iter().copied()),
        }
    }

    #[test]
    fn implications_are_exactly_as_specified() {
        use Permission::*;
        let table: [(Permission, &[Permission]); 7] = [
            (ViewScreen, &[ViewScreen]),
            (TakeFullControl, &[TakeFullControl, ViewScreen]),
            (Elevation, &[Elevation, ViewScreen, TakeFullControl]),
            (
                UnattendedControl,
                &[UnattendedControl, ViewScreen, TakeFullControl, Elevation],
            ),
            (OfferRemoteAssistance, &[OfferRemoteAssistance]),
            (ReadReports, &[ReadReports]),
            (EndSessions, &[EndSessions, ReadReports]),
        ];
        for (permission, expected) in table {
            let granted = PermissionSet::granting([permission]);
            for p in Permission::ALL {
                assert_eq!(
                    granted.contains(p),
                    expected.contains(&p),
                    "{permission:?} grants {p:?}?"
                );
            }
        }
    }

    #[test]
    fn the_help_desk_operator_role_has_all_five_helping_permissions_and_no_reports() {
        let role = Role::help_desk_operator();
        assert_eq!(role.name, "Help Desk Operator");
        for p in Permission::HELPING {
            assert!(role.permissions.contains(p), "{p:?}");
        }
        assert!(!role.permissions.contains(Permission::ReadReports));
        assert!(!role.permissions.contains(Permission::EndSessions));
    }

    #[test]
    fn report_permissions_come_from_member_assignments_only() {
        let policy = TenantPolicy {
            enabled: true,
            assignments: vec![
                Assignment {
                    permissions: Role::help_desk_operator().permissions,
                    role: HELP_DESK_OPERATOR.into(),
                    members: ["helpdesk".to_string()].into(),
                    scope: Scope::from_entries(["all_users"]),
                },
                Assignment {
                    permissions: PermissionSet::granting([Permission::ReadReports]),
                    role: "Report reader".into(),
                    members: ["readers".to_string()].into(),
                    scope: Scope::from_entries(["all_users"]),
                },
                Assignment {
                    permissions: PermissionSet::granting([Permission::EndSessions]),
                    role: "Session ender".into(),
                    members: ["enders".to_string()].into(),
                    scope: Scope::from_entries(["all_users"]),
                },
            ],
            ..TenantPolicy::default()
        };
        let granted = |groups: &[&str]| {
            let p = policy.admin_permissions(&user(groups, &[], None));
            (
                p.contains(Permission::ReadReports),
                p.contains(Permission::EndSessions),
                p.contains(Permission::ViewScreen),
            )
        };
        assert_eq!(granted(&["helpdesk"]), (false, false, false));
        assert_eq!(granted(&["readers"]), (true, false, false));
        assert_eq!(
            granted(&["enders"]),
            (true, true, false),
            "ending implies reading"
        );
        assert_eq!(granted(&["nobody"]), (false, false, false));
        assert!(
            policy
                .may_offer(&user(&["readers"], &[], None), Mode::ViewOnly)
                .is_err(),
            "reading reports is no licence to help"
        );
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("root"), None);
    }

    #[test]
    fn defaults_are_off_refuse_unenrolled_allow_chat_and_need_the_remote_help_licence() {
        let d = TenantPolicy::default();
        assert!(!d.enabled);
        assert!(!d.allow_unenrolled_devices);
        assert!(!d.disable_chat);
        assert!(!d.relay_only);
        assert_eq!(d.license, "remote-help");
        assert_eq!(d.cloud, CloudEnvironment::Commercial);
        assert!(d.assignments.is_empty());
    }

    #[test]
    fn a_disabled_tenant_refuses_everyone() {
        let p = TenantPolicy::default();
        let u = user(&[], &["remote-help"], windows());
        assert_eq!(p.admit_helper(&u), Err(Refusal::TenantDisabled));
        assert_eq!(p.admit_sharer(&u), Err(Refusal::TenantDisabled));
        assert_eq!(enabled().admit_helper(&u), Ok(()));
        assert_eq!(enabled().admit_sharer(&u), Ok(()));
    }

    #[test]
    fn a_disabled_tenant_grants_no_mode_even_to_a_helper_whose_roles_would() {
        use Permission::*;
        let helper = user(&["tier1"], &["remote-help"], None);
        let sharer = user(&["finance"], &["remote-help"], windows());
        let mut policy = TenantPolicy {
            assignments: vec![assignment(
                &[OfferRemoteAssistance, UnattendedControl],
                &["tier1"],
                &["all_users"],
            )],
            ..enabled()
        };
        for mode in [Mode::ViewOnly, Mode::FullControl, Mode::Elevation] {
            assert_eq!(policy.may_help(&helper, &sharer, mode), Ok(()));
        }
        policy.enabled = false;
        for mode in [
            Mode::ViewOnly,
            Mode::FullControl,
            Mode::Elevation,
            Mode::Unattended,
        ] {
            assert_eq!(
                policy.may_help(&helper, &sharer, mode),
                Err(Refusal::TenantDisabled)
            );
        }
    }

    #[test]
    fn licences_are_required_of_helpers_and_user_sharers_but_not_device_agents() {
        let p = enabled();
        let unlicensed = user(&[], &["office"], windows());
        assert_eq!(p.admit_helper(&unlicensed), Err(Refusal::LicenseRequired));
        assert_eq!(p.admit_sharer(&unlicensed), Err(Refusal::LicenseRequired));
        let mut agent = unlicensed.clone();
        agent.kind = PrincipalKind::Device;
        agent.device = Some(device("android-dedicated", "14", "Zebra", true, &[]));
        assert_eq!(p.admit_sharer(&agent), Ok(()));
        let custom = TenantPolicy {
            license: "office".into(),
            ..enabled()
        };
        assert_eq!(custom.admit_helper(&unlicensed), Ok(()));
    }

    #[test]
    fn supported_platforms_are_exactly_the_listed_ones() {
        let table = [
            ("windows", "10.0.22631", "", true),
            ("windows", "10.0.26100 ARM64", "", true),
            ("windows365", "", "", true),
            ("macos", "13.6", "", true),
            ("macos", "14", "", true),
            ("macos", "15.1", "", true),
            ("macos", "12.7", "", false),
            ("macos", "16.0", "", false),
            ("android-dedicated", "14", "Samsung", true),
            ("android-dedicated", "13", "zebra", true),
            ("android-dedicated", "14", "Google", false),
            ("android", "14", "Samsung", false),
            ("ios", "17", "Apple", false),
            ("linux", "6.1", "", false),
            ("", "", "", false),
        ];
        for (platform, os, maker, ok) in table {
            assert_eq!(
                platform_supported(platform, os, maker).is_ok(),
                ok,
                "{platform} {os} {maker}"
            );
            let sharer = user(
                &[],
                &["remote-help"],
                Some(device(platform, os, maker, true, &[])),
            );
            let admitted = enabled().admit_sharer(&sharer);
            assert_eq!(
                admitted.is_ok(),
                ok,
                "{platform} {os} {maker}: {admitted:?}"
            );
            if !ok {
                assert_eq!(
                    admitted.unwrap_err().code(),
                    ErrorCode::PlatformNotSupported
                );
            }
        }
        // A sharer with no device claims at all has no platform.
        assert!(matches!(
            enabled().admit_sharer(&user(&[], &["remote-help"], None)),
            Err(Refusal::PlatformNotSupported(_))
        ));
    }

    #[test]
    fn unenrolled_devices_are_refused_unless_allowed() {
        let sharer = user(
            &[],
            &["remote-help"],
            Some(device("windows", "10", "", false, &[])),
        );
        assert_eq!(
            enabled().admit_sharer(&sharer),
            Err(Refusal::UnenrolledDevice)
        );
        let allowing = TenantPolicy {
            allow_unenrolled_devices: true,
            ..enabled()
        };
        assert_eq!(allowing.admit_sharer(&sharer), Ok(()));
    }

    #[test]
    fn scope_matches_user_groups_device_groups_and_the_all_entries() {
        let sharer = user(
            &["finance"],
            &[],
            Some(device("windows", "10", "", true, &["laptops"])),
        );
        let agent = Principal {
            kind: PrincipalKind::Device,
            groups: vec![],
            ..sharer.clone()
        };
        let table = [
            (vec!["finance"], true, false),
            (vec!["laptops"], true, true),
            (vec!["hr"], false, false),
            (vec!["all_users"], true, false),
            (vec!["all_devices"], true, true),
            (vec![], false, false),
        ];
        for (entries, covers_user, covers_agent) in table {
            let scope = Scope::from_entries(entries.iter().copied());
            assert_eq!(scope.covers(&sharer), covers_user, "{entries:?} user");
            assert_eq!(scope.covers(&agent), covers_agent, "{entries:?} agent");
        }
    }

    #[test]
    fn helping_needs_a_covering_assignment_with_offer_and_the_modes_permission() {
        use Mode::{FullControl, Unattended, ViewOnly};
        use Permission::*;
        let helper = user(&["tier1"], &["remote-help"], None);
        let sharer = user(&["finance"], &["remote-help"], windows());
        let policy = |assignments: Vec<Assignment>| TenantPolicy {
            assignments,
            ..enabled()
        };
        type Case = (&'static str, Vec<Assignment>, Mode, Result<(), Refusal>);
        let table: Vec<Case> = vec![
            (
                "no assignment at all",
                vec![],
                ViewOnly,
                Err(Refusal::PermissionDenied(OfferRemoteAssistance)),
            ),
            (
                "not a member",
                vec![assignment(
                    &[OfferRemoteAssistance, ViewScreen],
                    &["tier2"],
                    &["all_users"],
                )],
                ViewOnly,
                Err(Refusal::PermissionDenied(OfferRemoteAssistance)),
            ),
            (
                "member, out of scope",
                vec![assignment(
                    &[OfferRemoteAssistance, ViewScreen],
                    &["tier1"],
                    &["hr"],
                )],
                ViewOnly,
                Err(Refusal::NotInScope),
            ),
            (
                "in scope, view",
                vec![assignment(
                    &[OfferRemoteAssistance, ViewScreen],
                    &["tier1"],
                    &["finance"],
                )],
                ViewOnly,
                Ok(()),
            ),
            (
                "in scope, view only, asks control",
                vec![assignment(
                    &[OfferRemoteAssistance, ViewScreen],
                    &["tier1"],
                    &["finance"],
                )],
                FullControl,
                Err(Refusal::PermissionDenied(TakeFullControl)),
            ),
            (
                "control implies view",
                vec![assignment(
                    &[OfferRemoteAssistance, TakeFullControl],
                    &["tier1"],
                    &["all_users"],
                )],
                ViewOnly,
                Ok(()),
            ),
            (
                "elevation implies control",
                vec![assignment(
                    &[OfferRemoteAssistance, Elevation],
                    &["tier1"],
                    &["all_devices"],
                )],
                FullControl,
                Ok(()),
            ),
            (
                "unattended implies elevation",
                vec![assignment(
                    &[OfferRemoteAssistance, UnattendedControl],
                    &["tier1"],
                    &["laptops"],
                )],
                Mode::Elevation,
                Ok(()),
            ),
            (
                "no offer permission",
                vec![assignment(&[TakeFullControl], &["tier1"], &["all_users"])],
                ViewOnly,
                Err(Refusal::PermissionDenied(OfferRemoteAssistance)),
            ),
            (
                "permissions from an assignment that does not cover the sharer do not count",
                vec![
                    assignment(
                        &[OfferRemoteAssistance, ViewScreen],
                        &["tier1"],
                        &["finance"],
                    ),
                    assignment(
                        &[OfferRemoteAssistance, TakeFullControl],
                        &["tier1"],
                        &["hr"],
                    ),
                ],
                FullControl,
                Err(Refusal::PermissionDenied(TakeFullControl)),
            ),
            (
                "help desk operator everywhere",
                vec![Assignment {
                    permissions: Role::help_desk_operator().permissions,
                    role: HELP_DESK_OPERATOR.into(),
                    members: ["tier1".to_string()].into(),
                    scope: Scope::from_entries(["all_users", "all_devices"]),
                }],
                Unattended,
                Ok(()),
            ),
        ];
        for (name, assignments, mode, expected) in table {
            assert_eq!(
                policy(assignments).may_help(&helper, &sharer, mode),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn offering_at_all_needs_offer_and_the_modes_permission_somewhere() {
        use Permission::*;
        let helper = user(&["tier1"], &["remote-help"], None);
        let p = TenantPolicy {
            assignments: vec![assignment(
                &[OfferRemoteAssistance, ViewScreen],
                &["tier1"],
                &["x"],
            )],
            ..enabled()
        };
        assert_eq!(p.may_offer(&helper, Mode::ViewOnly), Ok(()));
        assert_eq!(
            p.may_offer(&helper, Mode::FullControl),
            Err(Refusal::PermissionDenied(TakeFullControl))
        );
        let without_offer = TenantPolicy {
            assignments: vec![assignment(&[ViewScreen], &["tier1"], &["x"])],
            ..enabled()
        };
        assert_eq!(
            without_offer.may_offer(&helper, Mode::ViewOnly),
            Err(Refusal::PermissionDenied(OfferRemoteAssistance))
        );
    }

    #[test]
    fn every_refusal_has_its_wire_code() {
        let table = [
            (Refusal::TenantDisabled, ErrorCode::TenantDisabled),
            (Refusal::LicenseRequired, ErrorCode::LicenseRequired),
            (
                Refusal::PlatformNotSupported(String::new()),
                ErrorCode::PlatformNotSupported,
            ),
            (
                Refusal::UnenrolledDevice,
                ErrorCode::UnenrolledDeviceNotAllowed,
            ),
            (Refusal::NotInScope, ErrorCode::NotInScope),
            (
                Refusal::PermissionDenied(Permission::ViewScreen),
                ErrorCode::PermissionDenied,
            ),
        ];
        for (refusal, code) in table {
            assert_eq!(refusal.code(), code);
            assert!(!refusal.message().is_empty());
        }
    }
}
