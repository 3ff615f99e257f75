//! What the store keeps about a message besides its bytes: flags, dates,
//! size, modseq and a small header summary parsed once at delivery, so that
//! listing and searching never re-parse message bodies.

use super::codec::{Dec, DecodeError, Enc};

const META_VERSION: u8 = 2;
/// Still read: without the Date header's zone.
const META_VERSION_1: u8 = 1;

/// Header fields cached at delivery (empty string = header absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The Date: header as unix seconds, if it parsed.
    pub date: Option<i64>,
    /// The Date: header's zone, in seconds east of UTC (0 for messages
    /// stored before it was kept): SENTON and friends compare the date as
    /// the sender wrote it.
    pub date_offset: i32,
    pub subject: String,
    pub from: String,
    pub to: String,
    pub message_id: String,
}

impl Summary {
    /// Parses only the header block of `raw`.
    pub fn parse(raw: &[u8]) -> Summary {
        // mail-parser's accessors index the root part: no part, no summary.
        let Some(msg) = mail_parser::MessageParser::default()
            .parse_headers(raw)
            .filter(|m| !m.parts.is_empty())
        else {
            return Summary::default();
        };
        let addr = |a: Option<&mail_parser::Address>| -> String {
            a.map(|a| {
                a.iter()
                    .filter_map(|x| x.address())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
        };
        Summary {
            date: msg.date().map(|d| d.to_timestamp()),
            date_offset: msg.date().map_or(0, |d| {
                let secs = i32::from(d.tz_hour) * 3600 + i32::from(d.tz_minute) * 60;
                if d.tz_before_gmt { -secs } else { secs }
            }),
            subject: msg.subject().unwrap_or_default().to_string(),
            from: addr(msg.from()),
            to: addr(msg.to()),
            message_id: msg.message_id().unwrap_or_default().to_string(),
        }
    }
}

/// Per-message metadata stored beside the raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub internal_date: i64,
    pub size: u32,
    pub modseq: u64,
    pub flags: Vec<String>,
    pub summary: Summary,
}

impl MessageMeta {
    pub fn encode(&self, e: &mut Enc) {
        e.u8(META_VERSION)
            .i64(self.internal_date)
            .u32(self.size)
            .u64(self.modseq)
            .strs(&self.flags)
            .u8(self.summary.date.is_some() as u8)
            .i64(self.summary.date.unwrap_or(0))
            .str(&self.summary.subject)
            .str(&self.summary.from)
            .str(&self.summary.to)
            .str(&self.summary.message_id)
            .i64(i64::from(self.summary.date_offset));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::new();
        self.encode(&mut e);
        e.finish()
    }

    pub fn decode(d: &mut Dec<'_>) -> Result<MessageMeta, DecodeError> {
        let version = d.u8()?;
        if version != META_VERSION && version != META_VERSION_1 {
            return Err(DecodeError("unknown message metadata version"));
        }
        let internal_date = d.i64()?;
        let size = d.u32()?;
        let modseq = d.u64()?;
        let flags = d.strs()?;
        let has_date = d.u8()? != 0;
        let date = d.i64()?;
        let (subject, from, to, message_id) = (d.str()?, d.str()?, d.str()?, d.str()?);
        let date_offset = if version == META_VERSION {
            i32::try_from(d.i64()?).map_err(|_| DecodeError("Date zone out of range"))?
        } else {
            0
        };
        Ok(MessageMeta {
            internal_date,
            size,
            modseq,
            flags,
            summary: Summary {
                date: has_date.then_some(date),
                date_offset,
                subject,
                from,
                to,
                message_id,
            },
        })
    }

    /// Only (internal date, size, modseq, flags): what a mailbox listing
    /// needs, without allocating the cached header summary.
    pub fn state_from_bytes(b: &[u8]) -> Result<(i64, u32, u64, Vec<String>), DecodeError> {
        let mut d = Dec::new(b);
        let version = d.u8()?;
        if version != META_VERSION && version != META_VERSION_1 {
            return Err(DecodeError("unknown message metadata version"));
        }
        Ok((d.i64()?, d.u32()?, d.u64()?, d.strs()?))
    }

    pub fn from_bytes(b: &[u8]) -> Result<MessageMeta, DecodeError> {
        let mut d = Dec::new(b);
        let m = Self::decode(&mut d)?;
        d.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_encoded_headers() {
        let raw = b"From: =?UTF-8?B?SsO2cmc=?= <jorg@example.test>\r\nTo: a@x.test, b@x.test\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <m1@x>\r\n\r\nbody\r\n";
        let s = Summary::parse(raw);
        let west = Summary::parse(b"Date: Mon, 1 Jan 2024 23:30:00 -0530\r\n\r\nx");
        assert_eq!(west.date_offset, -(5 * 3600 + 30 * 60));
        assert_eq!(s.subject, "Grüße");
        assert_eq!(s.from, "jorg@example.test");
        assert_eq!(s.to, "a@x.test, b@x.test");
        assert_eq!(s.message_id, "m1@x");
        assert_eq!(s.date, Some(1795514400));
        let m = MessageMeta {
            internal_date: 5,
            size: 10,
            modseq: 3,
            flags: vec!["\\Seen".into()],
            summary: s,
        };
        assert_eq!(MessageMeta::from_bytes(&m.to_bytes()).unwrap(), m);
        // Version 1 (no zone) still reads.
        let mut v1 = m.to_bytes();
        v1[0] = 1;
        v1.truncate(v1.len() - 8);
        let old = MessageMeta::from_bytes(&v1).unwrap();
        assert_eq!(
            (old.summary.date_offset, &old.summary.subject),
            (0, &m.summary.subject)
        );
        assert_eq!(
            MessageMeta::state_from_bytes(&m.to_bytes()).unwrap(),
            (5, 10, 3, vec!["\\Seen".to_string()])
        );
    }
}
