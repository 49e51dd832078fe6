//! Every citation in the repository leads somewhere: a document a citation names exists in the
//! repository, and the section it cites exists in that document. The forms checked, wherever
//! they stand (code comments, docs, scripts, fixture notes):
//! - a document by name or path: `docs/design.md`, `operations.md`, `SOURCES.md`;
//! - numbered sections right after it: `docs/design.md §2 step 3`, `design.md (§1 shape, §4
//!   storage)`; inside `docs/design.md`, its own bare `§12.1`;
//! - a quoted section title right after it: `docs/operations.md, "Client limits"`;
//! - a Markdown anchor: `operations.md#config-reference`.
//!
//! The repository cites only its own documents (docs/design.md, the source of truth), so a
//! citation of a document that lives elsewhere fails here, and so does one whose section a
//! rewrite removed or renamed.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The document whose bare `§N` references point into itself.
const DESIGN: &str = "docs/design.md";

/// Paths of other repositories' documents, quoted as the sources of WeChat replies
/// (tests/fixtures/wechat/SOURCES.md): not citations of this repository's documents.
const EXTERNAL: &[&str] = &["docs/wechat_official/wechat_official_permanent_pic_num.md"];

/// Directories never scanned: build output, version control, fuzz corpora and crash artifacts
/// (bytes, not text).
const SKIPPED_DIRS: &[&str] = &["target", ".git", "node_modules", "corpus", "artifacts"];

/// A scanned file: its path from the root, `/`-separated, and its text.
struct Source {
    path: String,
    text: String,
}

/// Every UTF-8 file of the repository outside [`SKIPPED_DIRS`].
fn sources() -> Vec<Source> {
    let mut found = Vec::new();
    walk(Path::new(ROOT), &mut found);
    found
}

fn walk(dir: &Path, found: &mut Vec<Source>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name) {
                walk(&path, found);
            }
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            // Files that are not UTF-8 (images, binary fixtures) hold no citation.
            let relative = path.strip_prefix(ROOT).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            found.push(Source { path: relative, text });
        }
    }
}

/// What a citation points at inside its document.
#[derive(Debug, PartialEq, Eq)]
enum Cited {
    /// `§N` or `§N.M`, with the `K` of an optional ` step K`.
    Number { number: String, step: Option<String> },
    /// A quoted section title.
    Title(String),
    /// A Markdown anchor (`#config-reference`).
    Anchor(String),
}

/// Characters of a document path as it is written in a citation.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/')
}

/// The document tokens of `text` (`docs/design.md`, `SOURCES.md`), each with the byte offset
/// where it starts and where it ends. URLs (`https://…/README.md`) are not tokens.
fn document_tokens(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    for (at, _) in text.match_indices(".md") {
        let end = at + 3;
        if bytes.get(end).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            continue; // `.mdx`, `.md5`: another extension
        }
        let mut start = at;
        while start > 0 && is_path_char(bytes[start - 1]) {
            start -= 1;
        }
        let token = &text[start..end];
        let stem = token.trim_end_matches(".md");
        if stem.is_empty() || stem.ends_with(['/', '.']) || token.starts_with("//") {
            continue; // `".md"`, `{name}.md`, or the tail of a URL
        }
        tokens.push((start, end));
    }
    tokens
}

/// The file a cited document stands for, seen from the citing file: a path relative to the
/// citing file's directory, to the root or to `docs/`; a bare name may also be any file of that
/// name in the repository (`SOURCES.md`).
fn resolve(token: &str, from: &str, files: &[Source]) -> Option<PathBuf> {
    let token = token.trim_start_matches("./");
    let root = Path::new(ROOT);
    let candidates = match token.strip_prefix('/') {
        Some(absolute) => vec![root.join(absolute)],
        None => {
            let dir = Path::new(from).parent().unwrap_or(Path::new(""));
            vec![root.join(dir).join(token), root.join(token), root.join("docs").join(token)]
        }
    };
    if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
        return Some(found);
    }
    if token.contains('/') {
        return None;
    }
    files.iter().find(|f| f.path.rsplit('/').next() == Some(token)).map(|f| root.join(&f.path))
}

