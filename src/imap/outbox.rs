//! What a session has to say, in the order IMAP wants it said.
//!
//! Handlers never write to the socket: they put responses here. A
//! command's tagged completion is held back until the command has ended
//! and every untagged update that must precede it (EXISTS, EXPUNGE, FETCH
//! FLAGS from other sessions) has been added, so the tagged line is always
//! the last line of its command. The driver writes out what is ready
//! whenever it likes (between the batches of a long FETCH, before it
//! reads).

use imap_types::response::{Response, Status};

use super::encode;

#[derive(Default)]
pub struct Outbox {
    /// Encoded, ready to be written.
    ready: Vec<u8>,
    /// The current command's tagged completion.
    completion: Option<Vec<u8>>,
}

impl Outbox {
    /// An untagged response (or a continuation request): ready at once.
    pub fn push(&mut self, r: Response<'_>) {
        encode(&mut self.ready, &r);
    }

    /// An untagged response followed by extended data imap-types has no
    /// type for (LIST's `("CHILDINFO" ("SUBSCRIBED"))`, RFC 5258): `extra`
    /// goes before the line's CRLF, after a space.
    pub fn push_extended(&mut self, r: Response<'_>, extra: &[u8]) {
        encode(&mut self.ready, &r);
        if self.ready.ends_with(b"\r\n") {
            self.ready.truncate(self.ready.len() - 2);
        }
        self.ready.push(b' ');
        self.ready.extend_from_slice(extra);
        self.ready.extend_from_slice(b"\r\n");
    }

    /// The tagged completion of the command being run; written after
    /// whatever else the command still adds (see [`Outbox::end_command`]).
    /// A second completion replaces the first.
    pub fn complete(&mut self, s: Status<'_>) {
        let mut bytes = Vec::new();
        encode(&mut bytes, &Response::Status(s));
        self.completion = Some(bytes);
    }

    pub fn has_completion(&self) -> bool {
        self.completion.is_some()
    }

    /// The command is over: its completion goes after everything so far.
    pub fn end_command(&mut self) {
        if let Some(c) = self.completion.take() {
            self.ready.extend_from_slice(&c);
        }
    }

    /// Bytes ready to be written.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Takes the bytes ready to be written (a held completion stays).
    pub fn take(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut self.ready);
        if out.capacity() > 4 << 20 {
            // Do not keep a big FETCH's buffer for an idle connection.
            self.ready = Vec::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_types::core::Tag;
    use imap_types::response::Data;

    #[test]
    fn the_completion_is_always_last() {
        let mut o = Outbox::default();
        o.push(Response::Data(Data::Exists(3)));
        o.complete(Status::ok(Some(Tag::try_from("a").unwrap()), None, "done").unwrap());
        o.push(Response::Data(Data::Exists(4)));
        assert_eq!(o.take(), b"* 3 EXISTS\r\n* 4 EXISTS\r\n");
        assert!(o.has_completion());
        o.push(Response::Data(Data::Recent(0)));
        o.end_command();
        assert_eq!(o.take(), b"* 0 RECENT\r\na OK done\r\n");
        assert!(o.take().is_empty());
    }

    #[test]
    fn extended_data_goes_before_the_line_end() {
        let mut o = Outbox::default();
        o.push_extended(Response::Data(Data::Exists(3)), b"(\"X\")");
        assert_eq!(o.take(), b"* 3 EXISTS (\"X\")\r\n");
    }
}
