//! Sending a batch of frames to one VDE endpoint's data socket: as few `sendmmsg` calls as the
//! kernel allows, every frame it refuses dropped and counted by reason (a full receiver, a
//! receiver that is gone, another send error). Both the plain path ([`super::forward`]) and
//! the path with network faults ([`super::impaired`]) end here, through
//! [`super::tap::DataPort`] (which writes to a tap one frame at a time instead). It never
//! blocks and never retries a refused frame: a slow receiver loses frames, it never slows the
//! loop.

use mio::net::UnixDatagram;
use rustix::io::Errno;
use rustix::net::{MMsgHdr, SendFlags};

use super::PortCounters;

/// Send `msgs` to one endpoint's data socket with as few `sendmmsg` calls as possible; whatever
/// the kernel refuses is dropped and counted by reason.
pub(super) fn send_batch(
    data: &UnixDatagram,
    counters: &mut PortCounters,
    msgs: &mut [MMsgHdr<'_>],
) {
    let mut sent = 0;
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    while sent < msgs.len() {
        match rustix::net::sendmmsg(data, &mut msgs[sent..], flags) {
            Ok(n) if n > 0 => {
                for m in &msgs[sent..sent + n] {
                    counters.bytes_out += m.bytes_sent() as u64;
                }
                counters.frames_out += n as u64;
                sent += n;
            }
            Err(Errno::INTR) => {}
            result => {
                let rest = (msgs.len() - sent) as u64;
                let drops = &mut counters.drops;
                match result {
                    Err(Errno::AGAIN) => drops.receiver_full += rest,
                    Err(Errno::CONNREFUSED) | Err(Errno::NOTCONN) => drops.receiver_gone += rest,
                    _ => drops.send_error += rest,
                }
                return;
            }
        }
    }
}
