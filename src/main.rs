//! The `linetap` command line: parses arguments and calls into the library.

use clap::{Parser, Subcommand, ValueEnum};
use linetap::{check, config, run, sim};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "linetap",
    version,
    about = "Telemetry edge agent for robot production lines"
)]
struct Cli {
    /// Log format: text, or json (one JSON object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of the largest variant (probe's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: poll, normalize, deliver. Stops cleanly on SIGTERM/SIGINT; SIGHUP
    /// reloads the file (only what changed restarts; an invalid file keeps the running
    /// configuration).
    Run {
        /// The line's configuration file (e.g. /etc/linetap/weld-a.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and print the plan (devices, points, requests per cycle).
    /// Exit 0 when valid (warnings on stderr), 2 with every error as FILE:LINE:COLUMN.
    Check {
        /// The line's configuration file (e.g. /etc/linetap/weld-a.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Also reach every Modbus, RTDE and OPC UA device once, as `linetap probe` would (an RTDE
        /// robot sets its recipe up: a field it lacks or a frequency it refuses is named), and
        /// say per device what it answered; exits 1 when any did not.
        #[arg(long)]
        connect: bool,
    },
    /// The embedded demo: a simulated robot cell, the agent, and a local line-protocol file
    /// (./linetap-out/demo.lp, buffered in ./linetap-data, both in the current directory),
    /// with a live view of the devices' states, alarm episodes and availability.
    Demo {
        /// Stop after this long (e.g. "30s") instead of waiting for Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Read the cell's two robots over RTDE at 125 Hz (profile ur-rtde) instead of their
        /// Modbus server (./linetap-out/demo-rtde.lp).
        #[arg(long, conflicts_with = "opcua")]
        rtde: bool,
        /// Run a line of two robot controllers serving OPC UA for Robotics (OPC 40010, profile
        /// opcua-robotics, found by browsing) instead (./linetap-out/demo-opcua.lp).
        #[arg(long)]
        opcua: bool,
    },
    /// Serve the simulated devices a configuration describes (Modbus TCP, RTU on the `serial.port`
    /// device or pty, RTU over TCP, a UR controller's RTDE server for `rtde` devices), and
    /// publish its MQTT devices to their brokers. Reads
    /// commands on stdin:
    /// `fault DEVICE none|silent|drop|slow 300ms|exception 4|badcrc|garbage|chunked 16ms`.
    Simulate {
        /// The configuration whose devices to serve.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read every point of one device once and print a table (point, raw registers or field or
    /// node, value as the sinks write it, unit, label): a config's device (`--config FILE
    /// --device ID`: Modbus, RTDE or OPC UA), a profile at an address (`--profile NAME
    /// --address HOST:PORT`, or `--serial PORT --baud N` for RTU), or a Universal Robots
    /// controller over RTDE (`--rtde HOST`, profile ur-rtde). Or, with `--read TABLE START
    /// COUNT`, read registers with no point at all and print each in the common decodings; with
    /// `--opcua ENDPOINT [--path P] [--depth N]`, browse an OPC UA server. Exit 0 when every
    /// point (or the read) answered, 1 when any did not (the error on stderr), 2 for a usage
    /// error.
    Probe {
        /// Modbus TCP address HOST:PORT (overrides the config's); with
        /// `--protocol modbus-rtu-over-tcp`, a serial device server's.
        #[arg(long)]
        address: Option<String>,
        /// modbus-tcp (default with --address) or modbus-rtu-over-tcp (RTU frames to a serial
        /// device server at --address); --serial means modbus-rtu.
        #[arg(long, conflicts_with_all = ["config", "device"])]
        protocol: Option<String>,
        /// Unit id (overrides the config's; default 1).
        #[arg(long)]
        unit: Option<u8>,
        /// A profile to read (built in, or NAME.toml in --profiles-dir).
        #[arg(long, conflicts_with_all = ["config", "device"])]
        profile: Option<String>,
        /// Where profile files are (with --profile).
        #[arg(long, requires = "profile")]
        profiles_dir: Option<PathBuf>,
        /// A configuration file (with --device).
        #[arg(long, short, requires = "device")]
        config: Option<PathBuf>,
        /// The device of --config to read.
        #[arg(long, requires = "config")]
        device: Option<String>,
        /// Serial port for Modbus RTU (e.g. /dev/ttyRS485-1).
        #[arg(long, conflicts_with_all = ["config", "device"])]
        serial: Option<String>,
        /// Baud rate of --serial.
        #[arg(long, default_value_t = 19200)]
        baud: u32,
        /// Parity of --serial: none, even or odd.
        #[arg(long, default_value = "even")]
        parity: String,
        /// Response timeout (e.g. "1s"; default the config's, or 500ms).
        #[arg(long)]
        timeout: Option<String>,
        /// NAME=ADDRESS: the address of a profile point the device gives (with --profile),
        /// e.g. --point statusword=0x6041 for cia402-statusword; with --rtde, NAME=FIELD adds
        /// a point reading an RTDE output field (e.g. --point cycles=output_int_register_24).
        #[arg(long = "point", value_name = "NAME=ADDRESS")]
        points: Vec<String>,
        /// A Universal Robots controller's RTDE server, HOST or HOST:PORT (default port
        /// 30004): sets the profile's recipe up (default ur-rtde), reads one package, prints it.
        #[arg(long, value_name = "HOST[:PORT]", conflicts_with_all = ["address", "serial", "config", "device", "read", "protocol", "unit"])]
        rtde: Option<String>,
        /// An OPC UA server, opc.tcp://HOST:PORT: browse it (no security, anonymous) and print
        /// node id, browse path, data type and value of every variable under --path, to
        /// --depth levels, to write points from; with --profile opcua-robotics, read the
        /// points that profile would write of each OPC 40010 motion device found.
        #[arg(long, value_name = "ENDPOINT", conflicts_with_all = ["address", "serial", "config", "device", "read", "protocol", "unit", "rtde"])]
        opcua: Option<String>,
        /// With --opcua: where to start, a browse path (default Objects), e.g.
        /// "Objects/DeviceSet".
        #[arg(long, requires = "opcua")]
        path: Option<String>,
        /// With --opcua: how many levels below --path.
        #[arg(long, requires = "opcua", default_value_t = 4)]
        depth: usize,
        /// Read COUNT registers (or bits) of TABLE (holding, input, coils, discrete) from the
        /// 0-based address START, once, and print each register as u16, i16, hex and ASCII
        /// and each pair as f32, u32 and i32 in the four word orders; no profile or point
        /// needed (e.g. --read holding 0 18).
        #[arg(long, num_args = 3, value_names = ["TABLE", "START", "COUNT"], conflicts_with = "profile")]
        read: Option<Vec<String>>,
    },
    /// List the device profiles (built in and in the profiles directory) with their sources,
    /// or print one profile's file (`--show NAME`) to copy and adapt.
    Profiles {
        /// A configuration file whose `[agent] profiles_dir` (or `profiles/` beside it) to list.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print this profile's TOML.
        #[arg(long, value_name = "NAME")]
        show: Option<String>,
    },
    /// Write the man pages (roff) generated from these definitions into DIR: linetap.1 and
    /// one linetap-COMMAND.1 per command (used to package them).
    #[command(hide = true)]
    Man {
        /// Where to write the pages.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    linetap::observe::logging::init(cli.log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("linetap: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match cli.command {
        Command::Man { dir } => match write_man_pages(&dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("linetap man: {}: {e}", dir.display());
                1
            }
        },
        Command::Check { config, connect } => match config::load(&config) {
            Ok(cfg) => {
                out(&check::render_plan(&cfg));
                for w in check::warnings(&cfg) {
                    eprintln!("warning: {w}");
                }
                if connect {
                    let (text, all_ok) = runtime.block_on(check::connect(&cfg));
                    out(&text);
                    i32::from(!all_ok)
                } else {
                    0
                }
            }
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
        },
        Command::Profiles { config, show } => profiles(config.as_deref(), show.as_deref()),
        Command::Probe {
            address,
            protocol,
            unit,
            profile,
            profiles_dir,
            config,
            device,
            serial,
            baud,
            parity,
            timeout,
            points,
            read,
            rtde,
            opcua,
            path,
            depth,
        } => {
            let opcua_profile = opcua.as_ref().zip(profile.as_ref());
            if let (Some(endpoint), None) = (&opcua, &profile) {
                return ExitCode::from(probe_opcua(
                    &runtime,
                    endpoint,
                    path.as_deref(),
                    depth,
                    timeout.as_deref(),
                ) as u8);
            }
            let link = LinkArgs {
                address: address.as_deref(),
                protocol: protocol.as_deref(),
                serial: serial.as_deref(),
                baud,
                parity: &parity,
                unit,
                timeout: timeout.as_deref(),
            };
            if let Some(read) = read {
                return ExitCode::from(probe_read(&runtime, &read, config, device, &link) as u8);
            }
            if !points.is_empty() && profile.is_none() && rtde.is_none() {
                eprintln!("linetap probe: --point gives a point of --profile (or of --rtde)");
                return ExitCode::from(2);
            }
            // A configured device's data directory (an OPC UA device's certificates).
            let mut data_dir: Option<std::path::PathBuf> = None;
            let target = match (rtde, profile.clone(), config, device) {
                _ if opcua_profile.is_some() => match opcua_profile {
                    Some((endpoint, p)) => probe_opcua_profile(
                        endpoint,
                        p,
                        profiles_dir.as_deref(),
                        timeout.as_deref(),
                    ),
                    None => Err("--opcua with --profile".into()),
                },
                (Some(r), p, _, _) => probe_rtde(
                    &r,
                    p.as_deref().unwrap_or("ur-rtde"),
                    profiles_dir.as_deref(),
                    timeout.as_deref(),
                    &points,
                ),
                (None, Some(p), _, _) => probe_profile(&p, profiles_dir.as_deref(), &link, &points),
                (None, None, Some(c), Some(d)) => {
                    probe_config(&c, &d, address.as_deref(), unit, timeout.as_deref())
                        .map(|(d, data)| {
                            data_dir = Some(data);
                            d
                        })
                }
                _ => Err(
                    "give --profile NAME with --address or --serial, --rtde HOST, --config FILE --device ID, or --read TABLE START COUNT with --address or --serial"
                        .to_string(),
                ),
            };
            match target {
                Err(e) => {
                    eprintln!("linetap probe: {e}");
                    2
                }
                Ok(d) => match runtime.block_on(linetap::probe::probe(&d, data_dir.as_deref())) {
                    Ok(p) => {
                        out(&p.table);
                        if p.failed.is_empty() {
                            0
                        } else {
                            eprintln!(
                                "linetap probe: {} of {} point{} without a value ({} of {} request{} answered): {}",
                                p.failed.len(),
                                p.points,
                                if p.points == 1 { "" } else { "s" },
                                p.answered,
                                p.requests,
                                if p.requests == 1 { "" } else { "s" },
                                p.failed
                                    .iter()
                                    .map(|(name, why)| format!("{name}: {why}"))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            );
                            1
                        }
                    }
                    Err(e) => {
                        eprintln!("linetap probe: device {:?} did not answer: {e}", d.id);
                        1
                    }
                },
            }
        }
        Command::Run { config } => match config::load(&config) {
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
            Ok(cfg) => runtime.block_on(run_agent(&config, cfg)),
        },
        Command::Demo {
            duration,
            rtde,
            opcua,
        } => {
            let duration = match duration
                .map(|d| config::units::parse_duration(&d))
                .transpose()
            {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("linetap demo: --duration: {e}");
                    return ExitCode::from(2);
                }
            };
            let line = match (rtde, opcua) {
                (true, _) => sim::demo::DemoLine::Rtde,
                (_, true) => sim::demo::DemoLine::Opcua,
                _ => sim::demo::DemoLine::Modbus,
            };
            runtime.block_on(sim::demo::run(duration, line))
        }
        Command::Simulate { config } => match config::load(&config) {
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
            Ok(cfg) => runtime.block_on(simulate(cfg)),
        },
    };
    ExitCode::from(code as u8)
}

