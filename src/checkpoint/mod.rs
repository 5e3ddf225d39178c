//! Boot checkpoints (`--checkpoints DIR`): the parts that do not touch a machine.
//!
//! A checkpoint is one machine's state right after its boot: QEMU's migration stream, copies of
//! its disk overlays, its console lines, and what ntd holds for it (the shell session, the 9p
//! shares it had mounted, the guest clock's offset). This module owns the key that decides
//! whether a checkpoint fits a machine ([`key`]), the directory layout with its checksums,
//! atomic commits, locks and the size cap ([`store`], [`manifest`]), the rule of which
//! machines are restored and saved and when the script may go on ([`plan`]), and the guest
//! commands around a save and a restore ([`guest`]). The machine-side mechanics (QMP,
//! migration, the session) live in `machine::checkpoint`; the driver decides when they run.
//! Everything here is pure or reads and writes files only, never a socket.

pub mod capsule;
pub mod codec;
pub mod guest;
pub mod key;
pub mod manifest;
pub mod plan;
pub mod sha256;
pub mod store;

/// Version of the checkpoint format and of what ntd does around a save; part of every key.
pub const FORMAT_VERSION: u32 = 1;
/// File names inside an entry.
pub const MANIFEST: &str = "manifest";
pub const RAM: &str = "ram";
pub const CONSOLE: &str = "console";
/// Default size cap of the checkpoint directory.
pub const DEFAULT_MAX_SIZE: u64 = 8 << 30;
