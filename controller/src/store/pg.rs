//! The PostgreSQL backend: the same tables as the redb file, as rows of two tables
//! (`fleet_kv` for string keys, `fleet_seq` for the audit log), for controllers that share
//! one database (docs/ha.md).
//!
//! Why one key-value table and not a table per record type: the records are versioned JSON
//! that fleet already owns and migrates in Rust (`#[serde(default)]`), exactly as in the
//! redb file, so both backends hold the same bytes and one contract suite proves both. The
//! keys are `text COLLATE "C"`, so range reads see redb's byte order.
//!
//! The record modules are written for redb's model, where write transactions run one at a
//! time; here every write transaction takes one transaction-scoped advisory lock, which
//! gives every replica that same model (a read-modify-write such as spending a join token
//! can never interleave with another). A transaction-scoped lock ends with its transaction,
//! so a dropped connection cannot leave it held. Reads run in `REPEATABLE READ READ ONLY`
//! transactions, one consistent moment like a redb read.
//!
//! The store's API is synchronous (redb's is), and the controller calls it from its async
//! tasks. The connections' I/O runs on a small runtime of this module's own; a call waits
//! for its round trip on the caller's thread, as a redb commit waits for its fsync.

use std::fmt::Write as _;
use std::ops::Bound;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_executor::block_on;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::types::ToSql;

use super::kv::{Kind, ReadTx, Row, Span, Tbl, WriteTx};
use super::StoreError;

mod blobs;
mod bulk;
mod lease;
mod migrations;
pub(in crate::store) use lease::Fence;
pub use lease::LeaseHolder;

use migrations::MIGRATIONS;

/// SQLSTATE of the error a fenced write transaction raises (a class of fleet's own).
const FENCED: &str = "FLT01";

/// Advisory lock keys (arbitrary constants, "fleet" in ASCII plus a purpose).
const MIGRATE_LOCK: i64 = 0x666c_6565_7401;
const WRITE_LOCK: i64 = 0x666c_6565_7402;

/// How long a call waits for a pooled connection, or for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Where the database is and how to reach it: `[store] url` (libpq's URL or key=value
/// form: several hosts, `target_session_attrs=read-write` and `sslmode` included).
#[derive(Clone)]
pub struct PgConfig {
    pg: tokio_postgres::Config,
    /// Connections this controller may hold; the sum over every replica must stay below
    /// the server's `max_connections`.
    pub pool_size: usize,
    /// PEM file of the CA that signed the server's certificate, for `sslmode=require`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Lifetime of the leader lease: how long a standby waits after the leader stops
    /// renewing (docs/ha.md).
    pub lease_ttl: Duration,
    /// `HOST:PORT` the other controllers dial to relay calls to this one when it leads.
    pub advertise: Option<String>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.describe())
    }
}

impl PgConfig {
    pub const DEFAULT_POOL_SIZE: usize = 8;
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);

    pub fn from_url(url: &str) -> Result<PgConfig, StoreError> {
        let pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            // The URL may hold a password: the parser's message names the part it could
            // not read, never echoes the URL.
            StoreError::Db(format!(
                "[store] url is not a PostgreSQL connection string: {e}"
            ))
        })?;
        if pg.get_hosts().is_empty() {
            return Err(StoreError::Db(
                "[store] url names no host: use postgres://USER@HOST[:PORT]/DATABASE".into(),
            ));
        }
        Ok(PgConfig {
            pg,
            pool_size: Self::DEFAULT_POOL_SIZE,
            ca_file: None,
            lease_ttl: Self::DEFAULT_LEASE_TTL,
            advertise: None,
        })
    }

    pub fn with_password(mut self, password: &str) -> PgConfig {
        self.pg.password(password);
        self
    }

    /// Runs every connection with `search_path` set to `schema` (tests give each their own).
    pub fn with_schema(mut self, schema: &str) -> PgConfig {
        self.pg.options(format!("-csearch_path={schema}"));
        self
    }

    /// `user@host:port,…/dbname`, for messages: never the password.
    pub fn describe(&self) -> String {
        let mut out = String::from("postgres://");
        if let Some(user) = self.pg.get_user() {
            let _ = write!(out, "{user}@");
        }
        let ports = self.pg.get_ports();
        for (i, host) in self.pg.get_hosts().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match host {
                tokio_postgres::config::Host::Tcp(h) => out.push_str(h),
                tokio_postgres::config::Host::Unix(p) => {
                    let _ = write!(out, "[{}]", p.display());
                }
            }
            if let Some(p) = ports.get(i).or(ports.first()) {
                let _ = write!(out, ":{p}");
            }
        }
        let _ = write!(out, "/{}", self.pg.get_dbname().unwrap_or(""));
        out
    }
}

