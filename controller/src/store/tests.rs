//! The store's contract: every test in `contract!` runs against a redb file in a
//! temporary directory and against PostgreSQL (`bed.rs`); the rest are redb's own.

use super::*;

#[path = "bed.rs"]
mod bed;
use bed::Bed;
use std::sync::Arc;

fn every_table_name() -> Vec<String> {
    let mut names: Vec<String> = kv::EVERY_TABLE.iter().map(|t| t.name.to_owned()).collect();
    names.sort();
    names
}

fn host(name: &str) -> HostRecord {
    HostRecord {
        name: name.into(),
        enrolled_at_ms: 1,
        address: "127.0.0.1".into(),
        last_seen_ms: 0,
        version: String::new(),
        package_version: String::new(),
        hostname: String::new(),
        os: String::new(),
        kernel: String::new(),
        cores: 0,
        memory_bytes: 0,
        serials: vec![IssuedSerial {
            serial: "ab".into(),
            not_after: 100,
        }],
        cert_expires: 100,
        group: String::new(),
        metrics_port: 0,
    }
}

fn one_use_token(id: &str) -> TokenRecord {
    TokenRecord {
        token_id: id.into(),
        created_at: 0,
        expires_at: 10,
        uses_total: 1,
        uses_left: 1,
        group: String::new(),
        bulk_per_minute: 0,
        created_by: "me".into(),
        revoked_at: 0,
    }
}

/// Each `fn name(s, bed) { … }` becomes `on_redb::name` and `on_postgres::name`, with `s` a
/// new, empty store and `bed` what made it (`bed.reopen()` opens it again).
macro_rules! contract {
    ($(fn $name:ident($s:ident, $bed:ident) $body:block)*) => {
        mod on_redb {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let $bed = Bed::redb();
                    let $s = $bed.create();
                    let _ = &$bed;
                    $body
                }
            )*
        }
        mod on_postgres {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let Some($bed) = Bed::postgres() else { return };
                    let $s = $bed.create();
                    let _ = &$bed;
                    $body
                }
            )*
        }
    };
}

