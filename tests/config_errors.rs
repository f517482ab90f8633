//! `linetap check` on broken configuration files: every mistake must be reported with exit
//! status 2 and a `FILE:LINE:COLUMN: message` line that points at the offending token.
//!
//! Each case starts from one valid configuration (`BASE`), makes a single edit, and states the
//! token the error must point at as "the Nth occurrence of CONTEXT, at TOKEN inside it". The
//! expected line and column are computed from the TOML text, never written by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

/// A valid configuration: one robot with holding, bit and string points, an input-register
/// point, an InfluxDB v2 sink with its token from the environment, and a file sink.
const BASE: &str = r#"# Line 7 body shop: one robot, polled over Modbus TCP.
[line]
id = "line-7"
site = "plant-a"
tags = { shop = "body" }

[agent]
data_dir = "./data"

[buffer]
max_bytes = "64MiB"
when_full = "drop_oldest"

[sinks.influx]
type = "influxdb"
url = "http://influx.local:8086"
org = "acme"
bucket = "line7"
token_env = "INFLUX_TOKEN"

[sinks.local]
type = "file"
path = "./out.lp"

[[devices]]
id = "robot-01"
kind = "robot"
address = "10.0.3.11:502"
unit = 1
poll = "100ms"
tags = { zone = "a" }

[[devices.points]]
name = "state"
address = 0
type = "u16"

[[devices.points]]
name = "cycle_count"
address = 2
type = "u32"

[[devices.points]]
name = "e_stop"
address = 4
type = "bool"
bit = 0

[[devices.points]]
name = "program"
address = 5
type = "string"
length = 4

[[devices.points]]
name = "temperature"
table = "input"
address = 10
type = "i16"
scale = 0.1
unit = "degC"
"#;

/// A second device that reuses the id of the first one.
const SECOND_ROBOT_01: &str = r#"
[[devices]]
id = "robot-01"
address = "10.0.3.12:502"

[[devices.points]]
name = "state"
address = 0
"#;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Byte offset of the `nth` (1-based) occurrence of `needle` in `text`.
fn nth_offset(text: &str, needle: &str, nth: usize) -> usize {
    assert!(nth >= 1, "occurrences are counted from 1");
    let mut from = 0;
    for i in 1..=nth {
        match text[from..].find(needle) {
            Some(rel) if i == nth => return from + rel,
            Some(rel) => from += rel + needle.len(),
            None => panic!(
                "{needle:?} occurs only {} time(s) in the config, not {nth}:\n{text}",
                i - 1
            ),
        }
    }
    unreachable!()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// Where `token` starts inside the `nth` occurrence of `context`.
fn spot(text: &str, context: &str, nth: usize, token: &str) -> (usize, usize) {
    let ctx = nth_offset(text, context, nth);
    let rel = context
        .find(token)
        .unwrap_or_else(|| panic!("token {token:?} is not part of context {context:?}"));
    line_col(text, ctx + rel)
}

/// `text` with the single occurrence of `from` replaced by `to` (a missing or repeated `from`
/// would silently test something else, so both fail loudly).
fn edit(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(
        n, 1,
        "{from:?} must occur exactly once in the config, found {n}"
    );
    text.replacen(from, to, 1)
}

fn write_config(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_linetap"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run linetap check")
}

/// The stderr lines that are diagnostics for `path` (they start with its name).
fn diagnostics(stderr: &str, path: &Path) -> Vec<String> {
    let file = format!("{}:", path.display());
    stderr
        .lines()
        .filter(|l| l.starts_with(&file))
        .map(str::to_string)
        .collect()
}

/// Runs `linetap check` on `text` and asserts exit status 2 and exactly one diagnostic, which
/// starts with `FILE:LINE:COLUMN: ` for `at` and contains `phrase`.
fn expect_error(name: &str, text: &str, at: (usize, usize), phrase: &str) {
    let dir = TempDir::new().expect("tempdir");
    let path = write_config(&dir, name, text);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{}:{}:{}: ", path.display(), at.0, at.1);
    let context = || {
        format!(
            "case {name}: expected `{prefix}...{phrase}...`\n--- config ---\n{}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            numbered(text)
        )
    };
    assert_eq!(out.status.code(), Some(2), "exit status\n{}", context());
    let lines = diagnostics(&stderr, &path);
    assert_eq!(lines.len(), 1, "one mistake, one diagnostic\n{}", context());
    assert!(lines[0].starts_with(&prefix), "location\n{}", context());
    assert!(lines[0].contains(phrase), "message\n{}", context());
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:3} | {l}\n", i + 1))
        .collect()
}

