//! A seeded generator of realistic messages for tests and benchmarks:
//! plain and 8-bit text, encoded-word headers, multipart/alternative,
//! attachments, forwarded message/rfc822 and group addresses. The same seed
//! always gives the same bytes, so runs on different machines compare.

use base64::Engine;

/// A small deterministic PRNG (SplitMix64): no dependency, stable forever.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "archive",
    "mail",
    "store",
    "quarterly",
    "report",
    "meeting",
    "budget",
    "server",
    "backup",
    "invoice",
    "travel",
    "project",
    "review",
    "notes",
    "draft",
    "schedule",
    "update",
    "team",
];
const NAMES: &[&str] = &[
    "Alice Martin",
    "Bob Stone",
    "Jörg Müller",
    "Zoë Faure",
    "Chen Wei",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn encoded(s: &str) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }
}

fn paragraph(rng: &mut Rng, lines: usize) -> String {
    (0..lines)
        .map(|_| {
            let n = 6 + rng.below(8) as usize;
            words(rng, n)
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn headers(rng: &mut Rng, n: usize, to: &str, content: &str) -> String {
    let from = NAMES[rng.below(NAMES.len() as u64) as usize];
    let day = 1 + rng.below(28);
    let subject = if rng.below(4) == 0 {
        format!("Grüße: {}", words(rng, 3))
    } else {
        words(rng, 4)
    };
    format!(
        "From: {} <sender{}@remote.test>\r\nTo: {to}\r\nSubject: {}\r\n\
         Date: Mon, {day:02} Nov 2026 09:{:02}:00 +0100\r\nMessage-ID: <corpus.{n}@remote.test>\r\n\
         MIME-Version: 1.0\r\n{content}",
        encoded(from),
        rng.below(50),
        encoded(&subject),
        rng.below(60),
    )
}

/// Message number `n` of the corpus with `seed`, addressed to `to`.
pub fn message(seed: u64, n: u64, to: &str) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let kind = rng.below(6);
    let lines = 3 + rng.below(40) as usize;
    let text = paragraph(&mut rng, lines);
    let msg = match kind {
        0 => format!(
            "{}\r\n{text}\r\n",
            headers(
                &mut rng,
                n as usize,
                to,
                "Content-Type: text/plain; charset=us-ascii\r\n"
            )
        ),
        1 => format!(
            "{}\r\nGrüße aus Köln, ça va? {text}\r\n",
            headers(
                &mut rng,
                n as usize,
                to,
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            )
        ),
        2 => format!(
            "{}\r\n--alt{n}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
             --alt{n}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>{text}</p></body></html>\r\n\
             --alt{n}--\r\n",
            headers(
                &mut rng,
                n as usize,
                to,
                &format!("Content-Type: multipart/alternative; boundary=\"alt{n}\"\r\n")
            )
        ),
        3 => {
            let size = 1000 + rng.below(20_000) as usize;
            let blob: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
            let wrapped: Vec<&str> = b64
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
                .collect();
            format!(
                "{}\r\n--mix{n}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n\
                 --mix{n}\r\nContent-Type: application/pdf; name=\"report-{n}.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"report-{n}.pdf\"\r\n\r\n\
                 {}\r\n--mix{n}--\r\n",
                headers(
                    &mut rng,
                    n as usize,
                    to,
                    &format!("Content-Type: multipart/mixed; boundary=\"mix{n}\"\r\n")
                ),
                wrapped.join("\r\n")
            )
        }
        4 => format!(
            "{}\r\n--fwd{n}\r\nContent-Type: text/plain\r\n\r\nForwarded below.\r\n\
             --fwd{n}\r\nContent-Type: message/rfc822\r\n\r\n\
             From: Inner <inner@remote.test>\r\nTo: undisclosed-recipients:;\r\nSubject: inner {n}\r\n\r\n{text}\r\n\
             --fwd{n}--\r\n",
            headers(
                &mut rng,
                n as usize,
                to,
                &format!("Content-Type: multipart/mixed; boundary=\"fwd{n}\"\r\n")
            )
        ),
        _ => format!(
            "{}\r\n{text}\r\n",
            headers(
                &mut rng,
                n as usize,
                &format!("team: {to}, other@remote.test;"),
                "Content-Type: text/plain\r\n"
            )
        ),
    };
    msg.into_bytes()
}

/// A message of `depth` multiparts nested in each other (the poison message
/// of a 3,000-level nesting is 210 KB), each level with a boundary of its own.
pub fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut head = String::from(
        "From: a@remote.test\r\nTo: alice@example.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n",
    );
    let mut tail = String::new();
    for i in 0..depth {
        head.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
        tail = format!("\r\n--b{i}--\r\n{tail}");
    }
    head.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
    head.push_str(&tail);
    head.into_bytes()
}

/// A message of `depth` message/rfc822 parts nested in each other, the
/// cheapest deep nesting (about 40 bytes a level).
pub fn nested_rfc822(depth: usize) -> Vec<u8> {
    let mut m =
        String::from("From: a@remote.test\r\nTo: alice@example.test\r\nSubject: nested\r\n");
    for _ in 0..depth {
        m.push_str("Content-Type: message/rfc822\r\n\r\nSubject: x\r\n");
    }
    m.push_str("\r\ninnermost\r\n");
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_parseable() {
        for n in 0..30 {
            let a = message(7, n, "alice@example.test");
            assert_eq!(a, message(7, n, "alice@example.test"));
            assert!(a.ends_with(b"\r\n"));
            assert!(!a.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
            mail_parser::MessageParser::default()
                .parse(&a)
                .expect("parses");
        }
    }
}