contract! {
    fn controller_addresses_default_to_none_and_keep_who_set_them(s, bed) {
        assert_eq!(s.controllers().unwrap(), ControllersRecord::default());
        let rec = ControllersRecord {
            addresses: vec!["c1:7443".into(), "c2:7443".into()],
            by: "ops".into(),
            at: 7,
        };
        s.set_controllers(&rec).unwrap();
        assert_eq!(s.controllers().unwrap(), rec);
        s.set_controllers(&ControllersRecord::default()).unwrap();
        assert!(s.controllers().unwrap().addresses.is_empty());
    }

    fn desired_releases_are_per_app_and_host(s, bed) {
        s.set_desired("shop", "host1", Some(&"2.0")).unwrap();
        s.set_desired("shop", "host10", Some(&"2.1")).unwrap();
        s.set_desired("api", "host1", Some(&"1.0")).unwrap();
        assert_eq!(
            s.desired::<String>("shop", "host1").unwrap().as_deref(),
            Some("2.0")
        );
        let on: Vec<(String, String)> = s.desired_on("host1").unwrap();
        assert_eq!(
            on,
            [("api".into(), "1.0".into()), ("shop".into(), "2.0".into())]
        );
        s.set_desired::<String>("shop", "host1", None).unwrap();
        assert_eq!(s.desired::<String>("shop", "host1").unwrap(), None);
        assert_eq!(s.desired_on::<String>("host10").unwrap().len(), 1);
    }

    fn a_deploy_over_thousands_of_hosts_is_one_commit_across_statement_chunks(s, bed) {
        // More hosts than one PostgreSQL statement carries (pg/bulk.rs), some cleared.
        let names: Vec<String> = (0..2_500).map(|i| format!("h{i:04}")).collect();
        let before = s.commits();
        s.set_desired_many("shop", names.iter().map(|n| (n.as_str(), Some(&"1.0"))))
            .unwrap();
        assert_eq!(s.commits(), before + 1);
        let v2 = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), (i % 3 != 0).then_some(&"2.0")));
        s.set_desired_many("shop", v2).unwrap();
        for (i, n) in names.iter().enumerate().step_by(97) {
            let want = (i % 3 != 0).then(|| "2.0".to_owned());
            assert_eq!(s.desired::<String>("shop", n).unwrap(), want, "{n}");
        }
        assert_eq!(s.desired::<String>("shop", "h2498").unwrap().as_deref(), Some("2.0"));
        assert_eq!(s.desired::<String>("shop", "h2496").unwrap(), None);
        // Last seen over as many hosts, some of them unknown: one commit, each raised.
        for n in &names {
            s.put_host(&host(n)).unwrap();
        }
        let seen: std::collections::HashMap<String, i64> = names
            .iter()
            .map(|n| (n.clone(), 77))
            .chain([("unknown".to_string(), 5)])
            .collect();
        let before = s.commits();
        assert_eq!(s.record_last_seen(&seen).unwrap(), names.len());
        assert_eq!(s.commits(), before + 1);
        assert_eq!(s.host("h2222").unwrap().unwrap().last_seen_ms, 77);
        assert!(s.host("unknown").unwrap().is_none());
    }

    fn audit_is_pruned_by_age_and_count_in_batches(s, bed) {
        for t in 0..50 {
            s.append_audit(t * 1000, "me", "x", "t", "").unwrap();
        }
        // Older than t=10s: 10 entries, taken 4 at a time.
        assert_eq!(s.prune_audit(10_000, 1000, 4).unwrap(), 4);
        assert_eq!(s.prune_audit(10_000, 1000, 4).unwrap(), 4);
        assert_eq!(s.prune_audit(10_000, 1000, 4).unwrap(), 2);
        assert_eq!(s.prune_audit(10_000, 1000, 4).unwrap(), 0);
        // At most 30 kept: the oldest go.
        while s.prune_audit(0, 30, 7).unwrap() > 0 {}
        let left = s.audit_page(0, 0, 1000).unwrap();
        assert_eq!(left.len(), 30);
        assert_eq!(left[0].seq, 21);
        // Sequence numbers keep growing after pruning.
        assert_eq!(s.append_audit(99, "me", "x", "t", "").unwrap().seq, 51);
        let page = s.audit_page(0, 40, 3).unwrap();
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [41, 42, 43]);
    }

    fn state_survives_reopen(s, bed) {
        s.put_host(&host("web-1")).unwrap();
        s.append_audit(5, "me", "host.add", "web-1", "").unwrap();
        drop(s);
        let s = bed.reopen();
        assert_eq!(s.hosts().unwrap(), vec![host("web-1")]);
        assert_eq!(s.audit_since(0).unwrap()[0].seq, 1);
        assert_eq!(s.append_audit(6, "me", "x", "y", "").unwrap().seq, 2);
    }

    fn remove_host_forgets_the_releases_it_was_owed(s, bed) {
        s.put_host(&host("web-1")).unwrap();
        s.put_host(&host("web-10")).unwrap();
        s.set_desired("shop", "web-1", Some(&"2.0".to_owned()))
            .unwrap();
        s.set_desired("shop", "web-10", Some(&"2.0".to_owned()))
            .unwrap();
        s.remove_host("web-1", "spiffe://x/agent/web-1", 7).unwrap();
        assert_eq!(s.desired::<String>("shop", "web-1").unwrap(), None);
        assert_eq!(
            s.desired::<String>("shop", "web-10").unwrap().as_deref(),
            Some("2.0")
        );
    }

    fn remove_host_revokes_its_serials_atomically(s, bed) {
        s.put_host(&host("web-1")).unwrap();
        let revoked = s
            .remove_host("web-1", "spiffe://x/agent/web-1", 7)
            .unwrap()
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(s.host("web-1").unwrap().is_none());
        assert_eq!(s.revoked().unwrap()[0].serial, "ab");
        assert!(s.remove_host("web-1", "x", 8).unwrap().is_none());
    }

    fn releases_are_per_app_and_never_overwritten(s, bed) {
        let rec = |app: &str, v: &str, sha: &str, at| ReleaseRecord {
            app: app.into(),
            version: v.into(),
            sha256: sha.into(),
            size: 1,
            uploaded_at: at,
            uploaded_by: String::new(),
        };
        assert!(s
            .put_release_if_absent(&rec("shop", "1", "aa", 2))
            .unwrap()
            .is_none());
        assert!(s
            .put_release_if_absent(&rec("shop", "0", "bb", 1))
            .unwrap()
            .is_none());
        assert!(s
            .put_release_if_absent(&rec("shopx", "1", "cc", 3))
            .unwrap()
            .is_none());
        let existing = s
            .put_release_if_absent(&rec("shop", "1", "dd", 4))
            .unwrap()
            .unwrap();
        assert_eq!(existing.sha256, "aa");
        let versions: Vec<String> = s
            .releases("shop")
            .unwrap()
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, ["0", "1"]);
        assert!(s.blob_in_use("cc").unwrap());
        assert!(!s.blob_in_use("dd").unwrap());

        let commits = s.commits();
        assert_eq!(s.remove_release("shop", "9").unwrap(), None);
        assert_eq!(s.commits(), commits, "removing nothing writes nothing");
        assert_eq!(s.remove_release("shop", "1").unwrap().unwrap().sha256, "aa");
        assert!(!s.blob_in_use("aa").unwrap());
        assert!(s.release("shop", "1").unwrap().is_none());
        assert!(s.release("shopx", "1").unwrap().is_some());
    }

    fn desired_versions_count_hosts_per_release_of_one_app(s, bed) {
        let d =
            |v: &str| serde_json::json!({"version": v, "min_healthy_ms": 0, "healthy_deadline_ms": 0});
        s.set_desired("shop", "h1", Some(&d("1"))).unwrap();
        s.set_desired("shop", "h2", Some(&d("2"))).unwrap();
        s.set_desired("shop", "h3", Some(&d("2"))).unwrap();
        s.set_desired("shopx", "h1", Some(&d("1"))).unwrap();
        let got = s.desired_versions("shop").unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("1".into(), 1), ("2".into(), 2)]
        );
    }

    fn rollouts_are_replaced_by_id_and_survive_reopen(s, bed) {
        s.put_rollout("shop/1", &serde_json::json!({"step": 1}))
            .unwrap();
        s.put_rollout("shop/1", &serde_json::json!({"step": 2}))
            .unwrap();
        s.put_rollout("api/1", &serde_json::json!({"step": 7}))
            .unwrap();
        drop(s);
        let store = bed.reopen();
        let all: Vec<serde_json::Value> = store.rollouts().unwrap();
        assert_eq!(
            all,
            vec![
                serde_json::json!({"step": 7}),
                serde_json::json!({"step": 2})
            ]
        );
    }

    fn secrets_are_per_app(s, bed) {
        let meta = SecretMeta {
            set_at_ms: 7,
            set_by: "admin:alice".into(),
        };
        assert!(s.set_secret("shop", "DB", "one", None).unwrap());
        assert!(!s.set_secret("shop", "DB", "two", Some(&meta)).unwrap());
        s.set_secret("shopx", "DB", "other", None).unwrap();
        let got = s.secrets("shop").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["DB"], "two");
        let names = s.secret_names("shop").unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names["DB"], Some(meta));
        assert_eq!(s.secret_names("shopx").unwrap()["DB"], None);
    }

    fn unsetting_a_secret_removes_it_and_its_record_only(s, bed) {
        let meta = SecretMeta {
            set_at_ms: 1,
            set_by: "a".into(),
        };
        s.set_secret("shop", "DB", "x", Some(&meta)).unwrap();
        s.set_secret("shop", "KEY", "y", Some(&meta)).unwrap();
        let commits = s.commits();
        assert!(!s.unset_secret("shop", "NOPE").unwrap());
        assert_eq!(s.commits(), commits, "a missing secret writes nothing");
        assert!(s.unset_secret("shop", "DB").unwrap());
        assert_eq!(
            s.secrets("shop").unwrap().keys().collect::<Vec<_>>(),
            ["KEY"]
        );
        assert_eq!(s.secret_names("shop").unwrap().len(), 1);
        // Set again later: a fresh record, no stale one.
        s.set_secret("shop", "DB", "z", None).unwrap();
        assert_eq!(s.secret_names("shop").unwrap()["DB"], None);
    }

    fn revoking_a_token_by_id_marks_it_once(s, bed) {
        let mut t = one_use_token("abc123abc123");
        s.put_token("abc123abc123ffff", &t).unwrap();
        t.token_id = "abc999abc999".into();
        s.put_token("abc999abc999eeee", &t).unwrap();
        assert_eq!(s.revoke_token("000000000000", 5).unwrap(), None);
        let (got, newly) = s.revoke_token("abc123abc123", 5).unwrap().unwrap();
        assert!(newly);
        assert_eq!(got.revoked_at, 5);
        let (again, newly) = s.revoke_token("abc123abc123", 9).unwrap().unwrap();
        assert!(!newly);
        assert_eq!(again.revoked_at, 5, "the first revocation time stays");
        let all = s.tokens().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().filter(|t| t.revoked_at > 0).count(), 1);
    }

    fn spending_a_token_is_all_or_nothing(s, bed) {
        let t = one_use_token("id");
        s.put_token("h", &t).unwrap();
        let refuse = |t: Option<&TokenRecord>| match t {
            Some(t) if t.uses_left > 0 => Ok(()),
            _ => Err("spent"),
        };
        assert_eq!(s.spend_token("h", refuse).unwrap().unwrap().uses_left, 0);
        assert_eq!(s.spend_token("h", refuse).unwrap(), Err("spent"));
        assert_eq!(s.spend_token("nope", refuse).unwrap(), Err("spent"));
    }

    fn last_seen_times_are_written_in_one_commit_and_never_go_back(s, bed) {
        s.put_host(&host("a")).unwrap();
        s.put_host(&host("b")).unwrap();
        let before = s.commits();
        let seen = [
            ("a".to_string(), 50),
            ("b".to_string(), 60),
            ("gone".to_string(), 9),
        ];
        assert_eq!(s.record_last_seen(&seen.into_iter().collect()).unwrap(), 2);
        assert_eq!(s.commits(), before + 1);
        let older = [("a".to_string(), 10)];
        assert_eq!(s.record_last_seen(&older.into_iter().collect()).unwrap(), 0);
        assert_eq!(s.host("a").unwrap().unwrap().last_seen_ms, 50);
        assert_eq!(s.host_count().unwrap(), 2);
    }

    fn a_join_spends_records_and_audits_in_one_commit_or_not_at_all(s, bed) {
        let t = one_use_token("tid");
        s.put_token("h", &t).unwrap();
        let decide = |t: Option<&TokenRecord>, enrolled: bool| match t {
            _ if enrolled => Err("enrolled"),
            Some(t) if t.uses_left > 0 => Ok(()),
            _ => Err("spent"),
        };
        let audit = JoinAudit {
            time_ms: 5,
            detail: "from 127.0.0.1",
        };
        let before = s.commits();
        let spent = s.join_host("h", decide, &host("web-1"), &audit).unwrap();
        assert_eq!(spent.unwrap().uses_left, 0);
        assert_eq!(s.commits(), before + 1);
        assert!(s.host("web-1").unwrap().is_some());
        let log = s.audit_since(0).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (
                log[0].actor.as_str(),
                log[0].action.as_str(),
                log[0].target.as_str()
            ),
            ("token:tid", "host.join", "web-1")
        );
        // Refused: nothing is written, not even a commit.
        assert_eq!(
            s.join_host("h", decide, &host("web-2"), &audit).unwrap(),
            Err("spent")
        );
        assert_eq!(
            s.join_host("h", decide, &host("web-1"), &audit).unwrap(),
            Err("enrolled")
        );
        assert_eq!(s.commits(), before + 1);
        assert!(s.host("web-2").unwrap().is_none());
        assert_eq!(s.audit_since(0).unwrap().len(), 1);
    }

    fn a_snapshot_has_every_table_and_row_at_one_moment(s, bed) {
        s.put_token("h", &one_use_token("id")).unwrap();
        s.set_secret("shop", "DB", "sealed", None).unwrap();
        s.append_audit(1, "a", "b", "c", "d").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap.redb");
        s.snapshot(&snap).unwrap();
        // Later writes are not in it.
        s.set_secret("shop", "LATER", "x", None).unwrap();
        assert!(s.snapshot(&snap).is_err(), "never overwrites");
        assert_eq!(s.table_names().unwrap(), every_table_name());
        drop(s);
        let copy = Store::open(&snap).unwrap();
        assert_eq!(
            copy.table_names().unwrap(),
            every_table_name(),
            "a table is missing from the snapshot"
        );
        assert!(copy.token("h").unwrap().is_some());
        assert_eq!(
            copy.secrets("shop").unwrap().keys().collect::<Vec<_>>(),
            ["DB"]
        );
        assert_eq!(copy.audit_since(0).unwrap().len(), 1);
    }

    fn removing_an_app_deletes_only_its_rows_and_records_who_owes_it(s, bed) {
        let rel = |app: &str| ReleaseRecord {
            app: app.into(),
            version: "1".into(),
            sha256: format!("sha-{app}"),
            size: 1,
            uploaded_at: 1,
            uploaded_by: String::new(),
        };
        for app in ["shop", "shopx"] {
            s.put_app(&AppRecord {
                name: app.into(),
                spec_toml: String::new(),
                updated_at: 1,
            })
            .unwrap();
            s.put_release_if_absent(&rel(app)).unwrap();
            s.set_secret(app, "DB", "v", None).unwrap();
            s.set_desired(app, "web-1", Some(&"1".to_owned())).unwrap();
        }
        let by = LifecycleRecord {
            by: "admin:alice".into(),
            at: 7,
        };
        s.set_stopped("shop", &["web-2".into()], Some(&by)).unwrap();
        s.set_stopped("shopx", &["web-2".into()], Some(&by))
            .unwrap();
        assert!(s.is_stopped("shop", "web-2").unwrap());
        assert!(!s.is_stopped("shop", "web-1").unwrap());

        let live = std::collections::BTreeSet::from(["web-3".to_owned()]);
        let removed = s.remove_app("shop", &live, &by).unwrap().unwrap();
        assert_eq!(removed.releases.len(), 1);
        assert_eq!(
            removed.hosts.into_iter().collect::<Vec<_>>(),
            ["web-1", "web-2", "web-3"],
            "live, desired and stopped hosts owe the removal"
        );
        assert!(s.app("shop").unwrap().is_none());
        assert!(s.releases("shop").unwrap().is_empty());
        assert!(s.secrets("shop").unwrap().is_empty());
        assert_eq!(s.desired::<String>("shop", "web-1").unwrap(), None);
        assert!(!s.is_stopped("shop", "web-2").unwrap());
        // Another app whose name starts the same is untouched.
        assert!(s.app("shopx").unwrap().is_some());
        assert_eq!(s.releases("shopx").unwrap().len(), 1);
        assert_eq!(s.secrets("shopx").unwrap().len(), 1);
        assert!(s.is_stopped("shopx", "web-2").unwrap());
        assert!(s.desired::<String>("shopx", "web-1").unwrap().is_some());

        assert_eq!(s.removals_on("web-2").unwrap(), ["shop"]);
        assert_eq!(s.pending_removals("shop").unwrap().len(), 3);
        s.removal_done("web-2", "shop").unwrap();
        assert!(s.removals_on("web-2").unwrap().is_empty());
        s.put_host(&host("web-1")).unwrap();
        s.remove_host("web-1", "spiffe://x/agent/web-1", 8).unwrap();
        assert_eq!(
            s.pending_removals("shop")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["web-3"],
            "a removed host owes nothing"
        );
        let commits = s.commits();
        assert!(s.remove_app("shop", &live, &by).unwrap().is_none());
        assert_eq!(s.commits(), commits, "removing no app writes nothing");
    }
}

