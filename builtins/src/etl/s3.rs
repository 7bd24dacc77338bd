//! Writing objects to an S3-compatible store (Wasabi, MinIO-style servers, AWS) through the AWS
//! SDK (`aws-sdk-s3`): its SigV4 signing, XML, retries and timeouts, the field's reviewed code.
//!
//! What Falra adds around the SDK, and why:
//!
//! - **The egress rule at connect time.** The SDK's HTTP client resolves names through
//!   [`EgressResolver`], which applies [`net::Egress`] to every address a name resolves to, so a
//!   DNS answer cannot point the job at loopback, a private network or a metadata service. An
//!   endpoint written as an IP address is never resolved: it is checked when the client is made.
//!   The SDK follows no redirects, so no other host is ever dialled.
//! - **Checksums that S3-compatible servers accept.** The SDK's default adds CRC trailers to
//!   every upload, which several S3-compatible servers refuse; a custom endpoint gets checksums
//!   only where an operation requires them, AWS gets the SDK's default (the secret's
//!   `"checksums"` chooses either way).
//! - **Path-style or virtual-hosted addressing**: path-style for a custom endpoint (what every
//!   S3-compatible server accepts), virtual-hosted for AWS, or the secret's `"addressing"`.
//!
//! The job is synchronous; each request is driven to its end on a small current-thread runtime
//! of the client's own. An object smaller than one part is one `PutObject`; a larger one is a
//! multipart upload in [`PART_BYTES`] parts, aborted when anything fails.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Intercept, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, InterceptorContext,
};
use aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::etl::net;

/// The size of one part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;
/// Attempts per request, the first included (the SDK's standard retry mode, with backoff).
pub const ATTEMPTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One attempt of one request (an 8 MiB part over a slow link fits).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How objects are addressed: `https://endpoint/bucket/key` or `https://bucket.endpoint/key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Path,
    Virtual,
}

/// When uploads carry checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    /// Only where the operation requires one (what S3-compatible servers accept).
    WhenRequired,
    /// The SDK's default: on every request that supports one.
    WhenSupported,
}

impl Checksums {
    /// From the secret's `"checksums"` value.
    pub fn parse(s: &str) -> Option<Checksums> {
        match s {
            "when_required" => Some(Checksums::WhenRequired),
            "when_supported" => Some(Checksums::WhenSupported),
            _ => None,
        }
    }
}

impl Addressing {
    /// From the secret's `"addressing"` value.
    pub fn parse(s: &str) -> Option<Addressing> {
        match s {
            "path" => Some(Addressing::Path),
            "virtual" => Some(Addressing::Virtual),
            _ => None,
        }
    }
}

/// The tenant secret's contents (checked by the daemon when the job starts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Temporary credentials' token (STS), sent as `x-amz-security-token`.
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub addressing: Option<Addressing>,
    pub checksums: Option<Checksums>,
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("s3_url {0:?} is not https://endpoint/bucket[/prefix] or s3://bucket[/prefix]")]
    Url(String),
    #[error("{operation} {key} answered {status}: {body}")]
    Status {
        operation: String,
        key: String,
        status: u16,
        body: String,
    },
    #[error("{operation} {key} failed: {message}")]
    Transport {
        operation: String,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Egress(String),
    #[error("the store's answer to {0} had no {1}")]
    Answer(String, &'static str),
    #[error("could not start the S3 client: {0}")]
    Runtime(String),
}

/// Where objects go: an endpoint, a bucket, a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://host[:port]`, no trailing slash.
    pub endpoint: String,
    /// The endpoint's host, without its port (an IPv6 address without brackets).
    pub host: String,
    pub bucket: String,
    /// Prepended to every key (may be empty; ends with `/` when not).
    pub prefix: String,
    pub region: String,
    pub addressing: Addressing,
    pub checksums: Checksums,
}

impl Target {
    /// From the step's `s3_url` and the secret's optional `endpoint`, `region`, `addressing`
    /// and `checksums`.
    pub fn parse(s3_url: &str, creds: &Credentials) -> Result<Target, S3Error> {
        let bad = || S3Error::Url(s3_url.to_owned());
        let region = creds
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_owned());
        let (endpoint, rest, aws) = if let Some(rest) = s3_url.strip_prefix("s3://") {
            match &creds.endpoint {
                Some(e) => (e.trim_end_matches('/').to_owned(), rest.to_owned(), false),
                None => (
                    format!("https://s3.{region}.amazonaws.com"),
                    rest.to_owned(),
                    true,
                ),
            }
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
                false,
            )
        };
        let authority = endpoint
            .split_once("://")
            .map(|(_, h)| h)
            .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@']))
            .ok_or_else(bad)?;
        let host = host_of(authority).ok_or_else(bad)?;
        let aws = aws || host.ends_with(".amazonaws.com");
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
            addressing: creds.addressing.unwrap_or(if aws {
                Addressing::Virtual
            } else {
                Addressing::Path
            }),
            checksums: creds.checksums.unwrap_or(if aws {
                Checksums::WhenSupported
            } else {
                Checksums::WhenRequired
            }),
        })
    }
}

