//! The typed configuration tree.
//!
//! Layers, later wins: the documented default file compiled into the binary
//! (`config/tiermail.toml`), the file given with `--config`, then
//! `TIERMAIL_<SECTION>__<KEY>` environment variables. Unknown keys and bad
//! values stop start-up with a message that names the key, because a mail
//! server that silently ignores a typo in its listener or relay settings is
//! worse than one that refuses to start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default configuration, exactly the committed, documented file.
pub const DEFAULT_TOML: &str = include_str!("../config/tiermail.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub domains: DomainsConfig,
    pub users: UsersConfig,
    pub smtp: SmtpConfig,
    pub imap: ImapConfig,
    pub archive: ArchiveConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub store: StoreConfig,
    pub backup: BackupConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub schedule: String,
    pub targets: Vec<PathBuf>,
    pub max_staleness: String,
    pub keep: u32,
    pub max_age_days: u32,
    pub drill_schedule: String,
    pub min_free_mib: u64,
    pub full_every: String,
    pub continuous_interval: String,
}

impl StoreConfig {
    pub fn reclaim_schedule(&self) -> crate::scheduler::Schedule {
        self.reclaim_schedule
            .parse()
            .unwrap_or(crate::scheduler::Schedule::Off)
    }
}

impl BackupConfig {
    pub fn schedule(&self) -> crate::scheduler::Schedule {
        self.schedule
            .parse()
            .unwrap_or(crate::scheduler::Schedule::Off)
    }

    pub fn drill_schedule(&self) -> crate::scheduler::Schedule {
        self.drill_schedule
            .parse()
            .unwrap_or(crate::scheduler::Schedule::Off)
    }

    /// How old a chain's full backup may be before the next backup is a
    /// full one again ("0": every backup is full).
    pub fn full_every(&self) -> std::time::Duration {
        if self.full_every.trim() == "0" {
            return std::time::Duration::ZERO;
        }
        crate::scheduler::parse_duration(&self.full_every)
            .unwrap_or(std::time::Duration::from_secs(86_400))
    }

    /// Least time between the starts of two continuous backups.
    pub fn continuous_interval(&self) -> std::time::Duration {
        crate::scheduler::parse_duration(&self.continuous_interval)
            .unwrap_or(std::time::Duration::from_secs(60))
    }

    pub fn max_staleness(&self) -> std::time::Duration {
        crate::scheduler::parse_duration(&self.max_staleness)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub log: String,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsConfig {
    pub local: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub listen: String,
    pub submission_listen: String,
    pub submissions_listen: String,
    pub lmtp_listen: String,
    pub allow_plaintext_auth: bool,
    pub send_as_anyone: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    pub listen: String,
    pub tls_listen: String,
    pub allow_plaintext_auth: bool,
    pub idle_timeout_secs: u64,
    pub unauthenticated_timeout_secs: u64,
    /// Flag changes of other sessions reported in one go (FETCH FLAGS);
    /// the rest wait, one per message at its latest flags, for the next.
    pub max_flag_updates: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub schedule: String,
    pub access: String,
    pub legal_hold: Vec<String>,
    pub retention_days: u32,
    pub root: PathBuf,
    pub age_days: u32,
    pub only_seen: bool,
    pub keep_flagged: bool,
    pub exclude_folders: Vec<String>,
    pub min_size: u32,
    pub file_limit_mib: u64,
    pub seekers: usize,
    pub archivers: usize,
    pub queue: usize,
    /// `Archive` also shows every archived message (not only what was put
    /// into it directly); sync clients then download such mail twice.
    pub all_in_one: bool,
}

/// Per-user archive policy in users.toml (`archive = { age_days = 90 }`):
/// any key left out keeps the global value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveOverride {
    pub age_days: Option<u32>,
    pub only_seen: Option<bool>,
    pub keep_flagged: Option<bool>,
    pub exclude_folders: Option<Vec<String>>,
    pub min_size: Option<u32>,
    pub access: Option<String>,
    pub legal_hold: Option<bool>,
    pub retention_days: Option<u32>,
}

pub const ACCESS_VALUES: [&str; 3] = ["read-write", "read-only", "hidden"];

impl ArchiveConfig {
    /// The policy for one user: the global one with their overrides.
    pub fn for_user(&self, user: &str, o: Option<&ArchiveOverride>) -> ArchiveConfig {
        let mut c = self.clone();
        let Some(o) = o else { return c };
        if let Some(v) = o.age_days {
            c.age_days = v;
        }
        if let Some(v) = o.only_seen {
            c.only_seen = v;
        }
        if let Some(v) = o.keep_flagged {
            c.keep_flagged = v;
        }
        if let Some(v) = &o.exclude_folders {
            c.exclude_folders = v.clone();
        }
        if let Some(v) = o.min_size {
            c.min_size = v;
        }
        if let Some(v) = &o.access {
            c.access = v.clone();
        }
        if let Some(v) = o.retention_days {
            c.retention_days = v;
        }
        match o.legal_hold {
            Some(true) if !c.on_hold(user) => c.legal_hold.push(user.to_string()),
            Some(false) => c.legal_hold.retain(|u| !u.eq_ignore_ascii_case(user)),
            _ => {}
        }
        c
    }

