//! `read_zip_csv_chunk.read_zip_csv_chunk`: the seed's zip → CSV → reshape → S3 job, native.
//!
//! [`plan`] parses and checks the steps, [`zipstream`] reads the archive as it downloads,
//! [`transform`] is the per-row loop, [`sinks`] and [`s3`] write the objects, [`net`] holds the
//! egress rule every connection passes, and [`job`] ties them together. The job runs in a
//! sandboxed child like any call (the `falra` binary re-executed); `daemon` only starts it.

pub mod job;
pub mod net;
pub mod plan;
pub mod s3;
pub mod sinks;
pub mod transform;
pub mod zipstream;
