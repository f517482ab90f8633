//! The demo's terminal view: what the agent delivered, read back from the demo's line-protocol
//! file as it grows (so the view shows exactly what a store receives): each device's robot or
//! drive state, the latest alarm episodes, the latest availability window. Pure: `View::feed`
//! takes new text, `View::screen` and `View::line` render it.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One line of line protocol, split (values keep their line-protocol text, unquoted).
#[derive(Debug, PartialEq)]
pub struct Line<'a> {
    pub measurement: &'a str,
    pub tags: Vec<(&'a str, &'a str)>,
    pub fields: Vec<(&'a str, String)>,
    pub ts: i64,
}

/// Splits `s` at `sep` outside double quotes and not after a backslash.
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Parses one line of line protocol; `None` for what is not one.
pub fn parse_line(l: &str) -> Option<Line<'_>> {
    let parts = split_unquoted(l.trim_end(), b' ');
    let [series, fields, ts] = parts[..] else {
        return None;
    };
    let mut tags = split_unquoted(series, b',').into_iter();
    let measurement = tags.next()?;
    let tags = tags.filter_map(|t| t.split_once('=')).collect();
    let fields = split_unquoted(fields, b',')
        .into_iter()
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(text) => text.replace("\\\"", "\"").replace("\\\\", "\\"),
                None => v.trim_end_matches(['i', 'u']).to_string(),
            };
            Some((k, v))
        })
        .collect();
    Some(Line {
        measurement,
        tags,
        fields,
        ts: ts.parse().ok()?,
    })
}

/// A device as the view shows it.
#[derive(Debug, Default, Clone)]
pub struct DeviceView {
    pub kind: String,
    /// The robot or drive state label (and its code), and since when (ns).
    pub state: Option<(String, i64)>,
    pub state_since: i64,
    /// The latest availability (0..=1) and the end of its window (ns).
    pub availability: Option<(f64, i64)>,
}

/// An alarm episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub device: String,
    pub point: String,
    pub code: i64,
    pub label: String,
    pub start: i64,
    /// Seconds, once it ended.
    pub duration: Option<f64>,
}

/// What the demo's terminal shows, built from the delivered lines.
#[derive(Debug, Default)]
pub struct View {
    pub devices: BTreeMap<String, DeviceView>,
    /// The latest episodes, oldest first (at most `EPISODES`).
    pub episodes: Vec<Episode>,
    /// Devices that have no `state` point (nothing to show but up or down).
    pub stateless: std::collections::BTreeSet<String>,
    /// An incomplete last line, kept until its newline arrives.
    partial: String,
}

/// How many alarm episodes the view keeps.
pub const EPISODES: usize = 6;

impl View {
    /// Takes text appended to the file (it may end in the middle of a line).
    pub fn feed(&mut self, text: &str) {
        let mut buf = std::mem::take(&mut self.partial);
        buf.push_str(text);
        let complete = match buf.rfind('\n') {
            Some(end) => {
                self.partial = buf[end + 1..].to_string();
                &buf[..end]
            }
            None => {
                self.partial = buf;
                return;
            }
        };
        // The fields of one alarm record arrive as separate lines with the same time.
        let mut alarm: Option<(String, String, i64, BTreeMap<String, String>)> = None;
        for l in complete.lines().filter_map(parse_line) {
            let tag = |k: &str| {
                l.tags
                    .iter()
                    .find(|(t, _)| *t == k)
                    .map(|(_, v)| v.to_string())
            };
            let Some(device) = tag("device") else {
                continue;
            };
            match l.measurement {
                "linetap_alarm" => {
                    let point = tag("point").unwrap_or_default();
                    let same = alarm
                        .as_ref()
                        .is_some_and(|(d, p, ts, _)| *d == device && *p == point && *ts == l.ts);
                    if !same {
                        if let Some(a) = alarm.take() {
                            self.alarm(a);
                        }
                        alarm = Some((device.clone(), point, l.ts, BTreeMap::new()));
                    }
                    if let Some((_, _, _, fields)) = alarm.as_mut() {
                        for (k, v) in &l.fields {
                            fields.insert(k.to_string(), v.clone());
                        }
                    }
                }
                "linetap_state_time" => {
                    if let Some((_, v)) = l.fields.iter().find(|(k, _)| *k == "availability") {
                        if let Ok(a) = v.parse() {
                            self.devices.entry(device).or_default().availability = Some((a, l.ts));
                        }
                    }
                }
                m if m == "robot" || m == "drive" => {
                    let Some((_, label)) = l.fields.iter().find(|(k, _)| *k == "state_label")
                    else {
                        continue;
                    };
                    let code = l
                        .fields
                        .iter()
                        .find(|(k, _)| *k == "state")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(-1);
                    let d = self.devices.entry(device).or_default();
                    d.kind = m.to_string();
                    if d.state.as_ref().is_none_or(|(s, _)| s != label) {
                        d.state = Some((label.clone(), code));
                        d.state_since = l.ts;
                    }
                }
                _ => {}
            }
        }
        if let Some(a) = alarm.take() {
            self.alarm(a);
        }
    }

