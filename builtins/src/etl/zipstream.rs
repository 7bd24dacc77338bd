//! Reading a zip archive front to back, as it arrives, without seeking.
//!
//! A zip's central directory is at its end, so readers usually need the whole file. This one
//! walks the local headers instead: each member's header, then its data (stored, or deflate,
//! which ends itself), then its data descriptor if the header left the sizes out. That is
//! enough to stream a download straight into the CSV reader. Every member's CRC-32 is checked.
//!
//! Why not the `zip` crate: its streaming reader (`read_zipfile_from_stream`) refuses every
//! member whose sizes follow its data in a descriptor ("the file length is not available in the
//! local header") — what streaming zippers and many web services write — so it cannot read
//! these downloads front to back. This reader is proved instead: a differential test against the
//! crate on the archives both can read, and a `cargo fuzz` target (`fuzz/`, run by the test
//! command) on malformed input.
//!
//! Zip-bomb defences: the uncompressed bytes of the whole archive are capped
//! (`max_unzipped_mb`), so are the members ([`MAX_MEMBERS`]), and past [`RATIO_AFTER`] bytes the
//! archive may not inflate more than [`MAX_RATIO`] times its compressed size. Member names are
//! decoded here and made safe where they become object names (`job::member_prefix`).

use std::io::{self, BufRead, Read};

use flate2::bufread::DeflateDecoder;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL: u32 = 0x0605_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;

/// Members an archive may hold, the skipped ones included.
pub const MAX_MEMBERS: u32 = 10_000;
/// Uncompressed bytes over compressed bytes, at most (CSV compresses some 5–30 times; deflate
/// cannot exceed about 1032).
pub const MAX_RATIO: u64 = 250;
/// The ratio is checked once the archive has inflated this much (small, very regular members
/// are harmless).
pub const RATIO_AFTER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("the download is not a zip archive (it starts with {0:02x?})")]
    NotZip([u8; 4]),
    #[error(
        "member {name:?} uses compression method {method}; only stored and deflate are supported"
    )]
    Method { name: String, method: u16 },
    #[error("member {0:?} is encrypted")]
    Encrypted(String),
    #[error("member {0:?} is corrupt: its CRC-32 does not match")]
    Crc(String),
    #[error("the archive unpacks to more than {0} bytes (the limit); stopped")]
    TooLarge(u64),
    #[error("the archive ends in the middle of a member")]
    Truncated,
    #[error("the archive has more than {0} members (the limit); stopped")]
    TooManyMembers(u32),
    #[error("the archive inflates more than {0} times its compressed size (a zip bomb?); stopped")]
    Ratio(u64),
    #[error("could not read the archive")]
    Io(#[from] io::Error),
}

/// Where a member's uncompressed bytes go, block by block.
pub type Consumer<'a> = &'a mut dyn FnMut(&[u8]) -> io::Result<()>;

/// A member's header.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    zip64: bool,
}

impl Member {
    fn has_descriptor(&self) -> bool {
        self.flags & 0x0008 != 0
    }
}

/// A buffered reader that counts the bytes taken from it.
struct Counting<R> {
    inner: R,
    taken: u64,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.taken += amt as u64;
        self.inner.consume(amt);
    }
}

/// A zip archive read front to back.
pub struct ZipStream<R> {
    inner: Counting<R>,
    /// Uncompressed bytes still allowed.
    budget: u64,
    limit: u64,
    members: u32,
    done: bool,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn read_exact_or_truncated(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ZipError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ZipError::Truncated,
        _ => ZipError::Io(e),
    })
}

/// A member name: UTF-8 when flagged or valid, else Big5 (common in Taiwanese archives made
/// on Windows), else each byte as one character.
fn decode_name(raw: &[u8], utf8_flag: bool) -> String {
    if utf8_flag {
        return String::from_utf8_lossy(raw).into_owned();
    }
    if let Ok(s) = std::str::from_utf8(raw) {
        return s.to_owned();
    }
    let (text, _, bad) = encoding_rs::BIG5.decode(raw);
    if !bad {
        return text.into_owned();
    }
    raw.iter().map(|&b| b as char).collect()
}

