//! The two writers: objects in an S3 bucket, or files under the node's output directory.
//!
//! Object names are deterministic (`<directory><member>/part-00000.csv`), so a rerun of the same
//! job overwrites its objects instead of adding copies. A file is written under a temporary
//! name and renamed, so a reader never sees half of one.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

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
        self.client.requests()
    }

    fn flush_part(&mut self) -> io::Result<()> {
        let to_io = io::Error::other::<s3::S3Error>;
        if self.upload.is_none() {
            let id = self.client.create_multipart(&self.key).map_err(to_io)?;
            self.upload = Some((id, Vec::new()));
        }
        let (id, etags) = self.upload.as_mut().expect("set above");
        let number = etags.len() as u32 + 1;
        // The part's buffer goes to the SDK (no copy); the next one is allocated only once it
        // is sent and freed, so at most one part is held.
        let part = std::mem::take(&mut self.buf);
        match self.client.upload_part(&self.key, id, number, part) {
            Ok(etag) => {
                etags.push(etag);
                self.buf.reserve_exact(s3::PART_BYTES);
            }
            Err(e) => {
                let id = id.clone();
                self.client.abort_multipart(&self.key, &id);
                self.upload = None;
                return Err(to_io(e));
            }
        }
        Ok(())
    }
}

impl Drop for S3Sink {
    /// A job that fails mid-object leaves no multipart upload behind (they are billed).
    fn drop(&mut self) {
        if let Some((id, _)) = self.upload.take() {
            let key = std::mem::take(&mut self.key);
            self.client.abort_multipart(&key, &id);
        }
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

    fn write(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        self.size += buf.len() as u64;
        let bytes = std::mem::take(buf);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let room = s3::PART_BYTES - self.buf.len();
            let n = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == s3::PART_BYTES {
                self.flush_part()?;
            }
        }
        *buf = bytes;
        buf.clear();
        Ok(())
    }

    fn finish(&mut self) -> io::Result<u64> {
        let to_io = io::Error::other::<s3::S3Error>;
        match self.upload.take() {
            None => {
                let body = std::mem::take(&mut self.buf);
                self.client.put_object(&self.key, body).map_err(to_io)?;
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

enum Cmd {
    Begin(PathBuf),
    Data(Vec<u8>),
    Finish,
}

/// Files under a root directory, written by a thread of their own so that the kernel's copy
/// of the output overlaps the parsing of the input. Buffers travel to the writer and back.
pub struct DirSink {
    root: PathBuf,
    tx: Option<SyncSender<Cmd>>,
    spare: Receiver<Vec<u8>>,
    done: Receiver<io::Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    size: u64,
}

impl DirSink {
    pub fn new(root: PathBuf) -> DirSink {
        let (tx, rx) = sync_channel::<Cmd>(4);
        let (spare_tx, spare) = sync_channel::<Vec<u8>>(4);
        let (done_tx, done) = sync_channel::<io::Result<()>>(1);
        let thread = std::thread::spawn(move || {
            let mut current: Option<(PathBuf, PathBuf, std::fs::File)> = None;
            let mut failed: Option<io::Error> = None;
            while let Ok(cmd) = rx.recv() {
                match cmd {
                    Cmd::Begin(path) => {
                        failed = None;
                        let parent = path.parent().map(PathBuf::from).unwrap_or_default();
                        let tmp = parent.join(format!(
                            ".{}.{}.tmp",
                            path.file_name().and_then(|n| n.to_str()).unwrap_or("part"),
                            std::process::id()
                        ));
                        if let Some((old, _, _)) = current.take() {
                            let _ = std::fs::remove_file(old);
                        }
                        match std::fs::create_dir_all(&parent)
                            .and_then(|()| std::fs::File::create(&tmp))
                        {
                            Ok(f) => current = Some((tmp, path, f)),
                            Err(e) => failed = Some(e),
                        }
                    }
                    Cmd::Data(mut buf) => {
                        if failed.is_none() {
                            if let Some((_, _, f)) = current.as_mut() {
                                if let Err(e) = f.write_all(&buf) {
                                    failed = Some(e);
                                }
                            }
                        }
                        buf.clear();
                        let _ = spare_tx.try_send(buf);
                    }
                    Cmd::Finish => {
                        let result = match (failed.take(), current.take()) {
                            (Some(e), Some((tmp, _, _))) => {
                                let _ = std::fs::remove_file(tmp);
                                Err(e)
                            }
                            (Some(e), None) => Err(e),
                            (None, Some((tmp, path, _))) => std::fs::rename(tmp, path),
                            (None, None) => Err(io::Error::other("no object begun")),
                        };
                        if done_tx.send(result).is_err() {
                            return;
                        }
                    }
                }
            }
            // The job ended mid-object: its partial file goes.
            if let Some((tmp, _, _)) = current {
                let _ = std::fs::remove_file(tmp);
            }
        });
        DirSink {
            root,
            tx: Some(tx),
            spare,
            done,
            thread: Some(thread),
            size: 0,
        }
    }

    fn send(&self, cmd: Cmd) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(|| io::Error::other("the file writer stopped"))
    }
}

impl Drop for DirSink {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Sink for DirSink {
    fn begin(&mut self, name: &str) -> io::Result<()> {
        self.size = 0;
        self.send(Cmd::Begin(self.root.join(name)))
    }

    fn write(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        self.size += buf.len() as u64;
        let capacity = buf.capacity();
        let replacement = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity));
        let full = std::mem::replace(buf, replacement);
        self.send(Cmd::Data(full))
    }

    fn finish(&mut self) -> io::Result<u64> {
        self.send(Cmd::Finish)?;
        self.done
            .recv()
            .map_err(|_| io::Error::other("the file writer stopped"))??;
        Ok(self.size)
    }
}
