//! The ETL's zip reader on arbitrary bytes: it may refuse them, never panic, never hand out
//! more than its uncompressed budget, never read a member twice.
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;

#[path = "../../builtins/src/etl/zipstream.rs"]
#[allow(dead_code)]
mod zipstream;

/// The uncompressed bytes one input may unpack to.
const BUDGET: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mut zip = zipstream::ZipStream::new(BufReader::with_capacity(4096, data), BUDGET);
    let mut first = true;
    let mut out = 0u64;
    let mut members = 0u32;
    loop {
        let member = match zip.next_member(first) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        first = false;
        members += 1;
        assert!(members <= zipstream::MAX_MEMBERS);
        // Every other member is skipped, the rest read block by block.
        let result = if members % 2 == 0 {
            zip.read_member(&member, None)
        } else {
            let mut count = |b: &[u8]| {
                out += b.len() as u64;
                Ok(())
            };
            zip.read_member(&member, Some(&mut count))
        };
        assert!(out <= BUDGET, "{out} bytes out of a budget of {BUDGET}");
        if result.is_err() {
            break;
        }
    }
});
