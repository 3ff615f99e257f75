//! The real `tiermail` binary as a child process, for tests that kill it,
//! signal it or read its exit code.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tiermail");

/// Writes `dir/tiermail.toml` with every path inside `dir`, every listener
/// on port 0, backups in `dir/data/backups` run only on demand, and `extra`
/// appended (whole sections), plus the test users.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let d = dir.display();
    // Backups stay inside `dir` and run only when a test asks, unless the
    // test brings its own [backup] section.
    let backup = if extra.contains("[backup]") {
        String::new()
    } else {
        format!(
            "[backup]\nschedule = \"off\"\ndrill_schedule = \"off\"\ntargets = [\"{d}/data/backups\"]\n\n"
        )
    };
    let text = format!(
        "[server]\ndata_dir = \"{d}/data\"\nshutdown_grace_secs = 5\nlog = \"info\"\n\n\
         [users]\nfile = \"{d}/users.toml\"\n\n\
         [smtp]\nlisten = \"127.0.0.1:0\"\nsubmission_listen = \"127.0.0.1:0\"\n\
         submissions_listen = \"127.0.0.1:0\"\nlmtp_listen = \"127.0.0.1:0\"\n\
         allow_plaintext_auth = true\n\n\
         [imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nallow_plaintext_auth = true\n\n\
         [tls]\ncert = \"{d}/certs/tiermail.crt\"\nkey = \"{d}/certs/tiermail.key\"\n\n{backup}"
    );
    // `extra` may add keys to the sections written here ([smtp], [imap]...).
    let mut base: toml::Table = text.parse().unwrap();
    let extra: toml::Table = extra.parse().expect("extra configuration is TOML");
    for (section, value) in extra {
        match (base.get_mut(&section), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => b.extend(e),
            (_, v) => {
                base.insert(section, v);
            }
        }
    }
    let path = dir.join("tiermail.toml");
    std::fs::write(&path, toml::to_string(&base).unwrap()).unwrap();
    if !dir.join("users.toml").exists() {
        super::write_users(&dir.join("users.toml"));
    }
    path
}

pub fn tiermail(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config);
    c.env_remove("RUST_LOG");
    c
}

/// Runs the `tiermail` CLI with `args`; returns (success, stdout + stderr).
pub fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let out = tiermail(config).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub struct Daemon {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `tiermail serve` and waits for its ready line. Its log (stderr)
    /// goes to `dir/serve-N.log`.
    pub fn start(config: &Path) -> Daemon {
        Self::start_env(config, &[])
    }

    /// As `start`, with `TIERMAIL_*` overrides in the environment (keys of
    /// sections the written config already has).
    pub fn start_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let dir = config.parent().unwrap();
        let n = (0..)
            .find(|n| !dir.join(format!("serve-{n}.log")).exists())
            .unwrap();
        let log = dir.join(format!("serve-{n}.log"));
        let mut cmd = tiermail(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tiermail binary runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(rest) = line.trim().strip_prefix("tiermail ready ") else {
            let _ = child.kill();
            panic!(
                "no ready line (got {line:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let addrs = rest
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        Daemon { child, addrs, log }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Whether the process has exited (a failpoint killed it).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "tiermail did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
