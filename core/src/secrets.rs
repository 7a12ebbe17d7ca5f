//! Secrets: files kept out of the Nix store, encrypted with age to each host's
//! SSH keys (and optional admin recipients), stored in the bento directory and
//! published inside the host's own release.
//!
//! ```text
//! <bento dir>/secrets/<host>/<name>.age     ciphertext (safe to commit)
//! <bento dir>/secrets/<host>/<name>.toml    metadata: path, owner, group, mode,
//!                                           restart units, set time, sha256
//! <release>/.bento-secrets/<name>.age       the same ciphertext
//! <release>/.bento-secrets/secrets.json     index: name → metadata + sha256
//! ```
//!
//! The index and the ciphertexts are release files: the manifest hashes them and
//! the revision covers them, so a changed secret is a new release. Plaintext only
//! ever exists in memory here; the agent writes it at its destination.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::HostName;

/// Folder of the bento directory holding every host's secrets.
pub const STORE_DIR: &str = "secrets";
/// Folder of a release holding the host's secrets.
pub const RELEASE_DIR: &str = ".bento-secrets";
/// The index inside [`RELEASE_DIR`].
pub const INDEX_FILE: &str = "secrets.json";
/// Largest secret accepted (a secret is a key, a password, an `.env` file).
pub const MAX_SECRET_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Invalid(String),
    #[error("secret {name}: {message}")]
    Secret { name: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A secret's name: a plain file name (`db-password`, `app.env`).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} is not a plain file name (letters, digits, . _ - @, starting with a letter or digit, at most 128)"
        ))
    }
}

/// A destination: absolute and normalized (no `.`, `..`, `//` or trailing `/`).
pub fn validate_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path {p:?} {why}"));
    if !p.starts_with('/') {
        return bad("must be absolute");
    }
    if p == "/" || p.ends_with('/') {
        return bad("must name a file");
    }
    if p.len() > 4096 || p.chars().any(|c| c.is_control()) {
        return bad("is too long or holds control characters");
    }
    if p.contains("//") {
        return bad("must be normalized (no //)");
    }
    if Path::new(p)
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || p.split('/').any(|s| s == "." || s == "..")
    {
        return bad("must be normalized (no . or ..)");
    }
    if ["/nix/store/", "/proc/", "/sys/", "/dev/"]
        .iter()
        .any(|pre| p.starts_with(pre))
    {
        return bad("is in /nix/store, /proc, /sys or /dev");
    }
    Ok(())
}

/// A systemd unit name for `--restart` (passed as one argument, never to a shell).
pub fn validate_unit(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 256
        && !u.starts_with('-')
        && u.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-' | b'\\')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{u:?} is not a systemd unit name"))
    }
}

/// A file mode, written as octal text (`"0400"`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        let v = if !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            u32::from_str_radix(digits, 8).ok()
        } else {
            None
        };
        match v {
            Some(v) if v <= 0o7777 => Ok(Mode(v)),
            _ => Err(format!(
                "mode {s:?} is not an octal file mode up to 7777 (e.g. 0400)"
            )),
        }
    }
}

impl Default for Mode {
    fn default() -> Self {
        Mode(0o400)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Mode::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn root() -> String {
    "root".into()
}

/// Where and how a secret is installed: what the release's index carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMeta {
    /// Destination; default `<secrets_dir>/<name>` on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    #[serde(default)]
    pub mode: Mode,
    /// Units restarted after the secret changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<String>,
    /// sha256 of the ciphertext.
    pub sha256: String,
}

impl SecretMeta {
    pub fn validate(&self, name: &str) -> Result<(), SecretError> {
        let err = |message: String| SecretError::Secret {
            name: name.to_owned(),
            message,
        };
        validate_name(name).map_err(SecretError::Invalid)?;
        if let Some(p) = &self.path {
            validate_path(p).map_err(err)?;
        }
        for (what, v) in [("owner", &self.owner), ("group", &self.group)] {
            if !crate::config::valid_user_name(v) {
                return Err(err(format!("{what} {v:?} is not a valid name")));
            }
        }
        if self.mode.0 > 0o7777 {
            return Err(err(format!("mode {} is out of range", self.mode)));
        }
        for u in &self.restart {
            validate_unit(u).map_err(err)?;
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("sha256 is not a hex digest".into()));
        }
        Ok(())
    }
}

