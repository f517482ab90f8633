//! Validation of OPC UA devices (`protocol = "opcua"`): the endpoint, security, identity,
//! certificates; and their points' keys (`node`, `path`), beside the keys every point has.

use super::address::{parse_node, parse_path, NodeRef, PathElement};
use super::robotics::Role;
use crate::config::table::RawTable;
use crate::config::units::ConfDuration;
use crate::config::validate::devices::DeviceDraft;
use crate::config::validate::points::{PointDraft, PointPart};
use crate::config::validate::Ctx;
use crate::config::{PointType, Secret, Settings};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::PathBuf;
use std::time::Duration;

/// The keys of an OPC UA device (besides those every device has).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaDeviceSection {
    pub endpoint: Option<Spanned<String>>,
    pub security_policy: Option<Spanned<String>>,
    pub security_mode: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub server_cert_file: Option<Spanned<String>>,
    /// Connecting and each service call.
    pub timeout: Option<ConfDuration>,
    /// Most monitored items created in one call.
    pub max_items_per_call: Option<Spanned<i64>>,
    /// How often `path` and `robotics` points are resolved again during a session ("0s": never).
    pub browse_interval: Option<Spanned<crate::config::units::ConfInterval>>,
}

/// A security policy (OPC UA Part 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Basic128Rsa15,
    Basic256,
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

impl Policy {
    pub const ALL: [Policy; 6] = [
        Policy::None,
        Policy::Basic128Rsa15,
        Policy::Basic256,
        Policy::Basic256Sha256,
        Policy::Aes128Sha256RsaOaep,
        Policy::Aes256Sha256RsaPss,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "None",
            Policy::Basic128Rsa15 => "Basic128Rsa15",
            Policy::Basic256 => "Basic256",
            Policy::Basic256Sha256 => "Basic256Sha256",
            Policy::Aes128Sha256RsaOaep => "Aes128Sha256RsaOaep",
            Policy::Aes256Sha256RsaPss => "Aes256Sha256RsaPss",
        }
    }
}

/// A message security mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    None,
    Sign,
    SignAndEncrypt,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "None",
            Mode::Sign => "Sign",
            Mode::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

/// A validated OPC UA device's own settings (`DeviceConfig::settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpcuaDevice {
    /// `opc.tcp://HOST:PORT[/PATH]`.
    pub endpoint: String,
    pub policy: Policy,
    pub mode: Mode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_cert_file: Option<PathBuf>,
    pub timeout: Duration,
    pub max_items_per_call: usize,
    /// `path` and `robotics` points are resolved again this often while a session runs (a
    /// download that changed node ids without restarting the server); zero: at session start
    /// only.
    pub browse_interval: Duration,
}

/// The keys of an OPC UA point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaPointSection {
    pub node: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    /// A variable of an OPC 40010 robot, found by browsing (`Axes/ActualPosition`).
    pub robotics: Option<Spanned<String>>,
}

/// Where an OPC UA point's value is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Where {
    Node(NodeRef),
    /// Resolved to a node at every session start (node ids may change after a download).
    Path(Vec<PathElement>),
    /// Found by browsing the server's OPC 40010 MotionDeviceSystems at every session start.
    Robotics(Role),
}

/// An OPC UA point's settings (`PointConfig::settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct OpcuaPoint {
    pub at: Where,
    /// The point's `type` was given (else the node's DataType decides at run time).
    pub typed: bool,
}

/// The OPC UA source kind (`source::KINDS`).
pub struct Kind;

