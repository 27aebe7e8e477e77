//! The all-reduce between processes (`--nodes M`): a star over TCP, node 0 at the centre.
//!
//! Node 0 listens on `--coordinator HOST:PORT`; every other node connects to it and says who it is. A sum is
//! one round: each node sends its values, node 0 adds them in node order (so the result does not depend on
//! who answered first) and sends the sum back to all, byte for byte the same. Frames are
//! `[kind: u8][length: u64 LE][payload]`.
//!
//! Why not burn-collective's global mode (the issue prefers an existing engine): two nodes on one machine
//! never finish their second back-to-back all-reduce, with any of its three strategies
//! (`scripts/burn_collective_global/run.sh`); in its 0.21.0 source, its `SyncService` clears a copy of the list
//! of nodes that synced instead of the list, so every sync after the first waits forever; the transfer ids of its strategies are fixed, so back-to-back all-reduces can take
//! each other's tensors (tracel-ai/burn #4549); a lost peer ends in an `expect` inside a tokio task (a panic
//! nobody waits for: the others hang), connecting retries forever, printing on stdout; and it was removed
//! upstream after 0.21. Inside one process burn-collective does the work ([`super::collective`]).
//!
//! Faults: every link has a thread that sends a heartbeat every [`HEARTBEAT`] and one that reads whatever
//! arrives. A link that closes without a goodbye, a failure message from the peer, or [`DEAD_AFTER`] without
//! a frame ends this process at once with a message naming the node (`std::process::exit(1)`): the loop may be
//! in the middle of a long step that no timeout on a read would interrupt. Checkpoints are written under a
//! temporary name and renamed, so exiting never leaves half of one.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// How often each side of a link says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a peer counts as gone (a killed process is noticed at once: its socket closes).
pub const DEAD_AFTER: Duration = Duration::from_secs(20);

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const BEAT: u8 = 3;
const DATA: u8 = 4;
const FAIL: u8 = 5;
const BYE: u8 = 6;
/// Bumped when the frames change: nodes of different builds refuse each other.
const PROTOCOL: u32 = 1;

/// What a node tells node 0 when it joins; all of it must agree with node 0's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    nodes: usize,
    node_rank: usize,
    devices: usize,
}

/// Who this process is among the nodes.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub nodes: usize,
    pub node_rank: usize,
    /// Replicas per node (the same on every node).
    pub devices: usize,
    pub coordinator: String,
    /// How long node 0 waits for the others to join, and the others try to reach it.
    pub connect_timeout: Duration,
}

impl NodeSpec {
    /// A node as the messages name it: its global ranks and its address.
    fn name(&self, node: usize, addr: &str) -> String {
        let first = node * self.devices;
        match self.devices {
            1 => format!("rank {first} ({addr})"),
            d => format!("node {node} (ranks {first}-{}, {addr})", first + d - 1),
        }
    }
}

/// One TCP connection to another node, read by its own thread.
struct Link {
    /// The other node's rank.
    node: usize,
    writer: Arc<Mutex<TcpStream>>,
    /// Sums from node 0, or a node's values for node 0.
    inbox: Mutex<Receiver<Vec<f32>>>,
    /// Set once either side has said goodbye: from then on a closed socket is expected.
    done: Arc<AtomicBool>,
}

/// This process's end of the star.
pub struct Star {
    spec: NodeSpec,
    /// Node 0: one link per other node, in node order; the others: the link to node 0.
    links: Vec<Link>,
}

