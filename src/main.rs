use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scriptd::embedded::{self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use scriptd::{telemetry, Application, Settings};
use secrecy::{ExposeSecret, SecretString};

/// scriptd: the backend of a conversational-script editor.
#[derive(Parser)]
#[command(version = scriptd::LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (starts an embedded PostgreSQL when no database URL is set).
    Serve {
        /// Port to listen on (overrides config and PORT).
        #[arg(long)]
        port: Option<u16>,
        /// A TOML file overriding config/default.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve, with sample data in tenant `demo` (loaded once): a script with
    /// versions, runs with variables and a few commands.
    Demo {
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The reference command handler over the bus (NATS JetStream): completes
    /// every command like the dev worker. Reads the same configuration as serve.
    DevHandler {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI document.
    Openapi,
}

/// Exit code when the PostgreSQL binaries for the embedded database are missing.
const EXIT_MISSING_BINARIES: u8 = 2;

/// `scriptd openapi`: the document on stdout. A reader that stops early
/// (`scriptd openapi | head`) ends it quietly.
fn print_openapi() -> ExitCode {
    use std::io::Write;
    let doc = scriptd::openapi::document_json();
    let mut out = std::io::stdout().lock();
    match out
        .write_all(doc.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scriptd openapi: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The bus URLs without credentials, or "off".
fn bus_hosts(urls: &str) -> String {
    if urls.trim().is_empty() {
        return "off".into();
    }
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.split_once("://"), u.rsplit_once('@')) {
                (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
                (None, Some((_, host))) => host.to_string(),
                _ => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One line at start: which PostgreSQL, the users scriptd and PostgreSQL run
/// as, the data directory, the auth mode and the bus.
fn log_start(settings: &Settings, pg: Option<&EmbeddedPostgres>) {
    let auth = match settings.auth.mode {
        scriptd::settings::AuthMode::Dev => "dev",
        scriptd::settings::AuthMode::Jwt => "jwt",
    };
    let bus = bus_hosts(settings.bus.url.expose_secret());
    let user = embedded::current_user();
    match pg {
        Some(pg) => {
            let note = settings.embedded.data_dir.is_relative().then_some(
                "embedded.data_dir is relative to the working directory scriptd starts in",
            );
            let postgres = if pg.started_here() {
                "embedded (started by this process)"
            } else {
                "embedded (run by another scriptd process on this data directory)"
            };
            tracing::info!(
                postgres,
                user,
                postgres_user = pg.os_user(),
                data_dir = %pg.data_dir().display(),
                data_dir_note = note,
                auth,
                bus,
                "scriptd starting"
            );
        }
        None => {
            let postgres =
                actors::service::describe_database(settings.database.url.expose_secret());
            tracing::info!(postgres, user, auth, bus, "scriptd starting");
        }
    }
}

/// With no database URL, a private PostgreSQL for as long as scriptd runs
/// (or this process's share of one another scriptd runs on the data directory).
fn start_embedded(settings: &mut Settings) -> Result<Option<EmbeddedPostgres>, ExitCode> {
    if !settings.database.url.expose_secret().is_empty() {
        return Ok(None);
    }
    let mut opts = EmbeddedOptions::new(&settings.embedded.data_dir);
    if !settings.embedded.bin_dir.as_os_str().is_empty() {
        opts.bin_dir = Some(settings.embedded.bin_dir.clone());
    }
    match EmbeddedPostgres::start(&opts) {
        Ok(pg) => {
            settings.database.url = SecretString::from(pg.connection_string("scriptd"));
            Ok(Some(pg))
        }
        Err(EmbeddedError::BinariesMissing) => {
            eprintln!("scriptd: {}", embedded::MISSING_BINARIES_HELP);
            Err(ExitCode::from(EXIT_MISSING_BINARIES))
        }
        Err(e) => {
            eprintln!("scriptd: could not start the embedded PostgreSQL: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `scriptd dev-handler`: needs only the bus, never a database.
fn dev_handler(settings: &Settings) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(scriptd::startup::dev_handler(settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scriptd dev-handler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Cmd::Serve { config, .. }
        | Cmd::Demo { config, .. }
        | Cmd::Migrate { config }
        | Cmd::DevHandler { config } => config.clone(),
        Cmd::Openapi => return print_openapi(),
    };
    let mut settings = match Settings::load(config.as_deref(), std::env::vars().collect()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scriptd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Cmd::Serve { port: Some(p), .. } | Cmd::Demo { port: Some(p), .. } = cli.command {
        settings.http.port = p;
    }
    telemetry::init(settings.log.format);
    if let Cmd::DevHandler { .. } = cli.command {
        return dev_handler(&settings);
    }

    let embedded_pg = match start_embedded(&mut settings) {
        Ok(pg) => pg,
        Err(code) => return code,
    };

    if !matches!(cli.command, Cmd::DevHandler { .. }) {
        log_start(&settings, embedded_pg.as_ref());
    }
    let json_logs = settings.log.format == scriptd::settings::LogFormat::Json;
    let result = actix_web::rt::System::new().block_on(async move {
        if let Some(pg) = &embedded_pg {
            embedded::ensure_database(pg, "scriptd").await?;
        }
        match cli.command {
            Cmd::Migrate { .. } => scriptd::startup::migrate_only(&settings).await,
            cmd => {
                let app = Application::build(settings).await?;
                if let Cmd::Demo { .. } = cmd {
                    let loaded = scriptd::demo::seed(&app.state().services).await?;
                    tracing::info!(
                        tenant = scriptd::demo::TENANT,
                        loaded,
                        "sample data (x-tenant-id: demo)"
                    );
                }
                app.stop_on_signals();
                app.run_until_stopped().await?;
                tracing::info!("scriptd stopped");
                Ok(())
            }
        }
        .map(|()| embedded_pg)
    });
    // Dropping the embedded cluster (here, after the runtime ends) stops it,
    // on success and on failure alike.
    match result {
        Ok(pg) => {
            drop(pg);
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Said once: as a log line for log collectors, as text on a terminal.
            if json_logs {
                tracing::error!(error = format!("{e:#}"), "scriptd failed");
            } else {
                eprintln!("scriptd: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
