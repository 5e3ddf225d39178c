//! The network-fault engine of one switch: the rules in force (an all-ports rule, pair rules,
//! a partition), one state per directed link (PRNG stream, token bucket, FIFO horizon) and the
//! decision for each delivery (one frame towards one receiving endpoint): drop, deliver now,
//! deliver later, deliver twice.
//!
//! This module must not do I/O, look at clocks or hold frames: the switch passes `now`, keeps
//! delayed frames in its per-endpoint [`super::delay_queue`] and counts outcomes. Without rules
//! [`FaultEngine::is_active`] is false and the switch never calls in here (its forwarding path
//! stays exactly as it was).
//!
//! Semantics, per delivery, in this order:
//! 1. **Partition**: both endpoints labelled, in two different groups → dropped.
//! 2. **Rule**: the pair rule of the two labels if there is one (an all-zero pair rule exempts
//!    the pair), else the all rule, else the frame passes untouched. Unlabelled endpoints only
//!    see the all rule.
//! 3. **Draws**: exactly [`DRAWS_PER_DELIVERY`] numbers from the link's stream, whatever the
//!    outcome, so the n-th delivery on a link always uses the same numbers: the frames lost
//!    stay the same when jitter or duplication is added, and traffic on other links never
//!    shifts a link's decisions. A link is (sender label, receiver label); the stream is
//!    derived from (seed, vlan, sender, receiver).
//! 4. **Loss** drops the frame (unlike netem, a lost frame is never duplicated).
//! 5. **Rate**: a token bucket per link ([`RATE_BURST_BYTES`] deep) decides when the frame
//!    has been "transmitted"; if more than [`RATE_QUEUE_BYTES`] would be waiting, it is dropped.
//! 6. **Delay** ± uniform jitter is added after that; a frame never leaves before the previous
//!    frame of its link (jitter does not reorder). **Reorder**: with a delay, a chosen frame
//!    skips the delay (and the FIFO horizon) and overtakes the waiting frames, as in netem;
//!    without a delay, a chosen frame is held back for [`REORDER_HOLD`] so the frames right
//!    behind it overtake it.
//! 7. **Duplicate**: a second copy with its own jitter, also rate-limited, queued right after
//!    the original.
//!
//! Memory: at most [`MAX_LINKS`] link states (about 100 bytes each with their index entry,
//! under 2 MiB), [`MAX_PAIR_RULES`] pair rules and [`super::impair::MAX_PARTITION_LABELS`]
//! partition labels; link states are created on the first impaired delivery of a link and
//! live as long as the switch. Nothing here holds frames.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::impair::{ImpairError, Label, Partition, Rule, Scope, MAX_PAIR_RULES};
use super::rng::SplitMix64;
use super::stats::FaultCounters;

/// How long a reordered frame is held back when no delay is set.
pub const REORDER_HOLD: Duration = Duration::from_millis(1);
/// Token-bucket depth of a rate-limited link: two full-size Ethernet frames pass at once.
pub const RATE_BURST_BYTES: u64 = 2 * 1514;
/// Bytes that may wait for tokens on one rate-limited link; beyond, frames are dropped.
pub const RATE_QUEUE_BYTES: u64 = 64 * 1024;
/// Directed links with their own state per switch; further links share one state (so
/// decisions stay deterministic, but are no longer independent of each other).
pub const MAX_LINKS: usize = 16384;
/// Random numbers consumed per delivery: loss, duplicate, reorder, jitter, duplicate's jitter.
pub const DRAWS_PER_DELIVERY: usize = 5;

const NANOS: i128 = 1_000_000_000;

/// One side of a delivery as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The driver's label (the port number in the standalone switch), if any yet.
    pub label: Option<Label>,
    /// The endpoint id, naming unlabelled peers.
    pub endpoint: u32,
}

impl Peer {
    fn key(self) -> u64 {
        match self.label {
            Some(l) => u64::from(l),
            None => (1 << 32) | u64::from(self.endpoint),
        }
    }
}

/// A link's state, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkId(u32);

/// The rule that applies, by position (valid until the rules change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleId {
    All,
    Pair(u32),
}

/// What happens to the deliveries from one sender to one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No rule applies: forward as without impairments.
    Clear,
    /// The two sides are in different partition groups: drop.
    Partitioned,
    /// Ask [`FaultEngine::decide`] for each frame.
    Impaired { link: LinkId, rule: RuleId },
}

/// When a copy leaves the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Now,
    At(Instant),
}

