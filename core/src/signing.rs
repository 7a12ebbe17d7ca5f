//! The fleet's Nix signing key, and the signature of release manifests.
//!
//! Keys are Nix's own (`nix-store --generate-binary-cache-key`): a secret key file
//! holding `name:base64(64 bytes)` and a public key `name:base64(32 bytes)`, the
//! format of `trusted-public-keys`. `bento deploy` signs the closure's narinfos
//! through nix itself (`nix copy --to file://…?secret-key=…`), so nix on the host
//! checks them; the release manifest is signed here with the same key, so an agent
//! that pins the public key refuses a manifest swapped by whoever holds the chroots.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey as DalekSecret, VerifyingKey};

use crate::cmd::{Cmd, CmdError};

/// File name of the manifest's signature, beside `.bento-release.json`.
pub const SIGNATURE_FILE: &str = ".bento-release.sig";
/// Default file names of the key pair in the bento directory.
pub const DEFAULT_SECRET_FILE: &str = "signing-key.sec";
pub const DEFAULT_PUBLIC_FILE: &str = "signing-key.pub";
/// Signed messages are prefixed: a manifest signature can never pass for a narinfo
/// signature (whose fingerprints start with `1;`), nor the other way round.
const MANIFEST_CONTEXT: &[u8] = b"bento-release-manifest-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: not a Nix key (expected name:base64, {expected} bytes): {reason}")]
    Format {
        what: String,
        expected: usize,
        reason: String,
    },
    #[error("cannot make the signing key: {0}")]
    Generate(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the manifest is not signed (no {SIGNATURE_FILE})")]
    Unsigned,
    #[error("the manifest's signature is malformed: {0}")]
    Malformed(String),
    #[error("the manifest is signed by key {0:?}, which this host does not trust")]
    UnknownKey(String),
    #[error("the manifest's signature by key {0:?} does not match its content")]
    Invalid(String),
}

/// A key name: what Nix accepts before the colon, kept to plain characters so it
/// can appear in file names, logs and the panel.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn split_key(text: &str, what: &str, expected: usize) -> Result<(String, Vec<u8>), KeyError> {
    let bad = |reason: &str| KeyError::Format {
        what: what.to_owned(),
        expected,
        reason: reason.to_owned(),
    };
    let text = text.trim();
    let (name, b64) = text.split_once(':').ok_or_else(|| bad("no ':'"))?;
    if !valid_key_name(name) {
        return Err(bad(
            "the name has characters other than letters, digits, - _ .",
        ));
    }
    let bytes = B64.decode(b64).map_err(|e| bad(&e.to_string()))?;
    if bytes.len() != expected {
        return Err(bad(&format!("{} bytes", bytes.len())));
    }
    Ok((name.to_owned(), bytes))
}

/// A public key, as in `trusted-public-keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(text, "public key", 32)?;
        let arr: [u8; 32] = bytes.try_into().expect("length checked");
        let key = VerifyingKey::from_bytes(&arr).map_err(|e| KeyError::Format {
            what: "public key".into(),
            expected: 32,
            reason: e.to_string(),
        })?;
        Ok(PublicKey { name, key })
    }

    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            KeyError::Format {
                expected, reason, ..
            } => KeyError::Format {
                what: path.display().to_string(),
                expected,
                reason,
            },
            e => e,
        })
    }

    /// Whether `sig` (base64, 64 bytes) is this key's signature of `message`, as
    /// Nix signs narinfo fingerprints.
    pub fn verifies(&self, message: &[u8], sig: &str) -> bool {
        let Ok(bytes) = B64.decode(sig) else {
            return false;
        };
        let Ok(arr) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        self.key
            .verify_strict(message, &Signature::from_bytes(&arr))
            .is_ok()
    }

    /// `name:base64`, as Nix writes it.
    pub fn to_nix(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_nix())
    }
}

/// The secret key. Its bytes never leave this struct but as signatures.
pub struct SigningKey {
    pub name: String,
    key: DalekSecret,
    /// The file it was read from, for `nix copy`'s `secret-key=`.
    pub path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {})", self.name, self.path.display())
    }
}

