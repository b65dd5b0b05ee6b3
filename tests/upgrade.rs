//! `ALTER EXTENSION trackway UPDATE` from each earlier release: a database created at 0.1.0 or 0.2.0 (the kept
//! install script `pg_ext/sql/releases/trackway--0.1.0.sql`, which scripts/test copies into PostgreSQL's
//! extension directory) holding data is updated, and afterwards has its data, working cursors, and exactly
//! the objects, definitions and privileges of a fresh install of the current version.

use std::collections::BTreeMap;

use tokio_postgres::Client;
use trackway_tests::{connect, fresh_database, is_hypertable, server, storage, Storage};

/// The releases before this one (their install scripts are kept in `pg_ext/sql/releases`).
const PREVIOUS: [&str; 4] = ["0.1.0", "0.2.0", "0.3.0", "0.4.0"];

/// What a schema looks like, object by object: a fresh install and an updated one must be equal.
async fn catalog(client: &Client) -> BTreeMap<String, String> {
    let queries = [
        // Functions: signature → definition and privileges.
        "SELECT 'function ' || p.oid::regprocedure::text,
                pg_get_functiondef(p.oid) || ' acl=' || coalesce(p.proacl::text, 'default')
         FROM pg_proc p WHERE p.pronamespace = 'trackway'::regnamespace AND p.prokind IN ('f', 'p')",
        // Tables, sequences: columns with types, defaults, not-null; privileges; options.
        "SELECT 'relation ' || c.relname || ' ' || c.relkind::text,
                coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                            || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                            || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
                                            ', ' ORDER BY a.attnum)
                          FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid, a.attnum)
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
                || ' acl=' || coalesce(c.relacl::text, 'default') || ' options=' || coalesce(c.reloptions::text, '')
         FROM pg_class c WHERE c.relnamespace = 'trackway'::regnamespace AND c.relkind IN ('r', 'S', 'v', 'p')",
        "SELECT 'index ' || i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'trackway'::regnamespace",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname, pg_get_constraintdef(oid)
         FROM pg_constraint WHERE connamespace = 'trackway'::regnamespace",
        "SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname, pg_get_triggerdef(oid)
         FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN
             (SELECT oid FROM pg_class WHERE relnamespace = 'trackway'::regnamespace)",
        "SELECT 'comment ' || pg_describe_object(classoid, objoid, objsubid), description
         FROM pg_description
         WHERE (classoid = 'pg_proc'::regclass
                AND objoid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'trackway'::regnamespace))
            OR (classoid = 'pg_class'::regclass
                AND objoid IN (SELECT oid FROM pg_class WHERE relnamespace = 'trackway'::regnamespace))",
        // What pg_dump keeps of the extension's tables.
        "SELECT 'config ' || x.c::regclass::text, 'dumped' FROM pg_extension e, unnest(e.extconfig) AS x(c)
         WHERE e.extname = 'trackway'",
        // Every object the extension owns.
        "SELECT 'member ' || pg_describe_object(classid, objid, objsubid), 'member'
         FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'trackway')",
    ];
    let mut objects = BTreeMap::new();
    for sql in queries {
        for row in client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) {
            objects.insert(row.get::<_, String>(0), row.get::<_, String>(1));
        }
    }
    objects
}

async fn ingest(client: &Client, devices: &[&str], second: u32) {
    let payloads: Vec<String> = devices
        .iter()
        .map(|d| {
            format!(
                r#"{{"deviceId":"{d}","timestamp":"2026-11-27T10:00:{second:02}Z","latitude":54.7,"longitude":25.3,
                "attributes":{{"11":{{"__bigint":"18446744073709551615"}},"281":{{"__buffer_b64":"UDAzMDA="}}}}}}"#
            )
        })
        .collect();
    let rows =
        client.query("SELECT status FROM trackway.ingest_batch($1::text[])", &[&payloads]).await.expect("ingest");
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "inserted"));
}