/// The leading digits of `text` and what follows them.
fn digits(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text.split_at(end)
}

/// A section number (`12`, `2.1`) at the start of `text`, and what follows it. A full stop
/// followed by no digit ends the sentence, not the number.
fn section_number(text: &str) -> (String, &str) {
    let (first, mut rest) = digits(text);
    let mut number = first.to_owned();
    while let Some(after) = rest.strip_prefix('.') {
        let (more, tail) = digits(after);
        if more.is_empty() || number.is_empty() {
            break;
        }
        number.push('.');
        number.push_str(more);
        rest = tail;
    }
    (number, rest)
}

/// Every `§` of the clause `text` starts with: `§2 step 3`, `§1 shape, §4 storage, §6
/// operations` (a clause ends at `)`, `;`, a full stop or the end of the line).
fn numbers(text: &str) -> Vec<Cited> {
    let mut cited = Vec::new();
    let mut rest = text;
    while let Some(after) = rest.strip_prefix('§') {
        let (number, tail) = section_number(after);
        if number.is_empty() {
            break;
        }
        let (step, tail) = match tail.strip_prefix(" step ") {
            Some(after_step) => {
                let (step, tail) = digits(after_step);
                (Some(step.to_owned()).filter(|s| !s.is_empty()), tail)
            }
            None => (None, tail),
        };
        cited.push(Cited::Number { number, step });
        let stop = tail.find([')', ';', '\n', '.', '§']).unwrap_or(tail.len());
        if stop > 60 || !tail[stop..].starts_with('§') {
            break;
        }
        rest = &tail[stop..];
    }
    cited
}

/// What the text right after a document token cites in it, if anything.
fn cited_after(rest: &str) -> Vec<Cited> {
    if let Some(anchor) = rest.strip_prefix('#') {
        let end = anchor.find(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')).unwrap_or(anchor.len());
        if end == 0 {
            return Vec::new();
        }
        return vec![Cited::Anchor(anchor[..end].to_owned())];
    }
    // `docs/design.md §4`, `design.md (§1 shape, §4 storage)`, `[design.md](design.md) §4`.
    let sections = rest.trim_start_matches([' ', ',', '(', ')', ']']);
    if sections.starts_with('§') {
        return numbers(sections);
    }
    let after = rest.trim_start_matches([' ', ',', '(']);
    // A title needs a separator: `"docs/api.md", "x"` in code is a list of two strings.
    if after.len() == rest.len() {
        return Vec::new();
    }
    let after = after.strip_prefix("section ").unwrap_or(after);
    let title = after.strip_prefix('"').and_then(|quoted| quoted.find('"').map(|end| &quoted[..end]));
    match title {
        Some(title) if !title.is_empty() && title.len() <= 80 && !title.contains('\n') => {
            vec![Cited::Title(title.to_owned())]
        }
        _ => Vec::new(),
    }
}

/// A Markdown document's headings outside code fences: level, text, and the line they are on.
fn headings(doc: &str) -> Vec<(usize, &str, usize)> {
    let mut found = Vec::new();
    let mut fenced = false;
    for (index, line) in doc.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let level = line.len() - line.trim_start_matches('#').len();
        if !fenced && level > 0 && line[level..].starts_with(' ') {
            found.push((level, line[level..].trim(), index));
        }
    }
    found
}

/// GitHub's anchor of a heading: lowercase, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `doc` has what `cited` points at.
fn has(doc: &str, cited: &Cited) -> bool {
    let headings = headings(doc);
    match cited {
        Cited::Title(title) => {
            let title = title.to_lowercase();
            headings.iter().any(|(_, text, _)| text.to_lowercase().contains(&title))
        }
        Cited::Anchor(anchor) => headings.iter().any(|(_, text, _)| slug(text) == *anchor),
        Cited::Number { number, step } => {
            let numbered = |text: &str| {
                let text = text.trim_start_matches('§');
                text.strip_prefix(number.as_str())
                    .is_some_and(|r| r.starts_with(". ") || r.starts_with(' ') || r == ".")
            };
            let Some(at) = headings.iter().position(|(_, text, _)| numbered(text)) else { return false };
            let Some(step) = step else { return true };
            let (level, _, first) = headings[at];
            let last = headings[at + 1..].iter().find(|(l, _, _)| *l <= level).map_or(usize::MAX, |(_, _, line)| *line);
            let body = doc.lines().enumerate().filter(|(i, _)| *i > first && *i < last);
            body.map(|(_, line)| line.trim_start()).any(|line| line.starts_with(&format!("{step}. ")))
        }
    }
}