/// `secrets/<host>/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredSecret {
    #[serde(flatten)]
    pub meta: SecretMeta,
    #[serde(with = "time::serde::rfc3339")]
    pub set: OffsetDateTime,
    /// The recipients it is encrypted to (public keys only).
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// `.bento-secrets/secrets.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub secrets: BTreeMap<String, SecretMeta>,
}

impl Index {
    pub const FORMAT: u32 = 1;

    /// Reads and validates the index of a release's secrets folder.
    pub fn read(dir: &Path) -> Result<Index, SecretError> {
        let p = dir.join(INDEX_FILE);
        let text = fs::read(&p).map_err(io_err(&p))?;
        let idx: Index = serde_json::from_slice(&text)
            .map_err(|e| SecretError::Invalid(format!("{}: {e}", p.display())))?;
        if idx.format != Self::FORMAT {
            return Err(SecretError::Invalid(format!(
                "{}: unknown format {}",
                p.display(),
                idx.format
            )));
        }
        for (n, m) in &idx.secrets {
            m.validate(n)?;
        }
        Ok(idx)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The keys of `authorized_keys` text, as `type base64` lines: options before
/// the key type (`restrict,command="…" ssh-ed25519 …`) and comments are left out.
pub fn authorized_key_lines(text: &str) -> Vec<String> {
    let is_type =
        |t: &str| t.starts_with("ssh-") || t.starts_with("ecdsa-sha2-") || t.starts_with("sk-");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            // Options may hold quoted spaces; the key type is the first token
            // that names one, followed by its base64.
            let tokens: Vec<&str> = l.split_whitespace().collect();
            let i = tokens.iter().position(|t| is_type(t))?;
            let b64 = tokens.get(i + 1)?;
            Some(format!("{} {b64}", tokens[i]))
        })
        .collect()
}

/// The file sshd reads a user's keys from, `pattern` as sshd's
/// `AuthorizedKeysFile` (`%u`, `%h`, `%%`; a relative path is under the home).
pub fn authorized_keys_path(pattern: &str, user: &str) -> Result<PathBuf, String> {
    let home = || -> Result<PathBuf, String> {
        nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.dir)
            .ok_or_else(|| format!("no user {user:?} on this machine"))
    };
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user),
            Some('h') => out.push_str(&home()?.to_string_lossy()),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "authorized_keys_file {pattern:?}: unknown token %{}",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    let p = PathBuf::from(out);
    Ok(if p.is_absolute() { p } else { home()?.join(p) })
}

/// One recipient line: `age1…`, or an OpenSSH public key (`ssh-ed25519 …`, `ssh-rsa …`).
pub fn parse_recipient(line: &str) -> Result<Box<dyn age::Recipient>, String> {
    let line = line.trim();
    if line.starts_with("age1") {
        line.parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient>)
            .map_err(|e| format!("{line:?} is not an age recipient: {e}"))
    } else {
        line.parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient>)
            .map_err(|e| {
                let kind = line.split_whitespace().next().unwrap_or("");
                format!("key type {kind:?} cannot be used by age (only ssh-ed25519 and ssh-rsa keys and age1 recipients): {e:?}")
            })
    }
}

/// A ciphertext, the recipients used and the ones skipped (each with why).
pub type Encrypted = (Vec<u8>, Vec<String>, Vec<String>);

