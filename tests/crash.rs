//! Crash safety of the real binary: SIGKILL in the middle of concurrent
//! deliveries loses nothing that was acknowledged and invents nothing; a torn
//! write-ahead log tail is cut off at start-up; SIGTERM checkpoints and exits 0.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::{Daemon, cli, write_config};
use tiermail::config::Config;
use tiermail::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that never panics: any I/O problem ends its transaction.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> std::io::Result<Raw> {
        let s = TcpStream::connect(addr).await?;
        let mut r = Raw { s, buf: Vec::new() };
        r.expect("220").await?;
        r.s.write_all(b"EHLO crash.test\r\n").await?;
        r.expect("250").await?;
        Ok(r)
    }

    async fn reply(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                let line = String::from_utf8_lossy(&line[..p]).into_owned();
                if line.len() >= 4 && line.as_bytes()[3] == b'-' {
                    continue;
                }
                return Ok(line);
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One pipelined transaction to alice; Ok once it got its 250.
    async fn send_to_alice(&mut self, msg: &[u8]) -> std::io::Result<()> {
        self.s
            .write_all(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            .await?;
        for code in ["250", "250", "354"] {
            self.expect(code).await?;
        }
        self.s.write_all(msg).await?;
        self.s.write_all(b".\r\n").await?;
        self.expect("250").await
    }

    async fn expect(&mut self, code: &str) -> std::io::Result<()> {
        let r = self.reply().await?;
        if r.starts_with(code) {
            Ok(())
        } else {
            Err(std::io::Error::other(r))
        }
    }
}

/// One message per (task, seq): unique bytes of varying size.
fn body(task: usize, seq: usize) -> Vec<u8> {
    let mut b =
        format!("Message-Id: <{task}.{seq}@crash.test>\r\nSubject: crash {task}/{seq}\r\n\r\n")
            .into_bytes();
    let lines = (task * 7919 + seq * 104_729) % 200;
    for i in 0..lines {
        b.extend_from_slice(
            format!("line {i} of message {task}/{seq} padding padding\r\n").as_bytes(),
        );
    }
    b
}

const USERS: [&str; 3] = [
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
];

#[derive(Default)]
struct Ledger {
    /// (user, body) for which DATA was sent completely: may be stored.
    sent: HashSet<(String, Vec<u8>)>,
    /// (user, body) acknowledged with 250: must be stored exactly once.
    acked: Vec<(String, Vec<u8>)>,
}

async fn sender(addr: SocketAddr, task: usize, ledger: Arc<Mutex<Ledger>>) {
    let Ok(mut c) = Raw::connect(addr).await else {
        return;
    };
    for seq in 0.. {
        let rcpts: Vec<&str> = if seq % 4 == 3 {
            vec![USERS[task % 3], USERS[(task + 1) % 3]]
        } else {
            vec![USERS[(task + seq) % 3]]
        };
        let msg = body(task, seq);
        // Pipelined envelope, as real MTAs send it.
        let mut env = b"MAIL FROM:<load@remote.test>\r\n".to_vec();
        for r in &rcpts {
            env.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
        }
        env.extend_from_slice(b"DATA\r\n");
        let step = async {
            c.s.write_all(&env).await?;
            for _ in &rcpts {
                c.expect("250").await?;
            }
            c.expect("250").await?;
            c.expect("354").await?;
            c.s.write_all(&msg).await?;
            {
                let mut l = ledger.lock().unwrap();
                for r in &rcpts {
                    l.sent.insert((r.to_string(), msg.clone()));
                }
            }
            c.s.write_all(b".\r\n").await?;
            c.expect("250").await
        };
        if step.await.is_err() {
            return;
        }
        let mut l = ledger.lock().unwrap();
        for r in &rcpts {
            l.acked.push((r.to_string(), msg.clone()));
        }
    }
}

/// Every message of every user, as (user, bytes the client sent) -> count.
async fn stored(config: &Path) -> (HashMap<(String, Vec<u8>), usize>, Arc<Store>) {
    let cfg = Config::load(Some(config)).unwrap();
    let store = Store::open(&cfg.server.data_dir, &cfg.store).expect("store opens offline");
    let mut out = HashMap::new();
    for user in USERS {
        for m in common::inbox_of(&store, user).await {
            let sent = common::strip_trace(&m).1.to_vec();
            *out.entry((user.to_string(), sent)).or_insert(0) += 1;
        }
    }
    (out, store)
}

/// Sixteen SMTP sessions stream mail to the server of `config`; SIGKILL
/// once `want` deliveries were acknowledged (or after 30 s), while every
/// session is in the middle of its next message. Returns what was sent
/// whole and what was acknowledged.
async fn stream_then_kill(
    config: &Path,
    want: usize,
) -> (HashSet<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>) {
    stream_then_kill_env(config, want, &[]).await
}

/// As [`stream_then_kill`], with `env` for the server (a failpoint that
/// kills it first ends the stream there).
async fn stream_then_kill_env(
    config: &Path,
    want: usize,
    env: &[(&str, &str)],
) -> (HashSet<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>) {
    let mut daemon = Daemon::start_env(config, env);
    let addr = daemon.addr("smtp");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let tasks: Vec<_> = (0..16)
        .map(|t| tokio::spawn(sender(addr, t, ledger.clone())))
        .collect();
    for _ in 0..600 {
        if ledger.lock().unwrap().acked.len() >= want || daemon.exited() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let l = ledger.lock().unwrap();
    (l.sent.clone(), l.acked.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    // A short checkpoint interval so that the kill lands with part of the
    // mail checkpointed into redb and part only in the log.
    let config = write_config(
        dir.path(),
        "[store]\ngroups = 3\ncheckpoint_interval_secs = 1\n",
    );
    let (sent, acked) = stream_then_kill(&config, 600).await;
    assert!(
        acked.len() >= 100,
        "only {} acknowledged before the kill",
        acked.len()
    );

    // Restart: recovery replays the log. The server must work afterwards.
    let daemon = Daemon::start(&config);
    let mut c = Raw::connect(daemon.addr("smtp")).await.unwrap();
    let after = body(99, 0);
    c.send_to_alice(&after).await.unwrap();
    let status = daemon.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");

    let (found, store) = stored(&config).await;
    for key in &acked {
        assert_eq!(
            found.get(key).copied().unwrap_or(0),
            1,
            "acknowledged message for {} stored exactly once",
            key.0
        );
    }
    let after_key = ("alice@example.test".to_string(), after);
    assert_eq!(found.get(&after_key), Some(&1));
    for (key, n) in &found {
        assert_eq!(*n, 1, "no duplicates");
        assert!(
            sent.contains(key) || *key == after_key,
            "stored message for {} was never completely sent",
            key.0
        );
    }
    // SIGTERM checkpointed everything.
    for g in store.status().unwrap() {
        assert_eq!(
            g.checkpoint_lsn, g.applied_lsn,
            "group {} checkpointed",
            g.id
        );
    }
    store.shutdown();
    println!(
        "acknowledged {} deliveries, stored {} (in flight at the kill: {})",
        acked.len(),
        found.len() - 1,
        found.len() - 1 - acked.len()
    );
}

/// SIGKILL while checkpoints prune the log all the time (1 MiB segments, a
/// checkpoint every 50 records), so the kill may land while the pruning
/// thread is deleting segments: what is left is a contiguous run of the
/// newest segments, recovery accepts it, and every acknowledged message is
/// there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_segments_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[store]\ngroups = 1\nwal_segment_bytes = 1048576\ncheckpoint_records = 50\n\
         [backup]\ntargets = []\n",
    );
    let (_, acked) = stream_then_kill(&config, 800).await;
    assert!(acked.len() >= 100, "only {} acknowledged", acked.len());

    // The segments left follow each other without a gap.
    let wal = dir.path().join("data/groups/g000/wal");
    let segs = tiermail::store::export::wal_segments(&wal).unwrap();
    assert!(!segs.is_empty());
    for pair in segs.windows(2) {
        let last = tiermail::store::export::wal_lsns(&pair[0].1)
            .unwrap()
            .last()
            .copied();
        assert_eq!(
            last.map(|l| l + 1),
            Some(pair[1].0),
            "segment {} does not lead to the next",
            pair[0].1.display()
        );
    }

    let daemon = Daemon::start(&config);
    let status = daemon.terminate();
    assert!(status.success(), "recovered and exited cleanly: {status:?}");
    let (found, store) = stored(&config).await;
    for key in &acked {
        assert_eq!(
            found.get(key).copied().unwrap_or(0),
            1,
            "acknowledged message stored exactly once"
        );
    }
    assert!(found.values().all(|n| *n == 1), "no duplicates");
    store.shutdown();
}

/// Every acknowledged message of a stream is there exactly once after a
/// restart, and nothing else is, with the SIGKILL landing at `failpoint`.
async fn stream_killed_at(failpoint: &str, store_toml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), store_toml);
    let (sent, acked) =
        stream_then_kill_env(&config, 100_000, &[("TMTEST_FAILPOINT", failpoint)]).await;
    assert!(acked.len() >= 20, "only {} acknowledged", acked.len());
    let log = std::fs::read_to_string(dir.path().join("serve-0.log")).unwrap();
    assert!(
        log.contains("failpoint hit"),
        "{failpoint} was never reached"
    );
    let daemon = Daemon::start(&config);
    assert!(daemon.terminate().success());
    let (found, store) = stored(&config).await;
    for key in &acked {
        assert_eq!(
            found.get(key).copied().unwrap_or(0),
            1,
            "acknowledged message stored once"
        );
    }
    for (key, n) in &found {
        assert_eq!(*n, 1, "no duplicates");
        assert!(
            sent.contains(key),
            "a stored message was never completely sent"
        );
    }
    store.shutdown();
}