pub(super) struct PgStore {
    pool: Pool,
    /// Set once this controller holds the leader lease: every write transaction then
    /// checks, inside itself, that the lease is still this holder's at this epoch and
    /// unexpired, so a controller that lost it (paused past its expiry, cut off) can
    /// write nothing more.
    fence: std::sync::RwLock<Option<Fence>>,
    /// Runs the connections' I/O; shut down without blocking when the store goes, which
    /// may be on an async worker.
    rt: Option<tokio::runtime::Runtime>,
    describe: String,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn pg_err(what: &str, e: tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Db(format!("PostgreSQL {what}: {detail}"))
}

fn tls(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let pem = std::fs::read(ca_file).map_err(|e| {
        StoreError::Db(format!(
            "[store] ca_file {}: cannot read it: {e}",
            ca_file.display()
        ))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert
            .map_err(|e| StoreError::Db(format!("[store] ca_file {}: {e}", ca_file.display())))?;
        roots
            .add(cert)
            .map_err(|e| StoreError::Db(format!("[store] ca_file {}: {e}", ca_file.display())))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Db(format!("TLS for PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connects (one connection first, so a wrong address or password is an error now,
    /// not at the first request) and brings the schema up to this controller's.
    pub(super) fn connect(config: &PgConfig) -> Result<PgStore, StoreError> {
        let describe = config.describe();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleet-store-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let wants_tls = config.pg.get_ssl_mode() != tokio_postgres::config::SslMode::Disable;
        let manager = match (&config.ca_file, wants_tls) {
            (Some(ca), true) => Manager::from_config(config.pg.clone(), tls(ca)?, manager_config),
            (None, true)
                if config.pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require =>
            {
                return Err(StoreError::Db(format!(
                    "{describe}: sslmode=require needs `[store] ca_file`, the CA that signed \
                     the server's certificate"
                )));
            }
            _ => Manager::from_config(config.pg.clone(), tokio_postgres::NoTls, manager_config),
        };
        let pool = {
            let _guard = rt.enter();
            Pool::builder(manager)
                .max_size(config.pool_size.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(POOL_WAIT))
                .recycle_timeout(Some(POOL_WAIT))
                .build()
                .map_err(|e| StoreError::Db(format!("PostgreSQL pool: {e}")))?
        };
        let store = PgStore {
            pool,
            fence: std::sync::RwLock::new(None),
            rt: Some(rt),
            describe,
        };
        store.migrate()?;
        Ok(store)
    }

    fn client(&self) -> Result<Object, StoreError> {
        let pool = self.pool.clone();
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the store");
        // Making a connection needs the runtime's reactor; waiting for it does not.
        block_on(rt.spawn(async move { pool.get().await }))
            .map_err(|e| StoreError::Db(format!("PostgreSQL connection task: {e}")))?
            .map_err(|e| {
                StoreError::Db(format!(
                    "cannot reach PostgreSQL at {}: {e}. Check that it runs, that \
                     `[store] url` is right, and that its pg_hba.conf admits this host",
                    self.describe
                ))
            })
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let client = self.client()?;
        let run = |sql: &str| {
            block_on(client.batch_execute(sql)).map_err(|e| pg_err("schema migration", e))
        };
        run(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATE_LOCK});
             CREATE TABLE IF NOT EXISTS fleet_schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))?;
        let outcome = (|| {
            let row = block_on(client.query_one(
                "SELECT coalesce(max(version), 0) FROM fleet_schema_migrations",
                &[],
            ))
            .map_err(|e| pg_err("schema version", e))?;
            let at: i32 = row.get(0);
            let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
            if at > known {
                return Err(StoreError::Db(format!(
                    "{}: the schema is at version {at}, newer than this controller knows \
                     ({known}): a newer controller migrated it. Upgrade this controller \
                     before starting it on this database",
                    self.describe
                )));
            }
            for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > at) {
                run(sql)?;
                block_on(client.execute(
                    "INSERT INTO fleet_schema_migrations (version) VALUES ($1)",
                    &[version],
                ))
                .map_err(|e| pg_err("schema migration", e))?;
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => run("COMMIT"),
            Err(e) => {
                let _ = run("ROLLBACK");
                Err(e)
            }
        }
    }

    pub(super) fn read(&self) -> Result<PgTx, StoreError> {
        PgTx::begin(
            self.client()?,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .map_err(|e| pg_err("begin", e))
    }

    pub(super) fn write(&self) -> Result<PgTx, StoreError> {
        let mut begin = format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});");
        let fence = self.fence.read().expect("fence lock").clone();
        if let Some(f) = &fence {
            // In the same round trip as BEGIN: the holder is a validated name, the epoch
            // a number, so both are safe as literals.
            let _ = write!(
                begin,
                " DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM fleet_lease WHERE name = 'leader' \
                 AND holder = '{}' AND epoch = {} AND expires_at > now()) THEN RAISE \
                 EXCEPTION USING ERRCODE = '{FENCED}', MESSAGE = 'leader lease lost'; \
                 END IF; END $$;",
                f.holder, f.epoch
            );
        }
        PgTx::begin(self.client()?, &begin).map_err(|e| match &fence {
            Some(f) if e.code().map(|c| c.code()) == Some(FENCED) => {
                StoreError::Fenced { epoch: f.epoch }
            }
            _ => pg_err("begin", e),
        })
    }
}

/// One transaction on one pooled connection; rolled back when dropped uncommitted.
pub(super) struct PgTx {
    client: Option<Object>,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if block_on(client.batch_execute("ROLLBACK")).is_err() {
                // Never hand a connection in an unknown state back to the pool.
                drop(Object::take(client));
            }
        }
    }
}

