//! The child protocol: one JSON request on stdin, one JSON answer line on stdout.
//!
//! The request is `{"protocol": 1, "call_id", "fn", "kwargs"}`. The answer is exactly one line,
//! `{"ok": true, "result": …}` or `{"ok": false, "error": {"type", "message", "traceback"}}`,
//! after which the child exits 0. The runner may add `"code"` and `"detail"` to an error when the
//! failure is not the function's own (`fn_not_found`, `result_not_serializable`).
//!
//! The answer is hostile input: it was written by a process that ran tenant code. It is parsed
//! strictly (one line, known fields only) and anything else is reported as the child's failure,
//! never as ours.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::spawn::{Finished, Termination};

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct ProtocolRequest<'a> {
    pub protocol: u32,
    pub call_id: &'a str,
    #[serde(rename = "fn")]
    pub function: &'a str,
    pub kwargs: &'a Map<String, Value>,
    /// The tenant's environment variables, set in the call's process before its module is
    /// imported.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub env: &'a [(String, String)],
}

impl ProtocolRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a map of JSON values always serialises")
    }
}

/// Why a call produced no result.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildFailure {
    /// The function (or the import of its module) raised.
    FunctionError {
        type_name: String,
        message: String,
        traceback: String,
    },
    /// No such module or function in the tenant's code, as found by the runner.
    FnNotFound { message: String, detail: Value },
    /// The function returned something that cannot become JSON.
    ResultNotSerializable { message: String, detail: Value },
    /// The answer was larger than the cap.
    ResultTooLarge { limit_bytes: usize },
    /// The child ended without a valid answer.
    ProcessExited {
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: &'static str,
    },
    /// The wall-clock deadline passed; the child's group was killed.
    Timeout,
    /// The kernel killed the child in its memory limit (decided by the caller, from the cgroup).
    MemoryLimitExceeded,
}

/// The outcome of one call: the result as the child wrote it (already validated JSON), or why not.
pub type Answer = Result<Box<RawValue>, ChildFailure>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    ok: bool,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<LineError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineError {
    #[serde(rename = "type")]
    type_name: String,
    message: String,
    #[serde(default)]
    traceback: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    detail: Option<Value>,
}

/// Turns what a finished child left into the call's answer.
pub fn interpret(finished: &Finished, stdout_limit: usize) -> Answer {
    if finished.termination == Termination::TimedOut {
        return Err(ChildFailure::Timeout);
    }
    if finished.stdout_overflow {
        return Err(ChildFailure::ResultTooLarge {
            limit_bytes: stdout_limit,
        });
    }
    let (exit_code, signal) = match finished.termination {
        Termination::Exited(code) => (Some(code), None),
        Termination::Signaled(sig) => (None, Some(sig)),
        Termination::TimedOut => unreachable!("handled above"),
    };
    let exited = |reason| ChildFailure::ProcessExited {
        exit_code,
        signal,
        reason,
    };
    if finished.stdout.is_empty() {
        return Err(exited("the process ended without an answer"));
    }
    let line = match parse_line(&finished.stdout) {
        Some(line) => line,
        None => return Err(exited("the process wrote an invalid answer")),
    };
    if exit_code != Some(0) {
        return Err(exited("the process did not exit cleanly after answering"));
    }
    match (line.ok, line.result, line.error) {
        (true, result, None) => Ok(result.unwrap_or_else(null)),
        (false, None, Some(e)) => Err(match e.code.as_deref() {
            Some("fn_not_found") => ChildFailure::FnNotFound {
                message: e.message,
                detail: e.detail.unwrap_or(Value::Null),
            },
            Some("result_not_serializable") => ChildFailure::ResultNotSerializable {
                message: e.message,
                detail: e.detail.unwrap_or(Value::Null),
            },
            None => ChildFailure::FunctionError {
                type_name: e.type_name,
                message: e.message,
                traceback: e.traceback,
            },
            Some(_) => exited("the process wrote an invalid answer"),
        }),
        _ => Err(exited("the process wrote an invalid answer")),
    }
}

