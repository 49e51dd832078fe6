//! Rooms of a readable size (issue 19): no source file of the service holds more than
//! [`MAX_LINES`] lines of non-test code. A file's test code is its `#[cfg(test)] mod tests { .. }`
//! block at the end, or the whole file when it is itself a test module (`tests.rs`, or a file
//! under a `tests/` folder of `src/`). Functions over 80 lines are clippy's to catch
//! (`clippy::too_many_lines`, threshold in `clippy.toml`, warned in `src/lib.rs`).

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The most non-test lines one source file may hold.
const MAX_LINES: usize = 600;

/// Lines of `text` before its trailing test module (all of them when it has none).
fn non_test_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len())
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs") || path.components().any(|c| c.as_os_str() == "tests")
}

fn walk(dir: &Path, found: &mut Vec<(String, usize)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src/").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(ROOT).expect("under the root");
            if is_test_file(relative.strip_prefix("src").unwrap_or(relative)) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            found.push((relative.display().to_string(), non_test_lines(&text)));
        }
    }
}

#[test]
fn no_source_file_holds_more_than_600_lines_of_non_test_code() {
    let mut files = Vec::new();
    for dir in ["src", "bench/src"] {
        walk(&Path::new(ROOT).join(dir), &mut files);
    }
    assert!(files.len() > 20, "the walk found the sources: {files:?}");
    let over: Vec<_> = files.iter().filter(|(_, n)| *n > MAX_LINES).collect();
    assert!(over.is_empty(), "files over {MAX_LINES} non-test lines (split them into cohesive modules): {over:?}");
}

#[test]
fn the_count_stops_at_the_trailing_test_module() {
    let text = "fn a() {}\nfn b() {}\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
    assert_eq!(non_test_lines(text), 2);
    assert_eq!(non_test_lines("fn a() {}\n#[cfg(test)]\nmod tests;\n"), 1);
    assert_eq!(non_test_lines("fn a() {}\n"), 1);
    assert!(is_test_file(Path::new("tokens/tests.rs")));
    assert!(!is_test_file(Path::new("tokens/refresh.rs")));
}
