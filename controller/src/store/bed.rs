//! Where the contract tests get a store: a redb file in a temporary directory, or a schema
//! of its own in the PostgreSQL server at `FLEET_TEST_PG_URL` (lab/test-all.sh starts an
//! unprivileged one; `lab/pg-test-cluster.sh` does it by hand). Without that variable a
//! PostgreSQL test fails and says how to run it, unless `FLEET_PG=skip` says to skip it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::pg::PgConfig;
use super::Store;

pub(crate) enum Bed {
    Redb {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Pg {
        base: String,
        schema: String,
        config: Box<PgConfig>,
    },
}

/// Runs `sql` on the server at `url` with a connection of its own.
pub(crate) fn admin_sql(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("FLEET_TEST_PG_URL={url}: cannot connect: {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

impl Bed {
    pub(crate) fn redb() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        Bed::Redb { _dir: dir, path }
    }

    /// A new, empty schema; None (the test passes without running) only under
    /// `FLEET_PG=skip`.
    pub(crate) fn postgres() -> Option<Bed> {
        let Ok(base) = std::env::var("FLEET_TEST_PG_URL") else {
            if std::env::var("FLEET_PG").as_deref() == Ok("skip") {
                eprintln!("FLEET_PG=skip: PostgreSQL contract test not run");
                return None;
            }
            panic!(
                "this test needs a PostgreSQL server: run it through `bash lab/test-all.sh`, \
                 or start one with `eval \"$(bash lab/pg-test-cluster.sh start)\"` and run it \
                 again (FLEET_PG=skip skips it on purpose)"
            );
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!(
            "t_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin_sql(&base, &format!("CREATE SCHEMA {schema}"));
        let config = Box::new(PgConfig::from_url(&base).unwrap().with_schema(&schema));
        Some(Bed::Pg {
            base,
            schema,
            config,
        })
    }

    pub(crate) fn create(&self) -> Store {
        match self {
            Bed::Redb { path, .. } => Store::create(path).unwrap(),
            Bed::Pg { config, .. } => Store::create_pg(config).unwrap(),
        }
    }

    pub(crate) fn reopen(&self) -> Store {
        match self {
            Bed::Redb { path, .. } => Store::open(path).unwrap(),
            Bed::Pg { config, .. } => Store::open_pg(config).unwrap(),
        }
    }

    pub(crate) fn pg_config(&self) -> &PgConfig {
        match self {
            Bed::Pg { config, .. } => config,
            Bed::Redb { .. } => panic!("not a PostgreSQL bed"),
        }
    }

    /// Runs `sql` in this bed's schema.
    pub(crate) fn sql(&self, sql: &str) {
        match self {
            Bed::Pg { base, schema, .. } => {
                admin_sql(base, &format!("SET search_path = {schema}; {sql}"))
            }
            Bed::Redb { .. } => panic!("not a PostgreSQL bed"),
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Bed::Pg { base, schema, .. } = self {
            if !std::thread::panicking() {
                admin_sql(base, &format!("DROP SCHEMA {schema} CASCADE"));
            }
        }
    }
}
