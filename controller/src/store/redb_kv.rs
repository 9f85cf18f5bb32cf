//! The embedded backend: the store's tables in one redb file (`DATA_DIR/state.redb`).
//!
//! redb over SQLite: pure Rust (no C toolchain or libsqlite3 on the controller host),
//! ACID with fsync'd commits, one file, and a typed table API. Its write transactions are
//! serialized, which is the model the record modules are written for.

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};

use super::kv::{Kind, ReadTx, Row, Span, Tbl, WriteTx, EVERY_TABLE};
use super::{db_err, StoreError};

type JsonDef = TableDefinition<'static, &'static str, &'static [u8]>;
type TextDef = TableDefinition<'static, &'static str, &'static str>;
type SeqDef = TableDefinition<'static, u64, &'static [u8]>;

fn json_def(t: Tbl) -> JsonDef {
    TableDefinition::new(t.name)
}
fn text_def(t: Tbl) -> TextDef {
    TableDefinition::new(t.name)
}
fn seq_def(t: Tbl) -> SeqDef {
    TableDefinition::new(t.name)
}

/// The desired releases keyed `<app>/<host>`, as controllers before `desired_by_host`
/// kept them; moved over once on open.
pub(super) const DESIRED_V0: JsonDef = TableDefinition::new("desired");

/// Every read on a table `t`, for redb's read-only and writable table handles alike.
macro_rules! reads {
    ($tx:expr, $t:expr, |$table:ident| $json:block, |$ttable:ident| $text:block) => {
        match $t.kind {
            Kind::Json => {
                let $table = $tx.open_table(json_def($t)).map_err(db_err)?;
                $json
            }
            Kind::Text => {
                let $ttable = $tx.open_table(text_def($t)).map_err(db_err)?;
                $text
            }
            Kind::Seq => unreachable!("{} is keyed by sequence numbers", $t.name),
        }
    };
}

fn json_rows(
    iter: redb::Range<'_, &'static str, &'static [u8]>,
    limit: Option<usize>,
) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    for row in iter.take(limit.unwrap_or(usize::MAX)) {
        let (k, v) = row.map_err(db_err)?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

fn text_rows(
    iter: redb::Range<'_, &'static str, &'static str>,
    limit: Option<usize>,
) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    for row in iter.take(limit.unwrap_or(usize::MAX)) {
        let (k, v) = row.map_err(db_err)?;
        out.push((k.value().to_owned(), v.value().as_bytes().to_vec()));
    }
    Ok(out)
}

fn key_list<V: redb::Value + 'static>(
    iter: redb::Range<'_, &'static str, V>,
) -> Result<Vec<String>, StoreError> {
    iter.map(|row| row.map(|(k, _)| k.value().to_owned()).map_err(db_err))
        .collect()
}

fn seq_rows(
    iter: redb::Range<'_, u64, &'static [u8]>,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for row in iter.take(limit) {
        let (k, v) = row.map_err(db_err)?;
        out.push((k.value(), v.value().to_vec()));
    }
    Ok(out)
}

/// The read methods for a transaction type whose `open_table` gives a readable table.
macro_rules! read_impl {
    ($ty:ty) => {
        impl ReadTx for $ty {
            fn get(&self, t: Tbl, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
                reads!(
                    self.0,
                    t,
                    |table| {
                        let got = table.get(key).map_err(db_err)?.map(|v| v.value().to_vec());
                        Ok(got)
                    },
                    |table| {
                        let got = table
                            .get(key)
                            .map_err(db_err)?
                            .map(|v| v.value().as_bytes().to_vec());
                        Ok(got)
                    }
                )
            }

            fn range(
                &self,
                t: Tbl,
                span: Span<'_>,
                limit: Option<usize>,
            ) -> Result<Vec<Row>, StoreError> {
                reads!(
                    self.0,
                    t,
                    |table| { json_rows(table.range::<&str>(span).map_err(db_err)?, limit) },
                    |table| { text_rows(table.range::<&str>(span).map_err(db_err)?, limit) }
                )
            }

            fn keys(&self, t: Tbl, span: Span<'_>) -> Result<Vec<String>, StoreError> {
                reads!(
                    self.0,
                    t,
                    |table| { key_list(table.range::<&str>(span).map_err(db_err)?) },
                    |table| { key_list(table.range::<&str>(span).map_err(db_err)?) }
                )
            }

            fn count(&self, t: Tbl) -> Result<u64, StoreError> {
                if t.kind == Kind::Seq {
                    let table = self.0.open_table(seq_def(t)).map_err(db_err)?;
                    return table.len().map_err(db_err);
                }
                reads!(
                    self.0,
                    t,
                    |table| { table.len().map_err(db_err) },
                    |table| { table.len().map_err(db_err) }
                )
            }

            fn seq_last(&self, t: Tbl) -> Result<Option<u64>, StoreError> {
                let table = self.0.open_table(seq_def(t)).map_err(db_err)?;
                let last = table.last().map_err(db_err)?.map(|(k, _)| k.value());
                Ok(last)
            }

            fn seq_range(
                &self,
                t: Tbl,
                after: u64,
                limit: usize,
            ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
                let table = self.0.open_table(seq_def(t)).map_err(db_err)?;
                let Some(from) = after.checked_add(1) else {
                    return Ok(Vec::new());
                };
                seq_rows(table.range(from..).map_err(db_err)?, limit)
            }
        }
    };
}

