//! What a release's `requirements.txt` may say: pinned `name==version` lines, comments and
//! blank lines, nothing else.
//!
//! pip's own requirements format is a small language: `-r other.txt` reads another file
//! (and quotes it in errors), `--find-links URL`/`--index-url` add sources despite
//! `--no-index`, `./pkg` and `pkg @ file://…` install source trees by running their build
//! code, and markers and extras change what gets resolved. None of that is honoured. The
//! file is parsed here into pins, each pin is matched to one `.whl` in the release's
//! `wheels/`, and pip only ever sees those wheel files on a fixed command line. A refused
//! line is named by its number and the rule it breaks, never quoted, so an error can
//! only ever carry the release's own words back.
//!
//! Pure functions, no I/O: fuzzed directly.

use std::collections::HashMap;

/// Biggest `requirements.txt` accepted: far above any real pinned list.
pub const MAX_BYTES: usize = 256 * 1024;
/// Most pins in one file.
pub const MAX_PINS: usize = 2000;
/// Longest project name (PyPI's own limit is far lower in practice).
const MAX_NAME: usize = 128;
const MAX_VERSION: usize = 64;

/// One `name==version` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Normalized as PEP 503 does (lowercase, runs of `-_.` as one `-`).
    pub name: String,
    /// Lowercased; compared to a wheel's version as text.
    pub version: String,
    /// 1-based line number in the file.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementsError {
    #[error("requirements.txt is {size} bytes, over the {MAX_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("requirements.txt has more than {MAX_PINS} requirements")]
    TooMany,
    #[error("requirements.txt line {line}: {reason}; only `name==version` lines (pinned, one per wheel in wheels/), comments and blank lines are allowed")]
    Line { line: usize, reason: &'static str },
    #[error("requirements.txt line {line}: {name} is already pinned on line {first}")]
    Duplicate {
        line: usize,
        first: usize,
        name: String,
    },
}

/// Parses the file's bytes into pins, in file order.
pub fn parse(text: &[u8]) -> Result<Vec<Pin>, RequirementsError> {
    if text.len() > MAX_BYTES {
        return Err(RequirementsError::TooLarge { size: text.len() });
    }
    let mut pins: Vec<Pin> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // `split` rather than `lines`: a lone '\r' must not hide anything from line numbers.
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let bad = |reason| RequirementsError::Line { line, reason };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(raw) = std::str::from_utf8(raw) else {
            return Err(bad("not UTF-8"));
        };
        let Some(pin) = parse_line(raw).map_err(bad)? else {
            continue;
        };
        if pins.len() == MAX_PINS {
            return Err(RequirementsError::TooMany);
        }
        let (name, version) = pin;
        if let Some(&first) = seen.get(&name) {
            return Err(RequirementsError::Duplicate { line, first, name });
        }
        seen.insert(name.clone(), line);
        pins.push(Pin {
            name,
            version,
            line,
        });
    }
    Ok(pins)
}

/// One line: `Ok(None)` for blank/comment, the pin, or why it is refused.
fn parse_line(raw: &str) -> Result<Option<(String, String)>, &'static str> {
    if raw.chars().any(|c| c.is_control() && c != '\t') {
        return Err("control characters are not allowed");
    }
    // pip's comment rule: '#' at the start or after whitespace starts a comment.
    let mut body = raw;
    let mut prev_space = true;
    for (i, c) in raw.char_indices() {
        if c == '#' && prev_space {
            body = &raw[..i];
            break;
        }
        prev_space = c == ' ' || c == '\t';
    }
    let body = body.trim_matches([' ', '\t']);
    if body.is_empty() {
        return Ok(None);
    }
    if body.ends_with('\\') {
        return Err("line continuations are not allowed");
    }
    if body.starts_with('-') {
        return Err("options are not allowed (no -r, -c, -e, --find-links, --index-url...)");
    }
    if body.contains("://") || body.contains('@') {
        return Err("URLs and direct references (`name @ url`) are not allowed");
    }
    if body.contains(';') {
        return Err("environment markers are not supported");
    }
    if body.contains('[') {
        return Err("extras are not supported: pin each package you need");
    }
    if body.starts_with('.') || body.starts_with('~') || body.contains('/') {
        return Err("paths are not allowed");
    }
    if body.contains("===") {
        return Err("arbitrary equality (`===`) is not supported");
    }
    let Some((name, version)) = body.split_once("==") else {
        return Err("the version must be pinned with `==`");
    };
    let (name, version) = (
        name.trim_matches([' ', '\t']),
        version.trim_matches([' ', '\t']),
    );
    if !valid_name(name) {
        return Err("the project name is not a valid name");
    }
    if !valid_version(version) {
        return Err(
            "the version must be one exact version (digits, letters, `.`, `+`, `!`; no wildcards, ranges or lists)",
        );
    }
    Ok(Some((normalize_name(name), version.to_ascii_lowercase())))
}