/// `linetap profiles`: every profile with its origin and source, or one profile's text.
fn profiles(config: Option<&std::path::Path>, show: Option<&str>) -> i32 {
    let dir = match config {
        Some(c) => match config::load(c) {
            Ok(cfg) => cfg.agent.profiles_dir,
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
        None => None,
    };
    let (all, errors) = config::profiles::available(dir.as_deref());
    for (file, e) in errors {
        eprintln!("warning: {file}: {e}");
    }
    if let Some(name) = show {
        return match all.get(name) {
            Some(p) => {
                out(&p.text);
                0
            }
            None => {
                eprintln!(
                    "linetap profiles: no profile {name:?}; available: {}",
                    all.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                2
            }
        };
    }
    let mut text = String::new();
    for p in all.values() {
        let (kind, description, source) = config::profiles::summary(p);
        let origin = if p.builtin {
            "built-in".to_string()
        } else {
            p.file.clone()
        };
        text.push_str(&format!("{:<20} {:<6} {origin}\n", p.name, kind));
        if !description.is_empty() {
            text.push_str(&format!("    {description}\n"));
        }
        if !source.is_empty() {
            text.push_str(&format!("    source: {source}\n"));
        }
    }
    out(&text);
    0
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The device `--config FILE --device ID` names, with the flags' overrides.
fn probe_config(
    path: &std::path::Path,
    id: &str,
    address: Option<&str>,
    unit: Option<u8>,
    timeout: Option<&str>,
) -> Result<(config::DeviceConfig, std::path::PathBuf), String> {
    let cfg = config::load(path).map_err(|e| e.to_string())?;
    let data_dir = cfg.agent.data_dir.clone();
    let mut d = cfg
        .devices
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| format!("{} has no device {id:?}", path.display()))?;
    let Some(m) = d.settings::<config::ModbusDevice>() else {
        return Ok((d, data_dir));
    };
    let mut m = m.clone();
    if let Some(a) = address {
        m.address = a.to_string();
    }
    if let Some(u) = unit {
        m.unit = u;
    }
    if let Some(t) = timeout {
        m.timeout = config::units::parse_duration(t)?;
    }
    d.settings = config::Settings::new(m);
    Ok((d, data_dir))
}

/// How probe reaches a device given on the command line.
struct LinkArgs<'a> {
    address: Option<&'a str>,
    protocol: Option<&'a str>,
    serial: Option<&'a str>,
    baud: u32,
    parity: &'a str,
    unit: Option<u8>,
    timeout: Option<&'a str>,
}

impl LinkArgs<'_> {
    /// The `[[devices]]` keys that reach the device: `address` (and `protocol`), or `serial`.
    fn device_keys(&self) -> Result<String, String> {
        let mut keys = match (self.address, self.serial) {
            (Some(a), None) => match self.protocol {
                None | Some("modbus-tcp") => format!("address = {a:?}\n"),
                Some("modbus-rtu-over-tcp") => {
                    format!("protocol = \"modbus-rtu-over-tcp\"\naddress = {a:?}\n")
                }
                Some(p) => {
                    return Err(format!(
                        "--protocol {p:?}: with --address it is modbus-tcp or modbus-rtu-over-tcp (for a serial port use --serial)"
                    ))
                }
            },
            (None, Some(port)) => {
                if self.protocol.is_some_and(|p| p != "modbus-rtu") {
                    return Err("--serial is Modbus RTU: leave out --protocol".into());
                }
                if !["none", "even", "odd"].contains(&self.parity) {
                    return Err(format!(
                        "--parity {:?}: none, even or odd",
                        self.parity
                    ));
                }
                format!(
                    "protocol = \"modbus-rtu\"\nserial = {{ port = {port:?}, baud = {}, parity = {:?} }}\n",
                    self.baud, self.parity
                )
            }
            (Some(_), Some(_)) => return Err("give either --address HOST:PORT or --serial PORT, not both".into()),
            (None, None) => return Err("give either --address HOST:PORT or --serial PORT".into()),
        };
        keys.push_str(&format!("unit = {}\n", self.unit.unwrap_or(1)));
        if let Some(t) = self.timeout {
            if let Err(e) = config::units::parse_duration(t) {
                return Err(format!("--timeout {t:?}: {e}"));
            }
            keys.push_str(&format!("timeout = {t:?}\n"));
        }
        Ok(keys)
    }
}