    /// One alarm record: the start of an episode (`active=true`) or its end.
    fn alarm(&mut self, (device, point, ts, f): (String, String, i64, BTreeMap<String, String>)) {
        let code = f.get("code").and_then(|c| c.parse().ok()).unwrap_or(0);
        match f.get("active").map(String::as_str) {
            Some("true") => {
                self.episodes.push(Episode {
                    device,
                    point,
                    code,
                    label: f.get("code_label").cloned().unwrap_or_default(),
                    start: ts,
                    duration: None,
                });
                if self.episodes.len() > EPISODES {
                    self.episodes.remove(0);
                }
            }
            Some("false") => {
                if let Some(e) = self
                    .episodes
                    .iter_mut()
                    .rev()
                    .find(|e| e.device == device && e.point == point && e.duration.is_none())
                {
                    e.duration = f.get("duration").and_then(|d| d.parse().ok());
                }
            }
            _ => {}
        }
    }

    /// The full view, one device a row (`up`: device → up, from the agent's metrics).
    pub fn screen(&self, up: &[(String, bool)], now_ns: i64) -> String {
        let mut o = String::new();
        let mut rows = vec![["device", "link", "state", "since", "availability"].map(String::from)];
        for (name, is_up) in up {
            let d = self.devices.get(name).cloned().unwrap_or_default();
            rows.push([
                name.clone(),
                if *is_up { "up" } else { "DOWN" }.to_string(),
                match &d.state {
                    Some((s, c)) => format!("{s} ({c})"),
                    None if self.stateless.contains(name) => "(no state point)".into(),
                    None => "-".into(),
                },
                d.state
                    .as_ref()
                    .map(|_| ago(now_ns - d.state_since))
                    .unwrap_or_default(),
                match d.availability {
                    Some((a, _)) => format!("{:.1} %", a * 100.0),
                    None if self.stateless.contains(name) => String::new(),
                    None => "(after the first window)".into(),
                },
            ]);
        }
        for r in &rows {
            let _ = writeln!(
                o,
                "  {:<18} {:<4} {:<26} {:<7} {}",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        let _ = writeln!(o, "\n  alarm episodes (latest {EPISODES}):");
        if self.episodes.is_empty() {
            let _ = writeln!(o, "    none yet");
        }
        for e in self.episodes.iter().rev() {
            let what = if e.label.is_empty() {
                e.code.to_string()
            } else {
                format!("{} {}", e.code, e.label)
            };
            let status = match e.duration {
                Some(d) => format!(
                    "ended after {d:.1} s (started {} ago)",
                    ago(now_ns - e.start)
                ),
                None => format!("ACTIVE for {}", ago(now_ns - e.start)),
            };
            let _ = writeln!(o, "    {:<18} {:<32} {status}", e.device, what);
        }
        o
    }

    /// The view in one line (for a pipe or a log): every device's state, the active alarms and
    /// the availabilities.
    pub fn line(&self, up: &[(String, bool)]) -> String {
        let states: Vec<String> = up
            .iter()
            .map(|(name, is_up)| {
                let state = self
                    .devices
                    .get(name)
                    .and_then(|d| d.state.as_ref())
                    .map(|(s, _)| s.as_str())
                    .unwrap_or(if self.stateless.contains(name) {
                        "(no state point)"
                    } else {
                        "-"
                    });
                if *is_up {
                    format!("{name} {state}")
                } else {
                    format!("{name} DOWN")
                }
            })
            .collect();
        let active: Vec<String> = self
            .episodes
            .iter()
            .filter(|e| e.duration.is_none())
            .map(|e| format!("{} {}", e.device, e.code))
            .collect();
        let availability: Vec<String> = up
            .iter()
            .filter_map(|(name, _)| {
                let (a, _) = self.devices.get(name)?.availability?;
                Some(format!("{name} {:.0}%", a * 100.0))
            })
            .collect();
        let mut o = format!("states: {}", states.join(", "));
        let _ = write!(
            o,
            " | alarms active: {}",
            if active.is_empty() {
                "none".to_string()
            } else {
                active.join(", ")
            }
        );
        if !availability.is_empty() {
            let _ = write!(o, " | availability: {}", availability.join(", "));
        }
        o
    }
}

/// A duration in ns as "12 s" or "3 min 4 s".
fn ago(ns: i64) -> String {
    let s = (ns.max(0) / 1_000_000_000) as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
robot,cell=c,device=robot-01,kind=robot,line=l state=3i,state_label=\"running\" 1000000000
drive,device=servo-1,kind=drive,line=l state=4i,state_label=\"operation_enabled\" 1000000000
linetap_alarm,device=robot-01,kind=robot,line=l,point=alarm_code code=1034i 5000000000
linetap_alarm,device=robot-01,kind=robot,line=l,point=alarm_code code_label=\"joint 3, overtemperature\" 5000000000
linetap_alarm,device=robot-01,kind=robot,line=l,point=alarm_code active=true 5000000000
robot,cell=c,device=robot-01,kind=robot,line=l state=5i,state_label=\"stopped\" 6000000000
linetap_state_time,device=robot-01,kind=robot,line=l availability=0.75 15000000000
linetap_alarm,device=robot-01,kind=robot,line=l,point=alarm_code code=1034i 15000000000
linetap_alarm,device=robot-01,kind=robot,line=l,point=alarm_code active=false 15000000000
linetap_alarm,device=robot-01,kind=robot,line=l,point=alarm_code duration=10.0 15000000000
";

    #[test]
    fn states_episodes_and_availability_from_delivered_lines() {
        let mut v = View::default();
        // Fed in pieces that cut lines in two.
        let (a, b) = TEXT.split_at(200);
        v.feed(a);
        v.feed(b);
        let r = &v.devices["robot-01"];
        assert_eq!(r.state, Some(("stopped".to_string(), 5)));
        assert_eq!(r.state_since, 6_000_000_000);
        assert_eq!(r.availability, Some((0.75, 15_000_000_000)));
        assert_eq!(
            v.devices["servo-1"].state,
            Some(("operation_enabled".to_string(), 4))
        );
        assert_eq!(
            v.episodes,
            [Episode {
                device: "robot-01".into(),
                point: "alarm_code".into(),
                code: 1034,
                label: "joint 3, overtemperature".into(),
                start: 5_000_000_000,
                duration: Some(10.0),
            }]
        );
        let up = [
            ("robot-01".to_string(), true),
            ("servo-1".to_string(), false),
        ];
        let screen = v.screen(&up, 20_000_000_000);
        assert!(screen.contains("stopped (5)"), "{screen}");
        assert!(screen.contains("75.0 %"), "{screen}");
        assert!(screen.contains("ended after 10.0 s"), "{screen}");
        assert!(screen.contains("DOWN"), "{screen}");
        assert_eq!(
            v.line(&up),
            "states: robot-01 stopped, servo-1 DOWN | alarms active: none | availability: robot-01 75%"
        );
    }
}
