//! Writing objects to an S3-compatible store (Wasabi, MinIO, AWS) with Signature Version 4.
//!
//! Path-style addressing (`https://endpoint/bucket/key`), which every S3-compatible service
//! accepts. An object smaller than one part is one `PUT`; a larger one is a multipart upload
//! (8 MiB parts, aborted if anything fails). Every request is retried with backoff on 5xx,
//! 429 and transport errors. Credentials come from a tenant secret, never from the call.

use std::io::Read;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::etl::net;

/// The size of one part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;
const ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("s3_url {0:?} is not https://endpoint/bucket[/prefix] or s3://bucket[/prefix]")]
    Url(String),
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url} failed: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    #[error("{0}")]
    Egress(String),
    #[error("the store's answer to {0} had no {1}")]
    Answer(String, &'static str),
}

/// Where objects go: an endpoint, a bucket, a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://host[:port]`, no trailing slash.
    pub endpoint: String,
    pub host: String,
    pub bucket: String,
    /// Prepended to every key (may be empty; ends with `/` when not).
    pub prefix: String,
    pub region: String,
}

impl Target {
    /// From the step's `s3_url` and the secret's optional `endpoint` and `region`.
    pub fn parse(s3_url: &str, creds: &Credentials) -> Result<Target, S3Error> {
        let bad = || S3Error::Url(s3_url.to_owned());
        let region = creds
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_owned());
        let (endpoint, rest) = if let Some(rest) = s3_url.strip_prefix("s3://") {
            let endpoint = creds
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
            (endpoint.trim_end_matches('/').to_owned(), rest.to_owned())
        } else {
            let scheme_end = s3_url.find("://").ok_or_else(bad)?;
            let scheme = &s3_url[..scheme_end];
            if scheme != "https" && scheme != "http" {
                return Err(bad());
            }
            let after = &s3_url[scheme_end + 3..];
            let slash = after.find('/').ok_or_else(bad)?;
            (
                format!("{scheme}://{}", &after[..slash]),
                after[slash + 1..].to_owned(),
            )
        };
        let host = endpoint
            .split_once("://")
            .map(|(_, h)| h.to_owned())
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(bad)?;
        let rest = rest.trim_matches('/');
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad());
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", prefix.trim_end_matches('/'))
        };
        Ok(Target {
            endpoint,
            host,
            bucket: bucket.to_owned(),
            prefix,
            region,
        })
    }
}

/// `hex(sha256(data))`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    falra_policies::webhook::hmac_sha256(key, data)
}

/// Percent-encodes per SigV4: unreserved characters stay, `/` stays in paths.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `Authorization` header of a SigV4-signed request. `headers` are lowercase names with
/// trimmed values and must include `host`, `x-amz-date` and `x-amz-content-sha256`; `query`
/// is already canonical (sorted, encoded).
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    creds: &Credentials,
    region: &str,
    amz_date: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    let mut sorted: Vec<&(&str, &str)> = headers.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = sorted.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let request =
        format!("{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload_hash}");
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(request.as_bytes())
    );
    let k_date = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex::encode(hmac(&k_signing, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id
    )
}

/// `YYYYMMDDTHHMMSSZ` for now.
fn amz_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a calendar date.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A client for one target.
pub struct Client {
    agent: ureq::Agent,
    creds: Credentials,
    pub target: Target,
    /// Requests made, for the answer.
    pub requests: u64,
}

impl Client {
    pub fn new(target: Target, creds: Credentials, egress: net::Egress) -> Client {
        Client {
            agent: net::agent(egress),
            creds,
            target,
            requests: 0,
        }
    }

