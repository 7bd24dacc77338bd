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
use serde_json::Value;

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

/// What a call's logs, errors and progress must not show: each secret value as written, as
/// JSON and Python's `repr` escape it, and, for a value of several lines, each line (a line
/// written through stderr is stored behind its mark, and a logging handler writes one line at
/// a time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masker(Vec<String>);

impl Masker {
    /// A masker of `values`; forms shorter than `min_bytes` are left alone (masking every
    /// "1" or "on" would hide more than it protects).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>, min_bytes: usize) -> Masker {
        let mut forms: Vec<String> = Vec::new();
        for v in values {
            let mut pieces = vec![v];
            if v.contains('\n') {
                pieces.extend(v.lines().map(|l| l.trim_end_matches('\r')));
            }
            for piece in pieces {
                let json = serde_json::to_string(piece).expect("a string serialises");
                let json = json[1..json.len() - 1].to_owned();
                // Python's json.dumps writes everything past ASCII as \uXXXX by default.
                let ascii: String = json
                    .chars()
                    .flat_map(|c| {
                        if c.is_ascii() {
                            vec![c.to_string()]
                        } else {
                            let mut units = [0u16; 2];
                            c.encode_utf16(&mut units)
                                .iter()
                                .map(|u| format!("\\u{u:04x}"))
                                .collect()
                        }
                    })
                    .collect();
                let python = |quote: bool| -> String {
                    let mut out = String::with_capacity(piece.len());
                    for c in piece.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            '\t' => out.push_str("\\t"),
                            '\'' if quote => out.push_str("\\'"),
                            c if c.is_ascii_control() => {
                                out.push_str(&format!("\\x{:02x}", c as u8))
                            }
                            c => out.push(c),
                        }
                    }
                    out
                };
                forms.extend([piece.to_owned(), json, ascii, python(true), python(false)]);
            }
        }
        forms.retain(|f| f.len() >= min_bytes);
        // Longest first, so a form that contains another is masked whole.
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Masker(forms)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn text(&self, text: &str) -> String {
        mask(text, &self.0)
    }

    /// Every string of `value` (not its keys: those are the daemon's own fields).
    pub fn value(&self, value: Value) -> Value {
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, self.value(v))).collect())
            }
            other => other,
        }
    }

    /// Every text a child's failure carries.
    pub fn failure(&self, failure: crate::ChildFailure) -> crate::ChildFailure {
        use crate::ChildFailure;
        if self.is_empty() {
            return failure;
        }
        match failure {
            ChildFailure::FunctionError {
                type_name,
                message,
                traceback,
            } => ChildFailure::FunctionError {
                type_name: self.text(&type_name),
                message: self.text(&message),
                traceback: self.text(&traceback),
            },
            ChildFailure::FnNotFound { message, detail } => ChildFailure::FnNotFound {
                message: self.text(&message),
                detail: self.value(detail),
            },
            ChildFailure::ResultNotSerializable { message, detail } => {
                ChildFailure::ResultNotSerializable {
                    message: self.text(&message),
                    detail: self.value(detail),
                }
            }
            other => other,
        }
    }
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

    /// These logs with what `masker` masks replaced by `***`.
    pub fn masked(self, masker: &Masker) -> Logs {
        if masker.is_empty() {
            return self;
        }
        Logs(masker.text(&self.0))
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
    fn masking_replaces_every_form_of_a_value_longest_first() {
        let masker = Masker::new(["hunter2-long", "hunter2", "ab"], 4);
        let logs = Logs::from_pipe(b"a hunter2-long b\n\x02hunter2 c ab\n", 0, b"");
        let masked = logs.masked(&masker);
        assert_eq!(
            masked.text(),
            "a *** b\n*** c ab\n",
            "two bytes are left alone"
        );
        assert_eq!(masked.lines()[1].stream, Stream::Stderr);
        assert_eq!(masker.text("nothing here"), "nothing here");

        // A key of several lines, written through stderr (each line behind its mark), and
        // as repr and JSON escape it.
        let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAK\nit's\\here\n-----END KEY-----";
        let masker = Masker::new([pem], 4);
        let stderr = format!("\x02{}\n", pem.replace('\n', "\n\x02"));
        let shown = Logs::from_pipe(stderr.as_bytes(), 0, b"")
            .masked(&masker)
            .text();
        assert!(
            !shown.contains("MIIBOgIBAAJBAK") && !shown.contains("here"),
            "{shown}"
        );
        let repr = r"ValueError: bad key '-----BEGIN KEY-----\nMIIBOgIBAAJBAK\nit\'s\\here\n-----END KEY-----'";
        assert!(
            !masker.text(repr).contains("MIIBOgIBAAJBAK"),
            "{}",
            masker.text(repr)
        );
        let json = serde_json::to_string(pem).unwrap();
        assert_eq!(masker.text(&json), "\"***\"");
        let umlauts = Masker::new(["pässwörd-123"], 4);
        assert_eq!(
            umlauts.text(r#"{"pw": "p\u00e4ssw\u00f6rd-123"}"#),
            r#"{"pw": "***"}"#
        );
        let escape = Masker::new(["key\u{1b}[31m-9"], 4);
        assert_eq!(escape.text(r"'key\x1b[31m-9'"), "'***'");
        let failure = masker.failure(crate::ChildFailure::ResultNotSerializable {
            message: "result['MIIBOgIBAAJBAK'] cannot be converted".into(),
            detail: serde_json::json!({"path": "result['MIIBOgIBAAJBAK']"}),
        });
        assert!(
            !format!("{failure:?}").contains("MIIBOgIBAAJBAK"),
            "{failure:?}"
        );
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