impl<R: BufRead> ZipStream<R> {
    pub fn new(inner: R, max_uncompressed: u64) -> ZipStream<R> {
        ZipStream {
            inner: Counting { inner, taken: 0 },
            budget: max_uncompressed,
            limit: max_uncompressed,
            members: 0,
            done: false,
        }
    }

    /// The next member's header, or `None` after the last member.
    pub fn next_member(&mut self, first: bool) -> Result<Option<Member>, ZipError> {
        if self.done {
            return Ok(None);
        }
        let mut sig = [0u8; 4];
        read_exact_or_truncated(&mut self.inner, &mut sig)?;
        match u32::from_le_bytes(sig) {
            LOCAL_HEADER => {}
            CENTRAL_HEADER | END_OF_CENTRAL if !first => {
                self.done = true;
                return Ok(None);
            }
            _ => return Err(ZipError::NotZip(sig)),
        }
        self.members += 1;
        if self.members > MAX_MEMBERS {
            return Err(ZipError::TooManyMembers(MAX_MEMBERS));
        }
        let mut h = [0u8; 26];
        read_exact_or_truncated(&mut self.inner, &mut h)?;
        let flags = u16_at(&h, 2);
        let method = u16_at(&h, 4);
        let crc = u32_at(&h, 10);
        let mut compressed = u64::from(u32_at(&h, 14));
        let name_len = usize::from(u16_at(&h, 22));
        let extra_len = usize::from(u16_at(&h, 24));
        let mut name = vec![0u8; name_len];
        read_exact_or_truncated(&mut self.inner, &mut name)?;
        let mut extra = vec![0u8; extra_len];
        read_exact_or_truncated(&mut self.inner, &mut extra)?;
        let name = decode_name(&name, flags & 0x0800 != 0);
        // A zip64 extra field carries the real sizes.
        let mut zip64 = false;
        let mut i = 0;
        while i + 4 <= extra.len() {
            let id = u16_at(&extra, i);
            let len = usize::from(u16_at(&extra, i + 2));
            if id == 0x0001 && i + 4 + len <= extra.len() && len >= 16 {
                zip64 = true;
                compressed = u64_at(&extra, i + 12);
            }
            i += 4 + len;
        }
        if flags & 0x0001 != 0 {
            return Err(ZipError::Encrypted(name));
        }
        if method != 0 && method != 8 {
            return Err(ZipError::Method { name, method });
        }
        Ok(Some(Member {
            name,
            method,
            flags,
            crc,
            compressed,
            zip64,
        }))
    }

