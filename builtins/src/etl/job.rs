//! One run of `read_zip_csv_chunk`: download → unzip → CSV → steps → objects.
//!
//! Two threads share the work: one downloads and inflates (the archive arrives as a stream and
//! leaves as blocks of CSV bytes, through a small bounded channel), the other parses, reshapes
//! and writes. Memory is bounded by the channel, the CSV reader's buffer, the output buffer and
//! one S3 part — never by the size of the input.

use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use serde_json::{json, Value};

use crate::etl::net::{self, Egress};
use crate::etl::plan::{PlanError, Steps, Writer};
use crate::etl::s3::{self, Credentials, S3Error};
use crate::etl::sinks::{DirSink, S3Sink};
use crate::etl::transform::{MemberCounts, Sink, Transform};
use crate::etl::zipstream::{ZipError, ZipStream};

/// Input rows per output object, unless the call says otherwise.
pub const DEFAULT_CHUNK_ROWS: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Big5,
}

/// The call's arguments, checked.
#[derive(Debug, Clone)]
pub struct Job {
    pub zip_url: String,
    pub steps: Steps,
    pub members: Option<Vec<String>>,
    pub encoding: Encoding,
    pub chunk_rows: u64,
}

/// What the node gives the job: credentials (opened from the tenant's secret by the daemon),
/// the egress rule, the bounds, and where `write_to_dir` may write.
#[derive(Debug, Clone)]
pub struct Env {
    pub credentials: Option<Credentials>,
    pub egress: Egress,
    pub max_download_bytes: u64,
    pub max_uncompressed_bytes: u64,
    pub out_root: Option<PathBuf>,
    /// Told the input rows read so far, every [`PROGRESS_ROWS`] rows at most every
    /// [`PROGRESS_EVERY`] (a background job shows it as its progress).
    pub progress: Option<fn(u64)>,
}

/// Rows between looks at the clock for a progress report.
pub const PROGRESS_ROWS: u64 = 16_384;
/// The least time between progress reports.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Counts input rows and reports them now and then.
struct RowProgress {
    report: Option<fn(u64)>,
    done: u64,
    last: std::time::Instant,
}

