//! Real IMAP clients from Debian against tiermail: mbsync (isync), curl and
//! Python's imaplib. `bash .ci/run` installs them; a missing tool fails the
//! test with the package to install, it never skips.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Client, PASSWORD, TestServer, require};

async fn deliver(server: &TestServer, to: &str, body: &[u8]) {
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let r = c.send_mail("sender@remote.test", &[to], body).await;
    assert!(r.starts_with("250"), "{r}");
}

/// Removes the one `X-TUID:` header line mbsync adds to the header block.
fn without_tuid(b: Vec<u8>) -> Vec<u8> {
    let end = b.windows(2).position(|w| w == b"\n\n").unwrap_or(b.len());
    let Some(at) = b[..end].windows(8).position(|w| w == b"\nX-TUID:") else {
        return b;
    };
    let stop = b[at + 1..]
        .iter()
        .position(|&c| c == b'\n')
        .map(|p| at + 1 + p)
        .unwrap_or(b.len());
    let mut out = b[..at].to_vec();
    out.extend_from_slice(&b[stop..]);
    out
}

fn lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_mirrors_200_messages_byte_for_byte() {
    require("mbsync", "isync");
    let server = TestServer::start_with(|c| c.imap.allow_plaintext_auth = false).await;
    for n in 0..200 {
        let m = tiermail::corpus::message(2026, n, "alice@example.test");
        deliver(&server, "alice@example.test", &m).await;
    }
    let stored = server.inbox("alice@example.test").await;
    assert_eq!(stored.len(), 200);
    let dir = server.dir.path();
    let maildir = dir.join("Mail");
    std::fs::create_dir_all(&maildir).unwrap();
    let addr = server.imaps();
    let rc = format!(
        "IMAPAccount tiermail\nHost 127.0.0.1\nPort {}\nUser alice@example.test\nPass \"{PASSWORD}\"\n\
         SSLType IMAPS\nCertificateFile {}\n\n\
         IMAPStore remote\nAccount tiermail\n\n\
         MaildirStore local\nPath {}/\nInbox {}/INBOX\n\n\
         Channel mirror\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\nSync Pull\nSyncState *\n",
        addr.port(),
        server.config.tls.cert.display(),
        maildir.display(),
        maildir.display(),
    );
    let rc_path = dir.join("mbsyncrc");
    std::fs::write(&rc_path, rc).unwrap();
    mbsync(rc_path).await;
    // Every Maildir file is one of the delivered messages, each exactly
    // once. mbsync stores them with LF line ends, as Maildir wants, and adds
    // its own X-TUID tracking header; both are undone before comparing.
    let files: Vec<Vec<u8>> = maildir_files(&maildir.join("INBOX"))
        .iter()
        .map(|p| without_tuid(std::fs::read(p).unwrap()))
        .collect();
    assert_eq!(files.len(), 200, "one file per message");
    let mut want: Vec<Vec<u8>> = stored.iter().map(|m| lf(m)).collect();
    let mut got: Vec<Vec<u8>> = files;
    want.sort();
    got.sort();
    if want != got {
        let w = String::from_utf8_lossy(&want[0]).into_owned();
        let g = String::from_utf8_lossy(&got[0]).into_owned();
        panic!(
            "Maildir content differs from what was delivered:\nwant:\n{:?}\ngot:\n{:?}",
            &w[..w.len().min(700)],
            &g[..g.len().min(700)]
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_lists_and_fetches_over_imap_and_imaps() {
    require("curl", "curl");
    let server = TestServer::start().await;
    let msg = tiermail::corpus::message(1, 3, "bob@example.test");
    deliver(&server, "bob@example.test", &msg).await;
    let stored = server.inbox("bob@example.test").await.remove(0);
    let user = format!("bob@example.test:{PASSWORD}");
    let run = |args: Vec<String>| {
        let out = Command::new("curl")
            .args(["-s", "-S", "--max-time", "20"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let (imap, imaps) = (server.imap(), server.imaps());
    let user2 = user.clone();
    let (list, body, body_tls) = tokio::task::spawn_blocking(move || {
        let list = run(vec![
            "--user".into(),
            user2.clone(),
            format!("imap://{imap}/"),
        ]);
        let body = run(vec![
            "--user".into(),
            user2.clone(),
            format!("imap://{imap}/INBOX;UID=1"),
        ]);
        let body_tls = run(vec![
            "-k".into(),
            "--user".into(),
            user2.clone(),
            format!("imaps://{imaps}/INBOX;UID=1"),
        ]);
        (list, body, body_tls)
    })
    .await
    .unwrap();
    let list = String::from_utf8_lossy(&list);
    for m in ["INBOX", "Sent", "Drafts", "Trash", "Junk"] {
        assert!(list.contains(m), "{list}");
    }
    assert_eq!(body, stored, "imap:// fetch is byte-exact");
    assert_eq!(body_tls, stored, "imaps:// fetch is byte-exact");
    server.stop().await;
}

const IMAPLIB_SCRIPT: &str = r#"
import imaplib, sys
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
M = imaplib.IMAP4(host, port)
assert "IDLE" in M.capabilities and "UIDPLUS" in M.capabilities, M.capabilities
typ, _ = M.login(user, password); assert typ == "OK"
typ, boxes = M.list(); assert typ == "OK"
assert any(b"\\Sent" in b and b"Sent" in b for b in boxes), boxes
typ, data = M.select("INBOX"); assert typ == "OK" and data == [b"2"], data
typ, data = M.search(None, "SUBJECT", "second"); assert data == [b"2"], data
typ, data = M.sort("(REVERSE SUBJECT)", "UTF-8", "ALL"); assert data == [b"2 1"], data
typ, data = M.uid("SORT", "(SIZE)", "UTF-8", "SUBJECT", "first"); assert data == [b"1"], data
typ, data = M.thread("ORDEREDSUBJECT", "UTF-8", "ALL"); assert data == [b"(1)(2)"], data
typ, data = M.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert data[0][1] == b"Subject: first\r\n\r\n", data
typ, data = M.store("1", "+FLAGS", "(\\Flagged)"); assert typ == "OK"
typ, data = M.create("Scripted"); assert typ == "OK"
typ, data = M.copy("1:2", "Scripted"); assert typ == "OK"
typ, data = M.status("Scripted", "(MESSAGES UNSEEN)")
assert data == [b"Scripted (MESSAGES 2 UNSEEN 2)"], data
typ, data = M.append("Scripted", "(\\Seen)", None, b"Subject: appended\r\n\r\nby imaplib\r\n")
assert typ == "OK" and b"APPENDUID" in data[0], data
typ, data = M.store("2", "+FLAGS", "(\\Deleted)")
typ, data = M.expunge(); assert data == [b"2"], data
typ, data = M.select("Scripted"); assert data == [b"3"], data
typ, data = M.fetch("3", "(RFC822)"); assert data[0][1] == b"Subject: appended\r\n\r\nby imaplib\r\n", data
M.close()
M.logout()
print("imaplib session ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_scripted_session() {
    require("python3", "python3");
    let server = TestServer::start().await;
    deliver(
        &server,
        "carol@example.test",
        b"Subject: first\r\n\r\none\r\n",
    )
    .await;
    deliver(
        &server,
        "carol@example.test",
        b"Subject: second\r\n\r\ntwo\r\n",
    )
    .await;
    let addr = server.imap();
    let script = server.dir.path().join("session.py");
    std::fs::write(&script, IMAPLIB_SCRIPT).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg("carol@example.test")
            .arg(PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "imaplib script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imaplib session ok"));
    let _ = Path::new("");
    server.stop().await;
}

/// Runs mbsync with `rc`, failing with its output when it fails.
async fn mbsync(rc_path: std::path::PathBuf) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("mbsync")
            .arg("-c")
            .arg(&rc_path)
            .arg("-a")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "mbsync failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The message files of a Maildir folder.
fn maildir_files(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(folder.join(sub)) {
            files.extend(rd.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    files
}

/// mbsync archives by moving the file into the local Archive folder: the
/// next sync uploads it into Archive (APPEND) and expunges the INBOX copy.
/// The message must end up archived, byte for byte, and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbsync_archiving_into_archive_keeps_the_message() {
    require("mbsync", "isync");
    let server = TestServer::start().await;
    let user = "carol@example.test";
    for n in 0..5 {
        let m = tiermail::corpus::message(7, n, user);
        deliver(&server, user, &m).await;
    }
    let stored = server.inbox(user).await;
    let dir = server.dir.path();
    let maildir = dir.join("Mail");
    std::fs::create_dir_all(&maildir).unwrap();
    let rc = format!(
        "IMAPAccount tiermail\nHost 127.0.0.1\nPort {}\nUser {user}\nPass \"{PASSWORD}\"\n\
         SSLType IMAPS\nCertificateFile {}\n\n\
         IMAPStore remote\nAccount tiermail\n\n\
         MaildirStore local\nPath {}/\nInbox {}/INBOX\n\n\
         Channel mirror\nFar :remote:\nNear :local:\nPatterns INBOX Archive\nCreate Both\n\
         Expunge Both\nSync All\nSyncState *\n",
        server.imaps().port(),
        server.config.tls.cert.display(),
        maildir.display(),
        maildir.display(),
    );
    let rc_path = dir.join("mbsyncrc");
    std::fs::write(&rc_path, rc).unwrap();
    mbsync(rc_path.clone()).await;
    let inbox = maildir_files(&maildir.join("INBOX"));
    assert_eq!(inbox.len(), 5);
    // Archive it locally, as a mail client on the Maildir would: the file
    // moves, without mbsync's UID in its name.
    let moved = &inbox[2];
    let content = without_tuid(std::fs::read(moved).unwrap());
    let name = moved.file_name().unwrap().to_string_lossy().into_owned();
    let base = name.split(",U=").next().unwrap().to_string();
    let flags = name.split_once(":2,").map(|(_, f)| f).unwrap_or("");
    let target = maildir
        .join("Archive")
        .join("cur")
        .join(format!("{base}:2,{flags}"));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(moved, &target).unwrap();
    mbsync(rc_path.clone()).await;
    // On the server: four in INBOX, one archived, nothing lost or doubled.
    let now = server.inbox(user).await;
    assert_eq!(now.len(), 4, "the INBOX copy was expunged");
    let adir = server
        .config
        .archive
        .root
        .join(tiermail::archive::format::user_dir_name(user));
    let a = tiermail::archive::file::UserArchive::open_read_only(&adir).unwrap();
    assert_eq!(a.len(), 1, "archived once");
    let e = a.entries().next().unwrap();
    assert_eq!(e.folder, "", "in Archive itself");
    let archived = a.read(e.auid).unwrap().raw.to_vec();
    assert_eq!(lf(&without_tuid(archived.clone())), content);
    let mut all: Vec<Vec<u8>> = now.iter().map(|m| lf(m)).collect();
    all.push(lf(&without_tuid(archived)));
    all.sort();
    let mut want: Vec<Vec<u8>> = stored.iter().map(|m| lf(m)).collect();
    want.sort();
    assert_eq!(all, want, "every delivered message is in exactly one place");
    // A third sync changes nothing: the archive copy is not pulled back
    // twice or uploaded again.
    mbsync(rc_path).await;
    assert_eq!(server.inbox(user).await.len(), 4);
    let a = tiermail::archive::file::UserArchive::open_read_only(&adir).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(maildir_files(&maildir.join("Archive")).len(), 1);
    assert_eq!(maildir_files(&maildir.join("INBOX")).len(), 4);
    server.stop().await;
}