impl Star {
    /// Node 0 listens and waits for every other node; the others connect to node 0. Returns once every node
    /// has joined with the same `nodes` and `devices`.
    pub fn connect(spec: NodeSpec) -> Result<Star> {
        let addr = resolve(&spec.coordinator)?;
        let deadline = Instant::now() + spec.connect_timeout;
        let hello = Hello { protocol: PROTOCOL, nodes: spec.nodes, node_rank: spec.node_rank, devices: spec.devices };
        let mut streams: Vec<(usize, TcpStream, String)> = Vec::new();
        if spec.node_rank == 0 {
            let listener = TcpListener::bind(addr).with_context(|| {
                format!(
                    "--coordinator {}: node 0 cannot listen there (run node 0 on that host, with a free port)",
                    spec.coordinator
                )
            })?;
            listener.set_nonblocking(true)?;
            while streams.len() + 1 < spec.nodes {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(DEAD_AFTER))?;
                        let theirs: Hello = match read_frame(&mut s, SMALL) {
                            Ok((HELLO, p)) => serde_json::from_slice(&p).context("a joining node's hello")?,
                            // Not one of ours (a port scan, a stray client): ignore it.
                            _ => continue,
                        };
                        let problem = if theirs.protocol != PROTOCOL {
                            Some("runs another version of lapidary".to_string())
                        } else if theirs.nodes != spec.nodes || theirs.devices != spec.devices {
                            Some(format!(
                                "was started with --nodes {} and {} devices, node 0 with --nodes {} and {} devices",
                                theirs.nodes, theirs.devices, spec.nodes, spec.devices
                            ))
                        } else if theirs.node_rank == 0 || theirs.node_rank >= spec.nodes {
                            Some(format!("has --node-rank {}, not in 1..{}", theirs.node_rank, spec.nodes))
                        } else if streams.iter().any(|(r, _, _)| *r == theirs.node_rank) {
                            Some(format!("has --node-rank {}, which another node already has", theirs.node_rank))
                        } else {
                            None
                        };
                        let answer = problem.clone().unwrap_or_default();
                        write_frame(&mut s, WELCOME, answer.as_bytes())?;
                        if let Some(p) = problem {
                            bail!("the node at {peer} {p}; every node needs the same --nodes and devices");
                        }
                        streams.push((theirs.node_rank, s, peer.to_string()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let mut missing: Vec<usize> = (1..spec.nodes).collect();
                            missing.retain(|n| !streams.iter().any(|(r, _, _)| r == n));
                            bail!(
                                "node 0 waited {} s at {} and nodes {missing:?} did not join; start them with \
                                 --coordinator {} (or raise --connect-timeout)",
                                spec.connect_timeout.as_secs(),
                                spec.coordinator,
                                spec.coordinator
                            );
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e).context("node 0: accepting a node"),
                }
            }
            streams.sort_by_key(|(r, _, _)| *r);
        } else {
            let mut s = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        bail!(
                            "node {}: cannot reach the coordinator {} (node 0) within {} s: {e}; start node 0 \
                             there first, or check the address and the firewall",
                            spec.node_rank,
                            spec.coordinator,
                            spec.connect_timeout.as_secs()
                        )
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            s.set_read_timeout(Some(DEAD_AFTER))?;
            write_frame(&mut s, HELLO, &serde_json::to_vec(&hello)?)?;
            match read_frame(&mut s, SMALL) {
                Ok((WELCOME, p)) if p.is_empty() => {}
                Ok((WELCOME, p)) => bail!("node 0 refused this node: it {}", String::from_utf8_lossy(&p)),
                Ok(_) | Err(_) => bail!("{} did not answer as a lapidary node 0", spec.coordinator),
            }
            streams.push((0, s, spec.coordinator.clone()));
        }
        let links = streams.into_iter().map(|(node, s, addr)| Link::start(&spec, node, s, addr)).collect();
        Ok(Star { spec, links })
    }

    /// The element-wise sum of `values` over the nodes (added in node order), the same on every node.
    pub fn all_reduce_sum(&self, mut values: Vec<f32>) -> Result<Vec<f32>> {
        if self.spec.node_rank == 0 {
            for link in &self.links {
                let theirs = link.recv()?;
                if theirs.len() != values.len() {
                    bail!("node {} sent {} values to sum, node 0 has {}", link.node, theirs.len(), values.len());
                }
                values.iter_mut().zip(&theirs).for_each(|(a, b)| *a += b);
            }
            let bytes = to_bytes(&values);
            for link in &self.links {
                link.send(DATA, &bytes)?;
            }
            Ok(values)
        } else {
            let link = &self.links[0];
            link.send(DATA, &to_bytes(&values))?;
            let sum = link.recv()?;
            if sum.len() != values.len() {
                bail!("node 0 sent back {} values, this node sent {}", sum.len(), values.len());
            }
            Ok(sum)
        }
    }

    /// Says goodbye on every link: the peers may close from now on.
    pub fn finish(&self) {
        for link in &self.links {
            link.done.store(true, Ordering::SeqCst);
            let _ = link.send(BYE, &[]);
        }
    }

    /// Tells every peer this node failed, and why (they exit naming it, not just "stopped responding").
    pub fn fail(&self, why: &str) {
        for link in &self.links {
            link.done.store(true, Ordering::SeqCst);
            let _ = link.send(FAIL, why.as_bytes());
        }
    }
}

impl Link {
    /// Starts the heartbeat and reader threads of the connection to `node`.
    fn start(spec: &NodeSpec, node: usize, stream: TcpStream, addr: String) -> Link {
        let _ = stream.set_nodelay(true);
        let name = spec.name(node, &addr);
        let reader = stream.try_clone().expect("a TCP stream can be cloned");
        let writer = Arc::new(Mutex::new(stream));
        let done = Arc::new(AtomicBool::new(false));
        let (tx, inbox) = channel();
        {
            let (writer, done, name) = (writer.clone(), done.clone(), name.clone());
            std::thread::spawn(move || heartbeat(writer, done, name));
        }
        {
            let (done, name) = (done.clone(), name);
            std::thread::spawn(move || read_loop(reader, tx, done, name));
        }
        Link { node, writer, inbox: Mutex::new(inbox), done }
    }

    fn send(&self, kind: u8, payload: &[u8]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut w, kind, payload).with_context(|| format!("sending to node {}", self.node))
    }

    fn recv(&self) -> Result<Vec<f32>> {
        // The reader thread ends the process on any failure; a closed channel means it ended otherwise.
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.recv().with_context(|| format!("node {} closed the connection", self.node))
    }
}

