//! The client side of the command line: requests to a running daemon and printing the answers.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::cli::{
    AdminClient, AuditArgs, CallArgs, EnvCommand, JobClient, JobCommand, LogsArgs, ModulesCommand,
    NodeCommand, PlanCommand, PolicyCommand, ScheduleCommand, SecretCommand, TenantCommand,
    TokenCommand, UploadArgs, UsageArgs,
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
    read_answer(sent, url)
}

/// How a successful answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Tables and `key: value` lines.
    Human,
    Json,
}

/// Prints a successful answer on stdout; turns an error answer into a failure.
fn finish(answer: Answer) -> anyhow::Result<()> {
    finish_as(answer, Output::Json)
}

fn finish_as(answer: Answer, output: Output) -> anyhow::Result<()> {
    if (200..300).contains(&answer.status) {
        match (output, &answer.body) {
            (Output::Json, _) | (_, Value::String(_)) => match &answer.body {
                Value::String(text) => print!("{text}"),
                body => println!("{}", serde_json::to_string_pretty(body)?),
            },
            (Output::Human, body) => print!("{}", human(body)),
        }
        return Ok(());
    }
    // What a tenant's code or repository put in a message reaches no terminal as escapes.
    let code = printable(answer.body["error"]["code"].as_str().unwrap_or("error"));
    let message = printable(
        &answer.body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| answer.body.to_string()),
    );
    bail!("{code} (HTTP {}): {message}", answer.status)
}

impl AdminClient {
    fn token(&self) -> anyhow::Result<&str> {
        self.admin_token
            .as_deref()
            .context("no operator token: pass --admin-token or set FALRA_ADMIN_TOKEN (see `falra admin init`)")
    }

    /// A GET whose successful answer is returned, not printed.
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.url.trim_end_matches('/'));
        let answer = request("GET", &url, Some(self.token()?), None)?;
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        finish(answer).map(|()| Value::Null)
    }

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
        let output = if self.json {
            Output::Json
        } else {
            Output::Human
        };
        finish_as(request_raw(method, &url, Some(token), body)?, output)
    }
}

/// A tenant's policy as a table: field, value, the plan's value, overridden or not.
fn policy_text(tenant: &Value, plan: &Value) -> String {
    let rows: Vec<Value> = tenant["policy"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(field, value)| {
            let overridden = tenant["overrides"].get(field).is_some();
            json!({"field": field, "value": value, "plan": plan.get(field).cloned().unwrap_or(Value::Null),
                "set_here": if overridden { "yes" } else { "" }})
        })
        .collect();
    format!(
        "tenant {} on plan {}\n{}",
        tenant["name"].as_str().unwrap_or("-"),
        tenant["plan"].as_str().unwrap_or("-"),
        table(&rows)
    )
}

/// An answer for people: each list of objects as a table, other fields as `key: value`.
fn human(body: &Value) -> String {
    let Value::Object(map) = body else {
        return format!("{}\n", cell(body));
    };
    let mut out = String::new();
    let mut tables = Vec::new();
    for (key, value) in map {
        match value {
            Value::Array(items) if items.iter().all(Value::is_object) => {
                tables.push((key, items));
            }
            other => out.push_str(&format!("{key}: {}\n", cell(other))),
        }
    }
    for (key, items) in tables {
        if !out.is_empty() {
            out.push('\n');
        }
        if items.is_empty() {
            out.push_str(&format!("{key}: none\n"));
            continue;
        }
        if map.len() > 1 {
            out.push_str(&format!("{key}:\n"));
        }
        out.push_str(&table(items));
    }
    out
}

/// Rows of objects as a table fitting the terminal; columns in order of first appearance.
fn table(items: &[Value]) -> String {
    table_in(items, terminal_width())
}

/// The width tables are fitted to: `COLUMNS` if set, else the terminal's (found by the table
/// library when stdout is one); output to a pipe is not wrapped.
fn terminal_width() -> Option<u16> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|w| *w >= 20)
}

/// [`table`] at a given width: cells too long for their share are wrapped, not cut.
fn table_in(items: &[Value], width: Option<u16>) -> String {
    use comfy_table::{ContentArrangement, Table};
    let mut columns: Vec<&str> = Vec::new();
    for item in items {
        for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(columns.iter().map(|c| c.to_uppercase()));
    if let Some(width) = width {
        t.set_width(width);
    }
    for item in items {
        t.add_row(columns.iter().map(|c| cell(&item[*c])));
    }
    let mut out: String = t
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(&l).trim_end()))
        .collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

