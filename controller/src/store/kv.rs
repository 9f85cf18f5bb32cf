//! What the store's record modules see of a backend: named tables of string keys in byte
//! order, read and written in transactions. The redb file (`redb_kv`) and PostgreSQL
//! (`pg`) both implement it, so every record module, and the contract tests in
//! `tests.rs`, are the same for both.
//!
//! Transactions are materialized: a range read returns its rows, not a cursor. Every range
//! the record modules read is bounded by a key prefix or a limit, except the few whole-table
//! reads that were whole-table reads before (listing hosts, pruning), so nothing here holds
//! more than the old redb iterators' callers collected anyway.

use std::ops::Bound;

use super::StoreError;

/// How a table's rows are shaped. redb types its tables, so a backend needs to know; the
/// record modules only ever see keys and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// String keys, JSON values.
    Json,
    /// String keys, UTF-8 text values (meta, sealed secrets, the firewall policy).
    Text,
    /// Growing u64 keys (the audit log).
    Seq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tbl {
    pub name: &'static str,
    pub kind: Kind,
}

const fn json(name: &'static str) -> Tbl {
    Tbl {
        name,
        kind: Kind::Json,
    }
}

const fn text(name: &'static str) -> Tbl {
    Tbl {
        name,
        kind: Kind::Text,
    }
}

pub(super) type Row = (String, Vec<u8>);

/// Key bounds of a range read: `(lower, upper)`.
pub(super) type Span<'a> = (Bound<&'a str>, Bound<&'a str>);

pub(super) const ALL: Span<'static> = (Bound::Unbounded, Bound::Unbounded);

/// Keys that start with `prefix` (which ends in `/`: names hold no `/`, and `0` follows
/// `/`, so `<prefix minus />0` is the first key past them).
pub(super) fn prefixed(prefix: &str) -> (String, String) {
    let stem = prefix.strip_suffix('/').unwrap_or(prefix);
    (format!("{stem}/"), format!("{stem}0"))
}

pub(super) fn span<'a>(range: &'a (String, String)) -> Span<'a> {
    (
        Bound::Included(range.0.as_str()),
        Bound::Excluded(range.1.as_str()),
    )
}

