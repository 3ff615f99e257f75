//! The `tiermail` command: wiring only. Every verb lives in the library.

// Input from the network or disk must never panic: no unwrap outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tiermail::config::Config;

#[derive(Parser)]
#[command(
    name = "tiermail",
    version,
    about = "A mail server whose live store stays small"
)]
struct Cli {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or Ctrl-C.
    Serve,
    /// Manage accounts in the users file.
    #[command(subcommand)]
    User(UserCommand),
    /// Show the server's state (asks the running server, or reads the store).
    Status,
    /// The archive tier.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Online backups of the current store.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Rebuild the current store (or one group) from a backup and roll it
    /// forward; or put one user's mail from a backup into a folder.
    Restore(RestoreArgs),
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take a backup now (in the running server, or offline when it is
    /// stopped), to every target: incremental when the newest backup can be
    /// continued and its full one is younger than backup.full_every.
    Run {
        /// Take a full backup whatever the newest one is.
        #[arg(long)]
        full: bool,
    },
    /// List the backups of every target (or one directory).
    List {
        #[arg(long, value_name = "DIR")]
        target: Option<PathBuf>,
    },
    /// Check every block, mark and checksum of a backup file; exit 1 and
    /// name the first damage otherwise.
    Verify { file: PathBuf },
    /// Restore a backup (the newest when none is named) into a scratch
    /// directory and check every user's mail against its manifest.
    Drill { file: Option<PathBuf> },
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup file (default: the newest in the targets, or in --from).
    file: Option<PathBuf>,
    /// Take backups from this directory instead of the configured targets.
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// Only this storage group.
    #[arg(long, value_name = "G")]
    group: Option<u32>,
    /// Point in time (UTC, `2026-11-25 10:30:00` or RFC 3339): restore the
    /// last backup before it and replay later logs up to it.
    #[arg(long, value_name = "TIME", conflicts_with = "user")]
    until: Option<String>,
    /// Replace storage groups that exist in the data directory (the old
    /// files are kept beside them).
    #[arg(long)]
    force: bool,
    /// Restore into this data directory instead of the configured one
    /// (e.g. to look at old mail with a second server).
    #[arg(long, value_name = "DIR", conflicts_with = "user")]
    data_dir: Option<PathBuf>,
    /// Restore only this user's mail, into a folder of the live store.
    #[arg(long, requires = "into_folder")]
    user: Option<String>,
    /// The folder that receives the user's mail (e.g. Restored).
    #[arg(long, value_name = "FOLDER", requires = "user")]
    into_folder: Option<String>,
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Run the archive activity now (in the running server, or offline when
    /// the server is stopped).
    Run,
    /// Show what the current policy would move now, per user and folder,
    /// without changing anything.
    Simulate {
        /// Only this user.
        user: Option<String>,
    },
    /// Write a user's archived mail as an mbox file (mutt, Thunderbird and
    /// Python's mailbox module open it).
    Export {
        user: String,
        /// Only the mail archived from this folder.
        #[arg(long)]
        folder: Option<String>,
        /// The mbox file to write.
        #[arg(long)]
        mbox: PathBuf,
    },
    /// Search archived mail (legal discovery); prints user, folder, archive
    /// UID, date, sender and subject of each match.
    Search {
        /// Search every user's archive.
        #[arg(long, conflicts_with = "user")]
        all_users: bool,
        /// Search this user's archive only.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        text: Option<String>,
        /// On or after this day (YYYY-MM-DD, internal date).
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
        /// Before this day (YYYY-MM-DD).
        #[arg(long)]
        before: Option<chrono::NaiveDate>,
    },
    /// Check every record of every archive file; exit 1 on damage.
    Verify {
        /// Only this user's archive.
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add an account; the password is asked for (or read from stdin).
    Add {
        address: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an account's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove an account (its stored mail stays until deleted separately).
    Del { address: String },
    /// List accounts and aliases.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tiermail: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => serve(config),
        Command::User(u) => user(&config, u),
        Command::Status => status(&config),
        Command::Archive(a) => archive(&config, a),
        Command::Backup(b) => backup(&config, b),
        Command::Restore(r) => restore(&config, r),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tiermail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.server.log.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let server = tiermail::server::Server::start(config).await?;
        // Handlers first: a SIGTERM right after the ready line must shut
        // down cleanly, not kill the process with the default action.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // One machine-readable line on stdout: scripts and tests wait for it.
        println!("tiermail ready {}", server.bound);
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        server.shutdown().await;
        Ok(())
    })
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let pw = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(a == b, "the passwords differ");
        a
    };
    anyhow::ensure!(!pw.is_empty(), "empty password");
    Ok(pw)
}

fn user(config: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    use tiermail::auth;
    let path = &config.users.file;
    match cmd {
        UserCommand::Add {
            address,
            password_stdin,
        } => {
            let address = auth::normalize_address(&address)?;
            let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            if !config.is_local_domain(domain) {
                eprintln!(
                    "tiermail: warning: {domain} is not in domains.local; mail for it will be refused"
                );
            }
            let hash = auth::hash_password(&read_password(password_stdin)?)?;
            auth::add_user(path, &address, &hash)?;
            println!("added {address} to {}", path.display());
        }
        UserCommand::Passwd {
            address,
            password_stdin,
        } => {
            let hash = auth::hash_password(&read_password(password_stdin)?)?;
            auth::set_password(path, &address, &hash)?;
            println!("password of {address} changed");
        }
        UserCommand::Del { address } => {
            auth::delete_user(path, &address)?;
            println!("removed {address} from {}", path.display());
        }
        UserCommand::List => {
            let users = auth::Users::load(path)?;
            for a in users.addresses() {
                let u = users.get(&a).expect("listed address exists");
                if u.aliases.is_empty() {
                    println!("{a}");
                } else {
                    println!("{a} (aliases: {})", u.aliases.join(", "));
                }
            }
        }
    }
    Ok(())
}

fn status(config: &Config) -> anyhow::Result<()> {
    match tiermail::control::request(config, "status") {
        Some(text) => print!("{text}"),
        None => print!("{}", tiermail::control::offline_status(config)?),
    }
    Ok(())
}

fn archive(config: &Config, cmd: ArchiveCommand) -> anyhow::Result<()> {
    use tiermail::archive::{agent, file::UserArchive, format};
    match cmd {
        ArchiveCommand::Run => {
            in_server_or_offline(config, "archive run", |store| async move {
                let archives = std::sync::Arc::new(offline_archives(config)?);
                let cfg = std::sync::Arc::new(config.archive.clone());
                let line = agent::Activity::default()
                    .run_once(store, archives, cfg)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                Ok(format!("{line}\n"))
            })?;
        }
        ArchiveCommand::Simulate { user } => {
            let request = format!("archive simulate {}", user.as_deref().unwrap_or(""));
            in_server_or_offline(config, &request, |store| async move {
                let archives = offline_archives(config)?;
                let rows =
                    agent::simulate(&store, &archives, &config.archive, user.as_deref()).await?;
                Ok(agent::simulation_table(&rows))
            })?;
        }
        ArchiveCommand::Export { user, folder, mbox } => {
            let n = tiermail::archive::discovery::export_mbox(
                &config.archive.root,
                &user,
                folder.as_deref(),
                &mbox,
            )?;
            println!("exported {n} messages of {user} to {}", mbox.display());
        }
        ArchiveCommand::Search {
            all_users,
            user,
            from,
            subject,
            text,
            since,
            before,
        } => {
            anyhow::ensure!(
                all_users || user.is_some(),
                "give --user USER or --all-users"
            );
            let q = tiermail::archive::discovery::Query {
                user,
                from,
                subject,
                text,
                since,
                before,
            };
            let (hits, skipped) = tiermail::archive::discovery::search(&config.archive.root, &q)?;
            for h in &hits {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    h.user, h.folder, h.auid, h.date, h.from, h.subject
                );
            }
            for s in &skipped {
                eprintln!("tiermail: skipped: {s}");
            }
            eprintln!("{} matches", hits.len());
        }
        ArchiveCommand::Verify { user } => {
            let root = &config.archive.root;
            let dirs: Vec<(String, std::path::PathBuf)> = match user {
                Some(u) => vec![(u.clone(), root.join(format::user_dir_name(&u)))],
                None => {
                    let mut v = Vec::new();
                    for e in std::fs::read_dir(root)? {
                        let e = e?;
                        let name = e.file_name().to_string_lossy().into_owned();
                        if let Some(u) = format::user_from_dir_name(&name) {
                            v.push((u, e.path()));
                        }
                    }
                    v.sort();
                    v
                }
            };
            let mut bad = 0;
            for (u, dir) in dirs {
                let problems = UserArchive::verify(&dir);
                if problems.is_empty() {
                    println!("{u}: ok");
                } else {
                    bad += 1;
                    for p in problems {
                        println!("{u}: DAMAGED: {p}");
                    }
                }
            }
            anyhow::ensure!(bad == 0, "{bad} archive(s) damaged");
        }
    }
    Ok(())
}