/// How a citation is written in a report.
fn describe(cited: &Cited) -> String {
    match cited {
        Cited::Number { number, step: Some(step) } => format!("§{number} step {step}"),
        Cited::Number { number, step: None } => format!("§{number}"),
        Cited::Title(title) => format!("\"{title}\""),
        Cited::Anchor(anchor) => format!("#{anchor}"),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

/// The dangling citations of one file, as `path:line: what`; and how many citations it has.
fn problems_in(path: &str, text: &str, files: &[Source]) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut count = 0;
    for (start, end) in document_tokens(text) {
        let token = &text[start..end];
        if EXTERNAL.contains(&token) {
            continue;
        }
        count += 1;
        let line = line_of(text, start);
        let Some(document) = resolve(token, path, files) else {
            problems.push(format!("{path}:{line}: cites {token}, which is not in the repository"));
            continue;
        };
        let doc = std::fs::read_to_string(&document).unwrap_or_default();
        for cited in cited_after(&text[end..]) {
            count += 1;
            if !has(&doc, &cited) {
                problems.push(format!("{path}:{line}: cites {token} {}, which it does not have", describe(&cited)));
            }
        }
    }
    if path == DESIGN {
        for (at, _) in text.match_indices('§') {
            let mut before: Vec<char> = text[..at].chars().rev().take(16).collect();
            before.reverse();
            if before.into_iter().collect::<String>().contains("RFC") {
                continue; // `RFC 9700 §4.5`: another document's section
            }
            if let Some(cited) = numbers(&text[at..]).into_iter().next() {
                count += 1;
                if !has(text, &cited) {
                    problems.push(format!(
                        "{path}:{}: refers to {}, which it does not have",
                        line_of(text, at),
                        describe(&cited)
                    ));
                }
            }
        }
    }
    (problems, count)
}

#[test]
fn every_citation_names_a_document_and_a_section_that_exist() {
    let files = sources();
    let (mut problems, mut count) = (Vec::new(), 0);
    for file in &files {
        let (found, cited) = problems_in(&file.path, &file.text, &files);
        problems.extend(found);
        count += cited;
    }
    // The scan found the repository and its citations (a vacuous pass is a failure).
    assert!(files.iter().any(|f| f.path == DESIGN), "{DESIGN} not found under {ROOT}");
    assert!(count > 100, "only {count} citations found");
    assert!(problems.is_empty(), "dangling citations:\n{}", problems.join("\n"));
}

#[test]
fn each_kind_of_dangling_citation_is_caught() {
    // Written with `{MD}` so that this file's own text holds no dangling citation.
    const MD: &str = ".md";
    let files = sources();
    let text = format!(
        "good: docs/design.md §2 step 3; design.md (§1 shape, §4 storage); \
         docs/operations.md, \"Client limits\"; [x](operations.md#config-reference)\n\
         missing document: see DESIGN{MD} §2\n\
         missing section: docs/design{MD} §99\n\
         missing step: docs/design{MD} §2 step 42\n\
         missing title: docs/operations{MD}, \"No such section\"\n\
         missing anchor: docs/operations{MD}#no-such-anchor\n"
    );
    let (problems, count) = problems_in("docs/reliability.md", &text, &files);
    let lines: Vec<&str> = problems.iter().map(|p| p.split(": cites").next().unwrap_or_default()).collect();
    assert_eq!(
        lines,
        [
            "docs/reliability.md:2",
            "docs/reliability.md:3",
            "docs/reliability.md:4",
            "docs/reliability.md:5",
            "docs/reliability.md:6"
        ],
        "{problems:#?}"
    );
    // Good: 4 documents and 5 sections. Bad: 5 documents, 4 of them with a section (an unknown
    // document's sections are not looked for).
    assert_eq!(count, 18, "{problems:#?}");
}