/// One test per broken configuration: the edited text, where the error must point
/// (`nth` occurrence of `context`, at `token` inside it), and a phrase of the message.
macro_rules! broken {
    ($name:ident, $text:expr, at: ($context:expr, $nth:expr, $token:expr), says: $phrase:expr $(,)?) => {
        #[test]
        fn $name() {
            let text: String = $text;
            let at = spot(&text, $context, $nth, $token);
            expect_error(stringify!($name), &text, at, $phrase);
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The helpers themselves
// ---------------------------------------------------------------------------------------------

#[test]
fn helpers_locate_tokens() {
    let text = "a = 1\n[t]\nb = 1\nc = { b = 1 }\n";
    assert_eq!(nth_offset(text, "b = 1", 2), text.rfind("b = 1").unwrap());
    assert_eq!(spot(text, "a = 1", 1, "a"), (1, 1));
    assert_eq!(spot(text, "b = 1", 1, "1"), (3, 5));
    assert_eq!(spot(text, "b = 1", 2, "b"), (4, 7));
    assert_eq!(line_col("é\nxé = 2", 9), (2, 6));
}

// ---------------------------------------------------------------------------------------------
// The valid baseline
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_config_exits_0_and_prints_the_plan() {
    let dir = TempDir::new().unwrap();
    let path = write_config(&dir, "valid", BASE);
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(diagnostics(&stderr, &path).is_empty(), "stderr:\n{stderr}");
    assert!(
        stdout.contains("FC03"),
        "plan has no holding-register read:\n{stdout}"
    );
    assert!(
        stdout.contains("FC04"),
        "plan has no input-register read:\n{stdout}"
    );
    assert!(
        stdout.contains("\"robot-01\""),
        "plan does not name the device:\n{stdout}"
    );
    assert!(
        stdout.contains("\"line-7\""),
        "plan does not name the line:\n{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Mistakes the TOML parser reports (unknown keys, bad enum values, bad durations and sizes):
// the error points at the key or the value.
// ---------------------------------------------------------------------------------------------

// An unknown device key: the message lists the keys every device has and the Modbus ones.
broken!(
    unknown_key_in_device_lists_shared_and_kind_keys,
    edit(BASE, "unit = 1\n", "unit = 1\nunitt = 2\n"),
    at: ("unitt = 2", 1, "unitt"),
    says: "unknown field `unitt`, expected one of `points`, `id`, `kind`, `cell`, `profile`, `protocol`, `poll`, `report`, `tags`, `address`, `serial`, `unit`,",
);

broken!(
    unknown_key_in_point,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\nscaling = 2\n"),
    at: ("scaling = 2", 1, "scaling"),
    says: "unknown field `scaling`",
);

broken!(
    unknown_key_in_agent,
    edit(BASE, "data_dir = \"./data\"\n", "data_dir = \"./data\"\nlog_level = \"debug\"\n"),
    at: ("log_level = \"debug\"", 1, "log_level"),
    says: "unknown field `log_level`",
);

broken!(
    misspelled_top_level_table,
    edit(BASE, "[agent]", "[agnet]"),
    at: ("[agnet]", 1, "agnet"),
    says: "unknown field `agnet`",
);

broken!(
    unknown_table_value_holdings,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\ntable = \"holdings\"\n"),
    at: ("table = \"holdings\"", 1, "\"holdings\""),
    says: "unknown variant `holdings`, expected one of `holding`, `input`, `coil`, `discrete`",
);

broken!(
    bad_point_type,
    edit(BASE, "type = \"u32\"", "type = \"uint32\""),
    at: ("type = \"uint32\"", 1, "\"uint32\""),
    says: "unknown variant `uint32`",
);

broken!(
    bad_when_full_value,
    edit(BASE, "when_full = \"drop_oldest\"", "when_full = \"drop\""),
    at: ("when_full = \"drop\"", 1, "\"drop\""),
    says: "unknown variant `drop`, expected one of `drop_oldest`, `drop_newest`, `block`",
);

broken!(
    duration_with_unknown_unit,
    edit(BASE, "poll = \"100ms\"", "poll = \"10 parsecs\""),
    at: ("poll = \"10 parsecs\"", 1, "\"10 parsecs\""),
    says: "duration \"10 parsecs\": unknown unit",
);

broken!(
    duration_as_integer_without_unit,
    edit(BASE, "poll = \"100ms\"", "poll = 100"),
    at: ("poll = 100", 1, "100"),
    says: "a duration needs a unit",
);

// `poll = "0s"` means back to back; a zero timeout is still an error.
broken!(
    duration_of_zero,
    edit(BASE, "poll = \"100ms\"", "poll = \"100ms\"\ntimeout = \"0s\""),
    at: ("timeout = \"0s\"", 1, "\"0s\""),
    says: "duration \"0s\" must be > 0",
);

broken!(
    bad_size_in_buffer,
    edit(BASE, "max_bytes = \"64MiB\"", "max_bytes = \"64 parsecs\""),
    at: ("max_bytes = \"64 parsecs\"", 1, "\"64 parsecs\""),
    says: "size \"64 parsecs\": unknown unit \"parsecs\"",
);

broken!(
    negative_size_in_buffer,
    edit(BASE, "max_bytes = \"64MiB\"", "max_bytes = -5"),
    at: ("max_bytes = -5", 1, "-5"),
    says: "a size cannot be negative",
);

broken!(
    point_address_out_of_range,
    edit(BASE, "address = 2\n", "address = 70000\n"),
    at: ("address = 70000", 1, "70000"),
    says: "address 70000 is out of range",
);

broken!(
    point_address_not_a_number,
    edit(BASE, "address = 2\n", "address = \"0xZZ\"\n"),
    at: ("address = \"0xZZ\"", 1, "\"0xZZ\""),
    says: "address \"0xZZ\" is not a number",
);

broken!(
    sink_without_type,
    edit(BASE, "type = \"file\"\n", ""),
    at: ("[sinks.local]", 1, "[sinks.local]"),
    says: "missing field `type`",
);

// ---------------------------------------------------------------------------------------------
// Semantic mistakes found by validation: the error points at the value named in the code, or
// at the table header when something is missing.
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_line_table() {
    let text = edit(
        BASE,
        "[line]\nid = \"line-7\"\nsite = \"plant-a\"\ntags = { shop = \"body\" }\n",
        "",
    );
    // Nothing to point at: the error names the start of the file.
    let at = line_col(&text, 0);
    expect_error(
        "missing_line_table",
        &text,
        at,
        "missing required table [line]",
    );
}

broken!(
    duplicate_device_id,
    format!("{BASE}{SECOND_ROBOT_01}"),
    at: ("id = \"robot-01\"", 2, "\"robot-01\""),
    says: "duplicate device id \"robot-01\"",
);

broken!(
    device_without_address,
    edit(BASE, "address = \"10.0.3.11:502\"\n", ""),
    at: ("[[devices]]", 1, "[[devices]]"),
    says: "device \"robot-01\" needs `address` (HOST:PORT)",
);

broken!(
    device_address_without_port,
    edit(BASE, "address = \"10.0.3.11:502\"", "address = \"10.0.3.11\""),
    at: ("address = \"10.0.3.11\"", 1, "\"10.0.3.11\""),
    says: "must be HOST:PORT",
);

broken!(
    unit_out_of_range,
    edit(BASE, "unit = 1\n", "unit = 300\n"),
    at: ("unit = 300", 1, "300"),
    says: "unit must be between 0 and 255, not 300",
);

broken!(
    max_registers_over_125,
    edit(BASE, "poll = \"100ms\"\n", "poll = \"100ms\"\nmax_registers = 200\n"),
    at: ("max_registers = 200", 1, "200"),
    says: "max_registers must be between 1 and 125, not 200",
);

broken!(
    reserved_tag_in_device_tags,
    edit(BASE, "tags = { zone = \"a\" }", "tags = { zone = \"a\", device = \"r1\" }"),
    at: ("device = \"r1\"", 1, "device"),
    says: "tag \"device\" is set by linetap itself and cannot be used in device tags",
);

broken!(
    overlapping_registers,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\n\n[[devices.points]]\nname = \"speed\"\naddress = 3\n"),
    at: ("address = 3", 1, "3"),
    says: "point \"speed\" (holding 3..3) overlaps point \"cycle_count\"",
);

broken!(
    duplicate_point_name,
    edit(BASE, "name = \"cycle_count\"", "name = \"state\""),
    at: ("name = \"state\"", 2, "\"state\""),
    says: "duplicate point \"state\"",
);

broken!(
    bit_on_non_bool,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\nbit = 3\n"),
    at: ("bit = 3", 1, "3"),
    says: "`bit` needs type = \"bool\", not \"u32\"",
);

broken!(
    bit_out_of_range,
    edit(BASE, "bit = 0\n", "bit = 16\n"),
    at: ("bit = 16", 1, "16"),
    says: "bit 16 is out of range",
);

broken!(
    bool_in_holding_without_bit,
    edit(BASE, "type = \"bool\"\nbit = 0\n", "type = \"bool\"\n"),
    at: ("type = \"bool\"", 1, "\"bool\""),
    says: "a bool point in table \"holding\" needs `bit`",
);

broken!(
    non_bool_in_coil_table,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\ntable = \"coil\"\n"),
    at: ("type = \"u32\"", 1, "\"u32\""),
    says: "table \"coil\" holds bits: its points must be type \"bool\", not \"u32\"",
);

broken!(
    string_without_length,
    edit(BASE, "type = \"string\"\nlength = 4\n", "type = \"string\"\n"),
    at: ("type = \"string\"", 1, "\"string\""),
    says: "a string point needs `length`",
);

broken!(
    length_on_non_string,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\nlength = 3\n"),
    at: ("length = 3", 1, "3"),
    says: "`length` applies to strings only, not \"u32\"",
);

broken!(
    index_tag_without_count,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\nindex_tag = \"axis\"\n"),
    at: ("index_tag = \"axis\"", 1, "\"axis\""),
    says: "`index_tag` needs `count`",
);

broken!(
    reserved_index_tag,
    edit(BASE, "type = \"u32\"\n", "type = \"u32\"\ncount = 2\nindex_tag = \"device\"\n"),
    at: ("index_tag = \"device\"", 1, "\"device\""),
    says: "index_tag \"device\" cannot be used",
);

broken!(
    enum_on_f32,
    edit(BASE, "type = \"u32\"\n", "type = \"f32\"\nenum = { 0 = \"off\", 1 = \"on\" }\n"),
    at: ("enum = {", 1, "{"),
    says: "`enum` needs an integer type, not \"f32\"",
);

broken!(
    scale_on_bool,
    edit(BASE, "bit = 0\n", "bit = 0\nscale = 0.5\n"),
    at: ("scale = 0.5", 1, "0.5"),
    says: "`scale` applies to numeric types, not \"bool\"",
);

broken!(
    v2_sink_without_credentials,
    edit(BASE, "token_env = \"INFLUX_TOKEN\"\n", ""),
    at: ("[sinks.influx]", 1, "[sinks.influx]"),
    says: "sink \"influx\": the v2 API needs credentials: token_file or token_env",
);

broken!(
    literal_token_in_file,
    edit(BASE, "token_env = \"INFLUX_TOKEN\"", "token = \"s3cr3t\""),
    at: ("token = \"s3cr3t\"", 1, "\"s3cr3t\""),
    says: "a literal token in the configuration file is not allowed",
);

broken!(
    v1_key_on_v2_sink,
    edit(BASE, "token_env = \"INFLUX_TOKEN\"\n", "token_env = \"INFLUX_TOKEN\"\ndatabase = \"telemetry\"\n"),
    at: ("database = \"telemetry\"", 1, "\"telemetry\""),
    says: "`database` belongs to api = \"v1\"",
);

// ---------------------------------------------------------------------------------------------
// Several independent mistakes: all are reported, one line each, in file order.
// ---------------------------------------------------------------------------------------------

#[test]
fn several_mistakes_are_all_reported_in_file_order() {
    let mut text = BASE.to_string();
    text = edit(
        &text,
        "tags = { shop = \"body\" }",
        "tags = { shop = \"body\", site = \"x\" }",
    );
    text = edit(&text, "token_env = \"INFLUX_TOKEN\"", "token = \"s3cr3t\"");
    text = edit(&text, "unit = 1\n", "unit = 300\n");
    text = edit(&text, "bit = 0\n", "bit = 16\n");
    text = edit(
        &text,
        "type = \"string\"\nlength = 4\n",
        "type = \"string\"\n",
    );
    text.push_str(SECOND_ROBOT_01);

    // (where, phrase), in file order.
    let expected = [
        (
            spot(&text, "site = \"x\"", 1, "site"),
            "tag \"site\" is set by linetap itself and cannot be used in line tags",
        ),
        (
            spot(&text, "token = \"s3cr3t\"", 1, "\"s3cr3t\""),
            "a literal token in the configuration file is not allowed",
        ),
        (
            spot(&text, "unit = 300", 1, "300"),
            "unit must be between 0 and 255, not 300",
        ),
        (spot(&text, "bit = 16", 1, "16"), "bit 16 is out of range"),
        (
            spot(&text, "type = \"string\"", 1, "\"string\""),
            "a string point needs `length`",
        ),
        (
            spot(&text, "id = \"robot-01\"", 2, "\"robot-01\""),
            "duplicate device id \"robot-01\"",
        ),
    ];

    let dir = TempDir::new().unwrap();
    let path = write_config(&dir, "several", &text);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let lines = diagnostics(&stderr, &path);
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per mistake\n--- config ---\n{}--- stderr ---\n{stderr}",
        numbered(&text)
    );
    for (i, (((line, col), phrase), got)) in expected.iter().zip(&lines).enumerate() {
        let prefix = format!("{}:{line}:{col}: ", path.display());
        assert!(
            got.starts_with(&prefix) && got.contains(phrase),
            "mistake #{} should be `{prefix}...{phrase}...`, got `{got}`\n--- stderr ---\n{stderr}",
            i + 1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Modbus RTU: serial lines and RTU-over-TCP gateways

const RTU_DRIVE: &str = r#"
[[devices]]
id = "servo-1"
kind = "drive"
protocol = "modbus-rtu"
serial = { port = "/dev/ttyRS485-1", baud = 115200, parity = "even", data_bits = 8, stop_bits = 1 }
unit = 3
turnaround = "10ms"

[[devices.points]]
name = "speed"
address = 10
"#;

const RTU_DRIVE_2: &str = r#"
[[devices]]
id = "servo-2"
kind = "drive"
protocol = "modbus-rtu"
serial = { port = "/dev/ttyRS485-1", baud = 115200, parity = "even", data_bits = 8, stop_bits = 1 }
unit = 4

[[devices.points]]
name = "speed"
address = 10
"#;

#[test]
fn rtu_devices_are_valid_and_check_prints_the_bus_load() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_config(&dir, "rtu", &format!("{BASE}{RTU_DRIVE}{RTU_DRIVE_2}"));
    let out = Command::new(env!("CARGO_BIN_EXE_linetap"))
        .args(["check", "--config"])
        .arg(&path)
        .env("INFLUX_TOKEN", "t")
        .output()
        .expect("run linetap check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("serial /dev/ttyRS485-1 (115200 baud 8E1): 2 units"),
        "{stdout}"
    );
    // Per request: 8 + 7 bytes at 11 bits / 115200 = 1.43 ms + 2 x 1.75 ms; plus 10 ms turnaround once.
    assert!(stdout.contains("wire time 19.9 ms per cycle"), "{stdout}");
}

#[test]
fn an_overloaded_bus_is_a_warning() {
    let dir = TempDir::new().expect("tempdir");
    let slow = format!("{RTU_DRIVE}{RTU_DRIVE_2}")
        .replace("baud = 115200", "baud = 9600")
        .replace("unit = 3\n", "unit = 3\npoll = \"20ms\"\n");
    let path = write_config(&dir, "slow", &format!("{BASE}{slow}"));
    let out = Command::new(env!("CARGO_BIN_EXE_linetap"))
        .args(["check", "--config"])
        .arg(&path)
        .env("INFLUX_TOKEN", "t")
        .output()
        .expect("run linetap check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: serial /dev/ttyRS485-1 needs")
            && stderr.contains("of what 9600 baud 8E1 can carry"),
        "{stderr}"
    );
}

/// A device whose manual lists registers by reference number.
const REFERENCE_NUMBERS: &str = r#"
[[devices]]
id = "drive-7"
address = "10.0.3.17:502"

[[devices.points]]
name = "speed"
address = 40011

[[devices.points]]
name = "temperature"
table = "input"
address = 30005

[[devices.points]]
name = "current"
address = 1011
"#;

#[test]
fn reference_numbers_as_addresses_are_warnings() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_config(&dir, "refs", &format!("{BASE}{REFERENCE_NUMBERS}"));
    let out = Command::new(env!("CARGO_BIN_EXE_linetap"))
        .args(["check", "--config"])
        .arg(&path)
        .env("INFLUX_TOKEN", "t")
        .output()
        .expect("run linetap check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].starts_with("warning: device \"drive-7\" point \"speed\": address = 40011 on the holding table looks like a 4xxxx reference number: holding register 10 is address = 10"),
        "{stderr}"
    );
    assert!(
        warnings[1].starts_with("warning: device \"drive-7\" point \"temperature\": address = 30005 on the input table looks like a 3xxxx reference number: input register 4 is address = 4"),
        "{stderr}"
    );
    assert!(!stderr.contains("1011"), "{stderr}");
    // The plan counts naturally.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("): 3 points, 3 values,"), "{stdout}");
    assert!(stdout.contains("\ntotal: 2 devices,"), "{stdout}");
    let one = write_config(&dir, "one", BASE);
    let out = check(&one);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\ntotal: 1 device,"), "{stdout}");
}

