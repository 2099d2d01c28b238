//! A deterministic discrete-event simulation of a foca (SWIM) cluster, used to compare fdm's failure
//! detection with a peer on the same network model as `fdm-sim`: every datagram is dropped with
//! probability `loss`, else delivered after 200 µs + uniform(0, 300 µs), never duplicated.
//!
//! foca is sans-IO, so it is driven only through `handle_data`/`handle_timer`/`announce` with a
//! virtual clock kept in microseconds (the resolution fdm's simulator uses). One splitmix64 stream,
//! seeded from `FocaParams::seed`, feeds the network and every foca instance, so a seed replays the
//! same run exactly.
//!
//! Bench targets include it with `#[path = "support/foca_sim.rs"] mod foca_sim;`.

// Each bench target that includes this file uses a different subset of it.
#![allow(dead_code)]

use foca::{
    Config, Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, Runtime, Timer,
};
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::Duration;

/// Which foca configuration every member runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FocaConfigKind {
    /// `Config::new_lan(members)`, unmodified.
    Lan,
    /// `Config::new_lan(members)` with the three knobs that trade detection time against false
    /// downs replaced; gossip, announce and dissemination stay at the LAN defaults.
    Fast {
        probe_period_ms: u64,
        probe_rtt_ms: u64,
        suspect_to_down_ms: u64,
    },
}