/// Sends `request` to the running server and prints its answer; with no
/// server running, runs `offline` on the store opened here instead (the
/// store's lock keeps a server from starting on the same data meanwhile)
/// and prints what it returns. An error answer fails the command.
fn in_server_or_offline<F, Fut>(config: &Config, request: &str, offline: F) -> anyhow::Result<()>
where
    F: FnOnce(std::sync::Arc<tiermail::store::Store>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    if let Some(answer) = tiermail::control::request(config, request) {
        print!("{answer}");
        anyhow::ensure!(
            !answer.starts_with("error"),
            "the server refused `{request}`"
        );
        return Ok(());
    }
    init_logging(config);
    let rt = tokio::runtime::Runtime::new()?;
    let store = tiermail::store::Store::open(&config.server.data_dir, &config.store)?;
    let result = rt.block_on(offline(store.clone()));
    store.shutdown();
    print!("{}", result?);
    Ok(())
}

/// The archive context of an offline command: per-user policies read from
/// the users file.
fn offline_archives(config: &Config) -> anyhow::Result<tiermail::archive::registry::Archives> {
    let users = std::sync::Arc::new(tiermail::auth::Users::load(&config.users.file)?);
    Ok(
        tiermail::archive::registry::Archives::new(&config.archive).with_overrides(
            std::sync::Arc::new(move |u: &str| users.get(u).and_then(|x| x.archive.clone())),
        ),
    )
}