impl RowProgress {
    fn row(&mut self) {
        self.done += 1;
        if self.done.is_multiple_of(PROGRESS_ROWS) {
            if let Some(report) = self.report {
                if self.last.elapsed() >= PROGRESS_EVERY {
                    self.last = std::time::Instant::now();
                    report(self.done);
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Egress(String),
    #[error("could not download {url}: {message}")]
    Download { url: String, message: String },
    #[error("the download is larger than the limit of {0} bytes")]
    DownloadTooLarge(u64),
    #[error(transparent)]
    Zip(#[from] ZipError),
    #[error("{member}, line {line}: {message}")]
    Csv {
        member: String,
        line: u64,
        message: String,
    },
    #[error("no member of the archive matched: {0}")]
    NoMembers(String),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("could not write the output: {0}")]
    Output(String),
}

/// What a failure of the output means. An S3 failure travels inside the writer thread's
/// `io::Error` and keeps its own kind (a refused endpoint is `forbidden`); anything else is the
/// output's failure.
fn output_error(e: io::Error) -> JobError {
    if e.get_ref().is_some_and(|inner| inner.is::<S3Error>()) {
        if let Some(Ok(s3)) = e.into_inner().map(|inner| inner.downcast::<S3Error>()) {
            return JobError::S3(*s3);
        }
        return JobError::Output("the S3 writer failed".into());
    }
    JobError::Output(e.to_string())
}

impl JobError {
    /// The answer's error code: the caller's mistakes are `bad_request`, an address the egress
    /// rule refuses is `forbidden`, the rest is the job's own failure.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Plan(_) | JobError::NoMembers(_) => "bad_request",
            JobError::Egress(_) => "forbidden",
            JobError::S3(S3Error::Egress(_)) => "forbidden",
            JobError::S3(S3Error::Url(_)) => "bad_request",
            _ => "function_error",
        }
    }

    /// The exception-like type name of a `function_error`.
    pub fn type_name(&self) -> &'static str {
        match self {
            JobError::Download { .. } | JobError::DownloadTooLarge(_) => "DownloadError",
            JobError::Zip(_) => "ZipError",
            JobError::Csv { .. } => "CsvError",
            JobError::S3(_) => "S3Error",
            JobError::Output(_) => "OutputError",
            _ => "JobError",
        }
    }

    pub fn detail(&self) -> Value {
        match self {
            JobError::Plan(p) => p.detail(),
            JobError::Csv { member, line, .. } => json!({"member": member, "line": line}),
            _ => json!({}),
        }
    }
}

fn bad(field: &str, message: &str) -> PlanError {
    PlanError::Job(format!("{field}: {message}"))
}

impl Job {
    /// Checks the call's keyword arguments (comment keys already dropped).
    pub fn parse(kwargs: &Value) -> Result<Job, PlanError> {
        let obj = kwargs
            .as_object()
            .ok_or_else(|| PlanError::Job("the arguments must be an object".into()))?;
        for key in obj.keys() {
            if !["zip_url", "lst_fn", "members", "encoding", "chunk_rows"].contains(&key.as_str()) {
                return Err(PlanError::Job(format!(
                    "unknown argument {key:?}: use zip_url, lst_fn, members, encoding, chunk_rows"
                )));
            }
        }
        let zip_url = obj
            .get("zip_url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("zip_url", "must be an http(s) URL"))?;
        if !(zip_url.starts_with("http://") || zip_url.starts_with("https://")) {
            return Err(bad("zip_url", "must be an http(s) URL"));
        }
        let steps = Steps::parse(
            obj.get("lst_fn")
                .ok_or_else(|| bad("lst_fn", "is missing"))?,
        )?;
        let members = match obj.get("members") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) if !list.is_empty() => Some(
                list.iter()
                    .map(|m| m.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("members", "must be a list of member names"))?,
            ),
            Some(_) => return Err(bad("members", "must be a non-empty list of member names")),
        };
        let encoding = match obj.get("encoding").and_then(Value::as_str) {
            None => Encoding::Utf8,
            Some(e) => match e.to_ascii_lowercase().replace('_', "-").as_str() {
                "utf-8" | "utf8" | "utf-8-sig" => Encoding::Utf8,
                "big5" | "cp950" | "big5-hkscs" => Encoding::Big5,
                _ => return Err(bad("encoding", "must be utf-8, big5 or cp950")),
            },
        };
        if obj.get("encoding").is_some_and(|e| !e.is_string()) {
            return Err(bad("encoding", "must be a string"));
        }
        let chunk_rows = match obj.get("chunk_rows") {
            None => DEFAULT_CHUNK_ROWS,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=100_000_000).contains(n))
                .ok_or_else(|| bad("chunk_rows", "must be a whole number from 1 to 100000000"))?,
        };
        Ok(Job {
            zip_url: zip_url.to_owned(),
            steps,
            members,
            encoding,
            chunk_rows,
        })
    }
}

enum Block {
    Member(String),
    Data(Vec<u8>),
    End,
    Failed(JobError),
}

/// Reads one member's bytes from the channel.
struct MemberReader<'a> {
    rx: &'a Receiver<Block>,
    current: Vec<u8>,
    at: usize,
    done: bool,
    failed: Option<JobError>,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Block::Data(d)) => {
                    self.current = d;
                    self.at = 0;
                }
                Ok(Block::End) => self.done = true,
                Ok(Block::Failed(e)) => {
                    self.done = true;
                    let message = e.to_string();
                    self.failed = Some(e);
                    return Err(io::Error::other(message));
                }
                Ok(Block::Member(_)) | Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the archive reader stopped"));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..n + self.at]);
        self.at += n;
        Ok(n)
    }
}