// A six-digit reference number does not fit an address (0..=65535): an error that says what
// it stands for.
broken!(
    six_digit_reference_number,
    format!("{BASE}{}", edit(REFERENCE_NUMBERS, "address = 40011", "address = 400011")),
    at: ("address = 400011", 1, "400011"),
    says: "400011 looks like a 4xxxxx reference number: holding register 10 is table = \"holding\", address = 10",
);

broken!(
    rtu_without_serial,
    format!("{BASE}{}", edit(RTU_DRIVE, "serial = { port = \"/dev/ttyRS485-1\", baud = 115200, parity = \"even\", data_bits = 8, stop_bits = 1 }\n", "")),
    at: ("[[devices]]", 2, "[[devices]]"),
    says: "device \"servo-1\" uses modbus-rtu and needs `serial",
);

broken!(
    rtu_with_address,
    format!("{BASE}{}", edit(RTU_DRIVE, "unit = 3\n", "unit = 3\naddress = \"10.0.0.9:502\"\n")),
    at: ("address = \"10.0.0.9:502\"", 1, "\"10.0.0.9:502\""),
    says: "modbus-rtu devices are reached through `serial`, not `address`",
);

broken!(
    rtu_unit_zero,
    format!("{BASE}{}", edit(RTU_DRIVE, "unit = 3\n", "unit = 0\n")),
    at: ("unit = 0", 1, "0"),
    says: "unit on a serial line must be between 1 and 247, not 0",
);