#[test]
fn garbage_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(
        &path,
        b"this is not a database, it is a text file ".repeat(200),
    )
    .unwrap();
    let err = Store::open(&path).err().expect("garbage accepted");
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
    assert!(err.to_string().contains("restore the file from a backup"));
    // Untouched: the operator's evidence is still there.
    assert!(std::fs::read(&path).unwrap().starts_with(b"this is not"));
}

#[test]
fn missing_store_says_to_init() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(&dir.path().join("state.redb")).err().unwrap();
    assert!(err.to_string().contains("fleet-controller init"));
}

#[test]
fn host_records_from_before_metrics_port_still_load() {
    let mut old = serde_json::to_value(host("h")).unwrap();
    old.as_object_mut().unwrap().remove("metrics_port");
    let bytes = serde_json::to_vec(&old).unwrap();
    let record: HostRecord = decode("hosts", "h", &bytes).unwrap();
    assert_eq!(record.metrics_port, 0);
}

#[test]
fn desired_records_of_an_older_store_move_to_the_host_keyed_table() {
    use redb::{ReadableDatabase, TableHandle};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    drop(Store::create(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut old = tx.open_table(redb_kv::DESIRED_V0).unwrap();
            old.insert("shop/host1", encode(&"2.0").as_slice()).unwrap();
            old.insert("api/host1", encode(&"1.0").as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(
        s.desired::<String>("shop", "host1").unwrap().as_deref(),
        Some("2.0")
    );
    assert_eq!(s.desired_on::<String>("host1").unwrap().len(), 2);
    drop(s);
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(!tx
        .list_tables()
        .unwrap()
        .any(|t| t.name() == redb_kv::DESIRED_V0.name()));
}

#[test]
fn postgres_refuses_a_schema_newer_than_it_knows_and_a_second_init() {
    let Some(bed) = Bed::postgres() else { return };
    drop(bed.create());
    // A schema marker alone (an init that failed after it) is no fleet.
    let s = Store::create_pg(bed.pg_config()).unwrap();
    s.put_host(&host("web-1")).unwrap();
    drop(s);
    assert!(
        Store::create_pg(bed.pg_config())
            .err()
            .unwrap()
            .to_string()
            .contains("already holds a fleet"),
        "a second init over a fleet"
    );
    bed.sql("INSERT INTO fleet_schema_migrations (version) VALUES (999)");
    let err = Store::open_pg(bed.pg_config()).err().unwrap().to_string();
    assert!(
        err.contains("version 999, newer than this controller knows"),
        "{err}"
    );
    assert!(err.contains("Upgrade this controller"), "{err}");
}

#[test]
fn postgres_without_a_fleet_says_to_init_or_migrate() {
    let Some(bed) = Bed::postgres() else { return };
    let err = Store::open_pg(bed.pg_config()).err().unwrap().to_string();
    assert!(err.contains("fleet-controller init"), "{err}");
    assert!(err.contains("fleet-controller migrate"), "{err}");
}

#[test]
fn an_unreachable_postgres_is_an_error_that_names_it_without_the_password() {
    // Port 9 on loopback: nothing listens there.
    let cfg = pg::PgConfig::from_url("postgres://fleet:s3cret@127.0.0.1:9/fleet").unwrap();
    let err = Store::open_pg(&cfg).err().unwrap().to_string();
    assert!(
        err.contains("cannot reach PostgreSQL at postgres://fleet@127.0.0.1:9/fleet"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_redb_fleet_migrates_into_postgres_whole_and_only_into_an_empty_one() {
    let from = Bed::redb();
    let s = from.create();
    s.put_host(&host("web-1")).unwrap();
    s.put_token("h", &one_use_token("id")).unwrap();
    s.set_secret("shop", "DB", "sealed", None).unwrap();
    s.set_firewall_policy("[ssh]", 5).unwrap();
    s.set_desired("shop", "web-1", Some(&"1.0".to_owned()))
        .unwrap();
    for t in 0..2500 {
        s.append_audit(t, "me", "x", "y", "").unwrap();
    }
    let Some(to) = Bed::postgres() else { return };
    let pg = to.create();
    let rows = s.copy_into(&pg).unwrap();
    assert!(rows >= 2505, "{rows}");
    assert_eq!(pg.hosts().unwrap(), vec![host("web-1")]);
    assert!(pg.token("h").unwrap().is_some());
    assert_eq!(pg.secrets("shop").unwrap()["DB"], "sealed");
    assert_eq!(pg.firewall_policy().unwrap(), Some(("[ssh]".into(), 5)));
    assert_eq!(pg.audit_since(0).unwrap().len(), 2500);
    assert_eq!(pg.append_audit(1, "a", "b", "c", "").unwrap().seq, 2501);
    assert_eq!(
        pg.desired::<String>("shop", "web-1").unwrap().as_deref(),
        Some("1.0")
    );
    let err = s.copy_into(&pg).err().unwrap().to_string();
    assert!(err.contains("only into a new, empty store"), "{err}");
}

#[test]
fn writers_on_two_postgres_stores_never_spend_a_token_twice() {
    // Two stores on one database are two controllers: each join is a read-modify-write
    // that must see the other's.
    let Some(bed) = Bed::postgres() else { return };
    let first = bed.create();
    let mut t = one_use_token("id");
    t.uses_left = 40;
    t.uses_total = 40;
    first.put_token("h", &t).unwrap();
    let second = bed.reopen();
    let spent = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|scope| {
        for store in [&first, &second, &first, &second] {
            let spent = &spent;
            scope.spawn(move || {
                for _ in 0..20 {
                    let ok = store
                        .spend_token("h", |t| match t {
                            Some(t) if t.uses_left > 0 => Ok(()),
                            _ => Err(()),
                        })
                        .unwrap();
                    if ok.is_ok() {
                        spent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(spent.into_inner(), 40, "80 attempts, 40 uses");
    assert_eq!(second.token("h").unwrap().unwrap().uses_left, 0);
}

#[test]
fn the_leader_lease_passes_only_after_it_expires_and_fences_the_old_holder() {
    use std::time::Duration;
    let Some(bed) = Bed::postgres() else { return };
    let a = bed.create();
    let b = bed.reopen();
    let (ha, hb) = (
        pg::LeaseHolder::new("ctl-a").unwrap(),
        pg::LeaseHolder::new("ctl-b").unwrap(),
    );
    // Sleeps only ever wait for an expiry (a longer one changes nothing); every step that
    // must happen before an expiry has a lifetime far longer than a loaded machine needs.
    let short = Duration::from_secs(2);
    let long = Duration::from_secs(60);
    let epoch_a = a.acquire_lease(&ha, short).unwrap().expect("a free lease");
    a.fence(&ha, epoch_a);
    assert_eq!(b.acquire_lease(&hb, long).unwrap(), None, "held by a");
    assert!(a.renew_lease(&ha, epoch_a, long).unwrap());
    a.put_host(&host("web-1")).unwrap();
    assert_eq!(
        b.lease_holder().unwrap(),
        Some(("ctl-a".to_owned(), epoch_a, true))
    );
    // Back to a short lifetime, then a stops renewing (paused, cut off): once the lease
    // expires on the database's clock, b takes it at a higher epoch, and a can neither
    // renew nor write.
    assert!(a.renew_lease(&ha, epoch_a, short).unwrap());
    std::thread::sleep(short + Duration::from_millis(500));
    let epoch_b = b
        .acquire_lease(&hb, long)
        .unwrap()
        .expect("an expired lease");
    assert!(epoch_b > epoch_a);
    b.fence(&hb, epoch_b);
    assert!(!a.renew_lease(&ha, epoch_a, short).unwrap());
    let err = a.put_host(&host("web-2")).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(err.to_string().contains("lost the leader lease"), "{err}");
    // Reads still work (they change nothing), and b writes.
    assert!(a.host("web-1").unwrap().is_some());
    b.put_host(&host("web-2")).unwrap();
    assert!(a.host("web-2").unwrap().is_some());
    assert!(pg::LeaseHolder::new("bad name'; --").is_err());
}

#[test]
fn the_embedded_store_is_always_its_one_controllers_lease() {
    let bed = Bed::redb();
    let s = bed.create();
    let h = pg::LeaseHolder::new("solo").unwrap();
    assert!(!s.is_shared());
    assert_eq!(
        s.acquire_lease(&h, std::time::Duration::from_secs(1))
            .unwrap(),
        Some(1)
    );
    s.fence(&h, 1);
    s.put_host(&host("web-1")).unwrap();
}

/// A gzip tarball of `len` bytes of incompressible content, so its blob spans chunks.
fn big_tarball(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "app.bin", data.as_slice()).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_blob_one_controller_received_is_served_by_another_checked_and_deleted_for_all() {
    use crate::blobs::{Blobs, Format};
    let Some(bed) = Bed::postgres() else { return };
    let (a, b) = (Arc::new(bed.create()), Arc::new(bed.reopen()));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let on_a = Blobs::open(dirs[0].path()).unwrap().with_store(&a);
    let on_b = Blobs::open(dirs[1].path()).unwrap().with_store(&b);
    let t = big_tarball(2_500_000);
    let mut up = on_a.begin(1 << 30).unwrap();
    up.write(&t).unwrap();
    let (sha, _) = on_a.finish(up, t.len() as u64, Format::Tarball).unwrap();

    let path = on_b.local(&sha).unwrap().expect("B copies A's upload in");
    assert_eq!(std::fs::read(&path).unwrap(), t);
    assert!(on_b.open_shared(&sha).is_ok());

    // Bytes that do not hash to the name are refused, and nothing is kept.
    bed.sql(
        "UPDATE fleet_blob_chunk SET data = set_byte(data, 7, get_byte(data, 7) # 1) WHERE n = 1",
    );
    let on_c = Blobs::open(dirs[2].path()).unwrap().with_store(&b);
    let err = on_c.local(&sha).unwrap_err().to_string();
    assert!(err.contains("hashes to"), "{err}");
    assert_eq!(
        std::fs::read_dir(dirs[2].path().join("blobs"))
            .unwrap()
            .count(),
        0
    );

    on_a.remove(&sha);
    assert!(
        on_c.local(&sha).unwrap().is_none(),
        "removed for every controller"
    );
    assert_eq!(b.fetch_blob(&sha, &mut std::io::sink()).unwrap(), None);
    assert!(on_b.local("not-a-name").unwrap().is_none());
    // B's own copy outlived the delete; the sweep a controller runs before serving
    // removes it, since no record names it.
    assert!(path.exists());
    assert_eq!(on_b.evict_except(&b.blob_refs().unwrap()).unwrap(), 1);
    assert!(!path.exists());
}

#[test]
fn the_embedded_store_keeps_no_blobs_of_its_own() {
    let bed = Bed::redb();
    let s = Arc::new(bed.create());
    s.put_blob("ab", 3, &mut &b"abc"[..]).unwrap();
    assert_eq!(s.fetch_blob("ab", &mut std::io::sink()).unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    let blobs = crate::blobs::Blobs::open(dir.path())
        .unwrap()
        .with_store(&s);
    assert!(blobs.local(&"a".repeat(64)).unwrap().is_none());
}