/// Encrypts `plaintext` to every usable recipient. Returns the ciphertext, the
/// recipients used and the ones skipped (each with why). At least one must work.
pub fn encrypt(plaintext: &[u8], recipients: &[String]) -> Result<Encrypted, String> {
    let mut used = Vec::new();
    let mut boxes = Vec::new();
    let mut skipped = Vec::new();
    for r in recipients {
        match parse_recipient(r) {
            Ok(b) => {
                boxes.push(b);
                used.push(r.trim().to_owned());
            }
            Err(e) => skipped.push(e),
        }
    }
    if boxes.is_empty() {
        return Err(match skipped.first() {
            Some(e) => format!("no usable recipient: {e}"),
            None => "no recipient to encrypt to".into(),
        });
    }
    let enc = age::Encryptor::with_recipients(boxes.iter().map(|b| b.as_ref() as _))
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut out = Vec::new();
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    w.write_all(plaintext)
        .and_then(|_| w.finish().map(|_| ()))
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    Ok((out, used, skipped))
}

/// Identities read from a file: an OpenSSH private key (unencrypted), or an age
/// identity file (`AGE-SECRET-KEY-1…` lines).
pub struct Identities {
    ids: Vec<Box<dyn age::Identity>>,
    pub source: PathBuf,
}

impl Identities {
    pub fn load(path: &Path) -> Result<Identities, String> {
        let data = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&data);
        let shown = path.display();
        let ids: Vec<Box<dyn age::Identity>> = if text.contains("-----BEGIN") {
            match age::ssh::Identity::from_buffer(&data[..], Some(shown.to_string())) {
                    Ok(age::ssh::Identity::Unencrypted(k)) => {
                        vec![Box::new(age::ssh::Identity::Unencrypted(k))]
                    }
                    Ok(age::ssh::Identity::Encrypted(_)) => {
                        return Err(format!("{shown} is protected by a passphrase: use a key without one (as ssh host keys are)"))
                    }
                    Ok(age::ssh::Identity::Unsupported(_)) => {
                        return Err(format!("{shown}: this SSH key type cannot be used by age (use ssh-ed25519 or ssh-rsa)"))
                    }
                    Err(e) => return Err(format!("{shown} is not a usable SSH private key: {e}")),
                }
        } else {
            age::IdentityFile::from_buffer(&data[..])
                .map_err(|e| format!("{shown} is not an age identity file: {e}"))?
                .into_identities()
                .map_err(|e| format!("{shown}: {e}"))?
        };
        if ids.is_empty() {
            return Err(format!("{shown} holds no identity"));
        }
        Ok(Identities {
            ids,
            source: path.to_owned(),
        })
    }

    /// Decrypts one ciphertext (at most [`MAX_SECRET_BYTES`] of plaintext).
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
        let d = age::Decryptor::new_buffered(ciphertext)
            .map_err(|e| format!("not a valid age file: {e}"))?;
        let mut r = d
            .decrypt(self.ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => format!(
                    "it is not encrypted to the key {} (run `bento secret rekey` after a key change)",
                    self.source.display()
                ),
                e => format!("cannot decrypt: {e}"),
            })?;
        let mut out = Vec::new();
        (&mut r)
            .take(MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("damaged ciphertext: {e}"))?;
        if out.len() > MAX_SECRET_BYTES {
            return Err(format!("larger than {MAX_SECRET_BYTES} bytes"));
        }
        Ok(out)
    }
}

/// The secrets of the bento directory, by host.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What [`Store::set`] was told about a secret.
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    pub path: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
    pub restart: Vec<String>,
}

impl Store {
    pub fn new(bento_root: &Path) -> Store {
        Store {
            root: bento_root.join(STORE_DIR),
        }
    }

    pub fn host_dir(&self, h: &HostName) -> PathBuf {
        self.root.join(h.as_str())
    }

