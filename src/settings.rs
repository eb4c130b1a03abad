//! Layered configuration: the compiled-in `config/default.toml`, an optional
//! file, then environment variables. Settings are passed around, never global.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// The defaults, compiled in so that the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub embedded: EmbeddedSettings,
    pub auth: AuthSettings,
    pub events: EventsSettings,
    pub outbox: OutboxSettings,
    pub bus: BusSettings,
    pub idempotency: IdempotencySettings,
    pub rate_limit: RateLimitSettings,
    pub limits: LimitsSettings,
    pub actors: ActorsSettings,
    pub runs: RunsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub bind: String,
    pub port: u16,
    pub cors_origins: Vec<String>,
    pub shutdown_timeout_secs: u64,
    pub body_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    pub startup_wait_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Dev,
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub jwt_secret: SecretString,
    pub jwt_public_key_file: PathBuf,
    pub admin_token: SecretString,
    pub allow_dev_on_public: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventsSettings {
    pub keepalive_secs: u64,
    pub retention_hours: u64,
    pub session_buffer: usize,
    pub slow_reader_ms: u64,
}

/// Who completes commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DispatcherKind {
    /// The fake dev worker inside scriptd.
    Dev,
    /// Handlers over NATS JetStream (needs `bus.url`).
    Bus,
    /// Nobody: commands stay PENDING.
    None,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    /// Absent: `dev_worker` decides (true: dev, false: none).
    pub dispatcher: Option<DispatcherKind>,
    pub dev_worker: bool,
    pub autorun: bool,
    pub poll_interval_ms: u64,
    pub lease_secs: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub dev_delay_min_ms: u64,
    pub dev_delay_max_ms: u64,
    /// Seconds a bus handler has to answer an attempt (fractions allowed).
    pub completion_timeout_secs: f64,
}

