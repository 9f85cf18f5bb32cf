//! Paged list responses: every list the controller answers with is cut into pages that fit
//! well inside the 4 MiB a gRPC client decodes by default, whatever the fleet's size.

use prost::Message;
use tonic::Status;

/// Entries per page when the caller does not say.
pub const DEFAULT_PAGE: usize = 500;
/// Most entries per page a caller may ask for.
pub const MAX_PAGE: usize = 2000;
/// Encoded bytes per page at most: half the client's default decode limit.
pub const MAX_PAGE_BYTES: usize = 2 << 20;

/// The page size for a request's `limit` (0: the default).
pub fn limit(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

/// Takes entries from `items` (which may hold one more than `limit`, to tell whether more
/// follow) until `limit` or [`MAX_PAGE_BYTES`]; returns them and whether any were left.
pub fn fill<T: Message>(items: impl IntoIterator<Item = T>, limit: usize) -> (Vec<T>, bool) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut it = items.into_iter();
    for item in it.by_ref() {
        let len = item.encoded_len() + 8;
        if out.len() >= limit || (!out.is_empty() && bytes + len > MAX_PAGE_BYTES) {
            return (out, true);
        }
        bytes += len;
        out.push(item);
    }
    (out, false)
}

/// Parses a `page_token` of the form the list handlers hand out.
pub fn bad_token(what: &str) -> Status {
    Status::invalid_argument(format!(
        "page_token is not one this controller handed out for {what}: start again without it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::AuditEntry;

    #[test]
    fn pages_stop_at_the_limit_or_the_byte_budget() {
        let small = (0..10).map(|i| AuditEntry {
            seq: i,
            ..Default::default()
        });
        let (page, more) = fill(small, 4);
        assert_eq!((page.len(), more), (4, true));

        let big = (0..100).map(|i| AuditEntry {
            seq: i,
            detail: "x".repeat(100_000),
            ..Default::default()
        });
        let (page, more) = fill(big, MAX_PAGE);
        assert!(more);
        let bytes: usize = page.iter().map(|e| e.encoded_len()).sum();
        assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
        assert!(page.len() >= 10, "{}", page.len());

        let (page, more) = fill(
            (0..3).map(|i| AuditEntry {
                seq: i,
                ..Default::default()
            }),
            3,
        );
        assert_eq!((page.len(), more), (3, false));
    }
}
