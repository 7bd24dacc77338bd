//! What a tenant's `requirements.txt` may say: package requirements, nothing else.
//!
//! pip's requirements format can point pip at local paths (built with the tree's own PEP 517
//! backend), VCS checkouts, other requirement files, other indexes, or switch off the
//! wheels-only rule (`--no-binary`), and every one of those makes pip run code the tenant
//! controls, or fetch from where the tenant says. So each line must be of a known, harmless
//! form — an allow-list of line shapes, not a scan for bad ones:
//!
//! `name[extras] <version specifiers> ; <environment marker> --hash=sha256:<hex> …`
//!
//! with every part but the name optional. Comments and blank lines are allowed. Everything
//! else — options (`-r`, `-e`, `--index-url`, `--find-links`, `--no-binary`, …), URLs, paths,
//! `name @ url`, line continuations — is refused with the line and the reason. The package
//! index is the operator's choice (`falra serve --pip-index-url`), never the tenant's.

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: {text:?} is not allowed: {why}")]
pub struct RequirementError {
    /// The file the line is in (`requirements.txt`, `pyproject.toml`).
    pub file: &'static str,
    /// 1-based; for a requirement continued over several lines, its first.
    pub line: usize,
    pub text: String,
    pub why: &'static str,
}

/// One checked requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Where it starts in its file (1-based).
    pub line: usize,
    /// The requirement as checked, without comments or hashes: `name[extras] specs ; marker`.
    pub spec: String,
    /// Its package's name, normalised (PEP 503: lower case, runs of `-_.` as one `-`).
    pub name: String,
    /// The SHA-256 digests (hex, lower case) the file pins it to, if any.
    pub hashes: Vec<String>,
}

/// A package name as PEP 503 compares them.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Checks every line of a requirements file; the first refused one is the error.
pub fn check(text: &str) -> Result<(), RequirementError> {
    parse(text).map(|_| ())
}

/// The requirements of a `requirements.txt`, each checked. A line ending in `\` continues on
/// the next (as `pip-compile --generate-hashes` writes them); builders are given
/// [`render`]'s file, one requirement a line, never the tenant's own.
pub fn parse(text: &str) -> Result<Vec<Requirement>, RequirementError> {
    const FILE: &str = "requirements.txt";
    // pip splits lines as Python's `splitlines` does (a lone `\r`, form feeds, U+2028…) and
    // honours a `coding:` cookie: only printable ASCII, tabs and `\n` (or `\r\n`) are let
    // through, so that this check and the builders see the same lines.
    let bytes = text.as_bytes();
    for (at, &b) in bytes.iter().enumerate() {
        let fine = matches!(b, 0x20..=0x7e | b'\t' | b'\n')
            || (b == b'\r' && bytes.get(at + 1) == Some(&b'\n'));
        if !fine {
            let line = 1 + bytes[..at].iter().filter(|&&c| c == b'\n').count();
            let text = text
                .lines()
                .nth(line - 1)
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(RequirementError {
                file: FILE,
                line,
                text,
                why: "only printable ASCII is allowed (no control characters, other line breaks or non-ASCII text)",
            });
        }
    }
    let mut out = Vec::new();
    // A requirement continued with `\`: where it began, and what it holds so far.
    let mut pending: Option<(usize, String)> = None;
    let lines: Vec<&str> = text.lines().collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let refuse = |at: usize, text: &str, why| RequirementError {
            file: FILE,
            line: at,
            text: text.chars().take(200).collect(),
            why,
        };
        if i < 2 && line.trim_start().starts_with('#') && line.contains("coding") {
            return Err(refuse(
                i + 1,
                line,
                "a coding declaration is not allowed: the file is read as ASCII",
            ));
        }
        let (first, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(head) = line.strip_suffix('\\') {
            if strip_comment(head).len() != head.len() {
                return Err(refuse(first, line, "a comment cannot be continued"));
            }
            if i + 1 == lines.len() {
                return Err(refuse(
                    first,
                    line,
                    "the last line is continued, but nothing follows",
                ));
            }
            joined.push_str(head);
            joined.push(' ');
            pending = Some((first, joined));
            continue;
        }
        joined.push_str(line);
        let code = strip_comment(&joined).trim();
        if code.is_empty() {
            continue;
        }
        let requirement = check_line(code).map_err(|why| refuse(first, &joined, why))?;
        out.push(Requirement {
            line: first,
            ..requirement
        });
    }
    Ok(out)
}

