//! Users, passwords and login throttling.
//!
//! The users file is the only source of accounts. It holds argon2id PHC hashes,
//! never plain passwords, and is rewritten atomically (temp file, fsync,
//! rename) so a crash mid-edit never leaves a half file. The running server
//! holds an immutable snapshot ([`Users`]) behind [`Directory`] and swaps it
//! when the file changes; a file that fails to parse keeps the old snapshot
//! and logs why. Password checks are CPU-heavy by design and run on the
//! blocking pool, never on the async threads.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("users file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("`{0}` is not a valid address (expected local@domain)")]
    BadAddress(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    address: String,
    password: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    archive: Option<crate::config::ArchiveOverride>,
}

/// One account.
#[derive(Debug, Clone)]
pub struct User {
    pub address: String,
    password_hash: String,
    pub aliases: Vec<String>,
    /// The user's own archive policy, if any.
    pub archive: Option<crate::config::ArchiveOverride>,
}

/// An immutable snapshot of the users file.
#[derive(Debug, Default)]
pub struct Users {
    by_address: HashMap<String, User>,
    /// alias -> owning address
    aliases: HashMap<String, String>,
}

/// Checks `local@domain` shape and returns the lower-cased address.
pub fn normalize_address(address: &str) -> Result<String, AuthError> {
    let a = address.trim().to_ascii_lowercase();
    let ok = match a.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !a.chars().any(|c| c.is_whitespace() || c.is_control())
                && !a.contains(['<', '>', '"', '\\', '/'])
                && a.len() <= 254
        }
        None => false,
    };
    if ok {
        Ok(a)
    } else {
        Err(AuthError::BadAddress(address.to_string()))
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(AuthError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|problem| AuthError::Invalid {
            path: path.into(),
            problem,
        })
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut users = Users::default();
        for entry in file.user {
            let address = normalize_address(&entry.address).map_err(|e| e.to_string())?;
            if PasswordHash::new(&entry.password).is_err() {
                return Err(format!(
                    "user {address}: password is not a PHC hash (use `tiermail user passwd`)"
                ));
            }
            let mut aliases = Vec::new();
            for alias in &entry.aliases {
                let alias = normalize_address(alias).map_err(|e| e.to_string())?;
                if users.by_address.contains_key(&alias) || users.aliases.contains_key(&alias) {
                    return Err(format!("alias {alias} is used twice"));
                }
                users.aliases.insert(alias.clone(), address.clone());
                aliases.push(alias);
            }
            if users.by_address.contains_key(&address) || users.aliases.contains_key(&address) {
                return Err(format!("address {address} is used twice"));
            }
            if let Some(access) = entry.archive.as_ref().and_then(|a| a.access.as_deref())
                && !crate::config::ACCESS_VALUES.contains(&access)
            {
                return Err(format!(
                    "{address}: archive.access must be \"read-write\", \"read-only\" or \"hidden\""
                ));
            }
            users.by_address.insert(
                address.clone(),
                User {
                    address,
                    password_hash: entry.password,
                    aliases,
                    archive: entry.archive,
                },
            );
        }
        Ok(users)
    }

    /// The owning account of an address or alias (case-insensitive).
    pub fn resolve(&self, address: &str) -> Option<&User> {
        let a = address.to_ascii_lowercase();
        self.by_address
            .get(&a)
            .or_else(|| self.aliases.get(&a).and_then(|o| self.by_address.get(o)))
    }

    pub fn get(&self, address: &str) -> Option<&User> {
        self.by_address.get(&address.to_ascii_lowercase())
    }

    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_address.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }
}

/// Argon2id with the crate's recommended cost (about 40 ms a hash in release).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    hash_password_with(password, Params::default())
}

/// Argon2id with explicit parameters; tests use cheap ones.
pub fn hash_password_with(password: &str, params: Params) -> Result<String, AuthError> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Cheap argon2id parameters for tests (never for real accounts).
pub fn test_params() -> Params {
    Params::new(256, 1, 1, None).expect("valid argon2 params")
}

fn verify_hash(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// The live users snapshot plus the file it came from.
pub struct Directory {
    path: PathBuf,
    current: RwLock<Arc<Users>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    /// Password checks running at once. Each argon2id check holds its whole
    /// memory cost (19 MiB by default), so a burst of logins must queue
    /// rather than allocate per connection.
    hashing: tokio::sync::Semaphore,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Directory {
    pub fn open(path: &Path) -> Result<Arc<Directory>, AuthError> {
        let stamp = file_stamp(path);
        let users = Users::load(path)?;
        Ok(Arc::new(Directory {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(users)),
            stamp: Mutex::new(stamp),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }))
    }

    pub fn snapshot(&self) -> Arc<Users> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file. On error the old snapshot stays and the error is returned.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let stamp = file_stamp(&self.path);
        let users = Users::load(&self.path)?;
        let n = users.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        Ok(n)
    }

    /// Reloads when the file's mtime or size changed since the last load.
    pub fn reload_if_changed(&self) -> Option<Result<usize, AuthError>> {
        let now = file_stamp(&self.path);
        let changed = *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now;
        changed.then(|| {
            let r = self.reload();
            if r.is_err() {
                // Remember the broken version so the error is logged once, not every tick.
                *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
            }
            r
        })
    }

    /// Verifies a login on the blocking pool. Returns the canonical address.
    pub async fn verify(&self, login: &str, password: &str) -> Option<String> {
        let users = self.snapshot();
        let user = users.get(login)?.clone();
        let password = password.to_string();
        let _permit = self.hashing.acquire().await.ok()?;
        let ok = tokio::task::spawn_blocking(move || verify_hash(&password, &user.password_hash))
            .await
            .unwrap_or(false);
        ok.then(|| login.to_ascii_lowercase())
    }
}

