//! The two writers: objects in an S3 bucket, or files under the node's output directory.
//!
//! Object names are deterministic (`<directory><member>/part-00000.csv`), so a rerun of the same
//! job overwrites its objects instead of adding copies. A file is written under a temporary
//! name and renamed, so a reader never sees half of one.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::etl::s3::{self, Client};
use crate::etl::transform::Sink;

/// Objects to S3: one `PUT` for an object under one part, a multipart upload otherwise.
pub struct S3Sink {
    client: Client,
    key: String,
    buf: Vec<u8>,
    upload: Option<(String, Vec<String>)>,
    size: u64,
}

impl S3Sink {
    pub fn new(client: Client) -> S3Sink {
        S3Sink {
            client,
            key: String::new(),
            buf: Vec::new(),
            upload: None,
            size: 0,
        }
    }

    pub fn requests(&self) -> u64 {
        self.client.requests
    }

    fn flush_part(&mut self) -> io::Result<()> {
        let to_io = |e: s3::S3Error| io::Error::other(e.to_string());
        if self.upload.is_none() {
            let id = self.client.create_multipart(&self.key).map_err(to_io)?;
            self.upload = Some((id, Vec::new()));
        }
        let (id, etags) = self.upload.as_mut().expect("set above");
        let number = etags.len() as u32 + 1;
        match self.client.upload_part(&self.key, id, number, &self.buf) {
            Ok(etag) => etags.push(etag),
            Err(e) => {
                let id = id.clone();
                self.client.abort_multipart(&self.key, &id);
                self.upload = None;
                return Err(to_io(e));
            }
        }
        self.buf.clear();
        Ok(())
    }
}

impl Sink for S3Sink {
    fn begin(&mut self, name: &str) -> io::Result<()> {
        self.key = name.to_owned();
        self.buf.clear();
        self.upload = None;
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.size += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = s3::PART_BYTES - self.buf.len();
            let n = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == s3::PART_BYTES {
                self.flush_part()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<u64> {
        let to_io = |e: s3::S3Error| io::Error::other(e.to_string());
        match self.upload.take() {
            None => {
                let body = std::mem::take(&mut self.buf);
                self.client.put_object(&self.key, &body).map_err(to_io)?;
            }
            Some(upload) => {
                self.upload = Some(upload);
                if !self.buf.is_empty() {
                    self.flush_part()?;
                }
                let (id, etags) = self.upload.take().expect("still set");
                if let Err(e) = self.client.complete_multipart(&self.key, &id, &etags) {
                    self.client.abort_multipart(&self.key, &id);
                    return Err(to_io(e));
                }
            }
        }
        Ok(self.size)
    }
}

/// Files under a root directory.
pub struct DirSink {
    root: PathBuf,
    current: Option<(PathBuf, PathBuf, io::BufWriter<std::fs::File>)>,
    size: u64,
}

impl DirSink {
    pub fn new(root: PathBuf) -> DirSink {
        DirSink {
            root,
            current: None,
            size: 0,
        }
    }
}

impl Sink for DirSink {
    fn begin(&mut self, name: &str) -> io::Result<()> {
        let path = self.root.join(name);
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent)?;
        let tmp = parent.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("part")
        ));
        let file = std::fs::File::create(&tmp)?;
        self.current = Some((tmp, path, io::BufWriter::with_capacity(1 << 20, file)));
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.size += bytes.len() as u64;
        match self.current.as_mut() {
            Some((_, _, w)) => w.write_all(bytes),
            None => Err(io::Error::other("no object begun")),
        }
    }

    fn finish(&mut self) -> io::Result<u64> {
        let (tmp, path, w) = self
            .current
            .take()
            .ok_or_else(|| io::Error::other("no object begun"))?;
        w.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(tmp, path)?;
        Ok(self.size)
    }
}
