//! The hot loop: CSV records in, reshaped CSV rows out, one output object per chunk.
//!
//! Each input record fans out into one row per melted column (or one row if nothing is
//! melted); every field is written straight from the record's bytes, quoted only when it has
//! to be. The output of a chunk goes to a [`Sink`] that was told its object's name.

use std::io;

use csv::ByteRecord;

use crate::etl::plan::{Compiled, Source};

/// Where the objects of one member go.
pub trait Sink {
    /// Starts the object `name` (relative: `<member>/part-00000.csv`).
    fn begin(&mut self, name: &str) -> io::Result<()>;
    /// Takes the bytes in `buf`. A sink may keep the allocation and leave another (empty) one
    /// in its place; either way `buf` is empty afterwards.
    fn write(&mut self, buf: &mut Vec<u8>) -> io::Result<()>;
    /// Finishes the current object; returns its size in bytes.
    fn finish(&mut self) -> io::Result<u64>;
}

/// Appends `field` to `out` as a CSV field.
#[inline]
pub fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    let needs_quotes = field
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for &b in field {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// What came out of one member.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberCounts {
    pub rows_in: u64,
    pub rows_out: u64,
    pub objects: Vec<(String, u64)>,
}

/// A stretch of an output row: input fields (rendered once per record, shared by every row
/// the record fans out into), the melted column's name, or its value.
#[derive(Debug, Clone)]
enum Segment {
    Inputs(Vec<usize>),
    Vertical,
    Value,
}

/// Turns records into output rows, chunk by chunk.
pub struct Transform<'a, S: Sink> {
    plan: &'a Compiled,
    sink: &'a mut S,
    prefix: String,
    chunk_rows: u64,
    header_line: Vec<u8>,
    /// The melted columns' names, already quoted as CSV fields.
    melt_names: Vec<Vec<u8>>,
    segments: Vec<Segment>,
    /// Each `Segment::Inputs` of the current record, rendered.
    rendered: Vec<Vec<u8>>,
    buf: Vec<u8>,
    in_chunk: u64,
    open: bool,
    pub counts: MemberCounts,
}

/// Flush to the sink once this much output has gathered.
const FLUSH_BYTES: usize = 1 << 20;

impl<'a, S: Sink> Transform<'a, S> {
    pub fn new(plan: &'a Compiled, sink: &'a mut S, prefix: String, chunk_rows: u64) -> Self {
        let mut header_line = Vec::new();
        for (i, h) in plan.header.iter().enumerate() {
            if i > 0 {
                header_line.push(b',');
            }
            push_field(&mut header_line, h.as_bytes());
        }
        header_line.push(b'\n');
        let mut segments: Vec<Segment> = Vec::new();
        for source in &plan.fields {
            match (source, segments.last_mut()) {
                (Source::Input(i), Some(Segment::Inputs(run))) => run.push(*i),
                (Source::Input(i), _) => segments.push(Segment::Inputs(vec![*i])),
                (Source::Vertical, _) => segments.push(Segment::Vertical),
                (Source::Value, _) => segments.push(Segment::Value),
            }
        }
        let runs = segments
            .iter()
            .filter(|s| matches!(s, Segment::Inputs(_)))
            .count();
        Transform {
            plan,
            sink,
            prefix,
            chunk_rows: chunk_rows.max(1),
            header_line,
            melt_names: plan
                .melt
                .iter()
                .map(|(n, _)| {
                    let mut q = Vec::new();
                    push_field(&mut q, n.as_bytes());
                    q
                })
                .collect(),
            segments,
            rendered: vec![Vec::new(); runs],
            buf: Vec::with_capacity(FLUSH_BYTES + (64 << 10)),
            in_chunk: 0,
            open: false,
            counts: MemberCounts::default(),
        }
    }

    fn object_name(&self) -> String {
        format!("{}part-{:05}.csv", self.prefix, self.counts.objects.len())
    }

    fn start_object(&mut self) -> io::Result<()> {
        let name = self.object_name();
        self.sink.begin(&name)?;
        self.buf.extend_from_slice(&self.header_line);
        self.open = true;
        Ok(())
    }