/// PEP 508 names: ASCII letters and digits, with `-_.` inside.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=MAX_NAME).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn valid_version(v: &str) -> bool {
    let b = v.as_bytes();
    (1..=MAX_VERSION).contains(&b.len())
        && b[0].is_ascii_digit()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'!'))
}

/// PEP 503 normalization: lowercase, each run of `-`, `_`, `.` becomes one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A wheel's file name, as PEP 427 spells it:
/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WheelName {
    /// Normalized like [`Pin::name`].
    pub name: String,
    pub version: String,
    /// The platform tag(s), e.g. `any`, `manylinux_2_17_x86_64.manylinux2014_x86_64`.
    pub platform: String,
}

/// `None` for anything that is not a well-formed wheel file name.
pub fn parse_wheel_name(file: &str) -> Option<WheelName> {
    let stem = file.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    if !(5..=6).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let (name, version) = (parts[0], parts[1]);
    let tags_ok = parts[2..].iter().all(|p| {
        p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.'))
    });
    if !valid_name(name) || !valid_version(&version.replace('_', ".")) || !tags_ok {
        return None;
    }
    Some(WheelName {
        name: normalize_name(name),
        version: version.to_ascii_lowercase(),
        platform: parts[parts.len() - 1].to_owned(),
    })
}

/// Whether a wheel's platform tag can run on a Linux host of CPU `arch`
/// (`std::env::consts::ARCH`): `any`, or one of its `.`-separated tags ends in the arch.
pub fn platform_fits(platform: &str, arch: &str) -> bool {
    platform
        .split('.')
        .any(|t| t == "any" || (t.contains("linux") && t.ends_with(&format!("_{arch}"))))
}

