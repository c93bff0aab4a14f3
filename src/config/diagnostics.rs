//! Turning a problem into a message an operator can act on: which key, which line, what is
//! expected.
//!
//! serde tells us *what* went wrong and toml tells us the byte span; neither knows the key path
//! of a deep error. So the raw text is parsed a second time into a span-keeping
//! [`toml_edit::ImDocument`], and:
//! - for a deserialization error, the key path is found by looking for the deepest key whose
//!   key or value span contains the error's span ([`path_at`]);
//! - for a validation error (found on the typed config, which has no spans), the span is found
//!   by walking the document along the key path ([`span_of`]).

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

/// One segment of a key path: `class[1].max_bytes` is `[Key("class"), Index(1), Key("max_bytes")]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path in the config file, printed the way it is written: `mqtt.user[0].publish[2]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// Parses `a.b[1].c` (only used for paths written in code, so no quoting rules).
    pub fn parse(s: &str) -> Self {
        let mut p = KeyPath::root();
        for part in s.split('.').filter(|x| !x.is_empty()) {
            let mut it = part.split('[');
            if let Some(k) = it.next() {
                if !k.is_empty() {
                    p = p.key(k);
                }
            }
            for idx in it {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    p = p.index(i);
                }
            }
        }
        p
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    // Quote keys that TOML would need quoted (`"sasl.password"`).
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where in the file: 1-based line and column, and the text of that line for context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub line_text: String,
}

impl Location {
    pub fn from_offset(text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        let line_end = text[line_start..]
            .find('\n')
            .map(|i| line_start + i)
            .unwrap_or(text.len());
        Location {
            line,
            column,
            line_text: redact_line(text[line_start..line_end].trim_end_matches('\r')),
        }
    }
}

/// The quoted line of a diagnostic, with the value hidden when the key names a secret
/// (`password_hash`, `"sasl.password"`, ...): a plaintext password pasted into the config
/// must not be echoed back to the terminal or into a log.
fn redact_line(line: &str) -> String {
    if let Some((key, _)) = line.split_once('=') {
        let k = key.trim().trim_matches(|c| c == '"' || c == '\'');
        if super::KafkaProperties::is_secret(k) {
            return format!("{} = \"{}\"", key.trim_end(), super::MASK);
        }
    }
    line.to_string()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One problem (error or warning) in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given (or a label such as `<default>`).
    pub file: String,
    /// The key the problem is about; empty for syntax errors outside any key.
    pub path: KeyPath,
    pub location: Option<Location>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(loc) = &self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": `{}`", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(loc) = &self.location {
            if !loc.line_text.trim().is_empty() {
                let gutter = loc.line.to_string().len();
                write!(
                    f,
                    "\n {:gutter$} |\n {} | {}\n {:gutter$} | {:>col$}",
                    "",
                    loc.line,
                    loc.line_text,
                    "",
                    "^",
                    col = loc.column
                )?;
            }
        }
        Ok(())
    }
}

/// The deepest key path whose key or value covers `offset`; the root path when none does.
pub fn path_at(doc: &ImDocument<&str>, offset: usize) -> KeyPath {
    let mut best = KeyPath::root();
    walk_table_like(doc.as_table(), &KeyPath::root(), offset, &mut best);
    best
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    // An error at the very end of a span (e.g. an unterminated value) still belongs to it.
    span.is_some_and(|r| r.start <= offset && offset < r.end.max(r.start + 1))
}

fn deeper(best: &mut KeyPath, candidate: KeyPath) {
    if candidate.0.len() >= best.0.len() {
        *best = candidate;
    }
}

fn walk_table_like(t: &dyn TableLike, path: &KeyPath, offset: usize, best: &mut KeyPath) {
    for (k, item) in t.iter() {
        let p = path.key(k);
        if contains(t.key(k).and_then(|key| key.span()), offset) {
            deeper(best, p.clone());
        }
        walk_item(item, &p, offset, best);
    }
}

fn walk_item(item: &Item, path: &KeyPath, offset: usize, best: &mut KeyPath) {
    match item {
        Item::None => {}
        Item::Value(v) => walk_value(v, path, offset, best),
        Item::Table(t) => walk_table(t, path, offset, best),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                walk_table(t, &path.index(i), offset, best);
            }
        }
    }
}

