//! The Grafana dashboards in deploy/grafana/dashboards, checked two ways:
//!
//! - their JSON has what Grafana needs to load them: a schema version, a unique uid and title,
//!   panels with a type, a unique id and a grid position inside the 24-column grid, every panel
//!   and every query on the provisioned InfluxDB datasource (uid `linetap-influxdb`), raw
//!   InfluxQL queries that use `$timeFilter` and `$__interval` as Grafana expects, and template
//!   variables built from `SHOW TAG VALUES` that refer only to variables defined before them;
//! - every query of every panel returns data from a real InfluxDB 1.x that `linetap demo` fills
//!   from the simulator: the variables are resolved by running their own queries against the
//!   database (so those are tested too) and substituted as Grafana does (all values of an
//!   "All" variable as an escaped regex alternation; a single-value variable with each of its
//!   values in turn), `$timeFilter` becomes the absolute range Grafana sends, and `$__interval`
//!   both the finest interval the panel allows and a coarser one. A query that errors, or
//!   returns no series or only nulls, fails the test.

mod common;
use common::*;

use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The uid the provisioning file gives the datasource; every panel and query must name it.
const DATASOURCE_UID: &str = "linetap-influxdb";
/// The datasource's minimum interval (`jsonData.timeInterval` in the provisioning file).
const DATASOURCE_MIN_INTERVAL: &str = "1s";
/// The dashboards the product promises, by file name (the file name is the dashboard's uid).
const DASHBOARDS: &[&str] = &[
    "linetap-line-overview",
    "linetap-robot",
    "linetap-drives",
    "linetap-agent",
];
const PANEL_TYPES: &[&str] = &[
    "timeseries",
    "stat",
    "state-timeline",
    "status-history",
    "table",
    "bargauge",
    "gauge",
    "barchart",
    "piechart",
    "text",
    "row",
];
const DATABASE: &str = "linetap";

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana")
}

struct Dashboard {
    file: String,
    json: Value,
}

fn load_dashboards() -> Vec<Dashboard> {
    let dir = grafana_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let dashboards: Vec<Dashboard> = files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not valid JSON: {e}", p.display()));
            Dashboard {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            }
        })
        .collect();
    for name in DASHBOARDS {
        assert!(
            dashboards.iter().any(|d| d.file == format!("{name}.json")),
            "deploy/grafana/dashboards/{name}.json is missing"
        );
    }
    dashboards
}

/// Every panel, including those folded into rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

