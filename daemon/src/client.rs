//! The client side of the command line: requests to a running daemon and printing the answers.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::cli::{
    AdminClient, CallArgs, PolicyCommand, SecretCommand, TenantCommand, TokenCommand, UploadArgs,
};

/// An HTTP answer: status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Answer> {
    let body = body.map(|b| (b.to_string(), "application/json"));
    request_raw(method, url, token, body)
}

/// A request whose body is `(text, content type)`.
fn request_raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(String, &str)>,
) -> anyhow::Result<Answer> {
    let mut req = ureq::request(method, url);
    if let Some(token) = token {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    let sent = match body {
        Some((text, content_type)) => req.set("Content-Type", content_type).send_string(&text),
        None => req.call(),
    };
    let response = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e).with_context(|| format!("could not reach the daemon at {url}")),
    };
    let status = response.status();
    let text = response
        .into_string()
        .context("could not read the daemon's answer")?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer { status, body })
}

/// Prints a successful answer as JSON on stdout; turns an error answer into a failure.
fn finish(answer: Answer) -> anyhow::Result<()> {
    if (200..300).contains(&answer.status) {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
        return Ok(());
    }
    let code = answer.body["error"]["code"].as_str().unwrap_or("error");
    let message = answer.body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| answer.body.to_string());
    bail!("{code} (HTTP {}): {message}", answer.status)
}

impl AdminClient {
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<()> {
        self.send_raw(
            method,
            path,
            body.map(|b| (b.to_string(), "application/json")),
        )
    }

    fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<(String, &str)>,
    ) -> anyhow::Result<()> {
        let token = self
            .admin_token
            .as_deref()
            .context("no operator token: pass --admin-token or set FALRA_ADMIN_TOKEN (see `falra admin init`)")?;
        let url = format!("{}/admin/v1{path}", self.url.trim_end_matches('/'));
        finish(request_raw(method, &url, Some(token), body)?)
    }
}

/// `falra upload TENANT FILE.py [--as NAME]`: the module is named by `--as`, or the file's
/// stem.
pub fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("could not read {} as UTF-8 text", args.file.display()))?;
    let module = match args.module {
        Some(m) => m,
        None => args
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_owned)
            .context("cannot name the module after the file: pass --as NAME")?,
    };
    args.client.send_raw(
        "PUT",
        &format!("/tenants/{}/modules/{module}", args.tenant),
        Some((source, "text/x-python")),
    )
}

pub fn secret(cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Set {
            tenant,
            key,
            value,
            client,
        } => {
            // JSON when it parses (an object of credentials), a string otherwise.
            let value = if value == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                text.trim_end_matches('\n').to_owned()
            } else {
                value
            };
            let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            client.send(
                "PUT",
                &format!("/tenants/{tenant}/secrets/{key}"),
                Some(json!({ "value": value })),
            )
        }
        SecretCommand::Remove {
            tenant,
            key,
            client,
        } => client.send("DELETE", &format!("/tenants/{tenant}/secrets/{key}"), None),
        SecretCommand::List { tenant, client } => {
            client.send("GET", &format!("/tenants/{tenant}/secrets"), None)
        }
    }
}

pub fn tenant(cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Add {
            name,
            repo,
            branch,
            subdir,
            plan,
            client,
        } => {
            let mut body = json!({"name": name});
            for (key, value) in [
                ("repo", repo),
                ("branch", branch),
                ("subdir", subdir),
                ("plan", plan),
            ] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            client.send("POST", "/tenants", Some(body))
        }
        TenantCommand::List { client } => client.send("GET", "/tenants", None),
        TenantCommand::Show { name, client } => {
            client.send("GET", &format!("/tenants/{name}"), None)
        }
        TenantCommand::Remove { name, client } => {
            client.send("DELETE", &format!("/tenants/{name}"), None)
        }
        TenantCommand::Sync { name, client } => {
            client.send("POST", &format!("/tenants/{name}/sync"), None)
        }
        TenantCommand::Rollback {
            name,
            version,
            client,
        } => client.send(
            "POST",
            &format!("/tenants/{name}/rollback"),
            Some(json!({ "version": version })),
        ),
    }
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue {
            tenant,
            scopes,
            expires_in_days,
            expires_at,
            client,
        } => {
            let mut body = json!({"scopes": scopes});
            if let Some(d) = expires_in_days {
                body["expires_in_days"] = json!(d);
            }
            if let Some(t) = expires_at {
                body["expires_at"] = json!(t);
            }
            client.send("POST", &format!("/tenants/{tenant}/tokens"), Some(body))
        }
        TokenCommand::List { tenant, client } => {
            client.send("GET", &format!("/tenants/{tenant}/tokens"), None)
        }
        TokenCommand::Revoke { id, client } => {
            client.send("DELETE", &format!("/tokens/{id}"), None)
        }
    }
}

pub fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set {
            tenant,
            fields,
            client,
        } => {
            let body = Value::Object(key_values(&fields)?);
            client.send("PUT", &format!("/tenants/{tenant}/policy"), Some(body))
        }
    }
}

pub fn call(args: CallArgs) -> anyhow::Result<()> {
    let mut body = key_values(&args.kwargs)?;
    body.insert("fn".into(), json!(args.function));
    let token = args
        .token
        .context("no token: pass --token or set FALRA_TOKEN")?;
    let mut url = format!("{}/v1/call", args.url.trim_end_matches('/'));
    if let Some(t) = args.timeout_ms {
        url.push_str(&format!("?timeout_ms={t}"));
    }
    let answer = request("POST", &url, Some(&token), Some(&Value::Object(body)))?;
    if answer.body["ok"] == json!(true) {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
        return Ok(());
    }
    eprintln!("{}", serde_json::to_string_pretty(&answer.body)?);
    finish(answer)
}

/// `key=value` pairs; a value is JSON if it parses as JSON, a string otherwise.
pub fn key_values(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for pair in pairs {
        let Some((key, raw)) = pair.split_once('=') else {
            bail!("{pair:?} is not key=value");
        };
        if key.is_empty() {
            bail!("{pair:?} has an empty key");
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_when_they_parse() {
        let m = key_values(&[
            "int_a=1".into(),
            "s=hello".into(),
            "l=[1,2]".into(),
            "q=\"7\"".into(),
            "e=".into(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"int_a": 1, "s": "hello", "l": [1, 2], "q": "7", "e": ""})
        );
        assert!(key_values(&["novalue".into()]).is_err());
    }
}