/// Picks, for each pin, the one wheel among `files` (names in `wheels/`) that installs it
/// on this host; the result is in pin order. Files that match no pin are left alone.
pub fn match_wheels<'a>(
    pins: &[Pin],
    files: &'a [String],
    arch: &str,
) -> Result<Vec<&'a str>, WheelError> {
    let parsed: Vec<(&str, WheelName)> = files
        .iter()
        .filter_map(|f| Some((f.as_str(), parse_wheel_name(f)?)))
        .collect();
    pins.iter()
        .map(|pin| {
            let same: Vec<&(&str, WheelName)> = parsed
                .iter()
                .filter(|(_, w)| w.name == pin.name && w.version == pin.version)
                .collect();
            let fitting: Vec<&str> = same
                .iter()
                .filter(|(_, w)| platform_fits(&w.platform, arch))
                .map(|(f, _)| *f)
                .collect();
            match fitting.as_slice() {
                [one] => Ok(*one),
                [] if same.is_empty() => Err(WheelError::Missing(pin.clone())),
                [] => Err(WheelError::NoneFits {
                    pin: pin.clone(),
                    arch: arch.to_owned(),
                }),
                many => Err(WheelError::Ambiguous {
                    pin: pin.clone(),
                    files: many.iter().map(|f| f.to_string()).collect(),
                }),
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WheelError {
    #[error("requirements.txt line {}: no wheel for {}=={} in wheels/ (expected {}-{}-*.whl; sdists are never built)", .0.line, .0.name, .0.version, .0.name.replace('-', "_"), .0.version)]
    Missing(Pin),
    #[error("requirements.txt line {}: wheels/ has {}=={} only for other platforms than linux {arch}", pin.line, pin.name, pin.version)]
    NoneFits { pin: Pin, arch: String },
    #[error("requirements.txt line {}: several wheels in wheels/ could install {}=={} here ({}); keep one", pin.line, pin.name, pin.version, files.join(", "))]
    Ambiguous { pin: Pin, files: Vec<String> },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(text: &str) -> Vec<(String, String, usize)> {
        parse(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.version, p.line))
            .collect()
    }

    fn refused(text: &str) -> (usize, String) {
        match parse(text.as_bytes()) {
            Err(RequirementsError::Line { line, reason }) => (line, reason.to_owned()),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn pinned_lines_comments_and_blanks_parse() {
        let text = "# generated by pip freeze\n\nFlask==3.0.2\nzope.interface == 6.2 # why not\r\n\tMarkupSafe==2.1.5\nsome_pkg==1.0+local.1\nepoch==1!2.0rc1\n";
        assert_eq!(
            pins(text),
            vec![
                ("flask".into(), "3.0.2".into(), 3),
                ("zope-interface".into(), "6.2".into(), 4),
                ("markupsafe".into(), "2.1.5".into(), 5),
                ("some-pkg".into(), "1.0+local.1".into(), 6),
                ("epoch".into(), "1!2.0rc1".into(), 7),
            ]
        );
        assert_eq!(pins(""), vec![]);
        assert_eq!(pins("   # only a comment"), vec![]);
    }

    #[test]
    fn options_are_refused_by_line_number_without_quoting() {
        for (text, line) in [
            ("-r /etc/shadow\n", 1),
            ("flask==3.0\n--find-links http://198.18.0.1/\n", 2),
            ("--index-url=https://evil/simple\n", 1),
            ("-c constraints.txt", 1),
            ("-e .\n", 1),
            ("--extra-index-url x", 1),
            ("  -r other.txt", 1),
            ("--hash=sha256:00", 1),
        ] {
            let (l, reason) = refused(text);
            assert_eq!(l, line, "{text:?}");
            assert!(reason.contains("options"), "{text:?}: {reason}");
        }
        let err = parse(b"ok==1\n-r /etc/shadow\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("shadow"), "the line is quoted: {err}");
    }

    #[test]
    fn paths_urls_and_direct_references_are_refused() {
        for text in [
            "./pkg",
            "../pkg",
            "pkg/",
            "/abs/pkg.whl",
            "~/pkg",
            "pkg @ file:///tmp/pkg-1.0.tar.gz",
            "pkg@https://example.invalid/pkg.whl",
            "https://example.invalid/pkg-1.0.tar.gz",
            "file:///tmp/x",
            "git+https://example.invalid/repo",
            "pkg-1.0.tar.gz",
            "wheels/pkg-1.0-py3-none-any.whl",
        ] {
            let (line, reason) = refused(text);
            assert_eq!(line, 1);
            assert!(
                reason.contains("path")
                    || reason.contains("URL")
                    || reason.contains("pinned")
                    || reason.contains("name"),
                "{text:?}: {reason}"
            );
        }
    }

    #[test]
    fn anything_but_one_exact_pin_is_refused() {
        for text in [
            "flask",
            "flask>=3.0",
            "flask~=3.0",
            "flask!=3.0",
            "flask==3.*",
            "flask==3.0,<4",
            "flask===3.0",
            "flask[async]==3.0",
            "flask==3.0; python_version > '3.8'",
            "flask==",
            "==3.0",
            "flask==v3",
            "-flask==3.0",
            "fla sk==3.0",
            "flask==3.0 \\",
            "flask==3.0\u{7}",
            "flask==3.0\rother==1",
            "flä sk==1",
        ] {
            let (line, _) = refused(text);
            assert_eq!(line, 1, "{text:?}");
        }
        assert!(matches!(
            parse(b"a==1\n\xff==2\n"),
            Err(RequirementsError::Line { line: 2, .. })
        ));
    }

    #[test]
    fn duplicates_and_sizes_are_bounded() {
        assert_eq!(
            parse(b"Flask==1\nflask==2\n").unwrap_err(),
            RequirementsError::Duplicate {
                line: 2,
                first: 1,
                name: "flask".into()
            }
        );
        let big = "a==1\n".repeat(MAX_BYTES / 5 + 1);
        assert!(matches!(
            parse(big.as_bytes()),
            Err(RequirementsError::TooLarge { .. })
        ));
        let many: String = (0..=MAX_PINS).map(|i| format!("p{i}==1\n")).collect();
        assert_eq!(parse(many.as_bytes()), Err(RequirementsError::TooMany));
        let name = "a".repeat(MAX_NAME + 1);
        refused(&format!("{name}==1"));
    }

    #[test]
    fn names_normalize_like_pep_503() {
        assert_eq!(normalize_name("Zope.Interface"), "zope-interface");
        assert_eq!(normalize_name("a__b--c..d"), "a-b-c-d");
        assert_eq!(normalize_name("typing_extensions"), "typing-extensions");
    }

    #[test]
    fn wheel_names_parse() {
        assert_eq!(
            parse_wheel_name("zope.interface-6.2-cp311-cp311-manylinux_2_17_x86_64.whl"),
            Some(WheelName {
                name: "zope-interface".into(),
                version: "6.2".into(),
                platform: "manylinux_2_17_x86_64".into()
            })
        );
        assert_eq!(
            parse_wheel_name("Flask-3.0.2-1build-py3-none-any.whl").map(|w| w.name),
            Some("flask".into())
        );
        for bad in [
            "flask-3.0.2.tar.gz",
            "flask-3.0.2-py3-none.whl",
            "flask-3.0.2--py3-none-any.whl",
            "../x-1-py3-none-any.whl",
            "x-1-py3-none-any/../y.whl",
            "-1-py3-none-any.whl",
            "x-1-2-3-4-5-6.whl",
        ] {
            assert_eq!(parse_wheel_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn platforms_fit_by_arch() {
        assert!(platform_fits("any", "x86_64"));
        assert!(platform_fits(
            "manylinux_2_17_x86_64.manylinux2014_x86_64",
            "x86_64"
        ));
        assert!(platform_fits("musllinux_1_1_aarch64", "aarch64"));
        assert!(!platform_fits("manylinux_2_17_aarch64", "x86_64"));
        assert!(!platform_fits("win_amd64", "x86_64"));
        assert!(!platform_fits("macosx_11_0_x86_64", "x86_64"));
    }

    #[test]
    fn each_pin_gets_exactly_one_wheel() {
        let files: Vec<String> = [
            "flask-3.0.2-py3-none-any.whl",
            "MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_aarch64.whl",
            "orjson-3.9-cp311-cp311-win_amd64.whl",
            "dup-1.0-py3-none-any.whl",
            "dup-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
            "README",
            "flask-3.0.2.tar.gz",
        ]
        .map(String::from)
        .to_vec();
        let p = parse(b"Flask==3.0.2\nmarkupsafe==2.1.5\n").unwrap();
        assert_eq!(
            match_wheels(&p, &files, "x86_64").unwrap(),
            vec![files[0].as_str(), files[1].as_str()]
        );
        assert_eq!(
            match_wheels(&p, &files, "aarch64").unwrap()[1],
            files[2].as_str()
        );
        let e = match_wheels(&parse(b"x==1\nflask==9\n").unwrap(), &files, "x86_64").unwrap_err();
        assert!(matches!(e, WheelError::Missing(Pin { line: 1, .. })), "{e}");
        let e = match_wheels(&parse(b"orjson==3.9").unwrap(), &files, "x86_64").unwrap_err();
        assert!(e.to_string().contains("other platforms"), "{e}");
        let e = match_wheels(&parse(b"dup==1.0").unwrap(), &files, "x86_64").unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
        // An sdist of the pinned version is never a candidate.
        let e = match_wheels(&parse(b"flask==3.0.2").unwrap(), &files[7..], "x86_64").unwrap_err();
        assert!(e.to_string().contains("sdists are never built"), "{e}");
    }
}
