//! The ranks' rendezvous and liveness, over TCP: rank 0 listens (on `MASTER_PORT`, or on a free
//! port whose address it writes into the `--rendezvous file:PATH` file), every other rank
//! connects and says which rank it is, and rank 0 answers each with the NCCL unique id. The
//! connections stay open for the whole run: a rank that finishes says so before it closes; a
//! connection that closes without it means the rank's process died (or stopped on an error).
//! Rank 0 then tells every other rank which rank it was, and each rank aborts its NCCL
//! communicator, so the collective it waits in returns an error that names the rank instead of
//! hanging. Should a process still be alive `EXIT_GRACE` after that, it exits with the error.
//!
//! A rank can also hang without dying (a stuck kernel, a deadlock, a stopped process). Every
//! rank sends rank 0 a heartbeat each second with the number of collectives it has issued;
//! every rank issues the same sequence, so rank 0 knows who the job waits for. When a rank sends
//! no heartbeat for the silence limit (a stopped or frozen process), or stays behind the
//! collectives the others have issued for the progress limit, or no rank issues a collective for
//! that long, rank 0 stops the job the same way, with an error naming the rank(s) and what they
//! were doing. The other ranks watch rank 0's heartbeat likewise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::launch::{Launch, Rendezvous};
use super::nccl::{Communicator, ID_BYTES};
use super::DistError;

const HELLO: &[u8; 4] = b"RDPK";
const BYE: u8 = b'B';
const DEAD: u8 = b'D';
/// A heartbeat: the collectives the sender has issued (u64 LE).
const BEAT: u8 = b'P';
/// Rank 0 stopping the job for a hang: the error's length (u32 LE) and text.
const HUNG: u8 = b'H';

/// How often a rank sends its heartbeat, and rank 0 checks them.
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a process whose job lost a rank may take to stop on its own error before it exits.
pub const EXIT_GRACE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct State {
    failure: Mutex<Option<String>>,
    finished: AtomicBool,
    comm: OnceLock<Arc<Communicator>>,
    /// The other ends: every other rank's connection on rank 0, rank 0's on the others.
    peers: Mutex<Vec<(usize, TcpStream)>>,
    /// Per rank: collectives issued, when that count last changed, and when its last heartbeat
    /// came (rank 0 follows every rank; the others follow rank 0, and themselves).
    beats: Mutex<Vec<Beat>>,
}

#[derive(Clone, Copy)]
struct Beat {
    issued: u64,
    changed: Instant,
    heard: Instant,
    /// The rank said it finished: it is silent from now on, and its count is final.
    done: bool,
}

impl Beat {
    fn new(now: Instant) -> Beat {
        Beat {
            issued: 0,
            changed: now,
            heard: now,
            done: false,
        }
    }

    fn record(&mut self, issued: u64, now: Instant) {
        if issued != self.issued {
            self.issued = issued;
            self.changed = now;
        }
        self.heard = now;
    }
}

/// How long a rank may be silent, or behind the others' collectives, before the job stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HangLimits {
    /// Without a heartbeat (`--heartbeat-timeout`).
    pub silence: Duration,
    /// Without reaching the collective the others wait in, or with no collective at all
    /// (`--hang-timeout`): longer than the slowest step, evaluation or checkpoint.
    pub progress: Duration,
}

/// Why the job hangs, from rank 0's heartbeats, once a rank has been silent or behind for
/// longer than `limits`; `None` while every rank keeps up.
fn hang(beats: &[Beat], limits: HangLimits, now: Instant) -> Option<String> {
    let quiet = limits.silence.as_secs();
    let silent: Vec<String> = beats
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.done && now.duration_since(b.heard) > limits.silence)
        .map(|(rank, _)| rank.to_string())
        .collect();
    if !silent.is_empty() {
        return Some(format!(
            "rank(s) {} sent no heartbeat for {quiet} s: the process is stopped or frozen (see its log); the job stops (--heartbeat-timeout {quiet})",
            silent.join(", ")
        ));
    }
    if beats.iter().any(|b| b.done) {
        // A rank finished: the others are finishing too, issuing no more collectives.
        return None;
    }
    let ahead = beats.iter().map(|b| b.issued).max()?;
    // Since when some rank has been waiting at `ahead` collectives.
    let waiting_since = beats
        .iter()
        .filter(|b| b.issued == ahead)
        .map(|b| b.changed)
        .min()?;
    let secs = limits.progress.as_secs();
    if now.duration_since(waiting_since) <= limits.progress {
        return None;
    }
    let behind: Vec<String> = beats
        .iter()
        .enumerate()
        .filter(|(_, b)| b.issued < ahead)
        .map(|(rank, b)| format!("{rank} (at {})", b.issued))
        .collect();
    Some(if behind.is_empty() {
        format!(
            "no rank issued a collective for {secs} s (every rank is at {ahead}): a collective or every rank is stuck; the job stops (--hang-timeout {secs})"
        )
    } else {
        format!(
            "rank(s) {} did not reach collective {} in {secs} s while the others wait in it: they hang or are that much slower; the job stops (--hang-timeout {secs})",
            behind.join(", "),
            ahead
        )
    })
}