    fn key_path(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            uri_encode(&self.target.bucket, false),
            uri_encode(&format!("{}{key}", self.target.prefix), true)
        )
    }

    /// One signed request, retried on 5xx, 429 and transport errors. Returns status, the
    /// `ETag` header and the body.
    fn send(
        &mut self,
        method: &str,
        key: &str,
        query: &str,
        body: &[u8],
    ) -> Result<(Option<String>, String), S3Error> {
        let path = self.key_path(key);
        let url = if query.is_empty() {
            format!("{}{path}", self.target.endpoint)
        } else {
            format!("{}{path}?{query}", self.target.endpoint)
        };
        let payload_hash = sha256_hex(body);
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
            }
            self.requests += 1;
            let amz_date = amz_now();
            let auth = authorization(
                &self.creds,
                &self.target.region,
                &amz_date,
                method,
                &path,
                query,
                &[
                    ("host", &self.target.host),
                    ("x-amz-content-sha256", &payload_hash),
                    ("x-amz-date", &amz_date),
                ],
                &payload_hash,
            );
            let result = self
                .agent
                .request(method, &url)
                .set("x-amz-content-sha256", &payload_hash)
                .set("x-amz-date", &amz_date)
                .set("authorization", &auth)
                .send_bytes(body);
            match result {
                Ok(r) => {
                    let etag = r.header("etag").map(str::to_owned);
                    let mut text = String::new();
                    r.into_reader()
                        .take(1 << 20)
                        .read_to_string(&mut text)
                        .map_err(|e| S3Error::Transport {
                            method: method.to_owned(),
                            url: url.clone(),
                            message: e.to_string(),
                        })?;
                    return Ok((etag, text));
                }
                Err(ureq::Error::Status(status, r)) => {
                    let mut text = String::new();
                    let _ = r.into_reader().take(4096).read_to_string(&mut text);
                    let err = S3Error::Status {
                        method: method.to_owned(),
                        url: url.clone(),
                        status,
                        body: text.trim().to_owned(),
                    };
                    if status < 500 && status != 429 {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(e) => {
                    if let Some(why) = net::denied(&e) {
                        return Err(S3Error::Egress(why));
                    }
                    last = Some(S3Error::Transport {
                        method: method.to_owned(),
                        url: url.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn put_object(&mut self, key: &str, body: &[u8]) -> Result<(), S3Error> {
        self.send("PUT", key, "", body).map(|_| ())
    }

    pub fn create_multipart(&mut self, key: &str) -> Result<String, S3Error> {
        let (_, body) = self.send("POST", key, "uploads=", b"")?;
        between(&body, "<UploadId>", "</UploadId>")
            .map(str::to_owned)
            .ok_or_else(|| S3Error::Answer("CreateMultipartUpload".into(), "UploadId"))
    }

    pub fn upload_part(
        &mut self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &[u8],
    ) -> Result<String, S3Error> {
        let query = format!(
            "partNumber={number}&uploadId={}",
            uri_encode(upload_id, false)
        );
        let (etag, _) = self.send("PUT", key, &query, body)?;
        etag.ok_or_else(|| S3Error::Answer("UploadPart".into(), "ETag"))
    }

    pub fn complete_multipart(
        &mut self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), S3Error> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                etag.replace('&', "&amp;").replace('<', "&lt;")
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let query = format!("uploadId={}", uri_encode(upload_id, false));
        let (_, body) = self.send("POST", key, &query, xml.as_bytes())?;
        // S3 can answer 200 with an error inside.
        if body.contains("<Error>") {
            return Err(S3Error::Status {
                method: "POST".into(),
                url: key.to_owned(),
                status: 200,
                body,
            });
        }
        Ok(())
    }

    pub fn abort_multipart(&mut self, key: &str, upload_id: &str) {
        let query = format!("uploadId={}", uri_encode(upload_id, false));
        let _ = self.send("DELETE", key, &query, b"");
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of AWS's Signature Version 4 documentation.
    #[test]
    fn signatures_match_the_published_example() {
        let creds = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: None,
            endpoint: None,
        };
        let empty = sha256_hex(b"");
        let auth = authorization(
            &creds,
            "us-east-1",
            "20130524T000000Z",
            "GET",
            "/test.txt",
            "",
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", &empty),
                ("x-amz-date", "20130524T000000Z"),
            ],
            &empty,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn targets_parse_path_style_and_s3_urls() {
        let creds = Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            region: Some("ap-northeast-1".into()),
            endpoint: Some("https://s3.ap-northeast-1.wasabisys.com".into()),
        };
        let t = Target::parse("https://s3.wasabisys.com/bucket", &creds).unwrap();
        assert_eq!(
            (
                t.endpoint.as_str(),
                t.host.as_str(),
                t.bucket.as_str(),
                t.prefix.as_str()
            ),
            ("https://s3.wasabisys.com", "s3.wasabisys.com", "bucket", "")
        );
        let t = Target::parse("s3://b/some/prefix/", &creds).unwrap();
        assert_eq!(t.endpoint, "https://s3.ap-northeast-1.wasabisys.com");
        assert_eq!(
            (t.bucket.as_str(), t.prefix.as_str()),
            ("b", "some/prefix/")
        );
        assert_eq!(t.region, "ap-northeast-1");
        for bad in ["https://asdfas", "ftp://x/b", "s3://", "https:///b"] {
            assert!(Target::parse(bad, &creds).is_err(), "{bad}");
        }
        assert_eq!(
            uri_encode("data/out/高雄 1.csv", true),
            "data/out/%E9%AB%98%E9%9B%84%201.csv"
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_784), (2026, 11, 27));
        assert_eq!(amz_now().len(), 16);
    }
}
