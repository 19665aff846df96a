//! Located errors in a topology file, and how they are shown.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, SourceSpan};

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
        let line_starts: Vec<usize> =
            std::iter::once(0).chain(self.source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let mut out = String::new();
        for d in &self.items {
            let span = d.loc.map(|l| SourceSpan::new(l.offset.min(self.source.len()).into(), l.len.max(1)));
            let report = Report {
                message: self.headline(d),
                help: d.hint.clone(),
                src: Window::around(&name, &self.source, &line_starts, span),
                span,
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
    src: Window,
    span: Option<SourceSpan>,
}

/// The few lines of a file around one error, which is all its report shows.
/// miette finds a span's line by counting from the start of what it is
/// given: handed the whole file for each of thousands of errors, that took
/// minutes; a window of lines found with the file's line index does not.
#[derive(Debug)]
struct Window {
    name: String,
    source: Arc<str>,
    start: usize,
    end: usize,
    /// The window's first line, counted from 0.
    first_line: usize,
}

impl Window {
    /// Lines to keep around the span: more than the one line of context shown.
    const AROUND: usize = 3;

    fn around(name: &str, source: &Arc<str>, line_starts: &[usize], span: Option<SourceSpan>) -> Self {
        let (offset, len) = span.map_or((0, 0), |s| (s.offset(), s.len()));
        let line_of = |at: usize| line_starts.partition_point(|&start| start <= at).saturating_sub(1);
        let first_line = line_of(offset).saturating_sub(Self::AROUND);
        let last_line = line_of(offset + len) + Self::AROUND + 1;
        let start = line_starts[first_line];
        let end = line_starts.get(last_line).copied().unwrap_or(source.len());
        Self { name: name.to_owned(), source: source.clone(), start, end, first_line }
    }
}

impl miette::SourceCode for Window {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let text: &'a str = &self.source[self.start..self.end];
        let local = SourceSpan::new(span.offset().saturating_sub(self.start).into(), span.len());
        let inner = text.read_span(&local, before, after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            SourceSpan::new((inner.span().offset() + self.start).into(), inner.span().len()),
            inner.line() + self.first_line,
            inner.column(),
            inner.line_count(),
        )))
    }
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