/// Why a frame was not delivered at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Loss,
    Rate,
}

/// The second copy of a duplicated frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    None,
    Copy(Release),
    /// Chosen for duplication, but the rate limiter had no room for the copy.
    RateLimited,
}

/// The outcome of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop(Cause),
    Deliver {
        first: Release,
        duplicate: Duplicate,
        reordered: bool,
    },
}

impl Decision {
    /// Add this decision to `c` (not counting queue overflow, which the switch decides).
    pub fn count(&self, c: &mut FaultCounters) {
        match *self {
            Decision::Drop(Cause::Loss) => c.dropped_loss += 1,
            Decision::Drop(Cause::Rate) => c.dropped_rate += 1,
            Decision::Deliver {
                first,
                duplicate,
                reordered,
            } => {
                if let Release::At(_) = first {
                    c.delayed += 1;
                }
                match duplicate {
                    Duplicate::None => {}
                    Duplicate::Copy(r) => {
                        c.duplicated += 1;
                        if let Release::At(_) = r {
                            c.delayed += 1;
                        }
                    }
                    Duplicate::RateLimited => c.dropped_rate += 1,
                }
                if reordered {
                    c.reordered += 1;
                }
            }
        }
    }
}

/// A probability as a threshold on a uniform u64 draw.
#[derive(Debug, Clone, Copy)]
struct Chance(u64);

impl Chance {
    fn new(p: f64) -> Chance {
        if p <= 0.0 {
            Chance(0)
        } else if p >= 1.0 {
            Chance(u64::MAX)
        } else {
            // p < 1, so the product is below 2^64; `as` saturates if rounding reaches it.
            Chance((p * 18_446_744_073_709_551_616.0) as u64)
        }
    }

    fn hit(self, draw: u64) -> bool {
        self.0 == u64::MAX || draw < self.0
    }
}

/// A rule prepared for the hot path.
#[derive(Debug, Clone)]
struct Compiled {
    rule: Rule,
    noop: bool,
    loss: Chance,
    duplicate: Chance,
    reorder: Chance,
    delay_ns: u64,
    jitter_ns: u64,
    /// Bits per second, 0 for no limit.
    rate: u64,
}

impl Compiled {
    fn new(rule: Rule) -> Compiled {
        let i = rule.impairment;
        Compiled {
            rule,
            noop: i.is_none(),
            loss: Chance::new(i.loss),
            duplicate: Chance::new(i.duplicate),
            reorder: Chance::new(i.reorder),
            delay_ns: nanos(i.delay),
            jitter_ns: nanos(i.jitter),
            rate: i.rate.unwrap_or(0),
        }
    }
}

/// Whole nanoseconds of `d` (at most [`super::impair::MAX_DELAY`] here; saturating anyway).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The state of one directed link.
#[derive(Debug, Clone)]
struct LinkState {
    rng: SplitMix64,
    /// Token bucket: tokens in bit-nanoseconds per second (bits × 10⁹), possibly negative (a
    /// backlog), and when they were last refilled; `None` = full.
    bucket: Option<(i128, Instant)>,
    /// No frame of this link leaves before this instant (FIFO despite jitter).
    horizon: Option<Instant>,
}

impl LinkState {
    /// When a frame of `len` bytes may leave the token bucket of a `rate` bit/s link, or
    /// `None` if the backlog is full.
    fn take_tokens(&mut self, rate: u64, len: usize, now: Instant) -> Option<Instant> {
        let rate = i128::from(rate);
        let cap = i128::from(RATE_BURST_BYTES) * 8 * NANOS;
        let (tokens, refilled) = self.bucket.unwrap_or((cap, now));
        let elapsed =
            i128::try_from(now.saturating_duration_since(refilled).as_nanos()).unwrap_or(i128::MAX);
        let tokens = tokens.saturating_add(elapsed.saturating_mul(rate)).min(cap);
        let bits = i128::try_from(len).unwrap_or(i128::MAX / NANOS / 8) * 8;
        let after = tokens - bits * NANOS;
        if -after > i128::from(RATE_QUEUE_BYTES) * 8 * NANOS {
            self.bucket = Some((tokens, now));
            return None;
        }
        self.bucket = Some((after, now));
        if after >= 0 {
            Some(now)
        } else {
            let wait_ns = (-after + rate - 1) / rate;
            Some(now + Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)))
        }
    }

    /// When one copy leaves, or `None` if the rate limiter drops it.
    fn schedule(
        &mut self,
        rule: &Compiled,
        len: usize,
        now: Instant,
        jitter_draw: u64,
        reorder: bool,
    ) -> Option<Release> {
        let departs = if rule.rate > 0 {
            self.take_tokens(rule.rate, len, now)?
        } else {
            now
        };
        let at = if reorder && rule.delay_ns > 0 {
            departs
        } else if reorder {
            departs + REORDER_HOLD
        } else {
            let mut delay = rule.delay_ns;
            if rule.jitter_ns > 0 {
                let span = u128::from(2 * rule.jitter_ns + 1);
                // Below 2^64: the draw is below 2^64, the span at most 2^64.
                let offset = u64::try_from((u128::from(jitter_draw) * span) >> 64).unwrap_or(0);
                delay = delay - rule.jitter_ns + offset;
            }
            let at = (departs + Duration::from_nanos(delay)).max(self.horizon.unwrap_or(now));
            self.horizon = Some(at);
            at
        };
        Some(if at <= now {
            Release::Now
        } else {
            Release::At(at)
        })
    }
}

