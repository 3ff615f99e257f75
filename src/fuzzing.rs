//! Harnesses for coverage-guided fuzzing (`fuzz/`, cargo-fuzz) and for
//! replaying the committed corpora in `cargo test` (`tests/fuzz_corpus.rs`).
//!
//! Each harness takes arbitrary bytes and drives one decoder or state
//! machine that sees outside bytes, checking what must hold for every input:
//! no panic, no unbounded recursion, no allocation beyond what the input and
//! the limits allow, sessions that always end once their client hangs up,
//! and round trips (encode → decode → same) for tiermail's own formats. A
//! failed check panics, which is what the fuzzer reports. Not for
//! production use; nothing else in the crate calls it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Config;

/// A scratch directory for one harness in this process.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tiermail-fuzz-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Removes this process's scratch directories when the process exits.
pub fn cleanup_at_exit() {
    extern "C" fn at_exit() {
        cleanup();
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function with no captured state.
    ONCE.call_once(|| unsafe {
        libc::atexit(at_exit);
    });
}

/// Removes this process's scratch directories.
pub fn cleanup() {
    let prefix = format!("tiermail-fuzz-{}-", std::process::id());
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Messages the text harnesses search and describe.
fn sample_messages() -> &'static [Vec<u8>] {
    static M: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    M.get_or_init(|| {
        let mut v: Vec<Vec<u8>> = (0..6)
            .map(|n| crate::corpus::message(11, n, "alice@example.test"))
            .collect();
        v.push(crate::corpus::nested_multipart(80));
        v.push(crate::corpus::nested_rfc822(300));
        v
    })
}

// ---- IMAP commands: framing, decoding, LIST patterns, SEARCH programs ----

/// Frames `data` (split into reads at points the input chooses), decodes
/// each command with imap-codec and runs the parts of tiermail that work on
/// decoded commands without a store: extended LIST, mailbox names, LIST
/// patterns over sample names, SEARCH programs over sample messages.
pub fn imap_command(data: &[u8]) {
    use crate::imap::framing::{Event, Framer, Limits};
    use imap_codec::CommandCodec;
    use imap_types::command::CommandBody;

    let limits = Limits {
        line: 512,
        command: 4096,
        append: 16384,
    };
    let step = 1 + data.first().map_or(0, |b| *b as usize % 61);
    let mut f = Framer::new(limits);
    for piece in data.chunks(step) {
        f.push(piece);
        while let Some(e) = f.next_event() {
            match e {
                Event::Literal { length, append, .. } => {
                    if (append && length <= 8192) || length <= 1024 {
                        f.accept_literal();
                    } else {
                        f.refuse_literal();
                    }
                }
                Event::Refused { .. } => {}
                Event::Message => {
                    let bytes = f.message_bytes();
                    assert!(bytes.len() <= limits.append, "framer held too much");
                    let _ = crate::imap::list_extended::parse(bytes);
                    let Ok(cmd) = f.decode(&CommandCodec::default()) else {
                        continue;
                    };
                    match &cmd.body {
                        CommandBody::List {
                            reference,
                            mailbox_wildcard,
                        } => {
                            let _ = crate::imap::names::from_imap(reference);
                            let p = crate::imap::names::pattern(mailbox_wildcard);
                            let lp = crate::imap::names::ListPattern::new(&p);
                            for n in ["INBOX", "Sent", "a/b/c", "Archive/INBOX", ""] {
                                let _ = lp.matches(n);
                            }
                        }
                        CommandBody::Select { mailbox, .. }
                        | CommandBody::Create { mailbox }
                        | CommandBody::Status { mailbox, .. } => {
                            if let Ok(n) = crate::imap::names::from_imap(mailbox) {
                                let _ = crate::imap::names::check_new(&n);
                                let _ = crate::imap::names::within_limits(&n, 1024, 32);
                            }
                        }
                        CommandBody::Search { criteria, .. } => {
                            let key = imap_types::search::SearchKey::And(criteria.clone());
                            if let Ok(p) = crate::imap::search::Program::new(&key, 512) {
                                search_samples(&p);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn search_samples(p: &crate::imap::search::Program) {
    for (i, raw) in sample_messages().iter().enumerate() {
        let meta = crate::store::MessageMeta {
            internal_date: 1_700_000_000 + i as i64 * 86_400,
            size: raw.len() as u32,
            modseq: i as u64 + 1,
            flags: vec!["\\Seen".into(), "$Label1".into()],
            summary: crate::store::Summary::parse(raw),
        };
        let flags = crate::store::live::FlagSet::new(&meta.flags);
        let mut c = crate::imap::search::Candidate {
            seq: i as u32 + 1,
            uid: i as u32 + 1,
            flags: &flags,
            recent: i % 2 == 0,
            modseq: meta.modseq,
            size: meta.size,
            internal_date: meta.internal_date,
            meta: Some(&meta),
            largest_seq: 8,
            largest_uid: 8,
        };
        let parsed = crate::imap::mime::parse(raw);
        let with = p.matches(&c, Some(&parsed));
        use crate::imap::search::Needs;
        if p.needs() < Needs::Body {
            assert_eq!(
                with,
                p.matches(&c, None),
                "a key that needs no body used it"
            );
        }
        if p.needs() < Needs::Meta {
            c.meta = None;
            assert_eq!(
                with,
                p.matches(&c, None),
                "a key that needs no metadata used it"
            );
        }
    }
}

// ---- LIST pattern matching against a model ----

/// The pattern matcher agrees with a memoized definition of `*` and `%`.
pub fn list_pattern(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let map = |b: &u8| match b % 5 {
        0 => b'*',
        1 => b'%',
        2 => b'/',
        3 => b'a',
        _ => b'b',
    };
    let p: Vec<u8> = data[..split].iter().take(40).map(map).collect();
    let n: Vec<u8> = data
        .get(split + 1..)
        .unwrap_or(&[])
        .iter()
        .take(40)
        .map(map)
        .collect();
    let (ps, ns) = (
        String::from_utf8(p.clone()).unwrap_or_default(),
        String::from_utf8(n.clone()).unwrap_or_default(),
    );
    let got = crate::imap::names::Pattern::new(&ps).matches(&ns);
    assert_eq!(got, model_match(&p, &n), "pattern {ps:?} name {ns:?}");
    // Long inputs must stay fast: a long pattern costs what a name as
    // long as the longest mailbox name (at most `limits.max_line_length`,
    // 4 KiB by default) costs, however long the pattern itself is.
    let long = String::from_utf8_lossy(data).repeat(4);
    let name: String = long.chars().take(1024).collect();
    let _ = crate::imap::names::matches(&long, &name);
    let _ = crate::imap::names::matches(&name, &name);
}

/// Dynamic programming over (pattern position, name position).
fn model_match(p: &[u8], n: &[u8]) -> bool {
    let (pl, nl) = (p.len(), n.len());
    // m[i][j]: p[i..] matches n[j..]
    let mut m = vec![vec![false; nl + 1]; pl + 1];
    m[pl][nl] = true;
    for i in (0..pl).rev() {
        for j in (0..=nl).rev() {
            m[i][j] = match p[i] {
                b'*' => m[i + 1][j] || (j < nl && m[i][j + 1]),
                b'%' => m[i + 1][j] || (j < nl && n[j] != b'/' && m[i][j + 1]),
                c => j < nl && n[j] == c && m[i + 1][j + 1],
            };
        }
    }
    m[0][0]
}

// ---- MIME: ENVELOPE, BODYSTRUCTURE and sections of any message ----

/// Parses `data` as a message and builds everything FETCH can return for
/// it, on a thread with a tokio worker's stack; encodes the responses.
pub fn mime(data: &[u8]) {
    let raw = data.to_vec();
    let out = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || mime_on_this_thread(&raw))
        .map(|h| h.join());
    if let Ok(Err(e)) = out {
        std::panic::resume_unwind(e);
    }
}

fn mime_on_this_thread(raw: &[u8]) {
    use crate::imap::mime as fetch;
    use imap_types::fetch::{MessageDataItemName, Part, Section};
    let _ = crate::store::Summary::parse(raw);
    let m = fetch::parse(raw);
    let whole = fetch::section(&m, None).unwrap_or_default();
    assert_eq!(whole, raw, "BODY[] is the message byte for byte");
    let mut items = vec![
        MessageDataItemName::Envelope,
        MessageDataItemName::BodyStructure,
        MessageDataItemName::Body,
        MessageDataItemName::Rfc822Header,
        MessageDataItemName::Rfc822Text,
    ];
    // Every part path of up to three levels below the first few parts.
    let mut paths: Vec<Vec<u32>> = Vec::new();
    for a in 1..=3u32 {
        paths.push(vec![a]);
        for b in 1..=3u32 {
            paths.push(vec![a, b]);
            paths.push(vec![a, b, 1]);
        }
    }
    for p in &paths {
        let nz: Vec<std::num::NonZeroU32> = p
            .iter()
            .filter_map(|n| std::num::NonZeroU32::new(*n))
            .collect();
        items.push(MessageDataItemName::Binary {
            section: nz.clone(),
            partial: Some((1, std::num::NonZeroU32::MIN.saturating_add(99))),
            peek: true,
        });
        items.push(MessageDataItemName::BinarySize {
            section: nz.clone(),
        });
        let Ok(v) = imap_types::core::Vec1::try_from(nz) else {
            continue;
        };
        for sec in [
            Section::Part(Part(v.clone())),
            Section::Mime(Part(v.clone())),
            Section::Header(Some(Part(v.clone()))),
            Section::Text(Some(Part(v))),
        ] {
            if let Some(bytes) = fetch::section(&m, Some(&sec)) {
                assert!(
                    bytes.len() <= raw.len() + 2,
                    "a section is cut from the message"
                );
            }
            items.push(MessageDataItemName::BodyExt {
                section: Some(sec),
                partial: Some((1, std::num::NonZeroU32::MIN.saturating_add(99))),
                peek: true,
            });
        }
    }
    let want = fetch::Want {
        items,
        mime_depth: 64,
        modseq: true,
    };
    let loaded = fetch::Loaded {
        seq: 1,
        uid: 7,
        flags: vec!["\\Seen".into()],
        modseq: 3,
        meta: crate::store::MessageMeta {
            internal_date: 0,
            size: raw.len() as u32,
            modseq: 3,
            flags: Vec::new(),
            summary: Default::default(),
        },
        body: Some(raw.to_vec()),
        show_flags: raw.len().is_multiple_of(2),
    };
    // A part BINARY cannot decode fails the FETCH, never the server.
    if let Ok(Some(d)) = fetch::response(&want, &loaded) {
        let mut out = Vec::new();
        crate::imap::encode(&mut out, &imap_types::response::Response::Data(d));
        assert!(out.starts_with(b"* 1 FETCH ("));
    }
}

// ---- The write-ahead log ----

/// A WAL segment from arbitrary bytes (raw, or with every record's CRC made
/// right so the payload decoders are reached), read back and each record
/// decoded; a decoded record re-encodes to what decodes the same.
pub fn wal(data: &[u8]) {
    use crate::store::record::Record;
    use crate::store::wal;
    let bytes = if data.first().is_some_and(|b| b & 1 == 1) {
        // Structured: [kind, len_lo, payload...]* into valid frames.
        let mut seg = wal::MAGIC.to_vec();
        seg.extend_from_slice(&wal::VERSION.to_le_bytes());
        seg.extend_from_slice(&[0u8; 4]);
        let mut rest = &data[1..];
        let mut lsn = 1;
        while rest.len() >= 2 {
            let kind = rest[0];
            let len = (rest[1] as usize).min(rest.len() - 2);
            wal::encode_record(&mut seg, kind, lsn, &rest[2..2 + len]);
            rest = &rest[2 + len..];
            lsn += 1;
        }
        seg
    } else {
        data.get(1..).unwrap_or(&[]).to_vec()
    };
    let mut records = Vec::new();
    let _ = wal::read_records(Path::new("fuzz"), &bytes[..], |r| {
        records.push(r);
        Ok(())
    });
    for r in &records {
        if let Ok(rec) = Record::decode(r.kind, &r.payload) {
            let mut e = crate::store::codec::Enc::new();
            rec.encode_payload(&mut e);
            let again = Record::decode(rec.kind(), &e.finish()).expect("re-encoded record decodes");
            assert_eq!(
                format!("{again:?}"),
                format!("{rec:?}"),
                "record round trip"
            );
        }
    }
    // The same bytes as framed records (the backup's log blocks).
    let mut buf = bytes
        .get(wal::HEADER_LEN as usize..)
        .unwrap_or(&[])
        .to_vec();
    let mut out = Vec::new();
    let _ = wal::take_framed(&mut buf, &mut out);
}

// ---- Archive files ----

/// A user's archive directory whose data and index files come from the
/// input (raw, or with valid frames around fuzzed records), opened read
/// only and read back message by message; records round trip.
pub fn archive(data: &[u8]) {
    use crate::archive::file::UserArchive;
    use crate::archive::format::{self, Record};
    let dir = scratch("archive");
    let (data_file, index_file) = if data.first().is_some_and(|b| b & 1 == 1) {
        let mut file = format::header(1, 0).to_vec();
        let mut rest = &data[1..];
        while rest.len() >= 2 {
            let kind = rest[0] % 6;
            let len = (rest[1] as usize * 4).min(rest.len() - 2);
            let payload = &rest[2..2 + len];
            if let Ok(rec) = Record::decode(kind, payload) {
                let mut again = Vec::new();
                rec.encode(&mut again);
                let back = format::read_record(&again)
                    .expect("a record re-encodes to a valid frame")
                    .expect("one record");
                assert_eq!(back.0, rec, "archive record round trip");
            }
            format::frame(&mut file, kind, payload);
            rest = &rest[2 + len..];
        }
        (file, Vec::new())
    } else {
        // u32 length of the data file, the data file, the index file.
        let rest = data.get(1..).unwrap_or(&[]);
        let len = rest
            .get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let body = rest.get(4..).unwrap_or(&[]);
        let cut = len.min(body.len());
        (body[..cut].to_vec(), body[cut..].to_vec())
    };
    let _ = std::fs::write(dir.join(crate::archive::file::data_name(1)), &data_file);
    if !index_file.is_empty() {
        let _ = std::fs::write(dir.join(crate::archive::file::index_name(1)), &index_file);
    }
    if let Ok(a) = UserArchive::open_read_only(&dir) {
        let auids: Vec<u32> = a.entries().map(|e| e.auid).collect();
        for auid in auids {
            let _ = a.read(auid);
        }
    }
    let _ = UserArchive::verify(&dir);
    // A writable open repairs (cuts torn tails, rebuilds the index).
    if let Ok(a) = UserArchive::open(&dir, 1 << 20, false) {
        let auids: Vec<u32> = a.entries().map(|e| e.auid).collect();
        for auid in auids {
            let _ = a.read(auid);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- Backup files ----

/// A backup file from the input (raw, or blocks with valid checksums and
/// trailer around fuzzed payloads), verified, described and restored
/// (image rows into redb, log and patch records replayed).
pub fn backup(data: &[u8]) {
    use crate::backup::format::{Kind, Writer};
    let dir = scratch("backup");
    let file = dir.join("b.tmb");
    let bytes = if data.first().is_some_and(|b| b & 1 == 1) {
        let mut w = match Writer::new(Vec::new()) {
            Ok(w) => w,
            Err(_) => return,
        };
        let kinds = [
            Kind::Header,
            Kind::GroupStart,
            Kind::Image,
            Kind::Files,
            Kind::Log,
            Kind::Patch,
            Kind::GroupEnd,
        ];
        let mut rest = &data[1..];
        while rest.len() >= 3 {
            let kind = kinds[rest[0] as usize % kinds.len()];
            let len = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
            if w.block(kind, &rest[3..3 + len]).is_err() {
                break;
            }
            rest = &rest[3 + len..];
        }
        w.finish().unwrap_or_default()
    } else {
        data.get(1..).unwrap_or(&[]).to_vec()
    };
    let _ = std::fs::write(&file, &bytes);
    let _ = crate::backup::format::verify(&bytes[..]);
    let _ = crate::backup::restore::describe(&file);
    let out = dir.clone();
    let _ = crate::backup::restore::materialize(
        &file,
        &move |id| (id < 4).then(|| out.join(format!("g{id}.redb"))),
        &|_, _| {},
    );
    // Marks round trip.
    for b in iter_blocks(&bytes) {
        use crate::backup::marks::{GroupEnd, GroupStart, Header};
        match b.0 {
            Kind::Header => {
                if let Ok(h) = Header::decode(&b.1) {
                    assert_eq!(Header::decode(&h.encode()).ok(), Some(h));
                }
            }
            Kind::GroupStart => {
                if let Ok(g) = GroupStart::decode(&b.1) {
                    assert_eq!(GroupStart::decode(&g.encode()).ok(), Some(g));
                }
            }
            Kind::GroupEnd => {
                if let Ok(g) = GroupEnd::decode(&b.1) {
                    assert_eq!(GroupEnd::decode(&g.encode()).ok(), Some(g));
                }
            }
            Kind::Files => {
                if let Ok(f) = crate::backup::marks::decode_files(&b.1) {
                    let again =
                        crate::backup::marks::decode_files(&crate::backup::marks::encode_files(&f));
                    assert_eq!(again.ok(), Some(f));
                }
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn iter_blocks(bytes: &[u8]) -> Vec<(crate::backup::format::Kind, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(mut r) = crate::backup::format::Reader::new(bytes) {
        while let Ok(Some(b)) = r.next_block() {
            out.push((b.kind, b.payload));
        }
    }
    out
}

// ---- Configuration and users files ----

/// The input as a configuration file and as a users file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = Config::from_toml(&text) {
        // A valid configuration keeps its limits sane.
        assert!(cfg.limits.max_line_length >= 512);
        assert!(cfg.limits.max_command_size >= cfg.limits.max_line_length);
    }
    let _ = crate::auth::Users::parse(&text);
}

// ---- Whole sessions over an in-memory connection ----

struct ServerHarness {
    rt: tokio::runtime::Runtime,
    app: Arc<crate::server::App>,
    _server: crate::server::Server,
}

/// One server (store, users, limits kept small) for every session input.
fn harness() -> &'static ServerHarness {
    static H: OnceLock<ServerHarness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = scratch("server");
        let mut cfg = Config::for_testing(&dir);
        for l in [
            &mut cfg.smtp.listen,
            &mut cfg.smtp.submission_listen,
            &mut cfg.smtp.submissions_listen,
            &mut cfg.smtp.lmtp_listen,
            &mut cfg.imap.listen,
            &mut cfg.imap.tls_listen,
        ] {
            l.clear();
        }
        cfg.limits.max_message_size = 64 * 1024;
        cfg.limits.max_inflight_mib = 4;
        cfg.limits.max_errors = 1000;
        cfg.limits.max_auth_failures = 1_000_000;
        cfg.limits.max_mailboxes = 40;
        cfg.backup.targets.clear();
        let h = crate::auth::hash_password_with("pw", crate::auth::test_params())
            .unwrap_or_default();
        let _ = std::fs::write(
            &cfg.users.file,
            format!(
                "[[user]]\naddress = \"alice@example.test\"\npassword = \"{h}\"\naliases = [\"al@example.test\"]\n\n\
                 [[user]]\naddress = \"bob@example.test\"\npassword = \"{h}\"\n"
            ),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let server = rt
            .block_on(crate::server::Server::start(cfg))
            .unwrap_or_else(|e| panic!("server: {e}"));
        let app = server.app.clone();
        rt.block_on(async {
            for raw in sample_messages() {
                let d = crate::store::Delivery {
                    user: "alice@example.test".into(),
                    mailbox: "INBOX".into(),
                    raw: Arc::new(raw.clone()),
                    internal_date: 1_700_000_000,
                    flags: Vec::new(),
                    summary: crate::store::Summary::parse(raw),
                };
                let _ = app.store.deliver(d).await;
            }
        });
        ServerHarness {
            rt,
            app,
            _server: server,
        }
    })
}

/// Sends `input` on a fresh in-memory connection, hangs up, and collects
/// everything the session says until it ends (which it must, promptly).
fn run_session(
    start: impl FnOnce(crate::net::Conn) -> tokio::task::JoinHandle<()>,
    input: Vec<u8>,
) -> Vec<u8> {
    let h = harness();
    h.rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let session = start(crate::net::Conn::Memory(server));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let write = async {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let work = async { tokio::join!(write, read).1 };
        // Generous: a fuzzer sharing a busy machine may be starved for a
        // while; a session that never ends is what this catches.
        let out = tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .unwrap_or_else(|_| panic!("the session did not end after its client hung up"));
        match tokio::time::timeout(Duration::from_secs(60), session).await {
            Err(_) => panic!("the session task did not finish"),
            // A panic in a session is a bug even though it ends only that
            // session: report it as the fuzzer's crash.
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
        out
    })
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 40000))
}

/// An IMAP session fed the input, after a login (and SELECT) when the
/// first byte says so.
pub fn imap_session(data: &[u8]) {
    let h = harness();
    let mut input = Vec::new();
    match data.first().map(|b| b % 3) {
        Some(1) => input.extend_from_slice(b"L LOGIN alice@example.test pw\r\n"),
        Some(2) => input.extend_from_slice(b"L LOGIN alice@example.test pw\r\nS SELECT INBOX\r\n"),
        _ => {}
    }
    input.extend_from_slice(data.get(1..).unwrap_or(&[]));
    let app = h.app.clone();
    let out = run_session(
        move |conn| {
            let token = tokio_util::sync::CancellationToken::new();
            let s = crate::imap::driver::Session::new(
                app,
                crate::imap::driver::Kind::Plain,
                peer(),
                conn,
                crate::net::PeerSlot::exempt(peer().ip()),
                token,
            );
            tokio::spawn(s.run())
        },
        input,
    );
    assert!(out.starts_with(b"* OK"), "no greeting");
}

/// An SMTP, submission or LMTP session (by the first byte) fed the input.
pub fn smtp_session(data: &[u8]) {
    use crate::smtp::Mode;
    let h = harness();
    let (mode, hello): (Mode, &[u8]) = match data.first().map(|b| b % 4) {
        Some(1) => (Mode::Submission, b"EHLO fuzz.test\r\n"),
        Some(2) => (Mode::Lmtp, b"LHLO fuzz.test\r\n"),
        Some(3) => (Mode::Mx, b""),
        _ => (Mode::Mx, b"EHLO fuzz.test\r\n"),
    };
    let mut input = hello.to_vec();
    input.extend_from_slice(data.get(1..).unwrap_or(&[]));
    let app = h.app.clone();
    let out = run_session(
        move |conn| {
            let token = tokio_util::sync::CancellationToken::new();
            let s = crate::smtp::session::Session::new(
                app,
                mode,
                peer(),
                conn,
                crate::net::PeerSlot::exempt(peer().ip()),
                token,
            );
            tokio::spawn(s.run())
        },
        input,
    );
    assert!(out.starts_with(b"220 "), "no greeting");
}

// ---- The store against a model ----

/// One mailbox in the model: UID -> (flags, bytes), and the lowest UID a
/// new message may get.
#[derive(Default, Clone, Debug)]
struct ModelBox {
    messages: std::collections::BTreeMap<u32, (Vec<String>, Vec<u8>)>,
    uidnext: u32,
}

const NAMES: [&str; 6] = ["INBOX", "A", "A/B", "C", "Sent", "A/B/D"];
const FLAGS: [&str; 5] = ["\\Seen", "\\Deleted", "\\Flagged", "$Label1", "Junk"];

struct StoreHarness {
    dir: PathBuf,
    store: std::sync::Mutex<Option<Arc<crate::store::Store>>>,
    rt: tokio::runtime::Runtime,
    cfg: crate::config::StoreConfig,
}

fn store_harness() -> &'static StoreHarness {
    static H: OnceLock<StoreHarness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = scratch("store");
        let mut cfg = Config::for_testing(&dir).store;
        cfg.groups = 2;
        cfg.checkpoint_records = 50;
        let store = crate::store::Store::open(&dir.join("data"), &cfg)
            .unwrap_or_else(|e| panic!("store: {e}"));
        StoreHarness {
            dir,
            store: std::sync::Mutex::new(Some(store)),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}")),
            cfg,
        }
    })
}

fn selection(byte: u8, uids: &[u32]) -> Vec<u32> {
    uids.iter()
        .enumerate()
        .filter(|(i, _)| byte & (1 << (i % 8)) != 0)
        .map(|(_, u)| *u)
        .collect()
}

/// Random operations on one fresh user, applied to the store and to a
/// model; after them (and after a reopen of the store, which replays its
/// log, when the input asks) the store must hold exactly the model.
pub fn store_model(data: &[u8]) {
    use crate::store::{Delivery, FlagAction, Op, Outcome, StoreError};
    use std::collections::BTreeMap;
    static USER: AtomicU64 = AtomicU64::new(0);
    let h = store_harness();
    let user = format!("u{}@example.test", USER.fetch_add(1, Ordering::Relaxed));
    let mut model: BTreeMap<String, ModelBox> = BTreeMap::new();
    let store = || {
        h.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| panic!("store is open"))
    };
    let mailbox_id = |name: &str| -> Option<u64> {
        h.rt.block_on(store().mailbox(&user, name))
            .ok()
            .flatten()
            .map(|i| i.id)
    };
    h.rt.block_on(store().ensure_user(&user))
        .unwrap_or_else(|e| panic!("ensure_user: {e}"));
    for n in crate::store::schema::DEFAULT_MAILBOXES {
        model.insert(
            n.0.to_string(),
            ModelBox {
                uidnext: 1,
                ..Default::default()
            },
        );
    }
    let mut reopened = false;
    for op in data.chunks(4).take(64) {
        let [code, a, b, c] = [
            op[0],
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        ];
        let na = NAMES[a as usize % NAMES.len()];
        let nb = NAMES[b as usize % NAMES.len()];
        match code % 9 {
            0 | 1 => {
                let raw = format!("Subject: m{a}{b}{c}\r\n\r\n{}\r\n", "x".repeat(c as usize))
                    .into_bytes();
                let flags: Vec<String> = selection(b, &[0, 1, 2, 3, 4])
                    .into_iter()
                    .map(|i| FLAGS[i as usize].to_string())
                    .collect();
                let d = Delivery {
                    user: user.clone(),
                    mailbox: na.to_string(),
                    raw: Arc::new(raw.clone()),
                    internal_date: 1_700_000_000,
                    flags: flags.clone(),
                    summary: Default::default(),
                };
                match h.rt.block_on(store().submit(&user, Op::Deliver(d))) {
                    Ok(Outcome::Appended { uid, .. }) => {
                        let m = model
                            .get_mut(na)
                            .unwrap_or_else(|| panic!("delivered to {na}, which the model lacks"));
                        assert!(uid >= m.uidnext, "UID {uid} reused in {na}");
                        m.uidnext = uid + 1;
                        m.messages.insert(uid, (flags, raw));
                    }
                    Err(StoreError::NoSuchMailbox(_)) => assert!(!model.contains_key(na)),
                    other => panic!("deliver: {other:?}"),
                }
            }
            2 => {
                let op = Op::CreateMailbox {
                    user: user.clone(),
                    name: na.to_string(),
                    max_mailboxes: usize::MAX,
                };
                match h.rt.block_on(store().submit(&user, op)) {
                    Ok(_) => {
                        assert!(!model.contains_key(na), "created {na} twice");
                        let mut prefix = String::new();
                        for part in na.split('/') {
                            if !prefix.is_empty() {
                                prefix.push('/');
                            }
                            prefix.push_str(part);
                            model.entry(prefix.clone()).or_insert(ModelBox {
                                uidnext: 1,
                                ..Default::default()
                            });
                        }
                    }
                    Err(StoreError::MailboxExists(_)) => assert!(model.contains_key(na)),
                    other => panic!("create: {other:?}"),
                }
            }
            3 => {
                let op = Op::DeleteMailbox {
                    user: user.clone(),
                    name: na.to_string(),
                };
                let has_children = model.keys().any(|k| k.starts_with(&format!("{na}/")));
                match h.rt.block_on(store().submit(&user, op)) {
                    Ok(_) => {
                        assert!(na != "INBOX" && !has_children);
                        assert!(model.remove(na).is_some(), "deleted a missing {na}");
                    }
                    Err(StoreError::HasChildren(_)) => assert!(has_children),
                    Err(StoreError::NoSuchMailbox(_)) => assert!(!model.contains_key(na)),
                    Err(StoreError::BadName(_)) => assert_eq!(na, "INBOX"),
                    other => panic!("delete: {other:?}"),
                }
            }
            4 => {
                let op = Op::RenameMailbox {
                    user: user.clone(),
                    from: na.to_string(),
                    to: nb.to_string(),
                };
                match h.rt.block_on(store().submit(&user, op)) {
                    Ok(_) => {
                        assert!(model.contains_key(na) && !model.contains_key(nb));
                        let parent = nb.rsplit_once('/').map(|(p, _)| p.to_string());
                        let parent_missing =
                            parent.as_ref().is_some_and(|p| !model.contains_key(p));
                        if na == "INBOX" {
                            let moved = model
                                .get_mut("INBOX")
                                .map(std::mem::take)
                                .unwrap_or_default();
                            if let Some(i) = model.get_mut("INBOX") {
                                i.uidnext = moved.uidnext;
                            }
                            let mut fresh = ModelBox::default();
                            for (i, (_, m)) in moved.messages.into_iter().enumerate() {
                                fresh.messages.insert(i as u32 + 1, m);
                            }
                            fresh.uidnext = fresh.messages.len() as u32 + 1;
                            add_with_parents(&mut model, nb, fresh);
                        } else {
                            // What moves is decided on the state before the
                            // rename (a parent created for `to` stays put).
                            let prefix = format!("{na}/");
                            let moving: Vec<String> = model
                                .keys()
                                .filter(|k| *k == na || k.starts_with(&prefix))
                                .cloned()
                                .collect();
                            if parent_missing && let Some(p) = &parent {
                                add_with_parents(
                                    &mut model,
                                    p,
                                    ModelBox {
                                        uidnext: 1,
                                        ..Default::default()
                                    },
                                );
                            }
                            let taken: Vec<(String, ModelBox)> = moving
                                .iter()
                                .map(|k| (k.clone(), model.remove(k).unwrap_or_default()))
                                .collect();
                            for (k, b) in taken {
                                let new = format!("{nb}{}", &k[na.len()..]);
                                model.insert(new, b);
                            }
                        }
                    }
                    Err(StoreError::NoSuchMailbox(_)) => assert!(!model.contains_key(na)),
                    Err(StoreError::MailboxExists(_)) => {}
                    Err(StoreError::BadName(_)) => {
                        assert!(
                            nb == "INBOX" || (na != "INBOX" && nb.starts_with(&format!("{na}/"))),
                            "rename {na} -> {nb} refused"
                        );
                    }
                    other => panic!("rename: {other:?}"),
                }
            }
            5 | 6 => {
                let id = mailbox_id(na);
                assert_eq!(
                    id.is_some(),
                    model.contains_key(na),
                    "{na} exists in one only"
                );
                let Some(id) = id else { continue };
                let uids: Vec<u32> = model
                    .get(na)
                    .map(|m| m.messages.keys().copied().collect())
                    .unwrap_or_default();
                let chosen = selection(b, &uids);
                let flags: Vec<String> = selection(c, &[0, 1, 2, 3, 4])
                    .into_iter()
                    .map(|i| FLAGS[i as usize].to_string())
                    .collect();
                let action =
                    [FlagAction::Add, FlagAction::Remove, FlagAction::Replace][a as usize % 3];
                let op = Op::Store {
                    mailbox_id: id,
                    uids: chosen.clone(),
                    action,
                    flags: flags.clone(),
                    unchanged_since: None,
                };
                h.rt.block_on(store().submit(&user, op))
                    .unwrap_or_else(|e| panic!("store flags: {e}"));
                if let Some(m) = model.get_mut(na) {
                    for u in chosen {
                        if let Some(e) = m.messages.get_mut(&u) {
                            e.0 = crate::store::ops::apply_flags(&e.0, action, &flags);
                        }
                    }
                }
            }
            7 => {
                let Some(id) = mailbox_id(na) else { continue };
                let uids: Vec<u32> = model
                    .get(na)
                    .map(|m| m.messages.keys().copied().collect())
                    .unwrap_or_default();
                let chosen = selection(b, &uids);
                h.rt.block_on(store().submit(
                    &user,
                    Op::Expunge {
                        mailbox_id: id,
                        uids: chosen.clone(),
                    },
                ))
                .unwrap_or_else(|e| panic!("expunge: {e}"));
                if let Some(m) = model.get_mut(na) {
                    for u in chosen {
                        m.messages.remove(&u);
                    }
                }
            }
            _ => {
                if c & 0x80 != 0 && !reopened {
                    // Reopen: recovery replays the log since the checkpoint.
                    reopened = true;
                    let s = h.store.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(s) = s {
                        s.shutdown();
                        drop(s);
                    }
                    let s = crate::store::Store::open(&h.dir.join("data"), &h.cfg)
                        .unwrap_or_else(|e| panic!("reopen: {e}"));
                    *h.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                    continue;
                }
                let (Some(from), Some(to)) = (mailbox_id(na), mailbox_id(nb)) else {
                    continue;
                };
                let uids: Vec<u32> = model
                    .get(na)
                    .map(|m| m.messages.keys().copied().collect())
                    .unwrap_or_default();
                let chosen = selection(c, &uids);
                let remove = a & 1 == 1;
                let op = Op::Copy {
                    from,
                    uids: chosen,
                    to,
                    remove,
                };
                match h.rt.block_on(store().submit(&user, op)) {
                    Ok(Outcome::Copied { pairs, .. }) => {
                        let src = model.get(na).cloned().unwrap_or_default();
                        for (s, d) in &pairs {
                            let m = src
                                .messages
                                .get(s)
                                .cloned()
                                .unwrap_or_else(|| panic!("copied a missing {s}"));
                            let dst = model.get_mut(nb).unwrap_or_else(|| panic!("no {nb}"));
                            assert!(*d >= dst.uidnext, "UID {d} reused in {nb}");
                            dst.uidnext = d + 1;
                            dst.messages.insert(*d, m);
                        }
                        if remove && let Some(m) = model.get_mut(na) {
                            for (s, _) in &pairs {
                                m.messages.remove(s);
                            }
                        }
                    }
                    other => panic!("copy: {other:?}"),
                }
            }
        }
    }
    // The store holds exactly the model.
    let boxes =
        h.rt.block_on(store().mailboxes(&user))
            .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&String> = boxes.iter().map(|(n, _)| n).collect();
    let want: Vec<&String> = model.keys().collect();
    assert_eq!(names, want, "mailboxes");
    for (name, info) in &boxes {
        let m = &model[name];
        let (_, msgs) =
            h.rt.block_on(store().snapshot(&user, info.id))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("{name} vanished"));
        let got: Vec<(u32, Vec<String>)> = msgs.iter().map(|s| (s.uid, s.flags.clone())).collect();
        let exp: Vec<(u32, Vec<String>)> = m
            .messages
            .iter()
            .map(|(u, (f, _))| (*u, f.clone()))
            .collect();
        assert_eq!(got, exp, "messages and flags of {name}");
        assert!(info.uidnext >= m.uidnext, "UIDNEXT of {name} went back");
        for (uid, (_, raw)) in &m.messages {
            let got =
                h.rt.block_on(store().raw(&user, name, *uid))
                    .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.as_deref(), Some(&raw[..]), "bytes of {name}/{uid}");
        }
    }
}

fn add_with_parents(
    model: &mut std::collections::BTreeMap<String, ModelBox>,
    name: &str,
    b: ModelBox,
) {
    let mut prefix = String::new();
    let parts: Vec<&str> = name.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if i + 1 < parts.len() {
            model.entry(prefix.clone()).or_insert(ModelBox {
                uidnext: 1,
                ..Default::default()
            });
        }
    }
    model.insert(name.to_string(), b);
}

/// A harness: arbitrary bytes in, a panic when a check fails.
pub type Harness = fn(&[u8]);

/// Every harness by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("imap_command", imap_command),
    ("imap_session", imap_session),
    ("smtp_session", smtp_session),
    ("mime", mime),
    ("list_pattern", list_pattern),
    ("wal", wal),
    ("archive", archive),
    ("backup", backup),
    ("config", config),
    ("store_model", store_model),
];

/// Replays every file of `dir` through `f`; returns how many.
pub fn replay(dir: &Path, f: Harness) -> usize {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in &files {
        if let Ok(bytes) = std::fs::read(p) {
            f(&bytes);
        }
    }
    files.len()
}
