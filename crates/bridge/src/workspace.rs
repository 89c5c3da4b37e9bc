//! The workspace's file list, reported once in a `workspace` message for environment
//! autodiscovery: relative `/`-separated paths, breadth first (so the files that decide the
//! environment, nearest the root, are always in), without `.git/` and `node_modules/`, bounded.

use std::collections::VecDeque;
use std::path::Path;

/// Directories never listed (nor descended into).
const SKIPPED: [&str; 2] = [".git", "node_modules"];

/// Lists up to `limit` files under `root`, breadth first, each directory's entries in name order.
/// Symbolic links are listed as files and never followed; names that are not UTF-8 and
/// directories that cannot be read are skipped.
pub fn list_files(root: &Path, limit: usize) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs: VecDeque<String> = VecDeque::from([String::new()]);
    while let Some(dir) = dirs.pop_front() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            if kind.is_dir() {
                if !SKIPPED.contains(&name.as_str()) {
                    dirs.push_back(path);
                }
                continue;
            }
            if files.len() >= limit {
                return files;
            }
            files.push(path);
        }
    }
    files
}