/// The rules and link states of one switch. See the module documentation.
pub struct FaultEngine {
    vlan: u32,
    seed: u64,
    all: Option<Compiled>,
    pairs: Vec<Compiled>,
    pair_index: HashMap<(Label, Label), u32>,
    partition: Option<Partition>,
    groups: HashMap<Label, u32>,
    links: Vec<LinkState>,
    link_index: HashMap<(u64, u64), u32>,
    stats: HashMap<Scope, FaultCounters>,
    partition_stats: FaultCounters,
}

impl FaultEngine {
    pub fn new(vlan: u32, seed: u64) -> FaultEngine {
        let mut e = FaultEngine {
            vlan,
            seed,
            all: None,
            pairs: Vec::new(),
            pair_index: HashMap::new(),
            partition: None,
            groups: HashMap::new(),
            links: Vec::new(),
            link_index: HashMap::new(),
            stats: HashMap::new(),
            partition_stats: FaultCounters::default(),
        };
        e.reset_links();
        e
    }

    /// Forget every link state; index 0 is the shared state of links beyond [`MAX_LINKS`].
    fn reset_links(&mut self) {
        self.links.clear();
        self.link_index.clear();
        self.links.push(LinkState {
            rng: SplitMix64::for_link(self.seed, self.vlan, u64::MAX, u64::MAX),
            bucket: None,
            horizon: None,
        });
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Use another run seed: every link starts a fresh stream (rules stay).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
        self.reset_links();
    }

    /// Whether any rule or partition is in force.
    pub fn is_active(&self) -> bool {
        self.all.is_some() || !self.pairs.is_empty() || self.partition.is_some()
    }

    /// Validate `rule`, then make it the rule of its scope (replacing the previous one). An
    /// all-zero rule for [`Scope::All`] removes the all rule; an all-zero pair rule stays and
    /// exempts the pair from the all rule. Nothing changes on error.
    pub fn apply(&mut self, rule: Rule) -> Result<(), ImpairError> {
        rule.validate()?;
        let rule = Rule {
            scope: rule.scope.normalised(),
            ..rule
        };
        match rule.scope {
            Scope::All => {
                self.all = (!rule.impairment.is_none()).then(|| Compiled::new(rule));
            }
            Scope::Between(a, b) => match self.pair_index.get(&(a, b)) {
                Some(&i) => self.pairs[i as usize] = Compiled::new(rule),
                None if self.pairs.len() >= MAX_PAIR_RULES => {
                    return Err(ImpairError::TooManyRules {
                        max: MAX_PAIR_RULES,
                    })
                }
                None => {
                    self.pair_index.insert((a, b), self.pairs.len() as u32);
                    self.pairs.push(Compiled::new(rule));
                }
            },
        }
        self.stats.entry(rule.scope).or_default();
        Ok(())
    }