/// The requirements as one file a builder reads: one a line, each with its hashes.
pub fn render(requirements: &[Requirement]) -> String {
    let mut out = String::new();
    for r in requirements {
        out.push_str(&r.spec);
        for h in &r.hashes {
            out.push_str(" --hash=sha256:");
            out.push_str(h);
        }
        out.push('\n');
    }
    out
}

/// The requirements of a `pyproject.toml`: its `[project] dependencies`, each checked as a
/// requirements line is. Dependencies the build backend would compute (`dynamic`) are
/// refused: computing them runs the tenant's code. No other table is read (`[tool.uv]`,
/// sources and indexes are the operator's to set, not the project's).
pub fn from_pyproject(text: &str) -> Result<Vec<Requirement>, RequirementError> {
    const FILE: &str = "pyproject.toml";
    let refuse = |line: usize, text: &str, why| RequirementError {
        file: FILE,
        line,
        text: text.chars().take(200).collect(),
        why,
    };
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count())
            .unwrap_or(1);
        refuse(line, e.message(), "the file is not valid TOML")
    })?;
    let Some(project) = doc.get("project").and_then(|p| p.as_table()) else {
        return Ok(Vec::new());
    };
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map_or(1, |i| i + 1)
    };
    let dynamic = project
        .get("dynamic")
        .and_then(|d| d.as_array())
        .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("dependencies")));
    if dynamic {
        return Err(refuse(
            line_of("dynamic"),
            "dynamic = [\"dependencies\"]",
            "dependencies computed by the build backend would run the project's code: list them in [project] dependencies",
        ));
    }
    let Some(deps) = project.get("dependencies") else {
        return Ok(Vec::new());
    };
    let deps = deps.as_array().ok_or_else(|| {
        refuse(
            line_of("dependencies"),
            "dependencies",
            "[project] dependencies is a list of requirement strings",
        )
    })?;
    let mut out = Vec::new();
    for dep in deps {
        let Some(dep) = dep.as_str() else {
            return Err(refuse(
                line_of("dependencies"),
                "dependencies",
                "[project] dependencies is a list of requirement strings",
            ));
        };
        let line = line_of(dep);
        if !dep.bytes().all(|b| matches!(b, 0x20..=0x7e)) {
            return Err(refuse(line, dep, "only printable ASCII is allowed"));
        }
        let code = dep.trim();
        if code.contains("--") {
            return Err(refuse(line, dep, "a dependency carries no options"));
        }
        let requirement = check_line(code).map_err(|why| refuse(line, dep, why))?;
        out.push(Requirement {
            line,
            ..requirement
        });
    }
    Ok(out)
}

/// The line without its comment: `#` at the start or after white space, as pip reads it.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn check_line(code: &str) -> Result<Requirement, &'static str> {
    if code.starts_with('-') {
        return Err("options are not allowed: the package index is set by the operator, and only wheels are installed");
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !code.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("a requirement starts with a package name (no paths or URLs)");
    }
    let name_end = code.find(|c: char| !is_name_char(c)).unwrap_or(code.len());
    let name = code[..name_end].to_ascii_lowercase();
    // pip reads a "name" like these as a file beside it, and would install or build it.
    const ARCHIVES: &[&str] = &[
        ".whl",
        ".zip",
        ".tar",
        ".tgz",
        ".tar.gz",
        ".tar.bz2",
        ".tbz",
        ".tar.xz",
        ".txz",
        ".tlz",
        ".tar.lz",
        ".tar.lzma",
        ".egg",
    ];
    if ARCHIVES.iter().any(|ext| name.ends_with(ext)) {
        return Err("a requirement is a package name, not an archive file");
    }
    let mut rest = code[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('[') {
        let close = after.find(']').ok_or("unclosed [extras]")?;
        let extras = &after[..close];
        if !extras
            .chars()
            .all(|c| is_name_char(c) || c == ',' || c == ' ')
        {
            return Err("extras are package-style names separated by commas");
        }
        rest = after[close + 1..].trim_start();
    }
    // Options after the requirement: only hashes.
    let (spec, hashes) = match rest.find("--") {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if spec.split_whitespace().any(|word| word.starts_with('-')) {
        return Err("the only option a requirement may carry is --hash=sha256:<hex>");
    }
    let mut digests = Vec::new();
    for option in hashes.split_whitespace() {
        let hex = option
            .strip_prefix("--hash=sha256:")
            .ok_or("the only option a requirement may carry is --hash=sha256:<hex>")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a --hash is sha256: and 64 hex digits");
        }
        digests.push(hex.to_ascii_lowercase());
    }
    let (versions, marker) = match spec.split_once(';') {
        Some((v, m)) => (v.trim(), Some(m.trim())),
        None => (spec.trim(), None),
    };
    if !versions.is_empty() {
        if !versions.starts_with(['<', '>', '=', '!', '~']) {
            return Err(
                "after the name come version specifiers (==, >=, ~=, …), not a URL or path",
            );
        }
        let ok = versions.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '<' | '>' | '=' | '!' | '~' | ',' | '.' | '*' | '+' | '-' | '_' | ' '
                )
        });
        if !ok {
            return Err("version specifiers hold only versions and comparison operators");
        }
    }
    if let Some(marker) = marker {
        check_marker(marker)?;
    }
    Ok(Requirement {
        line: 0,
        spec: code[..code.len() - hashes.len()]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        name: normalize_name(&name),
        hashes: digests,
    })
}

