//! `[[devices.points]]` (and a profile's `[[points]]`): the keys every point has
//! (`schema::PointCommon`: name, type, count, scale, measurement, derived points, alarms, report
//! by exception, `simulate`, ...) and the checks across a device's points; the keys left (where
//! the value is read: registers, a JSON pointer, ...) go to the device's source kind
//! (`source::SourceKind::point`), which also resolves the type a point has when none is given.

use super::Ctx;
use crate::config::schema::*;
use crate::config::table::RawTable;
use crate::config::validate::{int_in, RESERVED_TAGS};
use crate::config::*;
use crate::source::SourceKind;
use serde_spanned::Spanned;
use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

/// A validated point and where errors about it go (`None`: a profile's point, checked with its
/// profile; errors that only arise on a device go to the device's `profile` key).
pub struct Checked {
    pub config: PointConfig,
    pub at: Option<PointAt>,
}

/// Locations in the file a point was written in.
pub struct PointAt {
    pub name: Range<usize>,
    /// Where it is read (its `address`, `json`, ...; else the whole point).
    pub address: Range<usize>,
    pub derive: Range<usize>,
}

impl PointAt {
    pub fn of(p: &RawTable) -> PointAt {
        let whole = p.span();
        let at = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| p.peek_str(k).map(|(_, at)| at))
                .unwrap_or(whole.clone())
        };
        PointAt {
            name: at(&["name"]),
            address: at(&["address", "json", "metric", "topic"]),
            derive: at(&["expr", "from"]),
        }
    }
}

/// The checks across a device's points: no two write the same field of the same series, and
/// every derived point reads points that exist, come before it when derived themselves, and fit
/// its element count; then the kind's own (`SourceKind::check_points`: overlapping registers).
pub(crate) fn check_points(
    cx: &mut Ctx,
    points: &[Checked],
    fallback: Range<usize>,
    id: &str,
    kind: &dyn SourceKind,
) {
    kind.check_points(cx, points, fallback.clone());
    // (measurement, field, tags): two points may not write the same field of the same series.
    type SeriesField<'a> = (&'a str, &'a str, &'a [(String, String)]);
    let mut names: HashSet<SeriesField> = HashSet::new();
    for (i, c) in points.iter().enumerate() {
        let pc = &c.config;
        let at = |f: fn(&PointAt) -> &Range<usize>| {
            c.at.as_ref()
                .map(|a| f(a).clone())
                .unwrap_or(fallback.clone())
        };
        if !names.insert((&pc.measurement, &pc.name, &pc.tags)) {
            cx.err(
                at(|a| &a.name),
                format!(
                    "duplicate point {:?} in measurement {:?} of device {id:?}",
                    pc.name, pc.measurement
                ),
            );
        }
        let Some(derive) = &pc.derive else {
            continue;
        };
        for (input, element) in derive.inputs() {
            let found: Vec<usize> = points
                .iter()
                .enumerate()
                .filter(|(_, q)| {
                    crate::transform::expr::names(input, &q.config.measurement, &q.config.name)
                })
                .map(|(j, _)| j)
                .collect();
            let problem = match found.as_slice() {
                [] => Some(format!(
                    "point {:?} reads {input:?}, which is not a point of this device",
                    pc.name
                )),
                [j] => {
                    let q = &points[*j].config;
                    if *j == i {
                        Some(format!("point {input:?} cannot read itself"))
                    } else if q.derive.is_some() && *j > i {
                        Some(format!(
                            "point {:?} reads {input:?}, which is computed after it: list {input:?} first",
                            pc.name
                        ))
                    } else if q.kind == PointType::String {
                        Some(format!(
                            "point {:?} reads {input:?}, a string: derived points compute with numbers",
                            pc.name
                        ))
                    } else {
                        match element {
                            Some(k) if k > q.count => Some(format!(
                                "{input}[{k}]: {input:?} has {} element(s)",
                                q.count
                            )),
                            None if q.count > 1 && q.count != pc.count => Some(format!(
                                "{input:?} has {} elements and {:?} {}: an array point reads arrays of its own length element by element; pick one element with {input}[k]",
                                q.count, pc.name, pc.count
                            )),
                            _ => None,
                        }
                    }
                }
                many => Some(format!(
                    "{input:?} names {} points of this device (in measurements {}): write MEASUREMENT.{input}",
                    many.len(),
                    many.iter().map(|j| format!("{:?}", points[*j].config.measurement)).collect::<Vec<_>>().join(", ")
                )),
            };
            if let Some(problem) = problem {
                cx.err(at(|a| &a.derive), problem);
            }
        }
    }
}