/// A configuration probe wrote from its flags, validated; its errors in terms of the command
/// line (the file and its locations are probe's own, so they are left out).
fn probe_device(text: &str, profile: Option<&str>) -> Result<config::DeviceConfig, String> {
    let cfg = config::parse("(probe)", text).map_err(|errors| {
        errors
            .0
            .iter()
            .map(|e| command_line_error(&e.message, profile))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    cfg.devices
        .into_iter()
        .next()
        .ok_or_else(|| "no device".to_string())
}

/// A validation message of probe's own configuration, said in terms of its flags.
fn command_line_error(message: &str, profile: Option<&str>) -> String {
    // `profile "P" leaves the address of point "NAME" to the device: add [[devices.points]] …`
    if let (Some(profile), Some(rest)) = (
        profile,
        message
            .split_once("leaves the address of point \"")
            .map(|(_, r)| r),
    ) {
        if let Some((name, _)) = rest.split_once('"') {
            return format!(
                "profile {profile:?} leaves the address of point {name:?} to the device: give it with --point {name}=ADDRESS (its 0-based register address in the device's manual, decimal or 0x hex)"
            );
        }
    }
    message.to_string()
}

/// A device of profile `name` at the address or serial port given, validated as a
/// configuration would be.
fn probe_profile(
    name: &str,
    dir: Option<&std::path::Path>,
    link: &LinkArgs<'_>,
    points: &[String],
) -> Result<config::DeviceConfig, String> {
    let target = link.device_keys()?;
    let mut text = String::from("[line]\nid = \"probe\"\n");
    if let Some(d) = dir {
        text.push_str(&format!(
            "[agent]\nprofiles_dir = {:?}\n",
            d.display().to_string()
        ));
    }
    text.push_str(&format!(
        "[[devices]]\nid = \"probe\"\nprofile = {name:?}\n{target}"
    ));
    push_points(
        &mut text,
        points,
        "address",
        "NAME=ADDRESS, e.g. statusword=0x6041",
    )?;
    probe_device(&text, Some(name))
}

/// Appends `--point NAME=VALUE` arguments as `[[devices.points]]` with `key = VALUE`; `usage`
/// is how to write one, for an argument without `=`.
fn push_points(text: &mut String, points: &[String], key: &str, usage: &str) -> Result<(), String> {
    for p in points {
        let Some((name, value)) = p.split_once('=') else {
            return Err(format!("--point {p:?}: use {usage}"));
        };
        text.push_str(&format!(
            "[[devices.points]]\nname = {:?}\n{key} = {:?}\n",
            name.trim(),
            value.trim()
        ));
    }
    Ok(())
}

/// `linetap probe --opcua ENDPOINT [--path P] [--depth N]`: a commissioning browse. Returns
/// the exit code.
fn probe_opcua(
    runtime: &tokio::runtime::Runtime,
    endpoint: &str,
    path: Option<&str>,
    depth: usize,
    timeout: Option<&str>,
) -> i32 {
    let mut text = format!(
        "[line]\nid = \"probe\"\n[[devices]]\nid = \"probe\"\nprotocol = \"opcua\"\nendpoint = {endpoint:?}\n"
    );
    if let Some(t) = timeout {
        text.push_str(&format!("timeout = {t:?}\n"));
    }
    text.push_str("[[devices.points]]\nname = \"server_state\"\nnode = \"i=2259\"\n");
    let d = match probe_device(&text, None) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("linetap probe: {e}");
            return 2;
        }
    };
    let Some(o) = d.settings::<linetap::source::opcua::config::OpcuaDevice>() else {
        return 2;
    };
    match runtime.block_on(linetap::source::opcua::probe::browse(&d, o, path, depth)) {
        Ok(table) => {
            out(&table);
            0
        }
        Err(e) => {
            eprintln!("linetap probe: {endpoint}: {e}");
            1
        }
    }
}

