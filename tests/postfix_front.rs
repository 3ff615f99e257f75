//! A real MTA in front of tiermail: Postfix (its own instance, loopback
//! only, config written here) is the MX and hands mail to tiermail's LMTP
//! listener (`virtual_transport = lmtp:inet:...`); a message sent to Postfix
//! with swaks arrives in the tiermail INBOX. `bash .ci/run` installs postfix
//! and swaks; a missing tool fails the test, it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestServer, require};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Postfix instance in its own directory; stopped (by pid) on drop.
struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    fn start(dir: &Path, smtp_port: u16, lmtp: std::net::SocketAddr) -> Postfix {
        let d = dir.display();
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.example.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             alias_maps =\n\
             alias_database =\n\
             biff = no\n\
             maillog_file = /dev/stdout\n\
             virtual_mailbox_domains = example.test\n\
             virtual_mailbox_maps = static:ok\n\
             virtual_transport = lmtp:inet:{lmtp}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        );
        std::fs::write(dir.join("main.cf"), main).unwrap();
        let services = [
            format!("127.0.0.1:{smtp_port} inet n - n - - smtpd"),
            "pickup unix n - n 60 1 pickup".into(),
            "cleanup unix n - n - 0 cleanup".into(),
            "qmgr unix n - n 300 1 qmgr".into(),
            "rewrite unix - - n - - trivial-rewrite".into(),
            "bounce unix - - n - 0 bounce".into(),
            "defer unix - - n - 0 bounce".into(),
            "trace unix - - n - 0 bounce".into(),
            "verify unix - - n - 1 verify".into(),
            "flush unix n - n 1000? 0 flush".into(),
            "proxymap unix - - n - - proxymap".into(),
            "smtp unix - - n - - smtp".into(),
            "relay unix - - n - - smtp".into(),
            "error unix - - n - - error".into(),
            "retry unix - - n - - error".into(),
            "discard unix - - n - - discard".into(),
            "lmtp unix - - n - - lmtp".into(),
            "anvil unix - - n - 1 anvil".into(),
            "scache unix - - n - 1 scache".into(),
            "showq unix n - n - - showq".into(),
            "postlog unix-dgram n - n - 1 postlogd".into(),
        ];
        std::fs::write(dir.join("master.cf"), services.join("\n") + "\n").unwrap();
        // Postfix's daemons run as the postfix user: they must reach the
        // queue through our directories and own their data directory.
        use std::os::unix::fs::PermissionsExt;
        let mut p = dir.to_path_buf();
        while p.pop() && p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(chown.success(), "chown postfix data directory");
        let out = Command::new("postfix")
            .arg("-c")
            .arg(dir)
            .arg("start")
            .output()
            .expect("postfix runs");
        assert!(
            out.status.success(),
            "postfix start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Postfix {
            dir: dir.to_path_buf(),
        }
    }

    /// What is in the queue (Postfix logs to the test's output).
    fn log(&self) -> String {
        Command::new("postqueue")
            .arg("-c")
            .arg(&self.dir)
            .arg("-p")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.dir)
            .arg("stop")
            .output();
        // Whatever is left of the master process goes by its pid.
        let pid_file = self.dir.join("queue/pid/master.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let pid = pid.trim();
            if !pid.is_empty() {
                let _ = Command::new("kill").arg("-9").arg(pid).output();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_to_tiermail_over_lmtp() {
    require("postfix", "postfix");
    require("swaks", "swaks");
    let server = TestServer::start().await;
    let lmtp = server.lmtp();
    let port = free_port();
    let pf_dir = server.dir.path().join("postfix");
    let postfix = Postfix::start(&pf_dir, port, lmtp);

    // swaks talks to Postfix, the MX.
    let sent = tokio::task::spawn_blocking(move || {
        Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--from", "sender@remote.test", "--to", "al@example.test"])
            .args(["--header", "Subject: through postfix"])
            .args(["--body", "Postfix handed this to tiermail over LMTP."])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        sent.status.success(),
        "swaks to postfix failed:\n{}",
        String::from_utf8_lossy(&sent.stdout)
    );

    // Postfix queues, then delivers over LMTP: wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let msg = loop {
        let inbox = server.inbox("alice@example.test").await;
        if let Some(m) = inbox.into_iter().next() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery within 60 s; postfix queue:\n{}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = String::from_utf8_lossy(&msg);
    assert!(text.contains("Subject: through postfix"), "{text}");
    assert!(
        text.contains("Postfix handed this to tiermail over LMTP."),
        "{text}"
    );
    // Postfix's own trace header and ours (LMTP) are both there.
    assert!(text.contains("by mx.example.test (Postfix)"), "{text}");
    assert!(text.contains("with LMTP"), "{text}");
    drop(postfix);
    server.stop().await;
}
