//! Times Falra's streaming zip reader against the `zip` crate's (`read_zipfile_from_stream`)
//! on one archive, both inflating every member from memory front to back with its CRC-32
//! checked. The archive's members must carry their sizes in the local headers, the only kind
//! the crate can stream. Three rounds:
//! `cargo run --release -p falra-builtins --example zip_readers -- FILE.zip`.

use std::io::{BufReader, Read};
use std::time::Instant;

use falra_builtins::etl::zipstream::ZipStream;

fn ours(data: &[u8]) -> u64 {
    let mut z = ZipStream::new(BufReader::with_capacity(256 << 10, data), u64::MAX);
    let mut out = 0u64;
    let mut first = true;
    while let Some(member) = z.next_member(first).expect("a member header") {
        first = false;
        let mut count = |b: &[u8]| {
            out += b.len() as u64;
            Ok(())
        };
        z.read_member(&member, Some(&mut count)).expect("a member");
    }
    out
}

fn the_crate(data: &[u8]) -> u64 {
    let mut r = BufReader::with_capacity(256 << 10, data);
    let mut buf = vec![0u8; 1 << 20];
    let mut out = 0u64;
    while let Some(mut f) = zip::read::read_zipfile_from_stream(&mut r).expect("a member") {
        loop {
            let n = f.read(&mut buf).expect("member data");
            if n == 0 {
                break;
            }
            out += n as u64;
        }
    }
    out
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: zip_readers FILE.zip");
    let data = std::fs::read(&path).expect("the archive");
    for round in 1..=3 {
        let t = Instant::now();
        let a = ours(&data);
        let mine = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = the_crate(&data);
        let theirs = t.elapsed().as_secs_f64();
        assert_eq!(a, b, "the two readers disagree on the size");
        println!(
            "round {round}: {a} bytes out; falra {mine:.3} s ({:.0} MB/s), zip crate {theirs:.3} s \
             ({:.0} MB/s): the crate takes {:.2}x",
            a as f64 / mine / 1e6,
            b as f64 / theirs / 1e6,
            theirs / mine
        );
    }
}
