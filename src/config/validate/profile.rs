//! Device profiles (PRODUCT.md, "Device profiles"; docs/PROFILES.md): a profile file is
//! validated once, in its own file (errors name the profile file, line and column), with the
//! source kind of the first device that names it; a device that names it takes its points. A
//! device point with the name (and measurement) of a profile point replaces it, inheriting
//! every key it does not set, and other device points are added after the profile's. Points
//! are merged as tables, before either is read, so every kind's keys are inherited alike.

use super::points::{check_points, is_derived, point, Checked, PointAt, PointCtx};
use super::Ctx;
use crate::config::schema::*;
use crate::config::table::RawTable;
use crate::config::{ConfigErrors, Report};
use crate::source::SourceKind;
use serde_spanned::Spanned;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;
use toml::de::{DeTable, DeValue};

/// A validated profile, kept as text: its points are read again for each device that uses it
/// (their measurement and poll defaults come from the device).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub name: String,
    pub kind: Option<DeviceKind>,
    pub file: String,
    pub text: String,
}

/// The profile `name` names, validated on first use; `None` (with the errors reported) when it
/// is unknown or invalid.
pub(crate) fn load(
    cx: &mut Ctx,
    name: &Spanned<String>,
    source: &dyn SourceKind,
    kinds: &[&dyn SourceKind],
) -> Option<Rc<Loaded>> {
    if let Some(l) = cx.loaded.get(name.get_ref()) {
        return l.clone();
    }
    let Some(text) = cx.profiles.get(name.get_ref()).cloned() else {
        let known: Vec<&str> = cx.profiles.keys().map(String::as_str).collect();
        cx.err(
            name.span(),
            format!(
                "unknown profile {:?}; available: {} (and NAME.toml files in [agent] profiles_dir)",
                name.get_ref(),
                known.join(", ")
            ),
        );
        return None;
    };
    let loaded = match validate(&text.name, &text.file, &text.text, source, kinds) {
        Ok(l) => Some(Rc::new(l)),
        Err(errors) => {
            // A valid profile of another kind's devices (`ur-rtde` on a Modbus device): one
            // error saying so, not the profile's every point.
            let other = kinds.iter().find(|k| {
                k.takes_profiles()
                    && k.title() != source.title()
                    && validate(&text.name, &text.file, &text.text, **k, kinds).is_ok()
            });
            match other {
                Some(k) => cx.err(
                    name.span(),
                    format!(
                        "profile {:?} is for {} devices (protocol = {}), not for {} devices",
                        name.get_ref(),
                        k.title(),
                        super::devices::protocols(*k),
                        source.title()
                    ),
                ),
                None => {
                    cx.err(
                        name.span(),
                        format!(
                            "profile {:?} ({}) has errors, listed with their locations",
                            name.get_ref(),
                            text.file
                        ),
                    );
                    cx.extra.extend(errors.0);
                }
            }
            None
        }
    };
    cx.loaded.insert(name.get_ref().clone(), loaded.clone());
    loaded
}

/// A profile file's header and its `[[points]]` tables.
fn parse<'t>(
    cx: &mut Ctx,
    text: &'t str,
) -> Option<(Spanned<ProfileHeader>, Vec<Spanned<DeValue<'t>>>)> {
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            cx.err(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return None;
        }
    };
    let span = doc.span();
    let mut root = RawTable::new(span, doc.into_inner());
    let points = root.take_array("points");
    let file: ProfileFile = root.finish(cx)?;
    Some((file.profile, points))
}

/// Validates a profile file on its own, with the source kind of the devices that use it.
pub(crate) fn validate(
    name: &str,
    file: &str,
    text: &str,
    source: &dyn SourceKind,
    kinds: &[&dyn SourceKind],
) -> Result<Loaded, ConfigErrors> {
    let mut cx = Ctx::new(file, text);
    let Some((profile, points)) = parse(&mut cx, text) else {
        return Err(cx.finish());
    };
    let header = profile.get_ref();
    if let Some(n) = &header.name {
        if n.get_ref() != name {
            cx.err(
                n.span(),
                format!(
                    "the profile in {file} is named {:?}: a profile file is NAME.toml, so name it {name:?}",
                    n.get_ref()
                ),
            );
        }
    }
    let kind = header.kind.as_ref().map(|k| *k.get_ref());
    let pc = PointCtx {
        kind: kind.unwrap_or(DeviceKind::Other),
        poll: Duration::from_secs(1),
        report: Report::default(),
        source,
        kinds,
        device: None,
        line: None,
        cell: "",
        id: name,
        in_profile: true,
    };
    if points.is_empty() {
        cx.err(profile.span(), "a profile needs [[points]]");
    }
    let mut checked = Vec::new();
    for p in points {
        let Some(t) = table(&mut cx, p) else { continue };
        let at = PointAt::of(&t);
        if let Some(config) = point(&mut cx, t, &pc) {
            checked.push(Checked {
                config,
                at: Some(at),
            });
        }
    }
    check_points(&mut cx, &checked, profile.span(), name, source);
    if cx.failed() {
        return Err(cx.finish());
    }
    Ok(Loaded {
        name: name.to_string(),
        kind,
        file: file.to_string(),
        text: text.to_string(),
    })
}

