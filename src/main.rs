//! The `tiermail` command: wiring only. Every verb lives in the library.

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
        // One machine-readable line on stdout: scripts and tests wait for it.
        println!("tiermail ready {}", server.bound);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
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
            if let Some(answer) = tiermail::control::request(config, "archive run") {
                print!("{answer}");
                anyhow::ensure!(!answer.starts_with("error"), "archive run refused");
                return Ok(());
            }
            // No server: run offline on the store (its lock keeps a server
            // from starting on the same data meanwhile).
            init_logging(config);
            let rt = tokio::runtime::Runtime::new()?;
            let store = tiermail::store::Store::open(&config.server.data_dir, &config.store)?;
            let cfg = std::sync::Arc::new(config.archive.clone());
            let archives = std::sync::Arc::new(offline_archives(config)?);
            let result = rt.block_on(async {
                agent::Activity::default()
                    .run_once(store.clone(), archives, cfg)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))
            });
            store.shutdown();
            println!("{}", result?);
        }
        ArchiveCommand::Simulate { user } => {
            // Asks the running server, or reads the store when it is stopped.
            if let Some(answer) = tiermail::control::request(
                config,
                &format!("archive simulate {}", user.as_deref().unwrap_or("")),
            ) {
                print!("{answer}");
                return Ok(());
            }
            let rt = tokio::runtime::Runtime::new()?;
            let store = tiermail::store::Store::open(&config.server.data_dir, &config.store)?;
            let archives = offline_archives(config)?;
            let rows = rt.block_on(agent::simulate(
                &store,
                &archives,
                &config.archive,
                user.as_deref(),
            ));
            store.shutdown();
            print!("{}", agent::simulation_table(&rows?));
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
