//! Logging set-up: `LINETAP_LOG` filters (RUST_LOG syntax); human-readable on a terminal,
//! plain lines without colour or timestamps under systemd (journald adds them), JSON on request.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    // The OPC UA client (and the simulator's OPC UA server) log their connections and
    // certificate stores at info/warn; linetap says what matters itself (a device down, and
    // why): only their errors by default.
    let filter = EnvFilter::try_from_env("LINETAP_LOG").unwrap_or_else(|_| {
        EnvFilter::new(
            "info,opcua_client=error,opcua_server=error,opcua_nodes=error,opcua_core=error,opcua_crypto=error,opcua_types=error",
        )
    });
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else if under_systemd {
        builder.with_ansi(false).without_time().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