#[tokio::test]
async fn a_database_at_0_1_0_updates_to_exactly_a_fresh_install() {
    updates_to_exactly_a_fresh_install(PREVIOUS[0]).await;
}

#[tokio::test]
async fn a_database_at_0_2_0_updates_to_exactly_a_fresh_install() {
    updates_to_exactly_a_fresh_install(PREVIOUS[1]).await;
}

#[tokio::test]
async fn a_database_at_0_3_0_updates_to_exactly_a_fresh_install() {
    updates_to_exactly_a_fresh_install(PREVIOUS[2]).await;
}

#[tokio::test]
async fn a_database_at_0_4_0_updates_to_exactly_a_fresh_install() {
    updates_to_exactly_a_fresh_install(PREVIOUS[3]).await;
}

/// A database created at release `previous`, holding data, is updated with `ALTER EXTENSION trackway UPDATE`
/// (the current library serving it before and after).
async fn updates_to_exactly_a_fresh_install(previous: &str) {
    let tag = previous.replace('.', "_");
    // The current version, as a fresh install: the reference.
    let fresh_db = fresh_database(&format!("upgrade_fresh_{tag}")).await;
    let fresh = connect(&fresh_db).await;
    let current: String = fresh
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'trackway'", &[])
        .await
        .expect("version")
        .get(0);
    assert!(
        !PREVIOUS.contains(&current.as_str()),
        "the current version {current} must differ from the releases before"
    );

    // The previous release, with data.
    let admin = connect("postgres").await;
    let db = &format!("trackway_test_upgrade_old_{tag}");
    // Separate statements: DROP/CREATE DATABASE cannot run in the implicit transaction of a batch.
    for sql in [format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"), format!("CREATE DATABASE {db}")] {
        admin.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let old = connect(db).await;
    if storage() == Storage::Hypertable {
        old.batch_execute("CREATE EXTENSION timescaledb").await.expect("CREATE EXTENSION timescaledb");
    }
    old.batch_execute(&format!("CREATE EXTENSION trackway VERSION '{previous}'")).await.unwrap_or_else(|e| {
        panic!(
            "CREATE EXTENSION trackway VERSION '{previous}' failed ({e:?}): scripts/test copies \
             pg_ext/sql/releases/trackway--{previous}.sql into $(pg_config --sharedir)/extension"
        )
    });
    ingest(&old, &["u1", "u2"], 1).await;
    old.batch_execute("INSERT INTO trackway.device_groups VALUES ('fleet', 'u1')").await.expect("group");
    let cursor: String = old.query_one("SELECT trackway.current_cursor()", &[]).await.expect("cursor").get(0);
    ingest(&old, &["u1"], 2).await;

    old.batch_execute("ALTER EXTENSION trackway UPDATE").await.expect("ALTER EXTENSION trackway UPDATE");
    let updated = connect(db).await;
    let version: String = updated
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'trackway'", &[])
        .await
        .expect("v")
        .get(0);
    assert_eq!(version, current);
    assert_eq!(is_hypertable(&updated).await, storage() == Storage::Hypertable);

    // Data, latest positions and groups are all there; a cursor taken before the update still works.
    let count: i64 = updated.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(count, 3);
    let latest: String = updated
        .query_one("SELECT ts::text FROM trackway.latest_positions WHERE device_id = 'u1'", &[])
        .await
        .expect("latest")
        .get(0);
    assert!(latest.starts_with("2026-11-27 10:00:02"), "{latest}");
    let after: Vec<String> = updated
        .query("SELECT device_id FROM trackway.positions_since($1)", &[&cursor])
        .await
        .expect("positions_since from a cursor of the earlier release")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(after, ["u1"]);
    let doc: String = updated
        .query_one("SELECT position FROM trackway._positions_since_text($1)", &[&cursor])
        .await
        .expect("new function")
        .get(0);
    assert!(doc.contains(r#""11":{"__bigint":"18446744073709551615"}"#), "{doc}");
    ingest(&updated, &["u3"], 3).await;
    let allowed: bool = updated
        .query_one("SELECT trackway.authorize('{\"admin_access\": true}', 'device', 'u1')", &[])
        .await
        .expect("authorize")
        .get(0);
    assert!(allowed);

    // Exactly what a fresh install has: functions with their definitions and privileges, tables, indexes,
    // constraints, triggers, comments, dump configuration, extension membership.
    let (want, got) = (catalog(&fresh).await, catalog(&updated).await);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v)).map(|(k, _)| k).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "an updated database differs from a fresh install ({}):\nmissing {missing:?}\nextra {extra:?}\ndiffer {differ:?}",
        server()
    );
    // The role that only reads can use what the live side needs.
    for sql in [
        "SELECT has_function_privilege('trackway_reader', 'trackway.authorize(jsonb, text, text)', 'EXECUTE')",
        "SELECT has_function_privilege('trackway_reader', 'trackway._positions_since_text(text, text[], integer)', 'EXECUTE')",
        "SELECT has_function_privilege('trackway_reader', 'trackway.live_rows_since(text, integer)', 'EXECUTE')",
        "SELECT has_function_privilege('trackway_reader', 'trackway.live_latest_of_groups(text[])', 'EXECUTE')",
        "SELECT NOT has_function_privilege('trackway_reader', 'trackway._keep_latest(anyarray)', 'EXECUTE')",
        "SELECT has_table_privilege('trackway_reader', 'trackway.live_grants', 'SELECT')",
        "SELECT NOT has_function_privilege('public', 'trackway.authorize(jsonb, text, text)', 'EXECUTE')",
    ] {
        assert!(updated.query_one(sql, &[]).await.expect(sql).get::<_, bool>(0), "{sql}");
    }
    drop((old, updated));
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.ok();
}