/// What a point's validation needs from its device.
pub(crate) struct PointCtx<'a> {
    pub kind: DeviceKind,
    pub poll: Duration,
    pub report: Report,
    /// The device's source kind: it reads the point's other keys.
    pub source: &'a dyn SourceKind,
    /// Every kind of the file (a key of another kind is named as that kind's).
    pub kinds: &'a [&'a dyn SourceKind],
    /// What the kind read from the device's keys (`None` in a profile).
    pub device: Option<&'a Settings>,
    pub line: Option<&'a LineConfig>,
    pub cell: &'a str,
    pub id: &'a str,
    /// Validating a profile: a register point may leave `address` to the device.
    pub in_profile: bool,
}

/// What a source kind is told about the point whose keys it reads.
pub struct PointDraft<'a> {
    pub name: &'a str,
    /// The whole point.
    pub span: Range<usize>,
    /// Computed from other points (`from`, `expr`, `states`): not read, so none of the kind's
    /// keys apply.
    pub derived: bool,
    /// `type` as written.
    pub kind: Option<&'a Spanned<PointType>>,
    /// `bit` as written (of a register, for a point that is read).
    pub bit: Option<&'a Spanned<i64>>,
    pub count: u16,
    /// What the kind read from the device's keys (`None` in a profile).
    pub device: Option<&'a Settings>,
    pub line: Option<&'a LineConfig>,
    pub cell: &'a str,
    /// The device's id.
    pub id: &'a str,
    pub in_profile: bool,
}

impl PointDraft<'_> {
    /// For a derived point (computed, not read): reports each of the kind's keys it was given
    /// (`(where, key)`) and returns its part; `None` for a point that is read.
    pub fn derived_part(
        &self,
        cx: &mut Ctx,
        given: &[(Option<Range<usize>>, &str)],
    ) -> Option<PointPart> {
        if !self.derived {
            return None;
        }
        for (at, key) in given {
            if let Some(at) = at {
                cx.err(
                    at.clone(),
                    format!(
                        "point {:?} is derived (`from` / `expr`): it is not read, so `{key}` does not apply",
                        self.name
                    ),
                );
            }
        }
        Some(PointPart {
            kind: PointType::F64,
            settings: None,
        })
    }
}

/// What a source kind read from a point's keys.
pub struct PointPart {
    /// The point's type (given, or the kind's default for what it reads).
    pub kind: PointType,
    /// Where the value is read; `PointConfig::settings`.
    pub settings: Option<Settings>,
}

/// Whether a raw point is derived (computed from other points, not read).
pub(crate) fn is_derived(p: &RawTable) -> bool {
    ["from", "expr", "states"].iter().any(|k| p.has(k))
}

/// The byte offset of character `at` of a string value whose (quoted) text is at `span`.
fn inside(cx: &Ctx, span: &Range<usize>, at: usize) -> usize {
    let src = cx.source(span.clone());
    let open = if src.starts_with("\"\"\"") || src.starts_with("'''") {
        3 + usize::from(src[3..].starts_with('\n'))
    } else if src.starts_with('"') || src.starts_with('\'') {
        1
    } else {
        0
    };
    (span.start + open + at).min(span.end.saturating_sub(1).max(span.start))
}

/// Parses an expression key, reporting a syntax error at its character.
fn expression(cx: &mut Ctx, raw: &Spanned<String>) -> Option<crate::transform::expr::Expr> {
    match crate::transform::expr::Expr::parse(raw.get_ref()) {
        Ok(e) => Some(e),
        Err(e) => {
            let at = inside(cx, &raw.span(), e.at);
            cx.err(at..at, e.message);
            None
        }
    }
}