fn seq_key(t: Tbl, seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Db(format!("{}: sequence {seq} too large", t.name)))
}

/// ` AND k … $n` clauses for a span, with its parameters appended to `params`.
fn span_sql<'a>(span: Span<'a>, params: &mut Vec<&'a str>) -> String {
    let mut sql = String::new();
    let mut bound = |op: &str, v: &'a str, params: &mut Vec<&'a str>| {
        params.push(v);
        let _ = write!(sql, " AND k {op} ${}", params.len() + 1);
    };
    match span.0 {
        Bound::Included(v) => bound(">=", v, params),
        Bound::Excluded(v) => bound(">", v, params),
        Bound::Unbounded => {}
    }
    match span.1 {
        Bound::Included(v) => bound("<=", v, params),
        Bound::Excluded(v) => bound("<", v, params),
        Bound::Unbounded => {}
    }
    sql
}

impl PgTx {
    fn begin(client: Object, sql: &str) -> Result<PgTx, tokio_postgres::Error> {
        match block_on(client.batch_execute(sql)) {
            Ok(()) => Ok(PgTx {
                client: Some(client),
            }),
            Err(e) => {
                drop(Object::take(client));
                Err(e)
            }
        }
    }

    fn c(&self) -> &Object {
        self.client.as_ref().expect("open until commit or drop")
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let c = self.c();
        let stmt = block_on(c.prepare_cached(sql)).map_err(|e| pg_err("prepare", e))?;
        block_on(c.query(&stmt, params)).map_err(|e| pg_err("query", e))
    }