/// The device an OPC UA server at `endpoint` is read as with profile `profile` (no security,
/// anonymous), validated as a configuration would be.
fn probe_opcua_profile(
    endpoint: &str,
    profile: &str,
    dir: Option<&std::path::Path>,
    timeout: Option<&str>,
) -> Result<config::DeviceConfig, String> {
    let text = probe_profile_text(
        &format!("protocol = \"opcua\"\nendpoint = {endpoint:?}\n"),
        profile,
        dir,
        timeout,
    )?;
    probe_device(&text, Some(profile))
}

/// A robot at `address` read over RTDE with profile `profile`, validated as a configuration
/// would be; `points` are NAME=FIELD.
fn probe_rtde(
    address: &str,
    profile: &str,
    dir: Option<&std::path::Path>,
    timeout: Option<&str>,
    points: &[String],
) -> Result<config::DeviceConfig, String> {
    let mut text = probe_profile_text(
        &format!("protocol = \"rtde\"\naddress = {address:?}\n"),
        profile,
        dir,
        timeout,
    )?;
    push_points(
        &mut text,
        points,
        "rtde",
        "NAME=FIELD, e.g. cycles=output_int_register_24",
    )?;
    probe_device(&text, Some(profile))
}

/// The configuration of a probed device `probe` with its `link` keys, `profile`, the profile
/// directory and `timeout`.
fn probe_profile_text(
    link: &str,
    profile: &str,
    dir: Option<&std::path::Path>,
    timeout: Option<&str>,
) -> Result<String, String> {
    let mut text = String::from("[line]\nid = \"probe\"\n");
    if let Some(d) = dir {
        text.push_str(&format!(
            "[agent]\nprofiles_dir = {:?}\n",
            d.display().to_string()
        ));
    }
    text.push_str(&format!(
        "[[devices]]\nid = \"probe\"\n{link}profile = {profile:?}\n"
    ));
    if let Some(t) = timeout {
        if let Err(e) = config::units::parse_duration(t) {
            return Err(format!("--timeout {t:?}: {e}"));
        }
        text.push_str(&format!("timeout = {t:?}\n"));
    }
    Ok(text)
}