/// One value as a table cell: strings bare, `null` as `-`, lists of scalars joined.
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => printable(s),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    // Wrapped to the column's width by the table; only a very long value is elided, marked.
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(199).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// `falra usage`: calls per tenant and function.
pub fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (key, value) in [
        ("tenant", &args.tenant),
        ("from", &args.from),
        ("to", &args.to),
    ] {
        if let Some(v) = value {
            query.push(format!("{key}={}", encode(v)));
        }
    }
    if args.csv {
        query.push("format=csv".to_owned());
    }
    let path = if query.is_empty() {
        "/usage".to_owned()
    } else {
        format!("/usage?{}", query.join("&"))
    };
    args.client.send("GET", &path, None)
}

/// `falra audit`: operator actions and deploys, newest first.
pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut path = format!("/audit?limit={}", args.limit);
    if let Some(t) = &args.tenant {
        path.push_str(&format!("&tenant={}", encode(t)));
    }
    if let Some(since) = &args.since {
        let at = since_time(since, falra_core::clock::now_ms())?;
        path.push_str(&format!("&since={}", encode(&at)));
    }
    args.client.send("GET", &path, None)
}

/// `--since` as the RFC 3339 time the API takes: one already, a date (midnight UTC), or a
/// span back from `now_ms` (`30m`, `2h`, `7d`, `45s`).
fn since_time(given: &str, now_ms: i64) -> anyhow::Result<String> {
    use falra_core::clock::{format_ms, parse_rfc3339};
    if parse_rfc3339(given).is_some() {
        return Ok(given.to_owned());
    }
    let midnight = format!("{given}T00:00:00Z");
    if given.len() == 10 && parse_rfc3339(&midnight).is_some() {
        return Ok(midnight);
    }
    let unit_ms = match given.chars().last() {
        Some('s') => 1_000,
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => 0,
    };
    let digits = given
        .char_indices()
        .last()
        .map_or("", |(at, _)| &given[..at]);
    let amount = digits.parse::<i64>().ok();
    match amount {
        Some(n) if unit_ms > 0 && (0..=100_000).contains(&n) => Ok(format_ms(now_ms - n * unit_ms)),
        _ => bail!(
            "--since {given:?} is not an RFC 3339 time, a date (2026-12-01) or a span (30m, 2h, 7d)"
        ),
    }
}

/// `falra functions TENANT`: the functions and their signatures, then what fails to load.
pub fn functions(tenant: &str, version: Option<&str>, client: &AdminClient) -> anyhow::Result<()> {
    let mut path = format!("/tenants/{}/functions", encode(tenant));
    if let Some(v) = version {
        path.push_str(&format!("?version={}", encode(v)));
    }
    if client.json {
        return client.send("GET", &path, None);
    }
    let answer = client.get(&path)?;
    let rows: Vec<Value> = answer["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| json!({"function": f["name"], "signature": f["signature"], "doc": f["doc"]}))
        .collect();
    println!(
        "version: {}",
        printable(answer["version"].as_str().unwrap_or("-"))
    );
    print!("{}", table_in(&rows, terminal_width()));
    let errors = answer["errors"].as_array().cloned().unwrap_or_default();
    if !errors.is_empty() {
        println!("\nmodules that fail to load:");
        let rows: Vec<Value> = errors
            .iter()
            .map(|e| json!({"module": e["module"], "stage": e["stage"], "line": e["line"], "error": format!("{}: {}", e["type"].as_str().unwrap_or("Error"), e["message"].as_str().unwrap_or(""))}))
            .collect();
        print!("{}", table_in(&rows, terminal_width()));
    }
    Ok(())
}

pub fn operator_tokens(client: &AdminClient) -> anyhow::Result<()> {
    client.send("GET", "/operator-tokens", None)
}

pub fn versions(tenant: &str, client: &AdminClient) -> anyhow::Result<()> {
    client.send(
        "GET",
        &format!("/tenants/{}/versions", encode(tenant)),
        None,
    )
}

pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = &args.client;
    match (&args.call_id, &args.tenant) {
        (Some(id), _) => {
            let answer = client.get(&format!("/calls/{}", encode(id)))?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", call_text(&answer));
            }
            Ok(())
        }
        (None, Some(tenant)) => follow(client, tenant),
        (None, None) => bail!("give a call id, or --tenant T --follow"),
    }
}

