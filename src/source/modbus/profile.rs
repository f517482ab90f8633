//! Device profiles (PRODUCT.md, "Device profiles"; docs/PROFILES.md): a profile file is
//! validated once, in its own file (errors name the profile file, line and column), and a
//! device that names it takes its points; a device point with the name (and measurement) of a
//! profile point replaces it, inheriting every key it does not set, and other device points
//! are added after the profile's.

use super::config::{check_points, is_derived, point, Checked, PointAt, PointCtx};
use crate::config::schema::*;
use crate::config::validate::Ctx;
use crate::config::{ConfigErrors, Report};
use serde_spanned::Spanned;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

/// A validated profile, kept raw: its points are built for each device that uses it (their
/// measurement and poll defaults come from the device).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub name: String,
    pub kind: Option<DeviceKind>,
    pub file: String,
    pub text: String,
    pub points: Vec<Spanned<PointSection>>,
}

/// The profile `name` names, validated on first use; `None` (with the errors reported) when it
/// is unknown or invalid.
pub(crate) fn load(cx: &mut Ctx, name: &Spanned<String>) -> Option<Rc<Loaded>> {
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
    let loaded = match validate(&text.name, &text.file, &text.text) {
        Ok(l) => Some(Rc::new(l)),
        Err(errors) => {
            cx.err(
                name.span(),
                format!(
                    "profile {:?} ({}) has errors, listed with their locations",
                    name.get_ref(),
                    text.file
                ),
            );
            cx.extra.extend(errors.0);
            None
        }
    };
    cx.loaded.insert(name.get_ref().clone(), loaded.clone());
    loaded
}

/// Validates a profile file on its own.
pub(crate) fn validate(name: &str, file: &str, text: &str) -> Result<Loaded, ConfigErrors> {
    let mut cx = Ctx::new(file, text);
    let raw: ProfileFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            cx.err(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return Err(cx.finish());
        }
    };
    let header = raw.profile.get_ref();
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
        in_profile: true,
        mqtt: None,
    };
    let mut checked = Vec::new();
    for p in &raw.points {
        if let Some(config) = point(&mut cx, p, &pc) {
            checked.push(Checked {
                config,
                at: Some(PointAt::of(p)),
            });
        }
    }
    if raw.points.is_empty() {
        cx.err(raw.profile.span(), "a profile needs [[points]]");
    }
    check_points(&mut cx, &checked, raw.profile.span(), name, true);
    if cx.failed() {
        return Err(cx.finish());
    }
    Ok(Loaded {
        name: name.to_string(),
        kind,
        file: file.to_string(),
        text: text.to_string(),
        points: raw.points,
    })
}

/// The measurement a raw point writes to on a device of `kind`.
fn measurement(p: &PointSection, kind: DeviceKind) -> String {
    p.measurement
        .as_ref()
        .map(|m| m.get_ref().clone())
        .unwrap_or_else(|| kind.as_str().to_string())
}

/// A device's points: its profile's (in the profile's order, replaced where the device lists a
/// point of the same name and measurement), then the device's other points.
pub(crate) fn device_points(
    cx: &mut Ctx,
    own: &[Spanned<PointSection>],
    profile: Option<(&Loaded, Range<usize>)>,
    pc: &PointCtx,
) -> Vec<Checked> {
    let mut out = Vec::new();
    let mut used = vec![false; own.len()];
    if let Some((profile, at)) = profile {
        for pp in &profile.points {
            let pr = pp.get_ref();
            let name = pr.name.as_ref().map(|n| n.get_ref().as_str()).unwrap_or("");
            let m = measurement(pr, pc.kind);
            let mine = own.iter().position(|dp| {
                let d = dp.get_ref();
                d.name.as_ref().is_some_and(|n| n.get_ref() == name) && measurement(d, pc.kind) == m
            });
            match mine {
                Some(k) => {
                    used[k] = true;
                    let dp = &own[k];
                    let merged = inherit(dp, pr);
                    if let Some(config) = point(cx, &merged, pc) {
                        out.push(Checked {
                            config,
                            at: Some(PointAt::of(dp)),
                        });
                    }
                }
                None => {
                    if pr.address.is_none() && !is_derived(pr) {
                        cx.err(
                            at.clone(),
                            format!(
                                "profile {:?} leaves the address of point {name:?} to the device: add [[devices.points]] with name = {name:?} and its `address`",
                                profile.name
                            ),
                        );
                    }
                    // Checked when the profile was loaded; built here with the device's defaults.
                    let mut scratch = Ctx::new(&profile.file, &profile.text);
                    let as_profile = PointCtx {
                        kind: pc.kind,
                        poll: pc.poll,
                        report: pc.report,
                        in_profile: true,
                        mqtt: None,
                    };
                    if let Some(config) = point(&mut scratch, pp, &as_profile) {
                        out.push(Checked { config, at: None });
                    }
                }
            }
        }
    }
    for (k, dp) in own.iter().enumerate() {
        if used[k] {
            continue;
        }
        if let Some(config) = point(cx, dp, pc) {
            out.push(Checked {
                config,
                at: Some(PointAt::of(dp)),
            });
        }
    }
    out
}