/// Reads of one consistent moment.
pub(super) trait ReadTx {
    fn get(&self, t: Tbl, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The rows of those `keys` that exist, in no particular order. A backend with round
    /// trips overrides it to read them together.
    fn get_many(&self, t: Tbl, keys: &[&str]) -> Result<Vec<Row>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.get(t, k)? {
                out.push(((*k).to_owned(), v));
            }
        }
        Ok(out)
    }
    /// Rows with keys in `span`, in key order, at most `limit`.
    fn range(&self, t: Tbl, span: Span<'_>, limit: Option<usize>) -> Result<Vec<Row>, StoreError>;
    /// Keys in `span`, in order, without their values.
    fn keys(&self, t: Tbl, span: Span<'_>) -> Result<Vec<String>, StoreError>;
    fn count(&self, t: Tbl) -> Result<u64, StoreError>;
    /// The highest key of a `Seq` table.
    fn seq_last(&self, t: Tbl) -> Result<Option<u64>, StoreError>;
    /// Rows of a `Seq` table with keys above `after`, in order, at most `limit`.
    fn seq_range(
        &self,
        t: Tbl,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
}

/// A write transaction: every change in it commits together or not at all; dropped
/// without `commit`, it changes nothing.
pub(super) trait WriteTx: ReadTx {
    /// Writes one row; returns whether a row with that key was there before.
    fn insert(&mut self, t: Tbl, key: &str, value: &[u8]) -> Result<bool, StoreError>;
    /// Deletes one row; returns its old value.
    fn remove(&mut self, t: Tbl, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes many rows (a key given twice: the last value wins), together where the
    /// backend can.
    fn put_many(&mut self, t: Tbl, rows: &[(&str, &[u8])]) -> Result<(), StoreError> {
        for (k, v) in rows {
            self.insert(t, k, v)?;
        }
        Ok(())
    }
    /// Deletes the rows of those keys that exist, together where the backend can.
    fn remove_many(&mut self, t: Tbl, keys: &[&str]) -> Result<(), StoreError> {
        for k in keys {
            self.remove(t, k)?;
        }
        Ok(())
    }
    /// Deletes every row in `span`.
    fn remove_span(&mut self, t: Tbl, span: Span<'_>) -> Result<(), StoreError>;
    fn seq_insert(&mut self, t: Tbl, seq: u64, value: &[u8]) -> Result<(), StoreError>;
    fn seq_remove(&mut self, t: Tbl, seq: u64) -> Result<(), StoreError>;
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

pub(super) const HOSTS: Tbl = json("hosts");
pub(super) const TOKENS: Tbl = json("tokens");
pub(super) const REVOKED: Tbl = json("revoked");
pub(super) const AUDIT: Tbl = Tbl {
    name: "audit",
    kind: Kind::Seq,
};
pub(super) const META: Tbl = text("meta");
pub(super) const APPS: Tbl = json("apps");
/// Key: `<app>/<version>`.
pub(super) const RELEASES: Tbl = json("releases");
/// Key: `<app>/<KEY>`; value: the secret as `sealing` sealed it.
pub(super) const SECRETS: Tbl = text("secrets");
/// Key: `<app>/<KEY>` as in `SECRETS`; value: JSON `SecretMeta` (when and by whom).
pub(super) const SECRET_META: Tbl = json("secret_meta");
/// The fleet-wide firewall policy: key `policy` (TOML) and `applied_at_ms`.
pub(super) const FIREWALL: Tbl = text("firewall");
/// Rollouts by id (`<app>/<start ms, 16 digits>`), JSON, rewritten after every step.
pub(super) const ROLLOUTS: Tbl = json("rollouts");
/// Key: `<host>/<app>`; the release each host should run, from the last rollout or deploy
/// that decided it (JSON, shape owned by `converge`). Host first, so a session start or a
/// host removal reads one key range instead of the whole table.
pub(super) const DESIRED: Tbl = json("desired_by_host");
/// Cordoned hosts by name (JSON `CordonRecord`): out of deploys and rollouts.
pub(super) const CORDONED: Tbl = json("cordoned");
/// Key: `<host>/<app>`: apps an operator stopped on a host (JSON `StopRecord`); they
/// stay down and deploys and rollouts leave them out until started again.
pub(super) const STOPPED: Tbl = json("stopped");
/// Key: `<host>/<app>`: removals of an app its host has not confirmed yet (JSON
/// `RemovalRecord`), sent again each time the host connects until it does.
pub(super) const REMOVALS: Tbl = json("removals");
/// Operators by name: role and revocation (JSON `AdminRecord`).
pub(super) const ADMINS: Tbl = json("admins");
/// fleet-agent packages by Debian version; their bytes are blobs like releases.
pub(super) const AGENT_PACKAGES: Tbl = json("agent_packages");

/// The one list of tables: a new store has them all, an opened one gets any it lacks, a
/// snapshot or a migration copies them all.
pub(super) const EVERY_TABLE: [Tbl; 17] = [
    HOSTS,
    TOKENS,
    REVOKED,
    AUDIT,
    META,
    APPS,
    RELEASES,
    SECRETS,
    SECRET_META,
    FIREWALL,
    ROLLOUTS,
    DESIRED,
    AGENT_PACKAGES,
    ADMINS,
    CORDONED,
    STOPPED,
    REMOVALS,
];

/// Keys of `DESIRED`, `STOPPED` and `REMOVALS` for one host.
pub(super) fn host_range(host: &str) -> (String, String) {
    prefixed(&format!("{host}/"))
}

/// Copies every row of every table from `from` into `to` (a new store's transaction):
/// one read transaction is one consistent moment. Returns how many rows went.
pub(super) fn copy_every_table(from: &dyn ReadTx, to: &mut dyn WriteTx) -> Result<u64, StoreError> {
    const PAGE: usize = 2_000;
    let mut rows = 0;
    for t in EVERY_TABLE {
        if t.kind == Kind::Seq {
            let mut after = 0;
            loop {
                let page = from.seq_range(t, after, PAGE)?;
                let Some(last) = page.last().map(|(k, _)| *k) else {
                    break;
                };
                for (k, v) in &page {
                    to.seq_insert(t, *k, v)?;
                }
                rows += page.len() as u64;
                after = last;
            }
            continue;
        }
        let mut from_key: Option<String> = None;
        loop {
            let lower = match &from_key {
                None => Bound::Unbounded,
                Some(k) => Bound::Excluded(k.as_str()),
            };
            let page = from.range(t, (lower, Bound::Unbounded), Some(PAGE))?;
            let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                break;
            };
            for (k, v) in &page {
                to.insert(t, k, v)?;
            }
            rows += page.len() as u64;
            from_key = Some(last);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_the_keys_under_it() {
        let r = prefixed("shop/");
        let (lo, hi) = span(&r);
        let inside = |k: &str| {
            (match lo {
                Bound::Included(l) => k >= l,
                _ => unreachable!(),
            }) && (match hi {
                Bound::Excluded(h) => k < h,
                _ => unreachable!(),
            })
        };
        assert!(inside("shop/1.0"));
        assert!(inside("shop/"));
        assert!(!inside("shopx/1.0"));
        assert!(!inside("shop"));
        assert!(!inside("shop0"));
        assert_eq!(host_range("web-1"), ("web-1/".into(), "web-10".into()));
    }
}