fn heartbeat(writer: Arc<Mutex<TcpStream>>, done: Arc<AtomicBool>, name: String) {
    loop {
        std::thread::sleep(HEARTBEAT);
        if done.load(Ordering::SeqCst) {
            return;
        }
        let r = write_frame(&mut writer.lock().unwrap_or_else(|e| e.into_inner()), BEAT, &[]);
        if let Err(e) = r {
            if !done.load(Ordering::SeqCst) {
                die(&format!("{name} stopped responding ({e})"));
            }
            return;
        }
    }
}

fn read_loop(mut stream: TcpStream, tx: Sender<Vec<f32>>, done: Arc<AtomicBool>, name: String) {
    loop {
        match read_frame(&mut stream, LARGE) {
            Ok((BEAT, _)) => {}
            Ok((DATA, p)) => {
                let _ = tx.send(from_bytes(&p));
            }
            Ok((FAIL, p)) => die(&format!("{name} failed: {}", String::from_utf8_lossy(&p))),
            Ok((BYE, _)) => {
                done.store(true, Ordering::SeqCst);
                return;
            }
            Ok((kind, _)) => die(&format!("{name} sent a frame of unknown kind {kind}")),
            Err(e) => {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let why = match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        format!("nothing heard for {} s", DEAD_AFTER.as_secs())
                    }
                    std::io::ErrorKind::UnexpectedEof => "the connection closed".to_string(),
                    _ => e.to_string(),
                };
                die(&format!("{name} stopped responding: {why}"));
            }
        }
    }
}

/// Ends the process: a peer is gone, and the all-reduce of the next step would wait for it forever.
fn die(msg: &str) -> ! {
    eprintln!("error: {msg}; stopping this node too");
    std::process::exit(1)
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    let mut it = addr
        .to_socket_addrs()
        .with_context(|| format!("--coordinator {addr}: not a HOST:PORT address that resolves"))?;
    it.next().with_context(|| format!("--coordinator {addr}: resolves to no address"))
}

fn write_frame(w: &mut TcpStream, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// The longest frame while joining (a hello or its answer): a stray client's bytes read as a length must not
/// make node 0 allocate gigabytes.
const SMALL: u64 = 1 << 16;
/// The longest frame after: a gradient is a few hundred MB at most.
const LARGE: u64 = 1 << 36;

fn read_frame(r: &mut TcpStream, max: u64) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    if len > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: usize, node_rank: usize, port: u16) -> NodeSpec {
        NodeSpec {
            nodes,
            node_rank,
            devices: 1,
            coordinator: format!("127.0.0.1:{port}"),
            connect_timeout: Duration::from_secs(30),
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Three nodes, 50 back-to-back sums: each the same bits on every node, added in node order. The values
    /// tell the orders apart in f32: (1e8 + 1) − 1e8 = 0, (1e8 − 1e8) + 1 = 1.
    #[test]
    fn three_nodes_sum_in_node_order_the_same_bits_on_each() {
        let port = free_port();
        let value = |node: usize, step: usize| -> Vec<f32> {
            let big = [1e8f32, 1.0, -1e8][node];
            vec![big, step as f32 * (node as f32 + 1.0), -(node as f32) / 3.0]
        };
        let nodes: Vec<_> = (0..3)
            .map(|r| {
                std::thread::spawn(move || {
                    let star = Star::connect(spec(3, r, port)).unwrap();
                    let sums: Vec<Vec<f32>> = (0..50).map(|s| star.all_reduce_sum(value(r, s)).unwrap()).collect();
                    star.finish();
                    sums
                })
            })
            .collect();
        let sums: Vec<Vec<Vec<f32>>> = nodes.into_iter().map(|h| h.join().unwrap()).collect();
        for s in 0..50 {
            let want: Vec<f32> = (0..3).map(|i| (value(0, s)[i] + value(1, s)[i]) + value(2, s)[i]).collect();
            assert_eq!(want[0], 0.0, "the values do not tell the orders apart");
            for (node, got) in sums.iter().enumerate() {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got[s]), bits(&want), "node {node}, step {s}");
            }
        }
    }

    /// A node started with another `--nodes` is refused, and both sides say why.
    #[test]
    fn a_node_with_another_node_count_is_refused() {
        let port = free_port();
        let zero = std::thread::spawn(move || Star::connect(spec(2, 0, port)).err().map(|e| format!("{e:#}")));
        let one = Star::connect(spec(3, 1, port)).err().map(|e| format!("{e:#}"));
        let zero = zero.join().unwrap();
        let (zero, one) = (zero.expect("node 0 accepted"), one.expect("node 1 was accepted"));
        assert!(zero.contains("was started with --nodes 3") && zero.contains("node 0 with --nodes 2"), "{zero}");
        assert!(one.contains("node 0 refused this node") && one.contains("--nodes 3"), "{one}");
    }
}