fn table<'t>(cx: &mut Ctx, v: Spanned<DeValue<'t>>) -> Option<RawTable<'t>> {
    match RawTable::of(v, "a point") {
        Ok(t) => Some(t),
        Err((at, msg)) => {
            cx.shape(at, msg);
            None
        }
    }
}

/// The name and measurement a raw point writes to on a device of `kind`.
fn key(p: &RawTable, kind: DeviceKind) -> (String, String) {
    let name = p.peek_str("name").map(|(n, _)| n).unwrap_or("").to_string();
    let measurement = p
        .peek_str("measurement")
        .map(|(m, _)| m.to_string())
        .unwrap_or_else(|| kind.as_str().to_string());
    (name, measurement)
}

/// A device's points: its profile's (in the profile's order, replaced where the device lists a
/// point of the same name and measurement), then the device's other points.
pub(crate) fn device_points(
    cx: &mut Ctx,
    own: Vec<Spanned<DeValue<'_>>>,
    profile: Option<(&Loaded, Range<usize>)>,
    pc: &PointCtx,
) -> Vec<Checked> {
    let mut out = Vec::new();
    let mut own: Vec<Option<RawTable>> = own.into_iter().map(|v| table(cx, v)).collect();
    if let Some((profile, at)) = profile {
        // Validated when it was loaded: read again, with this device's defaults.
        let mut scratch = Ctx::new(&profile.file, &profile.text);
        let points = parse(&mut scratch, &profile.text)
            .map(|(_, p)| p)
            .unwrap_or_default();
        for pp in points {
            let Some(pt) = table(&mut scratch, pp) else {
                continue;
            };
            let (name, m) = key(&pt, pc.kind);
            let mine = own.iter().position(|dp| {
                dp.as_ref()
                    .is_some_and(|dp| key(dp, pc.kind) == (name.clone(), m.clone()))
            });
            match mine.and_then(|k| own[k].take()) {
                Some(mut dp) => {
                    let at = PointAt::of(&dp);
                    dp.inherit(pt);
                    if let Some(config) = point(cx, dp, pc) {
                        out.push(Checked {
                            config,
                            at: Some(at),
                        });
                    }
                }
                None => {
                    let left = (!is_derived(&pt))
                        .then(|| pc.source.left_to_device(&pt))
                        .flatten();
                    if let Some(key) = left {
                        cx.err(
                            at.clone(),
                            format!(
                                "profile {:?} leaves the {key} of point {name:?} to the device: add [[devices.points]] with name = {name:?} and its `{key}`",
                                profile.name
                            ),
                        );
                    }
                    let as_profile = PointCtx {
                        in_profile: true,
                        ..*pc
                    };
                    if let Some(config) = point(&mut scratch, pt, &as_profile) {
                        out.push(Checked { config, at: None });
                    }
                }
            }
        }
    }
    for dp in own.into_iter().flatten() {
        let at = PointAt::of(&dp);
        if let Some(config) = point(cx, dp, pc) {
            out.push(Checked {
                config,
                at: Some(at),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in profile is valid for the devices of one source kind (a register map
    /// for Modbus devices, `ur-rtde` for RTDE devices).
    #[test]
    fn builtin_profiles_are_valid() {
        for (name, text) in crate::config::profiles::BUILTIN {
            let results: Vec<Result<_, _>> = crate::source::KINDS
                .iter()
                .filter(|k| k.takes_profiles())
                .map(|k| {
                    validate(
                        name,
                        &format!("built-in:{name}.toml"),
                        text,
                        *k,
                        crate::source::KINDS,
                    )
                })
                .collect();
            if !results.iter().any(|r| r.is_ok()) {
                let errors: Vec<String> = results
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| e.to_string()))
                    .collect();
                panic!("{}", errors.join("\n--- or ---\n"));
            }
        }
    }
}