fn variables(d: &Value) -> Vec<&Value> {
    d["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

fn is_our_datasource(v: &Value) -> bool {
    v["type"] == "influxdb" && v["uid"] == DATASOURCE_UID
}

/// Every `$name` or `${name}` in a query: the reference's byte range (from the `$`) and the
/// name. A `$` before anything else (as in the regex `/^$line$/`) or an unclosed `${` is text.
fn scan(q: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let b = q.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let braced = b.get(i + 1) == Some(&b'{');
            let start = i + 1 + braced as usize;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            let closed = !braced || b.get(end) == Some(&b'}');
            if end > start && closed {
                let stop = end + braced as usize;
                out.push((i..stop, &q[start..end]));
                i = stop;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The names a query refers to.
fn references(q: &str) -> Vec<String> {
    scan(q).into_iter().map(|(_, n)| n.to_string()).collect()
}

/// Replaces `$name` and `${name}` with `values[name]`; other text (and unknown names) is kept.
fn substitute(q: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(q.len() + 64);
    let mut copied = 0;
    for (range, name) in scan(q) {
        if let Some(v) = values.get(name) {
            out.push_str(&q[copied..range.start]);
            out.push_str(v);
            copied = range.end;
        }
    }
    out.push_str(&q[copied..]);
    out
}

/// Grafana's regex escaping of variable values in InfluxQL queries.
fn escape_regex(v: &str) -> String {
    let mut o = String::new();
    for c in v.chars() {
        if "\\^$*+?.()|[]{}/".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// "1s", "10s", "1m", "2h" (Grafana's interval syntax, an optional leading '>' allowed).
fn parse_interval(s: &str) -> Option<Duration> {
    let s = s.trim().trim_start_matches('>');
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    let unit = match &s[split..] {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n * unit))
}

/// The `$__interval` values a panel is tried with: the finest Grafana can give it (the
/// panel's own minimum interval, else the datasource's) and a coarser one, as for a wider range.
fn intervals(panel: &Value) -> Vec<String> {
    let min = panel["interval"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(DATASOURCE_MIN_INTERVAL)
        .trim_start_matches('>')
        .to_string();
    let mut out = vec![min.clone()];
    if parse_interval(&min).expect("a valid interval") < Duration::from_secs(10) {
        out.push("10s".to_string());
    }
    out
}

/// What Grafana needs to load a dashboard, and what linetap's dashboards promise.
fn structure_problems(dashboards: &[Dashboard]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut uids = HashSet::new();
    let mut titles = HashSet::new();
    for d in dashboards {
        let j = &d.json;
        let mut bad = |what: String| problems.push(format!("{}: {what}", d.file));
        match j["schemaVersion"].as_u64() {
            Some(v) if v >= 36 => {}
            other => bad(format!("schemaVersion {other:?}, want a number >= 36")),
        }
        let uid = j["uid"].as_str().unwrap_or("");
        if uid.is_empty() || uid.len() > 40 {
            bad(format!("uid {uid:?} must be 1..=40 characters"));
        }
        if format!("{uid}.json") != d.file {
            bad(format!("uid {uid:?} differs from the file name"));
        }
        if !uids.insert(uid.to_string()) {
            bad(format!("uid {uid:?} is used twice"));
        }
        let title = j["title"].as_str().unwrap_or("");
        if title.is_empty() || !titles.insert(title.to_string()) {
            bad(format!("title {title:?} is empty or used twice"));
        }
        if !j["time"]["from"].is_string() || !j["time"]["to"].is_string() {
            bad("no default time range".into());
        }

        // Template variables: site, line, device from SHOW TAG VALUES, chained in order.
        let vars = variables(j);
        let mut defined: Vec<String> = Vec::new();
        for v in &vars {
            let name = v["name"].as_str().unwrap_or("");
            let q = v["query"].as_str().unwrap_or("");
            if name.is_empty() || v["type"] != "query" {
                bad(format!("variable {name:?} must be a named query variable"));
            }
            if !is_our_datasource(&v["datasource"]) {
                bad(format!("variable {name}: datasource {}", v["datasource"]));
            }
            if !q.starts_with("SHOW TAG VALUES") || !q.contains(&format!("KEY = \"{name}\"")) {
                bad(format!(
                    "variable {name}: query {q:?} is not SHOW TAG VALUES … WITH KEY = \"{name}\""
                ));
            }
            if !matches!(v["refresh"].as_u64(), Some(1 | 2)) {
                bad(format!(
                    "variable {name}: refresh must be 1 (on load) or 2 (on time range change)"
                ));
            }
            for r in references(q) {
                if !defined.contains(&r) {
                    bad(format!(
                        "variable {name} refers to ${r}, which is not defined before it"
                    ));
                }
            }
            defined.push(name.to_string());
        }
        for want in ["site", "line", "device"] {
            if !defined.iter().any(|n| n == want) {
                bad(format!("no template variable {want:?}"));
            }
        }
        let chained = |name: &str, on: &str| {
            vars.iter().any(|v| {
                v["name"] == name
                    && references(v["query"].as_str().unwrap_or("")).contains(&on.to_string())
            })
        };
        if !chained("line", "site") || !chained("device", "line") {
            bad("line must be filtered by $site and device by $line".into());
        }

        // Panels.
        let all = panels(j);
        if all.is_empty() {
            bad("no panels".into());
        }
        let mut ids = HashSet::new();
        let mut boxes: Vec<(String, [i64; 4])> = Vec::new();
        for p in &all {
            let title = p["title"].as_str().unwrap_or("").to_string();
            let ty = p["type"].as_str().unwrap_or("");
            let mut bad =
                |what: String| problems.push(format!("{}: panel {title:?}: {what}", d.file));
            if !PANEL_TYPES.contains(&ty) {
                bad(format!("type {ty:?} is not a known panel type"));
            }
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                id => bad(format!("id {id:?} is missing or not unique")),
            }
            let g = &p["gridPos"];
            let pos: Vec<Option<i64>> = ["x", "y", "w", "h"]
                .iter()
                .map(|k| g[*k].as_i64())
                .collect();
            match pos[..] {
                [Some(x), Some(y), Some(w), Some(h)]
                    if x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24 =>
                {
                    for (other, [ox, oy, ow, oh]) in &boxes {
                        if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                            bad(format!("overlaps panel {other:?}"));
                        }
                    }
                    boxes.push((title.clone(), [x, y, w, h]));
                }
                _ => bad(format!(
                    "gridPos {g} needs x, y >= 0, w, h > 0 and x + w <= 24"
                )),
            }
            if ty == "row" {
                continue;
            }
            if title.is_empty() || p["description"].as_str().unwrap_or("").is_empty() {
                bad("needs a title and a description".into());
            }
            if !is_our_datasource(&p["datasource"]) {
                bad(format!("datasource {}", p["datasource"]));
            }
            if let Some(i) = p["interval"].as_str() {
                if parse_interval(i).is_none() {
                    bad(format!("interval {i:?} is not an interval"));
                }
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                bad("no queries".into());
            }
            let mut refs = HashSet::new();
            for t in &targets {
                let r = t["refId"].as_str().unwrap_or("");
                let q = t["query"].as_str().unwrap_or("");
                if r.is_empty() || !refs.insert(r.to_string()) {
                    bad(format!("refId {r:?} is empty or not unique"));
                }
                if !is_our_datasource(&t["datasource"]) {
                    bad(format!("query {r}: datasource {}", t["datasource"]));
                }
                if t["rawQuery"] != true || !q.starts_with("SELECT ") {
                    bad(format!("query {r} is not a raw InfluxQL SELECT"));
                }
                if !matches!(t["resultFormat"].as_str(), Some("time_series" | "table")) {
                    bad(format!("query {r}: resultFormat {}", t["resultFormat"]));
                }
                if t["hide"] == true {
                    bad(format!("query {r} is hidden"));
                }
                let used = references(q);
                for want in ["timeFilter", "site", "line"] {
                    if !used.iter().any(|u| u == want) {
                        bad(format!("query {r} does not use ${want}"));
                    }
                }
                for u in &used {
                    if u != "timeFilter" && u != "__interval" && !defined.contains(u) {
                        bad(format!("query {r} uses ${u}, which is not a variable"));
                    }
                }
                if q.contains("GROUP BY time(") && !q.contains("GROUP BY time($__interval)") {
                    bad(format!(
                        "query {r} groups by a fixed time instead of $__interval"
                    ));
                }
            }
        }
    }
    problems
}

/// The provisioning files name the datasource the dashboards use, in InfluxQL mode, and a
/// file provider for the dashboards.
fn provisioning_problems() -> Vec<String> {
    let mut problems = Vec::new();
    let dir = grafana_dir().join("provisioning");
    let ds = std::fs::read_to_string(dir.join("datasources/linetap.yaml")).unwrap_or_default();
    for want in [
        "apiVersion: 1".to_string(),
        "type: influxdb".to_string(),
        format!("uid: {DATASOURCE_UID}"),
        "version: InfluxQL".to_string(),
        format!("timeInterval: {DATASOURCE_MIN_INTERVAL}"),
        "${INFLUX_URL}".to_string(),
        "${INFLUX_DATABASE}".to_string(),
    ] {
        if !ds.contains(&want) {
            problems.push(format!(
                "provisioning/datasources/linetap.yaml lacks {want:?}"
            ));
        }
    }
    let dash = std::fs::read_to_string(dir.join("dashboards/linetap.yaml")).unwrap_or_default();
    for want in ["apiVersion: 1", "type: file", "path: "] {
        if !dash.contains(want) {
            problems.push(format!(
                "provisioning/dashboards/linetap.yaml lacks {want:?}"
            ));
        }
    }
    let readme = std::fs::read_to_string(grafana_dir().join("README.md")).unwrap_or_default();
    for name in DASHBOARDS {
        if !readme.contains(&format!("{name}.json")) {
            problems.push(format!(
                "deploy/grafana/README.md does not describe {name}.json"
            ));
        }
    }
    problems
}

#[test]
fn dashboards_have_the_structure_grafana_loads() {
    let dashboards = load_dashboards();
    let mut problems = structure_problems(&dashboards);
    problems.extend(provisioning_problems());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// One InfluxQL query against /query; the parsed first result, or why it failed.
fn influxql(url: &str, q: &str) -> Result<Value, String> {
    let r = request(
        "POST",
        &format!("{url}/query?db={}&epoch=ms", enc(DATABASE)),
        Some(&format!("q={}", enc(q))),
    )
    .map_err(|e| format!("request failed: {e}"))?;
    let v: Value =
        serde_json::from_str(&r.body).map_err(|e| format!("HTTP {}: {e}: {}", r.status, r.body))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("HTTP {}: {e}", r.status));
    }
    let result = v["results"][0].clone();
    if let Some(e) = result["error"].as_str() {
        return Err(e.to_string());
    }
    Ok(result)
}

/// Series that have at least one non-null value outside the time column.
fn series_with_data(result: &Value) -> usize {
    result["series"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            let time_col = s["columns"]
                .as_array()
                .and_then(|c| c.iter().position(|c| c == "time"));
            s["values"].as_array().into_iter().flatten().any(|row| {
                row.as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .any(|(i, v)| Some(i) != time_col && !v.is_null())
            })
        })
        .count()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// How Grafana fills `$timeFilter` for "the last hour".
fn time_filter() -> String {
    let to = now_ms();
    format!("time >= {}ms and time <= {to}ms", to - 3_600_000)
}

/// The dashboard's variables resolved in order by running their queries: for each, its
/// substitution and its values. Without a `choice`, a variable takes what Grafana selects on
/// load: every value for an "All" variable, else the first value; `choice` picks one value of
/// one variable instead.
type Resolved = (BTreeMap<String, String>, Vec<(String, Vec<String>)>);

fn resolve_variables(
    url: &str,
    d: &Value,
    choice: Option<(&str, &str)>,
) -> Result<Resolved, String> {
    let mut values = BTreeMap::new();
    let mut options = Vec::new();
    for v in variables(d) {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let q = substitute(v["query"].as_str().unwrap_or(""), &values);
        let result = influxql(url, &q).map_err(|e| format!("variable {name}: {q}: {e}"))?;
        let mut found: Vec<String> = result["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["values"].as_array().into_iter().flatten())
            .filter_map(|row| row[1].as_str().map(str::to_string))
            .collect();
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Err(format!("variable {name}: {q}: no values"));
        }
        let all = v["includeAll"] == true
            && (v["current"]["value"].is_null()
                || v["current"]["value"] == serde_json::json!(["$__all"])
                || v["current"]["value"] == "$__all");
        let chosen = match choice {
            Some((n, value)) if n == name => vec![value.to_string()],
            _ if all => found.clone(),
            _ => vec![found[0].clone()],
        };
        let text = if v["multi"] == true || v["includeAll"] == true {
            let escaped: Vec<String> = chosen.iter().map(|s| escape_regex(s)).collect();
            if escaped.len() == 1 {
                escaped[0].clone()
            } else {
                format!("({})", escaped.join("|"))
            }
        } else {
            chosen[0].clone()
        };
        values.insert(name.clone(), text);
        if v["multi"] != true && v["includeAll"] != true {
            options.push((name, found));
        }
    }
    Ok((values, options))
}

/// Runs every query of every panel, with the variables as Grafana selects them on load and
/// with each other value of each single-value variable (e.g. every robot of the robot
/// dashboard); returns the failures and the number of queries run.
fn run_all(url: &str, dashboards: &[Dashboard]) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for d in dashboards {
        let (default, single) = match resolve_variables(url, &d.json, None) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: {e}", d.file));
                continue;
            }
        };
        let mut selections = vec![default];
        for (name, values) in &single {
            for value in values.iter().skip(1) {
                match resolve_variables(url, &d.json, Some((name, value))) {
                    Ok((v, _)) => selections.push(v),
                    Err(e) => failures.push(format!("{} (${name} = {value}): {e}", d.file)),
                }
            }
        }
        for vars in &selections {
            run_panels(url, d, vars, &mut failures, &mut ran);
        }
    }
    (failures, ran)
}