/// `linetap probe --read TABLE START COUNT`: raw registers of a device at an address or
/// serial port, or of a config's device. Returns the exit code.
fn probe_read(
    runtime: &tokio::runtime::Runtime,
    read: &[String],
    config: Option<PathBuf>,
    device: Option<String>,
    link: &LinkArgs<'_>,
) -> i32 {
    let target = (|| {
        let [table, start, count] = read else {
            return Err("--read takes TABLE START COUNT, e.g. --read holding 0 18".to_string());
        };
        let table = linetap::probe::parse_table(table)?;
        let (start, count) = linetap::probe::read_range(table, start, count)?;
        let d = match (config, device) {
            (Some(c), Some(d)) => probe_config(&c, &d, link.address, link.unit, link.timeout)?.0,
            _ => probe_device(
                &format!(
                    "[line]\nid = \"probe\"\n[[devices]]\nid = \"probe\"\n{}[[devices.points]]\nname = \"raw\"\naddress = 0\n",
                    link.device_keys()?
                ),
                None,
            )?,
        };
        Ok((d, table, start, count))
    })();
    match target {
        Err(e) => {
            eprintln!("linetap probe: {e}");
            2
        }
        Ok((d, table, start, count)) => {
            match runtime.block_on(linetap::probe::read_raw(&d, table, start, count)) {
                Ok(text) => {
                    out(&text);
                    0
                }
                Err(e) => {
                    eprintln!("linetap probe: read failed: {e}");
                    1
                }
            }
        }
    }
}