/// The names an environment marker may compare (PEP 508).
const MARKER_VARIABLES: &[&str] = &[
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
];

/// A marker is PEP 508 tokens only: known variables, quoted values, comparison operators,
/// `and`/`or`/`in`/`not` and parentheses.
fn check_marker(marker: &str) -> Result<(), &'static str> {
    const WHY: &str =
        "an environment marker compares names such as python_version with quoted values";
    let mut rest = marker.trim();
    if rest.is_empty() {
        return Err(WHY);
    }
    while !rest.is_empty() {
        let c = rest.chars().next().unwrap_or(' ');
        let taken = if c == '"' || c == '\'' {
            let close = rest[1..].find(c).ok_or(WHY)?;
            let value = &rest[1..1 + close];
            if !value
                .chars()
                .all(|v| v.is_ascii_alphanumeric() || " ._-*+!<>=~,".contains(v))
            {
                return Err(WHY);
            }
            close + 2
        } else if c == '(' || c == ')' {
            1
        } else if "<>=!~".contains(c) {
            let n = rest
                .find(|x: char| !"<>=!~".contains(x))
                .unwrap_or(rest.len());
            if !["<", "<=", ">", ">=", "==", "!=", "~=", "==="].contains(&&rest[..n]) {
                return Err(WHY);
            }
            n
        } else if c.is_ascii_alphabetic() {
            let n = rest
                .find(|x: char| !(x.is_ascii_alphanumeric() || x == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..n];
            if !(MARKER_VARIABLES.contains(&word) || ["and", "or", "in", "not"].contains(&word)) {
                return Err(WHY);
            }
            n
        } else {
            return Err(WHY);
        };
        rest = rest[taken..].trim_start();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_requirements_pass() {
        let text = "\
# a comment
six
requests==2.31.0  # pinned
numpy>=1.24,<2 ; python_version >= \"3.9\"
pandas[performance, excel] ~= 2.1.0
tabulate === 0.9.0
Django!=4.0.*
urllib3==2.0.7 --hash=sha256:fa7ee3c4c1b7e1be6d5d1d85bf4e9da7e8c0a6a2a7d5c8d0d1a1e1f0e2c3b4a5

typing_extensions; platform_machine == 'x86_64' and python_version < '3.12'
";
        check(text).unwrap();
        check("six\r\nnumpy\r\n").unwrap();
    }

    #[test]
    fn everything_that_makes_pip_run_or_fetch_what_the_tenant_says_is_refused() {
        for (text, line) in [
            ("six\n./pkg\n", 2),
            ("/srv/pkg\n", 1),
            ("-e .\n", 1),
            ("-r other.txt\n", 1),
            ("-c constraints.txt\n", 1),
            ("--no-binary :all:\nsix\n", 1),
            ("--find-links http://127.0.0.1:9/\n", 1),
            ("--index-url https://evil.example/simple\n", 1),
            ("-i https://evil.example/simple\n", 1),
            ("--extra-index-url https://evil.example/simple\n", 1),
            ("--trusted-host evil.example\n", 1),
            ("six --config-settings=x=y\n", 1),
            ("six --global-option=build\n", 1),
            ("HTTP://127.0.0.1/pkg.tar.gz\n", 1),
            ("https://example.com/pkg.whl\n", 1),
            ("pkg @ file:///srv/pkg\n", 1),
            ("pkg @ https://example.com/pkg.whl\n", 1),
            ("git+https://example.com/repo.git\n", 1),
            ("ht\\\ntp://127.0.0.1/\n", 1),
            ("six\\\n", 1),
            ("six \\\n  --index-url https://evil.example/simple\n", 1),
            ("six\nnumpy \\\n -e .\n", 2),
            ("six # pinned \\\n-e .\n", 1),
            ("~/pkg\n", 1),
            ("six; os.system('x')\n", 1),
            ("six --hash=md5:abc\n", 1),
            ("six[extra\n", 1),
            ("pkg.whl\n", 1),
            ("six\nPkg-1.0.TAR.GZ\n", 2),
            ("six (>=1)\n", 1),
            ("six # x\r--no-binary :all:\n", 1),
            ("six\nnumpy\x0c-e .\n", 2),
            ("six\u{2028}-e .\n", 1),
            ("# -*- coding: utf-7 -*-\nsix\n", 1),
            ("six\n# vim: coding=utf-7\n", 2),
            ("six==1 -C k=v\n", 1),
            ("six\tnumpy\x00\n", 1),
            ("pkg.tar.lzma\n", 1),
        ] {
            let e = check(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    #[test]
    fn continued_lines_are_one_requirement_and_hashes_are_kept() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text = format!(
            "# generated\nsix==1.17.0 \\\n    --hash=sha256:{a} \\\n    --hash=sha256:{b}\n    # via x\nTyping_Extensions>=4 ; python_version < '3.12'  # c\n"
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (
                parsed[0].line,
                parsed[0].spec.as_str(),
                parsed[0].name.as_str()
            ),
            (2, "six==1.17.0", "six")
        );
        assert_eq!(parsed[0].hashes, [a.clone(), b.to_ascii_lowercase()]);
        assert_eq!(parsed[1].line, 6);
        assert_eq!(parsed[1].name, "typing-extensions");
        assert_eq!(
            render(&parsed),
            format!(
                "six==1.17.0 --hash=sha256:{a} --hash=sha256:{}\nTyping_Extensions>=4 ; python_version < '3.12'\n",
                b.to_ascii_lowercase()
            )
        );
        assert_eq!(normalize_name("Zope.Interface__x"), "zope-interface-x");
    }

    #[test]
    fn pyproject_dependencies_are_checked_as_requirements_are() {
        let text = "[build-system]\nrequires = [\"hatchling\"]\n\n[project]\nname = \"app\"\ndependencies = [\n  \"six>=1\",\n  \"tabulate[widechars]==0.9.0\",\n]\n\n[tool.uv]\nindex-url = \"https://evil.example/simple\"\n";
        let deps = from_pyproject(text).unwrap();
        assert_eq!(
            deps.iter()
                .map(|d| (d.line, d.spec.as_str()))
                .collect::<Vec<_>>(),
            [(7, "six>=1"), (8, "tabulate[widechars]==0.9.0")]
        );
        assert!(from_pyproject("[tool.black]\nline-length = 99\n")
            .unwrap()
            .is_empty());
        for (text, line) in [
            ("[project]\ndependencies = [\"pkg @ file:///srv/pkg\"]\n", 2),
            ("[project]\nname = \"x\"\ndynamic = [\"dependencies\"]\n", 3),
            (
                "[project]\ndependencies = [\n\"six\",\n\"git+https://example.com/r.git\"]\n",
                4,
            ),
            ("[project]\ndependencies = \"six\"\n", 2),
            ("[project\n", 1),
        ] {
            let e = from_pyproject(text).expect_err(text);
            assert_eq!((e.file, e.line), ("pyproject.toml", line), "{text}: {e}");
        }
    }

    #[test]
    fn the_error_names_the_line_and_why() {
        let e = check("six\n--no-binary :all:\n").unwrap_err();
        let message = e.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("--no-binary"), "{message}");
        assert!(message.contains("operator"), "{message}");
    }
}
