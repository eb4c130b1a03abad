use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scriptd::embedded::{self, EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
use scriptd::{telemetry, Application, Settings};
use secrecy::{ExposeSecret, SecretString};

/// scriptd: the backend of a conversational-script editor.
#[derive(Parser)]
#[command(version, about)]
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
        Cmd::Serve { config, .. } | Cmd::Migrate { config } | Cmd::DevHandler { config } => {
            config.clone()
        }
        Cmd::Openapi => {
            println!("{}", scriptd::openapi::document_json());
            return ExitCode::SUCCESS;
        }
    };
    let mut settings = match Settings::load(config.as_deref(), std::env::vars().collect()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scriptd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Cmd::Serve { port: Some(p), .. } = cli.command {
        settings.http.port = p;
    }
    telemetry::init(settings.log.format);
    if let Cmd::DevHandler { .. } = cli.command {
        return dev_handler(&settings);
    }

    // With no database URL, run a private PostgreSQL for as long as scriptd runs.
    let mut embedded_pg = None;
    if settings.database.url.expose_secret().is_empty() {
        let mut opts = EmbeddedOptions::new(&settings.embedded.data_dir);
        if !settings.embedded.bin_dir.as_os_str().is_empty() {
            opts.bin_dir = Some(settings.embedded.bin_dir.clone());
        }
        match EmbeddedPostgres::start(&opts) {
            Ok(pg) => {
                settings.database.url = SecretString::from(pg.connection_string("scriptd"));
                embedded_pg = Some(pg);
            }
            Err(EmbeddedError::BinariesMissing) => {
                eprintln!("scriptd: {}", embedded::MISSING_BINARIES_HELP);
                return ExitCode::from(EXIT_MISSING_BINARIES);
            }
            Err(e) => {
                eprintln!("scriptd: could not start the embedded PostgreSQL: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let result = actix_web::rt::System::new().block_on(async move {
        if let Some(pg) = &embedded_pg {
            embedded::ensure_database(pg, "scriptd").await?;
        }
        match cli.command {
            Cmd::Migrate { .. } => scriptd::startup::migrate_only(&settings).await,
            _ => {
                let app = Application::build(settings).await?;
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
            tracing::error!(error = format!("{e:#}"), "scriptd failed");
            eprintln!("scriptd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