    /// Every secret of a host, by name.
    pub fn list(&self, h: &HostName) -> Result<BTreeMap<String, StoredSecret>, SecretError> {
        let dir = self.host_dir(h);
        let mut out = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for ent in entries {
            let ent = ent.map_err(io_err(&dir))?;
            let fname = ent.file_name();
            let Some(name) = fname.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            if validate_name(name).is_err() {
                continue;
            }
            let p = ent.path();
            let text = fs::read_to_string(&p).map_err(io_err(&p))?;
            let s: StoredSecret = toml::from_str(&text)
                .map_err(|e| SecretError::Invalid(format!("{}: {e}", p.display())))?;
            s.meta.validate(name)?;
            out.insert(name.to_owned(), s);
        }
        Ok(out)
    }

    /// Hosts that have a secrets folder.
    pub fn hosts(&self) -> Vec<HostName> {
        let mut v: Vec<HostName> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| HostName::new(n).ok()))
            .collect();
        v.sort();
        v
    }

    fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), SecretError> {
        crate::fsutil::write_atomic(path, data, Some(mode)).map_err(io_err(path))
    }

    fn save(
        &self,
        h: &HostName,
        name: &str,
        ciphertext: &[u8],
        stored: &StoredSecret,
    ) -> Result<(), SecretError> {
        let dir = self.host_dir(h);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Self::write_atomic(&dir.join(format!("{name}.age")), ciphertext, 0o644)?;
        let text = toml::to_string_pretty(stored).expect("metadata serializes");
        Self::write_atomic(&dir.join(format!("{name}.toml")), text.as_bytes(), 0o644)
    }

    /// Encrypts `value` to `recipients` and stores it, keeping the metadata not
    /// given in `opts` from the secret it replaces. Returns the stored metadata and
    /// the recipients skipped (unusable key types).
    pub fn set(
        &self,
        h: &HostName,
        name: &str,
        value: &[u8],
        opts: &SetOptions,
        recipients: &[String],
    ) -> Result<(StoredSecret, Vec<String>), SecretError> {
        validate_name(name).map_err(SecretError::Invalid)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::Secret {
                name: name.into(),
                message: format!("the value is larger than {MAX_SECRET_BYTES} bytes"),
            });
        }
        let old = self.list(h)?.remove(name);
        let old_meta = old.as_ref().map(|o| &o.meta);
        let (ciphertext, used, skipped) =
            encrypt(value, recipients).map_err(|message| SecretError::Secret {
                name: name.into(),
                message,
            })?;
        let meta = SecretMeta {
            path: opts
                .path
                .clone()
                .or_else(|| old_meta.and_then(|m| m.path.clone())),
            owner: opts
                .owner
                .clone()
                .or_else(|| old_meta.map(|m| m.owner.clone()))
                .unwrap_or_else(root),
            group: opts
                .group
                .clone()
                .or_else(|| old_meta.map(|m| m.group.clone()))
                .unwrap_or_else(root),
            mode: opts
                .mode
                .or_else(|| old_meta.map(|m| m.mode))
                .unwrap_or_default(),
            restart: if opts.restart.is_empty() {
                old_meta.map(|m| m.restart.clone()).unwrap_or_default()
            } else {
                opts.restart.clone()
            },
            sha256: sha256_hex(&ciphertext),
        };
        meta.validate(name)?;
        let stored = StoredSecret {
            meta,
            set: OffsetDateTime::now_utc(),
            recipients: used,
        };
        self.save(h, name, &ciphertext, &stored)?;
        Ok((stored, skipped))
    }

    /// Removes a secret; false when there was none.
    pub fn remove(&self, h: &HostName, name: &str) -> Result<bool, SecretError> {
        validate_name(name).map_err(SecretError::Invalid)?;
        let dir = self.host_dir(h);
        let mut found = false;
        for ext in ["toml", "age"] {
            let p = dir.join(format!("{name}.{ext}"));
            match fs::remove_file(&p) {
                Ok(()) => found = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        Ok(found)
    }

    /// Decrypts every secret of the host with `ids` and encrypts it again to
    /// `recipients` (after a host key changed). The set time is kept. Returns the
    /// names rekeyed; the plaintext stays in memory.
    pub fn rekey(
        &self,
        h: &HostName,
        ids: &Identities,
        recipients: &[String],
    ) -> Result<Vec<String>, SecretError> {
        let mut done = Vec::new();
        for (name, old) in self.list(h)? {
            let p = self.host_dir(h).join(format!("{name}.age"));
            let ct = fs::read(&p).map_err(io_err(&p))?;
            let value = ids.decrypt(&ct).map_err(|message| SecretError::Secret {
                name: name.clone(),
                message,
            })?;
            let (ciphertext, used, _) =
                encrypt(&value, recipients).map_err(|message| SecretError::Secret {
                    name: name.clone(),
                    message,
                })?;
            let mut stored = old.clone();
            stored.meta.sha256 = sha256_hex(&ciphertext);
            stored.recipients = used;
            self.save(h, &name, &ciphertext, &stored)?;
            done.push(name);
        }
        Ok(done)
    }

    /// Puts the host's secrets into the staged release `staged` as
    /// [`RELEASE_DIR`] (files `file_mode`). Refuses a `.bento-secrets` that came
    /// from the host's own directory. Nothing is added for a host without secrets.
    pub fn stage(&self, h: &HostName, staged: &Path, file_mode: u32) -> Result<(), SecretError> {
        let out = staged.join(RELEASE_DIR);
        if fs::symlink_metadata(&out).is_ok() {
            return Err(SecretError::Invalid(format!(
                "the host's directory holds {RELEASE_DIR}, a name bento reserves for its secrets: rename it"
            )));
        }
        let secrets = self.list(h)?;
        if secrets.is_empty() {
            return Ok(());
        }
        fs::create_dir(&out).map_err(io_err(&out))?;
        let mut index = Index {
            format: Index::FORMAT,
            secrets: BTreeMap::new(),
        };
        for (name, s) in secrets {
            let src = self.host_dir(h).join(format!("{name}.age"));
            let ct = fs::read(&src).map_err(io_err(&src))?;
            if sha256_hex(&ct) != s.meta.sha256 {
                return Err(SecretError::Secret {
                    name,
                    message: format!(
                        "{} does not match the sha256 of its metadata (edited by hand?): set it again",
                        src.display()
                    ),
                });
            }
            let dst = out.join(format!("{name}.age"));
            Self::write_atomic(&dst, &ct, file_mode)?;
            index.secrets.insert(name, s.meta);
        }
        let text = serde_json::to_vec_pretty(&index).expect("index serializes");
        Self::write_atomic(&out.join(INDEX_FILE), &text, file_mode)?;
        fs::set_permissions(
            &out,
            fs::Permissions::from_mode(if file_mode & 0o044 == 0 { 0o700 } else { 0o755 }),
        )
        .map_err(io_err(&out))
    }
}

/// Whether a published release file of mode `mode` is as publication writes it:
/// secrets may be private to the publisher (the embedded SFTP server reads them as
/// the publisher).
pub fn published_mode_ok(rel: &str, mode: u32) -> bool {
    rel.starts_with(RELEASE_DIR) && rel[RELEASE_DIR.len()..].starts_with('/') && mode == 0o600
}

/// The tree to publish for host `h` of the staged directory `staged`: `staged`
/// itself (`None`) when the host has no secrets, else a copy of it beside it with
/// the host's [`RELEASE_DIR`] (a flake directory may hold several hosts, and each
/// gets only its own secrets). `private`: files readable by the publisher only
/// (the embedded SFTP server), else by all (sshd reads as the host's user).
pub fn release_tree(
    bento_root: &Path,
    h: &HostName,
    staged: &Path,
    private: bool,
) -> Result<Option<PathBuf>, SecretError> {
    if fs::symlink_metadata(staged.join(RELEASE_DIR)).is_ok() {
        return Err(SecretError::Invalid(format!(
            "the host's directory holds {RELEASE_DIR}, a name bento reserves for its secrets: rename it"
        )));
    }
    let store = Store::new(bento_root);
    if store.list(h)?.is_empty() {
        return Ok(None);
    }
    let parent = staged.parent().unwrap_or(Path::new("/"));
    let out = parent.join(format!(".secrets-{h}"));
    let _ = fs::remove_dir_all(&out);
    crate::chroot::copy_tree(staged, &out).map_err(io_err(&out))?;
    store.stage(h, &out, if private { 0o600 } else { 0o644 })?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorized_keys_lines_lose_their_options_and_comments() {
        let text = "# admin\n\nrestrict,command=\"/bin/x a b\" ssh-ed25519 AAAAC3 host@x\nssh-rsa AAAAB3\nnonsense here\n";
        assert_eq!(
            authorized_key_lines(text),
            ["ssh-ed25519 AAAAC3", "ssh-rsa AAAAB3"]
        );
        assert_eq!(
            authorized_keys_path("/etc/ssh/keys/%u", "web1").unwrap(),
            PathBuf::from("/etc/ssh/keys/web1")
        );
        assert_eq!(
            authorized_keys_path("/k/%%u", "web1").unwrap(),
            PathBuf::from("/k/%u")
        );
        assert!(authorized_keys_path("/k/%x", "web1").is_err());
        let root = authorized_keys_path(".ssh/authorized_keys", "root").unwrap();
        assert!(root.ends_with(".ssh/authorized_keys") && root.is_absolute());
    }

    #[test]
    fn names_paths_units_and_modes() {
        for ok in ["db-password", "app.env", "a", "x_1@y"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "-x",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        for ok in ["/run/keys/db", "/etc/app/.env", "/var/lib/x y"] {
            validate_path(ok).unwrap();
        }
        for bad in [
            "rel/x",
            "/",
            "/etc/",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/a/..",
            "/nix/store/x",
            "/a\nb",
            "/proc/self/mem",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        validate_unit("nginx.service").unwrap();
        validate_unit("getty@tty1.service").unwrap();
        for bad in ["", "-x", "a b", "a;b", "$(x)"] {
            assert!(validate_unit(bad).is_err(), "{bad}");
        }
        assert_eq!(Mode::parse("0400").unwrap().0, 0o400);
        assert_eq!(Mode::parse("640").unwrap().0, 0o640);
        assert_eq!(Mode::parse("0o7777").unwrap().0, 0o7777);
        for bad in ["", "8", "10000", "0x10", "-1", "rw"] {
            assert!(Mode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Mode(0o40).to_string(), "0040");
    }

    #[test]
    fn metadata_is_validated_owner_group_and_path() {
        let mut m = SecretMeta {
            path: Some("/run/x".into()),
            owner: "nginx".into(),
            group: "root".into(),
            mode: Mode(0o440),
            restart: vec!["nginx.service".into()],
            sha256: "0".repeat(64),
        };
        m.validate("x").unwrap();
        m.owner = "bad name".into();
        assert!(m.validate("x").unwrap_err().to_string().contains("owner"));
        m.owner = "root".into();
        m.path = Some("/a/../etc/shadow".into());
        assert!(m.validate("x").is_err());
        m.path = None;
        m.restart = vec!["a;reboot".into()];
        assert!(m.validate("x").is_err());
        let bad: Result<SecretMeta, _> = serde_json::from_str(&format!(
            r#"{{"mode":"17777","sha256":"{}"}}"#,
            "0".repeat(64)
        ));
        assert!(bad.is_err());
    }

    #[test]
    fn age_roundtrip_with_an_age_identity_and_wrong_key() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let t = tempfile::tempdir().unwrap();
        let idf = t.path().join("id");
        use age::secrecy::ExposeSecret;
        fs::write(&idf, id.to_string().expose_secret()).unwrap();
        let otherf = t.path().join("other");
        fs::write(&otherf, other.to_string().expose_secret()).unwrap();
        let (ct, used, skipped) = encrypt(
            b"hunter2",
            &[
                id.to_public().to_string(),
                "ecdsa-sha2-nistp256 AAAA x".into(),
            ],
        )
        .unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        let ids = Identities::load(&idf).unwrap();
        assert_eq!(ids.decrypt(&ct).unwrap(), b"hunter2");
        let e = Identities::load(&otherf).unwrap().decrypt(&ct).unwrap_err();
        assert!(e.contains("not encrypted to"), "{e}");
        assert!(ids.decrypt(b"garbage").is_err());
        assert!(encrypt(b"x", &[]).is_err());
    }

    #[test]
    fn rekey_with_an_admin_identity_moves_to_the_new_host_key() {
        use age::secrecy::ExposeSecret;
        let (old_host, new_host, admin) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        let h = HostName::new("db").unwrap();
        let admin_r = admin.to_public().to_string();
        s.set(
            &h,
            "pw",
            b"v1",
            &SetOptions::default(),
            &[old_host.to_public().to_string(), admin_r.clone()],
        )
        .unwrap();
        let before = s.list(&h).unwrap()["pw"].clone();
        let idf = t.path().join("admin.txt");
        fs::write(&idf, admin.to_string().expose_secret()).unwrap();
        let ids = Identities::load(&idf).unwrap();
        let done = s
            .rekey(&h, &ids, &[new_host.to_public().to_string(), admin_r])
            .unwrap();
        assert_eq!(done, ["pw"]);
        let after = s.list(&h).unwrap()["pw"].clone();
        assert_eq!(after.set, before.set);
        assert_ne!(after.meta.sha256, before.meta.sha256);
        let ct = fs::read(s.host_dir(&h).join("pw.age")).unwrap();
        let nf = t.path().join("new.txt");
        fs::write(&nf, new_host.to_string().expose_secret()).unwrap();
        assert_eq!(Identities::load(&nf).unwrap().decrypt(&ct).unwrap(), b"v1");
        let of = t.path().join("old.txt");
        fs::write(&of, old_host.to_string().expose_secret()).unwrap();
        assert!(Identities::load(&of).unwrap().decrypt(&ct).is_err());
    }

    #[test]
    fn store_set_list_stage_remove() {
        let id = age::x25519::Identity::generate();
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        let h = HostName::new("web").unwrap();
        let r = vec![id.to_public().to_string()];
        let opts = SetOptions {
            mode: Some(Mode(0o440)),
            restart: vec!["app.service".into()],
            ..Default::default()
        };
        s.set(&h, "db", b"pw1", &opts, &r).unwrap();
        // A later set keeps metadata it is not told about.
        s.set(&h, "db", b"pw2", &SetOptions::default(), &r).unwrap();
        let l = s.list(&h).unwrap();
        assert_eq!(l["db"].meta.mode, Mode(0o440));
        assert_eq!(l["db"].meta.restart, ["app.service"]);
        let staged = t.path().join("stage");
        fs::create_dir(&staged).unwrap();
        s.stage(&h, &staged, 0o600).unwrap();
        let idx = Index::read(&staged.join(RELEASE_DIR)).unwrap();
        assert_eq!(idx.secrets["db"].sha256, l["db"].meta.sha256);
        // The host's own directory cannot bring a .bento-secrets.
        let e = s.stage(&h, &staged, 0o600).unwrap_err();
        assert!(e.to_string().contains("reserves"), "{e}");
        assert!(s.remove(&h, "db").unwrap());
        assert!(!s.remove(&h, "db").unwrap());
        assert!(s.list(&h).unwrap().is_empty());
        assert!(published_mode_ok(".bento-secrets/db.age", 0o600));
        assert!(!published_mode_ok("configuration.nix", 0o600));
    }
}
