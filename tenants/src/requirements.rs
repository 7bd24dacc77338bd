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
#[error("requirements.txt line {line}: {text:?} is not allowed: {why}")]
pub struct RequirementError {
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub why: &'static str,
}

/// Checks every line of a requirements file; the first refused one is the error.
pub fn check(text: &str) -> Result<(), RequirementError> {
    // pip splits lines as Python's `splitlines` does (a lone `\r`, form feeds, U+2028…) and
    // honours a `coding:` cookie: only printable ASCII, tabs and `\n` (or `\r\n`) are let
    // through, so that this check and pip see the same lines.
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
                line,
                text,
                why: "only printable ASCII is allowed (no control characters, other line breaks or non-ASCII text)",
            });
        }
    }
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let refuse = |why| RequirementError {
            line: i + 1,
            text: line.chars().take(200).collect(),
            why,
        };
        if line.ends_with('\\') {
            return Err(refuse("line continuations are not allowed"));
        }
        if i < 2 && line.trim_start().starts_with('#') && line.contains("coding") {
            return Err(refuse(
                "a coding declaration is not allowed: the file is read as ASCII",
            ));
        }
        let code = strip_comment(line).trim();
        if code.is_empty() {
            continue;
        }
        check_line(code).map_err(refuse)?;
    }
    Ok(())
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

fn check_line(code: &str) -> Result<(), &'static str> {
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
    for option in hashes.split_whitespace() {
        let hex = option
            .strip_prefix("--hash=sha256:")
            .ok_or("the only option a requirement may carry is --hash=sha256:<hex>")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a --hash is sha256: and 64 hex digits");
        }
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
    Ok(())
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
    fn the_error_names_the_line_and_why() {
        let e = check("six\n--no-binary :all:\n").unwrap_err();
        let message = e.to_string();
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("--no-binary"), "{message}");
        assert!(message.contains("operator"), "{message}");
    }
}