broken!(
    rtu_bad_parity,
    format!("{BASE}{}", edit(RTU_DRIVE, "parity = \"even\"", "parity = \"mark\"")),
    at: ("parity = \"mark\"", 1, "\"mark\""),
    says: "parity \"mark\": use \"none\", \"even\" or \"odd\"",
);

broken!(
    rtu_bad_baud,
    format!("{BASE}{}", edit(RTU_DRIVE, "baud = 115200", "baud = 12")),
    at: ("baud = 12", 1, "12"),
    says: "baud must be between 300 and 4000000, not 12",
);

broken!(
    rtu_bad_stop_bits,
    format!("{BASE}{}", edit(RTU_DRIVE, "stop_bits = 1", "stop_bits = 3")),
    at: ("stop_bits = 3", 1, "3"),
    says: "stop_bits must be between 1 and 2, not 3",
);

broken!(
    serial_with_modbus_tcp,
    edit(BASE, "unit = 1\n", "unit = 1\nserial = { port = \"/dev/ttyS0\" }\n"),
    at: ("serial = { port = \"/dev/ttyS0\" }", 1, "{ port"),
    says: "`serial` belongs to protocol = \"modbus-rtu\"; modbus-tcp uses `address`",
);

broken!(
    rtu_over_tcp_without_address,
    format!("{BASE}{}", edit(&edit(RTU_DRIVE, "protocol = \"modbus-rtu\"", "protocol = \"modbus-rtu-over-tcp\""), "serial = { port = \"/dev/ttyRS485-1\", baud = 115200, parity = \"even\", data_bits = 8, stop_bits = 1 }\n", "")),
    at: ("[[devices]]", 2, "[[devices]]"),
    says: "device \"servo-1\" needs `address` (HOST:PORT)",
);