/// SIGKILL between the body segments' fsync and the checkpoint's durable
/// redb commit: the redb state falls back to the previous checkpoint, the
/// segments hold more than it refers to (cut off at start), and the log
/// brings the rest back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_body_sync_and_checkpoint_commit() {
    stream_killed_at(
        "checkpoint-after-body-sync",
        "[store]\ngroups = 2\ncheckpoint_interval_secs = 1\nbody_segment_mib = 1\n",
    )
    .await;
}

/// An upgrade of a format 1 store killed after it moved bodies (before its
/// one durable commit) or after that commit (before compaction) runs again
/// or finishes at the next start, and the store holds exactly what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_killed_midway_completes_at_the_next_start() {
    for point in ["upgrade-after-batch", "upgrade-before-compact"] {
        let dir = tempfile::tempdir().unwrap();
        common::install_store_v1(dir.path());
        let config = write_config(dir.path(), "[store]\ngroups = 2\n");
        let status = common::daemon::tiermail(&config)
            .arg("serve")
            .env("TMTEST_FAILPOINT", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            !status.success(),
            "{point}: the failpoint killed the upgrade"
        );
        let daemon = Daemon::start(&config);
        assert!(daemon.terminate().success());
        let cfg = Config::load(Some(&config)).unwrap();
        let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
        common::assert_store_v1_contents(&store).await;
        store.shutdown();
    }
}

