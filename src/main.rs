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
    /// Log format.
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

#[derive(Subcommand)]
enum Command {
    /// Run the agent: poll, normalize, deliver. Stops cleanly on SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and print the plan (devices, points, requests per cycle).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The embedded demo: a simulated robot cell, the agent, and a local line-protocol file.
    Demo {
        /// Stop after this long (e.g. "30s") instead of waiting for Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
    },
    /// Serve the simulated devices a configuration describes (Modbus TCP, RTU on the `serial.port`
    /// device or pty, RTU over TCP). Reads commands on stdin:
    /// `fault DEVICE none|silent|drop|slow 300ms|exception 4|badcrc|garbage|chunked 16ms`.
    Simulate {
        #[arg(long, short)]
        config: PathBuf,
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
        Command::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                print!("{}", check::render_plan(&cfg));
                for w in check::warnings(&cfg) {
                    eprintln!("warning: {w}");
                }
                0
            }
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
        },
        Command::Run { config } => match config::load(&config) {
            Err(errors) => {
                eprintln!("{errors}");
                2
            }
            Ok(cfg) => runtime.block_on(async {
                let agent = match run::Agent::start(&cfg) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!("{e}");
                        return 1;
                    }
                };
                tracing::info!(line = %cfg.line.id, devices = cfg.devices.len(), sinks = cfg.sinks.len(), "linetap running");
                let notifier = linetap::observe::systemd::Notifier::from_env();
                notifier.notify(&format!("READY=1\nSTATUS={}", linetap::observe::systemd::status(&agent.metrics)));
                linetap::observe::systemd::run(&notifier, &agent.metrics, cfg.agent.stuck_after, run::stop_signal()).await;
                notifier.notify("STOPPING=1\nSTATUS=stopping: delivering what is buffered");
                tracing::info!("stopping: flushing sinks");
                let metrics = agent.metrics.clone();
                let undelivered = agent.stop().await;
                use std::sync::atomic::Ordering::Relaxed;
                let collected = metrics.collected();
                let delivered: u64 = metrics.sinks.all().iter().map(|s| s.delivered.load(Relaxed)).sum();
                let dropped: u64 = metrics.sinks.all().iter().map(|s| s.dropped_total()).sum();
                let buffer_full: u64 = metrics.sinks.all().iter().map(|s| s.dropped_buffer_full.load(Relaxed)).sum();
                let corrupt: u64 = metrics.sinks.all().iter().map(|s| s.dropped_corrupt.load(Relaxed)).sum();
                if undelivered > 0 {
                    tracing::warn!(collected, delivered, dropped, buffer_full, corrupt, kept_bytes = undelivered, "stopped; undelivered data is kept in the buffer for the next start");
                } else if dropped > 0 {
                    tracing::warn!(collected, delivered, dropped, buffer_full, corrupt, "stopped; samples were dropped during the run (see the sink messages above)");
                } else {
                    tracing::info!(collected, delivered, "stopped cleanly; everything delivered");
                }
                0
            }),
        },
        Command::Demo { duration } => {
            let duration = match duration.map(|d| config::units::parse_duration(&d)).transpose() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("linetap demo: --duration: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(sim::demo::run(duration))
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