    /// Reads `member`'s data, handing the uncompressed bytes to `each` in blocks; checks the
    /// CRC and reads the data descriptor. With `each` = `None` the data is skipped.
    pub fn read_member(
        &mut self,
        member: &Member,
        mut each: Option<Consumer<'_>>,
    ) -> Result<(), ZipError> {
        if each.is_none() && !member.has_descriptor() {
            // The size is known: skip the compressed bytes without inflating them.
            let skipped = io::copy(
                &mut (&mut self.inner).take(member.compressed),
                &mut io::sink(),
            )?;
            if skipped != member.compressed {
                return Err(ZipError::Truncated);
            }
            return Ok(());
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let limit = self.limit;
        let budget = &mut self.budget;
        let mut take = |data: &[u8],
                        hasher: &mut crc32fast::Hasher,
                        compressed: u64|
         -> Result<(), ZipError> {
            let n = data.len() as u64;
            if n > *budget {
                return Err(ZipError::TooLarge(limit));
            }
            *budget -= n;
            let inflated = limit - *budget;
            if inflated > RATIO_AFTER && inflated / compressed.max(1) > MAX_RATIO {
                return Err(ZipError::Ratio(MAX_RATIO));
            }
            hasher.update(data);
            if let Some(f) = each.as_mut() {
                f(data)?;
            }
            Ok(())
        };
        match member.method {
            0 => {
                if member.has_descriptor() {
                    return Err(ZipError::Method {
                        name: member.name.clone(),
                        method: 0,
                    });
                }
                let base = self.inner.taken;
                let mut r = (&mut self.inner).take(member.compressed);
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    let taken = base + (member.compressed - r.limit());
                    take(&buf[..n], &mut hasher, taken)?;
                }
                if r.limit() != 0 {
                    return Err(ZipError::Truncated);
                }
            }
            _ => {
                let mut d = DeflateDecoder::new(&mut self.inner);
                loop {
                    let n = match d.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            return Err(ZipError::Truncated)
                        }
                        Err(e) => return Err(ZipError::Io(e)),
                    };
                    if n == 0 {
                        break;
                    }
                    let taken = d.get_ref().taken;
                    take(&buf[..n], &mut hasher, taken)?;
                }
            }
        }
        let mut crc = member.crc;
        if member.has_descriptor() {
            let mut first = [0u8; 4];
            read_exact_or_truncated(&mut self.inner, &mut first)?;
            let mut rest = vec![0u8; if member.zip64 { 16 } else { 8 }];
            if u32::from_le_bytes(first) == DESCRIPTOR {
                let mut c = [0u8; 4];
                read_exact_or_truncated(&mut self.inner, &mut c)?;
                crc = u32::from_le_bytes(c);
            } else {
                crc = u32::from_le_bytes(first);
            }
            read_exact_or_truncated(&mut self.inner, &mut rest)?;
        }
        if hasher.finalize() != crc {
            return Err(ZipError::Crc(member.name.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A zip written by Python's zipfile (sizes in the headers) and one with data descriptors.
    fn python_zip(descriptor: bool) -> Vec<u8> {
        let script = if descriptor {
            "import io, sys, zipfile\nb = io.BytesIO()\nclass W:\n    def __init__(s): s.b = io.BytesIO()\n    def write(s, d): return s.b.write(d)\n    def flush(s): pass\n    def tell(s): return s.b.tell()\nw = W()\nwith zipfile.ZipFile(w, 'w', zipfile.ZIP_DEFLATED) as z:\n    with z.open('a.csv', 'w') as f: f.write(b'x,y\\n1,2\\n' * 1000)\n    with z.open('b.txt', 'w') as f: f.write(b'hello')\nsys.stdout.buffer.write(w.b.getvalue())\n"
        } else {
            "import io, sys, zipfile\nb = io.BytesIO()\nwith zipfile.ZipFile(b, 'w', zipfile.ZIP_DEFLATED) as z:\n    z.writestr('數據/a.csv', b'x,y\\n1,2\\n' * 1000)\n    z.writestr('b.txt', b'hello', zipfile.ZIP_STORED)\nsys.stdout.buffer.write(b.getvalue())\n"
        };
        python(script)
    }

    /// What a Python script writes to stdout.
    fn python(script: &str) -> Vec<u8> {
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    /// The `zip` crate's streaming reader on the same bytes.
    fn crate_members(zip: &[u8]) -> zip::result::ZipResult<Vec<(String, Vec<u8>)>> {
        let mut r = io::Cursor::new(zip);
        let mut all = Vec::new();
        while let Some(mut f) = zip::read::read_zipfile_from_stream(&mut r)? {
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            let name = f.name()?.into_owned();
            all.push((name, data));
        }
        Ok(all)
    }

    #[test]
    fn zip64_members_with_descriptors_stream_out() {
        // Written to a sink that cannot seek: sizes in a zip64 data descriptor after the data.
        let zip = python(
            "import io, sys, zipfile\n\
             class W(io.RawIOBase):\n\
             \x20   def __init__(s): s.b = io.BytesIO()\n\
             \x20   def writable(s): return True\n\
             \x20   def write(s, d): return s.b.write(d)\n\
             \x20   def tell(s): return s.b.tell()\n\
             w = W()\n\
             with zipfile.ZipFile(w, 'w', zipfile.ZIP_DEFLATED) as z:\n\
             \x20   with z.open('big.csv', 'w', force_zip64=True) as f: f.write(b'a,b\\n' * 5000)\n\
             \x20   with z.open('after.txt', 'w') as f: f.write(b'still here')\n\
             sys.stdout.buffer.write(w.b.getvalue())\n",
        );
        let all = members(&zip, 1 << 20).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1, b"a,b\n".repeat(5000));
        assert_eq!(all[1], ("after.txt".to_owned(), b"still here".to_vec()));
    }

    #[test]
    fn the_zip_crate_agrees_where_it_can_read_and_refuses_descriptors() {
        let plain = python_zip(false);
        assert_eq!(
            members(&plain, 1 << 20).unwrap(),
            crate_members(&plain).unwrap()
        );
        // Sizes after the data: what this reader exists for.
        let streamed = python_zip(true);
        let e = crate_members(&streamed).unwrap_err();
        assert!(e.to_string().contains("not available"), "{e}");
        assert_eq!(members(&streamed, 1 << 20).unwrap().len(), 2);
    }

    fn members(zip: &[u8], limit: u64) -> Result<Vec<(String, Vec<u8>)>, ZipError> {
        let mut z = ZipStream::new(io::BufReader::new(zip), limit);
        let mut all = Vec::new();
        let mut first = true;
        while let Some(m) = z.next_member(first)? {
            first = false;
            let mut data = Vec::new();
            let mut keep = |b: &[u8]| data.write_all(b);
            z.read_member(&m, Some(&mut keep))?;
            all.push((m.name, data));
        }
        Ok(all)
    }

    #[test]
    fn members_stream_out_in_order_with_and_without_descriptors() {
        for descriptor in [false, true] {
            let zip = python_zip(descriptor);
            let all = members(&zip, 1 << 20).unwrap();
            assert_eq!(all.len(), 2, "descriptor {descriptor}");
            assert!(all[0].0.ends_with("a.csv"));
            assert_eq!(all[0].1, b"x,y\n1,2\n".repeat(1000));
            assert_eq!(all[1], ("b.txt".to_owned(), b"hello".to_vec()));
        }
        assert_eq!(
            members(&python_zip(false), 1 << 20).unwrap()[0].0,
            "數據/a.csv"
        );
    }

    #[test]
    fn bombs_corruption_and_non_zips_are_errors() {
        let zip = python_zip(false);
        assert!(matches!(members(&zip, 100), Err(ZipError::TooLarge(100))));
        assert!(matches!(
            members(b"PK\x05\x06nope", 100),
            Err(ZipError::NotZip(_))
        ));
        assert!(matches!(
            members(b"hello, world", 100),
            Err(ZipError::NotZip(_))
        ));
        assert!(matches!(
            members(&zip[..zip.len() / 3], 1 << 20),
            Err(ZipError::Truncated | ZipError::Io(_))
        ));
        // A bomb under the size cap still stops at the ratio: 80 MiB of zeros in 80 KiB.
        let bomb = python(
            "import io, zipfile, sys\n\
             b = io.BytesIO()\n\
             with zipfile.ZipFile(b, 'w', zipfile.ZIP_DEFLATED) as z:\n\
             \x20   z.writestr('zeros.csv', bytes(80 << 20))\n\
             sys.stdout.buffer.write(b.getvalue())\n",
        );
        assert!(matches!(
            members(&bomb, 1 << 30),
            Err(ZipError::Ratio(MAX_RATIO))
        ));
        // More members than allowed, even empty ones.
        let many = python(
            "import io, zipfile, sys\n\
             b = io.BytesIO()\n\
             with zipfile.ZipFile(b, 'w') as z:\n\
             \x20   [z.writestr(f'{i}.txt', b'') for i in range(10001)]\n\
             sys.stdout.buffer.write(b.getvalue())\n",
        );
        assert!(matches!(
            members(&many, 1 << 30),
            Err(ZipError::TooManyMembers(MAX_MEMBERS))
        ));
        // Flip a byte of the stored member's data: its CRC no longer matches.
        let mut bad = zip.clone();
        let at = bad.windows(5).position(|w| w == b"hello").unwrap();
        bad[at] = b'j';
        assert!(matches!(members(&bad, 1 << 20), Err(ZipError::Crc(_))));
    }
}