    /// Whether `user`'s archived mail must not be deleted.
    pub fn on_hold(&self, user: &str) -> bool {
        self.legal_hold.iter().any(|u| u.eq_ignore_ascii_case(user))
    }

    /// The parsed schedule (checked at load time).
    pub fn schedule(&self) -> crate::scheduler::Schedule {
        self.schedule
            .parse()
            .unwrap_or(crate::scheduler::Schedule::Off)
    }

    fn workers(n: usize) -> usize {
        if n > 0 {
            n
        } else {
            std::thread::available_parallelism().map_or(2, |c| c.get())
        }
    }

    /// Seekers to run: the configured number, or one per core.
    pub fn seeker_count(&self) -> usize {
        Self::workers(self.seekers)
    }

    /// Archivers to run: the configured number, or one per core.
    pub fn archiver_count(&self) -> usize {
        Self::workers(self.archivers)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_line_length: usize,
    pub max_command_size: usize,
    pub command_timeout_secs: u64,
    pub max_connections: usize,
    pub max_unauthenticated_per_ip: usize,
    pub max_inflight_mib: usize,
    pub max_errors: u32,
    pub max_auth_failures: u32,
    pub auth_throttle_secs: u64,
    pub max_auth_checks_per_ip: usize,
    pub max_mime_depth: usize,
    pub max_mailboxes: usize,
    pub max_mailbox_name: usize,
    pub max_mailbox_depth: usize,
    pub max_keywords: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub groups: u32,
    pub cache_mib: usize,
    pub wal_segment_bytes: u64,
    /// Size at which a body segment is sealed and a new one started.
    pub body_segment_mib: u64,
    /// When sealed body segments that are mostly dead are rewritten.
    pub reclaim_schedule: String,
    /// A sealed segment is reclaimed once at least this share of it is dead.
    pub reclaim_dead_percent: u8,
    /// After a reclaim, a database file at least this large (MiB) that is
    /// mostly free pages is rebuilt into a fresh one.
    pub compact_min_mib: u64,
    pub checkpoint_interval_secs: u64,
    pub checkpoint_records: u64,
    pub live_cache_messages: usize,
    /// Which UIDs each mailbox lost, and when, is kept this many days for
    /// QRESYNC clients coming back.
    pub vanished_keep_days: u64,
    /// Keep log segments until a backup holds them (set when `backup.targets`
    /// is not empty).
    #[serde(skip)]
    pub hold_wal_for_backup: bool,
}

impl Config {
    /// Loads defaults, then `path` if given, then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, true)
    }

    /// The defaults with `text` (a configuration file's contents) on top,
    /// validated; no environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?;
        let mut cfg: Config = built.try_deserialize()?;
        cfg.validate()?;
        cfg.store.hold_wal_for_backup = !cfg.backup.targets.is_empty();
        Ok(cfg)
    }

    /// As [`Config::load`]; `use_env = false` ignores `TIERMAIL_*` (tests).
    pub fn load_with_env(path: Option<&Path>, use_env: bool) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = path {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        if use_env {
            builder = builder.add_source(
                config::Environment::with_prefix("TIERMAIL")
                    .prefix_separator("_")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("domains.local")
                    .try_parsing(true),
            );
        }
        let mut cfg: Config = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        cfg.store.hold_wal_for_backup = !cfg.backup.targets.is_empty();
        Ok(cfg)
    }

