//! Many rows in one statement, for the writes that touch one row per host: a deploy's
//! desired releases, the last-seen flush. One round trip per row would make those
//! thousands of round trips inside one transaction (a flush at 50,000 hosts every 30 s
//! would be 100,000); arrays bound as parameters make them one per `CHUNK`.

use std::collections::HashSet;

use super::PgTx;
use crate::store::kv::Tbl;
use crate::store::StoreError;

/// Rows per statement: bounds one message to a few MB of JSON records.
const CHUNK: usize = 2_000;

impl PgTx {
    pub(super) fn get_many_rows(
        &self,
        t: Tbl,
        keys: &[&str],
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let rows = self.query(
                "SELECT k, v FROM fleet_kv WHERE tbl = $1 AND k = ANY($2)",
                &[&t.name, &chunk],
            )?;
            out.extend(rows.into_iter().map(|r| (r.get(0), r.get(1))));
        }
        Ok(out)
    }

    pub(super) fn put_many_rows(
        &mut self,
        t: Tbl,
        rows: &[(&str, &[u8])],
    ) -> Result<(), StoreError> {
        // One statement may not upsert a key twice: the last value of a key wins, as it
        // would row by row.
        let mut seen = HashSet::new();
        let mut last: Vec<(&str, &[u8])> = rows
            .iter()
            .rev()
            .filter(|(k, _)| seen.insert(*k))
            .copied()
            .collect();
        last.reverse();
        for chunk in last.chunks(CHUNK) {
            let keys: Vec<&str> = chunk.iter().map(|r| r.0).collect();
            let values: Vec<&[u8]> = chunk.iter().map(|r| r.1).collect();
            self.query(
                "INSERT INTO fleet_kv (tbl, k, v)
                 SELECT $1::text, u.k, u.v FROM unnest($2::text[], $3::bytea[]) AS u(k, v)
                 ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v",
                &[&t.name, &keys, &values],
            )?;
        }
        Ok(())
    }

    pub(super) fn remove_many_rows(&mut self, t: Tbl, keys: &[&str]) -> Result<(), StoreError> {
        for chunk in keys.chunks(CHUNK) {
            self.query(
                "DELETE FROM fleet_kv WHERE tbl = $1 AND k = ANY($2)",
                &[&t.name, &chunk],
            )?;
        }
        Ok(())
    }
}
