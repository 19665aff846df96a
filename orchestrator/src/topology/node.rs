//! The topology file as a tree of YAML nodes that remember where they are.
//!
//! Parsing goes through `serde-saphyr` (panic-free, with input budgets against
//! YAML bombs) into this tree; validation then walks it, so that every error,
//! not only the first, can be located at `file:line:column`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A position in the source: 1-based line and column, byte offset and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: u32,
    pub column: u32,
    pub offset: usize,
    pub len: usize,
}

impl Loc {
    /// Converts a parser location; byte offsets missing from it are computed
    /// from the line and column in `source`.
    pub fn from_location(l: &serde_saphyr::Location, source: &str) -> Option<Self> {
        if l.line() == 0 {
            return None;
        }
        let line = u32::try_from(l.line()).unwrap_or(u32::MAX);
        let column = u32::try_from(l.column()).unwrap_or(u32::MAX);
        let span = l.span();
        let offset = match span.byte_offset().and_then(|o| usize::try_from(o).ok()) {
            Some(o) => o,
            None => byte_offset(source, line, column),
        };
        let len = span.byte_len().and_then(|o| usize::try_from(o).ok()).unwrap_or(0);
        Some(Self { line, column, offset, len })
    }
}

/// The byte offset of 1-based `line` and character `column` in `source`.
fn byte_offset(source: &str, line: u32, column: u32) -> usize {
    let line_start: usize = source.split_inclusive('\n').take(line.saturating_sub(1) as usize).map(str::len).sum();
    offset_in_line(source, line_start, column)
}

fn offset_in_line(source: &str, line_start: usize, column: u32) -> usize {
    let rest = &source[line_start.min(source.len())..];
    line_start + rest.char_indices().nth(column.saturating_sub(1) as usize).map_or(rest.len(), |(i, _)| i)
}

/// One segment of a key path: `tiers` / `api` / `[1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `links[1].to`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// Appends a relative path written as `a.b[2].c` (what plugins report).
    pub fn join_str(&self, rel: &str) -> Self {
        let mut p = self.clone();
        for part in rel.split('.').filter(|s| !s.is_empty()) {
            let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                p.0.push(Seg::Key(name.to_owned()));
            }
            while let Some((index, after)) = rest.split_once(']') {
                match index.parse() {
                    Ok(i) => p.0.push(Seg::Index(i)),
                    Err(_) => p.0.push(Seg::Key(index.to_owned())),
                }
                rest = after.strip_prefix('[').unwrap_or(after);
            }
        }
        p
    }

    /// Appends a path reported by `serde_path_to_error`.
    pub fn join_serde(&self, path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut p = self.clone();
        for seg in path {
            match seg {
                Segment::Seq { index } => p.0.push(Seg::Index(*index)),
                Segment::Map { key } => p.0.push(Seg::Key(key.clone())),
                Segment::Enum { variant } => p.0.push(Seg::Key(variant.clone())),
                Segment::Unknown => {}
            }
        }
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A YAML value with its location.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub loc: Option<Loc>,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Entries),
}

/// A mapping's entries in the order written, found by key in constant time
/// once there are many (a topology may have tens of thousands of tiers).
#[derive(Clone, Debug, Default)]
pub struct Entries {
    items: Vec<(Key, Node)>,
    index: Option<std::collections::HashMap<String, usize>>,
}

impl Entries {
    /// Below this many entries a scan is as fast as a hash.
    const INDEXED: usize = 16;

    /// Adds an entry; `false` (and nothing added) if its key is there already.
    fn insert(&mut self, key: Key, value: Node) -> bool {
        if self.get(&key.name).is_some() {
            return false;
        }
        if let Some(index) = &mut self.index {
            index.insert(key.name.clone(), self.items.len());
        } else if self.items.len() + 1 > Self::INDEXED {
            let mut index: std::collections::HashMap<String, usize> =
                self.items.iter().enumerate().map(|(i, (k, _))| (k.name.clone(), i)).collect();
            index.insert(key.name.clone(), self.items.len());
            self.index = Some(index);
        }
        self.items.push((key, value));
        true
    }

    pub fn get(&self, name: &str) -> Option<&(Key, Node)> {
        match &self.index {
            Some(index) => index.get(name).map(|&i| &self.items[i]),
            None => self.items.iter().find(|(k, _)| k.name == name),
        }
    }
}

impl std::ops::Deref for Entries {
    type Target = [(Key, Node)];
    fn deref(&self) -> &Self::Target {
        &self.items
    }
}

/// A mapping key with its location.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub loc: Option<Loc>,
}

impl Node {
    /// Parses a YAML document.
    pub fn parse(source: &str) -> Result<Node, serde_saphyr::Error> {
        let spanned: Spanned<Value> = serde_saphyr::from_str(source)?;
        let line_starts: Vec<usize> =
            std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let mut node = Node::from(spanned);
        node.fill_offsets(source, &line_starts);
        Ok(node)
    }