/// Streams a tenant's new calls (server-sent events) and prints each; follows again when the
/// daemon ends a stream.
fn follow(client: &AdminClient, tenant: &str) -> anyhow::Result<()> {
    let token = client.token()?;
    let url = format!(
        "{}/admin/v1/tenants/{}/calls/follow",
        client.url.trim_end_matches('/'),
        encode(tenant)
    );
    let mut announced = false;
    loop {
        let sent = ureq::get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .set("Accept", "text/event-stream")
            .call();
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                // An error answer says why; a stream cut by a restart is followed again.
                let answer = read_answer(Err(e), &url)?;
                finish(answer)?;
                bail!("the daemon ended the stream");
            }
        };
        if !announced {
            if !client.json {
                println!("following {tenant}'s calls (Ctrl-C to stop)");
            }
            announced = true;
        }
        read_events(response.into_reader(), "calls", |_, data| {
            let call: Value = serde_json::from_str(data).context("a call event not JSON")?;
            if client.json {
                println!("{call}");
            } else {
                print!("{}", call_text(&call));
            }
            use std::io::Write;
            std::io::stdout().flush()?;
            Ok(true)
        })?;
    }
}

/// Reads server-sent events, handing each `(event, data)` to `on_event` until the stream
/// ends or `on_event` says to stop (`false`).
fn read_events(
    reader: impl std::io::Read,
    what: &str,
    mut on_event: impl FnMut(&str, &str) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let (mut event, mut data) = (String::new(), String::new());
    for line in std::io::BufReader::new(reader).lines() {
        let line = line.with_context(|| format!("the stream of {what} broke off"))?;
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        } else if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if line.is_empty() && !data.is_empty() {
            if !on_event(&event, &data)? {
                return Ok(());
            }
            event.clear();
            data.clear();
        }
    }
    Ok(())
}