/// The host of `host[:port]` or `[v6][:port]`.
fn host_of(authority: &str) -> Option<String> {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The reason a connection was refused by the egress rule, found in an error's chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

fn denied_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = next {
        if let Some(d) = e.downcast_ref::<Denied>() {
            return Some(d.0.clone());
        }
        next = e.source();
    }
    None
}

/// The SDK's name resolver: the system's, then the egress rule on every address.
#[derive(Debug, Clone)]
pub struct EgressResolver(pub net::Egress);

impl ResolveDns for EgressResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(Box::pin(async move {
            let addrs: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
                .await
                .map_err(ResolveDnsError::new)?
                .map(|a| a.ip())
                .collect();
            if let Some(bad) = addrs.iter().find(|ip| !self.0.permits(**ip)) {
                return Err(ResolveDnsError::new(Denied(format!(
                    "egress to {name} ({bad}) is not allowed: it is not a public address"
                ))));
            }
            Ok(addrs)
        }))
    }
}

/// A refusal by the egress rule is final: retrying cannot change it.
#[derive(Debug)]
struct NoRetryOnDenial;

impl ClassifyRetry for NoRetryOnDenial {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(e)) if denied_in(e).is_some() => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "falra egress denial"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// Counts the requests sent, retries included (the answer reports them).
#[derive(Debug, Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "falra request counter"
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The SDK's configuration for `target`: endpoint, region, addressing, credentials, checksums,
/// retries, timeouts and the egress-checked HTTP client.
pub fn sdk_config(
    target: &Target,
    creds: &Credentials,
    egress: &net::Egress,
) -> aws_sdk_s3::Config {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_with_resolver(EgressResolver(egress.clone()));
    let (request, response) = match target.checksums {
        Checksums::WhenRequired => (
            RequestChecksumCalculation::WhenRequired,
            ResponseChecksumValidation::WhenRequired,
        ),
        Checksums::WhenSupported => (
            RequestChecksumCalculation::WhenSupported,
            ResponseChecksumValidation::WhenSupported,
        ),
    };
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(target.region.clone()))
        .endpoint_url(&target.endpoint)
        .force_path_style(target.addressing == Addressing::Path)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            creds.session_token.clone(),
            None,
            "falra-tenant-secret",
        ))
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
        .retry_classifier(NoRetryOnDenial)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .request_checksum_calculation(request)
        .response_checksum_validation(response)
        .build()
}

/// A client for one target.
pub struct Client {
    sdk: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
    counter: Counter,
    pub target: Target,
}

impl Client {
    /// The client; refuses an endpoint written as an address the egress rule forbids (such an
    /// endpoint is dialled without a lookup, so the resolver never sees it).
    pub fn new(target: Target, creds: Credentials, egress: net::Egress) -> Result<Client, S3Error> {
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            if !egress.permits(ip) {
                return Err(S3Error::Egress(format!(
                    "egress to {} is not allowed: it is not a public address",
                    target.host
                )));
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| S3Error::Runtime(e.to_string()))?;
        let counter = Counter::default();
        let config = sdk_config(&target, &creds, &egress)
            .to_builder()
            .interceptor(counter.clone())
            .build();
        Ok(Client {
            sdk: aws_sdk_s3::Client::from_conf(config),
            rt,
            counter,
            target,
        })
    }