broken!(
    one_port_two_baud_rates,
    format!("{BASE}{RTU_DRIVE}{}", edit(RTU_DRIVE_2, "baud = 115200", "baud = 9600")),
    at: ("serial = { port", 2, "{ port"),
    says: "serial port \"/dev/ttyRS485-1\" is configured differently by device \"servo-1\"",
);

broken!(
    two_units_with_one_address_on_a_bus,
    format!("{BASE}{RTU_DRIVE}{}", edit(RTU_DRIVE_2, "unit = 4\n", "unit = 3\n")),
    at: ("unit = 3", 2, "3"),
    says: "unit 3 is already used by device \"servo-1\" on serial /dev/ttyRS485-1",
);

broken!(
    retries_out_of_range,
    format!("{BASE}{}", edit(RTU_DRIVE, "unit = 3\n", "unit = 3\nretries = 9\n")),
    at: ("retries = 9", 1, "9"),
    says: "retries must be between 0 and 5, not 9",
);

#[test]
fn the_example_line_config_in_deploy_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/etc/linetap/weld-a.toml");
    let cfg = linetap::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.line.id, "weld-a");
    assert_eq!(cfg.devices.len(), 2);
    assert_eq!(cfg.sinks.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Bytes, half floats and string layouts
// ---------------------------------------------------------------------------------------------

broken!(
    byte_on_a_u16,
    edit(BASE, "type = \"u16\"\n", "type = \"u16\"\nbyte = \"high\"\n"),
    at: ("byte = \"high\"", 1, "\"high\""),
    says: "`byte` applies to u8, i8 and strings (one character per register), not \"u16\"",
);

broken!(
    order_on_a_u8,
    edit(BASE, "type = \"u16\"\n", "type = \"u8\"\norder = \"BADC\"\n"),
    at: ("order = \"BADC\"", 1, "\"BADC\""),
    says: "a u8 / i8 takes one byte: choose it with `byte`, not `order`",
);

broken!(
    word_swapped_string,
    edit(BASE, "length = 4\n", "length = 4\norder = \"CDAB\"\n"),
    at: ("order = \"CDAB\"", 1, "\"CDAB\""),
    says: "a string takes order \"ABCD\" (high byte first) or \"BADC\" (low byte first)",
);

broken!(
    string_with_byte_and_order,
    edit(BASE, "length = 4\n", "length = 4\nbyte = \"low\"\norder = \"BADC\"\n"),
    at: ("order = \"BADC\"", 1, "\"BADC\""),
    says: "a string with `byte` has one character per register: `order` does not apply",
);

broken!(
    bad_byte_value,
    edit(BASE, "type = \"u16\"\n", "type = \"u8\"\nbyte = \"middle\"\n"),
    at: ("byte = \"middle\"", 1, "\"middle\""),
    says: "unknown variant `middle`, expected `low` or `high`",
);

/// Two u8 halves of one register, an i8, an f16 and the three string layouts: valid, and
/// `check` shows how each is read.
#[test]
fn bytes_halves_and_strings_are_valid_and_shown() {
    let text = edit(
        BASE,
        "[[devices.points]]\nname = \"temperature\"",
        "[[devices.points]]\nname = \"mode\"\naddress = 20\ntype = \"u8\"\nbyte = \"high\"\n\n\
         [[devices.points]]\nname = \"submode\"\naddress = 20\ntype = \"u8\"\n\n\
         [[devices.points]]\nname = \"offset_steps\"\naddress = 21\ntype = \"i8\"\nbyte = \"low\"\n\n\
         [[devices.points]]\nname = \"load\"\naddress = 22\ntype = \"f16\"\norder = \"BADC\"\n\n\
         [[devices.points]]\nname = \"model\"\naddress = 23\ntype = \"string\"\nlength = 4\norder = \"BADC\"\n\n\
         [[devices.points]]\nname = \"serial\"\naddress = 27\ntype = \"string\"\nlength = 8\nbyte = \"low\"\n\n\
         [[devices.points]]\nname = \"temperature\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "types.toml", &text);
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shown in [
        "holding 20 u8 high byte",
        "holding 20 u8 low byte",
        "holding 21 i8 low byte",
        "holding 22 f16 BADC",
        "holding 23 string(4 registers) BADC (low byte first)",
        "holding 27 string(8 registers) one character per register, low byte",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not in:\n{stdout}");
    }
}

// ---------------------------------------------------------------------------------------------
// Profiles, derived points, report by exception, derivations
// ---------------------------------------------------------------------------------------------

broken!(
    unknown_profile,
    edit(BASE, "kind = \"robot\"\n", "kind = \"robot\"\nprofile = \"ur10\"\n"),
    at: ("profile = \"ur10\"", 1, "\"ur10\""),
    says: "unknown profile \"ur10\"; available: cia402-statusword, delta-asda",
);

broken!(
    a_profile_of_another_kinds_devices,
    edit(BASE, "kind = \"robot\"\n", "kind = \"robot\"\nprofile = \"ur-rtde\"\n"),
    at: ("profile = \"ur-rtde\"", 1, "\"ur-rtde\""),
    says: "profile \"ur-rtde\" is for RTDE devices (protocol = \"rtde\"), not for Modbus devices",
);

/// An RTDE robot before the Modbus one, with `points` as its points.
fn with_robot(device: &str, points: &str) -> String {
    edit(
        BASE,
        "[[devices]]\nid = \"robot-01\"",
        &format!("[[devices]]\nid = \"ur-01\"\nprotocol = \"rtde\"\naddress = \"10.0.3.12\"\n{device}\n{points}\n[[devices]]\nid = \"robot-01\""),
    )
}

broken!(
    an_rtde_field_typo_names_the_closest_field,
    with_robot("", "[[devices.points]]\nname = \"q\"\nrtde = \"actual_qq\"\ncount = 6\n"),
    at: ("rtde = \"actual_qq\"", 1, "\"actual_qq\""),
    says: "\"actual_qq\" is not an RTDE output field linetap knows (did you mean \"actual_q\"?)",
);

broken!(
    an_rtde_frequency_above_500,
    with_robot("frequency = 600", "[[devices.points]]\nname = \"q\"\nrtde = \"actual_q\"\ncount = 6\n"),
    at: ("frequency = 600", 1, "600"),
    says: "frequency 600 Hz: RTDE streams at most 500 Hz (e-Series) or 125 Hz (CB3)",
);

broken!(
    an_rtde_vector_needs_its_count_or_an_element,
    with_robot("", "[[devices.points]]\nname = \"q\"\nrtde = \"actual_q\"\n"),
    at: ("rtde = \"actual_q\"", 1, "\"actual_q\""),
    says: "\"actual_q\" is a VECTOR6D of 6 values: give `count = 6` and `index_tag = \"axis\"` for all of them, or `element = N` for one",
);

broken!(
    an_rtde_bit_of_a_double,
    with_robot("", "[[devices.points]]\nname = \"s\"\nrtde = \"speed_scaling\"\nbit = 3\n"),
    at: ("bit = 3", 1, "3"),
    says: "`bit` selects a bit of an integer field; \"speed_scaling\" is not one",
);

broken!(
    a_modbus_key_on_an_rtde_point,
    with_robot("", "[[devices.points]]\nname = \"s\"\nrtde = \"speed_scaling\"\naddress = 3\n"),
    at: ("address = 3", 1, "3"),
    says: "`address` belongs to points of Modbus devices",
);

/// An OPC UA device before the Modbus one, with `device` keys and `points`.
fn with_ua(device: &str, points: &str) -> String {
    edit(
        BASE,
        "[[devices]]\nid = \"robot-01\"",
        &format!("[[devices]]\nid = \"ua-01\"\nprotocol = \"opcua\"\nendpoint = \"opc.tcp://10.0.3.15:4840\"\n{device}\n{points}\n[[devices]]\nid = \"robot-01\""),
    )
}

broken!(
    an_opcua_node_id_with_bad_syntax,
    with_ua("", "[[devices.points]]\nname = \"speed\"\nnode = \"ns=2:s=Spindle.Speed\"\n"),
    at: ("node = \"ns=2:s=Spindle.Speed\"", 1, "\"ns=2:s=Spindle.Speed\""),
    says: "\"ns=2:s=Spindle.Speed\": no ';' after the namespace index: a NodeId is ns=INDEX;TYPE=VALUE",
);

broken!(
    an_opcua_security_policy_typo,
    with_ua("security_policy = \"Basic256Sha265\"", "[[devices.points]]\nname = \"speed\"\nnode = \"ns=2;s=Speed\"\n"),
    at: ("security_policy = \"Basic256Sha265\"", 1, "\"Basic256Sha265\""),
    says: "unknown security_policy \"Basic256Sha265\" (did you mean \"Basic256Sha256\"?)",
);

broken!(
    an_opcua_robotics_scope_typo,
    with_ua("profile = \"opcua-robotics\"", "[[devices.points]]\nname = \"load\"\nrobotics = \"Axis/EffectiveLoadRate\"\n"),
    at: ("robotics = \"Axis/EffectiveLoadRate\"", 1, "\"Axis/EffectiveLoadRate\""),
    says: "unknown robotics scope \"Axis\" (did you mean \"Axes\"?)",
);

broken!(
    an_opcua_robotics_count_on_one_value,
    with_ua("", "[[devices.points]]\nname = \"mode\"\nrobotics = \"SafetyStates/OperationalMode\"\ncount = 3\n"),
    at: ("robotics = \"SafetyStates/OperationalMode\"", 1, "\"SafetyStates/OperationalMode\""),
    says: "robotics = \"SafetyStates/OperationalMode\" is one value: `count` applies to Axes/… and PowerTrains/…",
);

broken!(
    an_opcua_path_not_from_objects,
    with_ua("", "[[devices.points]]\nname = \"speed\"\npath = \"DeviceSet/Spindle/Speed\"\n"),
    at: ("path = \"DeviceSet/Spindle/Speed\"", 1, "\"DeviceSet/Spindle/Speed\""),
    says: "a path starts at Objects (or Types, Views)",
);

broken!(
    an_opcua_password_in_the_file,
    with_ua("username = \"linetap\"\npassword = \"secret\"", "[[devices.points]]\nname = \"speed\"\nnode = \"ns=2;s=Speed\"\n"),
    at: ("password = \"secret\"", 1, "\"secret\""),
    says: "a password in the file is not allowed: use password_file",
);

broken!(
    expression_syntax_error_points_at_its_character,
    edit(
        BASE,
        "[[devices.points]]\nname = \"temperature\"",
        "[[devices.points]]\nname = \"speed_pct\"\nexpr = \"state * / 2\"\n\n[[devices.points]]\nname = \"temperature\"",
    ),
    at: ("expr = \"state * / 2\"", 1, "/ 2"),
    says: "unexpected '/' where a value was expected",
);

broken!(
    expression_reads_an_unknown_point,
    edit(
        BASE,
        "[[devices.points]]\nname = \"temperature\"",
        "[[devices.points]]\nname = \"speed_pct\"\nexpr = \"speed_raw / 10\"\n\n[[devices.points]]\nname = \"temperature\"",
    ),
    at: ("expr = \"speed_raw / 10\"", 1, "\"speed_raw"),
    says: "point \"speed_pct\" reads \"speed_raw\", which is not a point of this device",
);

broken!(
    states_without_from,
    edit(
        BASE,
        "[[devices.points]]\nname = \"temperature\"",
        "[[devices.points]]\nname = \"mode\"\nstates = [{ value = 1, code = 3, label = \"running\" }]\n\n[[devices.points]]\nname = \"temperature\"",
    ),
    at: ("states = [", 1, "["),
    says: "`states` needs `from`",
);

broken!(
    derived_point_with_an_address,
    edit(
        BASE,
        "[[devices.points]]\nname = \"temperature\"",
        "[[devices.points]]\nname = \"ready\"\nfrom = \"state\"\nbit = 2\naddress = 9\n\n[[devices.points]]\nname = \"temperature\"",
    ),
    at: ("address = 9", 1, "9"),
    says: "is derived (`from` / `expr`): it has no registers, so `address` does not apply",
);

broken!(
    alarm_on_a_float,
    edit(BASE, "name = \"cycle_count\"\naddress = 2\ntype = \"u32\"\n", "name = \"cycle_count\"\naddress = 2\ntype = \"f32\"\nalarm = true\n"),
    at: ("alarm = true", 1, "true"),
    says: "`alarm` marks an integer alarm or error code",
);

broken!(
    report_min_interval_above_max_interval,
    edit(BASE, "[agent]\n", "[report]\nmin_interval = \"10s\"\nmax_interval = \"5s\"\n\n[agent]\n"),
    at: ("min_interval = \"10s\"", 1, "\"10s\""),
    says: "min_interval (10s) is longer than max_interval (5s)",
);

broken!(
    unknown_counter_kind,
    edit(BASE, "name = \"cycle_count\"\naddress = 2\n", "name = \"cycle_count\"\naddress = 2\ncounter = \"parts\"\n"),
    at: ("counter = \"parts\"", 1, "\"parts\""),
    says: "the only kind is \"cycles\"",
);

/// A profile file beside the configuration with a mistake: the error names the profile file,
/// line and column, and the device's `profile` key says the profile has errors.
#[test]
fn errors_in_a_profile_file_point_into_it() {
    let dir = TempDir::new().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    let profile = "[profile]\nname = \"acme-drive\"\nkind = \"drive\"\n\n[[points]]\nname = \"speed\"\naddress = 0x10\ntype = \"i32\"\norder = \"CDBA\"\n";
    let profile_path = dir.path().join("profiles").join("acme-drive.toml");
    std::fs::write(&profile_path, profile).unwrap();
    let text = edit(
        BASE,
        "kind = \"robot\"\n",
        "kind = \"robot\"\nprofile = \"acme-drive\"\n",
    );
    let path = write_config(&dir, "line", &text);
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let (l, c) = spot(profile, "order = \"CDBA\"", 1, "\"CDBA\"");
    let want = format!("{}:{l}:{c}: ", profile_path.display());
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with(&want) && line.contains("unknown variant `CDBA`")),
        "want {want}...unknown variant in:\n{stderr}"
    );
    let (l, c) = spot(&text, "profile = \"acme-drive\"", 1, "\"acme-drive\"");
    let want = format!("{}:{l}:{c}: ", path.display());
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with(&want) && line.contains("has errors")),
        "want {want}...has errors in:\n{stderr}"
    );
}