impl SigningKey {
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let (name, bytes) = split_key(&text, &path.display().to_string(), 64)?;
        let arr: [u8; 64] = bytes.try_into().expect("length checked");
        let key = DalekSecret::from_keypair_bytes(&arr).map_err(|e| KeyError::Format {
            what: path.display().to_string(),
            expected: 64,
            reason: format!("its two halves do not match ({e})"),
        })?;
        Ok(SigningKey {
            name,
            key,
            path: path.to_owned(),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The content of `.bento-release.sig` for the manifest bytes `manifest`.
    pub fn sign_manifest(&self, manifest: &[u8]) -> String {
        let sig = self.key.sign(&manifest_message(manifest));
        format!("{}:{}\n", self.name, B64.encode(sig.to_bytes()))
    }
}

fn manifest_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(MANIFEST_CONTEXT.len() + manifest.len());
    m.extend_from_slice(MANIFEST_CONTEXT);
    m.extend_from_slice(manifest);
    m
}

/// Checks `signature` (the content of `.bento-release.sig`, `None` when absent)
/// over the manifest bytes against the trusted keys; returns the key's name.
pub fn verify_manifest(
    trusted: &[PublicKey],
    manifest: &[u8],
    signature: Option<&str>,
) -> Result<String, SignatureError> {
    let text = signature.ok_or(SignatureError::Unsigned)?.trim();
    let (name, b64) = text
        .split_once(':')
        .ok_or_else(|| SignatureError::Malformed("no key name".into()))?;
    if !valid_key_name(name) {
        return Err(SignatureError::Malformed("bad key name".into()));
    }
    let key = trusted
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| SignatureError::UnknownKey(name.to_owned()))?;
    let bytes = B64
        .decode(b64)
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| SignatureError::Malformed("not 64 bytes".into()))?;
    key.key
        .verify_strict(&manifest_message(manifest), &Signature::from_bytes(&arr))
        .map_err(|_| SignatureError::Invalid(name.to_owned()))?;
    Ok(name.to_owned())
}

/// The public key file beside a secret key file: `x.sec` → `x.pub`, else `x.pub`
/// appended.
pub fn public_path_for(secret: &Path) -> PathBuf {
    match secret.extension() {
        Some(e) if e == "sec" => secret.with_extension("pub"),
        _ => {
            let mut s = secret.as_os_str().to_owned();
            s.push(".pub");
            PathBuf::from(s)
        }
    }
}

/// What [`ensure_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Existing,
    Created,
}

/// Reads the signing key at `secret`, making a new pair with Nix's own
/// `nix-store --generate-binary-cache-key` when there is none (`name` for a new key).
/// The secret file is mode 0600; the public file is rewritten from the secret when
/// it is missing or does not match.
pub fn ensure_key(secret: &Path, name: &str) -> Result<(SigningKey, KeyOrigin), KeyError> {
    let public = public_path_for(secret);
    let mut origin = KeyOrigin::Existing;
    if !secret.exists() {
        if !valid_key_name(name) {
            return Err(KeyError::Generate(format!("invalid key name {name:?}")));
        }
        let dir = secret.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|source| KeyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        // Generated beside the final name, then moved: a killed run leaves no half key.
        let tmp_sec = dir.join(format!(".signing-key-{}.sec", std::process::id()));
        let tmp_pub = dir.join(format!(".signing-key-{}.pub", std::process::id()));
        let _ = fs::remove_file(&tmp_sec);
        let _ = fs::remove_file(&tmp_pub);
        let r = Cmd::new("nix-store")
            .arg("--generate-binary-cache-key")
            .arg(name)
            .arg(&tmp_sec)
            .arg(&tmp_pub)
            .run();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp_sec);
            let _ = fs::remove_file(&tmp_pub);
            return Err(KeyError::Generate(match e {
                CmdError::Spawn { .. } => format!("{} (is nix installed?)", e.summary()),
                e => e.message(),
            }));
        }
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| KeyError::Io { path: p, source }
        };
        fs::set_permissions(&tmp_sec, fs::Permissions::from_mode(0o600)).map_err(io(&tmp_sec))?;
        let _ = fs::remove_file(&tmp_pub);
        fs::rename(&tmp_sec, secret).map_err(io(secret))?;
        origin = KeyOrigin::Created;
    }
    let key = SigningKey::read(secret)?;
    let want = key.public().to_nix();
    let have = fs::read_to_string(&public).ok();
    if have.as_deref().map(str::trim) != Some(want.as_str()) {
        write_public(&public, &want)?;
    }
    Ok((key, origin))
}

