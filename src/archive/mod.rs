//! The archive tier: each user's aged mail in their own append-only,
//! checksummed archive files under the archive root (a NAS mount in
//! production). `format` is the bytes, `file` one user's archive.

pub mod agent;
pub mod discovery;
pub mod file;
pub mod format;
pub mod registry;
