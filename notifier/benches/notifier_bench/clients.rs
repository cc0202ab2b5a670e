//! The fan-out phase's WebSocket clients: real ones (tungstenite over TCP on loopback,
//! every frame decoded and its value parsed), driven by one epoll loop per core instead
//! of one tokio task per client.
//!
//! The clients share the notifier's two cores, so every CPU cycle they spend delays the
//! notifier's delivery round, and the benchmark would measure its own load generator.
//! As tokio tasks, they took as much CPU as the notifier (8.0 CPU-s against 7.8 for a
//! run), a third of it in user space: waking a task per message, its scheduler, the
//! stream and abort wrappers. A plain loop over `epoll_wait` and a non-blocking
//! tungstenite socket does the same reading and decoding without them. Real clients run
//! on other machines; the leaner these ones are, the nearer the figure is to the
//! notifier's own.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// A TCP socket that remembers a short read, as tokio does: after one, the socket is
/// empty until epoll says otherwise, so the next read answers "would block" without a
/// system call. Edge-triggered epoll reports every arrival after that read.
struct EdgeSocket {
    tcp: TcpStream,
    /// Non-blocking and registered with epoll: short reads count.
    edge: bool,
    drained: bool,
}

impl Read for EdgeSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.tcp.read(buf) {
            Ok(n) => {
                self.drained = self.edge && n > 0 && n < buf.len();
                Ok(n)
            }
            Err(e) => {
                self.drained = e.kind() == io::ErrorKind::WouldBlock;
                Err(e)
            }
        }
    }
}

impl Write for EdgeSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// One subscribed client and the values it has received, with when.
pub struct Client {
    ws: WebSocket<EdgeSocket>,
    pub got: Vec<(i64, Instant)>,
    /// The longest message received after the snapshot, in bytes.
    pub longest: usize,
    /// Has the final value, or its connection failed.
    done: bool,
}

/// Connects `n` clients to `/ws` on `port`, each subscribed to `kpi` and past its
/// snapshot, over `threads` blocking connect loops. Also returns the snapshot frame's
/// length.
pub fn connect(port: u16, kpi: &str, n: usize, threads: usize) -> (Vec<Client>, usize) {
    let next = AtomicUsize::new(0);
    let connected = Mutex::new(Vec::with_capacity(n));
    let frame_len = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Relaxed) < n {
                    let (client, len) = connect_one(port, kpi);
                    frame_len.store(len, Relaxed);
                    connected.lock().unwrap().push(client);
                }
            });
        }
    });
    (connected.into_inner().unwrap(), frame_len.into_inner())
}

fn connect_one(port: u16, kpi: &str) -> (Client, usize) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let socket = EdgeSocket {
        tcp,
        edge: false,
        drained: false,
    };
    // Small buffers: 10,000 clients at 128 KiB each add up, and tungstenite zeroes the
    // free part of its buffer before every read (a 4 KiB memset per message at 4096).
    // Values are under 300 bytes; bigger frames just take more reads.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tungstenite::client::client_with_config(url, socket, Some(cfg)).unwrap();
    ws.send(Message::text(format!(
        r#"{{"op":"subscribe","kpis":["{kpi}"]}}"#
    )))
    .unwrap();
    // Subscribed once the snapshot is in.
    let len = loop {
        if let Message::Text(t) = ws.read().unwrap() {
            break t.len();
        }
    };
    let socket = ws.get_mut();
    socket.tcp.set_nonblocking(true).unwrap();
    socket.edge = true;
    let client = Client {
        ws,
        got: Vec::new(),
        longest: 0,
        done: false,
    };
    (client, len)
}

/// The epoll loops receiving on the clients.
pub struct Receivers {
    loops: Vec<thread::JoinHandle<Vec<Client>>>,
}

impl Receivers {
    /// Starts `threads` epoll loops over `clients`, each until all its clients have a
    /// value of at least `target` or `stop` is set. Returns once every client is
    /// registered and has room for `expected` values (touched, so that the first values
    /// received do not pay for page faults).
    pub fn start(
        clients: Vec<Client>,
        target: i64,
        expected: usize,
        threads: usize,
        stop: &Arc<AtomicBool>,
    ) -> Receivers {
        let per = clients.len().div_ceil(threads.max(1)).max(1);
        let mut rest = clients.into_iter();
        let shares: Vec<Vec<Client>> = std::iter::from_fn(|| {
            let share: Vec<Client> = rest.by_ref().take(per).collect();
            (!share.is_empty()).then_some(share)
        })
        .collect();
        let ready = Arc::new(Barrier::new(shares.len() + 1));
        let loops = shares
            .into_iter()
            .map(|mut share| {
                let (stop, ready) = (stop.clone(), ready.clone());
                thread::spawn(move || {
                    let poll = register(&mut share, expected);
                    ready.wait();
                    receive_loop(poll, &mut share, target, &stop);
                    share
                })
            })
            .collect();
        ready.wait();
        Receivers { loops }
    }

    /// Waits for the loops to end; hands the clients back with their connections still
    /// open (closing 10,000 at once would load the machine while others still receive).
    pub fn join(self) -> Vec<Client> {
        self.loops
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    }
}

fn register(clients: &mut [Client], expected: usize) -> Poll {
    let poll = Poll::new().unwrap();
    let now = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        c.got.resize(expected, (0, now));
        c.got.clear();
        let fd = c.ws.get_ref().tcp.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            .unwrap();
    }
    poll
}

fn receive_loop(mut poll: Poll, clients: &mut [Client], target: i64, stop: &AtomicBool) {
    let mut left = clients.len();
    let mut events = Events::with_capacity(1024);
    while left > 0 && !stop.load(Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("epoll: {e}"),
        }
        for event in events.iter() {
            let Some(c) = clients.get_mut(event.token().0) else {
                continue;
            };
            c.ws.get_mut().drained = false;
            if drain(c, target) {
                left -= 1;
            }
        }
    }
}

/// Reads every frame `c` has waiting; whether it just became done.
fn drain(c: &mut Client, target: i64) -> bool {
    loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => {
                let now = Instant::now();
                c.longest = c.longest.max(t.len());
                if let Some((_, n)) = super::count_of(t.as_str()) {
                    c.got.push((n, now));
                    if n >= target && !c.done {
                        c.done = true;
                        return true;
                    }
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return false;
            }
            // Closed or broken: it will get no more values.
            Err(_) => {
                let newly = !c.done;
                c.done = true;
                // Nothing more to read; epoll may still report the socket until closed.
                c.ws.get_mut().drained = true;
                return newly;
            }
        }
    }
}
