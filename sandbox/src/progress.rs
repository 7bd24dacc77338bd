//! Progress records: how a child says how far it got while it runs.
//!
//! A child (the runner's `falra.progress`, the built-in ETL) writes a record as one line on
//! its answer channel, before its answer: the byte `RS` (0x1e, which no JSON text begins
//! with), a JSON object, a newline. The supervisor takes such lines out of stdout as they
//! arrive, so they never reach the answer or its size cap, and hands the latest one on
//! ([`Records`]); what it means is the reader's business. A record longer than
//! [`MAX_RECORD_BYTES`] is dropped whole.
//!
//! Records are the child's word and hostile like its answer: the daemon parses them strictly
//! where it reads them, and only ever keeps the latest.

use std::sync::Arc;

use tokio::sync::watch;

/// The byte a progress record begins with.
pub const RECORD_START: u8 = 0x1e;

/// The longest record kept (without its marker and newline).
pub const MAX_RECORD_BYTES: usize = 4096;

/// The splitter of one child's stdout into progress records and the rest.
#[derive(Debug)]
pub struct Records {
    sink: Option<Arc<watch::Sender<Option<Vec<u8>>>>>,
    /// Inside a record, what of it has arrived.
    partial: Vec<u8>,
    in_record: bool,
    /// The record being read is too long: it is skipped to its newline.
    overlong: bool,
    at_line_start: bool,
}

impl Records {
    pub fn new(sink: Option<Arc<watch::Sender<Option<Vec<u8>>>>>) -> Records {
        Records {
            sink,
            partial: Vec::new(),
            in_record: false,
            overlong: false,
            at_line_start: true,
        }
    }

    /// Appends to `rest` what of `chunk` is not a progress record, and publishes each
    /// complete record. Chunks may split a record anywhere.
    pub fn split(&mut self, mut chunk: &[u8], rest: &mut Vec<u8>) {
        while !chunk.is_empty() {
            let newline = chunk.iter().position(|&b| b == b'\n');
            if self.in_record {
                let (body, after) = match newline {
                    Some(i) => (&chunk[..i], Some(&chunk[i + 1..])),
                    None => (chunk, None),
                };
                if self.partial.len() + body.len() > MAX_RECORD_BYTES {
                    self.overlong = true;
                    self.partial.clear();
                } else if !self.overlong {
                    self.partial.extend_from_slice(body);
                }
                match after {
                    Some(after) => {
                        if !self.overlong {
                            self.publish();
                        }
                        self.partial.clear();
                        self.in_record = false;
                        self.overlong = false;
                        self.at_line_start = true;
                        chunk = after;
                    }
                    None => chunk = &[],
                }
            } else if self.at_line_start && chunk[0] == RECORD_START {
                self.in_record = true;
                chunk = &chunk[1..];
            } else {
                match newline {
                    Some(i) => {
                        rest.extend_from_slice(&chunk[..=i]);
                        self.at_line_start = true;
                        chunk = &chunk[i + 1..];
                    }
                    None => {
                        rest.extend_from_slice(chunk);
                        self.at_line_start = false;
                        chunk = &[];
                    }
                }
            }
        }
    }

    fn publish(&mut self) {
        if let Some(sink) = &self.sink {
            sink.send_replace(Some(std::mem::take(&mut self.partial)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>, usize) {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let mut seen = 0;
        let mut rx2 = rx.clone();
        let mut r = Records::new(Some(tx));
        let mut rest = Vec::new();
        for c in chunks {
            r.split(c, &mut rest);
            if rx2.has_changed().unwrap_or(false) {
                rx2.mark_unchanged();
                seen += 1;
            }
        }
        let latest = rx.borrow().clone();
        (rest, latest, seen)
    }

    #[test]
    fn records_are_taken_out_and_the_answer_kept() {
        let (rest, latest, _) =
            run(&[b"\x1e{\"f\":0.5}\n\x1e{\"f\":1}\n{\"ok\":true,\"result\":1}\n"]);
        assert_eq!(rest, b"{\"ok\":true,\"result\":1}\n");
        assert_eq!(latest.as_deref(), Some(&b"{\"f\":1}"[..]));
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_result() {
        let stream: &[u8] = b"\x1e{\"a\":1}\n{\"ok\":true,\"result\":\"x\x1ey\"}\n";
        for cut in 0..=stream.len() {
            let (rest, latest, _) = run(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                rest, b"{\"ok\":true,\"result\":\"x\x1ey\"}\n",
                "cut at {cut}"
            );
            assert_eq!(latest.as_deref(), Some(&b"{\"a\":1}"[..]), "cut at {cut}");
        }
    }

    #[test]
    fn the_marker_only_counts_at_the_start_of_a_line() {
        let (rest, latest, _) = run(&[b"{\"ok\":true,\"result\":\"\x1e{}\"}\n"]);
        assert_eq!(rest, b"{\"ok\":true,\"result\":\"\x1e{}\"}\n");
        assert_eq!(latest, None);
    }

    #[test]
    fn an_overlong_record_is_dropped_whole_and_what_follows_kept() {
        let mut long = vec![RECORD_START];
        long.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        long.push(b'\n');
        let (rest, latest, seen) = run(&[&long[..100], &long[100..], b"\x1e{}\nanswer\n"]);
        assert_eq!(rest, b"answer\n");
        assert_eq!(latest.as_deref(), Some(&b"{}"[..]));
        assert_eq!(seen, 1);
    }

    #[test]
    fn an_unfinished_record_is_never_published() {
        let (rest, latest, _) = run(&[b"\x1e{\"a\":"]);
        assert!(rest.is_empty());
        assert_eq!(latest, None);
    }
}