/// A device of the UR profile: its whole map in two requests, its own points added, a profile
/// point replaced key by key (here: its report setting), and derived and hidden points shown.
#[test]
fn a_profile_device_is_planned_in_the_fewest_requests() {
    let text = edit(
        BASE,
        "[[devices]]\nid = \"robot-01\"\nkind = \"robot\"\naddress = \"10.0.3.11:502\"\nunit = 1\npoll = \"100ms\"\ntags = { zone = \"a\" }\n",
        "[[devices]]\nid = \"ur-07\"\nprofile = \"ur\"\naddress = \"10.0.3.17:502\"\n\n\
         [[devices.points]]\nname = \"temperature\"\nmeasurement = \"joint\"\nreport = { deadband = 0.5 }\n\n\
         [[devices]]\nid = \"robot-01\"\nkind = \"robot\"\naddress = \"10.0.3.11:502\"\nunit = 1\npoll = \"100ms\"\ntags = { zone = \"a\" }\n",
    );
    let dir = TempDir::new().expect("tempdir");
    let path = write_config(&dir, "ur", &text);
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ur: String = stdout
        .split("\ndevice ")
        .find(|d| d.starts_with("\"ur-07\""))
        .expect("the UR device in the plan")
        .to_string();
    for shown in [
        "(robot, profile ur, modbus-tcp 10.0.3.17:502 unit 1)",
        "every 1s: 2 requests",
        "FC03 holding  start   258 count   68",
        "FC03 holding  start   400 count   16",
        "point state                    = emergency_stop",
        "angle_in_revolution      holding 270 u16 x6 (axis=1..6) (hidden",
        "point position                 = angle_in_revolution / 1000 + 2 * pi * revolutions f64 x6",
        "temperature              holding 300 u16 x6 (axis=1..6) as float -> joint.temperature, on change beyond 0.5",
    ] {
        assert!(ur.contains(shown), "{shown:?} not in:\n{ur}");
    }
}

