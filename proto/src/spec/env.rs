//! Environment variables as they land in a systemd `EnvironmentFile=`.

use super::{err, SpecError};

pub(super) const MAX_ENV_VALUE: usize = 8 * 1024;

/// Environment variable names as systemd and shells accept them.
pub fn check_env_key(field: &str, key: &str) -> Result<(), SpecError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("{key:?} must match [A-Z_][A-Z0-9_]*")))
    }
}

/// Values end up in an `EnvironmentFile=`: a line break or NUL could add settings of its
/// own, so they are refused; everything else is escaped by [`env_file_line`].
pub fn check_env_value(field: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > MAX_ENV_VALUE {
        return Err(err(field, format!("longer than {MAX_ENV_VALUE} bytes")));
    }
    if value.chars().any(|c| c == '\n' || c == '\r' || c == '\0') {
        return Err(err(field, "must not contain line breaks or NUL"));
    }
    Ok(())
}

/// One `KEY="value"` line for a systemd `EnvironmentFile=`, with `\`, `"`, `$` and
/// backquote escaped so the value reaches the app byte for byte.
pub fn env_file_line(key: &str, value: &str) -> String {
    let mut out = String::with_capacity(key.len() + value.len() + 4);
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("\"\n");
    out
}
