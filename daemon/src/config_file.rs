//! `falra serve --config falra.toml`: the same options as the flags, from a file.
//!
//! The file is read before the command line is parsed and each key becomes the `FALRA_*`
//! variable of its flag (unless that variable is set already), so clap parses and validates
//! every option once, whatever its source, into the one `ServeArgs` (then `ServeConfig`): a
//! flag wins over its variable, a variable over the file, the file over the default. Keys
//! are the flags' long names, with `-` or `_`; a repeatable flag takes a list. An unknown
//! key, or a value that is not a string, number, boolean or list of them, is refused naming
//! the key, so a typo never goes unnoticed.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};
use clap::CommandFactory;

/// The flags a file may not set: the file's own name.
const NOT_IN_FILE: [&str; 1] = ["config"];

/// Sets the `FALRA_*` variables a `serve --config FILE` (or `FALRA_CONFIG`) names, before the
/// command line is parsed; returns the file's path, if one was read. Does nothing for other
/// commands.
pub fn load_for_serve(argv: &[OsString]) -> anyhow::Result<Option<String>> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(None);
    }
    let mut path: Option<OsString> = std::env::var_os("FALRA_CONFIG");
    let mut rest = argv[2..].iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            path = rest.next().cloned();
        } else if let Some(p) = text.strip_prefix("--config=") {
            path = Some(p.into());
        } else if text == "--" {
            break;
        }
    }
    let Some(path) = path else {
        return Ok(None);
    };
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the config file {}", path.display()))?;
    let vars = env_from_toml(&text).with_context(|| format!("config file {}", path.display()))?;
    for (name, value) in vars {
        if std::env::var_os(&name).is_none() {
            // Single-threaded still: nothing else reads the environment yet.
            std::env::set_var(name, value);
        }
    }
    Ok(Some(path.display().to_string()))
}

/// The `(variable, value)` pairs a config file's text sets.
pub fn env_from_toml(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let serve = crate::cli::Cli::command();
    let serve = serve
        .find_subcommand("serve")
        .expect("the serve command exists");
    let mut vars = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&long.as_str()));
        let Some(arg) = arg else {
            let known: Vec<&str> = serve
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !NOT_IN_FILE.contains(l) && *l != "help")
                .collect();
            bail!(
                "unknown key {key:?}; the keys are serve's options: {}",
                known.join(", ")
            );
        };
        let name = arg
            .get_env()
            .and_then(|e| e.to_str())
            .with_context(|| format!("{key} cannot be set from a file"))?;
        let text = match &value {
            // An empty list is the default: nothing to set.
            toml::Value::Array(items) if items.is_empty() => continue,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(&key, v))
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => scalar(&key, other)?,
        };
        vars.push((name.to_owned(), text));
    }
    Ok(vars)
}

fn scalar(key: &str, value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => bail!("{key} must be a string, a number, a boolean or a list of them"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_their_flags_variables_and_unknown_ones_are_refused() {
        let vars = env_from_toml(
            "listen = \"127.0.0.1:9000\"\nmax_children = 8\nno-zygote = true\n\
             pip-find-links = [\"http://a/\", \"http://b/\"]\negress-allow-net = []\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            [
                ("FALRA_LISTEN".to_owned(), "127.0.0.1:9000".to_owned()),
                ("FALRA_MAX_CHILDREN".to_owned(), "8".to_owned()),
                ("FALRA_NO_ZYGOTE".to_owned(), "true".to_owned()),
                (
                    "FALRA_PIP_FIND_LINKS".to_owned(),
                    "http://a/,http://b/".to_owned()
                ),
            ]
        );
        let e = env_from_toml("max_childs = 8\n").unwrap_err().to_string();
        assert!(
            e.contains("max_childs") && e.contains("max-children"),
            "{e}"
        );
        assert!(env_from_toml("config = \"x\"\n").is_err());
        assert!(env_from_toml("[table]\nx = 1\n").is_err());
        assert!(env_from_toml("listen = \n").is_err());
    }

    #[test]
    fn the_annotated_example_sets_only_known_keys() {
        let text = include_str!("../../packaging/falra.toml");
        let vars = env_from_toml(text).unwrap();
        assert!(
            vars.iter().any(|(k, _)| k == "FALRA_SHUTDOWN_GRACE"),
            "{vars:?}"
        );
    }
}