impl State {
    /// Records the first failure, aborts the communicator and, on rank 0, tells the others:
    /// which rank died (`Some`), or why the job hangs (`None`: the text itself).
    fn fail(self: &Arc<Self>, dead: Option<usize>, text: String) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_some() {
                return;
            }
            *failure = Some(text.clone());
        }
        let message = match dead {
            Some(dead) => {
                let mut message = vec![DEAD];
                message.extend_from_slice(&(dead as u32).to_le_bytes());
                message
            }
            None => {
                let mut message = vec![HUNG];
                message.extend_from_slice(&(text.len() as u32).to_le_bytes());
                message.extend_from_slice(text.as_bytes());
                message
            }
        };
        if let Ok(mut peers) = self.peers.lock() {
            for (rank, stream) in peers.iter_mut() {
                if Some(*rank) != dead {
                    // A stuck peer must not block this thread: the write gets a deadline.
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = stream.write_all(&message);
                }
            }
        }
        if let Some(comm) = self.comm.get() {
            comm.abort();
        }
        let state = Arc::clone(self);
        std::thread::spawn(move || {
            std::thread::sleep(EXIT_GRACE);
            if !state.finished.load(Ordering::SeqCst) {
                eprintln!("error: {text}");
                std::process::exit(1);
            }
        });
    }
}

impl State {
    /// A heartbeat from `rank` (on rank 0: any rank's; elsewhere: rank 0's).
    fn heard(&self, rank: usize, issued: u64) {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(beat) = beats.get_mut(rank) {
            beat.record(issued, Instant::now());
        }
    }

    /// `rank` said it finished.
    fn done(&self, rank: usize) {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(beat) = beats.get_mut(rank) {
            beat.done = true;
        }
    }

    fn stopped(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
            || self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }
}

/// A rank's connections to the job, from the rendezvous to the end of the run.
pub struct Link {
    state: Arc<State>,
    pub rank: usize,
    pub world_size: usize,
    /// How long a rank may be silent or behind the others' collectives.
    hang: HangLimits,
}