fn write_public(path: &Path, text: &str) -> Result<(), KeyError> {
    crate::fsutil::write_atomic(path, format!("{text}\n").as_bytes(), Some(0o644)).map_err(
        |source| KeyError::Io {
            path: path.to_owned(),
            source,
        },
    )
}

/// A default name for a new fleet key: `bento-<machine>-1`, as Nix's own
/// `cache.example.org-1` convention.
pub fn default_key_name() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| valid_key_name(s))
        .unwrap_or_else(|| "fleet".to_owned());
    format!("bento-{host}-1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SigningKey, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let sec = d.path().join("k.sec");
        // A fixed key: 32 bytes of seed, then its public half.
        let secret = DalekSecret::from_bytes(&[7u8; 32]);
        let mut bytes = secret.to_bytes().to_vec();
        bytes.extend_from_slice(secret.verifying_key().as_bytes());
        fs::write(&sec, format!("test-1:{}", B64.encode(&bytes))).unwrap();
        (SigningKey::read(&sec).unwrap(), d)
    }

    #[test]
    fn signs_and_verifies() {
        let (k, _d) = pair();
        let sig = k.sign_manifest(b"{\"a\":1}");
        let trusted = [k.public()];
        assert_eq!(
            verify_manifest(&trusted, b"{\"a\":1}", Some(&sig)).unwrap(),
            "test-1"
        );
        assert_eq!(
            verify_manifest(&trusted, b"{\"a\":2}", Some(&sig)),
            Err(SignatureError::Invalid("test-1".into()))
        );
        assert_eq!(
            verify_manifest(&trusted, b"{}", None),
            Err(SignatureError::Unsigned)
        );
        let other = PublicKey::parse(&format!(
            "other-1:{}",
            B64.encode(
                DalekSecret::from_bytes(&[9u8; 32])
                    .verifying_key()
                    .as_bytes()
            )
        ))
        .unwrap();
        assert_eq!(
            verify_manifest(std::slice::from_ref(&other), b"{\"a\":1}", Some(&sig)),
            Err(SignatureError::UnknownKey("test-1".into()))
        );
        // Same name, another key: the signature does not match.
        let impostor = PublicKey {
            name: "test-1".into(),
            key: other.key,
        };
        assert!(matches!(
            verify_manifest(&[impostor], b"{\"a\":1}", Some(&sig)),
            Err(SignatureError::Invalid(_))
        ));
        assert!(matches!(
            verify_manifest(&trusted, b"{}", Some("test-1:!!!")),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_are_named() {
        let (k, _d) = pair();
        let p = k.public().to_nix();
        assert_eq!(PublicKey::parse(&p).unwrap().to_nix(), p);
        let e = PublicKey::parse("nocolon").unwrap_err().to_string();
        assert!(e.contains("name:base64"), "{e}");
        let e = PublicKey::parse("a b:AAAA").unwrap_err().to_string();
        assert!(e.contains("name"), "{e}");
        let e = PublicKey::parse("k:AAAA").unwrap_err().to_string();
        assert!(e.contains("3 bytes"), "{e}");
    }

    #[test]
    fn public_path_is_beside_the_secret() {
        assert_eq!(
            public_path_for(Path::new("/b/signing-key.sec")),
            Path::new("/b/signing-key.pub")
        );
        assert_eq!(
            public_path_for(Path::new("/b/key")),
            Path::new("/b/key.pub")
        );
    }
}