    /// Computes byte offsets the parser did not provide.
    fn fill_offsets(&mut self, source: &str, line_starts: &[usize]) {
        let fix = |loc: &mut Option<Loc>| {
            if let Some(l) = loc
                && l.offset == 0
                && (l.line, l.column) != (1, 1)
            {
                let start = line_starts.get(l.line.saturating_sub(1) as usize).copied().unwrap_or(source.len());
                l.offset = offset_in_line(source, start, l.column);
            }
        };
        fix(&mut self.loc);
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.fill_offsets(source, line_starts)),
            Value::Map(entries) => {
                for (k, v) in &mut entries.items {
                    fix(&mut k.loc);
                    v.fill_offsets(source, line_starts);
                }
            }
            _ => {}
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.get(key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at `path`, and the location of the last key on the way.
    pub fn find(&self, path: &KeyPath) -> (Option<&Node>, Option<Loc>) {
        let mut node = self;
        let mut key_loc = None;
        for seg in &path.0 {
            let next = match (seg, &node.value) {
                (Seg::Key(k), Value::Map(m)) => m.get(k).map(|(key, v)| {
                    key_loc = key.loc;
                    v
                }),
                (Seg::Index(i), Value::Seq(s)) => s.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return (None, key_loc.or(node.loc)),
            }
        }
        (Some(node), key_loc)
    }

    /// The best location for `path`: the value's, else the nearest key's.
    pub fn locate(&self, path: &KeyPath) -> Option<Loc> {
        match self.find(path) {
            (Some(node), key) => node.loc.or(key),
            (None, key) => key,
        }
    }

    /// The location of the key at `path` (for "unknown key" errors).
    pub fn locate_key(&self, path: &KeyPath) -> Option<Loc> {
        self.find(path).1
    }

    /// Converts to JSON (for plugin configurations and serde-driven checks).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Uint(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.name.clone(), v.to_json())).collect()),
        }
    }

    /// A short description of the node's type, for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Uint(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl From<Spanned<Value>> for Node {
    fn from(s: Spanned<Value>) -> Self {
        Node { loc: Loc::from_location(&s.referenced, ""), value: s.value }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Uint(v), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Node::from(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Entries::default();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = Node::from(map.next_value::<Spanned<Value>>()?);
            let name = key.value.0;
            let loc = Loc::from_location(&key.referenced, "");
            if !entries.insert(Key { name: name.clone(), loc }, value) {
                return Err(de::Error::custom(format_args!("duplicate key `{name}`")));
            }
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key, whatever scalar it was written as.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Uint(u) => Ok(KeyText(u.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Float(f) => Ok(KeyText(f.to_string())),
            Value::Null => Ok(KeyText("null".to_owned())),
            _ => Err(de::Error::custom("a mapping key must be a scalar")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "name: shop\ntiers:\n  api:\n    plugin: hello\n    replicas: 2\nlinks:\n  - { from: web, to: api }\n";

    #[test]
    fn locates_values_and_keys() {
        let root = Node::parse(DOC).unwrap();
        let plugin = root.locate(&KeyPath::root().key("tiers").key("api").key("plugin")).unwrap();
        assert_eq!((plugin.line, plugin.column), (4, 13));
        assert_eq!(&DOC[plugin.offset..plugin.offset + plugin.len], "hello");
        let to = root.locate(&KeyPath::root().join_str("links[0].to")).unwrap();
        assert_eq!(to.line, 7);
        assert_eq!(&DOC[to.offset..to.offset + to.len], "api");
        let key = root.locate_key(&KeyPath::root().join_str("tiers.api.replicas")).unwrap();
        assert_eq!((key.line, key.column), (5, 5));
    }

    #[test]
    fn missing_path_falls_back_to_nearest_key() {
        let root = Node::parse(DOC).unwrap();
        let loc = root.locate(&KeyPath::root().join_str("tiers.api.config.routes[0]")).unwrap();
        assert_eq!(loc.line, 3);
    }

    #[test]
    fn paths_render_like_they_are_written() {
        let p = KeyPath::root().join_str("routes[0].link");
        assert_eq!(p.0, vec![Seg::Key("routes".into()), Seg::Index(0), Seg::Key("link".into())]);
        assert_eq!(KeyPath::root().key("links").index(1).key("to").to_string(), "links[1].to");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = Node::parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.location().is_some());
    }

    #[test]
    fn converts_to_json() {
        let root = Node::parse("a: [1, x, true, null, 1.5]").unwrap();
        assert_eq!(root.to_json(), serde_json::json!({ "a": [1, "x", true, null, 1.5] }));
    }
}