/// Delivers `n` messages to alice one after the other, then SIGKILLs.
async fn deliver_then_kill(config: &Path, n: usize) -> Vec<Vec<u8>> {
    let daemon = Daemon::start(config);
    let mut c = Raw::connect(daemon.addr("smtp")).await.unwrap();
    let mut bodies = Vec::new();
    for seq in 0..n {
        let msg = body(0, seq);
        c.send_to_alice(&msg).await.unwrap();
        bodies.push(msg);
    }
    daemon.kill9();
    bodies
}

fn last_segment(dir: &Path) -> PathBuf {
    let wal = dir.join("data/groups/g000/wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

async fn alice_after_restart(config: &Path) -> (Vec<Vec<u8>>, String) {
    let daemon = Daemon::start(config);
    let status = daemon.terminate();
    assert!(status.success());
    let log = std::fs::read_to_string(config.parent().unwrap().join("serve-1.log")).unwrap();
    let (_, store) = stored(config).await;
    let inbox = common::inbox_of(&store, "alice@example.test")
        .await
        .iter()
        .map(|m| common::strip_trace(m).1.to_vec())
        .collect();
    store.shutdown();
    (inbox, log)
}

// No checkpoint happens on its own in these tests: everything lives in the log.
const LOG_ONLY: &str =
    "[store]\ngroups = 1\ncheckpoint_interval_secs = 3600\ncheckpoint_records = 1000000\n";

#[tokio::test]
async fn torn_garbage_after_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), LOG_ONLY);
    let bodies = deliver_then_kill(&config, 10).await;
    // A record header promising 4000 bytes, of which only a few arrived.
    let seg = last_segment(dir.path());
    let before = std::fs::metadata(&seg).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(
        &mut f,
        &[0xa0, 0x0f, 0, 0, 3, 11, 0, 0, 0, 0, 0, 0, 0, b'x', b'y'],
    )
    .unwrap();
    drop(f);

    let (inbox, log) = alice_after_restart(&config).await;
    assert_eq!(inbox, bodies, "all ten acknowledged messages survive");
    assert!(log.contains("torn tail"), "the cut is logged:\n{log}");
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        before,
        "garbage removed"
    );
}