#[test]
fn sink_names_that_share_a_file_name() {
    // `local.b` (a quoted key) and `local_b` map to one cursor and dead-letter file name.
    let text = format!(
        "{BASE}\n[sinks.\"local.b\"]\ntype = \"file\"\npath = \"./b.lp\"\n\n[sinks.local_b]\ntype = \"file\"\npath = \"./c.lp\"\n"
    );
    let at = spot(&text, "[sinks.local_b]", 1, "local_b");
    expect_error(
        "sink_names_that_share_a_file_name",
        &text,
        at,
        "would share their buffer position and dead-letter file (local_b)",
    );
}

// ---------------------------------------------------------------------------------------------
// Sparkplug host keys
// ---------------------------------------------------------------------------------------------

const SPARKPLUG_DEVICE: &str = "\n[brokers.plant]\nurl = \"mqtt://127.0.0.1:1883\"\n\n\
     [[devices]]\nid = \"r7\"\nprotocol = \"mqtt\"\nbroker = \"plant\"\nformat = \"sparkplug-b\"\n\
     sparkplug = { group = \"weld\", node = \"edge\", device = \"R7\" }\n";

broken!(
    sparkplug_host_id_with_a_slash,
    edit(
        &format!("{BASE}{SPARKPLUG_DEVICE}"),
        "url = \"mqtt://127.0.0.1:1883\"\n",
        "url = \"mqtt://127.0.0.1:1883\"\nsparkplug_host_id = \"scada/1\"\n"
    ),
    at: ("sparkplug_host_id = \"scada/1\"", 1, "\"scada/1\""),
    says: "sparkplug_host_id \"scada/1\": not empty, and without +, / or #",
);