/// `falra tenant sync`: the deploy's steps as they happen (a spinner on a terminal, one line
/// per finished step on stderr), then the new version on stdout.
fn sync(client: &AdminClient, tenant: &str, query: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let url = format!(
        "{}/admin/v1/tenants/{}/sync{query}",
        client.url.trim_end_matches('/'),
        encode(tenant)
    );
    let sent = ureq::post(&url)
        .set("Authorization", &format!("Bearer {}", client.token()?))
        .set("Accept", "text/event-stream")
        .call();
    let response = match sent {
        // A daemon that answers the sync whole (not a stream) is read as it answers.
        Ok(r) if !r.content_type().starts_with("text/event-stream") => {
            return finish_as(read_answer(Ok(r), &url)?, Output::Human)
        }
        Ok(r) => r,
        Err(e) => return finish(read_answer(Err(e), &url)?),
    };
    let spinner = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar.set_message(format!("syncing {tenant}"));
        bar
    });
    let say = |line: String| match &spinner {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    };
    let mut outcome: Option<anyhow::Result<()>> = None;
    read_events(response.into_reader(), "deploy steps", |event, data| {
        let v: Value = serde_json::from_str(data).context("a deploy event is not JSON")?;
        match event {
            "step" if v["state"] == "started" => {
                if let Some(bar) = &spinner {
                    bar.set_message(format!("{}…", printable(v["step"].as_str().unwrap_or(""))));
                }
            }
            "step" => say(step_line(&v)),
            "done" => {
                if let Some(bar) = &spinner {
                    bar.finish_and_clear();
                }
                println!(
                    "version: {}",
                    printable(v["version"].as_str().unwrap_or("-"))
                );
                outcome = Some(Ok(()));
                return Ok(false);
            }
            _ => {
                if let Some(bar) = &spinner {
                    bar.finish_and_clear();
                }
                let code = printable(v["error"]["code"].as_str().unwrap_or("error"));
                let message = printable(
                    v["error"]["message"]
                        .as_str()
                        .unwrap_or("the deploy failed"),
                );
                outcome = Some(Err(anyhow::anyhow!("{code}: {message}")));
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    outcome.unwrap_or_else(|| bail!("the daemon ended the deploy's stream without its outcome"))
}

/// One finished deploy step for people: `✓ fetch      12 ms  commit abcdef123456`.
fn step_line(step: &Value) -> String {
    let mark = if step["ok"] == true { "✓" } else { "✗" };
    format!(
        "{mark} {:<8} {:>7} ms  {}",
        printable(step["step"].as_str().unwrap_or("?")),
        step["ms"],
        printable(step["detail"].as_str().unwrap_or("")),
    )
    .trim_end()
    .to_owned()
}

/// A call for people: a header line, its error, then each line of its logs with its stream.
/// Everything the tenant wrote has its control characters taken out (no terminal escapes).
fn call_text(call: &Value) -> String {
    let s = |v: &Value| printable(v.as_str().unwrap_or("-"));
    let mut out = format!(
        "{}  {}  {}  {}  version {}  wall {} ms  cpu {} ms\n",
        s(&call["call_id"]),
        s(&call["fn"]),
        s(&call["status"]),
        s(&call["at"]),
        s(&call["version"]),
        call["usage"]["wall_ms"],
        call["usage"]["cpu_ms"],
    );
    if call["error"].is_object() {
        out.push_str(&format!(
            "error {}: {}\n",
            s(&call["error"]["code"]),
            s(&call["error"]["message"])
        ));
    }
    for line in call["lines"].as_array().into_iter().flatten() {
        let tag = match line["stream"].as_str() {
            Some("stderr") => "err",
            Some("stdout") => "out",
            _ => "---",
        };
        out.push_str(&format!("{tag} | {}\n", s(&line["text"])));
    }
    out
}

/// Text with its control characters taken out but for line ends and tabs.
fn printable_lines(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

pub fn node(cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List { client } => client.send("GET", "/nodes", None),
    }
}

pub fn plan(cmd: PlanCommand) -> anyhow::Result<()> {
    match cmd {
        PlanCommand::Set {
            name,
            fields,
            client,
        } => {
            let body = Value::Object(key_values(&fields)?);
            client.send("PUT", &format!("/plans/{name}"), Some(body))
        }
        PlanCommand::List { client } => client.send("GET", "/plans", None),
        PlanCommand::Remove { name, yes, client } => {
            confirm(yes, &format!("Remove plan {name}?"))?;
            client.send("DELETE", &format!("/plans/{name}"), None)
        }
    }
}

/// Percent-encodes a query value (times carry `:` and `+`).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
    let query = match (args.replace, args.force) {
        (false, false) => "",
        (true, false) => "?replace=true",
        (false, true) => "?force=true",
        (true, true) => "?replace=true&force=true",
    };
    match (&args.client.admin_token, &args.token) {
        (None, Some(token)) => {
            let url = format!("{}/v1/modules/{module}{query}", args.client.url);
            let answer = request_raw("PUT", &url, Some(token), Some((source, "text/x-python")))?;
            let output = if args.client.json {
                Output::Json
            } else {
                Output::Human
            };
            finish_as(answer, output)
        }
        _ => args.client.send_raw(
            "PUT",
            &format!("/tenants/{}/modules/{module}{query}", args.tenant),
            Some((source, "text/x-python")),
        ),
    }
}

pub fn env(cmd: EnvCommand) -> anyhow::Result<()> {
    let current = |client: &AdminClient, tenant: &str| -> anyhow::Result<Map<String, Value>> {
        let answer = client.get(&format!("/tenants/{}/env", encode(tenant)))?;
        Ok(answer["env"].as_object().cloned().unwrap_or_default())
    };
    match cmd {
        EnvCommand::List { tenant, client } => {
            client.send("GET", &format!("/tenants/{}/env", encode(&tenant)), None)
        }
        EnvCommand::Set {
            tenant,
            vars,
            client,
        } => {
            let mut env = current(&client, &tenant)?;
            for pair in &vars {
                let Some((name, value)) = pair.split_once('=') else {
                    bail!("{pair:?} is not NAME=value");
                };
                env.insert(name.to_owned(), Value::String(value.to_owned()));
            }
            client.send(
                "PUT",
                &format!("/tenants/{}/env", encode(&tenant)),
                Some(Value::Object(env)),
            )
        }
        EnvCommand::Remove {
            tenant,
            names,
            yes,
            client,
        } => {
            confirm(
                yes,
                &format!("Remove {} from {tenant}'s environment?", names.join(", ")),
            )?;
            let mut env = current(&client, &tenant)?;
            for name in &names {
                if env.shift_remove(name).is_none() {
                    bail!("{tenant} has no variable {name}");
                }
            }
            client.send(
                "PUT",
                &format!("/tenants/{}/env", encode(&tenant)),
                Some(Value::Object(env)),
            )
        }
    }
}

pub fn modules(cmd: ModulesCommand) -> anyhow::Result<()> {
    match cmd {
        ModulesCommand::List { tenant, client } => client.send(
            "GET",
            &format!("/tenants/{}/modules", encode(&tenant)),
            None,
        ),
        ModulesCommand::Remove {
            tenant,
            module,
            yes,
            client,
        } => {
            confirm(yes, &format!("Remove {module} from {tenant}'s uploads?"))?;
            client.send(
                "DELETE",
                &format!("/tenants/{}/modules/{}", encode(&tenant), encode(&module)),
                None,
            )
        }
    }
}

/// Asks on the terminal before something is destroyed, unless `--yes`; without a terminal to
/// ask on, refuses (a script passes `--yes`).
fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Pass --yes to confirm (stdin is not a terminal to ask on)");
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed: nothing changed")
    }
}

