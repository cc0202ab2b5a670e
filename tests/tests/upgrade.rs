//! Releases and upgrades of the extension's SQL (docs/releasing.md).
//!
//! Every released install script is frozen in `pg_kpi/sql/releases/pg_kpi--X.sql`, and
//! every change of the SQL surface ships `pg_kpi/sql/upgrades/pg_kpi--A--B.sql`. These
//! tests hold the rule:
//! - the SQL the current build installs (what `cargo pgrx install` generated) must equal
//!   the frozen script of the current version, so a change of the SQL surface without a
//!   new version fails here and says what to do;
//! - every frozen release older than the current version is installed, given KPIs with
//!   data, pending deltas and firing alerts, and upgraded with `ALTER EXTENSION pg_kpi
//!   UPDATE`: the schema must then equal a fresh install's, and every KPI's data, rule and
//!   transition must be kept;
//! - the same check runs on made-up versions (a correct upgrade script passes, a script
//!   that forgets a change or loses data fails), so it is exercised even while there is
//!   only one release.
//!
//! Schemas are compared as catalog contents (functions with their definitions, tables and
//! columns, constraints, indexes, triggers, policies, views, sequences, comments,
//! privileges, extension membership), not as text: pgrx orders its generated script
//! differently from one build to the next.
//!
//! The servers run from a scratch copy of the installation ([`ScratchInstall`]), so the
//! frozen releases and the made-up versions are installed there, never into the system.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use pg_kpi_e2e::install::ScratchInstall;
use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::{describe_error, Cluster, ClusterOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn releases_dir() -> PathBuf {
    repo().join("pg_kpi/sql/releases")
}

fn upgrades_dir() -> PathBuf {
    repo().join("pg_kpi/sql/upgrades")
}

/// A release version, `MAJOR.MINOR.PATCH`.
type Version = (u64, u64, u64);

fn parse_version(s: &str) -> Option<Version> {
    let mut parts = s.split('.').map(|p| p.parse::<u64>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

fn show((a, b, c): Version) -> String {
    format!("{a}.{b}.{c}")
}

/// `default_version` of a control file.
fn control_version(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("default_version"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('\'').to_string())
        .next()
        .unwrap_or_else(|| panic!("{path:?} has no default_version"))
}

/// The `[package]` version of pg_kpi/Cargo.toml.
fn cargo_version() -> String {
    let path = repo().join("pg_kpi/Cargo.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    text.lines()
        .filter_map(|l| l.strip_prefix("version"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .unwrap_or_else(|| panic!("{path:?} has no literal version = \"…\""))
}

/// The frozen releases, oldest first, with their files' contents.
fn frozen_releases() -> Vec<(Version, String)> {
    let mut out = Vec::new();
    let dir = releases_dir();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}")) {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let version = name
            .strip_prefix("pg_kpi--")
            .and_then(|n| n.strip_suffix(".sql"))
            .and_then(parse_version)
            .unwrap_or_else(|| panic!("{dir:?}/{name}: not pg_kpi--MAJOR.MINOR.PATCH.sql"));
        let sql = fs::read_to_string(entry.path()).expect("read frozen release");
        out.push((version, sql));
    }
    out.sort_by_key(|(v, _)| *v);
    out
}

/// The upgrade scripts: (file name, contents).
fn upgrade_scripts() -> Vec<(String, String)> {
    let dir = upgrades_dir();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sql") {
            let sql = fs::read_to_string(entry.path()).expect("read upgrade script");
            out.push((name, sql));
        }
    }
    out.sort();
    out
}

/// The system installation's extension directory (where `cargo pgrx install` and
/// scripts/lib.sh's install_extension write).
fn system_extension_dir() -> PathBuf {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_config")
        .arg("--sharedir")
        .output()
        .expect("run pg_config");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension")
}

fn scratch(name: &str) -> ScratchInstall {
    ScratchInstall::new(Path::new("/usr/lib/postgresql/15/bin"), name)
        .unwrap_or_else(|e| panic!("scratch installation: {e}"))
}

/// A cluster without the fold worker (so nothing changes between two reads but what the
/// test does), running the scratch installation's servers.
fn cluster_on(install: &ScratchInstall) -> Cluster {
    Cluster::start_with(ClusterOptions {
        preload: false,
        create_extension: false,
        bin_dir: Some(install.bin_dir().to_path_buf()),
        ..Default::default()
    })
}

fn batch(client: &mut Client, what: &str, sql: &str) -> Result<(), String> {
    client
        .batch_execute(sql)
        .map_err(|e| format!("{what}: {}", describe_error(&e)))
}

fn lines(client: &mut Client, what: &str, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{what}: {}", describe_error(&e)))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// The catalog contents of the extension and of schema `kpi`, one line per fact, without
/// OIDs (two databases are compared) or the version string.
const CATALOG_DUMP: &str = r#"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'pg_kpi'),
rels AS (SELECT c.oid, c.relname, c.relkind FROM pg_class c
         WHERE c.relnamespace = 'kpi'::regnamespace),
funcs AS (SELECT p.oid, p.oid::regprocedure::text AS sig, p.prokind FROM pg_proc p
          WHERE p.pronamespace = 'kpi'::regnamespace)
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = ext.oid AND d.deptype = 'e'
UNION ALL
SELECT 'extension config ' || c.oid::regclass::text || ' where ' || coalesce(e.extcondition[i], '')
  FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY AS u(cfg, i), pg_class c
 WHERE e.extname = 'pg_kpi' AND c.oid = u.cfg
UNION ALL
SELECT 'extension relocatable=' || extrelocatable || ' schema=' || extnamespace::regnamespace::text
  FROM pg_extension WHERE extname = 'pg_kpi'
UNION ALL
SELECT 'schema kpi owner=' || nspowner::regrole::text || ' acl=' || coalesce(nspacl::text, '-')
       || ' comment=' || coalesce(obj_description(oid, 'pg_namespace'), '-')
  FROM pg_namespace WHERE nspname = 'kpi'
UNION ALL
SELECT 'function ' || f.sig || E'\n' ||
       CASE WHEN f.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(f.oid) ELSE 'kind ' || f.prokind::text END
       || E'\nacl=' || coalesce(p.proacl::text, '-') || ' owner=' || p.proowner::regrole::text
       || E'\ncomment=' || coalesce(obj_description(f.oid, 'pg_proc'), '-')
  FROM funcs f JOIN pg_proc p ON p.oid = f.oid
UNION ALL
SELECT 'relation ' || r.relname || ' kind=' || r.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
       || ' options=' || coalesce(c.reloptions::text, '-') || ' rls=' || c.relrowsecurity
       || '/' || c.relforcerowsecurity || ' persistence=' || c.relpersistence::text
       || ' comment=' || coalesce(obj_description(r.oid, 'pg_class'), '-')
  FROM rels r JOIN pg_class c ON c.oid = r.oid
UNION ALL
SELECT 'column ' || r.relname || '.' || a.attname || ' #' ||
       row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum)
       || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
       || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
       || ' collation=' || coalesce(nullif(a.attcollation, 0)::regcollation::text, '-')
       || ' storage=' || a.attstorage::text || ' compression=' || a.attcompression::text
       || ' acl=' || coalesce(a.attacl::text, '-')
       || ' comment=' || coalesce(col_description(r.oid, a.attnum), '-')
  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
 WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
UNION ALL
SELECT 'constraint ' || r.relname || '.' || co.conname || ' ' || pg_get_constraintdef(co.oid)
  FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM rels r JOIN pg_index i ON i.indrelid = r.oid
UNION ALL
SELECT 'view ' || r.relname || E'\n' || pg_get_viewdef(r.oid)
  FROM rels r WHERE r.relkind IN ('v', 'm')
UNION ALL
SELECT 'sequence ' || r.relname || ' ' || format_type(s.seqtypid, NULL) || ' start=' || s.seqstart
       || ' increment=' || s.seqincrement || ' min=' || s.seqmin || ' max=' || s.seqmax
       || ' cache=' || s.seqcache || ' cycle=' || s.seqcycle
  FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
UNION ALL
SELECT 'policy ' || p.tablename || '.' || p.policyname || ' ' || p.permissive || ' ' || p.cmd
       || ' to ' || p.roles::text || ' using ' || coalesce(p.qual, '-')
       || ' check ' || coalesce(p.with_check, '-')
  FROM pg_policies p WHERE p.schemaname = 'kpi'
UNION ALL
-- Triggers calling pg_kpi's functions, on any table (the capture triggers on sources).
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
  FROM pg_trigger t JOIN funcs f ON f.oid = t.tgfoid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text || coalesce(' labels ' ||
       (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
         WHERE e.enumtypid = t.oid), '')
       || ' comment=' || coalesce(obj_description(t.oid, 'pg_type'), '-')
  FROM pg_type t WHERE t.typnamespace = 'kpi'::regnamespace
UNION ALL
SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || e.evtfoid::regproc::text
       || ' tags=' || coalesce(e.evttags::text, '-')
  FROM pg_event_trigger e JOIN funcs f ON f.oid = e.evtfoid
"#;

fn catalog(client: &mut Client) -> BTreeSet<String> {
    lines(client, "catalog dump", CATALOG_DUMP)
        .into_iter()
        .collect()
}

/// What `left` has that `right` lacks and the reverse, as a readable report (empty
/// when equal).
fn set_diff(
    left_name: &str,
    left: &BTreeSet<String>,
    right_name: &str,
    right: &BTreeSet<String>,
) -> String {
    let mut report = String::new();
    for l in left.difference(right) {
        report.push_str(&format!("  only in {left_name}: {l}\n"));
    }
    for r in right.difference(left) {
        report.push_str(&format!("  only in {right_name}: {r}\n"));
    }
    report
}

/// One row of the data an upgrade must keep: what it is (`view sales`, `rule`, …) and
/// the row as a JSON object.
type Datum = (String, serde_json::Value);

fn json_rows(client: &mut Client, what: &str, sql: &str) -> Vec<serde_json::Value> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{what}: {}", describe_error(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The KPIs, data, alert rules, states and transitions the fixture leaves: what an
/// upgrade must keep. Pending (unfolded) deltas are included through the views, which are
/// exact at read time.
fn data(client: &mut Client) -> Vec<Datum> {
    let mut out: Vec<Datum> = Vec::new();
    let mut add = |what: String, rows: Vec<serde_json::Value>| {
        out.extend(rows.into_iter().map(|r| (what.clone(), r)));
    };
    add(
        "kpi".into(),
        json_rows(
            client,
            "kpi.list()",
            "SELECT to_jsonb(l) - 'created_at' FROM kpi.list() l",
        ),
    );
    let kpis = client
        .query("SELECT name, measures FROM kpi.list() ORDER BY name", &[])
        .unwrap_or_else(|e| panic!("kpi.list(): {}", describe_error(&e)));
    for kpi in kpis {
        let name: String = kpi.get(0);
        let measures: serde_json::Value = kpi.get(1);
        let view = format!("SELECT to_jsonb(v) FROM kpi.{name} v");
        add(format!("view {name}"), json_rows(client, "view", &view));
        for m in measures.as_array().into_iter().flatten() {
            let m = m["name"].as_str().unwrap_or_default();
            let sql = format!(
                "SELECT jsonb_build_object('value', kpi.value('{name}', '{m}', '1 day'),
                        'series', (SELECT jsonb_agg(s ORDER BY s.bucket) FROM kpi.series('{name}',
                            '{m}', now() - interval '1 day', now(), '1 hour') s
                            WHERE s.value IS NOT NULL AND s.value <> 0))"
            );
            add(
                format!("value {name}.{m}"),
                json_rows(client, "kpi.value", &sql),
            );
        }
    }
    for (what, sql) in [
        ("rule", "SELECT to_jsonb(r) FROM kpi.alert_rules r"),
        ("state", "SELECT to_jsonb(s) FROM kpi.alert_state s"),
        ("transition", "SELECT to_jsonb(h) FROM kpi.alert_history h"),
        ("alert", "SELECT to_jsonb(a) FROM kpi.alerts a"),
    ] {
        add(what.into(), json_rows(client, what, sql));
    }
    out
}

/// The parts of [`data`] that two databases given the same fixture share (alert rows
/// carry the time they were evaluated).
fn shared_data(client: &mut Client) -> Vec<Datum> {
    data(client)
        .into_iter()
        .filter(|(what, _)| {
            what == "kpi" || what.starts_with("view ") || what.starts_with("value ")
        })
        .collect()
}

/// What of `before` is missing from or changed in `after`, and what `after` has more, as a
/// report (empty when all is kept). A row counts as kept when its columns have the same
/// values after: columns an upgrade adds are ignored.
fn kept_report(before_name: &str, before: &[Datum], after_name: &str, after: &[Datum]) -> String {
    // The columns of each kind of row before, to project the rows after onto.
    let mut columns: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (what, row) in before {
        if let Some(obj) = row.as_object() {
            columns
                .entry(what.as_str())
                .or_insert_with(|| obj.keys().cloned().collect());
        }
    }
    let text = |(what, row): &Datum| -> String {
        let row = match (columns.get(what.as_str()), row.as_object()) {
            (Some(keys), Some(obj)) => serde_json::Value::Object(
                obj.iter()
                    .filter(|(k, _)| keys.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            _ => row.clone(),
        };
        format!("{what} {row}")
    };
    let before: BTreeSet<String> = before.iter().map(text).collect();
    let after: BTreeSet<String> = after.iter().map(text).collect();
    set_diff(before_name, &before, after_name, &after)
}

/// Source tables, KPIs of every kind of measure (with dimensions, a filter, a rollup
/// tier, one without backfill), rows over the last hours, alert rules that fire, and
/// deltas left pending. Written against 0.1.0's functions: when a later version changes
/// them, keep this fixture for the releases that had them.
fn fixture(base: &str) -> String {
    format!(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, region text,
                              amount numeric(10,2), latency double precision, user_id int);
         INSERT INTO orders (ts, region, amount, latency, user_id)
         SELECT '{base}'::timestamptz + i * interval '5 seconds', (ARRAY['eu','us','apac'])[1 + i % 3],
                (i % 50) + 0.25, (i % 97) * 1.5, i % 40
           FROM generate_series(1, 1500) i;
         SELECT kpi.create(name => 'sales', source => 'orders', time_column => 'ts',
             measures => 'orders = count(*), revenue = sum(amount), aov = avg(amount),
                          hi = max(amount), users = count_distinct(user_id),
                          p95 = percentile(latency, 0.95)',
             dimensions => '{{region}}', bucket => '1 minute',
             rollups => '{{\"1 hour\": null}}');
         SELECT kpi.create(name => 'eu_orders', source => 'orders', time_column => 'ts',
             measures => 'n = count(*)', filter => $$region = 'eu'$$, bucket => '5 minutes',
             backfill => false);
         INSERT INTO orders (ts, region, amount, latency, user_id)
         SELECT '{base}'::timestamptz + i * interval '7 seconds', 'eu', 10, 3.5, i % 7
           FROM generate_series(1, 300) i;
         SELECT kpi.create_alert(name => 'revenue_up', kpi => 'sales', condition => 'revenue > 0',
             \"window\" => '1 day', severity => 'critical', group_by => 'region',
             labels => '{{\"team\": \"shop\"}}', summary => 'revenue {{{{value}}}}');
         SELECT kpi.create_alert(name => 'eu_quiet', kpi => 'eu_orders', condition => 'n < 0',
             \"window\" => '1 hour');
         SELECT kpi.fold();
         -- Left pending across the upgrade.
         DELETE FROM orders WHERE id % 10 = 0;
         UPDATE orders SET amount = amount + 1 WHERE id % 10 = 1;"
    )
}

/// A start time all rows of the fixture share, in both databases of a check: about 3 h
/// ago, so that every row lies in the last day and none in the future.
fn fixture_base(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT date_trunc('minute', now() - interval '3 hours')::text",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("base time: {}", describe_error(&e)))
}

/// Installs `from` in one database and upgrades it to `to`, installs `to` in another,
/// and reports every difference of schema and every datum the upgrade lost or changed.
/// The scratch installation must hold both install scripts and the upgrade path.
fn check_upgrade(install: &ScratchInstall, from: &str, to: &str) -> Result<(), String> {
    let cluster = cluster_on(install);
    let mut admin = cluster.connect_to("postgres");
    for db in ["upgraded", "fresh"] {
        batch(
            &mut admin,
            "create database",
            &format!("CREATE DATABASE {db}"),
        )?;
    }
    let base = fixture_base(&mut admin);

    let mut upgraded = cluster.connect_to("upgraded");
    batch(
        &mut upgraded,
        &format!("CREATE EXTENSION pg_kpi VERSION '{from}'"),
        &format!("CREATE EXTENSION pg_kpi VERSION '{from}'"),
    )?;
    batch(
        &mut upgraded,
        &format!("the fixture on {from}"),
        &fixture(&base),
    )?;
    let before = data(&mut upgraded);
    batch(
        &mut upgraded,
        &format!("ALTER EXTENSION pg_kpi UPDATE TO '{to}' (from {from})"),
        &format!("ALTER EXTENSION pg_kpi UPDATE TO '{to}'"),
    )?;
    let after = data(&mut upgraded);

    let mut fresh = cluster.connect_to("fresh");
    batch(
        &mut fresh,
        &format!("CREATE EXTENSION pg_kpi VERSION '{to}'"),
        &format!("CREATE EXTENSION pg_kpi VERSION '{to}'"),
    )?;
    batch(&mut fresh, &format!("the fixture on {to}"), &fixture(&base))?;

    let mut report = String::new();
    let schema = set_diff(
        &format!("{from} upgraded"),
        &catalog(&mut upgraded),
        &format!("{to} fresh"),
        &catalog(&mut fresh),
    );
    if !schema.is_empty() {
        report.push_str(&format!(
            "the schema after ALTER EXTENSION pg_kpi UPDATE from {from} to {to} differs from a fresh install of {to}:\n{schema}"
        ));
    }
    let kept = kept_report("before the upgrade", &before, "after it", &after);
    if !kept.is_empty() {
        report.push_str(&format!(
            "the upgrade from {from} to {to} changed data:\n{kept}"
        ));
    }
    let same = kept_report(
        &format!("{from} upgraded"),
        &shared_data(&mut upgraded),
        &format!("{to} fresh"),
        &shared_data(&mut fresh),
    );
    if !same.is_empty() {
        report.push_str(&format!(
            "the KPIs of the upgraded database read differently from a fresh install's:\n{same}"
        ));
    }
    // The upgraded KPIs go on counting: pending deltas fold, new rows are captured.
    let moves = "SELECT kpi.fold();
                 INSERT INTO orders (ts, region, amount, latency, user_id)
                 SELECT now() - interval '1 minute', 'us', 1, 1, 1 FROM generate_series(1, 7);
                 SELECT kpi.fold(); SELECT kpi.evaluate_alerts();";
    let count = "SELECT kpi.value('sales', 'orders', '1 day')::bigint";
    let counted = |c: &mut Client| -> Result<i64, String> {
        c.batch_execute(moves)
            .and_then(|_| c.query_one(count, &[]))
            .map(|r| r.get(0))
            .map_err(|e| describe_error(&e))
    };
    match (counted(&mut upgraded), counted(&mut fresh)) {
        (Ok(a), Ok(b)) if a == b => {}
        (a, b) => report.push_str(&format!(
            "after new writes, sales.orders is {a:?} upgraded and {b:?} fresh\n"
        )),
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

/// A scratch installation with every frozen release and upgrade script from the repo.
fn scratch_with_releases(name: &str, current: Version) -> ScratchInstall {
    let install = scratch(name);
    for (version, sql) in frozen_releases() {
        // The current version's script is the one the build generated (compared with the
        // frozen one by `the_build_installs_the_frozen_release`).
        if version != current {
            let file = format!("pg_kpi--{}.sql", show(version));
            install
                .add_extension_file(&file, &sql)
                .expect("add release");
        }
    }
    for (file, sql) in upgrade_scripts() {
        install
            .add_extension_file(&file, &sql)
            .expect("add upgrade script");
    }
    install
}

/// The current version, after checking that Cargo.toml, the control file and the
/// installed control file agree on it.
fn current_version() -> Version {
    let control = control_version(&repo().join("pg_kpi/pg_kpi.control"));
    let cargo = cargo_version();
    assert_eq!(
        control, cargo,
        "pg_kpi/pg_kpi.control says default_version = '{control}' but pg_kpi/Cargo.toml says \
         version = \"{cargo}\": set both to the new version (docs/releasing.md)"
    );
    let installed = control_version(&system_extension_dir().join("pg_kpi.control"));
    assert_eq!(
        installed, control,
        "the installed pg_kpi.control is at {installed}, the repo at {control}: install the build \
         first (scripts/test.sh does: `cd pg_kpi && cargo pgrx install --release`)"
    );
    parse_version(&control)
        .unwrap_or_else(|| panic!("version {control:?} is not MAJOR.MINOR.PATCH"))
}

#[test]
fn the_build_installs_the_frozen_release() {
    let current = current_version();
    let v = show(current);
    let releases = frozen_releases();
    let newest = releases.last().map(|(v, _)| *v);
    let what_to_do = |old: &str| {
        format!(
            "\nWhen the SQL surface changes (pg_kpi/src/sql/*.sql or any #[pg_extern]):\n\
             1. bump the version: `version` in pg_kpi/Cargo.toml and default_version in pg_kpi/pg_kpi.control;\n\
             2. write pg_kpi/sql/upgrades/pg_kpi--{old}--<new>.sql, the statements that turn {old} into <new>;\n\
             3. freeze the new install script: \
             `cd pg_kpi && cargo pgrx schema pg15 -o sql/releases/pg_kpi--<new>.sql`;\n\
             4. reinstall (`cargo pgrx install --release`) and run this test again. See docs/releasing.md.\n"
        )
    };
    match newest {
        None => panic!(
            "no frozen release in {:?}: freeze {v}{}",
            releases_dir(),
            what_to_do(&v)
        ),
        Some(n) if n < current => panic!(
            "the version is {v} but the newest frozen release is {}: freeze pg_kpi--{v}.sql \
             (`cd pg_kpi && cargo pgrx schema pg15 -o sql/releases/pg_kpi--{v}.sql`) and write \
             pg_kpi/sql/upgrades/pg_kpi--{}--{v}.sql",
            show(n),
            show(n)
        ),
        Some(n) if n > current => panic!(
            "the version {v} is older than the frozen release {}: versions only go up",
            show(n)
        ),
        Some(_) => {}
    }
    let frozen = &releases.last().expect("a release").1;
    // The generated script is installed as {v}, the frozen one under a name of its own.
    let install = scratch("frozen");
    let frozen_name = format!("{v}-frozen");
    install
        .add_extension_file(&format!("pg_kpi--{frozen_name}.sql"), frozen)
        .expect("add frozen release");
    let cluster = cluster_on(&install);
    cluster.exec_in("postgres", "CREATE DATABASE generated");
    cluster.exec_in("postgres", "CREATE DATABASE frozen");
    let mut generated = cluster.connect_to("generated");
    generated
        .batch_execute(&format!("CREATE EXTENSION pg_kpi VERSION '{v}'"))
        .unwrap_or_else(|e| panic!("install the build's {v}: {}", describe_error(&e)));
    let mut frozen_db = cluster.connect_to("frozen");
    frozen_db
        .batch_execute(&format!("CREATE EXTENSION pg_kpi VERSION '{frozen_name}'"))
        .unwrap_or_else(|e| {
            panic!(
                "install the frozen pg_kpi--{v}.sql with this build: {}{}",
                describe_error(&e),
                what_to_do(&v)
            )
        });
    let diff = set_diff(
        "this build",
        &catalog(&mut generated),
        &format!("frozen pg_kpi--{v}.sql"),
        &catalog(&mut frozen_db),
    );
    assert!(
        diff.is_empty(),
        "this build's SQL differs from the released pg_kpi--{v}.sql:\n{diff}{}",
        what_to_do(&v)
    );
}

/// Every frozen release older than the current version upgrades to it (through the
/// upgrade scripts, as `ALTER EXTENSION` chains them) and ends up as a fresh install.
#[test]
fn every_older_release_upgrades_to_the_current_version() {
    let current = current_version();
    let older: Vec<Version> = frozen_releases()
        .into_iter()
        .map(|(v, _)| v)
        .filter(|v| *v < current)
        .collect();
    // Installed into the system by scripts/lib.sh's install_extension, for real users.
    let ext = system_extension_dir();
    for (file, sql) in upgrade_scripts() {
        let installed = fs::read_to_string(ext.join(&file)).unwrap_or_default();
        assert_eq!(
            installed, sql,
            "{file} is not installed in {ext:?} as in the repo: run scripts/lib.sh's install_extension \
             (scripts/test.sh does)"
        );
    }
    let install = scratch_with_releases("releases", current);
    let mut failures = String::new();
    for from in &older {
        println!("upgrade {} -> {}", show(*from), show(current));
        if let Err(report) = check_upgrade(&install, &show(*from), &show(current)) {
            failures.push_str(&report);
        }
    }
    println!("checked {} older release(s)", older.len());
    assert!(failures.is_empty(), "{failures}");
}

/// A made-up next version: the current frozen script plus `change`.
const CHANGE: &str = "
ALTER TABLE kpi.alert_rules ADD COLUMN runbook text;
COMMENT ON COLUMN kpi.alert_rules.runbook IS 'where to look first';
CREATE FUNCTION kpi.upgrade_probe(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT x + 1';
COMMENT ON FUNCTION kpi.upgrade_probe(integer) IS 'made up by tests/tests/upgrade.rs';
REVOKE ALL ON FUNCTION kpi.upgrade_probe(integer) FROM PUBLIC;
";

const NEXT: &str = "99.0.0-upgrade-test";

/// A scratch installation holding the current frozen release and a made-up next version
/// ([`CHANGE`] on top of it), with `upgrade` as the script between them.
fn scratch_with_next(name: &str, upgrade: &str) -> (ScratchInstall, String) {
    let current = current_version();
    let frozen = frozen_releases()
        .into_iter()
        .find(|(v, _)| *v == current)
        .map(|(_, sql)| sql)
        .unwrap_or_else(|| panic!("no frozen release {}", show(current)));
    let v = show(current);
    let install = scratch(name);
    install
        .add_extension_file(
            &format!("pg_kpi--{NEXT}.sql"),
            &format!("{frozen}\n{CHANGE}"),
        )
        .expect("add next");
    install
        .add_extension_file(&format!("pg_kpi--{v}--{NEXT}.sql"), upgrade)
        .expect("add upgrade");
    (install, v)
}

#[test]
fn a_complete_upgrade_script_passes_the_check() {
    let (install, v) = scratch_with_next("complete", CHANGE);
    if let Err(report) = check_upgrade(&install, &v, NEXT) {
        panic!("a correct upgrade script was refused:\n{report}");
    }
}

#[test]
fn an_upgrade_script_that_forgets_a_change_fails_the_check() {
    // Everything but the function's comment and privileges.
    let partial = "ALTER TABLE kpi.alert_rules ADD COLUMN runbook text;
        COMMENT ON COLUMN kpi.alert_rules.runbook IS 'where to look first';
        CREATE FUNCTION kpi.upgrade_probe(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT x + 1';";
    let (install, v) = scratch_with_next("forgets", partial);
    let report = check_upgrade(&install, &v, NEXT).expect_err("an incomplete script passed");
    println!("{report}");
    assert!(report.contains("differs from a fresh install"), "{report}");
    assert!(
        report.contains("made up by tests/tests/upgrade.rs")
            && report.contains("kpi.upgrade_probe(integer)"),
        "the report does not name the function's missing comment: {report}"
    );
}

#[test]
fn an_upgrade_script_that_loses_data_fails_the_check() {
    let lossy = format!("{CHANGE}\nDELETE FROM kpi.alert_history WHERE to_state = 'firing';");
    let (install, v) = scratch_with_next("lossy", &lossy);
    let report = check_upgrade(&install, &v, NEXT).expect_err("a data-losing script passed");
    println!("{report}");
    assert!(report.contains("changed data"), "{report}");
    assert!(
        report.contains("only in before the upgrade: transition"),
        "{report}"
    );
}
