//! The Prometheus files of docs/prometheus pass promtool (Debian's `prometheus` package,
//! installed by scripts/setup.sh), and promtool does refuse a broken one. The notifier's
//! /metrics page itself is checked with `promtool check metrics` in
//! notifier/tests/e2e_fold_watch.rs; the Dockerfile and docker-compose.yml by
//! scripts/check-packaging.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus")
}

fn promtool(args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("run promtool (scripts/setup.sh installs the prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_scrape_config_and_its_rules_pass_promtool() {
    let (ok, text) = promtool(&["check", "config"], &docs().join("prometheus.yml"));
    println!("{text}");
    assert!(ok, "promtool check config: {text}");
    assert!(text.contains("1 rule files found"), "{text}");
    let (ok, text) = promtool(&["check", "rules"], &docs().join("pg_kpi-rules.yml"));
    println!("{text}");
    assert!(ok, "promtool check rules: {text}");
}

#[test]
fn promtool_refuses_a_broken_scrape_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/packaging-test");
    std::fs::create_dir_all(&dir).expect("create dir");
    // The rules beside it, so that only the bad interval is wrong.
    std::fs::copy(
        docs().join("pg_kpi-rules.yml"),
        dir.join("pg_kpi-rules.yml"),
    )
    .expect("copy rules");
    let broken = dir.join("broken.yml");
    let config = std::fs::read_to_string(docs().join("prometheus.yml")).expect("read config");
    std::fs::write(
        &broken,
        config.replace("scrape_interval: 10s", "scrape_interval: often"),
    )
    .expect("write");
    let (ok, text) = promtool(&["check", "config"], &broken);
    assert!(!ok, "promtool accepted a broken config: {text}");
    assert!(text.contains("often"), "refused for another reason: {text}");
}