    /// Validate `groups` (see [`Partition::new`]), then replace the partition.
    pub fn partition(&mut self, groups: Vec<Vec<Label>>) -> Result<(), ImpairError> {
        let partition = Partition::new(groups)?;
        self.groups = partition
            .groups()
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| g.iter().map(move |&l| (l, gi as u32)))
            .collect();
        self.partition = Some(partition);
        Ok(())
    }

    /// Remove every rule and the partition. Link states (streams, buckets) are kept, so a
    /// later rule continues each link's stream.
    pub fn heal(&mut self) {
        self.all = None;
        self.pairs.clear();
        self.pair_index.clear();
        self.partition = None;
        self.groups.clear();
    }

    /// The rules in force: the all rule first, then pair rules in the order first applied.
    pub fn rules(&self) -> Vec<Rule> {
        self.all.iter().chain(&self.pairs).map(|c| c.rule).collect()
    }

    pub fn current_partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// Counters per scope since the switch started (a scope keeps its counters across
    /// replacements and heals), all scope first, then pairs by label.
    pub fn scope_stats(&self) -> Vec<(Scope, FaultCounters)> {
        let mut v: Vec<(Scope, FaultCounters)> = self.stats.iter().map(|(s, c)| (*s, *c)).collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    /// Frames dropped by partitions since the switch started.
    pub fn partition_stats(&self) -> FaultCounters {
        self.partition_stats
    }

    /// What applies to deliveries from `src` to `dst`; creates the link state on first use.
    pub fn route(&mut self, src: Peer, dst: Peer) -> Route {
        let mut rule = None;
        if let (Some(a), Some(b)) = (src.label, dst.label) {
            if let (Some(ga), Some(gb)) = (self.groups.get(&a), self.groups.get(&b)) {
                if ga != gb {
                    return Route::Partitioned;
                }
            }
            if let Some(&i) = self.pair_index.get(&(a.min(b), a.max(b))) {
                if self.pairs[i as usize].noop {
                    return Route::Clear;
                }
                rule = Some(RuleId::Pair(i));
            }
        }
        let Some(rule) = rule.or(self.all.as_ref().map(|_| RuleId::All)) else {
            return Route::Clear;
        };
        Route::Impaired {
            link: self.link(src.key(), dst.key()),
            rule,
        }
    }

    fn link(&mut self, src: u64, dst: u64) -> LinkId {
        if let Some(&i) = self.link_index.get(&(src, dst)) {
            return LinkId(i);
        }
        if self.links.len() >= MAX_LINKS {
            return LinkId(0);
        }
        let i = self.links.len() as u32;
        self.links.push(LinkState {
            rng: SplitMix64::for_link(self.seed, self.vlan, src, dst),
            bucket: None,
            horizon: None,
        });
        self.link_index.insert((src, dst), i);
        LinkId(i)
    }

    /// Decide one delivery of a `len`-byte frame on a route returned by [`FaultEngine::route`]
    /// (with no rule change in between).
    pub fn decide(&mut self, link: LinkId, rule: RuleId, len: usize, now: Instant) -> Decision {
        let compiled = match rule {
            RuleId::All => self.all.as_ref(),
            RuleId::Pair(i) => self.pairs.get(i as usize),
        };
        let (Some(rule), Some(link)) = (compiled, self.links.get_mut(link.0 as usize)) else {
            return Decision::Deliver {
                first: Release::Now,
                duplicate: Duplicate::None,
                reordered: false,
            };
        };
        let draws: [u64; DRAWS_PER_DELIVERY] = std::array::from_fn(|_| link.rng.next_u64());
        if rule.loss.hit(draws[0]) {
            return Decision::Drop(Cause::Loss);
        }
        let reordered = rule.reorder.hit(draws[2]);
        let Some(first) = link.schedule(rule, len, now, draws[3], reordered) else {
            return Decision::Drop(Cause::Rate);
        };
        let duplicate = if rule.duplicate.hit(draws[1]) {
            match link.schedule(rule, len, now, draws[4], false) {
                Some(r) => Duplicate::Copy(r),
                None => Duplicate::RateLimited,
            }
        } else {
            Duplicate::None
        };
        Decision::Deliver {
            first,
            duplicate,
            reordered,
        }
    }

    /// Add the outcome of deliveries decided under `rule` to its scope's counters.
    pub fn record(&mut self, rule: RuleId, delta: &FaultCounters) {
        let scope = match rule {
            RuleId::All => self.all.as_ref().map(|c| c.rule.scope),
            RuleId::Pair(i) => self.pairs.get(i as usize).map(|c| c.rule.scope),
        };
        if let Some(scope) = scope {
            self.stats.entry(scope).or_default().add(delta);
        }
    }

    /// Count `n` deliveries dropped by the partition.
    pub fn record_partition(&mut self, n: u64) {
        self.partition_stats.dropped_partition += n;
    }

    /// Link states in use (for the memory bound's tests).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }
}

#[cfg(test)]
#[path = "faults_tests.rs"]
mod tests;