async fn simulate(cfg: config::Config) -> i32 {
    let sim = match sim::Simulator::start(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("linetap simulate: {e}");
            return 1;
        }
    };
    let mut listing: Vec<_> = sim.addresses.iter().collect();
    listing.sort();
    for (device, addr) in listing {
        println!("serving {device} on {addr}");
    }
    for d in &cfg.devices {
        if let Some(m) = d.settings::<config::MqttDevice>() {
            let broker = cfg
                .brokers
                .iter()
                .find(|b| b.name == m.broker)
                .map(|b| b.address())
                .unwrap_or_default();
            println!("publishing {} to {broker} ({})", d.id, m.topic);
        }
    }
    let mut ports: Vec<_> = sim.serial_ports.iter().collect();
    ports.sort();
    for (device, port) in ports {
        println!("serving {device} (RTU) on {port}");
    }
    // Commands on stdin, read on a plain thread (stdin is blocking).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            _ = run::stop_signal() => break,
            line = rx.recv() => {
                let Some(line) = line else {
                    // stdin closed: keep serving until a signal.
                    run::stop_signal().await;
                    break;
                };
                let mut parts = line.trim().splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("fault"), Some(device), Some(fault)) => match fault.parse().and_then(|f| sim.set_fault(device, f)) {
                        Ok(()) => println!("ok"),
                        Err(e) => println!("error: {e}"),
                    },
                    (Some(""), None, None) => {}
                    _ => println!("error: commands: fault DEVICE none|silent|drop|slow DURATION|exception CODE|badcrc|garbage|chunked DURATION"),
                }
            }
        }
    }
    sim.stop();
    tokio::time::sleep(Duration::from_millis(10)).await;
    0
}

