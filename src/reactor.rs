//! The token layout shared by every owner of file descriptors in ntd's single poll loop.
//!
//! One `mio::Poll` owns every fd. A token is split into an owner id (high bits) and a slot
//! inside that owner (low [`SLOT_BITS`] bits), so the loop can route an event to its owner
//! (the driver, a machine, a switch) without a global lookup table. This module must not do
//! any I/O itself.

use mio::Token;

/// Bits of a token reserved for the slot inside one owner.
pub const SLOT_BITS: u32 = 20;
/// Largest slot an owner may use.
pub const MAX_SLOT: usize = (1 << SLOT_BITS) - 1;

/// Build the token for `slot` of `owner`.
pub fn token(owner: usize, slot: usize) -> Token {
    debug_assert!(slot <= MAX_SLOT);
    Token((owner << SLOT_BITS) | (slot & MAX_SLOT))
}

/// Split a token into `(owner, slot)`.
pub fn split(token: Token) -> (usize, usize) {
    (token.0 >> SLOT_BITS, token.0 & MAX_SLOT)
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
}