pub fn secret(cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Set {
            tenant,
            key,
            value,
            env,
            no_env,
            client,
        } => {
            // JSON when it parses (an object of credentials), a string otherwise; always the
            // text given for a variable of the code's environment.
            let value = if value == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                text.trim_end_matches('\n').to_owned()
            } else {
                value
            };
            // A secret already exposed to code stays so, and its value is text.
            let env = env
                || (!no_env
                    && client.get(&format!("/tenants/{}/secrets", encode(&tenant)))?["secrets"]
                        .as_array()
                        .is_some_and(|list| {
                            list.iter()
                                .any(|s| s["key"] == key.as_str() && s["expose"] == "env")
                        }));
            let mut body = if env {
                json!({ "value": value, "expose": "env" })
            } else {
                let value = serde_json::from_str(&value).unwrap_or(Value::String(value));
                json!({ "value": value })
            };
            if no_env {
                body["expose"] = json!("none");
            }
            client.send(
                "PUT",
                &format!("/tenants/{tenant}/secrets/{key}"),
                Some(body),
            )
        }
        SecretCommand::Remove {
            tenant,
            key,
            yes,
            client,
        } => {
            confirm(yes, &format!("Remove secret {key} of {tenant}?"))?;
            client.send("DELETE", &format!("/tenants/{tenant}/secrets/{key}"), None)
        }
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
        TenantCommand::Set {
            name,
            repo,
            branch,
            subdir,
            plan,
            webhook_secret,
            client,
        } => {
            let mut body = Map::new();
            for (key, value) in [
                ("repo", repo),
                ("branch", branch),
                ("subdir", subdir),
                ("plan", plan),
                ("webhook_secret", webhook_secret),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), json!(v));
                }
            }
            if body.is_empty() {
                bail!("nothing to change: give --repo, --branch, --subdir, --plan or --webhook-secret");
            }
            client.send(
                "PATCH",
                &format!("/tenants/{name}"),
                Some(Value::Object(body)),
            )
        }
        TenantCommand::Show { name, client } => {
            client.send("GET", &format!("/tenants/{name}"), None)
        }
        TenantCommand::Remove { name, yes, client } => {
            confirm(
                yes,
                &format!("Remove tenant {name} with its tokens, secrets, uploads and files?"),
            )?;
            client.send("DELETE", &format!("/tenants/{name}"), None)
        }
        TenantCommand::Sync {
            name,
            force,
            client,
        } => {
            let query = if force { "?force=true" } else { "" };
            if client.json {
                return client.send("POST", &format!("/tenants/{name}/sync{query}"), None);
            }
            sync(&client, &name, query)
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
        TokenCommand::Revoke { id, yes, client } => {
            confirm(
                yes,
                &format!("Revoke token {id}? Its holder's calls stop at once."),
            )?;
            client.send("DELETE", &format!("/tokens/{id}"), None)
        }
    }
}

