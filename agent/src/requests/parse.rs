//! fleet's access-log line: what the unit tells Gunicorn to write (`--access-logformat`,
//! rendered by [`format`]) and the parser that reads it back. Sync workers fill it from
//! Gunicorn's atoms, fleet's ASGI worker from its own (asgi_worker/fleet_uvicorn_worker.py),
//! so both kinds of app write the same line:
//!
//! ```text
//! fleet1 <release> <status> <microseconds> "<method> <target> <protocol>" <client> <bytes> [<time>]
//! ```
//!
//! The fields fleet reads come first, each a token without spaces; the request line is
//! Gunicorn's `%(r)s`, whose target is the raw URI (never decoded, so it holds no space or
//! line break). Nothing the client chooses freely (headers, user name) is written: a value
//! that could carry a line break could forge a line, and these lines judge canaries.

use fleet_proto::spec::Version;

/// First token of every line: the version of this format.
pub const TAG: &str = "fleet1";

/// A line longer than this is not one of fleet's (Gunicorn caps the request line at 4094
/// bytes; the rest is a few dozen).
pub const MAX_LINE: usize = 8192;

/// Longest response time believed, in microseconds (a day): anything above is garbage.
const MAX_MICROS: u64 = 86_400 * 1_000_000;

/// The value of `--access-logformat` for a master started with `release`. The release is
/// a literal, so the lines of an old master draining during a restart keep the old one.
/// `Version` holds no `%` or space, so it cannot disturb the format.
pub fn format(release: &Version) -> String {
    format!("{TAG} {release} %(s)s %(D)s \"%(r)s\" %(h)s %(b)s %(t)s")
}

/// One parsed line; borrows from it.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub release: &'a str,
    pub status: u16,
    pub micros: u64,
    pub method: &'a str,
    /// The request target's path, without the query string.
    pub path: &'a str,
}

impl Entry<'_> {
    pub fn seconds(&self) -> f64 {
        self.micros as f64 / 1e6
    }
}

/// Parses one line (without its newline); `None` for anything that is not fleet's line.
pub fn parse(line: &[u8]) -> Option<Entry<'_>> {
    if line.len() > MAX_LINE {
        return None;
    }
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix(TAG)?.strip_prefix(' ')?;
    let (release, rest) = rest.split_once(' ')?;
    let (status, rest) = rest.split_once(' ')?;
    let (micros, rest) = rest.split_once(' ')?;
    let request = rest.strip_prefix('"')?;
    let (method, request) = request.split_once(' ')?;
    let (target, request) = request.split_once(' ')?;
    let (protocol, _) = request.split_once('"')?;

    release.parse::<Version>().ok()?;
    let status = parse_status(status)?;
    let micros = digits(micros)?;
    if micros > MAX_MICROS
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_graphic())
        || !protocol.starts_with("HTTP/")
    {
        return None;
    }
    Some(Entry {
        release,
        status,
        micros,
        method,
        path: path_of(target),
    })
}

/// A three-digit status with a class fleet counts (1xx to 5xx).
fn parse_status(s: &str) -> Option<u16> {
    if s.len() != 3 {
        return None;
    }
    let n = u16::try_from(digits(s)?).ok()?;
    (100..600).contains(&n).then_some(n)
}

