//! SMTP and LMTP: inbound MX, submission (STARTTLS and implicit TLS, AUTH)
//! and LMTP for a fronting MTA. `session` is the per-connection state
//! machine; `delivery` turns an accepted message into store writes. This
//! module never touches files: everything it keeps goes through `store`.

pub mod delivery;
pub mod session;

/// Which listener a session came in on; it decides AUTH, TLS and LHLO rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Port 25 style inbound: no AUTH, local recipients only.
    Mx,
    /// Port 587 style: STARTTLS, then AUTH before MAIL.
    Submission,
    /// Port 465 style: TLS from the first byte, AUTH before MAIL.
    Submissions,
    /// RFC 2033 LMTP: LHLO, one reply per recipient after DATA.
    Lmtp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mx => "smtp",
            Mode::Submission => "submission",
            Mode::Submissions => "submissions",
            Mode::Lmtp => "lmtp",
        }
    }

    pub fn is_submission(self) -> bool {
        matches!(self, Mode::Submission | Mode::Submissions)
    }
}