pub fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Show { tenant, client } => {
            let t = client.get(&format!("/tenants/{}", encode(&tenant)))?;
            let plan_name = t["plan"].as_str().unwrap_or_default().to_owned();
            let plans = client.get("/plans")?;
            let plan = plans["plans"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == plan_name.as_str())
                .map(|p| p["policy"].clone())
                .unwrap_or(Value::Null);
            if client.json {
                let shown = json!({"tenant": tenant, "plan": plan_name, "policy": t["policy"],
                    "overrides": t["overrides"], "plan_policy": plan});
                println!("{}", serde_json::to_string_pretty(&shown)?);
                return Ok(());
            }
            print!("{}", policy_text(&t, &plan));
            Ok(())
        }
        PolicyCommand::Set {
            tenant,
            fields,
            reset,
            client,
        } => {
            let mut body = key_values(&fields)?;
            if !reset.is_empty() {
                body.insert("reset".into(), json!(reset));
            }
            let body = Value::Object(body);
            client.send("PUT", &format!("/tenants/{tenant}/policy"), Some(body))
        }
    }
}

/// A call's keyword arguments from the command line: `key=value` pairs, `@file.json` or `-`
/// (stdin) for a JSON object of them; later ones win.
fn call_kwargs(args: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut kwargs = Map::new();
    for arg in args {
        let object = |text: &str, from: &str| -> anyhow::Result<Map<String, Value>> {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => bail!("{from} must hold a JSON object of keyword arguments"),
                Err(e) => bail!("{from} is not JSON: {e}"),
            }
        };
        if arg == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("could not read the arguments from stdin")?;
            kwargs.extend(object(&text, "stdin")?);
        } else if let Some(path) = arg.strip_prefix('@') {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read the arguments from {path}"))?;
            kwargs.extend(object(&text, path)?);
        } else {
            kwargs.extend(key_values(std::slice::from_ref(arg))?);
        }
    }
    Ok(kwargs)
}

pub fn call(args: CallArgs) -> anyhow::Result<()> {
    let mut body = call_kwargs(&args.kwargs)?;
    if body.contains_key("fn") || body.contains_key("token") {
        bail!("'fn' and 'token' cannot be keyword arguments of a call");
    }
    body.insert("fn".into(), json!(args.function));
    let token = args
        .token
        .context("no token: pass --token or set FALRA_TOKEN")?;
    let mut query = Vec::new();
    if let Some(t) = args.timeout_ms {
        query.push(format!("timeout_ms={t}"));
    }
    if let Some(v) = &args.version {
        query.push(format!("version={}", encode(v)));
    }
    let mut url = format!("{}/v1/call", args.url);
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    let answer = request("POST", &url, Some(&token), Some(&Value::Object(body)))?;
    if answer.body["ok"] == json!(true) {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer.body)?);
        } else {
            eprint!(
                "{}",
                printable_lines(answer.body["logs"].as_str().unwrap_or_default())
            );
            println!("{}", serde_json::to_string_pretty(&answer.body["result"])?);
        }
        return Ok(());
    }
    eprintln!("{}", serde_json::to_string_pretty(&answer.body)?);
    finish(answer)
}

impl JobClient {
    fn token(&self) -> anyhow::Result<&str> {
        self.token
            .as_deref()
            .context("no token: pass --token or set FALRA_TOKEN (a token with the jobs scope)")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/jobs{path}", self.url.trim_end_matches('/'))
    }

    fn output(&self) -> Output {
        if self.json {
            Output::Json
        } else {
            Output::Human
        }
    }
}