    fn end_object(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.sink.write(&mut self.buf)?;
        }
        let size = self.sink.finish()?;
        let name = self.object_name();
        self.counts.objects.push((name, size));
        self.open = false;
        self.in_chunk = 0;
        Ok(())
    }

    /// One input record.
    pub fn record(&mut self, rec: &ByteRecord) -> io::Result<()> {
        if !self.open {
            self.start_object()?;
        }
        self.counts.rows_in += 1;
        let plan = self.plan;
        let mut k = 0;
        for segment in &self.segments {
            if let Segment::Inputs(fields) = segment {
                let out = &mut self.rendered[k];
                out.clear();
                for (j, &i) in fields.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    push_field(out, &rec[i]);
                }
                k += 1;
            }
        }
        if plan.melt.is_empty() {
            if self.passes(rec, None) {
                self.row(rec, None);
            }
        } else {
            for m in 0..plan.melt.len() {
                let value = &rec[plan.melt[m].1];
                if plan.drop_empty && value.is_empty() {
                    continue;
                }
                if self.passes(rec, Some(m)) {
                    self.row(rec, Some(m));
                }
            }
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.sink.write(&mut self.buf)?;
        }
        self.in_chunk += 1;
        if self.in_chunk >= self.chunk_rows {
            self.end_object()?;
        }
        Ok(())
    }

    #[inline]
    fn field<'r>(&'r self, rec: &'r ByteRecord, source: Source, m: Option<usize>) -> &'r [u8] {
        match (source, m) {
            (Source::Input(i), _) => &rec[i],
            (Source::Vertical, Some(m)) => self.plan.melt[m].0.as_bytes(),
            (Source::Value, Some(m)) => &rec[self.plan.melt[m].1],
            _ => b"",
        }
    }

    #[inline]
    fn passes(&self, rec: &ByteRecord, m: Option<usize>) -> bool {
        self.plan
            .filters
            .iter()
            .all(|(source, value)| self.field(rec, *source, m) == value.as_bytes())
    }

    #[inline]
    fn row(&mut self, rec: &ByteRecord, m: Option<usize>) {
        let buf = &mut self.buf;
        let mut k = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            match segment {
                Segment::Inputs(_) => {
                    buf.extend_from_slice(&self.rendered[k]);
                    k += 1;
                }
                Segment::Vertical => {
                    if let Some(m) = m {
                        buf.extend_from_slice(&self.melt_names[m]);
                    }
                }
                Segment::Value => {
                    if let Some(m) = m {
                        push_field(buf, &rec[self.plan.melt[m].1]);
                    }
                }
            }
        }
        buf.push(b'\n');
        self.counts.rows_out += 1;
    }

    /// Ends the member: the last (partial) object is finished; a member without rows still
    /// gets one object with the header, so its output exists.
    pub fn finish(mut self) -> io::Result<MemberCounts> {
        if self.open || self.counts.objects.is_empty() {
            if !self.open {
                self.start_object()?;
            }
            self.end_object()?;
        }
        Ok(self.counts)
    }
}

/// A sink that keeps objects in memory (tests).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub objects: Vec<(String, Vec<u8>)>,
    current: Option<(String, Vec<u8>)>,
}

impl Sink for MemorySink {
    fn begin(&mut self, name: &str) -> io::Result<()> {
        self.current = Some((name.to_owned(), Vec::new()));
        Ok(())
    }
    fn write(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if let Some((_, b)) = self.current.as_mut() {
            b.extend_from_slice(buf);
        }
        buf.clear();
        Ok(())
    }
    fn finish(&mut self) -> io::Result<u64> {
        let (name, data) = self.current.take().unwrap_or_default();
        let n = data.len() as u64;
        self.objects.push((name, data));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etl::plan::Steps;
    use serde_json::json;

    fn run(steps: serde_json::Value, csv_text: &str, chunk: u64) -> (MemorySink, MemberCounts) {
        let mut rdr = csv::ReaderBuilder::new().from_reader(csv_text.as_bytes());
        let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_owned).collect();
        let plan = Steps::parse(&steps).unwrap().compile(&header).unwrap();
        let mut sink = MemorySink::default();
        let counts = {
            let mut t = Transform::new(&plan, &mut sink, "m/".into(), chunk);
            let mut rec = ByteRecord::new();
            while rdr.read_byte_record(&mut rec).unwrap() {
                t.record(&rec).unwrap();
            }
            t.finish().unwrap()
        };
        (sink, counts)
    }

    #[test]
    fn wide_rows_melt_in_listed_order_carrying_the_rest() {
        let steps = json!([
            {"fn": "rename_col", "dic_mapping": {"a": "A"}},
            {"fn": "horizontal_to_vertical", "lst_horizontal_col": ["b", "a"], "vertical_col": "k"},
            {"fn": "clone_col", "dic_mapping": {"t": "t2"}},
            {"fn": "write_to_dir"}
        ]);
        let (sink, counts) = run(steps, "t,a,b\n1,x,\n2,\"q,\"\"z\",y\n", 100);
        assert_eq!(counts.rows_in, 2);
        assert_eq!(counts.rows_out, 4);
        assert_eq!(sink.objects.len(), 1);
        assert_eq!(sink.objects[0].0, "m/part-00000.csv");
        assert_eq!(
            String::from_utf8(sink.objects[0].1.clone()).unwrap(),
            "t,k,value,t2\n1,b,,1\n1,A,x,1\n2,b,y,2\n2,A,\"q,\"\"z\",2\n"
        );
    }

    #[test]
    fn chunks_drop_empty_and_filters() {
        let steps = json!([
            {"fn": "horizontal_to_vertical", "lst_horizontal_col": ["a", "b"],
             "vertical_col": "k", "value_col": "v", "drop_empty": true},
            {"fn": "filter_eq", "col": "k", "value": "a"},
            {"fn": "write_to_dir"}
        ]);
        let (sink, counts) = run(steps, "t,a,b\n1,x,\n2,,y\n3,z,w\n", 2);
        assert_eq!(counts.rows_in, 3);
        assert_eq!(counts.rows_out, 2);
        let names: Vec<&str> = sink.objects.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["m/part-00000.csv", "m/part-00001.csv"]);
        assert_eq!(sink.objects[0].1, b"t,k,v\n1,a,x\n");
        assert_eq!(sink.objects[1].1, b"t,k,v\n3,a,z\n");
    }

    #[test]
    fn an_empty_member_still_gets_its_header() {
        let (sink, counts) = run(json!([{"fn": "write_to_dir"}]), "a,b\n", 10);
        assert_eq!(counts.rows_in, 0);
        assert_eq!(
            sink.objects,
            [("m/part-00000.csv".to_owned(), b"a,b\n".to_vec())]
        );
    }
}
