//! Blobs as rows (`fleet_blob`, `fleet_blob_chunk`): what lets a release uploaded through
//! one controller be served by another. Each controller keeps a content-addressed copy on
//! its own disk (`crate::blobs`) and reads the rows only for a blob it does not hold yet.
//!
//! A blob is written in one transaction, chunks first and its `fleet_blob` row last, so a
//! reader that finds the row finds every chunk. Blobs are named by their content, so two
//! controllers storing the same one at once write the same rows: conflicts are skipped.
//! These writes take neither the write lock nor the fence: they change no record, and a
//! release is only usable once its record (a fenced write) names it.

use std::io::{Read, Write};

use futures_executor::block_on;

use super::{pg_err, PgStore};
use crate::store::StoreError;

/// Bytes per chunk row: small enough that a read or a write holds little in memory,
/// large enough that a 100 MiB release is a hundred rows.
const CHUNK: usize = 1024 * 1024;

impl PgStore {
    /// Stores `size` bytes read from `from` as blob `sha`, unless it is stored already.
    pub(in crate::store) fn put_blob(
        &self,
        sha: &str,
        size: u64,
        from: &mut dyn Read,
    ) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let tx = block_on(client.transaction()).map_err(|e| pg_err("blob", e))?;
        let have = block_on(tx.query_opt("SELECT 1 FROM fleet_blob WHERE sha = $1", &[&sha]))
            .map_err(|e| pg_err("blob", e))?;
        if have.is_some() {
            return Ok(());
        }
        let insert = block_on(tx.prepare(
            "INSERT INTO fleet_blob_chunk (sha, n, data) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        ))
        .map_err(|e| pg_err("blob", e))?;
        let mut buf = vec![0u8; CHUNK];
        let (mut n, mut total) = (0i32, 0u64);
        loop {
            let got = read_full(from, &mut buf)
                .map_err(|e| StoreError::Db(format!("cannot read blob {sha}: {e}")))?;
            if got == 0 {
                break;
            }
            block_on(tx.execute(&insert, &[&sha, &n, &&buf[..got]]))
                .map_err(|e| pg_err("blob", e))?;
            n += 1;
            total += got as u64;
        }
        if total != size {
            return Err(StoreError::Db(format!(
                "blob {sha} changed while it was stored: {total} bytes, not {size}"
            )));
        }
        let size = i64::try_from(size).map_err(|_| StoreError::Db("blob too large".into()))?;
        block_on(tx.execute(
            "INSERT INTO fleet_blob (sha, size, chunks) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&sha, &size, &n],
        ))
        .map_err(|e| pg_err("blob", e))?;
        block_on(tx.commit()).map_err(|e| pg_err("blob", e))
    }

    /// Writes blob `sha` into `into` one chunk at a time: its size, or None when no whole
    /// blob of that name is stored.
    pub(in crate::store) fn fetch_blob(
        &self,
        sha: &str,
        into: &mut dyn Write,
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client()?;
        let Some(row) = block_on(client.query_opt(
            "SELECT size, chunks FROM fleet_blob WHERE sha = $1",
            &[&sha],
        ))
        .map_err(|e| pg_err("blob", e))?
        else {
            return Ok(None);
        };
        let (size, chunks): (i64, i32) = (row.get(0), row.get(1));
        let select =
            block_on(client.prepare("SELECT data FROM fleet_blob_chunk WHERE sha = $1 AND n = $2"))
                .map_err(|e| pg_err("blob", e))?;
        let mut total = 0u64;
        for n in 0..chunks {
            let row = block_on(client.query_opt(&select, &[&sha, &n]))
                .map_err(|e| pg_err("blob", e))?
                .ok_or_else(|| StoreError::Db(format!("blob {sha} lacks its chunk {n}")))?;
            let data: &[u8] = row.get(0);
            into.write_all(data)
                .map_err(|e| StoreError::Db(format!("cannot copy blob {sha}: {e}")))?;
            total += data.len() as u64;
        }
        if total != size as u64 {
            return Err(StoreError::Db(format!(
                "blob {sha} is {total} bytes in the database, its row says {size}"
            )));
        }
        Ok(Some(total))
    }

    /// Deletes blob `sha`, row and chunks (nothing when it is not stored).
    pub(in crate::store) fn remove_blob(&self, sha: &str) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let tx = block_on(client.transaction()).map_err(|e| pg_err("blob", e))?;
        block_on(tx.execute("DELETE FROM fleet_blob WHERE sha = $1", &[&sha]))
            .map_err(|e| pg_err("blob", e))?;
        block_on(tx.execute("DELETE FROM fleet_blob_chunk WHERE sha = $1", &[&sha]))
            .map_err(|e| pg_err("blob", e))?;
        block_on(tx.commit()).map_err(|e| pg_err("blob", e))
    }
}

/// Fills `buf` unless the reader ends first: the bytes read.
fn read_full(from: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match from.read(&mut buf[at..])? {
            0 => break,
            n => at += n,
        }
    }
    Ok(at)
}