/// `linetap run`: the agent until SIGTERM/SIGINT, reloading `path` on SIGHUP.
async fn run_agent(path: &std::path::Path, cfg: config::Config) -> i32 {
    use linetap::observe::systemd;
    use std::sync::atomic::Ordering::Relaxed;
    let mut agent = match run::Agent::start(&cfg) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    tracing::info!(line = %cfg.line.id, devices = cfg.devices.len(), sinks = cfg.sinks.len(), "linetap running");
    for w in linetap::check_field_types::warnings(&cfg) {
        tracing::warn!("{w}");
    }
    let stuck_after = cfg.agent.stuck_after;
    // The agent keeps its own copy (for reloads); on a large line this one is megabytes.
    drop(cfg);
    let notifier = std::sync::Arc::new(systemd::Notifier::from_env());
    notifier.notify(&format!(
        "READY=1\nSTATUS={}",
        systemd::status(&agent.metrics)
    ));
    // The watchdog is fed beside the main loop, so a reload that waits for a sink to stop does
    // not starve it.
    let (watchdog_stop, watchdog_stopped) = tokio::sync::oneshot::channel::<()>();
    let watchdog = {
        let (notifier, metrics) = (notifier.clone(), agent.metrics.clone());
        tokio::spawn(async move {
            systemd::run(&notifier, &metrics, stuck_after, async {
                let _ = watchdog_stopped.await;
            })
            .await
        })
    };
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reloading is off");
            None
        }
    };
    let stop = run::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                notifier.notify("RELOADING=1\nSTATUS=reloading the configuration");
                // A stop request ends a reload that waits (for a component to stop): what the
                // reload had stopped stays stopped, the agent then stops the rest.
                let stopped = tokio::select! {
                    _ = reload(&mut agent, path) => false,
                    _ = &mut stop => true,
                };
                if stopped {
                    tracing::warn!("stop requested during a reload; stopping");
                    break;
                }
                notifier.notify(&format!("READY=1\nSTATUS={}", systemd::status(&agent.metrics)));
            }
        }
    }
    let _ = watchdog_stop.send(());
    let _ = watchdog.await;
    notifier.notify("STOPPING=1\nSTATUS=stopping: delivering what is buffered");
    tracing::info!("stopping: flushing sinks");
    let metrics = agent.metrics.clone();
    let undelivered = agent.stop().await;
    let collected = metrics.collected();
    let sinks = metrics.sinks.all();
    // Per sink: each sink delivers every sample once, so a sum would count them twice.
    let per_sink = |f: fn(&linetap::observe::metrics::SinkMetrics) -> u64| -> String {
        sinks
            .iter()
            .map(|s| format!("{}={}", s.name, f(s)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let delivered = per_sink(|s| s.delivered.load(Relaxed));
    let dropped: u64 = sinks.iter().map(|s| s.dropped_total()).sum();
    if undelivered > 0 || dropped > 0 {
        let dropped = per_sink(|s| s.dropped_total());
        let buffer_full = per_sink(|s| s.dropped_buffer_full.load(Relaxed));
        let corrupt = per_sink(|s| s.dropped_corrupt.load(Relaxed));
        if undelivered > 0 {
            tracing::warn!(
                collected,
                delivered,
                dropped,
                buffer_full,
                corrupt,
                kept_bytes = undelivered,
                "stopped; undelivered data is kept in the buffer for the next start"
            );
        } else {
            tracing::warn!(
                collected,
                delivered,
                dropped,
                buffer_full,
                corrupt,
                "stopped; samples were dropped during the run (see the sink messages above)"
            );
        }
    } else {
        tracing::info!(
            collected,
            delivered,
            "stopped cleanly; everything delivered"
        );
    }
    0
}

/// SIGHUP: reads and validates `path` again; applies it, or logs why not and keeps running
/// the configuration it has.
async fn reload(agent: &mut run::Agent, path: &std::path::Path) {
    use std::sync::atomic::Ordering::Relaxed;
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let path = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
    let cfg = match loaded {
        Ok(Ok(cfg)) => cfg,
        Ok(Err(errors)) => {
            agent.metrics.config_reloads_error.fetch_add(1, Relaxed);
            tracing::error!("reload refused, the running configuration is kept:\n{errors}");
            return;
        }
        Err(e) => {
            agent.metrics.config_reloads_error.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "reload failed, the running configuration is kept");
            return;
        }
    };
    match agent.reload(&cfg).await {
        Ok(r) => {
            agent.metrics.config_reloads_ok.fetch_add(1, Relaxed);
            for w in linetap::check_field_types::warnings(&cfg) {
                tracing::warn!("{w}");
            }
            let names = |v: &[linetap::component::ComponentId]| {
                v.iter()
                    .map(|c| format!("{} {}", c.kind.as_str(), c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            tracing::info!(
                started = %names(&r.started),
                restarted = %names(&r.restarted),
                stopped = %names(&r.stopped),
                unchanged = r.unchanged,
                "configuration reloaded"
            );
            if !r.need_restart.is_empty() {
                tracing::warn!(sections = %r.need_restart.join(", "), "these sections changed but only apply at the next start (systemctl restart); the rest was applied");
            }
        }
        Err(e) => {
            agent.metrics.config_reloads_error.fetch_add(1, Relaxed);
            tracing::error!("reload refused, the running configuration is kept: {e}");
        }
    }
}

/// `linetap man DIR`: the man page of the command and of each visible subcommand.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cli = Cli::command();
    let mut pages = vec![("linetap".to_string(), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("linetap-{}", sub.get_name());
        pages.push((
            name,
            sub.clone().bin_name(format!("linetap {}", sub.get_name())),
        ));
    }
    for (name, cmd) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.clone())
            .render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// `linetap COMMAND --help` (and the man pages) describe every option.
    #[test]
    fn every_option_of_every_command_has_a_description() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str())
                {
                    missing.push(format!("{} {}", cmd.get_name(), arg.get_id()));
                }
            }
            if cmd.get_about().is_none() {
                missing.push(format!("{} (the command)", cmd.get_name()));
            }
        }
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
