//! What a network fault is, as the driver and the command line state it: [`Impairment`] (loss,
//! delay, jitter, duplicate, reorder, rate), its [`Scope`] (every delivery of the vlan, or the
//! frames between two hosts), a [`Rule`] joining both, a [`Partition`], their validation with
//! errors that name the offending argument ([`ImpairError`]), the parsers for the textual forms
//! (`tc`-style rates such as `1mbit`, durations such as `50ms`) and the log renderings
//! (`vlan1: loss 10% alice<->bob`).
//!
//! This module owns values and their checks only: it must not keep state, do I/O or decide
//! anything about frames (that is [`super::faults`]). Hosts are named by [`Label`]s chosen by
//! the driver (a machine keeps its label across reboots, while its switch port changes); a
//! function `Label -> name` turns them into names for messages.
//!
//! Rates follow `tc`'s unit table (case-insensitive): a bare number, `bit`, `kbit`, `mbit`,
//! `gbit`, `tbit` are bits per second (powers of 1000); `kibit`, `mibit`, `gibit`, `tibit` are
//! powers of 1024 bits per second; `bps`, `kbps`, `mbps`, `gbps`, `tbps` are **bytes** per second
//! (powers of 1000) and `kibps` … `tibps` bytes per second in powers of 1024. So `1mbit` is
//! 1 000 000 bit/s and `1mbps` is 8 000 000 bit/s.

use std::fmt;
use std::time::Duration;

/// A host as the switch's rules know it (the driver's machine id; the port number in the
/// standalone switch).
pub type Label = u32;

/// Longest `delay` + `jitter`: a frame waits at most this long in the switch.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Slowest `rate`, in bits per second (1 kB/s).
pub const MIN_RATE: u64 = 8_000;
/// Fastest `rate`, in bits per second (1 Tbit/s; far above what the switch forwards).
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// Pair rules (`between`) per switch, at most.
pub const MAX_PAIR_RULES: usize = 4096;
/// Labels in one partition, at most.
pub const MAX_PARTITION_LABELS: usize = 4096;

/// How the frames of one scope are impaired. The default impairs nothing.
///
/// * `loss`, `duplicate`, `reorder`: probabilities in 0…=1, decided per delivery (one frame
///   towards one receiving port).
/// * `delay` ± uniform `jitter` (`jitter` ≤ `delay`, `delay` + `jitter` ≤ [`MAX_DELAY`]);
///   jitter never reorders the frames of one link.
/// * `reorder`: with `delay`, a chosen frame skips the delay and overtakes the frames waiting
///   on its link (netem's meaning); without `delay`, a chosen frame is held back for
///   [`super::faults::REORDER_HOLD`] so that the frames right behind it overtake it.
/// * `rate`: bits per second, a token bucket per directed link; excess frames wait in a
///   bounded queue, then are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub duplicate: f64,
    pub reorder: f64,
    pub rate: Option<u64>,
}

impl Impairment {
    /// Check every field; the first problem found is returned, naming the argument.
    pub fn validate(&self) -> Result<(), ImpairError> {
        probability("loss", self.loss)?;
        probability("duplicate", self.duplicate)?;
        probability("reorder", self.reorder)?;
        if self.jitter > self.delay {
            return Err(ImpairError::JitterAboveDelay {
                jitter: self.jitter,
                delay: self.delay,
            });
        }
        let total = self.delay.saturating_add(self.jitter);
        if total > MAX_DELAY {
            return Err(ImpairError::TooLong {
                arg: "delay",
                value: total,
                max: MAX_DELAY,
            });
        }
        if let Some(bps) = self.rate {
            if !(MIN_RATE..=MAX_RATE).contains(&bps) {
                return Err(ImpairError::RateOutOfRange { bps });
            }
        }
        Ok(())
    }

    /// Whether this impairment leaves every frame alone.
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }
}

fn probability(arg: &'static str, value: f64) -> Result<(), ImpairError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ImpairError::Probability { arg, value })
    }
}

/// Which deliveries a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every delivery on the vlan, labelled or not.
    All,
    /// Deliveries between two labelled hosts, both directions; built by [`Scope::between`]
    /// (smaller label first).
    Between(Label, Label),
}