    /// Requests sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.counter.0.load(Ordering::Relaxed)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.target.prefix)
    }

    fn fail<E>(
        &self,
        operation: &str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if let Some(why) = denied_in(&e) {
            return S3Error::Egress(why);
        }
        let key = format!("{}/{}", self.target.bucket, self.key(key));
        match &e {
            SdkError::ServiceError(se) => S3Error::Status {
                operation: operation.to_owned(),
                key,
                status: se.raw().status().as_u16(),
                body: format!(
                    "{}: {}",
                    se.err().code().unwrap_or("no error code"),
                    se.err().message().unwrap_or("no message")
                ),
            },
            _ => S3Error::Transport {
                operation: operation.to_owned(),
                key,
                message: DisplayErrorContext(&e).to_string(),
            },
        }
    }

    pub fn put_object(&mut self, key: &str, body: Vec<u8>) -> Result<(), S3Error> {
        let req = self
            .sdk
            .put_object()
            .bucket(&self.target.bucket)
            .key(self.key(key))
            .content_type("text/csv")
            .body(ByteStream::from(body));
        self.rt
            .block_on(req.send())
            .map(|_| ())
            .map_err(|e| self.fail("PutObject", key, e))
    }

    pub fn create_multipart(&mut self, key: &str) -> Result<String, S3Error> {
        let req = self
            .sdk
            .create_multipart_upload()
            .bucket(&self.target.bucket)
            .key(self.key(key))
            .content_type("text/csv");
        let out = self
            .rt
            .block_on(req.send())
            .map_err(|e| self.fail("CreateMultipartUpload", key, e))?;
        out.upload_id
            .ok_or_else(|| S3Error::Answer("CreateMultipartUpload".into(), "UploadId"))
    }

    pub fn upload_part(
        &mut self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Vec<u8>,
    ) -> Result<String, S3Error> {
        let req = self
            .sdk
            .upload_part()
            .bucket(&self.target.bucket)
            .key(self.key(key))
            .upload_id(upload_id)
            .part_number(i32::try_from(number).unwrap_or(i32::MAX))
            .body(ByteStream::from(body));
        let out = self
            .rt
            .block_on(req.send())
            .map_err(|e| self.fail("UploadPart", key, e))?;
        out.e_tag
            .ok_or_else(|| S3Error::Answer("UploadPart".into(), "ETag"))
    }

    pub fn complete_multipart(
        &mut self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), S3Error> {
        let parts = etags
            .iter()
            .enumerate()
            .map(|(i, etag)| {
                CompletedPart::builder()
                    .part_number(i32::try_from(i + 1).unwrap_or(i32::MAX))
                    .e_tag(etag)
                    .build()
            })
            .collect();
        let req = self
            .sdk
            .complete_multipart_upload()
            .bucket(&self.target.bucket)
            .key(self.key(key))
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        self.rt
            .block_on(req.send())
            .map(|_| ())
            .map_err(|e| self.fail("CompleteMultipartUpload", key, e))
    }

    /// Best effort: an upload that cannot be aborted is reported by the store's own listing.
    pub fn abort_multipart(&mut self, key: &str, upload_id: &str) {
        let req = self
            .sdk
            .abort_multipart_upload()
            .bucket(&self.target.bucket)
            .key(self.key(key))
            .upload_id(upload_id);
        let _ = self.rt.block_on(req.send());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            region: Some("ap-northeast-1".into()),
            endpoint: Some("https://s3.ap-northeast-1.wasabisys.com".into()),
            ..Credentials::default()
        }
    }

    #[test]
    fn targets_parse_path_style_and_s3_urls() {
        let creds = creds();
        let t = Target::parse("https://s3.wasabisys.com/bucket", &creds).unwrap();
        assert_eq!(
            (
                t.endpoint.as_str(),
                t.host.as_str(),
                t.bucket.as_str(),
                t.prefix.as_str(),
                t.addressing,
                t.checksums,
            ),
            (
                "https://s3.wasabisys.com",
                "s3.wasabisys.com",
                "bucket",
                "",
                Addressing::Path,
                Checksums::WhenRequired
            )
        );
        let t = Target::parse("s3://b/some/prefix/", &creds).unwrap();
        assert_eq!(t.endpoint, "https://s3.ap-northeast-1.wasabisys.com");
        assert_eq!(
            (t.bucket.as_str(), t.prefix.as_str()),
            ("b", "some/prefix/")
        );
        assert_eq!(t.region, "ap-northeast-1");
        for bad in [
            "https://asdfas",
            "ftp://x/b",
            "s3://",
            "https:///b",
            "https://u@evil/b",
            "http://[::1/b",
        ] {
            assert!(Target::parse(bad, &creds).is_err(), "{bad}");
        }
        let t = Target::parse("http://[::1]:9000/b", &creds).unwrap();
        assert_eq!(t.host, "::1");
        let t = Target::parse("http://127.0.0.1:9000/b", &creds).unwrap();
        assert_eq!(t.host, "127.0.0.1");
    }

    #[test]
    fn aws_gets_virtual_hosts_and_checksums_unless_the_secret_says_otherwise() {
        let mut c = Credentials {
            region: Some("eu-west-1".into()),
            ..Credentials::default()
        };
        let t = Target::parse("s3://b/p", &c).unwrap();
        assert_eq!(t.endpoint, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(
            (t.addressing, t.checksums),
            (Addressing::Virtual, Checksums::WhenSupported)
        );
        c.addressing = Some(Addressing::Path);
        c.checksums = Some(Checksums::WhenRequired);
        let t = Target::parse("s3://b/p", &c).unwrap();
        assert_eq!(
            (t.addressing, t.checksums),
            (Addressing::Path, Checksums::WhenRequired)
        );
        assert_eq!(Addressing::parse("virtual"), Some(Addressing::Virtual));
        assert_eq!(Checksums::parse("sometimes"), None);
    }

    #[test]
    fn an_endpoint_written_as_a_private_address_is_refused_before_any_request() {
        let t = Target::parse("http://169.254.169.254/b", &creds()).unwrap();
        let e = Client::new(t, creds(), net::Egress::default())
            .err()
            .unwrap();
        assert!(matches!(e, S3Error::Egress(_)), "{e}");
        let t = Target::parse("http://[::1]:9/b", &creds()).unwrap();
        assert!(Client::new(t, creds(), net::Egress::default()).is_err());
        let t = Target::parse("http://127.0.0.1:9/b", &creds()).unwrap();
        let open = net::Egress {
            allow_private: true,
            ..net::Egress::default()
        };
        assert!(Client::new(t, creds(), open).is_ok());
    }

    #[test]
    fn the_resolver_refuses_a_name_of_a_private_address_and_it_is_not_retried() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let strict = EgressResolver(net::Egress::default());
        let e = rt.block_on(strict.resolve_dns("localhost")).unwrap_err();
        assert!(denied_in(&e).unwrap().contains("not allowed"), "{e:?}");
        // Through the whole SDK: a name that resolves to loopback is refused at once, as
        // Egress, after one attempt.
        let t = Target::parse("http://localhost:9/bucket", &creds()).unwrap();
        let mut c = Client::new(t, creds(), net::Egress::default()).unwrap();
        let started = std::time::Instant::now();
        let e = c.put_object("k.csv", b"x".to_vec()).unwrap_err();
        assert!(matches!(e, S3Error::Egress(_)), "{e}");
        assert_eq!(c.requests(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// The request the SDK would send for a `PutObject` to `target`.
    fn captured(target: &Target, creds: &Credentials) -> aws_smithy_runtime_api::http::Request {
        use aws_smithy_http_client::test_util::capture_request;
        let (http, rx) = capture_request(None);
        let config = sdk_config(target, creds, &net::Egress::default())
            .to_builder()
            .http_client(http)
            .build();
        let sdk = aws_sdk_s3::Client::from_conf(config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(
            sdk.put_object()
                .bucket(&target.bucket)
                .key(format!("{}高雄/part-00000.csv", target.prefix))
                .body(ByteStream::from_static(b"a,b\n"))
                .send(),
        );
        rx.expect_request()
    }

    #[test]
    fn addressing_credentials_and_checksums_reach_the_request() {
        let mut c = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "s".into(),
            session_token: Some("TOKEN-FROM-STS".into()),
            region: Some("eu-west-1".into()),
            ..Credentials::default()
        };
        // AWS: virtual-hosted, the SDK's checksums, the session token.
        let t = Target::parse("s3://falra-out/data", &c).unwrap();
        let r = captured(&t, &c);
        assert_eq!(
            r.uri(),
            "https://falra-out.s3.eu-west-1.amazonaws.com/data/%E9%AB%98%E9%9B%84/part-00000.csv?x-id=PutObject"
        );
        assert_eq!(
            r.headers().get("x-amz-security-token"),
            Some("TOKEN-FROM-STS")
        );
        let auth = r.headers().get("authorization").unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
        assert!(
            r.headers().get("x-amz-checksum-crc32").is_some(),
            "{:?}",
            r.headers()
        );
        // An S3-compatible endpoint: path-style, no checksum headers.
        c.endpoint = Some("https://s3.ap-northeast-1.wasabisys.com".into());
        c.session_token = None;
        let t = Target::parse("s3://falra-out/data", &c).unwrap();
        let r = captured(&t, &c);
        assert_eq!(
            r.uri(),
            "https://s3.ap-northeast-1.wasabisys.com/falra-out/data/%E9%AB%98%E9%9B%84/part-00000.csv?x-id=PutObject"
        );
        assert!(r.headers().get("x-amz-security-token").is_none());
        assert!(
            !r.headers()
                .iter()
                .any(|(k, _)| k.starts_with("x-amz-checksum")),
            "{:?}",
            r.headers()
        );
        // The secret can ask for either.
        c.addressing = Some(Addressing::Virtual);
        c.checksums = Some(Checksums::WhenSupported);
        let t = Target::parse("s3://falra-out/data", &c).unwrap();
        let r = captured(&t, &c);
        assert!(
            r.uri()
                .starts_with("https://falra-out.s3.ap-northeast-1.wasabisys.com/data/"),
            "{}",
            r.uri()
        );
        assert!(r.headers().get("x-amz-checksum-crc32").is_some());
    }
}