fn parse_line(stdout: &[u8]) -> Option<Line> {
    let body = stdout.strip_suffix(b"\n")?;
    if body.contains(&b'\n') {
        return None;
    }
    serde_json::from_slice(body).ok()
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::Usage;

    fn finished(stdout: &str, termination: Termination) -> Finished {
        Finished {
            termination,
            stdout: stdout.as_bytes().to_vec(),
            stdout_overflow: false,
            stderr: Vec::new(),
            stderr_tail: Vec::new(),
            stderr_dropped: 0,
            usage: Usage::default(),
        }
    }

    #[test]
    fn a_clean_answer_is_the_result() {
        let f = finished("{\"ok\":true,\"result\":[1,2]}\n", Termination::Exited(0));
        assert_eq!(interpret(&f, 10).unwrap().get(), "[1,2]");
    }

    #[test]
    fn function_errors_keep_type_message_and_traceback() {
        let f = finished(
            "{\"ok\":false,\"error\":{\"type\":\"ValueError\",\"message\":\"m\",\"traceback\":\"t\"}}\n",
            Termination::Exited(0),
        );
        assert_eq!(
            interpret(&f, 10).unwrap_err(),
            ChildFailure::FunctionError {
                type_name: "ValueError".into(),
                message: "m".into(),
                traceback: "t".into()
            }
        );
    }

    #[test]
    fn anything_but_one_clean_line_is_process_exited() {
        for (out, term) in [
            ("", Termination::Exited(0)),
            ("{\"ok\":true,\"result\":1}", Termination::Exited(0)),
            (
                "{\"ok\":true,\"result\":1}\n{\"ok\":true}\n",
                Termination::Exited(0),
            ),
            (
                "{\"ok\":true,\"result\":1,\"x\":2}\n",
                Termination::Exited(0),
            ),
            ("{\"ok\":true,\"result\":1}\n", Termination::Exited(1)),
            (
                "{\"ok\":true,\"error\":{\"type\":\"a\",\"message\":\"b\"}}\n",
                Termination::Exited(0),
            ),
            ("not json\n", Termination::Exited(0)),
            ("", Termination::Signaled(9)),
        ] {
            let failure = interpret(&finished(out, term), 10).unwrap_err();
            assert!(
                matches!(failure, ChildFailure::ProcessExited { .. }),
                "{out:?} {term:?} gave {failure:?}"
            );
        }
    }

    #[test]
    fn timeout_and_overflow_win_over_output() {
        let f = finished("{\"ok\":true,\"result\":1}\n", Termination::TimedOut);
        assert_eq!(interpret(&f, 10).unwrap_err(), ChildFailure::Timeout);
        let mut f = finished("{\"ok\":true,", Termination::Signaled(9));
        f.stdout_overflow = true;
        assert_eq!(
            interpret(&f, 10).unwrap_err(),
            ChildFailure::ResultTooLarge { limit_bytes: 10 }
        );
    }

    #[test]
    fn request_has_the_documented_shape() {
        let mut kwargs = Map::new();
        kwargs.insert("int_a".into(), 1.into());
        let req = ProtocolRequest {
            protocol: PROTOCOL_VERSION,
            call_id: "c1",
            function: "m.f",
            kwargs: &kwargs,
            env: &[],
        };
        assert_eq!(
            String::from_utf8(req.encode()).unwrap(),
            r#"{"protocol":1,"call_id":"c1","fn":"m.f","kwargs":{"int_a":1}}"#
        );
        let env = [("REGION".to_owned(), "eu".to_owned())];
        let req = ProtocolRequest { env: &env, ..req };
        assert!(String::from_utf8(req.encode())
            .unwrap()
            .ends_with(r#""env":[["REGION","eu"]]}"#));
    }
}