broken!(
    max_metrics_zero,
    format!("{BASE}{SPARKPLUG_DEVICE}max_metrics = 0\n"),
    at: ("max_metrics = 0", 1, "0"),
    says: "max_metrics must be between 1 and 1000000",
);

broken!(
    max_metrics_on_a_modbus_device,
    edit(BASE, "poll = \"100ms\"\n", "poll = \"100ms\"\nmax_metrics = 10\n"),
    at: ("max_metrics = 10", 1, "10"),
    says: "`max_metrics` belongs to MQTT devices",
);

// ---------------------------------------------------------------------------------------------
// One type per field (`as_float`, and the warning when two devices disagree)
// ---------------------------------------------------------------------------------------------

broken!(
    as_float_on_a_string,
    edit(BASE, "length = 4\n", "length = 4\nas_float = true\n"),
    at: ("as_float = true", 1, "true"),
    says: "`as_float` writes a number as a float, not a \"string\"",
);

broken!(
    as_float_with_an_enum,
    edit(
        BASE,
        "name = \"state\"\naddress = 0\ntype = \"u16\"\n",
        "name = \"state\"\naddress = 0\ntype = \"u16\"\nas_float = true\nenum = { 0 = \"idle\" }\n",
    ),
    at: ("enum = {", 1, "{"),
    says: "`enum` cannot be combined with scale, offset or as_float",
);

broken!(
    as_float_on_a_derived_point,
    format!("{BASE}\n[[devices.points]]\nname = \"stopped\"\nfrom = \"state\"\nbit = 3\nas_float = true\n"),
    at: ("as_float = true", 1, "true"),
    says: "point \"stopped\" is derived (`from` / `expr`): it has no registers, so `as_float` does not apply",
);

/// Two robots write `robot.cycle_count` with different types: `check` names the field, both
/// devices and a way out, and still exits 0 (VictoriaMetrics and files take both); `as_float`
/// on the integer one silences it.
#[test]
fn a_field_written_with_two_types_is_a_warning_until_as_float_settles_it() {
    let second =
        "\n[[devices]]\nid = \"robot-02\"\nkind = \"robot\"\naddress = \"10.0.3.12:502\"\n\n\
                  [[devices.points]]\nname = \"cycle_count\"\naddress = 2\ntype = \"f32\"\n\n\
                  [[devices.points]]\nname = \"state\"\naddress = 0\ntype = \"u16\"\n";
    let dir = TempDir::new().expect("tempdir");
    let path = write_config(&dir, "types", &format!("{BASE}{second}"));
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: field"))
        .collect();
    assert_eq!(
        warnings,
        ["warning: field \"cycle_count\" of measurement \"robot\" is written as a float by device \"robot-02\" (point \"cycle_count\", f32) and as an integer by device \"robot-01\" (point \"cycle_count\", u32): InfluxDB keeps one type per field and refuses the lines of the other; give these points one type (`as_float = true` writes an integer point as a float)"],
        "{stderr}"
    );
    let settled = edit(
        BASE,
        "address = 2\ntype = \"u32\"\n",
        "address = 2\ntype = \"u32\"\nas_float = true\n",
    );
    let path = write_config(&dir, "settled", &format!("{settled}{second}"));
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning: field"), "{stderr}");
}
