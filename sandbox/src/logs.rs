//! A call's logs, from the bytes its process wrote to the logs pipe to the text an answer shows
//! and the lines a stored call lists.
//!
//! The runner sends `sys.stdout` and `sys.stderr` unbuffered down one pipe, so the logs keep
//! the order things were written in; a line written through `sys.stderr` begins with
//! [`STDERR_MARK`]. Everything else (print, writes to descriptor 1 or 2 below Python, what a
//! subprocess prints) is stdout's. The spawner keeps the first half of the cap and the last
//! half; what lay between is counted and replaced by one marker line.
//!
//! The stored form is the text with the marks kept and the cut as a line beginning with
//! [`CUT_MARK`]; NUL bytes (which PostgreSQL's text refuses) and a tenant's cut marks are
//! replaced, a stderr mark inside a line dropped, so what a tenant prints can never forge a cut or reach the
//! store as anything but text.

use serde::Serialize;

/// Begins a line written through `sys.stderr` (the runner's `_STDERR_MARK`).
pub const STDERR_MARK: char = '\u{2}';
/// Begins the line of the stored form that says where logs were cut.
pub const CUT_MARK: char = '\u{3}';

/// `text` with every occurrence of each of `values` (non-empty, longest first) replaced by
/// `***`.
pub fn mask(text: &str, values: &[String]) -> String {
    let mut out = text.to_owned();
    for v in values.iter().filter(|v| !v.is_empty()) {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

/// Which stream a line was written to, or `falra` for the daemon's own cut marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    Falra,
}

/// One line of a call's logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
}

/// A call's logs in their stored form (see the module's comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logs(String);

impl Logs {
    /// The logs of a finished child: its head, the bytes dropped after it, its tail.
    pub fn from_pipe(head: &[u8], dropped: u64, tail: &[u8]) -> Logs {
        let mut out = clean(head);
        if dropped > 0 || !tail.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push(CUT_MARK);
            out.push_str(&format!(
                "[falra: {dropped} bytes of logs cut here; the first and the last are kept]\n"
            ));
            // The tail starts wherever the cut fell: its first line is whatever was left of
            // one, shown as stdout's.
            out.push_str(&clean(tail));
        }
        Logs(out)
    }

    /// These logs with every occurrence of each of `values` replaced by `***`.
    pub fn masked(self, values: &[String]) -> Logs {
        if values.is_empty() {
            return self;
        }
        Logs(mask(&self.0, values))
    }

    /// Logs read back from the store.
    pub fn from_stored(stored: String) -> Logs {
        Logs(stored)
    }

    pub fn stored(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The logs as one text, in the order written, marks taken out.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for piece in self.0.split_inclusive('\n') {
            out.push_str(piece.strip_prefix([STDERR_MARK, CUT_MARK]).unwrap_or(piece));
        }
        out
    }

    /// The logs line by line, each with its stream.
    pub fn lines(&self) -> Vec<LogLine> {
        self.0
            .lines()
            .map(|line| match line.chars().next() {
                Some(STDERR_MARK) => LogLine {
                    stream: Stream::Stderr,
                    text: line[1..].to_owned(),
                },
                Some(CUT_MARK) => LogLine {
                    stream: Stream::Falra,
                    text: line[1..].to_owned(),
                },
                _ => LogLine {
                    stream: Stream::Stdout,
                    text: line.to_owned(),
                },
            })
            .collect()
    }
}

/// Text from the pipe's bytes: invalid UTF-8, NULs and cut marks replaced, a stderr mark kept
/// only where it begins a line.
fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut at_start = true;
    for c in text.chars() {
        match c {
            '\0' | CUT_MARK => out.push('\u{FFFD}'),
            // Python's stderr began a line while another was half written: the line stays
            // stdout's.
            STDERR_MARK if !at_start => {}
            c => out.push(c),
        }
        at_start = c == '\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_replaces_every_occurrence_longest_first() {
        let values = ["hunter2-long".to_owned(), "hunter2".to_owned()];
        let logs = Logs::from_pipe(b"a hunter2-long b\n\x02hunter2 c\n", 0, b"");
        let masked = logs.masked(&values);
        assert_eq!(masked.text(), "a *** b\n*** c\n");
        assert_eq!(masked.lines()[1].stream, Stream::Stderr);
        assert_eq!(mask("nothing here", &values), "nothing here");
    }

    #[test]
    fn streams_are_marked_per_line_in_the_order_written() {
        let logs = Logs::from_pipe(b"out1\n\x02err1\nout2\n", 0, b"");
        assert_eq!(logs.text(), "out1\nerr1\nout2\n");
        let streams: Vec<_> = logs.lines().iter().map(|l| l.stream).collect();
        assert_eq!(streams, [Stream::Stdout, Stream::Stderr, Stream::Stdout]);
        assert_eq!(logs.lines()[1].text, "err1");
    }

    #[test]
    fn a_cut_keeps_head_and_tail_with_a_marker_between() {
        let logs = Logs::from_pipe(b"first\nsecond", 1234, b"nd-to-last\nlast\n");
        assert_eq!(
            logs.text(),
            "first\nsecond\n[falra: 1234 bytes of logs cut here; the first and the last are kept]\nnd-to-last\nlast\n"
        );
        let lines = logs.lines();
        assert_eq!(lines[2].stream, Stream::Falra);
        assert_eq!(lines.last().unwrap().text, "last");
    }

    #[test]
    fn tenant_bytes_cannot_forge_a_cut_or_reach_the_store_as_nul() {
        let logs = Logs::from_pipe(b"\x03[falra: fake]\nnul\0here x\x02y\n", 0, b"");
        assert!(logs.lines().iter().all(|l| l.stream == Stream::Stdout));
        assert!(!logs.stored().contains('\0'));
        assert_eq!(logs.lines()[1].text, "nul\u{FFFD}here xy");
        let round = Logs::from_stored(logs.stored().to_owned());
        assert_eq!(round, logs);
    }
}
