//! Host names, validated once so they can safely become paths, user names and
//! nix attribute names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// A host name as NixOS accepts it for `networking.hostName`: 1 to 63 characters,
/// letters, digits, `-` and `_`, starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HostName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host name {name:?}: {reason} (a host name is 1 to 63 letters, digits, '-' or '_', starting and ending with a letter or digit, as NixOS networking.hostName)")]
pub struct HostNameError {
    pub name: String,
    pub reason: &'static str,
}

impl HostName {
    pub fn new(name: &str) -> Result<Self, HostNameError> {
        let err = |reason| {
            Err(HostNameError {
                name: name.chars().take(80).collect(),
                reason,
            })
        };
        if name.is_empty() {
            return err("it is empty");
        }
        if name.len() > 63 {
            return err("it is longer than 63 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return err("it contains a character other than a letter, digit, '-' or '_'");
        }
        let first = name.as_bytes()[0];
        let last = name.as_bytes()[name.len() - 1];
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return err("it must start and end with a letter or digit");
        }
        Ok(HostName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostName {
    type Err = HostNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostName::new(s)
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for HostName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nixos_host_names() {
        for ok in ["a", "web-1", "db_2", "X9", &"a".repeat(63)] {
            assert!(HostName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_could_escape_or_confuse() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "-x",
            "x-",
            "_x",
            "a b",
            "a;rm",
            "é",
            "a\nb",
            "a.b",
            &"a".repeat(64),
        ] {
            let e = HostName::new(bad).unwrap_err();
            assert!(e.to_string().contains("invalid host name"), "{bad}");
        }
    }
}