/// Failed logins per client IP in a sliding window.
pub struct Throttle {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    pub fn new(max_failures: u32, window: Duration) -> Throttle {
        Throttle {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// True while `ip` has used up its failures in the current window.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((n, since)) if since.elapsed() < self.window => *n >= self.max_failures,
            Some(_) => {
                map.remove(&ip);
                false
            }
            None => false,
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    pub fn record_success(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

// ---- editing the users file (CLI) ----

fn read_doc(path: &Path) -> Result<toml_edit::DocumentMut, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.into(),
                source,
            });
        }
    };
    // Validate with the same rules the server uses before touching anything.
    Users::parse(&text).map_err(|problem| AuthError::Invalid {
        path: path.into(),
        problem,
    })?;
    text.parse::<toml_edit::DocumentMut>()
        .map_err(|e| AuthError::Invalid {
            path: path.into(),
            problem: e.to_string(),
        })
}

/// Writes `text` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn write_doc(path: &Path, doc: &toml_edit::DocumentMut) -> Result<(), AuthError> {
    write_atomically(path, &doc.to_string()).map_err(|source| AuthError::Io {
        path: path.into(),
        source,
    })
}

fn users_array(doc: &mut toml_edit::DocumentMut) -> &mut toml_edit::ArrayOfTables {
    if doc
        .get("user")
        .and_then(|i| i.as_array_of_tables())
        .is_none()
    {
        doc.insert(
            "user",
            toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()),
        );
    }
    doc["user"]
        .as_array_of_tables_mut()
        .expect("just inserted an array of tables")
}

fn entry_address(t: &toml_edit::Table) -> Option<String> {
    t.get("address")
        .and_then(|v| v.as_str())
        .map(|s| s.to_ascii_lowercase())
}

/// Adds a user with an already computed hash.
pub fn add_user(path: &Path, address: &str, hash: &str) -> Result<(), AuthError> {
    let address = normalize_address(address)?;
    let mut doc = read_doc(path)?;
    let users = Users::parse(&doc.to_string()).unwrap_or_default();
    if users.resolve(&address).is_some() {
        return Err(AuthError::Exists(address));
    }
    let mut t = toml_edit::Table::new();
    t.insert("address", toml_edit::value(address.as_str()));
    t.insert("password", toml_edit::value(hash));
    t.insert("aliases", toml_edit::value(toml_edit::Array::new()));
    users_array(&mut doc).push(t);
    write_doc(path, &doc)
}

pub fn set_password(path: &Path, address: &str, hash: &str) -> Result<(), AuthError> {
    let address = normalize_address(address)?;
    let mut doc = read_doc(path)?;
    let arr = users_array(&mut doc);
    let t = arr
        .iter_mut()
        .find(|t| entry_address(t).as_deref() == Some(address.as_str()))
        .ok_or_else(|| AuthError::NoSuchUser(address.clone()))?;
    t.insert("password", toml_edit::value(hash));
    write_doc(path, &doc)
}

pub fn delete_user(path: &Path, address: &str) -> Result<(), AuthError> {
    let address = normalize_address(address)?;
    let mut doc = read_doc(path)?;
    let arr = users_array(&mut doc);
    let idx = arr
        .iter()
        .position(|t| entry_address(t).as_deref() == Some(address.as_str()))
        .ok_or_else(|| AuthError::NoSuchUser(address.clone()))?;
    arr.remove(idx);
    write_doc(path, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_passwd_delete_keep_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "# hand-written comment\n").unwrap();
        let h = hash_password_with("pw1", test_params()).unwrap();
        add_user(&path, "Alice@Example.test", &h).unwrap();
        assert!(matches!(
            add_user(&path, "alice@example.test", &h),
            Err(AuthError::Exists(_))
        ));
        let users = Users::load(&path).unwrap();
        let alice = users.get("alice@example.test").unwrap();
        assert!(verify_hash("pw1", &alice.password_hash));
        assert!(!verify_hash("pw2", &alice.password_hash));
        let h2 = hash_password_with("pw2", test_params()).unwrap();
        set_password(&path, "alice@example.test", &h2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# hand-written comment"));
        assert!(!text.contains("pw2"));
        let users = Users::load(&path).unwrap();
        assert!(verify_hash(
            "pw2",
            &users.get("alice@example.test").unwrap().password_hash
        ));
        delete_user(&path, "alice@example.test").unwrap();
        assert!(Users::load(&path).unwrap().is_empty());
        assert!(matches!(
            delete_user(&path, "alice@example.test"),
            Err(AuthError::NoSuchUser(_))
        ));
    }

    #[test]
    fn rejects_plain_passwords_and_duplicate_aliases() {
        let e = Users::parse("[[user]]\naddress='a@x.test'\npassword='secret'\n").unwrap_err();
        assert!(e.contains("not a PHC hash"), "{e}");
        let h = hash_password_with("p", test_params()).unwrap();
        let text = format!(
            "[[user]]\naddress='a@x.test'\npassword='{h}'\naliases=['c@x.test']\n\
             [[user]]\naddress='b@x.test'\npassword='{h}'\naliases=['c@x.test']\n"
        );
        assert!(Users::parse(&text).unwrap_err().contains("twice"));
    }

    #[test]
    fn throttle_blocks_after_failures() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!t.is_blocked(ip));
        t.record_failure(ip);
        t.record_failure(ip);
        assert!(t.is_blocked(ip));
        t.record_success(ip);
        assert!(!t.is_blocked(ip));
    }
}
