//! The contract between ntd's single poll loop and everything that owns fds on it.
//!
//! One `mio::Poll` owns every fd. A token is split into an [`Owner`] (high bits: the driver,
//! the shim link, a machine, a switch) and a slot inside that owner (low [`SLOT_BITS`] bits),
//! so the loop routes an event to its owner without a lookup table. Every owner implements
//! [`LoopMember`]: it handles its own events, says when it next needs the loop's attention and
//! handles that timer; what it needs from the loop comes in a [`Ctx`]. This module does no I/O.

use crate::log::Logger;
use mio::event::Event;
use mio::{Registry, Token};
use std::time::Instant;

/// Bits of a token reserved for the slot inside one owner.
pub const SLOT_BITS: u32 = 20;
/// Largest slot an owner may use.
pub const MAX_SLOT: usize = (1 << SLOT_BITS) - 1;

/// Owner ids of machines start here; switches start at [`FIRST_SWITCH`], far above any
/// machine count.
const FIRST_MACHINE: usize = 2;
const FIRST_SWITCH: usize = 1 << 24;

/// Who owns a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The driver itself (its signal fd).
    Driver,
    /// The Python shim: its pipes and its pidfd.
    Shim,
    /// Machine number `n` (its index in the driver's list).
    Machine(usize),
    /// The switch of the `n`-th configured vlan.
    Switch(usize),
}

impl Owner {
    pub fn id(self) -> usize {
        match self {
            Owner::Driver => 0,
            Owner::Shim => 1,
            Owner::Machine(n) => FIRST_MACHINE + n,
            Owner::Switch(n) => FIRST_SWITCH + n,
        }
    }

    /// The token for `slot` of this owner.
    pub fn token(self, slot: usize) -> Token {
        token(self.id(), slot)
    }
}

impl From<usize> for Owner {
    /// Every id names an owner; whether that owner exists is the loop's business.
    fn from(id: usize) -> Self {
        match id {
            0 => Owner::Driver,
            1 => Owner::Shim,
            n if n >= FIRST_SWITCH => Owner::Switch(n - FIRST_SWITCH),
            n => Owner::Machine(n - FIRST_MACHINE),
        }
    }
}

/// Build the token for `slot` of the owner with id `owner`.
pub fn token(owner: usize, slot: usize) -> Token {
    debug_assert!(slot <= MAX_SLOT);
    Token((owner << SLOT_BITS) | (slot & MAX_SLOT))
}

/// Split a token into `(owner id, slot)`.
pub fn split(token: Token) -> (usize, usize) {
    (token.0 >> SLOT_BITS, token.0 & MAX_SLOT)
}

/// What a loop member may use while it handles an event or a timer.
pub struct Ctx<'a> {
    /// Where fds are registered, re-armed and deregistered.
    pub registry: &'a Registry,
    /// The run's log (terminal, XML, JUnit, trace sinks).
    pub log: &'a mut Logger,
}

/// Everything on the poll loop: machines, switches, the shim link.
pub trait LoopMember {
    /// Handle readiness of one of this member's fds. `slot` is the token's low bits; a slot
    /// the member does not know is logged, never ignored silently.
    fn on_event(&mut self, cx: &mut Ctx<'_>, slot: usize, ev: &Event);

    /// The earliest instant this member needs [`LoopMember::on_timer`], if any.
    fn next_deadline(&self) -> Option<Instant>;

    /// Called when `now` has reached [`LoopMember::next_deadline`] (perhaps later, never
    /// earlier).
    fn on_timer(&mut self, cx: &mut Ctx<'_>, now: Instant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_any_owner_and_slot_splits_back() {
        let t = token(7, 12345);
        assert_eq!(split(t), (7, 12345));
        assert_eq!(split(token(0, MAX_SLOT)), (0, MAX_SLOT));
    }

    #[test]
    fn owner_ids_roundtrip_through_tokens() {
        for o in [
            Owner::Driver,
            Owner::Shim,
            Owner::Machine(0),
            Owner::Machine(500),
            Owner::Switch(0),
            Owner::Switch(3),
        ] {
            assert_eq!(Owner::from(o.id()), o);
            let (id, slot) = split(o.token(5));
            assert_eq!((Owner::from(id), slot), (o, 5));
        }
    }
}