/// One point: the shared keys here, the kind's keys by the device's source kind.
pub(crate) fn point(cx: &mut Ctx, mut raw: RawTable, pc: &PointCtx) -> Option<PointConfig> {
    let span = raw.span();
    let errors_before = cx.errors.len();
    // Keys of another kind: say whose they are.
    let own = pc.source.point_keys();
    raw.take_foreign(
        cx,
        |key| crate::config::table::fields_of::<PointCommon>().contains(&key) || own.contains(&key),
        |key| {
            let owner = pc.kinds.iter().find(|k| k.point_keys().contains(&key))?;
            Some(format!(
                "`{key}` belongs to points of {} devices (protocol = {})",
                owner.title(),
                super::devices::protocols(*owner)
            ))
        },
    );
    let p: PointCommon = raw.take(cx)?;
    let name = cx.non_empty(&p.name, span.clone(), "name", "[[devices.points]]");
    let derived = p.from.is_some() || p.expr.is_some() || p.states.is_some();
    if derived {
        for (v, key) in [
            (p.scale.as_ref().map(|a| a.span()), "scale"),
            (p.offset.as_ref().map(|a| a.span()), "offset"),
            (p.as_float.as_ref().map(|a| a.span()), "as_float"),
            (p.simulate.as_ref().map(|a| a.span()), "simulate"),
        ] {
            if let Some(at) = v {
                cx.err(
                    at,
                    format!("point {name:?} is derived (`from` / `expr`): it has no registers, so `{key}` does not apply"),
                );
            }
        }
        if p.writable == Some(true) {
            cx.err(
                span.clone(),
                format!("point {name:?} is derived and cannot be writable"),
            );
        }
    }
    let count = int_in(cx, &p.count, 1..=2000, 1, "count") as u16;
    let draft = PointDraft {
        name: &name,
        span: span.clone(),
        derived,
        kind: p.kind.as_ref(),
        bit: p.bit.as_ref(),
        count,
        device: pc.device,
        line: pc.line,
        cell: pc.cell,
        id: pc.id,
        in_profile: pc.in_profile,
    };
    // The kind reads its keys (for a derived point: says that none apply).
    let part = pc.source.point(cx, raw, &draft)?;
    let kind = match (&p.kind, derived) {
        (Some(k), _) => *k.get_ref(),
        (None, true) if p.states.is_some() => PointType::I32,
        (None, true) if p.bit.is_some() => PointType::Bool,
        (None, true) => PointType::F64,
        (None, false) => part.kind,
    };
    let kind_span = p.kind.as_ref().map(|k| k.span()).unwrap_or(span.clone());
    let bit = match &p.bit {
        Some(b) if derived => {
            if p.from.is_none() {
                cx.err(
                    b.span(),
                    "a derived `bit` needs `from` (the point it is taken from)",
                );
            } else if kind != PointType::Bool {
                cx.err(
                    b.span(),
                    format!("`bit` gives a bool, not {:?}", kind.as_str()),
                );
            } else if !(0..=63).contains(b.get_ref()) {
                cx.err(
                    b.span(),
                    format!("bit {} is out of range 0..=63", b.get_ref()),
                );
            }
            Some((*b.get_ref()).clamp(0, 63) as u8)
        }
        _ => None,
    };
    let index_tag = match (&p.index_tag, &p.count) {
        (Some(t), _) if RESERVED_TAGS.contains(&t.get_ref().as_str()) || t.get_ref().is_empty() => {
            cx.err(
                t.span(),
                format!(
                    "index_tag {:?} cannot be used: pick a tag name such as \"axis\"",
                    t.get_ref()
                ),
            );
            None
        }
        (Some(t), Some(_)) => Some(t.get_ref().clone()),
        (Some(t), None) => {
            cx.err(
                t.span(),
                "`index_tag` needs `count` (the number of array elements)",
            );
            None
        }
        (None, Some(_)) if count > 1 => Some("index".to_string()),
        (None, _) => None,
    };
    let (scale, offset) = if derived {
        (1.0, 0.0)
    } else {
        let scale = p.scale.as_ref().map(|s| *s.get_ref()).unwrap_or(1.0);
        let offset = p.offset.as_ref().map(|s| *s.get_ref()).unwrap_or(0.0);
        for (v, what) in [(&p.scale, "scale"), (&p.offset, "offset")] {
            if let Some(v) = v {
                if !v.get_ref().is_finite() {
                    cx.err(v.span(), format!("{what} must be a finite number"));
                } else if matches!(kind, PointType::Bool | PointType::String) {
                    cx.err(
                        v.span(),
                        format!("`{what}` applies to numeric types, not {:?}", kind.as_str()),
                    );
                }
            }
        }
        if let Some(s) = &p.scale {
            if *s.get_ref() == 0.0 {
                cx.err(s.span(), "scale 0 would turn every reading into the offset");
            }
        }
        (scale, offset)
    };
    // On a float type it changes nothing: a device that overrides a profile point's `type`
    // with a float type keeps the profile's `as_float` without harm.
    let as_float = match &p.as_float {
        Some(f)
            if *f.get_ref() && !derived && matches!(kind, PointType::Bool | PointType::String) =>
        {
            cx.err(
                f.span(),
                format!(
                    "`as_float` writes a number as a float, not a {:?}",
                    kind.as_str()
                ),
            );
            false
        }
        Some(f) => !derived && *f.get_ref() && kind.is_integer(),
        None => false,
    };
    let mut enum_labels = Vec::new();
    if let Some(e) = &p.enum_map {
        if p.states.is_some() {
            cx.err(
                e.span(),
                "a `states` point takes its labels from its rows: remove `enum`",
            );
        } else if !kind.is_integer() {
            cx.err(
                e.span(),
                format!("`enum` needs an integer type, not {:?}", kind.as_str()),
            );
        } else if p.scale.is_some() || p.offset.is_some() || as_float {
            cx.err(
                e.span(),
                "`enum` cannot be combined with scale, offset or as_float",
            );
        }
        for (code, label) in e.get_ref() {
            let code_text = code.trim();
            let parsed = match code_text
                .strip_prefix("0x")
                .or_else(|| code_text.strip_prefix("0X"))
            {
                Some(hex) => i64::from_str_radix(hex, 16),
                None => code_text.parse::<i64>(),
            };
            match parsed {
                Ok(c) => enum_labels.push((c, label.clone())),
                Err(_) => cx.err(
                    e.span(),
                    format!("enum key {code:?} is not an integer code (decimal or 0x hex)"),
                ),
            }
        }
        enum_labels.sort();
    }
    let derive = if derived {
        derive(cx, &p, kind, &kind_span, bit, &mut enum_labels)
    } else {
        None
    };
    let measurement = match &p.measurement {
        Some(m) if m.get_ref().is_empty() => {
            cx.err(m.span(), "measurement must not be empty");
            String::new()
        }
        Some(m) => m.get_ref().clone(),
        None => pc.kind.as_str().to_string(),
    };
    let mut tags = cx.tags(&p.tags, "point");
    if let Some(t) = &index_tag {
        if tags.iter().any(|(k, _)| k == t) {
            cx.err(
                span.clone(),
                format!("index_tag {t:?} is also one of this point's tags"),
            );
        }
        tags.retain(|(k, _)| k != t);
    }
    let alarm = match &p.alarm {
        Some(a) if *a.get_ref() => {
            if !kind.is_integer() {
                cx.err(
                    a.span(),
                    format!(
                        "`alarm` marks an integer alarm or error code (0 = none), not a {:?} point",
                        kind.as_str()
                    ),
                );
            }
            true
        }
        _ => false,
    };
    let cycles = match &p.counter {
        Some(c) if c.get_ref() == "cycles" => {
            if matches!(kind, PointType::Bool | PointType::String) {
                cx.err(
                    c.span(),
                    format!(
                        "a cycle counter is a number, not a {:?} point",
                        kind.as_str()
                    ),
                );
            }
            true
        }
        Some(c) => {
            cx.err(
                c.span(),
                format!(
                    "counter {:?}: the only kind is \"cycles\" (a cycle or part counter)",
                    c.get_ref()
                ),
            );
            false
        }
        None => false,
    };
    let report = super::report(cx, &p.report, pc.report);
    let simulate = match &p.simulate {
        Some(raw) => {
            let e = expression(cx, raw);
            if let Some((n, _, at)) = e.as_ref().and_then(|e| e.references().first().copied()) {
                let at = inside(cx, &raw.span(), at);
                cx.err(
                    at..at,
                    format!("`simulate` is a function of `t` (seconds) and `i` (the element); it cannot read point {n:?}"),
                );
            }
            e
        }
        None => None,
    };
    if cx.errors.len() != errors_before {
        return None;
    }
    Some(PointConfig {
        name,
        kind,
        count,
        index_tag,
        element_tag: None,
        scale,
        offset,
        as_float,
        unit: p.unit.clone().unwrap_or_default(),
        measurement,
        tags,
        poll: p.poll.map(|d| d.0).unwrap_or(pc.poll),
        enum_labels,
        writable: p.writable.unwrap_or(false),
        hidden: p.hidden.unwrap_or(false),
        derive: derive.map(Box::new),
        alarm,
        cycles,
        report: report.active.then(|| Box::new(report)),
        simulate: simulate.map(Box::new),
        settings: if derived { None } else { part.settings },
    })
}