impl crate::source::SourceKind for Kind {
    fn protocols(&self) -> &'static [&'static str] {
        &["opcua"]
    }
    fn title(&self) -> &'static str {
        "OPC UA"
    }
    fn device_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<OpcuaDeviceSection>()
    }
    fn device(&self, cx: &mut Ctx, raw: RawTable, d: &DeviceDraft) -> Option<Settings> {
        device(cx, raw, d).map(Settings::new)
    }
    fn takes_profiles(&self) -> bool {
        true
    }
    fn point_keys(&self) -> &'static [&'static str] {
        crate::config::table::fields_of::<OpcuaPointSection>()
    }
    fn point(&self, cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
        point(cx, raw, p)
    }
    fn type_from_device(&self, p: &crate::config::PointConfig) -> bool {
        opcua_point(p).is_some_and(|o| !o.typed)
    }
    fn check(&self, config: &crate::config::Config, plan: &mut crate::check::Plan) {
        super::check::render(config, plan)
    }
    fn build(
        &self,
        config: &crate::config::Config,
        registry: &mut crate::model::catalog::Registry,
    ) -> Vec<Box<dyn crate::source::Source>> {
        super::build(config, registry)
    }
}

fn closest<'a>(s: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    crate::config::validate::closest(s, names, 4)
}

fn device(cx: &mut Ctx, raw: RawTable, d: &DeviceDraft) -> Option<OpcuaDevice> {
    let keys: OpcuaDeviceSection = raw.finish(cx)?;
    let endpoint = match &keys.endpoint {
        Some(e) => {
            let v = e.get_ref().trim();
            if super::address::split_endpoint(v).is_none() {
                cx.err(
                    e.span(),
                    format!(
                        "endpoint {v:?} must be opc.tcp://HOST:PORT[/PATH], e.g. \"opc.tcp://10.0.3.15:4840\""
                    ),
                );
            }
            v.to_string()
        }
        None => {
            cx.err(
                d.span.clone(),
                format!("device {:?} needs `endpoint` (opc.tcp://HOST:PORT)", d.id),
            );
            String::new()
        }
    };
    let policy = match &keys.security_policy {
        None => Policy::None,
        Some(p) => match Policy::ALL
            .iter()
            .find(|x| x.name() == p.get_ref().as_str())
        {
            Some(x) => *x,
            None => {
                let hint = closest(p.get_ref(), Policy::ALL.iter().map(|x| x.name()))
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                cx.err(
                    p.span(),
                    format!(
                        "unknown security_policy {:?}{hint}: one of {}",
                        p.get_ref(),
                        Policy::ALL.map(|x| x.name()).join(", ")
                    ),
                );
                Policy::None
            }
        },
    };
    let modes = [Mode::None, Mode::Sign, Mode::SignAndEncrypt];
    let mode = match &keys.security_mode {
        None if policy == Policy::None => Mode::None,
        None => Mode::SignAndEncrypt,
        Some(m) => match modes.iter().find(|x| x.name() == m.get_ref().as_str()) {
            Some(x) => {
                if (*x == Mode::None) != (policy == Policy::None) {
                    cx.err(
                        m.span(),
                        format!(
                            "security_mode {:?} with security_policy {:?}: None goes with None, Sign and SignAndEncrypt with a policy",
                            x.name(),
                            policy.name()
                        ),
                    );
                }
                *x
            }
            None => {
                let hint = closest(m.get_ref(), modes.iter().map(|x| x.name()))
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                cx.err(
                    m.span(),
                    format!(
                        "unknown security_mode {:?}{hint}: None, Sign or SignAndEncrypt",
                        m.get_ref()
                    ),
                );
                Mode::None
            }
        },
    };
    let password = crate::config::validate::credentials(
        cx,
        &keys.username,
        &keys.password,
        &keys.password_file,
        &keys.password_env,
        d.span.clone(),
    );
    if let (Some(u), None, None) = (&keys.username, &password, &keys.password) {
        cx.err(u.span(), "`username` needs password_file or password_env");
    }
    if keys.cert_file.is_some() != keys.key_file.is_some() {
        let at = keys
            .cert_file
            .as_ref()
            .or(keys.key_file.as_ref())
            .map(|s| s.span())
            .unwrap_or(d.span.clone());
        cx.err(
            at,
            "cert_file and key_file go together (or neither: one is generated in data_dir/pki/)",
        );
    }
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|p| PathBuf::from(p.get_ref()));
    let max_items = crate::config::validate::int_in(
        cx,
        &keys.max_items_per_call,
        1..=100_000,
        1000,
        "max_items_per_call",
    ) as usize;
    Some(OpcuaDevice {
        endpoint,
        policy,
        mode,
        username: keys.username.as_ref().map(|u| u.get_ref().clone()),
        password,
        cert_file: path(&keys.cert_file),
        key_file: path(&keys.key_file),
        server_cert_file: path(&keys.server_cert_file),
        timeout: keys
            .timeout
            .map(|t| t.0)
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(100)),
        max_items_per_call: max_items,
        // Zero: never; else at least a second (a browse of a robot is many requests).
        browse_interval: match keys.browse_interval.map(|t| t.into_inner().0) {
            Some(d) if d.is_zero() => d,
            Some(d) => d.max(Duration::from_secs(1)),
            None => Duration::from_secs(60),
        },
    })
}

