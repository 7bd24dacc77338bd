//! Finding the `"token"` member of a JSON body from its first bytes.
//!
//! A call may carry its token in the body rather than in `Authorization`. So that an anonymous
//! client cannot make the daemon buffer whole bodies, the call handler reads only a prefix,
//! finds the token there and authenticates it before it reads the rest. This scanner walks the
//! top-level object of that prefix, skipping every member's value without building it, and
//! stops at the first `"token"` key. serde_json cannot say "this prefix is fine so far, give me
//! more", which is why this small walker exists; its answers are checked against serde_json's
//! parse of whole bodies in the tests below.

/// What the prefix says about the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The first top-level `"token"` member, decoded.
    Found(String),
    /// The prefix ends before the token or the end of the object.
    NeedMore,
    /// The object has no `"token"` member, or its value is not a string, or the body is not a
    /// JSON object: the full parser says which.
    NotFound,
}

/// Scans `prefix`, the first bytes of a body.
pub fn scan(prefix: &[u8]) -> Scan {
    match walk(prefix) {
        Ok(Some(token)) => Scan::Found(token),
        Ok(None) => Scan::NotFound,
        Err(More) => Scan::NeedMore,
    }
}

/// The prefix ends too soon to tell.
struct More;

fn walk(b: &[u8]) -> Result<Option<String>, More> {
    let mut i = skip_ws(b, 0)?;
    if b[i] != b'{' {
        return Ok(None);
    }
    i += 1;
    loop {
        i = skip_ws(b, i)?;
        match b[i] {
            b'}' => return Ok(None),
            b'"' => {}
            _ => return Ok(None),
        }
        let key_end = match string_end(b, i)? {
            Some(end) => end,
            None => return Ok(None),
        };
        let key: Option<String> = serde_json::from_slice(&b[i..key_end]).ok();
        i = skip_ws(b, key_end)?;
        if b[i] != b':' {
            return Ok(None);
        }
        i = skip_ws(b, i + 1)?;
        if key.as_deref() == Some("token") {
            if b[i] != b'"' {
                return Ok(None);
            }
            return match string_end(b, i)? {
                Some(end) => Ok(serde_json::from_slice(&b[i..end]).ok()),
                None => Ok(None),
            };
        }
        i = match value_end(b, i)? {
            Some(end) => end,
            None => return Ok(None),
        };
        i = skip_ws(b, i)?;
        match b[i] {
            b',' => i += 1,
            _ => return Ok(None),
        }
    }
}

/// The index of the next byte that is not white space (there must be one).
fn skip_ws(b: &[u8], mut i: usize) -> Result<usize, More> {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    if i < b.len() {
        Ok(i)
    } else {
        Err(More)
    }
}

/// The index just past the string that opens at `b[i] == '"'`; `None` if it is not one.
fn string_end(b: &[u8], i: usize) -> Result<Option<usize>, More> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Ok(Some(j + 1)),
            b'\\' => j += 2,
            c if c < 0x20 => return Ok(None),
            _ => j += 1,
        }
    }
    Err(More)
}

/// The index just past the value that starts at `b[i]`; `None` if it is not a value.
fn value_end(b: &[u8], i: usize) -> Result<Option<usize>, More> {
    match b[i] {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            // Nested values need no checking here, only their extent: strings may hold brackets.
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => match string_end(b, j)? {
                        Some(end) => {
                            j = end;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(Some(j + 1));
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err(More)
        }
        _ => {
            let mut j = i;
            while j < b.len() {
                if matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    return Ok((j > i).then_some(j));
                }
                j += 1;
            }
            Err(More)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_wherever_it_stands_at_the_top() {
        for body in [
            r#"{"token": "T", "fn": "m.f"}"#,
            r#"{"fn": "m.f", "a": {"token": "no", "x": [1, "]}", {"y": null}]}, "token": "T"}"#,
            r#"  {"n": -1.5e3, "t": true, "s": "a\"b", "token":"T"}"#,
            r#"{"\u0074oken": "T"}"#,
            r#"{"token": "\u0054"}"#,
        ] {
            assert_eq!(scan(body.as_bytes()), Scan::Found("T".into()), "{body}");
        }
    }

    #[test]
    fn a_prefix_asks_for_more_and_never_guesses() {
        let body = r#"{"fn": "m.f", "a": [1, 2, {"b": "c"}], "token": "flr_abc"}"#;
        for cut in 0..body.len() - 2 {
            let got = scan(&body.as_bytes()[..cut]);
            assert_eq!(got, Scan::NeedMore, "cut at {cut}");
        }
        assert_eq!(scan(body.as_bytes()), Scan::Found("flr_abc".into()));
    }

    #[test]
    fn no_token_and_not_objects_are_not_found() {
        for body in [
            r#"{"fn": "m.f"}"#,
            r#"{}"#,
            r#"[1]"#,
            r#"nope"#,
            r#"{"token": 5}"#,
            r#"{"fn" "m.f"}"#,
            r#"{"a": 1 "token": "T"}"#,
        ] {
            assert_eq!(scan(body.as_bytes()), Scan::NotFound, "{body}");
        }
    }

    #[test]
    fn agrees_with_serde_on_the_first_token_of_whole_bodies() {
        for body in [
            r#"{"token": "A", "x": 1}"#,
            r#"{"x": {"token": "inner"}, "token": "B"}"#,
            r#"{"x": "token", "token": "C"}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let want = v["token"].as_str().unwrap().to_owned();
            assert_eq!(scan(body.as_bytes()), Scan::Found(want), "{body}");
        }
    }
}