impl Scope {
    /// The scope of the frames between `a` and `b`, either direction.
    pub fn between(a: Label, b: Label) -> Scope {
        Scope::Between(a.min(b), a.max(b))
    }

    fn validate(&self) -> Result<(), ImpairError> {
        match *self {
            Scope::Between(a, b) if a == b => Err(ImpairError::SameHost { label: a }),
            _ => Ok(()),
        }
    }

    /// The same scope with the smaller label first.
    pub fn normalised(self) -> Scope {
        match self {
            Scope::Between(a, b) => Scope::between(a, b),
            all => all,
        }
    }
}

/// One impairment for one scope. A rule replaces the earlier rule of the same scope; the most
/// specific rule of a delivery wins (a pair rule, even an all-zero one, overrides the all rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub scope: Scope,
    pub impairment: Impairment,
}

impl Rule {
    pub fn validate(&self) -> Result<(), ImpairError> {
        self.scope.validate()?;
        self.impairment.validate()
    }

    /// The log line for this rule, e.g. `vlan1: loss 10%, delay 50ms alice<->bob`.
    pub fn describe(&self, vlan: u32, names: &dyn Fn(Label) -> String) -> String {
        let mut out = format!("vlan{vlan}: {}", self.impairment);
        if let Scope::Between(a, b) = self.scope {
            out.push(' ');
            out.push_str(&names(a));
            out.push_str("<->");
            out.push_str(&names(b));
        }
        out
    }
}

impl fmt::Display for Impairment {
    /// `loss 10%, delay 50ms ± 5ms, duplicate 1%, reorder 2%, rate 1mbit`, or `no impairment`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.loss > 0.0 {
            parts.push(format!("loss {}", percent(self.loss)));
        }
        if !self.delay.is_zero() {
            let mut d = format!("delay {}", format_duration(self.delay));
            if !self.jitter.is_zero() {
                d.push_str(&format!(" ± {}", format_duration(self.jitter)));
            }
            parts.push(d);
        }
        if self.duplicate > 0.0 {
            parts.push(format!("duplicate {}", percent(self.duplicate)));
        }
        if self.reorder > 0.0 {
            parts.push(format!("reorder {}", percent(self.reorder)));
        }
        if let Some(bps) = self.rate {
            parts.push(format!("rate {}", format_rate(bps)));
        }
        if parts.is_empty() {
            f.write_str("no impairment")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Groups of hosts that cannot reach each other: a delivery between labels of two different
/// groups is dropped. Labels in no group are unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    groups: Vec<Vec<Label>>,
}

impl Partition {
    /// Validate `groups`: at least two non-empty groups, no label in two groups (a label
    /// repeated inside one group is fine), at most [`MAX_PARTITION_LABELS`] labels.
    pub fn new(groups: Vec<Vec<Label>>) -> Result<Partition, ImpairError> {
        let non_empty = groups.iter().filter(|g| !g.is_empty()).count();
        if non_empty < 2 {
            return Err(ImpairError::TooFewGroups { groups: non_empty });
        }
        let total: usize = groups.iter().map(Vec::len).sum();
        if total > MAX_PARTITION_LABELS {
            return Err(ImpairError::TooManyLabels {
                max: MAX_PARTITION_LABELS,
            });
        }
        let mut seen: Vec<(Label, usize)> = Vec::with_capacity(total);
        for (gi, g) in groups.iter().enumerate() {
            for &label in g {
                match seen.iter().find(|(l, _)| *l == label) {
                    Some(&(_, other)) if other != gi => {
                        return Err(ImpairError::LabelInTwoGroups { label });
                    }
                    Some(_) => {}
                    None => seen.push((label, gi)),
                }
            }
        }
        Ok(Partition { groups })
    }

    pub fn groups(&self) -> &[Vec<Label>] {
        &self.groups
    }

    /// The log line, e.g. `vlan1: partition alice, bob | carol`.
    pub fn describe(&self, vlan: u32, names: &dyn Fn(Label) -> String) -> String {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| g.iter().map(|&l| names(l)).collect::<Vec<_>>().join(", "))
            .collect();
        format!("vlan{vlan}: partition {}", groups.join(" | "))
    }
}

