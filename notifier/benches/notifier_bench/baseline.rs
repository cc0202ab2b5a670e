//! The fan-out baseline: the same clients, fed by the least a WebSocket server can do.
//!
//! On two shared cores the fan-out latency swings with the machine (the same run takes
//! 7.5 CPU-s in one minute and 9.5 in the next), and most of a delivery's cost is the
//! kernel's loopback TCP on both sides, which no server avoids. So the benchmark also
//! runs a bare server in a process of its own (this binary, re-run with
//! [`SERVER_ENV`] set): it takes the same WebSocket handshake and subscribe message,
//! then on each tick writes one pre-built frame of the notifier's size straight into
//! every socket from one thread per core. No database, no runtime, no locks, no
//! metrics. Its latency is the floor for this machine at that moment; the notifier's
//! over it is what the notifier adds.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{self, Message};

use super::clients::{self, Receivers};
use super::cpu_secs_of;
use super::rounds::Rounds;

/// Set in the environment of the re-run binary that serves the baseline.
pub const SERVER_ENV: &str = "PG_KPI_BENCH_BASELINE_SERVER";

/// Value `n` as a message the clients parse like the notifier's, padded to `len` bytes.
fn message(n: i64, len: usize) -> String {
    let body = format!(
        r#"{{"type":"update","kpi":"b","version":{n},"data":{{"measures":{{"n":{{"today":{n}}}}}}},"pad":""#
    );
    let pad = len.saturating_sub(body.len() + 2);
    format!("{body}{}\"}}", "x".repeat(pad))
}

/// The server process: prints its port, takes clients, and writes `tick N` lines read
/// from stdin as frames to all of them; ends at end of input.
pub fn serve(frame_len: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    io::stdout().flush().unwrap();
    let sockets: Arc<RwLock<Vec<TcpStream>>> = Arc::default();
    {
        let sockets = sockets.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(tcp) = handshake(stream, frame_len) {
                    sockets.write().unwrap().push(tcp);
                }
            }
        });
    }
    let writers = thread::available_parallelism().map_or(2, |n| n.get());
    let short = Arc::new(AtomicUsize::new(0));
    let lanes: Vec<mpsc::Sender<Bytes>> = (0..writers)
        .map(|w| {
            let (tx, rx) = mpsc::channel::<Bytes>();
            let (sockets, short) = (sockets.clone(), short.clone());
            thread::spawn(move || {
                for frame in rx {
                    let sockets = sockets.read().unwrap();
                    for tcp in sockets.iter().skip(w).step_by(writers) {
                        // Non-blocking: a frame the socket does not take whole is
                        // counted, not queued (it never happens at this size).
                        if !matches!((&*tcp).write(&frame), Ok(n) if n == frame.len()) {
                            short.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
            tx
        })
        .collect();
    for line in io::stdin().lock().lines() {
        let Some(n) = line
            .ok()
            .and_then(|l| l.strip_prefix("tick ")?.parse().ok())
        else {
            break;
        };
        let frame = notifier::fanout::text_frame(message(n, frame_len).as_bytes());
        for lane in &lanes {
            let _ = lane.send(frame.clone());
        }
    }
    eprintln!("baseline server: {} short writes", short.load(Relaxed));
}

/// The server side of one client: the handshake, its subscribe message, a snapshot.
fn handshake(stream: TcpStream, frame_len: usize) -> Option<TcpStream> {
    stream.set_nodelay(true).ok()?;
    let mut ws = tungstenite::accept(stream).ok()?;
    ws.read().ok()?;
    ws.send(Message::text(message(0, frame_len))).ok()?;
    let tcp = ws.into_inner();
    tcp.set_nonblocking(true).ok()?;
    Some(tcp)
}

/// One baseline run: `clients` clients, `updates` ticks at `hz`.
pub struct Run {
    pub rounds: Rounds,
    /// Deliveries had every client got every value.
    pub possible: usize,
    pub server_cpu: f64,
    pub clients_cpu: f64,
}

/// Runs the baseline server and `clients` clients; ticks `updates` times at `hz`.
pub fn run(clients: usize, hz: u64, updates: usize, frame_len: usize) -> Run {
    let mut server = Command::new(std::env::current_exe().unwrap())
        .env(SERVER_ENV, frame_len.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port.trim().parse().unwrap();
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    let (subscribed, _) = clients::connect(port, "b", clients, 2 * threads);
    let stop = Arc::new(AtomicBool::new(false));
    let receivers = Receivers::start(subscribed, updates as i64, updates + 4, threads, &stop);

    let (server_cpu0, own_cpu0) = (cpu_secs_of(server.id()), cpu_secs_of(std::process::id()));
    let mut ticks = server.stdin.take().unwrap();
    let period = Duration::from_secs_f64(1.0 / hz as f64);
    let mut made_at = Vec::with_capacity(updates);
    let mut next = Instant::now();
    for n in 1..=updates {
        next += period;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        made_at.push(Instant::now());
        writeln!(ticks, "tick {n}").unwrap();
        ticks.flush().unwrap();
    }
    // Stragglers get 60 s, as in the notifier's run.
    {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(60));
            stop.store(true, Relaxed);
        });
    }
    let received = receivers.join();
    let server_cpu = cpu_secs_of(server.id()) - server_cpu0;
    let clients_cpu = cpu_secs_of(std::process::id()) - own_cpu0;
    drop(ticks);
    let _ = server.wait();
    Run {
        rounds: Rounds::of(&received, 0, &made_at),
        possible: clients * updates,
        server_cpu,
        clients_cpu,
    }
}