    /// The default configuration with its data directory (and everything that
    /// lives beside it: users file, certificates) moved under `dir`, and all
    /// listeners on 127.0.0.1 port 0. Used by tests and benchmarks.
    pub fn for_testing(dir: &Path) -> Config {
        let mut cfg = Self::load_with_env(None, false).expect("embedded default config is valid");
        cfg.server.data_dir = dir.join("data");
        cfg.users.file = dir.join("users.toml");
        cfg.tls.cert = dir.join("certs/tiermail.crt");
        cfg.tls.key = dir.join("certs/tiermail.key");
        cfg.smtp.listen = "127.0.0.1:0".into();
        cfg.smtp.submission_listen = "127.0.0.1:0".into();
        cfg.smtp.submissions_listen = "127.0.0.1:0".into();
        cfg.smtp.lmtp_listen = "127.0.0.1:0".into();
        cfg.smtp.allow_plaintext_auth = true;
        cfg.imap.listen = "127.0.0.1:0".into();
        cfg.imap.tls_listen = "127.0.0.1:0".into();
        cfg.imap.allow_plaintext_auth = true;
        cfg.archive.root = dir.join("data/archive");
        cfg.archive.schedule = "off".into();
        cfg.backup.schedule = "off".into();
        cfg.backup.drill_schedule = "off".into();
        cfg.store.reclaim_schedule = "off".into();
        cfg.backup.targets = vec![dir.join("data/backups")];
        cfg.server.shutdown_grace_secs = 5;
        cfg
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.archive.schedule.parse::<crate::scheduler::Schedule>() {
            return Err(invalid("archive.schedule", e));
        }
        if let Err(e) = self.backup.schedule.parse::<crate::scheduler::Schedule>() {
            return Err(invalid("backup.schedule", e));
        }
        if let Err(e) = self
            .backup
            .drill_schedule
            .parse::<crate::scheduler::Schedule>()
        {
            return Err(invalid("backup.drill_schedule", e));
        }
        if self.backup.full_every.trim() != "0"
            && let Err(e) = crate::scheduler::parse_duration(&self.backup.full_every)
        {
            return Err(invalid("backup.full_every", e));
        }
        if let Err(e) = crate::scheduler::parse_duration(&self.backup.continuous_interval) {
            return Err(invalid("backup.continuous_interval", e));
        }
        if let Err(e) = crate::scheduler::parse_duration(&self.backup.max_staleness) {
            return Err(invalid("backup.max_staleness", e));
        }
        if self.backup.keep == 0 {
            return Err(invalid("backup.keep", "must be at least 1"));
        }
        if self.imap.max_flag_updates == 0 {
            return Err(invalid("imap.max_flag_updates", "must be at least 1"));
        }
        for (i, t) in self.backup.targets.iter().enumerate() {
            if t.as_os_str().is_empty() {
                return Err(invalid("backup.targets", "a target path is empty"));
            }
            if self.backup.targets[..i].contains(t) {
                return Err(invalid(
                    "backup.targets",
                    format!("{} is listed twice", t.display()),
                ));
            }
        }
        if !ACCESS_VALUES.contains(&self.archive.access.as_str()) {
            return Err(invalid(
                "archive.access",
                "must be \"read-write\", \"read-only\" or \"hidden\"",
            ));
        }
        if self.archive.queue == 0 {
            return Err(invalid("archive.queue", "must be at least 1"));
        }
        if self.archive.file_limit_mib == 0 {
            return Err(invalid("archive.file_limit_mib", "must be at least 1"));
        }
        if self.server.hostname.trim().is_empty()
            || self
                .server
                .hostname
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "server.hostname",
                "must be a non-empty host name without spaces",
            ));
        }
        if self.server.data_dir.as_os_str().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.server.log).is_err() {
            return Err(invalid(
                "server.log",
                format!("`{}` is not a valid log filter", self.server.log),
            ));
        }
        if self.domains.local.is_empty() {
            return Err(invalid("domains.local", "name at least one local domain"));
        }
        for d in &self.domains.local {
            if d.is_empty() || d.contains('@') || d.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "domains.local",
                    format!("`{d}` is not a domain name"),
                ));
            }
        }
        for (key, value) in [
            ("smtp.listen", &self.smtp.listen),
            ("smtp.submission_listen", &self.smtp.submission_listen),
            ("smtp.submissions_listen", &self.smtp.submissions_listen),
            ("smtp.lmtp_listen", &self.smtp.lmtp_listen),
            ("imap.listen", &self.imap.listen),
            ("imap.tls_listen", &self.imap.tls_listen),
        ] {
            parse_listen(key, value)?;
        }
        let l = &self.limits;
        if l.max_message_size < 1024 {
            return Err(invalid("limits.max_message_size", "must be at least 1024"));
        }
        if l.max_recipients == 0 {
            return Err(invalid("limits.max_recipients", "must be at least 1"));
        }
        if l.max_line_length < 512 {
            return Err(invalid(
                "limits.max_line_length",
                "must be at least 512 (RFC 5321)",
            ));
        }
        if l.max_command_size < l.max_line_length {
            return Err(invalid(
                "limits.max_command_size",
                "must be at least limits.max_line_length",
            ));
        }
        if l.max_unauthenticated_per_ip == 0 {
            return Err(invalid(
                "limits.max_unauthenticated_per_ip",
                "must be at least 1",
            ));
        }
        if l.max_inflight_mib == 0 || l.max_inflight_mib > 1 << 30 {
            return Err(invalid(
                "limits.max_inflight_mib",
                "must be between 1 and 1073741824",
            ));
        }
        if l.max_inflight_mib.saturating_mul(1 << 20) < l.max_message_size {
            return Err(invalid(
                "limits.max_inflight_mib",
                "must hold at least one message of limits.max_message_size",
            ));
        }
        if l.max_auth_checks_per_ip == 0 {
            return Err(invalid(
                "limits.max_auth_checks_per_ip",
                "must be at least 1",
            ));
        }
        if l.max_mailboxes < 10 {
            return Err(invalid(
                "limits.max_mailboxes",
                "must be at least 10 (the default folders need room)",
            ));
        }
        if l.max_mailbox_name < 16 || l.max_mailbox_name > l.max_line_length {
            return Err(invalid(
                "limits.max_mailbox_name",
                "must be between 16 and limits.max_line_length",
            ));
        }
        if l.max_mailbox_depth == 0 {
            return Err(invalid("limits.max_mailbox_depth", "must be at least 1"));
        }
        if l.max_keywords == 0 {
            return Err(invalid("limits.max_keywords", "must be at least 1"));
        }
        if l.command_timeout_secs == 0 {
            return Err(invalid("limits.command_timeout_secs", "must be at least 1"));
        }
        if !(2..=1000).contains(&l.max_mime_depth) {
            return Err(invalid(
                "limits.max_mime_depth",
                "must be between 2 and 1000",
            ));
        }
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if self.store.groups == 0 || self.store.groups > 1024 {
            return Err(invalid("store.groups", "must be between 1 and 1024"));
        }
        if let Err(e) = self
            .store
            .reclaim_schedule
            .parse::<crate::scheduler::Schedule>()
        {
            return Err(invalid("store.reclaim_schedule", e));
        }
        if !(1..=100).contains(&self.store.reclaim_dead_percent) {
            return Err(invalid("store.reclaim_dead_percent", "must be 1 to 100"));
        }
        if !(1..=4096).contains(&self.store.body_segment_mib) {
            return Err(invalid("store.body_segment_mib", "must be 1 to 4096"));
        }
        if self.store.wal_segment_bytes < 1 << 20 {
            return Err(invalid("store.wal_segment_bytes", "must be at least 1 MiB"));
        }
        if self.store.checkpoint_interval_secs == 0 {
            return Err(invalid(
                "store.checkpoint_interval_secs",
                "must be at least 1",
            ));
        }
        if self.store.checkpoint_records == 0 {
            return Err(invalid("store.checkpoint_records", "must be at least 1"));
        }
        Ok(())
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains
            .local
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Parses a listener setting; `""` means the listener is off.
pub fn parse_listen(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse::<SocketAddr>().map(Some).map_err(|e| {
        invalid(
            key,
            format!("`{value}` is not an address:port ({e}); use \"\" to turn it off"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_loopback() {
        let cfg = Config::load_with_env(None, false).unwrap();
        assert_eq!(cfg.smtp.listen, "127.0.0.1:2525");
        assert_eq!(cfg.smtp.submission_listen, "127.0.0.1:2587");
        assert_eq!(cfg.smtp.submissions_listen, "127.0.0.1:2465");
        assert_eq!(cfg.smtp.lmtp_listen, "127.0.0.1:2424");
        assert_eq!(cfg.store.groups, 4);
        assert_eq!(cfg.domains.local, vec!["example.test".to_string()]);
        assert!(!cfg.smtp.allow_plaintext_auth);
    }
}