#[tokio::test]
async fn half_written_last_record_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), LOG_ONLY);
    let bodies = deliver_then_kill(&config, 10).await;
    // Cut the last record in half, as a power cut mid-write would.
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 200).unwrap();
    drop(f);

    let (inbox, log) = alice_after_restart(&config).await;
    assert_eq!(
        inbox,
        bodies[..9],
        "the torn message is gone, the rest intact"
    );
    assert!(log.contains("torn tail"), "the cut is logged:\n{log}");
}

/// IMAP writes answered OK survive SIGKILL: APPEND, STORE, MOVE, EXPUNGE,
/// CREATE and RENAME, all made only in the log (no checkpoint).
#[tokio::test]
async fn imap_writes_acknowledged_before_sigkill_survive() {
    use common::imap::Imap;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), LOG_ONLY);
    let daemon = Daemon::start(&config);
    let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
    for n in 0..5 {
        let msg = format!("Subject: imap {n}\r\n\r\nbody {n}\r\n");
        c.send(format!("a{n} APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
            .await;
        let r = c.until(&format!("a{n}")).await;
        assert!(r.contains("OK [APPENDUID"), "{r}");
    }
    let r = c.run("c CREATE Projects").await;
    assert!(r.contains("c OK"), "{r}");
    let r = c.run("r RENAME Projects Work").await;
    assert!(r.contains("r OK"), "{r}");
    let r = c.run("s SELECT INBOX").await;
    // A QRESYNC client's last sync: what vanished after it must be known
    // after the crash too (the expunge history is replayed with the log).
    let number = |key: &str| -> u64 {
        let at = r.find(key).unwrap() + key.len();
        r[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let (uv, modseq) = (number("UIDVALIDITY "), number("HIGHESTMODSEQ "));
    let r = c.run("f STORE 1 +FLAGS (\\Flagged)").await;
    assert!(r.contains("f OK"), "{r}");
    let r = c.run("m MOVE 2 Work").await;
    assert!(r.contains("m OK"), "{r}");
    c.run("d STORE 3 +FLAGS.SILENT (\\Deleted)").await;
    let r = c.run("e EXPUNGE").await;
    assert!(r.contains("e OK"), "{r}");
    daemon.kill9();

    let daemon = Daemon::start(&config);
    let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
    let r = c.run("l LIST \"\" *").await;
    assert!(
        r.contains("\"/\" Work\r\n") && !r.contains("Projects"),
        "{r}"
    );
    let r = c.run("s SELECT INBOX").await;
    assert!(r.contains("* 3 EXISTS"), "{r}");
    let r = c
        .run("f FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert!(
        r.contains(
            "* 1 FETCH (FLAGS (\\Flagged) BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: imap 0\r\n"
        ),
        "{r}"
    );
    assert!(
        r.contains("Subject: imap 2") && r.contains("Subject: imap 4"),
        "{r}"
    );
    assert!(
        !r.contains("Subject: imap 1") && !r.contains("Subject: imap 3"),
        "{r}"
    );
    let r = c.run("w STATUS Work (MESSAGES)").await;
    assert!(r.contains("* STATUS Work (MESSAGES 1)"), "{r}");
    c.run("q ENABLE QRESYNC").await;
    let r = c
        .run(&format!("x EXAMINE INBOX (QRESYNC ({uv} {modseq} 1:5))"))
        .await;
    // UID 2 moved, UID 4 (sequence 3 after the MOVE) expunged.
    assert!(r.contains("* VANISHED (EARLIER) 2,4\r\n"), "{r}");
    assert!(
        r.contains("* 1 FETCH (FLAGS (\\Flagged) UID 1 MODSEQ ("),
        "{r}"
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_loss_restores_every_acknowledged_message_from_backup_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[store]\ngroups = 3\ncheckpoint_interval_secs = 1\n",
    );
    let daemon = Daemon::start(&config);
    let addr = daemon.addr("smtp");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let tasks: Vec<_> = (0..8)
        .map(|t| tokio::spawn(sender(addr, t, ledger.clone())))
        .collect();
    let acked = |n: usize| {
        let ledger = ledger.clone();
        async move {
            for _ in 0..1200 {
                if ledger.lock().unwrap().acked.len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("fewer than {n} deliveries acknowledged");
        }
    };
    acked(300).await;
    // An online backup while the senders go on.
    let c = config.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || cli(&c, &["backup", "run"]))
        .await
        .unwrap();
    assert!(ok && out.contains("ok"), "{out}");
    let at_backup = ledger.lock().unwrap().acked.len();
    acked(at_backup + 300).await;
    daemon.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let (sent, acked) = {
        let l = ledger.lock().unwrap();
        (l.sent.clone(), l.acked.clone())
    };

    // Every group's database is lost; the logs survive.
    let mut lost = 0;
    for g in 0..3 {
        let db = dir.path().join(format!("data/groups/g{g:03}/store.redb"));
        if db.exists() {
            std::fs::remove_file(db).unwrap();
            lost += 1;
        }
    }
    assert_eq!(lost, 3);
    let (ok, out) = cli(&config, &["restore"]);
    assert!(ok, "{out}");
    assert!(out.contains("rolled forward"), "{out}");

    let (found, store) = stored(&config).await;
    for key in &acked {
        assert_eq!(
            found.get(key).copied().unwrap_or(0),
            1,
            "acknowledged message for {} restored exactly once",
            key.0
        );
    }
    for (key, n) in &found {
        assert_eq!(*n, 1, "no duplicates");
        assert!(sent.contains(key), "restored a message never sent");
    }
    store.shutdown();
    println!(
        "{} acknowledged ({at_backup} before the backup), all restored; {out}",
        acked.len()
    );
}

/// Delivers `n` messages made by `make` to `user`'s INBOX offline and
/// expunges all but every tenth; returns those (UID -> bytes).
async fn fill_keeping_every_tenth(
    cfg: &Config,
    user: &str,
    n: u32,
    make: impl Fn(u32) -> Vec<u8>,
) -> HashMap<u32, Vec<u8>> {
    use tiermail::store::{Delivery, Summary};
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let mut kept = HashMap::new();
    for i in 0..n {
        let raw = make(i);
        store
            .deliver(Delivery {
                user: user.into(),
                mailbox: "INBOX".into(),
                summary: Summary::parse(&raw),
                raw: Arc::new(raw.clone()),
                internal_date: 1_700_000_000,
                flags: Vec::new(),
            })
            .await
            .unwrap();
        if (i + 1) % 10 == 0 {
            kept.insert(i + 1, raw);
        }
    }
    common::keep_every_tenth(&store, user, n).await;
    store.shutdown();
    kept
}

/// Starts the server with a continuous reclaim and the failpoint `point`
/// and waits until the failpoint killed it (fails after 30 s).
async fn serve_until_failpoint(config: &Path, point: &str) {
    let log_path = config.parent().unwrap().join(format!("{point}.log"));
    let mut child = common::daemon::tiermail(config)
        .arg("serve")
        .env("TIERMAIL_STORE__RECLAIM_SCHEDULE", "continuous")
        .env("TMTEST_FAILPOINT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut died = false;
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            died = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !died {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        died && log.contains("failpoint hit"),
        "{point} not reached:\n{log}"
    );
}

/// SIGKILL at each step of a body segment reclaim (after bodies were moved,
/// after the checkpoint that makes the moves durable, after an old segment
/// was deleted): at the next start every message that was left is there
/// with its exact bytes, nothing expunged came back, and a reclaim then
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_of_a_reclaim() {
    for point in [
        "reclaim-after-relocate",
        "reclaim-after-checkpoint",
        "reclaim-after-delete",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            "[store]\ngroups = 1\nbody_segment_mib = 1\nreclaim_schedule = \"off\"\n",
        );
        let cfg = Config::load(Some(&config)).unwrap();
        let user = "alice@example.test";
        // 600 messages of 10 KB, 90% expunged.
        let kept = fill_keeping_every_tenth(&cfg, user, 600, |i| {
            let mut raw = format!("Subject: m{i}\r\n\r\n").into_bytes();
            while raw.len() < 10_000 {
                raw.extend_from_slice(format!("{i} line of message {i}\r\n").as_bytes());
            }
            raw
        })
        .await;
        // The server reclaims at once and dies at the failpoint.
        serve_until_failpoint(&config, point).await;

        let check = |store: Arc<Store>, kept: HashMap<u32, Vec<u8>>| async move {
            let msgs = store.messages(user, "INBOX").await.unwrap();
            let uids: Vec<u32> = msgs.iter().map(|(u, _)| *u).collect();
            let mut want: Vec<u32> = kept.keys().copied().collect();
            want.sort();
            assert_eq!(uids, want, "{point}: exactly the kept messages");
            for (uid, raw) in &kept {
                let got = store.raw(user, "INBOX", *uid).await.unwrap().unwrap();
                assert!(got == *raw, "{point}: uid {uid} bytes");
            }
        };
        let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
        check(store.clone(), kept.clone()).await;
        store.reclaim(50).await.unwrap();
        check(store.clone(), kept.clone()).await;
        let st = &store.status().unwrap()[0];
        assert!(
            st.body_bytes < 2 << 20,
            "{point}: {} bytes left after the reclaim",
            st.body_bytes
        );
        store.shutdown();
    }
}

/// SIGKILL during a rebuild of the database file (after the copy, and
/// after the new file was made durable but before it replaced the old):
/// at the next start the store holds exactly the messages it held, the
/// half-built file is gone, and a rebuild then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_database_rebuild() {
    for point in ["compact-after-copy", "compact-before-rename"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            "[store]\ngroups = 1\ncompact_min_mib = 1\nreclaim_schedule = \"off\"\n",
        );
        let cfg = Config::load(Some(&config)).unwrap();
        let user = "alice@example.test";
        let kept = fill_keeping_every_tenth(&cfg, user, 4000, |i| {
            format!("Subject: m{i}\r\n\r\nsmall message {i}\r\n").into_bytes()
        })
        .await;
        serve_until_failpoint(&config, point).await;

        let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
        assert!(
            !dir.path()
                .join("data/groups/g000/store.redb.compacting")
                .exists(),
            "{point}: the half-built file is removed"
        );
        for round in 0..2 {
            let uids: Vec<u32> = store
                .messages(user, "INBOX")
                .await
                .unwrap()
                .iter()
                .map(|(u, _)| *u)
                .collect();
            let mut want: Vec<u32> = kept.keys().copied().collect();
            want.sort();
            assert_eq!(
                uids, want,
                "{point} round {round}: exactly the kept messages"
            );
            for (uid, raw) in &kept {
                let got = store.raw(user, "INBOX", *uid).await.unwrap().unwrap();
                assert!(got == *raw, "{point}: uid {uid}");
            }
            // Then a rebuild completes.
            let g = store.groups()[0].clone();
            tokio::task::spawn_blocking(move || g.compact_blocking(16 << 20, 1 << 20))
                .await
                .unwrap()
                .unwrap();
        }
        store.shutdown();
    }
}

/// Delivers messages `first..first + n` of sender task 1 to alice, then
/// SIGKILLs the server; returns their bodies.
async fn deliver_range_then_kill(config: &Path, first: usize, n: usize) -> Vec<Vec<u8>> {
    let daemon = Daemon::start(config);
    let mut c = Raw::connect(daemon.addr("smtp")).await.unwrap();
    let mut bodies = Vec::new();
    for seq in first..first + n {
        let msg = body(1, seq);
        c.send_to_alice(&msg).await.unwrap();
        bodies.push(msg);
    }
    daemon.kill9();
    bodies
}

/// Runs a command that must be killed at `point`.
fn killed_at(config: &Path, args: &[&std::ffi::OsStr], point: &str) {
    let status = common::daemon::tiermail(config)
        .args(args)
        .env("TMTEST_FAILPOINT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: the failpoint killed the command"
    );
}

/// SIGKILL in the middle of a full backup, of an incremental one and of a
/// restore of their chain: no half-written backup ever bears a backup's
/// name, the next run of each completes, and the restored store holds
/// every acknowledged message exactly once with identical bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_full_and_incremental_backups_and_their_restore() {
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[store]\ngroups = 2\nbody_segment_mib = 1\n");
    let target = dir.path().join("data/backups");
    let mut bodies = deliver_range_then_kill(&config, 0, 60).await;
    fn os(v: &[&'static str]) -> Vec<&'static OsStr> {
        v.iter().map(|s| OsStr::new(*s)).collect()
    }

    killed_at(&config, &os(&["backup", "run"]), "backup-after-segments");
    assert!(
        tiermail::backup::target::backups(&target)
            .unwrap()
            .is_empty()
    );
    let (ok, out) = cli(&config, &["backup", "run"]);
    assert!(ok && out.contains("(full,"), "{out}");

    bodies.extend(deliver_range_then_kill(&config, 60, 30).await);
    killed_at(
        &config,
        &os(&["backup", "run"]),
        "backup-incremental-after-log",
    );
    assert_eq!(tiermail::backup::target::backups(&target).unwrap().len(), 1);
    let (ok, out) = cli(&config, &["backup", "run"]);
    assert!(ok && out.contains("incremental on"), "{out}");
    // Mail after the last backup: a restore into a fresh directory without
    // the live log stops at the backup, so it is not expected there.
    let last = tiermail::backup::target::backups(&target)
        .unwrap()
        .pop()
        .unwrap();

    let fresh = dir.path().join("fresh");
    let args = [
        OsStr::new("restore"),
        OsStr::new("--data-dir"),
        fresh.as_os_str(),
        last.as_os_str(),
    ];
    for point in ["restore-after-segments", "restore-before-rename"] {
        killed_at(&config, &args, point);
        assert!(
            !fresh.join("groups/g000/store.redb").exists(),
            "{point}: nothing in place"
        );
    }
    let (ok, out) = cli(
        &config,
        &args.iter().map(|a| a.to_str().unwrap()).collect::<Vec<_>>(),
    );
    assert!(ok, "{out}");
    let cfg = Config::load(Some(&config)).unwrap();
    let store = Store::open(&fresh, &cfg.store).unwrap();
    let inbox: Vec<Vec<u8>> = common::inbox_of(&store, "alice@example.test")
        .await
        .iter()
        .map(|m| common::strip_trace(m).1.to_vec())
        .collect();
    assert_eq!(
        inbox, bodies,
        "every acknowledged message once, in order, byte for byte"
    );
    store.shutdown();
}

/// Which group each test user lives in (the server stopped).
fn placement(config: &Path) -> Vec<(&'static str, u32)> {
    let cfg = Config::load(Some(config)).unwrap();
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let placed = USERS
        .iter()
        .map(|u| (*u, store.group_of(u).unwrap().id))
        .collect();
    store.shutdown();
    drop(store);
    placed
}

/// A storage group whose database cannot be opened stops only its own
/// users: their deliveries get `451 4.3.0` and their logins
/// `NO [UNAVAILABLE]`, the other groups' users are served, `status` names
/// the group, and a backup refuses to run without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_open_affects_only_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[store]\ngroups = 2\n");
    let daemon = Daemon::start(&config);
    let mut c = common::Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO crash.test", "250").await;
    for user in USERS {
        let r = c
            .send_mail("s@remote.test", &[user], b"Subject: before\r\n\r\nx\r\n")
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    drop(c);
    assert!(daemon.terminate().success());
    let placed = placement(&config);
    let broken = placed[0].1;
    let Some(&(healthy_user, _)) = placed.iter().find(|(_, g)| *g != broken) else {
        panic!("every test user is in one group: {placed:?}");
    };
    let db = dir
        .path()
        .join(format!("data/groups/g{broken:03}/store.redb"));
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..64].fill(0x5a);
    std::fs::write(&db, &bytes).unwrap();

    let daemon = Daemon::start(&config);
    let mut c = common::Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO crash.test", "250").await;
    let r = c
        .send_mail(
            "s@remote.test",
            &[healthy_user],
            b"Subject: after\r\n\r\ny\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{healthy_user}: {r}");
    let r = c
        .send_mail(
            "s@remote.test",
            &[placed[0].0],
            b"Subject: after\r\n\r\ny\r\n",
        )
        .await;
    assert!(r.starts_with("451 4.3.0"), "{}: {r}", placed[0].0);
    let mut imap = common::imap::Imap::connect(daemon.addr("imap")).await;
    let r = imap
        .run(&format!("a LOGIN {} \"{}\"", placed[0].0, common::PASSWORD))
        .await;
    assert!(r.contains("a NO [UNAVAILABLE]"), "{r}");
    let mut ok = common::imap::Imap::login(daemon.addr("imap"), healthy_user).await;
    let r = ok.run("b SELECT INBOX").await;
    assert!(r.contains("* 2 EXISTS") && r.contains("b OK"), "{r}");
    let (_, status) = cli(&config, &["status"]);
    assert!(
        status.contains(&format!("g{broken:03} UNAVAILABLE")),
        "{status}"
    );
    let (ok_backup, out) = cli(&config, &["backup", "run"]);
    assert!(!ok_backup && out.contains("could not be opened"), "{out}");
    drop((imap, ok));
    assert!(daemon.terminate().success());
}

/// Copies of `subject` in `user`'s INBOX (the server stopped).
async fn copies(config: &Path, user: &str, subject: &str) -> usize {
    let cfg = Config::load(Some(config)).unwrap();
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let n = common::inbox_of(&store, user)
        .await
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains(&format!("Subject: {subject}\r\n")))
        .count();
    store.shutdown();
    drop(store);
    n
}

