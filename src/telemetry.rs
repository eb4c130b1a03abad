//! Logging: tracing with an env filter (RUST_LOG, default `info`), pretty or
//! JSON; colours only when stderr is a terminal.

use tracing_subscriber::{fmt, EnvFilter};

use crate::settings::LogFormat;

/// Without RUST_LOG: `info`, but not the migration tool's own lines (scriptd
/// logs each applied migration once) nor PostgreSQL's NOTICEs (such as "the
/// history table already exists, skipping").
const DEFAULT_FILTER: &str = "info,refinery_core=warn,tokio_postgres=warn";

pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