fn point(cx: &mut Ctx, raw: RawTable, p: &PointDraft) -> Option<PointPart> {
    let keys: OpcuaPointSection = raw.finish(cx)?;
    let name = p.name;
    if let Some(part) = p.derived_part(
        cx,
        &[
            (keys.node.as_ref().map(|a| a.span()), "node"),
            (keys.path.as_ref().map(|a| a.span()), "path"),
            (keys.robotics.as_ref().map(|a| a.span()), "robotics"),
        ],
    ) {
        return Some(part);
    }
    let given: Vec<(&Spanned<String>, &str)> = [
        (&keys.node, "node"),
        (&keys.path, "path"),
        (&keys.robotics, "robotics"),
    ]
    .into_iter()
    .filter_map(|(v, k)| Some((v.as_ref()?, k)))
    .collect();
    let at = match given.as_slice() {
        [(n, "node")] => match parse_node(n.get_ref()) {
            Ok(r) => Where::Node(r),
            Err(e) => {
                cx.err(n.span(), e);
                return None;
            }
        },
        [(pa, "path")] => match parse_path(pa.get_ref()) {
            Ok(r) => Where::Path(r),
            Err(e) => {
                cx.err(pa.span(), e);
                return None;
            }
        },
        [(r, _)] => match Role::parse(r.get_ref()) {
            Ok(role) => {
                if !role.per_axis() && p.count > 1 {
                    cx.err(
                        r.span(),
                        format!("robotics = \"{role}\" is one value: `count` applies to Axes/… and PowerTrains/… (one value per axis)"),
                    );
                }
                Where::Robotics(role)
            }
            Err(e) => {
                cx.err(r.span(), e);
                return None;
            }
        },
        [] => {
            cx.err(
                p.span.clone(),
                format!("point {name:?} needs `node = \"ns=2;s=…\"`, `path = \"Objects/…\"` or `robotics = \"Axes/ActualPosition\"`"),
            );
            return None;
        }
        [_, (second, _), ..] => {
            cx.err(second.span(), "give one of `node`, `path` and `robotics`");
            return None;
        }
    };
    if let Some(b) = p.bit {
        cx.err(
            b.span(),
            "`bit` selects a bit of a register; an OPC UA point reads a whole variable (use a derived point: from + bit)",
        );
    }
    Some(PointPart {
        kind: p.kind.map(|k| *k.get_ref()).unwrap_or(PointType::F64),
        settings: Some(Settings::new(OpcuaPoint {
            at,
            typed: p.kind.is_some(),
        })),
    })
}

/// An OPC UA point's settings (`None` for a derived point).
pub fn opcua_point(p: &crate::config::PointConfig) -> Option<&OpcuaPoint> {
    p.settings.as_ref()?.get::<OpcuaPoint>()
}