pub fn job(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Submit {
            function,
            kwargs,
            idempotency_key,
            version,
            max_attempts,
            callback_url,
            wait,
            client,
        } => {
            let mut body = key_values(&kwargs)?;
            body.insert("fn".into(), json!(function));
            let mut query = Vec::new();
            if let Some(v) = version {
                query.push(format!("version={}", encode(&v)));
            }
            if let Some(n) = max_attempts {
                query.push(format!("max_attempts={n}"));
            }
            if let Some(url) = callback_url {
                query.push(format!("callback_url={}", encode(&url)));
            }
            let mut url = client.url("");
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            let mut req = ureq::post(&url)
                .set("Authorization", &format!("Bearer {}", client.token()?))
                .set("Content-Type", "application/json");
            if let Some(key) = &idempotency_key {
                req = req.set("Idempotency-Key", key);
            }
            let answer = read_answer(req.send_string(&Value::Object(body).to_string()), &url)?;
            if !(200..300).contains(&answer.status) || !wait {
                return finish(answer);
            }
            let id = answer.body["job_id"]
                .as_str()
                .context("the daemon's answer has no job_id")?
                .to_owned();
            eprintln!("job {id} queued");
            wait_for(&client, &id, None)
        }
        JobCommand::Status { id, client } => finish_as(
            request(
                "GET",
                &client.url(&format!("/{}", encode(&id))),
                Some(client.token()?),
                None,
            )?,
            client.output(),
        ),
        JobCommand::Wait {
            id,
            timeout_secs,
            client,
        } => wait_for(&client, &id, timeout_secs),
        JobCommand::Cancel { id, yes, client } => {
            confirm(yes, &format!("Cancel job {id}? A running one is stopped."))?;
            finish_as(
                request(
                    "DELETE",
                    &client.url(&format!("/{}", encode(&id))),
                    Some(client.token()?),
                    None,
                )?,
                client.output(),
            )
        }
        JobCommand::List {
            status,
            limit,
            client,
        } => {
            let mut url = client.url(&format!("?limit={limit}"));
            if let Some(s) = status {
                url.push_str(&format!("&status={}", encode(&s)));
            }
            let answer = request("GET", &url, Some(client.token()?), None)?;
            if client.json || !(200..300).contains(&answer.status) {
                return finish(answer);
            }
            let rows: Vec<Value> = answer.body["jobs"]
                .as_array()
                .map(|jobs| {
                    jobs.iter()
                        .map(|j| {
                            json!({
                                "job_id": j["job_id"],
                                "status": j["status"],
                                "fn": j["fn"],
                                "attempts": j["attempts"],
                                "created_at": j["created_at"],
                                "error": j["error"]["code"],
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            print!("{}", human(&json!({ "jobs": rows })));
            Ok(())
        }
    }
}

pub fn schedule(cmd: ScheduleCommand) -> anyhow::Result<()> {
    let base = |client: &JobClient, path: &str| {
        format!("{}/v1/schedules{path}", client.url.trim_end_matches('/'))
    };
    let (method, url, body, client) = match cmd {
        ScheduleCommand::Create {
            cron,
            function,
            kwargs,
            version,
            client,
        } => {
            let mut job = key_values(&kwargs)?;
            job.insert("fn".into(), json!(function));
            let mut body = json!({"cron": cron, "body": job});
            if let Some(v) = version {
                body["version"] = json!(v);
            }
            ("POST", base(&client, ""), Some(body), client)
        }
        ScheduleCommand::List { client } => ("GET", base(&client, ""), None, client),
        ScheduleCommand::Pause { id, client } => (
            "POST",
            base(&client, &format!("/{}/pause", encode(&id))),
            None,
            client,
        ),
        ScheduleCommand::Resume { id, client } => (
            "POST",
            base(&client, &format!("/{}/resume", encode(&id))),
            None,
            client,
        ),
        ScheduleCommand::Remove { id, yes, client } => (
            {
                confirm(yes, &format!("Remove schedule {id}?"))?;
                "DELETE"
            },
            base(&client, &format!("/{}", encode(&id))),
            None,
            client,
        ),
    };
    let answer = request(method, &url, Some(client.token()?), body.as_ref())?;
    finish_as(answer, client.output())
}

fn read_answer(sent: Result<ureq::Response, ureq::Error>, url: &str) -> anyhow::Result<Answer> {
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

/// Polls the job until it ends, drawing a progress bar on stderr when it is a terminal; prints
/// the job and fails unless it succeeded.
fn wait_for(client: &JobClient, id: &str, timeout_secs: Option<u64>) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let url = client.url(&format!("/{}", encode(id)));
    let token = client.token()?;
    let started = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let answer = request("GET", &url, Some(token), None)?;
        if !(200..300).contains(&answer.status) {
            return finish(answer);
        }
        let status = answer.body["status"].as_str().unwrap_or("").to_owned();
        let line = progress_line(&answer.body);
        if line != last_line {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last_line = line;
        }
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            if tty {
                eprintln!();
            }
            println!("{}", serde_json::to_string_pretty(&answer.body)?);
            if status == "succeeded" {
                return Ok(());
            }
            let code = answer.body["error"]["code"].as_str().unwrap_or(&status);
            let message = answer.body["error"]["message"].as_str().unwrap_or("");
            bail!("job {id} {status}: {code}: {message}");
        }
        if let Some(limit) = timeout_secs {
            if started.elapsed().as_secs() >= limit {
                bail!("job {id} is still {status} after {limit} s (it goes on)");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `running [#######.............]  35%  rows 1200` from a job's status.
fn progress_line(job: &Value) -> String {
    let status = job["status"].as_str().unwrap_or("?");
    let fraction = job["progress"]["fraction"]
        .as_f64()
        .unwrap_or(0.0)
        .clamp(0.0, 1.0);
    let message = job["progress"]["message"].as_str().unwrap_or("");
    const WIDTH: usize = 30;
    let filled = (fraction * WIDTH as f64).round() as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(WIDTH - filled);
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(60)
        .collect();
    format!(
        "{status:<9} [{bar}] {:>3}%  {message}",
        (fraction * 100.0).round() as u32
    )
    .trim_end()
    .to_owned()
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
    #[test]
    fn tables_fit_the_width_wrapping_long_cells_whole() {
        let long = "word ".repeat(30);
        let rows = [
            json!({"name": "caro", "plan": "annual", "note": long.trim()}),
            json!({"name": "dan", "plan": null}),
        ];
        let text = table_in(&rows, Some(40));
        assert!(text.lines().all(|l| l.chars().count() <= 40), "{text}");
        assert!(text.starts_with("NAME"), "{text}");
        let words: usize = text.matches("word").count();
        assert_eq!(words, 30, "nothing cut: {text}");
        assert!(text.contains("dan") && text.contains('-'), "{text}");
        let wide = table_in(&rows, None);
        assert_eq!(wide.lines().count(), 3, "{wide}");
    }

    #[test]
    fn since_takes_a_time_a_date_or_a_span_back() {
        let now = 1_780_000_000_000;
        assert_eq!(
            since_time("2026-12-01T10:00:00Z", now).unwrap(),
            "2026-12-01T10:00:00Z"
        );
        assert_eq!(
            since_time("2026-12-01", now).unwrap(),
            "2026-12-01T00:00:00Z"
        );
        let hour = since_time("1h", now).unwrap();
        assert_eq!(
            falra_core::clock::parse_rfc3339(&hour),
            Some(now - 3_600_000)
        );
        for bad in ["yesterday", "5y", "h", "-1d", "2026-13-01"] {
            assert!(since_time(bad, now).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn lists_print_as_tables_and_the_rest_as_lines() {
        let body = json!({"tokens": [
            {"id": "tok_1", "scopes": ["call", "deploy"], "expires_at": null},
            {"id": "tok_22", "scopes": ["call"], "expires_at": "2027-01-01T00:00:00Z"},
        ]});
        assert_eq!(
            human(&body),
            "ID      SCOPES       EXPIRES_AT\n\
             tok_1   call,deploy  -\n\
             tok_22  call         2027-01-01T00:00:00Z\n"
        );
        assert_eq!(
            human(&json!({"version": "abc", "n": 2})),
            "version: abc\nn: 2\n"
        );
        assert_eq!(human(&json!({"secrets": []})), "secrets: none\n");
        assert_eq!(
            encode("2026-11-01T00:00:00+01:00"),
            "2026-11-01T00%3A00%3A00%2B01%3A00"
        );
    }

    #[test]
    fn progress_draws_a_bar_and_strips_control_characters() {
        let line = progress_line(&json!({"status": "running",
            "progress": {"fraction": 0.5, "message": "rows\u{1b}[2J 10"}}));
        assert_eq!(
            line,
            format!(
                "running   [{}{}]  50%  rows[2J 10",
                "#".repeat(15),
                ".".repeat(15)
            )
        );
        assert!(
            progress_line(&json!({"status": "queued", "progress": null}))
                .starts_with("queued    [....")
        );
    }

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