fn backup(config: &Config, cmd: BackupCommand) -> anyhow::Result<()> {
    use tiermail::backup::{agent::BackupAgent, restore, session, target};
    match cmd {
        BackupCommand::Run { full } => {
            let cfg = std::sync::Arc::new(config.backup.clone());
            let (request, mode) = if full {
                ("backup run full", session::Mode::Full)
            } else {
                ("backup run", session::Mode::Auto)
            };
            in_server_or_offline(config, request, |store| async move {
                create_local_targets(config)?;
                let line = BackupAgent::default()
                    .run_once(store, cfg, mode)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                Ok(format!("{line}\n"))
            })?;
        }
        BackupCommand::List { target } => {
            let dirs = match target {
                Some(t) => vec![t],
                None => config.backup.targets.clone(),
            };
            anyhow::ensure!(
                !dirs.is_empty(),
                "no backup targets configured (backup.targets)"
            );
            for dir in dirs {
                println!("{}:", dir.display());
                let files = match target::backups(&dir) {
                    Ok(f) => f,
                    Err(e) => {
                        println!("  unavailable: {e}");
                        continue;
                    }
                };
                if files.is_empty() {
                    println!("  no backups");
                }
                for f in files {
                    let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                    let name = f.file_name().unwrap_or_default().to_string_lossy();
                    match restore::describe(&f) {
                        Ok(d) => {
                            let t = chrono::DateTime::from_timestamp_millis(d.header.created_ms)
                                .unwrap_or_default();
                            let lsns: Vec<String> = d
                                .groups
                                .iter()
                                .map(|(s, e)| {
                                    // The log reaches back to log_from; a
                                    // first backup is its image alone.
                                    if s.log_from <= s.image_lsn || d.header.parent.is_some() {
                                        format!("g{:03} {}..{}", s.id, s.log_from, e.end_lsn)
                                    } else {
                                        format!("g{:03} ..{}", s.id, e.end_lsn)
                                    }
                                })
                                .collect();
                            let kind = match &d.header.parent {
                                Some(p) => format!("incremental on {p}"),
                                None => "full".to_string(),
                            };
                            println!(
                                "  {name}  {}  {kind}  {size} bytes  {} groups  LSNs {}",
                                t.format("%F %T UTC"),
                                d.groups.len(),
                                lsns.join(", ")
                            );
                        }
                        Err(e) => println!("  {name}  {size} bytes  DAMAGED: {e}"),
                    }
                }
            }
        }
        BackupCommand::Verify { file } => {
            let size = std::fs::metadata(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                .len();
            // One pass: every block's CRC, every mark and log record, and the
            // trailer's count and whole-file checksum (nothing is restored).
            // An incremental backup is checked with every backup it builds on.
            let chain = restore::chain_of(&file).map_err(|e| anyhow::anyhow!("DAMAGED: {e}"))?;
            let (header, _) = restore::materialize_chain(&chain, &|_| None, &|_, _| {})
                .map_err(|e| anyhow::anyhow!("DAMAGED: {e}"))?;
            let kind = if chain.len() > 1 {
                format!(
                    "incremental, {} backups from {} checked",
                    chain.len(),
                    chain[0].display()
                )
            } else {
                "full".to_string()
            };
            println!(
                "{}: ok: {size} bytes ({kind}), {} storage groups, every checksum and mark checked",
                file.display(),
                header.groups.len()
            );
        }
        BackupCommand::Drill { file } => {
            let line = format!(
                "backup drill {}",
                file.as_ref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default()
            );
            if let Some(answer) = tiermail::control::request(config, line.trim()) {
                print!("{answer}");
                anyhow::ensure!(!answer.starts_with("error"), "drill failed");
                return Ok(());
            }
            let rt = tokio::runtime::Runtime::new()?;
            let result = rt.block_on(BackupAgent::default().drill_once(
                &config.backup,
                &config.server.data_dir,
                file,
            ));
            match result {
                Ok(line) => println!("{line}"),
                Err(line) => anyhow::bail!("{line}"),
            }
        }
    }
    Ok(())
}

/// Backup targets inside the data directory are made on demand (as the
/// server does); others must exist.
fn create_local_targets(config: &Config) -> anyhow::Result<()> {
    for t in &config.backup.targets {
        if t.starts_with(&config.server.data_dir) {
            std::fs::create_dir_all(t)?;
        }
    }
    Ok(())
}

/// `2026-11-25 10:30:00`, `2026-11-25T10:30:00` (UTC) or RFC 3339.
fn parse_time(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    anyhow::bail!("`{s}` is not a time like 2026-11-25 10:30:00 (UTC) or RFC 3339")
}

fn restore(config: &Config, args: RestoreArgs) -> anyhow::Result<()> {
    use tiermail::backup::{drill, restore, user_restore};
    let dirs = match &args.from {
        Some(d) => vec![d.clone()],
        None => config.backup.targets.clone(),
    };
    let newest = || {
        drill::latest(&dirs).ok_or_else(|| {
            anyhow::anyhow!(
                "no backup found in {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    };
    if let (Some(user), Some(folder)) = (&args.user, &args.into_folder) {
        let file = match &args.file {
            Some(f) => f.clone(),
            None => newest()?,
        };
        let file =
            std::fs::canonicalize(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let req = format!("restore-user\t{user}\t{folder}\t{}", file.display());
        return in_server_or_offline(config, &req, |store| async move {
            let scratch = config.server.data_dir.join("restore-scratch");
            let r = user_restore::restore_user(store, file, user.clone(), folder.clone(), scratch)
                .await?;
            Ok(format!(
                "restored {} messages in {} folders of {user} under {folder}\n",
                r.messages, r.folders
            ))
        });
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.server.data_dir.clone());
    if data_dir == config.server.data_dir {
        anyhow::ensure!(
            tiermail::control::request(config, "status").is_none(),
            "the server is running on {}: stop it before restoring into its data directory",
            config.server.data_dir.display()
        );
    }
    let until = args.until.as_deref().map(parse_time).transpose()?;
    let (file, later) = match (until, &args.file) {
        (Some(_), Some(f)) => {
            let dir = f.parent().unwrap_or(std::path::Path::new("."));
            let later = tiermail::backup::target::backups(dir)?
                .into_iter()
                .filter(|p| p.file_name() > f.file_name())
                .collect();
            (f.clone(), later)
        }
        (Some(t), None) => {
            let dir = dirs
                .iter()
                .find(|d| tiermail::backup::target::backups(d).is_ok_and(|b| !b.is_empty()))
                .ok_or_else(|| anyhow::anyhow!("no backups to restore from"))?;
            restore::point_in_time_chain(dir, t)?
        }
        (None, Some(f)) => (f.clone(), Vec::new()),
        (None, None) => (newest()?, Vec::new()),
    };
    eprintln!("restoring from {}", file.display());
    let started = std::time::Instant::now();
    let last = std::cell::Cell::new(std::time::Instant::now());
    let opts = restore::Options {
        data_dir,
        file,
        group: args.group,
        until,
        later,
        force: args.force,
    };
    let reports = restore::restore(&opts, &|done, total| {
        if last.get().elapsed().as_secs() >= 2 || done == total {
            last.set(std::time::Instant::now());
            eprintln!(
                "  {:.0}% ({} of {} MB read)",
                done as f64 * 100.0 / total.max(1) as f64,
                done >> 20,
                total >> 20
            );
        }
    })?;
    for r in &reports {
        let at = r
            .reached_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| format!(", last commit {}", t.format("%F %T%.3f UTC")))
            .unwrap_or_default();
        println!(
            "group g{:03}: backup to LSN {}, rolled forward {} records to LSN {}{at}",
            r.id, r.end_lsn, r.replayed, r.reached_lsn
        );
    }
    println!(
        "restored {} storage groups in {:.1}s",
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