/// Big5 (cp950) bytes in, UTF-8 out.
struct Big5Reader<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    input: Vec<u8>,
    output: Vec<u8>,
    at: usize,
    eof: bool,
}

impl<R: Read> Read for Big5Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.output.len() {
            if self.eof {
                return Ok(0);
            }
            self.input.resize(64 << 10, 0);
            let n = self.inner.read(&mut self.input)?;
            self.eof = n == 0;
            self.output.clear();
            self.output.reserve(n * 3 / 2 + 16);
            let cap = self.decoder.max_utf8_buffer_length(n).unwrap_or(n * 3 + 16);
            self.output.resize(cap, 0);
            let (_, _, written, _) =
                self.decoder
                    .decode_to_utf8(&self.input[..n], &mut self.output, self.eof);
            self.output.truncate(written);
            self.at = 0;
        }
        let n = buf.len().min(self.output.len() - self.at);
        buf[..n].copy_from_slice(&self.output[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Counts (and caps) the bytes of the download.
struct Counted<R> {
    inner: R,
    seen: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "download over the limit",
            ));
        }
        Ok(n)
    }
}

/// `data/out/x/` + `dir/name.csv` → `data/out/x/dir/name/`. The member's name comes from the
/// archive: only its plain components are kept (no `..`, no root, no backslashes), so it
/// cannot steer an object out of `directory`, and control characters become `_`.
fn member_prefix(directory: &str, member: &str) -> String {
    let member: String = member
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let member = member.as_str();
    let stem = member
        .strip_suffix(".csv")
        .or_else(|| member.strip_suffix(".CSV"))
        .unwrap_or(member);
    let safe: Vec<&str> = stem
        .split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    let stem = if safe.is_empty() {
        "member".to_owned()
    } else {
        safe.join("/")
    };
    format!("{directory}{stem}/")
}

fn wanted(job: &Job, name: &str) -> bool {
    if name.ends_with('/') {
        return false;
    }
    match &job.members {
        Some(list) => list.iter().any(|m| m == name),
        None => name.to_ascii_lowercase().ends_with(".csv"),
    }
}

