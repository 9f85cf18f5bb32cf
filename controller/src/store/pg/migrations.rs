//! The PostgreSQL schema as embedded, numbered steps (`PgStore::migrate` applies them).

/// The schema, one numbered step at a time; a database at a higher number than this list
/// knows is refused (a newer controller migrated it).
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE fleet_kv (
            tbl text NOT NULL,
            k text COLLATE \"C\" NOT NULL,
            v bytea NOT NULL,
            PRIMARY KEY (tbl, k)
        );
        CREATE TABLE fleet_seq (
            tbl text NOT NULL,
            seq bigint NOT NULL,
            v bytea NOT NULL,
            PRIMARY KEY (tbl, seq)
        );",
    ),
    (
        2,
        // The leader lease: who holds it, its epoch (raised at every change of holder),
        // and its expiry on the database's clock, the one clock every controller shares.
        "CREATE TABLE fleet_lease (
            name text PRIMARY KEY,
            holder text NOT NULL,
            epoch bigint NOT NULL,
            expires_at timestamptz NOT NULL
        );",
    ),
    (
        3,
        // Release and package blobs, so every controller can serve what one received
        // (`pg/blobs.rs`). Chunks bound the memory of a read or a write; the `fleet_blob`
        // row is written last, in the chunks' transaction, so it names only whole blobs.
        "CREATE TABLE fleet_blob (
            sha text PRIMARY KEY,
            size bigint NOT NULL,
            chunks integer NOT NULL
        );
        CREATE TABLE fleet_blob_chunk (
            sha text NOT NULL,
            n integer NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (sha, n)
        );",
    ),
];
