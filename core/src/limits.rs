//! Bounds on a release that both sides keep. The agent refuses a release past
//! them whatever the server lists or sends; `bento deploy` refuses to publish one,
//! so a host is never handed a release it would refuse on every poll.

/// Largest release an agent downloads, in bytes actually received, manifest and
/// signature included.
pub const MAX_RELEASE_BYTES: u64 = 2 << 30;
/// Files and directories in one release, the manifest and its signature included.
/// Every entry costs memory while listing and verifying: this keeps the agent's
/// RSS small for any release.
pub const MAX_RELEASE_ENTRIES: usize = 20_000;
/// Directory levels below a release's root: a server nesting directories forever
/// is refused at once, before local paths get too long.
pub const MAX_RELEASE_DEPTH: usize = 32;
/// A relative path inside a release, in bytes (Linux's `PATH_MAX` is 4096, with
/// the agent's state directory in front).
pub const MAX_RELEASE_PATH: usize = 1024;
/// The release's manifest is parsed in memory by the agent.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// Entries bento adds to every release beside the host's files: the manifest
/// and its signature.
pub const ADDED_ENTRIES: usize = 2;
/// Bytes kept for what bento adds (the manifest, at most [`MAX_MANIFEST_BYTES`],
/// and its signature).
const ADDED_BYTES: u64 = MAX_MANIFEST_BYTES + (64 << 10);

/// Most files and directories of a host's own tree.
pub const MAX_TREE_ENTRIES: usize = MAX_RELEASE_ENTRIES - ADDED_ENTRIES;
/// Most bytes of a host's own files, all together.
pub const MAX_TREE_BYTES: u64 = MAX_RELEASE_BYTES - ADDED_BYTES;

/// A host tree an agent would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "the host's files are more than {MAX_TREE_ENTRIES} files and directories; agents refuse \
         a release of more than {MAX_RELEASE_ENTRIES} entries (MAX_RELEASE_ENTRIES, manifest and \
         signature included): move bulky data out of the host directory"
    )]
    Entries,
    #[error(
        "{path} is nested more than {MAX_RELEASE_DEPTH} directories deep; agents refuse deeper \
         releases (MAX_RELEASE_DEPTH)"
    )]
    Depth { path: String },
    #[error(
        "{path} is a path of more than {MAX_RELEASE_PATH} bytes inside the release; agents refuse \
         longer ones (MAX_RELEASE_PATH)"
    )]
    Path { path: String },
    #[error(
        "the host's files hold more than {MAX_TREE_BYTES} bytes; agents refuse a release of more \
         than {MAX_RELEASE_BYTES} bytes (MAX_RELEASE_BYTES, manifest included)"
    )]
    Bytes,
    #[error(
        "the release's manifest would be {len} bytes; agents refuse one of more than \
         {MAX_MANIFEST_BYTES} bytes (MAX_MANIFEST_BYTES): fewer or shorter file names"
    )]
    Manifest { len: u64 },
}

/// `path` cut for a message: its first 80 bytes and an ellipsis.
fn shown(path: &str) -> String {
    if path.len() <= 80 {
        return path.to_owned();
    }
    let mut end = 80;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// What a host tree holds so far, checked entry by entry while it is staged.
#[derive(Debug, Default)]
pub struct TreeBudget {
    entries: usize,
    bytes: u64,
}

impl TreeBudget {
    pub fn new() -> TreeBudget {
        TreeBudget::default()
    }

    /// Counts one entry at `rel` (relative to the release root, `/`-separated):
    /// a directory, or a file of `size` bytes. The rules are the agent's: every
    /// entry counts, a directory of more than [`MAX_RELEASE_DEPTH`] components
    /// is too deep, and no relative path may pass [`MAX_RELEASE_PATH`] bytes.
    pub fn entry(&mut self, rel: &str, dir: bool, size: u64) -> Result<(), LimitError> {
        if rel.len() > MAX_RELEASE_PATH {
            return Err(LimitError::Path { path: shown(rel) });
        }
        if dir && rel.split('/').count() > MAX_RELEASE_DEPTH {
            return Err(LimitError::Depth { path: shown(rel) });
        }
        self.entries += 1;
        if self.entries > MAX_TREE_ENTRIES {
            return Err(LimitError::Entries);
        }
        if !dir {
            self.bytes = self.bytes.saturating_add(size);
            if self.bytes > MAX_TREE_BYTES {
                return Err(LimitError::Bytes);
            }
        }
        Ok(())
    }
}

/// Checks the size of a serialized manifest.
pub fn check_manifest(len: usize) -> Result<(), LimitError> {
    let len = len as u64;
    if len > MAX_MANIFEST_BYTES {
        return Err(LimitError::Manifest { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_rules() {
        let mut b = TreeBudget::new();
        let deep: Vec<String> = (0..MAX_RELEASE_DEPTH).map(|i| format!("d{i}")).collect();
        b.entry(&deep.join("/"), true, 0).unwrap();
        b.entry(&format!("{}/file", deep.join("/")), false, 1)
            .unwrap();
        let deeper = format!("{}/x", deep.join("/"));
        assert!(matches!(
            b.entry(&deeper, true, 0),
            Err(LimitError::Depth { .. })
        ));
        assert!(matches!(
            b.entry(&"a".repeat(MAX_RELEASE_PATH + 1), false, 0),
            Err(LimitError::Path { .. })
        ));
        b.entry(&"a".repeat(MAX_RELEASE_PATH), false, 0).unwrap();

        let mut w = TreeBudget::new();
        for i in 0..MAX_TREE_ENTRIES {
            w.entry(&format!("f{i}"), false, 0).unwrap();
        }
        assert_eq!(w.entry("one-more", false, 0), Err(LimitError::Entries));

        let mut big = TreeBudget::new();
        big.entry("a", false, MAX_TREE_BYTES).unwrap();
        assert_eq!(big.entry("b", false, 1), Err(LimitError::Bytes));
        assert!(check_manifest(MAX_MANIFEST_BYTES as usize).is_ok());
        assert!(check_manifest(MAX_MANIFEST_BYTES as usize + 1).is_err());
    }
}