fn run_panels(
    url: &str,
    d: &Dashboard,
    vars: &BTreeMap<String, String>,
    failures: &mut Vec<String>,
    ran: &mut usize,
) {
    for p in panels(&d.json) {
        for interval in intervals(p) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let mut subst = vars.clone();
                subst.insert("timeFilter".into(), time_filter());
                subst.insert("__interval".into(), interval.clone());
                let q = substitute(t["query"].as_str().unwrap_or(""), &subst);
                *ran += 1;
                let what = format!(
                    "{}: panel {:?} query {} ($__interval={interval})",
                    d.file,
                    p["title"].as_str().unwrap_or(""),
                    t["refId"].as_str().unwrap_or("")
                );
                if references(&q)
                    .iter()
                    .any(|r| r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
                {
                    failures.push(format!(
                        "{what}: a variable is left after substitution:\n    {q}"
                    ));
                    continue;
                }
                match influxql(url, &q) {
                    Err(e) => failures.push(format!("{what}: error {e}\n    {q}")),
                    Ok(r) if series_with_data(&r) == 0 => {
                        failures.push(format!("{what}: no data ({r})\n    {q}"))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}

/// `linetap demo` writing to the test's InfluxDB; killed on drop.
struct Demo {
    child: Child,
    log: PathBuf,
}

impl Demo {
    fn start(dir: &Path, influx_url: &str) -> Demo {
        let log = dir.join("demo.log");
        let child = Command::new(env!("CARGO_BIN_EXE_linetap"))
            .args(["demo", "--duration", "25s"])
            .current_dir(dir)
            .env("INFLUX_URL", influx_url)
            .env("INFLUX_DATABASE", DATABASE)
            .env_remove("INFLUX_ORG")
            .env_remove("INFLUX_BUCKET")
            .env_remove("INFLUX_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("demo log"))
            .spawn()
            .expect("start linetap demo");
        Demo { child, log }
    }

    /// The exit status, once it has ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_panel_query_returns_data_from_influxdb_1x_filled_by_the_demo() {
    let dashboards = load_dashboards();
    let influx = Influx1::start();
    influx.query("", &format!("CREATE DATABASE \"{DATABASE}\""));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(dir.path(), &influx.url);

    // The demo writes every second and the agent's own records every 5 s (configs/demo.toml):
    // poll until every query returns data. Once the demo has ended, everything it will ever
    // write is in the store, so one more pass decides.
    let started = std::time::Instant::now();
    let mut last = Vec::new();
    let mut ran = 0;
    let outcome = wait_for(Duration::from_secs(90), || {
        let ended = demo.exited();
        let (failures, n) = run_all(&influx.url, &dashboards);
        ran = n;
        if failures.is_empty() {
            return Some(true);
        }
        last = failures;
        if let Some(status) = ended {
            assert!(
                status.success(),
                "linetap demo failed ({status}):\n{}",
                demo.log()
            );
            return Some(false);
        }
        None
    });
    assert!(
        outcome == Some(true),
        "{} of {ran} dashboard queries returned no data or an error (after {:.0?}, demo {}):\n{}\n\ndemo log (tail):\n{}",
        last.len(),
        started.elapsed(),
        if demo.exited().is_some() { "ended" } else { "still running" },
        last.join("\n"),
        demo.log().lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "{ran} queries of {} dashboards returned data after {:.1?}",
        dashboards.len(),
        started.elapsed()
    );
}

#[test]
fn the_structure_check_finds_mistakes() {
    let ds = serde_json::json!({"type": "influxdb", "uid": DATASOURCE_UID});
    let var = |name: &str, q: &str| serde_json::json!({"name": name, "type": "query", "datasource": ds, "query": q, "refresh": 1});
    let panel = |id: u64, x: i64, q: &str| {
        serde_json::json!({
            "id": id, "type": "timeseries", "title": format!("p{id}"), "description": "d",
            "datasource": ds, "gridPos": {"x": x, "y": 0, "w": 12, "h": 8},
            "targets": [{"refId": "A", "datasource": ds, "rawQuery": true, "resultFormat": "time_series", "query": q}]
        })
    };
    let good_query = r#"SELECT mean("x") FROM "m" WHERE "site" =~ /^$site$/ AND "line" =~ /^$line$/ AND "device" =~ /^$device$/ AND $timeFilter GROUP BY time($__interval)"#;
    let good = serde_json::json!({
        "uid": "linetap-robot", "title": "t", "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            var("site", r#"SHOW TAG VALUES WITH KEY = "site""#),
            var("line", r#"SHOW TAG VALUES WITH KEY = "line" WHERE "site" =~ /^$site$/"#),
            var("device", r#"SHOW TAG VALUES WITH KEY = "device" WHERE "line" =~ /^$line$/"#),
        ]},
        "panels": [panel(1, 0, good_query), panel(2, 12, good_query)],
    });
    let check = |json: Value| {
        structure_problems(&[Dashboard {
            file: "linetap-robot.json".into(),
            json,
        }])
    };
    assert_eq!(check(good.clone()), Vec::<String>::new());

    let mut bad = good.clone();
    bad["panels"][1]["gridPos"]["x"] = 6.into();
    bad["panels"][1]["id"] = 1.into();
    bad["panels"][0]["targets"][0]["datasource"]["uid"] = "other".into();
    bad["panels"][1]["targets"][0]["query"] = good_query
        .replace("$timeFilter", "time > now() - 1h")
        .replace("$__interval", "1m")
        .replace("$device", "$robot")
        .into();
    bad["templating"]["list"][1]["query"] =
        r#"SHOW TAG VALUES WITH KEY = "line" WHERE "device" =~ /^$device$/"#.into();
    let problems = check(bad).join("\n");
    for want in [
        "overlaps panel \"p1\"",
        "id Some(1) is missing or not unique",
        "query A: datasource",
        "does not use $timeFilter",
        "groups by a fixed time",
        "uses $robot, which is not a variable",
        "variable line refers to $device, which is not defined before it",
    ] {
        assert!(
            problems.contains(want),
            "{want:?} not found in:\n{problems}"
        );
    }
}

#[test]
fn substitution_follows_grafana() {
    let mut v = BTreeMap::new();
    v.insert("device".to_string(), "(robot\\-01|robot\\.02)".to_string());
    v.insert("line".to_string(), "weld-a".to_string());
    v.insert("__interval".to_string(), "10s".to_string());
    assert_eq!(
        substitute(
            r#""device" =~ /^$device$/ AND "line" =~ /^${line}$/ GROUP BY time($__interval), $devices"#,
            &v
        ),
        r#""device" =~ /^(robot\-01|robot\.02)$/ AND "line" =~ /^weld-a$/ GROUP BY time(10s), $devices"#
    );
    assert_eq!(escape_regex("a.b/c"), "a\\.b\\/c");
    assert_eq!(
        references(r#"/^$site$/ ${line} $__interval $5"#),
        ["site", "line", "__interval", "5"]
    );
    assert_eq!(parse_interval(">1m"), Some(Duration::from_secs(60)));
}
