//! The audit log: entries under a growing sequence number, paged and pruned in small
//! batches.

use serde::{Deserialize, Serialize};

use super::kv::{WriteTx, AUDIT};
use super::{decode, encode, Store, StoreError};

/// Rows read at a time when a filter may skip many.
const PAGE: usize = 1_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl Store {
    pub fn append_audit(
        &self,
        time_ms: i64,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<AuditRecord, StoreError> {
        let mut tx = self.write()?;
        let record = append_in(&mut *tx, time_ms, actor, action, target, detail)?;
        self.commit(tx)?;
        Ok(record)
    }

    /// At most `limit` entries with `seq > after_seq` and `time_ms >= since_ms`, in order.
    pub fn audit_page(
        &self,
        since_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let tx = self.read()?;
        let mut out = Vec::new();
        let mut after = after_seq;
        loop {
            let rows = tx.seq_range(AUDIT, after, PAGE)?;
            let Some(last) = rows.last().map(|(k, _)| *k) else {
                return Ok(out);
            };
            for (k, v) in rows {
                let rec: AuditRecord = decode(AUDIT.name, &k.to_string(), &v)?;
                if rec.time_ms >= since_ms {
                    out.push(rec);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            after = last;
        }
    }

    /// Deletes up to `batch` of the oldest audit entries that are older than `before_ms`
    /// or beyond the newest `keep` entries; returns how many went. Small batches keep each
    /// write transaction short, so appends are never held up for long.
    pub fn prune_audit(
        &self,
        before_ms: i64,
        keep: u64,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let mut tx = self.write()?;
        let Some(last) = tx.seq_last(AUDIT)? else {
            return Ok(0);
        };
        let keep_from = last.saturating_sub(keep.saturating_sub(1));
        let mut doomed = Vec::new();
        for (seq, v) in tx.seq_range(AUDIT, 0, batch)? {
            let old = serde_json::from_slice::<AuditRecord>(&v)
                .map(|r| r.time_ms < before_ms)
                .unwrap_or(false);
            if seq < keep_from || old {
                doomed.push(seq);
            } else {
                break;
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        for seq in &doomed {
            tx.seq_remove(AUDIT, *seq)?;
        }
        self.commit(tx)?;
        Ok(doomed.len())
    }

    pub fn audit_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_page(since_ms, 0, usize::MAX)
    }
}

/// Appends one entry inside a caller's transaction, so an action and its audit entry
/// commit together.
pub(super) fn append_in(
    tx: &mut dyn WriteTx,
    time_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<AuditRecord, StoreError> {
    let seq = tx.seq_last(AUDIT)?.map(|k| k + 1).unwrap_or(1);
    let record = AuditRecord {
        seq,
        time_ms,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: detail.to_owned(),
    };
    tx.seq_insert(AUDIT, seq, &encode(&record))?;
    Ok(record)
}
