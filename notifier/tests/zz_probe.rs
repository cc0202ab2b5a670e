#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            let c = pg(&cluster).await;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for _ in 0..2500 {
                tick.tick().await;
                c.execute("INSERT INTO orders(v) VALUES (1)", &[])
                    .await
                    .unwrap();
            }
        }));
    }
    let c = pg(&cluster).await;
    let (l, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let l = std::sync::Arc::new(l);
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let notes = notes.clone();
        let mut conn = conn;
        tokio::spawn(async move {
            while let Some(Ok(m)) = futures::future::poll_fn(|cx| conn.poll_message(cx))
                .await
                .map(|r| r)
            {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    notes
                        .lock()
                        .unwrap()
                        .push((Instant::now(), n.payload().to_string()));
                }
            }
        });
    }
    l.batch_execute("LISTEN kpi_changes").await.unwrap();
    let start = Instant::now();
    for _ in 0..12 {
        let t = Instant::now();
        let snap: String = c
            .query_one("SELECT kpi.snapshot('k')::text", &[])
            .await
            .unwrap()
            .get(0);
        let st = t.elapsed();
        let t = Instant::now();
        let d: i64 = c
            .query_one("SELECT count(*) FROM kpi.deltas", &[])
            .await
            .unwrap()
            .get(0);
        let dt = t.elapsed();
        let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
        eprintln!(
            "t={:>5}ms snapshot {:>5}ms version={} n={} deltas={} ({}ms) notes={}",
            start.elapsed().as_millis(),
            st.as_millis(),
            v["version"],
            v["measures"]["n"]["today"],
            d,
            dt.as_millis(),
            notes.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    for q in [
        "SELECT count(*) FROM orders",
        "SELECT count(*)::text FROM kpi.k",
        "SELECT kpi.value('k','n')::text",
        "SELECT kpi.value('k','n','1 hour')::text",
        "SELECT kpi.snapshot('k')::text",
        "SELECT count(*)::text FROM (SELECT * FROM kpi.series('k','n', now()-interval '1 hour')) s",
    ] {
        let t = Instant::now();
        let _ = c.simple_query(q).await.unwrap();
        eprintln!("{:>6}ms  {q}", t.elapsed().as_millis());
    }
    let rows = c
        .simple_query("EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM kpi.k")
        .await
        .unwrap();
    for r in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = r {
            eprintln!("  {}", r.get(0).unwrap_or(""));
        }
    }
    let rows = c
        .simple_query("SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE schemaname='kpi'")
        .await
        .unwrap();
    for r in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = r {
            eprintln!(
                "  table {} rows {}",
                r.get(0).unwrap_or(""),
                r.get(1).unwrap_or("")
            );
        }
    }
    let n = notes.lock().unwrap();
    for (at, p) in n.iter().take(0) {
        eprintln!("{:>5}ms {}", at.duration_since(start).as_millis(), p);
    }
}
