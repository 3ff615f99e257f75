//! Users, passwords and login throttling.
//!
//! The users file is the only source of accounts. It holds argon2id PHC hashes,
//! never plain passwords, and is rewritten atomically (temp file, fsync,
//! rename) so a crash mid-edit never leaves a half file. The running server
//! holds an immutable snapshot ([`Users`]) behind [`Directory`] and swaps it
//! when the file changes; a file that fails to parse keeps the old snapshot
//! and logs why.
//!
//! Password checks are CPU- and memory-heavy by design, which makes them
//! the easiest thing to abuse: they run on the blocking pool, a few at a
//! time and at most `limits.max_auth_checks_per_ip` per client address, in
//! argon2 working memory taken from a fixed pool (allocating it per check
//! left every blocking thread's allocator holding its own copy). A login
//! for an unknown user is checked against a dummy hash of the same cost, so
//! timing tells nothing. Failures are counted per IP and per account, and
//! a success resets neither; each failure is logged in one line that
//! fail2ban can match (see docs/admin.md).

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHasher, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

#[cfg(test)]
fn verify_hash(password: &str, phc: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Largest argon2 memory cost accepted from a users file (4 GiB).
const MAX_MEMORY_BLOCKS: usize = 4 << 20;

/// Checks `password` against a PHC argon2 hash using `memory` as the
/// working memory (grown once if the hash needs more).
fn verify_with_memory(password: &str, phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version {
        Some(v) => match Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
        None => Version::default(),
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_MEMORY_BLOCKS {
        return false;
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut out,
            &mut memory[..blocks],
        )
        .is_err()
    {
        return false;
    }
    // `Output` compares in constant time.
    argon2::password_hash::phc::Output::new(&out).is_ok_and(|o| o == *expected)
}

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The canonical address of the account.
    Ok(String),
    /// Wrong user or password (told apart only in the log).
    Invalid,
    /// Too many failures lately from this address or for this account.
    Throttled,
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
    /// Working memory for the checks, one buffer per permit of `hashing`,
    /// allocated once and reused.
    memory: Mutex<Vec<Vec<Block>>>,
    /// A hash with the cost of the users' own, checked for unknown users.
    dummy: RwLock<Arc<String>>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A hash of a random password with the same parameters as the first
/// user's (the argon2 defaults when there is none).
fn dummy_hash(users: &Users) -> String {
    let params = users
        .by_address
        .values()
        .next()
        .and_then(|u| PasswordHash::new(&u.password_hash).ok())
        .and_then(|h| Params::try_from(&h).ok())
        .unwrap_or_default();
    let secret = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    hash_password_with(&secret, params)
        .or_else(|_| hash_password_with(&secret, Params::default()))
        .unwrap_or_default()
}

impl Directory {
    pub fn open(path: &Path) -> Result<Arc<Directory>, AuthError> {
        let stamp = file_stamp(path);
        let users = Users::load(path)?;
        let dummy = dummy_hash(&users);
        let checks = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Arc::new(Directory {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(users)),
            stamp: Mutex::new(stamp),
            hashing: tokio::sync::Semaphore::new(checks),
            memory: Mutex::new((0..checks).map(|_| Vec::new()).collect()),
            dummy: RwLock::new(Arc::new(dummy)),
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
        let dummy = dummy_hash(&users);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        *self.dummy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dummy);
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
    /// An unknown login costs the same as a known one.
    pub async fn verify(self: &Arc<Self>, login: &str, password: &str) -> Option<String> {
        let users = self.snapshot();
        let (phc, known) = match users.get(login) {
            Some(u) => (u.password_hash.clone(), true),
            None => (
                self.dummy
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_str()
                    .to_string(),
                false,
            ),
        };
        let password = password.to_string();
        let _permit = self.hashing.acquire().await.ok()?;
        let dir = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let mut memory = dir
                .memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_default();
            let ok = verify_with_memory(&password, &phc, &mut memory);
            dir.memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(memory);
            ok
        })
        .await
        .unwrap_or(false);
        (ok && known).then(|| login.to_ascii_lowercase())
    }

    /// One login attempt with every rule around it: throttled addresses and
    /// accounts are refused without a check, checks from one address take
    /// turns, failures are counted and logged (`service` names the
    /// protocol in the log line).
    pub async fn login(
        self: &Arc<Self>,
        throttle: &Throttle,
        service: &str,
        ip: IpAddr,
        login: &str,
        password: &str,
    ) -> Login {
        let account = login.to_ascii_lowercase();
        if throttle.is_blocked(ip, &account) {
            log_failure(service, ip, login, "throttled");
            return Login::Throttled;
        }
        let turn = throttle.turn(ip).await;
        // Others from this address may have failed while this one waited.
        if throttle.is_blocked(ip, &account) {
            log_failure(service, ip, login, "throttled");
            return Login::Throttled;
        }
        let result = self.verify(login, password).await;
        // The turn is held until the failure is counted: the next check
        // from this address must see it.
        let outcome = match result {
            Some(address) => Login::Ok(address),
            None => {
                throttle.record_failure(ip, &account);
                let why = if self.snapshot().get(login).is_some() {
                    "bad-password"
                } else {
                    "unknown-user"
                };
                log_failure(service, ip, login, why);
                Login::Invalid
            }
        };
        drop(turn);
        outcome
    }
}

/// The one log line of a failed login, stable for fail2ban:
/// `authentication failed: service=imap rip=192.0.2.7 user="x" reason=bad-password`.
fn log_failure(service: &str, ip: IpAddr, login: &str, reason: &str) {
    // Debug formatting quotes the name and escapes anything a client
    // could use to forge log lines.
    let user: String = login.chars().take(256).collect();
    tracing::warn!(
        target: "tiermail::auth",
        "authentication failed: service={service} rip={ip} user={user:?} reason={reason}"
    );
}

/// Failures in a sliding window, by key.
struct Window<K> {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: std::hash::Hash + Eq + Clone> Window<K> {
    fn new(max: u32, window: Duration) -> Window<K> {
        Window {
            max,
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn is_full(&self, key: &K) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((n, since)) if since.elapsed() < self.window => *n >= self.max,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn add(&self, key: &K) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
        }
        let e = map.entry(key.clone()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        e.0 = e.0.saturating_add(1);
    }
}

/// Failed logins per client IP and per account, and the turns that
/// password checks from one IP take.
pub struct Throttle {
    by_ip: Window<IpAddr>,
    by_account: Window<String>,
    checks_per_ip: usize,
    turns: Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

/// A password check's turn for its IP; the next one waits until it ends.
pub struct Turn {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Throttle {
    pub fn new(max_failures: u32, window: Duration, checks_per_ip: usize) -> Throttle {
        Throttle {
            by_ip: Window::new(max_failures, window),
            by_account: Window::new(max_failures, window),
            checks_per_ip: checks_per_ip.max(1),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// True while `ip` or `account` has used up its failures in the
    /// current window.
    pub fn is_blocked(&self, ip: IpAddr, account: &str) -> bool {
        self.by_ip.is_full(&ip) || self.by_account.is_full(&account.to_string())
    }

    pub fn record_failure(&self, ip: IpAddr, account: &str) {
        self.by_ip.add(&ip);
        self.by_account.add(&account.to_string());
    }

    /// Waits for a password-check turn of `ip`.
    pub async fn turn(&self, ip: IpAddr) -> Turn {
        let sem = {
            let mut t = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            // Forget addresses nobody is checking for.
            if t.len() > 10_000 {
                t.retain(|_, s| Arc::strong_count(s) > 1);
            }
            t.entry(ip)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.checks_per_ip)))
                .clone()
        };
        Turn {
            _permit: sem.acquire_owned().await.ok(),
        }
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
    fn throttle_counts_ips_and_accounts_apart() {
        let t = Throttle::new(2, Duration::from_secs(60), 1);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(!t.is_blocked(ip, "a@x.test"));
        t.record_failure(ip, "a@x.test");
        t.record_failure(ip, "b@x.test");
        assert!(t.is_blocked(ip, "c@x.test"), "the address is used up");
        assert!(!t.is_blocked(other, "c@x.test"));
        t.record_failure(other, "a@x.test");
        assert!(t.is_blocked(other, "a@x.test"), "the account is used up");
        assert!(!t.is_blocked(other, "d@x.test"));
    }

    #[test]
    fn pooled_verification_matches_the_crate() {
        let h = hash_password_with("pw", test_params()).unwrap();
        let mut memory = Vec::new();
        assert!(verify_with_memory("pw", &h, &mut memory));
        assert!(!verify_with_memory("px", &h, &mut memory));
        assert!(
            verify_with_memory("pw", &h, &mut memory),
            "memory is reused"
        );
        let d = hash_password_with("pw", Params::default()).unwrap();
        assert!(verify_with_memory("pw", &d, &mut memory));
        assert_eq!(memory.len(), Params::default().block_count());
        assert!(!verify_with_memory(
            "pw",
            "$argon2id$v=19$garbage",
            &mut memory
        ));
        assert!(verify_hash("pw", &h));
    }

    /// Finding 13: an unknown login is checked against a hash of the same
    /// algorithm and cost as the users' own, so it takes as long as a
    /// wrong password for a real account (the same argon2 work, nothing
    /// skipped).
    #[tokio::test]
    async fn unknown_logins_cost_what_known_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let cost = Params::new(4096, 3, 1, None).unwrap();
        let h = hash_password_with("right", cost.clone()).unwrap();
        std::fs::write(
            &path,
            format!("[[user]]\naddress = 'a@x.test'\npassword = '{h}'\n"),
        )
        .unwrap();
        let d = Directory::open(&path).unwrap();
        let dummy = d.dummy.read().unwrap().clone();
        let parsed = PasswordHash::new(&dummy).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        let p = Params::try_from(&parsed).unwrap();
        assert_eq!(
            (p.m_cost(), p.t_cost(), p.p_cost()),
            (cost.m_cost(), cost.t_cost(), cost.p_cost())
        );
        assert_ne!(dummy.as_str(), h, "a hash of its own");
        assert_eq!(
            d.verify("a@x.test", "right").await.as_deref(),
            Some("a@x.test")
        );
        assert_eq!(d.verify("a@x.test", "wrong").await, None);
        assert_eq!(d.verify("nobody@x.test", "right").await, None);
    }
}