/// Why an impairment, a partition or one of their textual forms was refused. Nothing of a
/// refused request is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum ImpairError {
    /// A probability outside 0…1 (or NaN).
    Probability {
        arg: &'static str,
        value: f64,
    },
    /// A number of seconds that is negative, NaN or infinite.
    Seconds {
        arg: &'static str,
        value: f64,
    },
    /// A duration above its maximum.
    TooLong {
        arg: &'static str,
        value: Duration,
        max: Duration,
    },
    JitterAboveDelay {
        jitter: Duration,
        delay: Duration,
    },
    /// A rate string that is not a number with a `tc` unit.
    RateSyntax {
        input: String,
    },
    RateOutOfRange {
        bps: u64,
    },
    /// A command-line value that does not parse (`--loss 10%%`, `--delay soon`).
    Syntax {
        arg: &'static str,
        input: String,
        expected: &'static str,
    },
    /// `between` names the same host twice.
    SameHost {
        label: Label,
    },
    LabelInTwoGroups {
        label: Label,
    },
    TooFewGroups {
        groups: usize,
    },
    TooManyLabels {
        max: usize,
    },
    TooManyRules {
        max: usize,
    },
}

impl ImpairError {
    /// The message with labels turned into names by `names` (the driver passes machine names).
    pub fn describe(&self, names: &dyn Fn(Label) -> String) -> String {
        match self {
            ImpairError::SameHost { label } => format!(
                "between: both sides are {}; name two different machines",
                names(*label)
            ),
            ImpairError::LabelInTwoGroups { label } => format!(
                "partition: {} is in two groups; a machine belongs to at most one",
                names(*label)
            ),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for ImpairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImpairError::Probability { arg, value } => {
                write!(f, "{arg} must be a probability from 0 to 1, got {value}")
            }
            ImpairError::Seconds { arg, value } => write!(
                f,
                "{arg} must be a finite, non-negative number of seconds, got {value}"
            ),
            ImpairError::TooLong { arg, value, max } => write!(
                f,
                "{arg} of {} is too long: delay plus jitter may be at most {}",
                format_duration(*value),
                format_duration(*max)
            ),
            ImpairError::JitterAboveDelay { jitter, delay } => write!(
                f,
                "jitter ({}) must not exceed delay ({}): a frame cannot leave before it arrived",
                format_duration(*jitter),
                format_duration(*delay)
            ),
            ImpairError::RateSyntax { input } => write!(
                f,
                "rate {input:?} is not a bandwidth: write a number with a tc unit such as \
                 500kbit, 1mbit, 1gbit (bits/s) or 100kbps (bytes/s)"
            ),
            ImpairError::RateOutOfRange { bps } => write!(
                f,
                "rate of {} is out of range: use {} to {} (to cut a link, use loss=1 or a \
                 partition)",
                format_rate(*bps),
                format_rate(MIN_RATE),
                format_rate(MAX_RATE)
            ),
            ImpairError::Syntax {
                arg,
                input,
                expected,
            } => write!(f, "{arg} {input:?} is not {expected}"),
            ImpairError::SameHost { label } => write!(
                f,
                "between: both sides are label {label}; name two different hosts"
            ),
            ImpairError::LabelInTwoGroups { label } => write!(
                f,
                "partition: label {label} is in two groups; a host belongs to at most one"
            ),
            ImpairError::TooFewGroups { groups } => write!(
                f,
                "partition needs at least two non-empty groups, got {groups}"
            ),
            ImpairError::TooManyLabels { max } => {
                write!(f, "partition names more than {max} hosts")
            }
            ImpairError::TooManyRules { max } => write!(
                f,
                "more than {max} between-rules on one vlan; heal() first or use fewer pairs"
            ),
        }
    }
}

impl std::error::Error for ImpairError {}

