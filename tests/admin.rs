//! The admin surface of the real binary: configuration errors stop start-up
//! with the key named, the users file is managed by the CLI and reloaded by
//! the running server, `status` works with and without a server.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, tiermail, write_config};
use common::{Client, PASSWORD, plain};

fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    outcome(cmd.output().unwrap())
}

/// (exit code, stdout, stderr) of a finished command.
fn outcome(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("[smtp]\nlisen = \"127.0.0.1:25\"\n", "lisen"),
        ("[smtp]\nlisten = \"nope\"\n", "smtp.listen"),
        ("[store]\ngroups = 0\n", "store.groups"),
        ("[limits]\nmax_message_size = \"big\"\n", "max_message_size"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection"),
        ("[domains]\nlocal = []\n", "domains.local"),
        ("[server]\nhostname = \"has space\"\n", "server.hostname"),
        ("this is not toml", "tiermail.toml"),
        ("[archive]\nschedule = \"sometimes\"\n", "archive.schedule"),
        ("[archive]\nqueue = 0\n", "archive.queue"),
        ("[archive]\naccess = \"sometimes\"\n", "archive.access"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("tiermail.toml");
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run(tiermail(&path).arg("serve"));
        assert_eq!(code, 2, "{text:?} must stop start-up; stderr: {err}");
        assert!(
            err.contains(key),
            "{text:?}: error should name {key}: {err}"
        );
        assert!(!out.contains("ready"), "{text:?}: {out}");
    }
    // Environment overrides are checked the same way.
    let path = write_config(dir.path(), "");
    let (code, _, err) = run(tiermail(&path)
        .arg("serve")
        .env("TIERMAIL_LIMITS__MAX_ERRORS", "lots"));
    assert_eq!(code, 2);
    assert!(err.contains("limits.max_errors"), "{err}");
    // A missing --config file is an error, not a silent default.
    let (code, _, err) = run(tiermail(&dir.path().join("missing.toml")).arg("status"));
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn env_override_changes_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let mut cmd = tiermail(&path);
    cmd.env("TIERMAIL_SMTP__LMTP_LISTEN", "");
    let mut child = cmd
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("tiermail ready "), "{line}");
    assert!(line.contains("smtp=127.0.0.1:"), "{line}");
    assert!(
        line.contains("lmtp=off"),
        "LMTP turned off by the environment: {line}"
    );
}

fn user_cmd(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = tiermail(config);
    cmd.arg("user").args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    outcome(child.wait_with_output().unwrap())
}

async fn rcpt_reply(addr: std::net::SocketAddr, rcpt: &str) -> String {
    let mut c = Client::connect(addr).await;
    c.expect("EHLO admin.test", "250").await;
    c.expect("MAIL FROM:<a@remote.test>", "250").await;
    c.cmd(&format!("RCPT TO:<{rcpt}>")).await
}

/// Polls until RCPT for `rcpt` starts with `code`, for up to 10 s.
async fn wait_rcpt(addr: std::net::SocketAddr, rcpt: &str, code: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = rcpt_reply(addr, rcpt).await;
        if r.starts_with(code) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RCPT {rcpt}: still {r}, wanted {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cli_manages_users_and_the_server_reloads_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // Comments written by an admin survive CLI edits.
    let users = dir.path().join("users.toml");
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.insert_str(0, "# accounts of example.test, kept by hand\n");
    std::fs::write(&users, text).unwrap();

    let daemon = Daemon::start(&config);
    let smtp = daemon.addr("smtp");
    assert!(
        rcpt_reply(smtp, "dave@example.test")
            .await
            .starts_with("550 5.1.1")
    );

    let (code, out, err) = user_cmd(
        &config,
        &["add", "dave@example.test", "--password-stdin"],
        Some("s3cret pass\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("added dave@example.test"), "{out}");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        text.starts_with("# accounts of example.test, kept by hand\n"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "no plain password in the file");
    assert!(text.contains("$argon2id$"), "{text}");
    // Adding the same account twice is refused.
    let (code, _, err) = user_cmd(
        &config,
        &["add", "dave@example.test", "--password-stdin"],
        Some("x\n"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("dave@example.test"), "{err}");

    // The running server picks the new user up without a restart...
    wait_rcpt(smtp, "dave@example.test", "250").await;
    // ...and the stored hash verifies over submission.
    let mut c = Client::connect(daemon.addr("submission")).await;
    c.expect("EHLO admin.test", "250").await;
    c.expect(
        &format!("AUTH PLAIN {}", plain("dave@example.test", "s3cret pass")),
        "235",
    )
    .await;

    let (code, out, _) = user_cmd(&config, &["list"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("alice@example.test (aliases: al@example.test)"),
        "{out}"
    );
    assert!(out.contains("dave@example.test"), "{out}");

    let (code, _, err) = user_cmd(
        &config,
        &["passwd", "dave@example.test", "--password-stdin"],
        Some("new pass\n"),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = user_cmd(&config, &["del", "dave@example.test"], None);
    assert_eq!(code, 0, "{err}");
    wait_rcpt(smtp, "dave@example.test", "550").await;
    let (code, _, err) = user_cmd(&config, &["del", "nobody@example.test"], None);
    assert_ne!(code, 0);
    assert!(err.contains("nobody@example.test"), "{err}");

    // SIGHUP forces a reload even when the file looks unchanged (same size
    // and mtime), e.g. after a restore from backup.
    let before = std::fs::metadata(&users).unwrap().modified().unwrap();
    let text = std::fs::read_to_string(&users).unwrap();
    let changed = text.replace("al@example.test", "am@example.test");
    assert_eq!(changed.len(), text.len());
    std::fs::write(&users, changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&users)
        .unwrap()
        .set_modified(before)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        rcpt_reply(smtp, "am@example.test").await.starts_with("550"),
        "not noticed without SIGHUP"
    );
    daemon.signal("HUP");
    wait_rcpt(smtp, "am@example.test", "250").await;

    // A broken users file keeps the previous users and is logged.
    std::fs::write(&users, "[[user]]\naddress = 42\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        rcpt_reply(smtp, "alice@example.test")
            .await
            .starts_with("250")
    );
    assert!(daemon.log_text().contains("users file not reloaded"));

    let status = daemon.terminate();
    assert!(status.success());
    let _ = PASSWORD;
}

#[tokio::test]
async fn status_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[store]\ngroups = 2\n");
    let daemon = Daemon::start(&config);
    let mut c = Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO admin.test", "250").await;
    let r = c
        .send_mail(
            "a@remote.test",
            &["alice@example.test", "bob@example.test"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");

    let (code, out, err) = run(tiermail(&config).arg("status"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("tiermail: running"), "{out}");
    assert!(out.contains("3 users"), "{out}");
    let messages: u64 = group_column(&out, 2).iter().sum();
    assert_eq!(messages, 2, "{out}");

    assert!(daemon.terminate().success());
    assert!(
        !dir.path().join("data/control.sock").exists(),
        "socket removed"
    );
    let (code, out, err) = run(tiermail(&config).arg("status"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("tiermail: not running"), "{out}");
    assert_eq!(group_column(&out, 2).iter().sum::<u64>(), 2, "{out}");
    // After a clean stop everything is checkpointed.
    assert_eq!(group_column(&out, 3), group_column(&out, 4), "{out}");
}

/// Column `i` of the storage-group table as numbers.
fn group_column(status: &str, i: usize) -> Vec<u64> {
    status
        .lines()
        .filter(|l| l.starts_with('g') && !l.starts_with("group"))
        .map(|l| l.split_whitespace().nth(i).unwrap().parse().unwrap())
        .collect()
}