#[derive(Debug, Clone)]
pub struct FocaParams {
    /// Cluster size, at least 2.
    pub members: usize,
    /// Independent per-datagram drop probability, 0.0..=1.0.
    pub loss: f64,
    pub seed: u64,
    /// Simulated seconds before the crash: the join phase plus time to converge.
    pub settle_s: f64,
    /// Simulated seconds after the crash (or after `settle_s` when `crash` is false).
    pub observe_s: f64,
    /// Crash the last member at `settle_s`; with `false` only false downs are measured.
    pub crash: bool,
    pub config: FocaConfigKind,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FocaRun {
    /// Crash to the first live member declaring the crashed member down.
    pub first_down_s: Option<f64>,
    /// Crash to the moment no live member holds the crashed member as active any more.
    pub all_down_s: Option<f64>,
    /// `MemberDown` notifications, from `settle_s` on, about members that were alive then.
    pub false_downs: u64,
    /// Live members × simulated seconds over the same window as `false_downs`.
    pub member_seconds: f64,
    /// Datagrams sent, lost ones included.
    pub datagrams: u64,
    /// Whether every member held every other one as active at `settle_s`; a run that had not
    /// converged partly measures the join phase, not failure detection.
    pub converged: bool,
    /// Identity renewals (`Notification::Rejoin`) from `settle_s` on: a live member told that the
    /// cluster holds it down. foca 2.0 also sends that (`TurnUndead`) when the timer of a suspicion
    /// that was already refuted fires, so rejoins happen without any `MemberDown`.
    pub rejoins: u64,
    /// Errors foca returned from `handle_data`/`handle_timer`/`announce`; nonzero means the
    /// harness fed it something wrong.
    pub foca_errors: u64,
}

/// Runs one simulation. Parameters out of range are clamped rather than rejected, so a sweep never
/// aborts half-way: `members` to at least 2, `loss` to 0..=1, a `Fast` probe RTT to below its period.
pub fn run(p: &FocaParams) -> FocaRun {
    let n = p.members.max(2);
    let settle_us = secs_to_us(p.settle_s);
    let end_us = settle_us.saturating_add(secs_to_us(p.observe_s));
    let loss = if p.loss.is_nan() {
        0.0
    } else {
        p.loss.clamp(0.0, 1.0)
    };
    let rng = SimRng::new(p.seed);
    let config = config_for(p.config, n);
    // Re-announcing as often as foca probes keeps joins and rejoins (after a false down) from
    // stalling on a lost announce without flooding the seeds.
    let retry_us = duration_us(config.probe_period).max(1);

    let mut nodes: Vec<Foca<NodeId, PostcardCodec, SimRng, NoCustomBroadcast>> = (0..n)
        .map(|i| {
            Foca::new(
                NodeId::first(i as u32),
                config.clone(),
                rng.clone(),
                PostcardCodec,
            )
        })
        .collect();

    let mut queue = Queue::default();
    // Members join at staggered times over the first quarter of the settle period (at most 2 s),
    // so the cluster forms the way a rolling start does rather than in one burst.
    let join_window = (settle_us / 4).min(2_000_000);
    for i in 1..n {
        queue.push(
            join_window * i as u64 / n as u64,
            Ev::Tick { member: i as u32 },
        );
    }
    // Member 0 is the seed everyone announces to; it only needs its tick to recover if it is ever
    // evicted, so it starts once the others have had a chance to join.
    queue.push(join_window + retry_us, Ev::Tick { member: 0 });
    let victim = (n - 1) as u32;
    if p.crash {
        queue.push(settle_us, Ev::Crash);
    }
    let mut obs = Observer::new(n, p.crash.then_some(victim), settle_us);
    let mut crashed = false;
    let mut started = vec![false; n];
    started[0] = true;
    let mut converged = None;
    let mut buf_pool: Vec<Vec<u8>> = Vec::new();

    while let Some(Scheduled { at, ev, .. }) = queue.pop() {
        if at > end_us {
            break;
        }
        if converged.is_none() && at >= settle_us {
            converged = Some(is_converged(&nodes));
        }
        let member = match &ev {
            Ev::Deliver { to, .. } => *to,
            Ev::Timer { member, .. } | Ev::Tick { member } => *member,
            Ev::Crash => {
                crashed = true;
                obs.crash_at = Some(at);
                continue;
            }
        };
        // The crashed member neither sends nor receives; its pending timers die with it. A member
        // whose agent has not started yet has no socket either: without this, early joiners that
        // announce to a later one form a clique of their own.
        let down = (crashed && member == victim)
            || (!started[member as usize] && !matches!(ev, Ev::Tick { .. }));
        if down {
            if let Ev::Deliver { data, .. } = ev {
                buf_pool.push(data);
            }
            continue;
        }
        let mut ctx = Ctx {
            now: at,
            me: member,
            queue: &mut queue,
            rng: &rng,
            loss,
            obs: &mut obs,
            buf_pool: &mut buf_pool,
        };
        let node = &mut nodes[member as usize];
        let result = match ev {
            Ev::Deliver { data, .. } => {
                let r = node.handle_data(&data, &mut ctx);
                ctx.buf_pool.push(data);
                r
            }
            Ev::Timer { timer, .. } => node.handle_timer(timer, &mut ctx),
            Ev::Tick { member } => {
                ctx.queue.push(at + retry_us, Ev::Tick { member });
                let m = member as usize;
                if !started[m] {
                    // First tick: the member's agent starts and announces to the well-known seed.
                    started[m] = true;
                    node.announce(NodeId::first(0), &mut ctx)
                } else if ctx.obs.connected[m] && (at >= settle_us || node.num_members() + 1 >= n) {
                    Ok(())
                } else {
                    // Not connected, or (before the crash) connected with a partial view: a lost
                    // Feed leaves a member Active but knowing only whoever pinged it, and foca's
                    // own remedy (periodic announce) runs every 30 s. An HA agent knows its
                    // configured host count, so it keeps announcing until it sees everyone; the
                    // comparison then starts from a converged cluster, as fdm's does.
                    let seed = pick_seed(member, n, &rng);
                    node.announce(NodeId::first(seed), &mut ctx)
                }
            }
            Ev::Crash => Ok(()),
        };
        if result.is_err() {
            obs.foca_errors += 1;
        }
    }

    let observed_s = p.observe_s.max(0.0);
    let live = if p.crash { n - 1 } else { n };
    FocaRun {
        first_down_s: obs.first_down.map(|t| us_since(t, settle_us)),
        all_down_s: obs.all_down.map(|t| us_since(t, settle_us)),
        false_downs: obs.false_downs,
        rejoins: obs.rejoins,
        member_seconds: live as f64 * observed_s,
        datagrams: obs.datagrams,
        converged: converged.unwrap_or_else(|| is_converged(&nodes)),
        foca_errors: obs.foca_errors,
    }
}

fn config_for(kind: FocaConfigKind, n: usize) -> Config {
    let size = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    let mut c = Config::new_lan(size);
    if let FocaConfigKind::Fast {
        probe_period_ms,
        probe_rtt_ms,
        suspect_to_down_ms,
    } = kind
    {
        // foca requires non-zero durations and rtt < period; clamp instead of failing a sweep.
        let period = probe_period_ms.max(2);
        c.probe_period = Duration::from_millis(period);
        c.probe_rtt = Duration::from_millis(probe_rtt_ms.clamp(1, period - 1));
        c.suspect_to_down_after = Duration::from_millis(suspect_to_down_ms.max(1));
    }
    c
}

/// A member that is not connected re-announces to one of the first three members, as an agent
/// with a short static seed list does.
fn pick_seed(me: u32, n: usize, rng: &SimRng) -> u32 {
    if me == 0 {
        // The seed itself only announces to fill a partial view or to come back after being
        // downed; any peer will do.
        return 1 + rng.below(n as u64 - 1) as u32;
    }
    let seeds = (n as u64 - 1).min(3);
    let s = rng.below(seeds) as u32;
    if s >= me { s + 1 } else { s }
}

/// foca never lists itself, so a member that sees the whole cluster holds `n - 1` active peers.
fn is_converged(nodes: &[Foca<NodeId, PostcardCodec, SimRng, NoCustomBroadcast>]) -> bool {
    let n = nodes.len();
    nodes.iter().all(|f| f.num_members() == n - 1)
}

fn secs_to_us(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e6) as u64
    } else {
        0
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn us_since(t: u64, origin: u64) -> f64 {
    t.saturating_sub(origin) as f64 / 1e6
}

/// A member's identity. `addr` is the member's index; `generation` goes up each time foca renews
/// the identity after the cluster declared it down, which lets a falsely downed member rejoin the
/// way a real deployment would instead of sitting out the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct NodeId {
    addr: u32,
    generation: u32,
}