    /// Rows of `t` in `span`: `select` names the columns wanted.
    fn span_query(
        &self,
        select: &str,
        t: Tbl,
        span: Span<'_>,
        limit: Option<usize>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut keys = Vec::new();
        let mut sql = format!("SELECT {select} FROM fleet_kv WHERE tbl = $1");
        sql.push_str(&span_sql(span, &mut keys));
        sql.push_str(" ORDER BY k");
        let limit = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        if limit.is_some() {
            let _ = write!(sql, " LIMIT ${}", keys.len() + 2);
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
        params.extend(keys.iter().map(|k| k as &(dyn ToSql + Sync)));
        if let Some(l) = &limit {
            params.push(l);
        }
        self.query(&sql, &params)
    }
}

impl ReadTx for PgTx {
    fn get(&self, t: Tbl, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(
            "SELECT v FROM fleet_kv WHERE tbl = $1 AND k = $2",
            &[&t.name, &key],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn get_many(&self, t: Tbl, keys: &[&str]) -> Result<Vec<Row>, StoreError> {
        self.get_many_rows(t, keys)
    }

    fn range(&self, t: Tbl, span: Span<'_>, limit: Option<usize>) -> Result<Vec<Row>, StoreError> {
        Ok(self
            .span_query("k, v", t, span, limit)?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn keys(&self, t: Tbl, span: Span<'_>) -> Result<Vec<String>, StoreError> {
        Ok(self
            .span_query("k", t, span, None)?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn count(&self, t: Tbl) -> Result<u64, StoreError> {
        let table = if t.kind == Kind::Seq {
            "fleet_seq"
        } else {
            "fleet_kv"
        };
        let rows = self.query(
            &format!("SELECT count(*) FROM {table} WHERE tbl = $1"),
            &[&t.name],
        )?;
        let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    fn seq_last(&self, t: Tbl) -> Result<Option<u64>, StoreError> {
        let rows = self.query("SELECT max(seq) FROM fleet_seq WHERE tbl = $1", &[&t.name])?;
        let last: Option<i64> = rows.first().and_then(|r| r.get(0));
        Ok(last.map(|n| n.max(0) as u64))
    }

    fn seq_range(
        &self,
        t: Tbl,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let after = seq_key(t, after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .query(
                "SELECT seq, v FROM fleet_seq WHERE tbl = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&t.name, &after, &limit],
            )?
            .into_iter()
            .map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1)))
            .collect())
    }
}

impl WriteTx for PgTx {
    fn insert(&mut self, t: Tbl, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        // `xmax` is non-zero on a row the upsert updated, zero on one it inserted.
        let rows = self.query(
            "INSERT INTO fleet_kv (tbl, k, v) VALUES ($1, $2, $3)
             ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v
             RETURNING (xmax <> 0)",
            &[&t.name, &key, &value],
        )?;
        Ok(rows.first().is_some_and(|r| r.get(0)))
    }

    fn remove(&mut self, t: Tbl, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(
            "DELETE FROM fleet_kv WHERE tbl = $1 AND k = $2 RETURNING v",
            &[&t.name, &key],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn put_many(&mut self, t: Tbl, rows: &[(&str, &[u8])]) -> Result<(), StoreError> {
        self.put_many_rows(t, rows)
    }

    fn remove_many(&mut self, t: Tbl, keys: &[&str]) -> Result<(), StoreError> {
        self.remove_many_rows(t, keys)
    }

    fn remove_span(&mut self, t: Tbl, span: Span<'_>) -> Result<(), StoreError> {
        let mut keys = Vec::new();
        let sql = format!(
            "DELETE FROM fleet_kv WHERE tbl = $1{}",
            span_sql(span, &mut keys)
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
        params.extend(keys.iter().map(|k| k as &(dyn ToSql + Sync)));
        self.query(&sql, &params)?;
        Ok(())
    }

    fn seq_insert(&mut self, t: Tbl, seq: u64, value: &[u8]) -> Result<(), StoreError> {
        let seq = seq_key(t, seq)?;
        self.query(
            "INSERT INTO fleet_seq (tbl, seq, v) VALUES ($1, $2, $3)
             ON CONFLICT (tbl, seq) DO UPDATE SET v = EXCLUDED.v",
            &[&t.name, &seq, &value],
        )?;
        Ok(())
    }

    fn seq_remove(&mut self, t: Tbl, seq: u64) -> Result<(), StoreError> {
        let seq = seq_key(t, seq)?;
        self.query(
            "DELETE FROM fleet_seq WHERE tbl = $1 AND seq = $2",
            &[&t.name, &seq],
        )?;
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let client = self.client.take().expect("open until commit or drop");
        match block_on(client.batch_execute("COMMIT")) {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(Object::take(client));
                Err(pg_err("commit", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_described_without_its_password() {
        let c = PgConfig::from_url(
            "postgres://fleet:s3cret@db1:5433,db2/fleet?target_session_attrs=read-write",
        )
        .unwrap();
        let d = c.describe();
        assert_eq!(d, "postgres://fleet@db1:5433,db2:5432/fleet");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = PgConfig::from_url("postgres://fleet:s3cret@db1:notaport/fleet")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[store] url"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn spans_become_bounded_key_clauses() {
        let mut p = Vec::new();
        let sql = span_sql((Bound::Included("a/"), Bound::Excluded("a0")), &mut p);
        assert_eq!(sql, " AND k >= $2 AND k < $3");
        assert_eq!(p, ["a/", "a0"]);
        let mut p = Vec::new();
        assert_eq!(
            span_sql((Bound::Excluded("h"), Bound::Unbounded), &mut p),
            " AND k > $2"
        );
    }
}