impl OutboxSettings {
    /// `dispatcher` when set, else what `dev_worker` means.
    pub fn dispatcher(&self) -> DispatcherKind {
        self.dispatcher.unwrap_or(if self.dev_worker {
            DispatcherKind::Dev
        } else {
            DispatcherKind::None
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BusSettings {
    /// NATS server URL(s), comma-separated; empty: no bus.
    pub url: SecretString,
    /// A NATS `.creds` file; empty: none.
    pub credentials_file: PathBuf,
    pub subject_prefix: String,
    pub stream_prefix: String,
    pub replicas: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    /// Hours; fractions allowed (tests use seconds).
    pub ttl_hours: f64,
    pub inflight_lease_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub per_tenant_per_sec: u32,
    pub per_token_per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitsSettings {
    pub versions_body_bytes: usize,
    pub commands_body_bytes: usize,
    pub vars_body_bytes: usize,
    pub default_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActorsSettings {
    pub idle_secs: u64,
    pub read_cache_bytes: usize,
    pub run_queue_max: usize,
    pub var_write_statements: usize,
}

/// The runner stream (`GET /runs/:runId/stream`).
#[derive(Debug, Clone, Deserialize)]
pub struct RunsSettings {
    /// Unacknowledged frames per connection before the server stops reading.
    pub stream_inflight: usize,
    /// Seconds between pings; a runner silent for three intervals is closed.
    pub stream_ping_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// Keys or sections that no setting has (a typo, most likely), each with
    /// where it came from and the closest known name.
    #[error("{}", .0.join("\n"))]
    Unknown(Vec<String>),
}

/// Keys that exist but are not set in `config/default.toml`.
const OPTIONAL_KEYS: &[&str] = &["outbox.dispatcher"];

/// Every known `section.key`, from the compiled-in defaults.
fn known_keys() -> Vec<String> {
    type Sections = HashMap<String, HashMap<String, serde_json::Value>>;
    let defaults: Sections = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_default();
    let mut keys: Vec<String> = OPTIONAL_KEYS.iter().map(|k| k.to_string()).collect();
    for (section, table) in defaults {
        keys.extend(table.into_keys().map(|k| format!("{section}.{k}")));
    }
    keys.sort();
    keys
}

/// The known name closest to `name`, if any is close enough to be a typo.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn env_name(key: &str) -> String {
    format!("SCRIPTD__{}", key.to_uppercase().replace('.', "__"))
}

/// One line for an unknown key (`section.key`) or section (`section`).
fn describe_unknown(path: &str, env: &HashMap<String, String>, file: Option<&Path>) -> String {
    let var = env_name(path);
    let from_env = env.keys().find(|k| {
        let k = k.to_uppercase();
        k == var || k.starts_with(&format!("{var}__"))
    });
    let origin = match (from_env, file) {
        (Some(var), _) => format!("environment variable {var}"),
        (None, Some(f)) => format!("config file {}", f.display()),
        (None, None) => "configuration".to_string(),
    };
    let known = known_keys();
    let (kind, suggestion) = match path.split_once('.') {
        Some((section, key)) => {
            let in_section = known
                .iter()
                .filter_map(|k| k.strip_prefix(section)?.strip_prefix('.'));
            let near = closest(key, in_section)
                .map(|k| format!("{section}.{k}"))
                .or_else(|| closest(path, known.iter().map(String::as_str)).map(str::to_string));
            ("key", near)
        }
        None => {
            let mut sections: Vec<&str> =
                known.iter().filter_map(|k| k.split('.').next()).collect();
            sections.dedup();
            (
                "section",
                closest(path, sections.into_iter()).map(str::to_string),
            )
        }
    };
    let hint = match (&suggestion, from_env) {
        (Some(s), Some(_)) => format!("; did you mean `{s}` ({})?", env_name(s)),
        (Some(s), None) => format!("; did you mean `{s}`?"),
        (None, _) => "; config/default.toml lists every key".to_string(),
    };
    format!("unknown configuration {kind} `{path}` ({origin}){hint}")
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["http.cors_origins"];

impl Settings {
    /// The compiled-in defaults only (what tests start from).
    pub fn defaults() -> Result<Self, SettingsError> {
        Self::load(None, HashMap::new())
    }

    /// Defaults, then `file`, then the given environment (pass
    /// `std::env::vars().collect()` in production; tests pass their own map).
    pub fn load(file: Option<&Path>, env: HashMap<String, String>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::MissingFile(path.to_path_buf()));
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let mut scoped: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("SCRIPTD__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The two conventional names win over nothing but are overridden by nothing:
        // they are the documented short forms.
        if let Some(url) = env.get("DATABASE_URL") {
            scoped.insert("SCRIPTD__DATABASE__URL".into(), url.clone());
        }
        if let Some(port) = env.get("PORT") {
            scoped.insert("SCRIPTD__HTTP__PORT".into(), port.clone());
        }
        let mut environment = config::Environment::with_prefix("SCRIPTD")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(scoped.clone()));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let merged = builder.add_source(environment).build()?;
        let mut unknown = Vec::new();
        let settings: Settings =
            serde_ignored::deserialize(merged, |path| unknown.push(path.to_string()))?;
        if !unknown.is_empty() {
            unknown.sort();
            let lines = unknown
                .iter()
                .map(|path| describe_unknown(path, &scoped, file))
                .collect();
            return Err(SettingsError::Unknown(lines));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.http.bind, "127.0.0.1");
        assert_eq!(s.http.port, 8080);
        assert!(s.http.cors_origins.is_empty());
        assert_eq!(s.auth.mode, AuthMode::Dev);
        assert_eq!(s.limits.versions_body_bytes, 5 * 1024 * 1024);
        assert_eq!(s.outbox.dev_delay_max_ms, 2000);
        assert_eq!(s.log.format, LogFormat::Pretty);
        assert!(s.database.url.expose_secret().is_empty());
        assert!(s.bus.url.expose_secret().is_empty());
        assert_eq!(
            (s.bus.subject_prefix.as_str(), s.bus.stream_prefix.as_str()),
            ("scriptd", "SCRIPTD")
        );
        assert_eq!(s.bus.replicas, 1);
        assert_eq!(s.outbox.completion_timeout_secs, 300.0);
        assert_eq!(s.outbox.dispatcher(), DispatcherKind::Dev);
    }

    #[test]
    fn the_dispatcher_wins_over_dev_worker() {
        let load = |pairs: &[(&str, &str)]| Settings::load(None, env(pairs)).unwrap().outbox;
        let off = load(&[("SCRIPTD__OUTBOX__DEV_WORKER", "false")]);
        assert_eq!(off.dispatcher(), DispatcherKind::None);
        for (value, want) in [
            ("bus", DispatcherKind::Bus),
            ("dev", DispatcherKind::Dev),
            ("none", DispatcherKind::None),
        ] {
            let o = load(&[
                ("SCRIPTD__OUTBOX__DEV_WORKER", "false"),
                ("SCRIPTD__OUTBOX__DISPATCHER", value),
            ]);
            assert_eq!(o.dispatcher(), want, "{value}");
        }
        let bad = Settings::load(None, env(&[("SCRIPTD__OUTBOX__DISPATCHER", "kafka")]));
        assert!(bad.is_err());
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("scriptd-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("override.toml");
        std::fs::write(&file, "[http]\nport = 9000\n[outbox]\nmax_attempts = 7\n").unwrap();
        let s = Settings::load(
            Some(&file),
            env(&[
                ("PORT", "9100"),
                ("DATABASE_URL", "postgres://x@localhost/db"),
                ("SCRIPTD__OUTBOX__DEV_DELAY_MIN_MS", "0"),
                ("SCRIPTD__HTTP__CORS_ORIGINS", "http://a.test,http://b.test"),
                ("SCRIPTD__AUTH__JWT_SECRET", "12345"),
                ("UNRELATED", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.port, 9100);
        assert_eq!(s.outbox.max_attempts, 7);
        assert_eq!(s.outbox.dev_delay_min_ms, 0);
        assert_eq!(s.http.cors_origins, vec!["http://a.test", "http://b.test"]);
        assert_eq!(s.database.url.expose_secret(), "postgres://x@localhost/db");
        assert_eq!(s.auth.jwt_secret.expose_secret(), "12345");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/x.toml")), HashMap::new());
        assert!(matches!(err, Err(SettingsError::MissingFile(_))));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::load(None, env(&[("SCRIPTD__AUTH__JWT_SECRET", "topsecret")])).unwrap();
        assert!(!format!("{s:?}").contains("topsecret"));
    }

    fn unknown(file: Option<&Path>, vars: &[(&str, &str)]) -> Vec<String> {
        match Settings::load(file, env(vars)) {
            Err(SettingsError::Unknown(lines)) => lines,
            other => panic!("expected unknown keys, got {other:?}"),
        }
    }

    #[test]
    fn unknown_keys_and_sections_in_a_file_name_the_closest_known_one() {
        let dir = std::env::temp_dir().join(format!("scriptd-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("typo.toml");
        std::fs::write(
            &file,
            "[http]\nprot = 9090\n[htpp]\nport = 1\n[zzz]\nq = 1\n",
        )
        .unwrap();
        let f = file.display();
        assert_eq!(
            unknown(Some(&file), &[]),
            [
                format!("unknown configuration section `htpp` (config file {f}); did you mean `http`?"),
                format!("unknown configuration key `http.prot` (config file {f}); did you mean `http.port`?"),
                format!("unknown configuration section `zzz` (config file {f}); config/default.toml lists every key"),
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_environment_variables_name_the_closest_known_one() {
        assert_eq!(
            unknown(None, &[("SCRIPTD__HTTP__PROT", "9090")]),
            ["unknown configuration key `http.prot` (environment variable SCRIPTD__HTTP__PROT); \
              did you mean `http.port` (SCRIPTD__HTTP__PORT)?"]
        );
        assert_eq!(
            unknown(None, &[("SCRIPTD__HTPP__PORT", "9090")]),
            [
                "unknown configuration section `htpp` (environment variable SCRIPTD__HTPP__PORT); \
              did you mean `http` (SCRIPTD__HTTP)?"
            ]
        );
        // Every documented key, including the optional one, is known.
        let ok = Settings::load(None, env(&[("SCRIPTD__OUTBOX__DISPATCHER", "none")])).unwrap();
        assert_eq!(ok.outbox.dispatcher, Some(DispatcherKind::None));
    }
}