/// A relative path that stays inside its root.
fn contained(path: &str) -> bool {
    Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Runs the job; returns the answer's result.
pub fn run(job: &Job, env: &Env) -> Result<Value, JobError> {
    // Everything about the writer is checked before the download starts.
    let writer = job.steps.writer().clone();
    enum Out {
        S3(Box<S3Sink>),
        Dir(DirSink),
    }
    let mut out = match &writer {
        Writer::S3 { s3_url, s3_key, .. } => {
            let creds = env.credentials.clone().ok_or_else(|| {
                PlanError::Job(format!("s3_key: the tenant has no secret named {s3_key:?}"))
            })?;
            let target = s3::Target::parse(s3_url, &creds)?;
            Out::S3(Box::new(S3Sink::new(s3::Client::new(
                target,
                creds,
                env.egress.clone(),
            )?)))
        }
        Writer::Dir { directory } => {
            let root = env.out_root.clone().ok_or_else(|| {
                PlanError::Job(
                    "write_to_dir is for operators: this node has no output directory \
                     (falra serve --etl-output-dir)"
                        .into(),
                )
            })?;
            if !contained(directory) {
                return Err(PlanError::Job(format!(
                    "directory {directory:?} must be a relative path inside the output directory"
                ))
                .into());
            }
            Out::Dir(DirSink::new(root))
        }
    };
    let directory = match &writer {
        Writer::S3 { directory, .. } | Writer::Dir { directory } => directory.clone(),
    };

    let agent = net::agent(env.egress.clone());
    let response = agent.get(&job.zip_url).call().map_err(|e| {
        if let Some(why) = net::denied(&e) {
            return JobError::Egress(why);
        }
        let message = match e {
            ureq::Error::Status(code, _) => format!("the server answered {code}"),
            other => other.to_string(),
        };
        JobError::Download {
            url: job.zip_url.clone(),
            message,
        }
    })?;
    if let Some(len) = response
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if len > env.max_download_bytes {
            return Err(JobError::DownloadTooLarge(env.max_download_bytes));
        }
    }
    let body = Counted {
        inner: response.into_reader(),
        seen: 0,
        limit: env.max_download_bytes,
    };

    let (tx, rx) = sync_channel::<Block>(4);
    let job_for_reader = job.clone();
    let max_uncompressed = env.max_uncompressed_bytes;
    let max_download = env.max_download_bytes;
    let reader = std::thread::spawn(move || {
        let mut zip = ZipStream::new(BufReader::with_capacity(256 << 10, body), max_uncompressed);
        let mut first = true;
        let result: Result<(), JobError> = (|| {
            while let Some(member) = zip.next_member(first)? {
                first = false;
                if !wanted(&job_for_reader, &member.name) {
                    zip.read_member(&member, None)?;
                    continue;
                }
                if tx.send(Block::Member(member.name.clone())).is_err() {
                    return Ok(());
                }
                let mut send = |data: &[u8]| {
                    tx.send(Block::Data(data.to_vec()))
                        .map_err(|_| io::Error::other("the writer stopped"))
                };
                zip.read_member(&member, Some(&mut send))?;
                if tx.send(Block::End).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let e = match e {
                JobError::Zip(ZipError::Io(io)) if io.kind() == io::ErrorKind::FileTooLarge => {
                    JobError::DownloadTooLarge(max_download)
                }
                other => other,
            };
            let _ = tx.send(Block::Failed(e));
        }
    });

    let mut members = Vec::new();
    let mut totals = MemberCounts::default();
    let mut progress = RowProgress {
        report: env.progress,
        done: 0,
        last: std::time::Instant::now(),
    };
    let failure: Option<JobError> = loop {
        let name = match rx.recv() {
            Ok(Block::Member(name)) => name,
            Ok(Block::Failed(e)) => break Some(e),
            Ok(_) => break Some(JobError::Output("the archive reader lost its place".into())),
            Err(_) => break None,
        };
        let prefix = member_prefix(&directory, &name);
        let mut source = MemberReader {
            rx: &rx,
            current: Vec::new(),
            at: 0,
            done: false,
            failed: None,
        };
        let counts = match &mut out {
            Out::S3(sink) => member(
                job,
                &name,
                prefix,
                &mut source,
                sink.as_mut(),
                &mut progress,
            ),
            Out::Dir(sink) => member(job, &name, prefix, &mut source, sink, &mut progress),
        };
        match counts {
            Ok(c) => {
                totals.rows_in += c.rows_in;
                totals.rows_out += c.rows_out;
                totals.objects.extend(c.objects.iter().cloned());
                members.push((name, c));
            }
            Err(e) => break Some(source.failed.take().unwrap_or(e)),
        }
    };
    drop(rx);
    let _ = reader.join();
    if let Some(e) = failure {
        return Err(e);
    }
    if members.is_empty() {
        return Err(JobError::NoMembers(match &job.members {
            Some(list) => format!("{list:?} (the archive has no such member)"),
            None => "the archive has no .csv member".into(),
        }));
    }
    let bytes: u64 = totals.objects.iter().map(|(_, b)| b).sum();
    let requests = match &out {
        Out::S3(s) => Some(s.requests()),
        Out::Dir(_) => None,
    };
    Ok(json!({
        "rows_in": totals.rows_in,
        "rows_out": totals.rows_out,
        "objects_written": totals.objects.len(),
        "bytes_written": bytes,
        "s3_requests": requests,
        "members": members.iter().map(|(name, c)| json!({
            "member": name,
            "rows_in": c.rows_in,
            "rows_out": c.rows_out,
            "objects": c.objects.iter().map(|(k, b)| json!({"key": k, "bytes": b})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    }))
}

/// One member: header → plan → rows.
fn member<S: Sink>(
    job: &Job,
    name: &str,
    prefix: String,
    source: &mut MemberReader<'_>,
    sink: &mut S,
    progress: &mut RowProgress,
) -> Result<MemberCounts, JobError> {
    let input: Box<dyn Read + '_> = match job.encoding {
        Encoding::Utf8 => Box::new(source),
        Encoding::Big5 => Box::new(Big5Reader {
            inner: source,
            decoder: encoding_rs::BIG5.new_decoder_without_bom_handling(),
            input: Vec::new(),
            output: Vec::new(),
            at: 0,
            eof: false,
        }),
    };
    let csv_err = |e: csv::Error| {
        let line = e.position().map(csv::Position::line).unwrap_or(0);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("the row has {len} fields, the header has {expected_len}"),
            csv::ErrorKind::Utf8 { .. } => {
                "the text is not UTF-8 (for Big5 data, pass \"encoding\": \"big5\")".to_owned()
            }
            _ => e.to_string(),
        };
        JobError::Csv {
            member: name.to_owned(),
            line,
            message,
        }
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(1 << 20)
        .from_reader(input);
    let header: Vec<String> = {
        let raw = rdr.byte_headers().map_err(csv_err)?;
        raw.iter()
            .enumerate()
            .map(|(i, h)| {
                let h = if i == 0 {
                    h.strip_prefix(b"\xef\xbb\xbf").unwrap_or(h)
                } else {
                    h
                };
                String::from_utf8(h.to_vec()).map_err(|_| JobError::Csv {
                    member: name.to_owned(),
                    line: 1,
                    message: "the header is not UTF-8 (for Big5 data, pass \"encoding\": \"big5\")"
                        .into(),
                })
            })
            .collect::<Result<_, _>>()?
    };
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(JobError::Csv {
            member: name.to_owned(),
            line: 1,
            message: "the member has no header".into(),
        });
    }
    let plan = job.steps.compile(&header)?;
    let mut t = Transform::new(&plan, sink, prefix, job.chunk_rows);
    let mut rec = csv::ByteRecord::new();
    let out_err = output_error;
    while rdr.read_byte_record(&mut rec).map_err(csv_err)? {
        t.record(&rec).map_err(out_err)?;
        progress.row();
    }
    t.finish().map_err(out_err)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_s3_endpoint_the_egress_rule_refuses_is_forbidden_through_the_writer() {
        use super::S3Error;
        use std::io;
        let refused = io::Error::other(S3Error::Egress("egress to x is not allowed".into()));
        let e = super::output_error(refused);
        assert_eq!(e.code(), "forbidden", "{e}");
        assert!(e.to_string().contains("not allowed"), "{e}");
        let other = super::output_error(io::Error::other("disk full"));
        assert_eq!(other.code(), "function_error");
        assert_eq!(other.type_name(), "OutputError");
    }

    use super::*;

    #[test]
    fn member_names_stay_inside_the_directory() {
        assert_eq!(member_prefix("out/", "a/b.csv"), "out/a/b/");
        assert_eq!(
            member_prefix("out/", "../../etc/cron.d/x.csv"),
            "out/etc/cron.d/x/"
        );
        assert_eq!(member_prefix("", "/abs/x.csv"), "abs/x/");
        assert_eq!(member_prefix("", "..\\..\\x.csv"), "x/");
        assert_eq!(member_prefix("d/", "../.csv"), "d/member/");
        assert_eq!(member_prefix("d/", "a\nb\u{7}/c\0.csv"), "d/a_b_/c_/");
        assert!(contained("a/b/c"));
        assert!(!contained("../a"));
        assert!(!contained("/a"));
    }
}
