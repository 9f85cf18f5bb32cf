//! A schema of its own in the PostgreSQL server at `FLEET_TEST_PG_URL` (lab/test-all.sh
//! starts one; see controller/src/store/bed.rs), dropped when the guard goes.

pub struct Schema {
    base: String,
    name: String,
    /// `[store] url` that puts every connection in this schema.
    pub url: String,
}

fn sql(url: &str, sql: &str) {
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

impl Schema {
    /// None only under `FLEET_PG=skip`; without a server otherwise, the test fails and
    /// says how to run it.
    pub fn new() -> Option<Schema> {
        let Ok(base) = std::env::var("FLEET_TEST_PG_URL") else {
            if std::env::var("FLEET_PG").as_deref() == Ok("skip") {
                eprintln!("FLEET_PG=skip: PostgreSQL test not run");
                return None;
            }
            panic!(
                "this test needs a PostgreSQL server: run it through `bash lab/test-all.sh`, \
                 or `eval \"$(sh lab/pg-test-cluster.sh start)\"` first (FLEET_PG=skip skips it)"
            );
        };
        let name = format!(
            "it_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        sql(&base, &format!("CREATE SCHEMA {name}"));
        let url = if base.starts_with("postgres://") || base.starts_with("postgresql://") {
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options=-csearch_path%3D{name}")
        } else {
            format!("{base} options='-csearch_path={name}'")
        };
        Some(Schema { base, name, url })
    }

    /// A settings file with `[store] url` of this schema (and `extra` lines before it).
    pub fn config(&self, dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
        let path = dir.join("controller-pg.toml");
        let url = self.url.replace('\\', "\\\\").replace('"', "\\\"");
        std::fs::write(&path, format!("{extra}\n[store]\nurl = \"{url}\"\n")).unwrap();
        path
    }

    pub fn sql(&self, text: &str) {
        sql(
            &self.base,
            &format!("SET search_path = {}; {text}", self.name),
        );
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            sql(&self.base, &format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}
