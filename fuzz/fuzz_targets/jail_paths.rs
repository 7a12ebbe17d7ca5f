//! The embedded SFTP server's path resolution: whatever path and operation a host
//! sends, every file it gets lies inside its own root and it writes only directly
//! in `logs/` (`bento_core::jail::fuzzing::Tree::check` states the property).
#![no_main]

use std::sync::OnceLock;

use bento_core::jail::fuzzing::Tree;
use libfuzzer_sys::fuzz_target;

static TREE: OnceLock<Tree> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    TREE.get_or_init(Tree::new).check(data);
});