/// A version after this one, for [`installing_the_next_version_under_running_sessions_crashes_nothing`]:
/// this build's library under the next version's file name, and an update script that points every C
/// function at it (as each release's update script does).
struct NextVersion {
    /// Files written into the server's directories (removed on drop).
    files: Vec<std::path::PathBuf>,
}

impl Drop for NextVersion {
    fn drop(&mut self) {
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// The server's directory `name` (`PKGLIBDIR`, `SHAREDIR`) as a path on this machine.
async fn server_dir(client: &Client, name: &str) -> std::path::PathBuf {
    let dir: String =
        client.query_one("SELECT setting FROM pg_config WHERE name = $1", &[&name]).await.expect("pg_config").get(0);
    trackway_tests::servers::pg_host_path(std::path::Path::new(&dir))
}

/// Writes `bytes` to `path` as an install does it safely: a new file renamed into place.
fn install_file(path: &std::path::Path, bytes: &[u8]) {
    let temporary = path.with_extension("installing");
    std::fs::write(&temporary, bytes).unwrap_or_else(|e| panic!("write {}: {e}", temporary.display()));
    std::fs::rename(&temporary, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Installs version `next` beside the current one `current`, from `client`'s catalog.
async fn install_next_version(client: &Client, current: &str, next: &str) -> NextVersion {
    let (lib, share) = (server_dir(client, "PKGLIBDIR").await, server_dir(client, "SHAREDIR").await);
    let library = std::fs::read(lib.join(format!("trackway-{current}.so"))).expect("this version's library");
    let (old, new) = (format!("'trackway-{current}'"), format!("'trackway-{next}'"));
    let mut script = String::new();
    for row in client
        .query(
            "SELECT pg_get_functiondef(p.oid) FROM pg_proc p
             WHERE p.pronamespace = 'trackway'::regnamespace AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c')",
            &[],
        )
        .await
        .expect("C functions")
    {
        let definition: String = row.get(0);
        assert!(definition.contains(&old), "{definition}");
        script.push_str(&definition.replace(&old, &new));
        script.push_str(";\n");
    }
    let files =
        vec![lib.join(format!("trackway-{next}.so")), share.join(format!("extension/trackway--{current}--{next}.sql"))];
    // The library first, then the script that points at it (as an install must).
    install_file(&files[0], &library);
    install_file(&files[1], script.as_bytes());
    NextVersion { files }
}

/// Issue 17, point 10: installing a new version while sessions have the old library loaded, then updating,
/// crashes no backend. Each version's library is a file of its own; a session that used the old version
/// is closed cleanly (FATAL, SQLSTATE 55000) at its next call, and an update run in such a session is
/// refused (ERROR 55000) — never the old file replaced under a running backend (a segfault, and the
/// postmaster restarting every connection), nor two versions' settings in one backend (an ERROR on every
/// call, for good).
#[tokio::test]
async fn installing_the_next_version_under_running_sessions_crashes_nothing() {
    let db = fresh_database("next_version").await;
    let current: String = connect(&db)
        .await
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'trackway'", &[])
        .await
        .expect("version")
        .get(0);
    let next = "999.0.0";
    // Sessions on the current version: one that ingests (the library loaded), one that updates later after
    // using the library, and a LISTEN-only one in another database: if any backend crashed, the
    // postmaster would end every session, this one too.
    let ingesting = connect(&db).await;
    ingest(&ingesting, &["n1"], 1).await;
    let used = connect(&db).await;
    used.query_one(
        "SELECT trackway.decode($1)::text",
        &[&r#"{"deviceId":"n","timestamp":"2026-11-27T10:00:00Z","latitude":1,"longitude":2}"#],
    )
    .await
    .expect("decode");
    let bystander = connect("postgres").await;
    bystander.batch_execute("LISTEN trackway_next_version_bystander").await.expect("listen");

    let installed = install_next_version(&connect(&db).await, &current, next).await;
    // The sessions go on with the library they have: the new file replaced nothing.
    ingest(&ingesting, &["n1"], 2).await;

    // An update in a session that used the old version is refused, and rolled back.
    let refused =
        used.batch_execute(&format!("ALTER EXTENSION trackway UPDATE TO '{next}'")).await.expect_err("refused");
    let db_error = refused.as_db_error().unwrap_or_else(|| panic!("a server error: {refused:?}"));
    assert_eq!(db_error.code().code(), "55000", "{db_error:?}");
    assert!(db_error.message().contains("is already loaded in this session"), "{}", db_error.message());

    // In a new session it goes through.
    connect(&db).await.batch_execute(&format!("ALTER EXTENSION trackway UPDATE TO '{next}'")).await.expect("update");

    // The session that used the old version is closed at its next call, cleanly.
    let closed = ingesting
        .query("SELECT status FROM trackway.ingest_batch($1::text[])", &[&vec!["{}".to_owned()]])
        .await
        .expect_err("closed");
    let db_error = closed.as_db_error().unwrap_or_else(|| panic!("a server error: {closed:?}"));
    assert_eq!((db_error.severity(), db_error.code().code()), ("FATAL", "55000"), "{db_error:?}");
    assert!(ingesting.is_closed() || ingesting.simple_query("SELECT 1").await.is_err());

    // No backend crashed: the bystander's session is the one it had, and new sessions work on the new file.
    bystander.simple_query("SELECT 1").await.expect("the bystander's session survived");
    let fresh = connect(&db).await;
    ingest(&fresh, &["n1"], 3).await;
    let library: String = fresh
        .query_one("SELECT probin FROM pg_proc WHERE oid = 'trackway.ingest_batch(text[])'::regprocedure", &[])
        .await
        .expect("probin")
        .get(0);
    assert_eq!(library, format!("trackway-{next}"));
    let stored: i64 = fresh.query_one("SELECT count(*) FROM trackway.positions", &[]).await.expect("count").get(0);
    assert_eq!(stored, 3);
    drop((fresh, used, installed));
    connect("postgres")
        .await
        .batch_execute("DROP DATABASE IF EXISTS trackway_test_next_version WITH (FORCE)")
        .await
        .ok();
}