fn dead_text(rank: usize) -> String {
    format!("rank {rank} stopped: its process exited or lost its connection before the run finished (see that rank's log)")
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> DistError {
    move |e| DistError::Rendezvous(format!("{what}: {e}"))
}

/// The host name rank 0 publishes: `MASTER_ADDR` when set, else the machine's name when it
/// resolves, else the loopback address (a machine whose name does not resolve is reachable by
/// no other).
fn this_host() -> String {
    if let Ok(host) = std::env::var("MASTER_ADDR") {
        return host;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| resolve(&format!("{h}:0")).is_some())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Writes rank 0's address into `path` (atomically: a temporary file renamed into place).
fn publish(path: &Path, addr: &str) -> Result<(), DistError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{addr}\n")).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.to_socket_addrs().ok()?.next()
}

impl Link {
    /// The rendezvous: returns the link and the NCCL unique id (made by rank 0 with `make_id`),
    /// or an error once `timeout` has passed without every rank. Once the communicator is
    /// guarded, a rank silent or behind for longer than `hang` allows stops the job.
    pub fn connect(
        launch: &Launch,
        timeout: Duration,
        hang: HangLimits,
        make_id: impl FnOnce() -> Result<[u8; ID_BYTES], DistError>,
    ) -> Result<(Link, [u8; ID_BYTES]), DistError> {
        let deadline = Instant::now() + timeout;
        let state = Arc::new(State::default());
        let link = Link {
            state: Arc::clone(&state),
            rank: launch.rank,
            world_size: launch.world_size,
            hang,
        };
        let id = if launch.rank == 0 {
            link.serve(launch, deadline, timeout, make_id()?)?
        } else {
            link.join(launch, deadline)?
        };
        link.watch();
        Ok((link, id))
    }

    fn serve(
        &self,
        launch: &Launch,
        deadline: Instant,
        timeout: Duration,
        id: [u8; ID_BYTES],
    ) -> Result<[u8; ID_BYTES], DistError> {
        let port = match &launch.rendezvous {
            Rendezvous::Tcp { port, .. } => *port,
            Rendezvous::File(_) => 0,
        };
        let listener = TcpListener::bind(("0.0.0.0", port))
            .map_err(io(format!("rank 0 cannot listen on port {port}")))?;
        if let Rendezvous::File(path) = &launch.rendezvous {
            let port = listener.local_addr().map_err(io("listener".into()))?.port();
            publish(path, &format!("{}:{port}", this_host()))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(io("listener".into()))?;
        let mut peers: Vec<Option<TcpStream>> = (0..launch.world_size).map(|_| None).collect();
        let mut joined = 1;
        while joined < launch.world_size {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).map_err(io("socket".into()))?;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(io("socket".into()))?;
                    let mut hello = [0u8; 12];
                    if stream.read_exact(&mut hello).is_err() || &hello[..4] != HELLO {
                        continue; // not one of ours
                    }
                    let rank =
                        u32::from_le_bytes([hello[4], hello[5], hello[6], hello[7]]) as usize;
                    let world =
                        u32::from_le_bytes([hello[8], hello[9], hello[10], hello[11]]) as usize;
                    if world != launch.world_size || rank == 0 || rank >= world {
                        return Err(DistError::Rendezvous(format!(
                            "a process joined as rank {rank} of {world}, but rank 0 runs a world of {}",
                            launch.world_size
                        )));
                    }
                    if peers[rank].is_some() {
                        return Err(DistError::Rendezvous(format!(
                            "two processes joined as rank {rank}"
                        )));
                    }
                    stream.set_read_timeout(None).map_err(io("socket".into()))?;
                    peers[rank] = Some(stream);
                    joined += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = (1..launch.world_size)
                            .filter(|&r| peers[r].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(DistError::Rendezvous(format!(
                            "rank 0 waited {} s and rank(s) {} never joined",
                            timeout.as_secs(),
                            missing.join(", ")
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io("accepting a rank".into())(e)),
            }
        }
        let mut list = Vec::new();
        for (rank, stream) in peers.into_iter().enumerate() {
            if let Some(mut stream) = stream {
                stream
                    .write_all(&id)
                    .map_err(io(format!("sending the NCCL id to rank {rank}")))?;
                list.push((rank, stream));
            }
        }
        if let Rendezvous::File(path) = &launch.rendezvous {
            let _ = std::fs::remove_file(path);
        }
        *self.state.peers.lock().unwrap_or_else(|e| e.into_inner()) = list;
        Ok(id)
    }

    fn join(&self, launch: &Launch, deadline: Instant) -> Result<[u8; ID_BYTES], DistError> {
        let describe = || match &launch.rendezvous {
            Rendezvous::Tcp { host, port } => format!("{host}:{port}"),
            Rendezvous::File(path) => format!("the address in {}", path.display()),
        };
        let mut stream = loop {
            let addr = match &launch.rendezvous {
                Rendezvous::Tcp { host, port } => Some(format!("{host}:{port}")),
                Rendezvous::File(path) => std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_string()),
            };
            if let Some(addr) = addr.as_deref().and_then(resolve) {
                if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    break stream;
                }
            }
            if Instant::now() > deadline {
                return Err(DistError::Rendezvous(format!(
                    "rank {} could not reach rank 0 at {}",
                    launch.rank,
                    describe()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut hello = HELLO.to_vec();
        hello.extend_from_slice(&(launch.rank as u32).to_le_bytes());
        hello.extend_from_slice(&(launch.world_size as u32).to_le_bytes());
        stream
            .write_all(&hello)
            .map_err(io(format!("rank {} greeting rank 0", launch.rank)))?;
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        stream
            .set_read_timeout(Some(wait))
            .map_err(io("socket".into()))?;
        let mut id = [0u8; ID_BYTES];
        stream.read_exact(&mut id).map_err(io(format!(
            "rank {} waiting for the NCCL id from rank 0 at {}",
            launch.rank,
            describe()
        )))?;
        stream.set_read_timeout(None).map_err(io("socket".into()))?;
        *self.state.peers.lock().unwrap_or_else(|e| e.into_inner()) = vec![(0, stream)];
        Ok(id)
    }

    /// One thread per connection, reading until the peer says it finished or goes away.
    fn watch(&self) {
        let peers = self.state.peers.lock().unwrap_or_else(|e| e.into_inner());
        for (rank, stream) in peers.iter() {
            let Ok(mut stream) = stream.try_clone() else {
                continue;
            };
            let (rank, state) = (*rank, Arc::clone(&self.state));
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                loop {
                    match stream.read(&mut byte) {
                        Ok(1) if byte[0] == BYE => {
                            state.done(rank);
                            return;
                        }
                        Ok(1) if byte[0] == DEAD => {
                            let mut who = [0u8; 4];
                            let dead = match stream.read_exact(&mut who) {
                                Ok(()) => u32::from_le_bytes(who) as usize,
                                Err(_) => rank,
                            };
                            state.fail(Some(dead), dead_text(dead));
                            return;
                        }
                        Ok(1) if byte[0] == BEAT => {
                            let mut issued = [0u8; 8];
                            if stream.read_exact(&mut issued).is_err() {
                                state.fail(Some(rank), dead_text(rank));
                                return;
                            }
                            state.heard(rank, u64::from_le_bytes(issued));
                        }
                        Ok(1) if byte[0] == HUNG => {
                            let mut len = [0u8; 4];
                            let mut text = Vec::new();
                            let read = stream.read_exact(&mut len).and_then(|()| {
                                let len = (u32::from_le_bytes(len) as usize).min(1 << 16);
                                text.resize(len, 0);
                                stream.read_exact(&mut text)
                            });
                            let text = match read {
                                Ok(()) => String::from_utf8_lossy(&text).into_owned(),
                                Err(_) => format!("rank {rank} reported a hang"),
                            };
                            state.fail(None, text);
                            return;
                        }
                        Ok(1) => continue,
                        _ => {
                            state.fail(Some(rank), dead_text(rank));
                            return;
                        }
                    }
                }
            });
        }
    }

    /// The communicator to abort when a rank dies or hangs; starts the heartbeats.
    pub fn guard(&self, comm: Arc<Communicator>) {
        let _ = self.state.comm.set(comm);
        if self.failure().is_some() {
            if let Some(comm) = self.state.comm.get() {
                comm.abort();
            }
            return;
        }
        let now = Instant::now();
        *self.state.beats.lock().unwrap_or_else(|e| e.into_inner()) =
            vec![Beat::new(now); self.world_size];
        let (state, rank, limits) = (Arc::clone(&self.state), self.rank, self.hang);
        std::thread::spawn(move || heartbeat(&state, rank, limits));
    }

    /// Why the job lost a rank, once it has.
    pub fn failure(&self) -> Option<String> {
        self.state
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`Self::failure`], waiting up to `grace` for it: a collective can fail (another rank
    /// aborted the communicator) a moment before the message that says why arrives.
    pub fn failure_within(&self, grace: Duration) -> Option<String> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(failure) = self.failure() {
                return Some(failure);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tells the other ranks this one finished, so its exit is not taken for a death.
    pub fn finish(&self) {
        if self.failure().is_some() {
            return;
        }
        self.state.finished.store(true, Ordering::SeqCst);
        if let Ok(mut peers) = self.state.peers.lock() {
            for (_, stream) in peers.iter_mut() {
                let _ = stream.write_all(&[BYE]);
                let _ = stream.flush();
            }
        }
    }
}

/// Every `BEAT_EVERY`: sends this rank's count of collectives to its peers; checks the
/// heartbeats (rank 0: every rank's; the others: rank 0's) and stops the job on a hang.
fn heartbeat(state: &Arc<State>, rank: usize, limits: HangLimits) {
    loop {
        std::thread::sleep(BEAT_EVERY);
        if state.stopped() {
            return;
        }
        let Some(comm) = state.comm.get() else {
            continue;
        };
        let issued = comm.issued();
        let mut message = vec![BEAT];
        message.extend_from_slice(&issued.to_le_bytes());
        if let Ok(mut peers) = state.peers.lock() {
            for (_, stream) in peers.iter_mut() {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = stream.write_all(&message);
            }
        }
        state.heard(rank, issued);
        let now = Instant::now();
        let verdict = {
            let beats = state.beats.lock().unwrap_or_else(|e| e.into_inner());
            if rank == 0 {
                hang(&beats, limits, now)
            } else {
                beats
                    .first()
                    .filter(|b| !b.done && now.duration_since(b.heard) > limits.silence)
                    .map(|_| {
                        format!(
                            "rank 0 sent no heartbeat for {} s: its process is stopped or frozen (see its log); the job stops (--heartbeat-timeout {})",
                            limits.silence.as_secs(),
                            limits.silence.as_secs()
                        )
                    })
            }
        };
        if let Some(text) = verdict {
            state.fail(None, text);
            return;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // An error return still tells the failure apart from a crash only by this: the process
        // stopped without `finish`, so the others report this rank.
        self.state.finished.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANG: HangLimits = HangLimits {
        silence: Duration::from_secs(60),
        progress: Duration::from_secs(600),
    };

    /// Heartbeats `(issued, seconds since the count changed, seconds since last heard)` as seen
    /// at `now`.
    fn beats(now: Instant, list: &[(u64, u64, u64)]) -> Vec<Beat> {
        list.iter()
            .map(|&(issued, changed, heard)| Beat {
                issued,
                changed: now - Duration::from_secs(changed),
                heard: now - Duration::from_secs(heard),
                done: false,
            })
            .collect()
    }

    #[test]
    fn a_silent_or_lagging_rank_is_named_once_the_timeout_passes() {
        let now = Instant::now() + Duration::from_secs(1000);
        let t = HangLimits {
            silence: Duration::from_secs(10),
            progress: Duration::from_secs(60),
        };
        // Everyone keeping up, or behind for less than the timeout.
        assert_eq!(
            hang(&beats(now, &[(7, 1, 0), (7, 2, 1), (7, 0, 0)]), t, now),
            None
        );
        assert_eq!(
            hang(&beats(now, &[(8, 30, 0), (7, 90, 1), (8, 10, 0)]), t, now),
            None
        );
        // Rank 1 behind while rank 0 has waited at collective 8 for 61 s.
        let text = hang(&beats(now, &[(8, 61, 0), (7, 200, 1), (8, 10, 0)]), t, now).unwrap();
        assert!(
            text.starts_with("rank(s) 1 (at 7) did not reach collective 8 in 60 s"),
            "{text}"
        );
        // Rank 2 silent (a stopped process), whatever the counts.
        let text = hang(&beats(now, &[(8, 1, 0), (8, 1, 0), (8, 1, 11)]), t, now).unwrap();
        assert!(
            text.starts_with("rank(s) 2 sent no heartbeat for 10 s"),
            "{text}"
        );
        // Nobody issued a collective for longer than the timeout.
        let text = hang(&beats(now, &[(8, 61, 0), (8, 62, 0)]), t, now).unwrap();
        assert!(
            text.starts_with("no rank issued a collective for 60 s"),
            "{text}"
        );
        // A rank that said it finished is silent from then on: not a hang.
        let mut finishing = beats(now, &[(8, 61, 0), (8, 62, 70)]);
        finishing[1].done = true;
        assert_eq!(hang(&finishing, t, now), None);
    }

    fn launch(rank: usize, world_size: usize, path: &Path) -> Launch {
        Launch {
            world_size,
            rank,
            local_rank: 0,
            rendezvous: Rendezvous::File(path.to_path_buf()),
            launcher: "test",
        }
    }

    #[test]
    fn ranks_meet_through_a_file_and_receive_rank_0s_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendezvous");
        let others: Vec<_> = (1..3)
            .map(|rank| {
                let l = launch(rank, 3, &path);
                std::thread::spawn(move || {
                    let (link, id) =
                        Link::connect(&l, Duration::from_secs(30), HANG, || Ok([0; ID_BYTES]))
                            .unwrap();
                    link.finish();
                    id
                })
            })
            .collect();
        let id = [7u8; ID_BYTES];
        let (link, got) =
            Link::connect(&launch(0, 3, &path), Duration::from_secs(30), HANG, || {
                Ok(id)
            })
            .unwrap();
        assert_eq!(got, id);
        for other in others {
            assert_eq!(other.join().unwrap(), id);
        }
        // The address file goes once every rank has joined.
        assert!(!path.exists());
        assert_eq!(link.failure(), None);
        link.finish();
    }

    #[test]
    fn a_rank_of_another_world_and_a_missing_rank_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendezvous");
        let stray = launch(1, 3, &path);
        let t = std::thread::spawn(move || {
            Link::connect(&stray, Duration::from_secs(5), HANG, || Ok([0; ID_BYTES])).err()
        });
        let e = Link::connect(&launch(0, 2, &path), Duration::from_secs(30), HANG, || {
            Ok([1; ID_BYTES])
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("joined as rank 1 of 3"), "{e}");
        assert!(t.join().unwrap().is_some());
        let path = dir.path().join("alone");
        let e = Link::connect(
            &launch(0, 2, &path),
            Duration::from_millis(300),
            HANG,
            || Ok([1; ID_BYTES]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("rank(s) 1 never joined"), "{e}");
    }
}