/// Only ASCII digits (`u64::from_str` also takes a leading '+').
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The path of a request target: the query cut off, and for the absolute form
/// (`http://host/path`, sent to proxies) the scheme and authority too.
pub fn path_of(target: &str) -> &str {
    let target = target.split(['?', '#']).next().unwrap_or(target);
    match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Option<Entry<'_>> {
        parse(s.as_bytes())
    }

    #[test]
    fn the_format_writes_what_the_parser_reads() {
        let release: Version = "2026-01-02.1".parse().unwrap();
        let f = format(&release);
        assert_eq!(
            f,
            "fleet1 2026-01-02.1 %(s)s %(D)s \"%(r)s\" %(h)s %(b)s %(t)s"
        );
        // What Gunicorn 20.1 makes of it (copied from a real access.log).
        let e = line(
            "fleet1 2026-01-02.1 503 200374 \"GET /slow?x=1 HTTP/1.1\" 127.0.0.1 3 \
             [01/Dec/2026:18:57:27 +0000]",
        )
        .unwrap();
        assert_eq!(
            e,
            Entry {
                release: "2026-01-02.1",
                status: 503,
                micros: 200_374,
                method: "GET",
                path: "/slow",
            }
        );
        assert!((e.seconds() - 0.200374).abs() < 1e-12);
    }

    #[test]
    fn quoted_and_escaped_targets_still_parse() {
        // Gunicorn escapes '"' as \" in its atoms; fleet's ASGI worker %-escapes it.
        let e =
            line("fleet1 r1 200 1013 \"GET /a%20b?y=\\\"z\\\" HTTP/1.1\" 10.0.0.1 3 [t]").unwrap();
        assert_eq!(e.path, "/a%20b");
        let e = line("fleet1 r1 200 5 \"POST http://shop.example/cart?id=3 HTTP/1.0\" - 0 [t]")
            .unwrap();
        assert_eq!((e.method, e.path), ("POST", "/cart"));
        assert_eq!(path_of("http://shop.example"), "/");
        assert_eq!(path_of("/health#x"), "/health");
        assert_eq!(path_of("*"), "*");
    }

    #[test]
    fn junk_is_refused_not_guessed() {
        for junk in [
            "",
            "fleet1",
            "fleet1 ",
            "127.0.0.1 - - [01/Dec/2026:18:57:27 +0000] \"GET / HTTP/1.1\" 200 3 \"-\" \"curl\"",
            "INFO: 127.0.0.1:5000 - \"GET / HTTP/1.1\" 200 OK",
            "fleet2 r1 200 10 \"GET / HTTP/1.1\"",
            "fleet1 r1 200 10 GET / HTTP/1.1",
            "fleet1 r1 200 10 \"GET / HTTP/1.1",
            "fleet1 r1 200 10 \"GET /\"",
            "fleet1 r1 200 10 \"GET / SPDY/3\" x",
            "fleet1 r1 200 -10 \"GET / HTTP/1.1\" x",
            "fleet1 r1 200 +10 \"GET / HTTP/1.1\" x",
            "fleet1 r1 200 1.5 \"GET / HTTP/1.1\" x",
            "fleet1 r1 200 99999999999999999999 \"GET / HTTP/1.1\" x",
            "fleet1 r1 200 86400000001 \"GET / HTTP/1.1\" x",
            "fleet1 ../etc 200 10 \"GET / HTTP/1.1\" x",
            "fleet1 r1  200 10 \"GET / HTTP/1.1\" x",
            "fleet1 r1 200 10 \" / HTTP/1.1\" x",
        ] {
            assert_eq!(line(junk), None, "{junk:?}");
        }
        assert_eq!(parse(b"fleet1 r\xff1 200 10 \"GET / HTTP/1.1\" x"), None);
    }

    #[test]
    fn odd_statuses_are_not_a_class() {
        for s in ["000", "099", "600", "999", "20", "2000", "abc", "2x0", "-"] {
            let l = format!("fleet1 r1 {s} 10 \"GET / HTTP/1.1\" - 0 [t]");
            assert_eq!(line(&l), None, "{s}");
        }
        for (s, n) in [("100", 100), ("199", 199), ("404", 404), ("599", 599)] {
            let l = format!("fleet1 r1 {s} 10 \"GET / HTTP/1.1\" - 0 [t]");
            assert_eq!(line(&l).map(|e| e.status), Some(n), "{s}");
        }
    }

    #[test]
    fn huge_lines_are_refused_whatever_they_hold() {
        let target = "/".repeat(MAX_LINE);
        let l = format!("fleet1 r1 200 10 \"GET {target} HTTP/1.1\" - 0 [t]");
        assert_eq!(line(&l), None);
        let fits = format!(
            "fleet1 r1 200 10 \"GET /{} HTTP/1.1\" - 0 [t]",
            "a".repeat(4000)
        );
        assert!(line(&fits).is_some());
    }
}