pub(super) struct RedbRead(pub ReadTransaction);
pub(super) struct RedbWrite(pub WriteTransaction);

read_impl!(RedbRead);
read_impl!(RedbWrite);

impl WriteTx for RedbWrite {
    fn insert(&mut self, t: Tbl, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        match t.kind {
            Kind::Json => {
                let mut table = self.0.open_table(json_def(t)).map_err(db_err)?;
                let old = table.insert(key, value).map_err(db_err)?;
                Ok(old.is_some())
            }
            Kind::Text => {
                let text = std::str::from_utf8(value).map_err(|_| {
                    StoreError::Db(format!("a value for {}/{key} is not text", t.name))
                })?;
                let mut table = self.0.open_table(text_def(t)).map_err(db_err)?;
                let old = table.insert(key, text).map_err(db_err)?;
                Ok(old.is_some())
            }
            Kind::Seq => unreachable!("{} is keyed by sequence numbers", t.name),
        }
    }

    fn remove(&mut self, t: Tbl, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match t.kind {
            Kind::Json => {
                let mut table = self.0.open_table(json_def(t)).map_err(db_err)?;
                let old = table.remove(key).map_err(db_err)?;
                Ok(old.map(|v| v.value().to_vec()))
            }
            Kind::Text => {
                let mut table = self.0.open_table(text_def(t)).map_err(db_err)?;
                let old = table.remove(key).map_err(db_err)?;
                Ok(old.map(|v| v.value().as_bytes().to_vec()))
            }
            Kind::Seq => unreachable!("{} is keyed by sequence numbers", t.name),
        }
    }

    fn remove_span(&mut self, t: Tbl, span: Span<'_>) -> Result<(), StoreError> {
        match t.kind {
            Kind::Json => {
                let mut table = self.0.open_table(json_def(t)).map_err(db_err)?;
                table
                    .retain_in::<&str, _>(span, |_, _| false)
                    .map_err(db_err)
            }
            Kind::Text => {
                let mut table = self.0.open_table(text_def(t)).map_err(db_err)?;
                table
                    .retain_in::<&str, _>(span, |_, _| false)
                    .map_err(db_err)
            }
            Kind::Seq => unreachable!("{} is keyed by sequence numbers", t.name),
        }
    }

    fn seq_insert(&mut self, t: Tbl, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        let mut table = self.0.open_table(seq_def(t)).map_err(db_err)?;
        table.insert(seq, value).map_err(db_err)?;
        Ok(())
    }

    fn seq_remove(&mut self, t: Tbl, seq: u64) -> Result<(), StoreError> {
        let mut table = self.0.open_table(seq_def(t)).map_err(db_err)?;
        table.remove(seq).map_err(db_err)?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.0.commit().map_err(db_err)
    }
}

/// Makes every table of `EVERY_TABLE` exist, and moves the pre-`desired_by_host` table
/// over, in `tx` (a store made by an older controller may lack some).
pub(super) fn ensure_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    for t in EVERY_TABLE {
        match t.kind {
            Kind::Json => drop(tx.open_table(json_def(t)).map_err(db_err)?),
            Kind::Text => drop(tx.open_table(text_def(t)).map_err(db_err)?),
            Kind::Seq => drop(tx.open_table(seq_def(t)).map_err(db_err)?),
        }
    }
    migrate_desired(tx)
}

fn migrate_desired(tx: &WriteTransaction) -> Result<(), StoreError> {
    let exists = tx
        .list_tables()
        .map_err(db_err)?
        .any(|t| t.name() == DESIRED_V0.name());
    if !exists {
        return Ok(());
    }
    {
        let old = tx.open_table(DESIRED_V0).map_err(db_err)?;
        let mut new = tx
            .open_table(json_def(super::kv::DESIRED))
            .map_err(db_err)?;
        for row in old.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if let Some((app, host)) = k.value().split_once('/') {
                new.insert(format!("{host}/{app}").as_str(), v.value())
                    .map_err(db_err)?;
            }
        }
    }
    tx.delete_table(DESIRED_V0).map_err(db_err)?;
    Ok(())
}

/// Names of the tables in a redb store file, sorted.
pub(super) fn table_names(db: &Database) -> Result<Vec<String>, StoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let mut names: Vec<String> = tx
        .list_tables()
        .map_err(db_err)?
        .map(|t| t.name().to_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The meta table's value under `key`, read on its own (schema checks at open).
pub(super) fn read_meta(db: &Database, key: &str) -> Result<Option<String>, StoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(text_def(super::kv::META)).map_err(db_err)?;
    Ok(table
        .get(key)
        .map_err(db_err)?
        .map(|v| v.value().to_owned()))
}
