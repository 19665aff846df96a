//! Located errors in a topology file, and how they are shown.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};

use super::node::{KeyPath, Loc};

/// One problem: where, what, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The key path, e.g. `links[1].to`; empty for the whole file.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
    pub loc: Option<Loc>,
}

impl Diagnostic {
    pub fn new(path: &KeyPath, message: impl Into<String>) -> Self {
        Self { path: path.to_string(), message: message.into(), hint: None, loc: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn at(mut self, loc: Option<Loc>) -> Self {
        self.loc = loc;
        self
    }
}

/// Every problem found in one topology file.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub source: Arc<str>,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &Path, source: Arc<str>) -> Self {
        Self { file: file.to_owned(), source, items: Vec::new() }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Renders like a compiler: each error with its source line and a caret.
    pub fn render(&self, color: bool) -> String {
        let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
        let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1).with_wrap_lines(false);
        let name = self.file.display().to_string();
        let mut out = String::new();
        for d in &self.items {
            let report = Report {
                message: self.headline(d),
                help: d.hint.clone(),
                src: NamedSource::new(name.clone(), self.source.clone()),
                span: d.loc.map(|l| SourceSpan::new(l.offset.into(), l.len.max(1))),
            };
            if handler.render_report(&mut out, &report).is_err() {
                out.push_str(&self.plain_line(d));
            }
        }
        let n = self.items.len();
        out.push_str(&format!("{n} error{} in {name}\n", if n == 1 { "" } else { "s" }));
        out
    }

    fn headline(&self, d: &Diagnostic) -> String {
        match &d.loc {
            Some(l) => format!("{}:{}:{}: {}", self.file.display(), l.line, l.column, self.message_with_path(d)),
            None => format!("{}: {}", self.file.display(), self.message_with_path(d)),
        }
    }

    fn message_with_path(&self, d: &Diagnostic) -> String {
        if d.path.is_empty() { d.message.clone() } else { format!("{}: {}", d.path, d.message) }
    }

    fn plain_line(&self, d: &Diagnostic) -> String {
        let mut line = format!("error: {}\n", self.headline(d));
        if let Some(h) = &d.hint {
            line.push_str(&format!("  help: {h}\n"));
        }
        line
    }
}

/// One line per error: `file:line:col: path: message (help: hint)`.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            write!(f, "{}", self.headline(d))?;
            if let Some(h) = &d.hint {
                write!(f, " (help: {h})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[derive(Debug)]
struct Report {
    message: String,
    help: Option<String>,
    src: NamedSource<Arc<str>>,
    span: Option<SourceSpan>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Report {}

impl miette::Diagnostic for Report {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.span.map(|_| &self.src as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(miette::LabeledSpan::new_with_span(Some("here".to_owned()), span))))
    }
}
