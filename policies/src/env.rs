//! A tenant's environment variables, as its calls and jobs get them: validated once, here,
//! when they are set, so the call path only copies them into the request.
//!
//! Names are what a shell would take (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes); the
//! variables the sandbox itself sets for every call (`PATH`, `HOME`, `TMPDIR`, `LANG`,
//! `LC_ALL`) and the `FALRA_` prefix are the node's. Values are text without NUL. A tenant has
//! at most [`MAX_VARS`] of them and [`MAX_TOTAL_BYTES`] in all.

use serde_json::{Map, Value};

pub const MAX_VARS: usize = 100;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 8 << 10;
pub const MAX_TOTAL_BYTES: usize = 64 << 10;

/// The names the sandbox sets for every call.
pub const RESERVED: [&str; 5] = ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error(
        "{0:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_NAME_BYTES} bytes)"
    )]
    BadName(String),
    #[error("{0} is set by the node for every call and cannot be changed")]
    Reserved(String),
    #[error("the value of {0} must be a string")]
    NotText(String),
    #[error("the value of {0} holds a NUL byte")]
    Nul(String),
    #[error("the value of {name} is {bytes} bytes; at most {MAX_VALUE_BYTES}")]
    TooLong { name: String, bytes: usize },
    #[error("at most {MAX_VARS} variables and {MAX_TOTAL_BYTES} bytes in all")]
    TooMany,
}

impl EnvError {
    /// The variable the error is about, if one.
    pub fn name(&self) -> Option<&str> {
        match self {
            EnvError::BadName(n)
            | EnvError::Reserved(n)
            | EnvError::NotText(n)
            | EnvError::Nul(n) => Some(n),
            EnvError::TooLong { name, .. } => Some(name),
            EnvError::TooMany => None,
        }
    }
}

/// A valid set of environment variables, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn parse(object: &Map<String, Value>) -> Result<Env, EnvError> {
        if object.len() > MAX_VARS {
            return Err(EnvError::TooMany);
        }
        let mut vars = Vec::with_capacity(object.len());
        let mut total = 0;
        for (name, value) in object {
            check_name(name)?;
            let Value::String(value) = value else {
                return Err(EnvError::NotText(name.clone()));
            };
            if value.contains('\0') {
                return Err(EnvError::Nul(name.clone()));
            }
            if value.len() > MAX_VALUE_BYTES {
                return Err(EnvError::TooLong {
                    name: name.clone(),
                    bytes: value.len(),
                });
            }
            total += name.len() + value.len();
            vars.push((name.clone(), value.clone()));
        }
        if total > MAX_TOTAL_BYTES {
            return Err(EnvError::TooMany);
        }
        Ok(Env(vars))
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.0
    }
}

/// A name a variable may have.
pub fn check_name(name: &str) -> Result<(), EnvError> {
    let mut chars = name.chars();
    let shaped = name.len() <= MAX_NAME_BYTES
        && chars
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    if !shaped {
        return Err(EnvError::BadName(name.chars().take(80).collect()));
    }
    if RESERVED.contains(&name) || name.starts_with("FALRA_") {
        return Err(EnvError::Reserved(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Env, EnvError> {
        Env::parse(v.as_object().unwrap())
    }

    #[test]
    fn names_values_and_sizes_are_checked() {
        let env = parse(json!({"REGION": "eu", "_x1": ""})).unwrap();
        assert_eq!(env.vars()[0], ("REGION".into(), "eu".into()));
        assert_eq!(
            parse(json!({"1X": "a"})),
            Err(EnvError::BadName("1X".into()))
        );
        assert_eq!(
            parse(json!({"A-B": "a"})),
            Err(EnvError::BadName("A-B".into()))
        );
        assert_eq!(
            parse(json!({"PATH": "/x"})),
            Err(EnvError::Reserved("PATH".into()))
        );
        assert_eq!(
            parse(json!({"FALRA_VENV": "/x"})),
            Err(EnvError::Reserved("FALRA_VENV".into()))
        );
        assert_eq!(parse(json!({"N": 1})), Err(EnvError::NotText("N".into())));
        assert_eq!(
            parse(json!({"N": "a\u{0}b"})),
            Err(EnvError::Nul("N".into()))
        );
        assert!(matches!(
            parse(json!({"N": "x".repeat(9000)})),
            Err(EnvError::TooLong { .. })
        ));
        let many: Map<String, Value> = (0..101).map(|i| (format!("V{i}"), json!(""))).collect();
        assert_eq!(Env::parse(&many), Err(EnvError::TooMany));
    }
}