/// A multi-recipient SMTP transaction the client has to send again (the
/// server died before its 250, or answered 451 because one recipient's
/// group was down) reaches every recipient exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_transaction_reaches_each_recipient_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[store]\ngroups = 2\n");
    let msg = b"Subject: to all\r\nMessage-ID: <all@remote.test>\r\n\r\none for each\r\n";

    // Killed after storing, before answering.
    let daemon = Daemon::start_env(&config, &[("TMTEST_FAILPOINT", "smtp-before-reply")]);
    let mut c = common::Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO crash.test", "250").await;
    c.expect("MAIL FROM:<s@remote.test>", "250").await;
    for u in USERS {
        c.expect(&format!("RCPT TO:<{u}>"), "250").await;
    }
    c.expect("DATA", "354").await;
    c.send(msg).await;
    c.send(b".\r\n").await;
    assert!(c.try_reply().await.is_none(), "no reply: the server died");
    daemon.kill9();
    let daemon = Daemon::start(&config);
    let mut c = common::Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO crash.test", "250").await;
    let r = c.send_mail("s@remote.test", &USERS, msg).await;
    assert!(r.starts_with("250"), "{r}");
    drop(c);
    assert!(daemon.terminate().success());
    for u in USERS {
        assert_eq!(copies(&config, u, "to all").await, 1, "{u}");
    }

    // One recipient's group down: 451, resent twice, then repaired.
    let placed = placement(&config);
    let down = placed[0].1;
    let up = placed
        .iter()
        .find(|(_, g)| *g != down)
        .map(|(u, _)| *u)
        .expect("test users in two groups");
    let db = dir
        .path()
        .join(format!("data/groups/g{down:03}/store.redb"));
    let good = std::fs::read(&db).unwrap();
    let mut bad = good.clone();
    bad[..64].fill(0x5a);
    std::fs::write(&db, &bad).unwrap();
    let second = b"Subject: second\r\n\r\nagain\r\n";
    let rcpts = [placed[0].0, up];
    let daemon = Daemon::start(&config);
    let mut c = common::Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO crash.test", "250").await;
    for _ in 0..2 {
        let r = c.send_mail("s@remote.test", &rcpts, second).await;
        assert!(r.starts_with("451 4.3.0"), "{r}");
    }
    drop(c);
    assert!(daemon.terminate().success());
    std::fs::write(&db, &good).unwrap();
    let daemon = Daemon::start(&config);
    let mut c = common::Client::connect(daemon.addr("smtp")).await;
    c.expect("EHLO crash.test", "250").await;
    let r = c.send_mail("s@remote.test", &rcpts, second).await;
    assert!(r.starts_with("250"), "{r}");
    drop(c);
    assert!(daemon.terminate().success());
    for u in rcpts {
        assert_eq!(copies(&config, u, "second").await, 1, "{u}");
    }
}
