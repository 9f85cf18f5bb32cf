//! A release's `requirements.txt` (agent/src/releases/requirements.rs): the only text from
//! a release that decides what pip installs, as root's helper.
//!
//! Properties: every pin the parser returns is a normalized PEP 503 name and one exact
//! version in the documented alphabet (so nothing pip would read as an option, path, URL,
//! marker or extra can get through), with increasing line numbers and unique names; an
//! error never quotes the file except as a validated name; the pins written back as
//! `name==version` lines parse to the same pins; and each pin matches exactly the one
//! wheel made for it.
#![no_main]

use fleet_agent::releases::requirements::{self, RequirementsError, MAX_BYTES, MAX_PINS};
use libfuzzer_sys::fuzz_target;

fn normalized_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn exact_version(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'!')
        })
}

fuzz_target!(|data: &[u8]| {
    let pins = match requirements::parse(data) {
        Ok(p) => p,
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.contains(|c: char| c.is_control()), "{shown:?}");
            match e {
                RequirementsError::TooLarge { size } => assert!(size > MAX_BYTES),
                RequirementsError::Duplicate { name, line, first } => {
                    assert!(normalized_name(&name) && first < line, "{name:?}");
                }
                RequirementsError::Line { line, .. } => {
                    assert!(line >= 1 && line <= data.split(|&b| b == b'\n').count());
                }
                RequirementsError::TooMany => {}
            }
            return;
        }
    };
    assert!(data.len() <= MAX_BYTES && pins.len() <= MAX_PINS);
    let lines = data.split(|&b| b == b'\n').count();
    let mut last = 0;
    let mut names = std::collections::HashSet::new();
    for p in &pins {
        assert!(normalized_name(&p.name), "name {:?}", p.name);
        assert!(exact_version(&p.version), "version {:?}", p.version);
        assert!(p.line > last && p.line <= lines, "line {}", p.line);
        assert!(names.insert(p.name.clone()), "{} twice", p.name);
        assert_eq!(requirements::normalize_name(&p.name), p.name);
        last = p.line;
    }

    let text: String = pins
        .iter()
        .map(|p| format!("{}=={}\n", p.name, p.version))
        .collect();
    let again = requirements::parse(text.as_bytes()).expect("written-back pins must parse");
    assert_eq!(again.len(), pins.len());
    for (i, (a, p)) in again.iter().zip(&pins).enumerate() {
        assert_eq!((&a.name, &a.version, a.line), (&p.name, &p.version, i + 1));
    }

    let files: Vec<String> = pins
        .iter()
        .map(|p| {
            format!(
                "{}-{}-py3-none-any.whl",
                p.name.replace('-', "_"),
                p.version
            )
        })
        .collect();
    let picked = requirements::match_wheels(&pins, &files, "x86_64")
        .unwrap_or_else(|e| panic!("the wheels made for the pins do not match: {e}"));
    assert_eq!(picked, files.iter().map(String::as_str).collect::<Vec<_>>());
});