/// How a derived point is computed (`from` + `states`, `from` + `bit`, or `expr`).
fn derive(
    cx: &mut Ctx,
    p: &PointCommon,
    kind: PointType,
    kind_span: &Range<usize>,
    bit: Option<u8>,
    enum_labels: &mut Vec<(i64, String)>,
) -> Option<Derive> {
    if kind == PointType::String {
        cx.err(
            kind_span.clone(),
            "a derived point is a number or a bool, not a string",
        );
        return None;
    }
    if let Some(e) = &p.expr {
        if let Some(f) = &p.from {
            cx.err(f.span(), "a point takes either `expr` or `from`, not both");
        }
        if let Some(s) = &p.states {
            cx.err(
                s.span(),
                "`states` maps `from`; with `expr`, write the rule in the expression",
            );
        }
        return expression(cx, e).map(Derive::Expr);
    }
    let Some(from) = &p.from else {
        if let Some(s) = &p.states {
            cx.err(
                s.span(),
                "`states` needs `from` (the point whose value is masked)",
            );
        }
        return None;
    };
    if from.get_ref().is_empty() {
        cx.err(from.span(), "`from` names another point of the device");
        return None;
    }
    match (&p.states, bit) {
        (Some(states), None) => {
            if !kind.is_integer() {
                cx.err(
                    kind_span.clone(),
                    format!(
                        "a `states` point writes an integer code, not {:?}",
                        kind.as_str()
                    ),
                );
            }
            let mut rows = Vec::new();
            for r in states.get_ref() {
                let mask = r.mask.as_ref().map(|m| *m.get_ref()).unwrap_or(-1);
                if r.label.get_ref().is_empty() {
                    cx.err(r.label.span(), "a state needs a label");
                }
                if let Some(m) = &r.mask {
                    if *m.get_ref() < 0 {
                        cx.err(m.span(), "mask must not be negative");
                    }
                }
                let code = *r.code.get_ref();
                match enum_labels.iter().find(|(c, _)| *c == code) {
                    Some((_, l)) if l != r.label.get_ref() => {
                        let l = l.clone();
                        cx.err(
                            r.code.span(),
                            format!("code {code} already has label {l:?}"),
                        );
                    }
                    Some(_) => {}
                    None => enum_labels.push((code, r.label.get_ref().clone())),
                }
                rows.push(StateRule {
                    mask,
                    value: *r.value.get_ref(),
                    code,
                });
            }
            if rows.is_empty() {
                cx.err(states.span(), "`states` needs at least one row");
            }
            enum_labels.sort();
            Some(Derive::States {
                from: from.get_ref().clone(),
                rows,
            })
        }
        (None, Some(bit)) => Some(Derive::Bit {
            from: from.get_ref().clone(),
            bit,
        }),
        (Some(s), Some(_)) => {
            cx.err(
                s.span(),
                "a point takes `states` or `bit` of its `from`, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                from.span(),
                "`from` needs `states` (a masked state table) or `bit`; for arithmetic use `expr`",
            );
            None
        }
    }
}
