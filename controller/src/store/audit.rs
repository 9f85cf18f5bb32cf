//! The audit log: entries under a growing sequence number, paged and pruned in small
//! batches.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::AUDIT;
use super::{db_err, decode, encode, Store, StoreError};

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
        let tx = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = tx.open_table(AUDIT).map_err(db_err)?;
            append_in(&mut table, time_ms, actor, action, target, detail)?
        };
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
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.range(after_seq.saturating_add(1)..).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let rec: AuditRecord = decode("audit", &k.value().to_string(), v.value())?;
            if rec.time_ms >= since_ms {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
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
        let tx = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut table = tx.open_table(AUDIT).map_err(db_err)?;
            let last = table.last().map_err(db_err)?.map(|(k, _)| k.value());
            let Some(last) = last else {
                return Ok(0);
            };
            let keep_from = last.saturating_sub(keep.saturating_sub(1));
            let mut doomed = Vec::new();
            for row in table.iter().map_err(db_err)?.take(batch) {
                let (k, v) = row.map_err(db_err)?;
                let seq = k.value();
                let old = serde_json::from_slice::<AuditRecord>(v.value())
                    .map(|r| r.time_ms < before_ms)
                    .unwrap_or(false);
                if seq < keep_from || old {
                    doomed.push(seq);
                } else {
                    break;
                }
            }
            for seq in &doomed {
                table.remove(seq).map_err(db_err)?;
            }
            doomed.len()
        };
        self.commit(tx)?;
        Ok(removed)
    }

    pub fn audit_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let rec: AuditRecord = decode("audit", &k.value().to_string(), v.value())?;
            if rec.time_ms >= since_ms {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// Appends one entry inside a caller's transaction, so an action and its audit entry
/// commit together.
pub(super) fn append_in(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    time_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<AuditRecord, StoreError> {
    let seq = table
        .last()
        .map_err(db_err)?
        .map(|(k, _)| k.value() + 1)
        .unwrap_or(1);
    let record = AuditRecord {
        seq,
        time_ms,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: detail.to_owned(),
    };
    table
        .insert(seq, encode(&record).as_slice())
        .map_err(db_err)?;
    Ok(record)
}