fn walk_table(t: &Table, path: &KeyPath, offset: usize, best: &mut KeyPath) {
    if contains(t.span(), offset) {
        deeper(best, path.clone());
    }
    walk_table_like(t, path, offset, best);
}

fn walk_value(v: &Value, path: &KeyPath, offset: usize, best: &mut KeyPath) {
    if contains(v.span(), offset) {
        deeper(best, path.clone());
    }
    match v {
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_value(v, &path.index(i), offset, best);
            }
        }
        Value::InlineTable(t) => walk_table_like(t, path, offset, best),
        _ => {}
    }
}

/// The span of the value at `path` (or of its key, or of the nearest parent that exists), so a
/// validation error can point at the right line even for keys that were left at their default.
pub fn span_of(doc: &ImDocument<&str>, path: &KeyPath) -> Option<Range<usize>> {
    lookup(doc, path).0
}

/// True when every segment of `path` is written in the document (false: a default applies).
pub fn is_written(doc: &ImDocument<&str>, path: &KeyPath) -> bool {
    lookup(doc, path).1
}

fn lookup(doc: &ImDocument<&str>, path: &KeyPath) -> (Option<Range<usize>>, bool) {
    let mut cur = Node::Table(doc.as_table());
    let mut best = None;
    for seg in &path.0 {
        let next = match (cur, seg) {
            (Node::Table(t), Seg::Key(k)) => t.get_key_value(k).map(|(key, item)| {
                let span = item.span().or_else(|| key.span());
                (Node::Item(item), span.or_else(|| key.span()))
            }),
            (Node::Item(Item::Table(t)), Seg::Key(k)) => t
                .get_key_value(k)
                .map(|(key, item)| (Node::Item(item), item.span().or_else(|| key.span()))),
            (Node::Item(Item::Value(Value::InlineTable(t))), Seg::Key(k)) => t
                .get_key_value(k)
                .map(|(key, item)| (Node::Item(item), item.span().or_else(|| key.span()))),
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => a
                .get(*i)
                .map(|t| (Node::Table(t as &dyn TableLike), t.span())),
            (Node::Item(Item::Value(Value::Array(a))), Seg::Index(i)) => {
                a.get(*i).map(|v| (Node::Value(v), v.span()))
            }
            (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => t
                .get_key_value(k)
                .map(|(key, item)| (Node::Item(item), item.span().or_else(|| key.span()))),
            (Node::Value(Value::Array(a)), Seg::Index(i)) => {
                a.get(*i).map(|v| (Node::Value(v), v.span()))
            }
            _ => None,
        };
        match next {
            Some((node, span)) => {
                if span.is_some() {
                    best = span;
                }
                cur = node;
            }
            None => return (best, false),
        }
    }
    (best, true)
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a dyn TableLike),
    Item(&'a Item),
    Value(&'a Value),
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a = 1\n[s]\nx = \"y\"\nlist = [\"p\", \"q\"]\n[[c]]\nname = \"n0\"\n[[c]]\nname = \"n1\"\nt = { k = 5 }\n";

    #[test]
    fn paths_from_offsets() {
        let doc = ImDocument::parse(DOC).unwrap();
        let at = |needle: &str| path_at(&doc, DOC.find(needle).unwrap()).to_string();
        assert_eq!(at("\"y\""), "s.x");
        assert_eq!(at("x ="), "s.x");
        assert_eq!(at("\"q\""), "s.list[1]");
        assert_eq!(at("\"n1\""), "c[1].name");
        assert_eq!(at("5 }"), "c[1].t.k");
        assert_eq!(at("a ="), "a");
    }

    #[test]
    fn spans_from_paths() {
        let doc = ImDocument::parse(DOC).unwrap();
        let line = |p: &str| {
            span_of(&doc, &KeyPath::parse(p)).map(|r| Location::from_offset(DOC, r.start).line)
        };
        assert_eq!(line("s.x"), Some(3));
        assert_eq!(line("s.list[1]"), Some(4));
        assert_eq!(line("c[1].name"), Some(8));
        assert_eq!(line("c[1].t.k"), Some(9));
        // A key left at its default points at its table.
        assert_eq!(line("c[1].missing"), Some(7));
        assert_eq!(line("nothing.here"), None);
        assert_eq!(KeyPath::parse("c[1].t.k").to_string(), "c[1].t.k");
    }
}