/// A device point over the profile point it replaces: every key the device does not set comes
/// from the profile, located at the device point's name (errors about the combination then
/// point into the configuration file, not into the profile).
fn inherit(own: &Spanned<PointSection>, base: &PointSection) -> Spanned<PointSection> {
    let at = own
        .get_ref()
        .name
        .as_ref()
        .map(|n| n.span())
        .unwrap_or(own.span());
    fn re<T: Clone>(at: &Range<usize>, v: &Option<Spanned<T>>) -> Option<Spanned<T>> {
        v.as_ref()
            .map(|v| Spanned::new(at.clone(), v.get_ref().clone()))
    }
    let d = own.get_ref();
    let merged = PointSection {
        name: d.name.clone(),
        table: d.table.clone().or_else(|| re(&at, &base.table)),
        address: d.address.clone().or_else(|| re(&at, &base.address)),
        kind: d.kind.clone().or_else(|| re(&at, &base.kind)),
        count: d.count.clone().or_else(|| re(&at, &base.count)),
        index_tag: d.index_tag.clone().or_else(|| re(&at, &base.index_tag)),
        order: d.order.clone().or_else(|| re(&at, &base.order)),
        bit: d.bit.clone().or_else(|| re(&at, &base.bit)),
        byte: d.byte.clone().or_else(|| re(&at, &base.byte)),
        length: d.length.clone().or_else(|| re(&at, &base.length)),
        scale: d.scale.clone().or_else(|| re(&at, &base.scale)),
        offset: d.offset.clone().or_else(|| re(&at, &base.offset)),
        unit: d.unit.clone().or_else(|| base.unit.clone()),
        measurement: d.measurement.clone().or_else(|| re(&at, &base.measurement)),
        tags: if d.tags.is_empty() {
            base.tags
                .iter()
                .map(|(k, v)| {
                    (
                        Spanned::new(at.clone(), k.get_ref().clone()),
                        Spanned::new(at.clone(), v.get_ref().clone()),
                    )
                })
                .collect()
        } else {
            d.tags.clone()
        },
        poll: d.poll.or(base.poll),
        enum_map: d.enum_map.clone().or_else(|| re(&at, &base.enum_map)),
        writable: d.writable.or(base.writable),
        hidden: d.hidden.or(base.hidden),
        from: d.from.clone().or_else(|| re(&at, &base.from)),
        states: d.states.clone().or_else(|| re(&at, &base.states)),
        expr: d.expr.clone().or_else(|| re(&at, &base.expr)),
        alarm: d.alarm.clone().or_else(|| re(&at, &base.alarm)),
        counter: d.counter.clone().or_else(|| re(&at, &base.counter)),
        report: d.report.clone().or_else(|| re(&at, &base.report)),
        simulate: d.simulate.clone().or_else(|| re(&at, &base.simulate)),
        json: d.json.clone().or_else(|| re(&at, &base.json)),
        topic: d.topic.clone().or_else(|| re(&at, &base.topic)),
        metric: d.metric.clone().or_else(|| re(&at, &base.metric)),
    };
    Spanned::new(own.span(), merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in profile is valid.
    #[test]
    fn builtin_profiles_are_valid() {
        for (name, text) in crate::config::profiles::BUILTIN {
            if let Err(e) = validate(name, &format!("built-in:{name}.toml"), text) {
                panic!("{e}");
            }
        }
    }
}