impl NodeId {
    fn first(addr: u32) -> Self {
        NodeId {
            addr,
            generation: 0,
        }
    }
}

impl Identity for NodeId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            addr: self.addr,
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> u32 {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// splitmix64 behind a shared cell: every foca instance and the network draw from one stream, so
/// a whole run is a function of the seed and the (deterministic) event order.
#[derive(Debug, Clone)]
struct SimRng(Rc<Cell<u64>>);

impl SimRng {
    fn new(seed: u64) -> Self {
        SimRng(Rc::new(Cell::new(seed)))
    }

    fn next_u64(&self) -> u64 {
        let s = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    fn below(&self, n: u64) -> u64 {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as u64
    }

    /// Uniform in [0, 1).
    fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl rand::TryRng for SimRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(SimRng::next_u64(self))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = SimRng::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: u32,
        data: Vec<u8>,
    },
    Timer {
        member: u32,
        timer: Timer<NodeId>,
    },
    /// The harness's own per-member tick: (re-)announce while foca is not connected.
    Tick {
        member: u32,
    },
    Crash,
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

// Ordered by (time, insertion order) only, reversed so `BinaryHeap` pops the earliest; the
// sequence number makes simultaneous events replay in a fixed order.
impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Scheduled>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn pop(&mut self) -> Option<Scheduled> {
        self.heap.pop()
    }
}

/// What the run measures, fed by foca's notifications.
#[derive(Debug)]
struct Observer {
    victim: Option<u32>,
    crash_at: Option<u64>,
    /// False downs are counted from here on: the join phase is not what is being compared.
    count_from: u64,
    /// Per member: does it hold the victim as active? `holders` counts the `true`s.
    holds_victim: Vec<bool>,
    holders: usize,
    /// Per member: foca's connection state, from Active / Idle / Defunct / Rejoin.
    connected: Vec<bool>,
    first_down: Option<u64>,
    all_down: Option<u64>,
    false_downs: u64,
    rejoins: u64,
    datagrams: u64,
    foca_errors: u64,
}

impl Observer {
    fn new(n: usize, victim: Option<u32>, count_from: u64) -> Self {
        Observer {
            victim,
            crash_at: None,
            count_from,
            holds_victim: vec![false; n],
            holders: 0,
            connected: vec![false; n],
            first_down: None,
            all_down: None,
            false_downs: 0,
            rejoins: 0,
            datagrams: 0,
            foca_errors: 0,
        }
    }

    fn member_up(&mut self, me: u32, id: &NodeId) {
        if Some(id.addr) == self.victim && !self.holds_victim[me as usize] {
            self.holds_victim[me as usize] = true;
            self.holders += 1;
        }
    }

    fn member_down(&mut self, now: u64, me: u32, id: &NodeId) {
        let about_victim = Some(id.addr) == self.victim;
        if about_victim && self.holds_victim[me as usize] {
            self.holds_victim[me as usize] = false;
            self.holders -= 1;
        }
        // Counted by address, not identity: a member that renewed after a false down is still
        // the same live host, and the victim is down whichever generation of it is named.
        if about_victim && self.crash_at.is_some() {
            self.first_down.get_or_insert(now);
            if self.holders == 0 && self.all_down.is_none() {
                self.all_down = Some(now);
            }
        } else if now >= self.count_from {
            self.false_downs += 1;
        }
    }
}

/// The `Runtime` foca talks to while one member handles one event.
struct Ctx<'a> {
    now: u64,
    me: u32,
    queue: &'a mut Queue,
    rng: &'a SimRng,
    loss: f64,
    obs: &'a mut Observer,
    /// Delivered datagrams' buffers, reused so a run does not allocate per datagram.
    buf_pool: &'a mut Vec<Vec<u8>>,
}

impl Runtime<NodeId> for Ctx<'_> {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        let me = self.me as usize;
        match notification {
            Notification::MemberUp(id) => self.obs.member_up(self.me, id),
            Notification::MemberDown(id) => self.obs.member_down(self.now, self.me, id),
            Notification::Active => self.obs.connected[me] = true,
            Notification::Idle | Notification::Defunct => self.obs.connected[me] = false,
            Notification::Rejoin(_) => {
                self.obs.connected[me] = false;
                if self.now >= self.obs.count_from {
                    self.obs.rejoins += 1;
                }
            }
            _ => {}
        }
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.obs.datagrams += 1;
        // Same draw order as fdm-sim: the loss coin first, then the jitter.
        if self.loss > 0.0 && self.rng.unit() < self.loss {
            return;
        }
        let delay = 200 + self.rng.below(300);
        let mut buf = self.buf_pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.queue.push(
            self.now + delay,
            Ev::Deliver {
                to: to.addr,
                data: buf,
            },
        );
    }

    fn submit_after(&mut self, timer: Timer<NodeId>, after: Duration) {
        self.queue.push(
            self.now.saturating_add(duration_us(after)),
            Ev::Timer {
                member: self.me,
                timer,
            },
        );
    }
}
