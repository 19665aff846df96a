//! What reaches a terminal: text whose control characters cannot move the
//! cursor, rewrite a line already printed, ring the bell or change the
//! terminal's settings. A program's output (and anything else a log line
//! quotes: a path a client sent, a tier's name) passes through here.
//!
//! Colours (SGR sequences, `ESC [ … m`) are kept when the text goes to a
//! terminal; every other escape sequence (cursor moves, erasing, titles,
//! the 8-bit CSI) is removed, and every other control character but a tab
//! and a line feed is shown escaped (`\r`, `\x07`, `\u{9b}`).

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` made safe for a terminal; with `colours`, its SGR sequences kept.
pub fn sanitize(text: &str, colours: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\x1b' | '\u{9b}' => {
                // CSI: `ESC [` or the 8-bit `\u{9b}`, parameters, then a final byte in @..~.
                let csi = c == '\u{9b}' || chars.next_if(|(_, c)| *c == '[').is_some();
                if csi {
                    let start = chars.peek().map_or(text.len(), |(i, _)| *i);
                    let mut end = None;
                    for (i, c) in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            end = Some((i, c));
                            break;
                        }
                    }
                    if let Some((i, 'm')) = end
                        && colours
                        && c == '\x1b'
                        && text[start..i].bytes().all(|b| b.is_ascii_digit() || b == b';' || b == b':')
                    {
                        out.push_str(&text[at..=i]);
                    }
                } else if chars.next_if(|(_, c)| *c == ']' || *c == 'P' || *c == '_' || *c == '^').is_some() {
                    // OSC, DCS and the like: up to BEL or ST (`ESC \`).
                    while let Some((_, c)) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if(|(_, c)| *c == '\\').is_some()) {
                            break;
                        }
                    }
                } else {
                    // ESC, intermediate bytes (space to `/`), a final byte.
                    while chars.next_if(|(_, c)| (' '..='/').contains(c)).is_some() {}
                    chars.next();
                }
            }
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A writer that [`sanitize`]s each event it is given (a whole formatted
/// line, as the `tracing` formatter writes it) on its way to `inner`.
#[derive(Debug)]
pub struct Sanitized<W> {
    inner: W,
    colours: bool,
}

impl<W: std::io::Write> std::io::Write for Sanitized<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(sanitize(&text, self.colours).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Standard error, each line [`sanitize`]d (its colours kept if `colours`).
#[derive(Clone, Copy, Debug)]
pub struct SanitizedStderr {
    pub colours: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SanitizedStderr {
    type Writer = Sanitized<std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Sanitized { inner: std::io::stderr(), colours: self.colours }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_kept_for_a_terminal_and_nothing_else_is() {
        let coloured = "\x1b[31mred\x1b[0m \x1b[1;4mbold\x1b[m";
        assert_eq!(sanitize(coloured, true), coloured);
        assert_eq!(sanitize(coloured, false), "red bold");
        // Cursor moves, erasing, a title, a charset switch: gone.
        assert_eq!(sanitize("a\x1b[2Kb\x1b[1Ac\x1b]0;title\x07d\x1b(0e", true), "abcde");
        // The 8-bit CSI is a CSI: its sequence goes too, colour or not.
        assert_eq!(sanitize("a\u{9b}31mb\u{9b}2Jc", true), "abc");
        // An OSC ended by ST.
        assert_eq!(sanitize("a\x1b]8;;http://x\x1b\\b", true), "ab");
    }

    #[test]
    fn other_control_characters_are_shown_escaped() {
        assert_eq!(sanitize("progress 10%\rprogress 99%", true), "progress 10%\\rprogress 99%");
        assert_eq!(sanitize("ding\x07 back\x08", false), "ding\\x07 back\\x08");
        assert_eq!(sanitize("c1 \u{85} next", false), "c1 \\u{85} next");
        assert_eq!(sanitize("tab\tand\nline", false), "tab\tand\nline");
        assert!(matches!(sanitize("plain é ✓", true), Cow::Borrowed(_)));
        // A sequence cut short by the end of the line.
        assert_eq!(sanitize("cut \x1b[31", true), "cut ");
        assert_eq!(sanitize("cut \x1b", true), "cut ");
    }
}
