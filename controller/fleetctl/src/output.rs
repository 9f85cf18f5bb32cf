//! Output: aligned tables for people, one JSON document for scripts.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn json(value: &serde_json::Value) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value).expect("json values serialize");
    writeln_or_exit(&mut out, format_args!(""));
}

/// A line to stdout; a closed pipe (`fleetctl hosts | head`) ends fleetctl quietly, where
/// `println!` would panic.
fn writeln_or_exit(out: &mut impl Write, line: std::fmt::Arguments<'_>) {
    if out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    // One write per buffer, not per line: tens of thousands of hosts are one table.
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        out.clear();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                // Padded by characters, as the widths were counted.
                out.push_str(c);
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln_or_exit(&mut stdout, format_args!("{}", out.trim_end()));
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    if stdout.flush().is_err() {
        std::process::exit(0);
    }
}

/// RFC 3339 (UTC, seconds) or `None` for "never".
pub fn time(unix_secs: i64) -> Option<String> {
    (unix_secs > 0).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs as u64))
            .to_string()
    })
}

pub fn time_or_dash(unix_secs: i64) -> String {
    time(unix_secs).unwrap_or_else(|| "-".into())
}

/// RFC 3339 (UTC, milliseconds) of unix milliseconds.
pub fn time_ms(unix_ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64))
        .to_string()
}