/// A duration given in seconds (what the Python API passes), checked: finite, not negative,
/// at most [`MAX_DELAY`].
pub fn seconds(arg: &'static str, value: f64) -> Result<Duration, ImpairError> {
    if !value.is_finite() || value < 0.0 {
        return Err(ImpairError::Seconds { arg, value });
    }
    if value > MAX_DELAY.as_secs_f64() {
        return Err(ImpairError::TooLong {
            arg,
            value: Duration::from_secs_f64(value.min(1e9)),
            max: MAX_DELAY,
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// A command-line duration: seconds as a plain number (`0.05`) or with a unit `s`, `ms`, `us`
/// (`50ms`, `1.5s`, `200us`).
pub fn parse_duration(arg: &'static str, input: &str) -> Result<Duration, ImpairError> {
    let s = input.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| ImpairError::Syntax {
        arg,
        input: input.to_string(),
        expected: "a duration such as 50ms, 0.05 or 1s",
    })?;
    seconds(arg, value * scale)
}

/// A command-line probability: `0.1` or `10%`.
pub fn parse_probability(arg: &'static str, input: &str) -> Result<f64, ImpairError> {
    let s = input.trim();
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (s, 1.0),
    };
    let value: f64 = number.trim().parse().map_err(|_| ImpairError::Syntax {
        arg,
        input: input.to_string(),
        expected: "a probability such as 0.1 or 10%",
    })?;
    let value = value * scale;
    probability(arg, value)?;
    Ok(value)
}

/// `tc`'s rate units: suffix (lower case) and bits per second per unit.
const RATE_UNITS: &[(&str, f64)] = &[
    ("bit", 1.0),
    ("kbit", 1e3),
    ("mbit", 1e6),
    ("gbit", 1e9),
    ("tbit", 1e12),
    ("kibit", 1024.0),
    ("mibit", 1048576.0),
    ("gibit", 1073741824.0),
    ("tibit", 1099511627776.0),
    ("bps", 8.0),
    ("kbps", 8e3),
    ("mbps", 8e6),
    ("gbps", 8e9),
    ("tbps", 8e12),
    ("kibps", 8.0 * 1024.0),
    ("mibps", 8.0 * 1048576.0),
    ("gibps", 8.0 * 1073741824.0),
    ("tibps", 8.0 * 1099511627776.0),
];

/// Parse a `tc`-style rate (see the module documentation) into bits per second, checked
/// against [`MIN_RATE`]…[`MAX_RATE`].
pub fn parse_rate(input: &str) -> Result<u64, ImpairError> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let syntax = || ImpairError::RateSyntax {
        input: input.to_string(),
    };
    let value: f64 = number.parse().map_err(|_| syntax())?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale = if unit.is_empty() {
        1.0
    } else {
        RATE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, scale)| scale)
            .ok_or_else(syntax)?
    };
    let bps = (value * scale).round();
    if !bps.is_finite() || bps > MAX_RATE as f64 {
        return Err(ImpairError::RateOutOfRange { bps: u64::MAX });
    }
    let bps = bps as u64;
    if bps < MIN_RATE {
        return Err(ImpairError::RateOutOfRange { bps });
    }
    Ok(bps)
}

/// Bits per second in the largest decimal `tc` unit that divides them: `1mbit`, `1500kbit`.
pub fn format_rate(bps: u64) -> String {
    for (unit, scale) in [
        ("tbit", 1_000_000_000_000u64),
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bps >= scale && bps % scale == 0 {
            return format!("{}{unit}", bps / scale);
        }
    }
    format!("{bps}bit")
}

/// `50ms`, `1.5s`, `250us`: the shortest exact-enough rendering for log lines.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".to_string()
    } else if ns % 1_000_000_000 == 0 || ns >= 10_000_000_000 {
        format!("{}s", trim(d.as_secs_f64()))
    } else if ns >= 1_000_000 {
        format!("{}ms", trim(ns as f64 / 1e6))
    } else {
        format!("{}us", trim(ns as f64 / 1e3))
    }
}

/// `0.1` → `10%`, `0.025` → `2.5%`.
fn percent(p: f64) -> String {
    format!("{}%", trim(p * 100.0))
}

/// A number with at most three decimals and no trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
#[path = "impair_tests.rs"]
mod tests;
