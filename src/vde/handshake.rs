//! The control side of a switch: accepting control connections, assembling and answering
//! libvdeplug requests (protocols.md §1.3–1.6), creating each endpoint's data socket, watching
//! control streams for EOF, and closing endpoints. It must not forward frames (see
//! [`super::forward`]) and must never block: every socket is non-blocking and every read is
//! bounded per wake-up.

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use mio::net::{UnixDatagram, UnixStream};
use mio::{Interest, Registry};
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use super::delay_queue::DelayQueue;
use super::tap::{DataPort, Tap};
use super::wire::{self, Assembly, PortRequest, Request, RequestBuffer};
use super::{
    io_err, slot, CloseReason, Endpoint, PortCounters, Progress, Switch, SwitchEvent, VdeError,
    ACCEPTS_PER_WAKEUP, CTL_READS_PER_WAKEUP, KIND_BITS, KIND_CTL, KIND_DATA, KIND_PENDING,
    MAX_ENDPOINTS, MAX_PENDING,
};
use crate::reactor;

pub(super) struct Pending {
    pub(super) stream: UnixStream,
    pub(super) request: RequestBuffer,
    pub(super) deadline: Instant,
    /// The connecting process (SO_PEERCRED at accept).
    pub(super) pid: Option<u32>,
}

/// SO_PEERCRED of a connected unix stream: the pid of the process that called `connect`, or
/// `None` when the kernel cannot say (pid 0: a peer in another pid namespace).
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    #[repr(C)]
    struct UCred {
        pid: i32,
        uid: u32,
        gid: u32,
    }
    extern "C" {
        fn getsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *mut c_void,
            len: *mut u32,
        ) -> c_int;
    }
    const SOL_SOCKET: c_int = 1;
    const SO_PEERCRED: c_int = 17;
    let mut cred = UCred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<UCred>() as u32;
    // SAFETY: `stream` is an open socket for the duration of the call; `cred` is a writable,
    // initialised `struct ucred` of `len` bytes (the kernel writes at most `len`). Plain
    // integers, so any value the kernel writes (including pid 0) is valid. rustix's own
    // wrapper stores the pid as a NonZero type, which pid 0 would violate.
    let rc = unsafe {
        getsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_PEERCRED,
            (&mut cred as *mut UCred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// The `pid=N` (vdeplug4) or `PID=N` (vde2) word of a libvdeplug description.
pub(super) fn description_pid(description: &str) -> Option<u32> {
    description.split_whitespace().find_map(|w| {
        w.strip_prefix("pid=")
            .or_else(|| w.strip_prefix("PID="))
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
    })
}

/// What [`Switch::connect_endpoint`] built, before the endpoint is stored.
struct NewEndpoint {
    index: usize,
    port: u32,
    id: u32,
    data: UnixDatagram,
    path: PathBuf,
}

impl Switch {
    pub(super) fn accept_all(&mut self, registry: &Registry) -> Progress {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let Some(listener) = self.listener.as_ref() else {
                return Progress::Drained;
            };
            match listener.accept() {
                Ok((stream, _)) => self.add_pending(registry, stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    // E.g. EMFILE: the connection stays queued; report and retry on the next
                    // wake-up instead of spinning.
                    self.error(VdeError::Accept { source });
                    return Progress::Drained;
                }
            }
        }
        Progress::More
    }

    fn add_pending(&mut self, registry: &Registry, mut stream: UnixStream) {
        let live = self.pending.iter().flatten().count();
        if live >= MAX_PENDING {
            self.reject(VdeError::TooManyPending { max: MAX_PENDING });
            return;
        }
        let index = match self.pending.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        let token = reactor::token(self.owner, slot(index, KIND_PENDING));
        if let Err(source) = registry.register(&mut stream, token, Interest::READABLE) {
            self.error(VdeError::Register { source });
            return;
        }
        let deadline = Instant::now() + self.request_timeout;
        let pid = peer_pid(&stream);
        self.pending[index] = Some(Pending {
            stream,
            request: RequestBuffer::new(),
            deadline,
            pid,
        });
    }

    pub(super) fn drop_pending(&mut self, registry: &Registry, index: usize, reason: VdeError) {
        if let Some(mut p) = self.pending.get_mut(index).and_then(Option::take) {
            let _ = registry.deregister(&mut p.stream);
            self.reject(reason);
        }
    }

    /// Read what a mid-handshake client sent; once the header is complete, answer it.
    pub(super) fn read_pending(&mut self, registry: &Registry, index: usize) {
        let Some(p) = self.pending.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let mut eof = false;
        let mut failure = None;
        loop {
            let spare = p.request.spare();
            if spare.is_empty() {
                break; // overflowed; decided below
            }
            match rustix::net::recv(&p.stream, spare, RecvFlags::DONTWAIT) {
                Ok((_, 0)) => {
                    eof = true;
                    break;
                }
                Ok((_, n)) => p.request.advance(n),
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => {
                    failure = Some(io_err(e));
                    break;
                }
            }
        }
        let got = p.request.len();
        match p.request.state() {
            Assembly::Overflow => {
                self.drop_pending(registry, index, VdeError::RequestTooLong { got })
            }
            Assembly::NeedMore => {
                if let Some(source) = failure {
                    self.drop_pending(registry, index, VdeError::ReadRequest { source });
                } else if eof {
                    self.drop_pending(registry, index, VdeError::ClosedEarly { got });
                }
            }
            Assembly::Ready => {
                let parsed = p.request.parse();
                let Some(p) = self.pending[index].take() else {
                    return;
                };
                let result = match parsed {
                    Ok(request) => self.open_endpoint(registry, p.stream, request, p.pid),
                    Err(e) => {
                        let mut stream = p.stream;
                        let _ = registry.deregister(&mut stream);
                        Err(VdeError::Request(e))
                    }
                };
                match result {
                    Ok(()) => self.requests_accepted += 1,
                    Err(reason) => self.reject(reason),
                }
            }
        }
    }

    fn port_in_use(&self, port: u32) -> bool {
        self.active
            .iter()
            .filter_map(|&i| self.endpoints[i].as_ref())
            .any(|ep| ep.port == port)
    }

    fn choose_port(&self, want: PortRequest) -> Result<u32, VdeError> {
        let max = self.max_ports - 1;
        match want {
            PortRequest::Management => Ok(0),
            PortRequest::Explicit(p) if p > max => Err(VdeError::PortOutOfRange { port: p, max }),
            PortRequest::Explicit(p) => Ok(p),
            PortRequest::Any => (1..=max)
                .find(|&p| !self.port_in_use(p))
                .ok_or(VdeError::NoFreePort { max }),
        }
    }

    /// Create the endpoint for an accepted request and reply; on failure the control stream
    /// is deregistered and closed (the client sees EOF instead of a reply).
    fn open_endpoint(
        &mut self,
        registry: &Registry,
        mut stream: UnixStream,
        req: Request,
        peer_pid: Option<u32>,
    ) -> Result<(), VdeError> {
        let description = req.description.clone();
        let pid = peer_pid.or_else(|| description_pid(&description));
        let client_path = req.data_path.clone();
        let new = match self.connect_endpoint(registry, &mut stream, req) {
            Ok(new) => new,
            Err(e) => {
                let _ = registry.deregister(&mut stream);
                return Err(e);
            }
        };
        let vlan = self.vlan;
        let (port, endpoint) = (new.port, new.id);
        self.push_event(SwitchEvent::PortOpened {
            vlan,
            port,
            endpoint,
            description: description.clone(),
            pid,
        });
        self.endpoints[new.index] = Some(Endpoint {
            port: new.port,
            id: new.id,
            ctl: Some(stream),
            data: DataPort::Socket(new.data),
            path: new.path,
            client_path,
            description,
            pid,
            label: self.label_by_port.then_some(new.port),
            queue: DelayQueue::new(),
            counters: PortCounters::default(),
        });
        self.active.push(new.index);
        Ok(())
    }

    /// The handshake proper: choose the port, connect to the client's data socket, bind
    /// `NNN.K`, reply, and register both sockets under the endpoint's tokens.
    fn connect_endpoint(
        &mut self,
        registry: &Registry,
        stream: &mut UnixStream,
        req: Request,
    ) -> Result<NewEndpoint, VdeError> {
        if self.active.len() >= MAX_ENDPOINTS {
            return Err(VdeError::TooManyEndpoints { max: MAX_ENDPOINTS });
        }
        let port = self.choose_port(req.port)?;
        let client_err = |e: Errno| VdeError::ClientSocket {
            path: req.data_path.clone(),
            source: io_err(e),
        };
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| VdeError::DataSocket {
            path: self.dir.clone(),
            source: io_err(e),
        })?;
        // Connect before replying: vdeplug4 unlinks its socket file right after the reply.
        let client_addr = SocketAddrUnix::new(req.data_path.as_path()).map_err(client_err)?;
        rustix::net::connect(&fd, &client_addr).map_err(client_err)?;

        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let path = self.dir.join(format!("{port:03}.{id}"));
        let data_err = |e: Errno| VdeError::DataSocket {
            path: path.clone(),
            source: io_err(e),
        };
        let _ = std::fs::remove_file(&path); // a stale file from a crashed switch
        let addr = SocketAddrUnix::new(path.as_path()).map_err(data_err)?;
        rustix::net::bind(&fd, &addr).map_err(data_err)?;
        let unlink_on_error = |e: VdeError| {
            let _ = std::fs::remove_file(&path);
            e
        };
        rustix::fs::chmod(&path, Mode::from_raw_mode(0o600))
            .map_err(|e| unlink_on_error(data_err(e)))?;
        if let Some(n) = self.send_buffer {
            // Best effort: FORCE needs CAP_NET_ADMIN, the plain call is capped by wmem_max.
            if rustix::net::sockopt::set_socket_send_buffer_size_force(&fd, n).is_err() {
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, n);
            }
        }

        let reply =
            wire::encode_sockaddr_un(&path).map_err(|e| unlink_on_error(VdeError::Request(e)))?;
        match rustix::net::send(&*stream, &reply, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) if n == reply.len() => {}
            Ok(n) => {
                let source = io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write of {n} bytes"),
                );
                return Err(unlink_on_error(VdeError::Reply { source }));
            }
            Err(e) => return Err(unlink_on_error(VdeError::Reply { source: io_err(e) })),
        }

        let index = match self.endpoints.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.endpoints.push(None);
                self.endpoints.len() - 1
            }
        };
        let mut data = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd));
        let ctl_token = reactor::token(self.owner, slot(index, KIND_CTL));
        let data_token = reactor::token(self.owner, slot(index, KIND_DATA));
        let registered = registry
            .reregister(stream, ctl_token, Interest::READABLE)
            .and_then(|()| registry.register(&mut data, data_token, Interest::READABLE));
        if let Err(source) = registered {
            let _ = registry.deregister(&mut data);
            return Err(unlink_on_error(VdeError::Register { source }));
        }
        Ok(NewEndpoint {
            index,
            port,
            id,
            data,
            path,
        })
    }

    /// Plug `tap` into the switch as one more endpoint on a free port: frames from the host's
    /// bridge enter the vlan through it, and the vlan's frames reach the bridge. Reported as a
    /// [`SwitchEvent::PortOpened`] without a pid (label it with [`Switch::label_endpoint`]).
    /// Returns the endpoint id.
    pub fn attach_tap(&mut self, registry: &Registry, tap: Tap) -> Result<u32, VdeError> {
        if self.active.len() >= MAX_ENDPOINTS {
            return Err(VdeError::TooManyEndpoints { max: MAX_ENDPOINTS });
        }
        let port = self.choose_port(PortRequest::Any)?;
        let index = match self.endpoints.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.endpoints.push(None);
                self.endpoints.len() - 1
            }
        };
        let description = format!("tap {}", tap.name());
        let mut data = DataPort::Tap(tap);
        let token = reactor::token(self.owner, slot(index, KIND_DATA));
        data.register(registry, token)
            .map_err(|source| VdeError::Register { source })?;
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let vlan = self.vlan;
        self.push_event(SwitchEvent::PortOpened {
            vlan,
            port,
            endpoint: id,
            description: description.clone(),
            pid: None,
        });
        self.endpoints[index] = Some(Endpoint {
            port,
            id,
            ctl: None,
            data,
            path: PathBuf::new(),
            client_path: PathBuf::new(),
            description,
            pid: None,
            label: self.label_by_port.then_some(port),
            queue: DelayQueue::new(),
            counters: PortCounters::default(),
        });
        self.active.push(index);
        Ok(id)
    }

    pub(super) fn read_ctl(&mut self, registry: &Registry, index: usize) -> Progress {
        let Some(ctl) = self
            .endpoints
            .get(index)
            .and_then(Option::as_ref)
            .and_then(|ep| ep.ctl.as_ref())
        else {
            return Progress::Drained;
        };
        let mut scratch = [0u8; 256];
        for _ in 0..CTL_READS_PER_WAKEUP {
            match rustix::net::recv(ctl, &mut scratch[..], RecvFlags::DONTWAIT) {
                Ok((_, 0)) => {
                    self.close_endpoint(registry, index, CloseReason::ControlClosed);
                    return Progress::Drained;
                }
                Ok(_) => {} // clients never write after the request; ignore
                Err(Errno::AGAIN) => return Progress::Drained,
                Err(Errno::INTR) => {}
                Err(e) => {
                    self.close_endpoint(registry, index, CloseReason::ControlError(io_err(e)));
                    return Progress::Drained;
                }
            }
        }
        Progress::More
    }

    pub(super) fn close_endpoint(
        &mut self,
        registry: &Registry,
        index: usize,
        reason: CloseReason,
    ) {
        let Some(mut ep) = self.endpoints.get_mut(index).and_then(Option::take) else {
            return;
        };
        if let Some(ctl) = ep.ctl.as_mut() {
            let _ = registry.deregister(ctl);
        }
        ep.data.deregister(registry);
        if !ep.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&ep.path);
        }
        self.active.retain(|&i| i != index);
        self.backlog.retain(|s| {
            let (i, k) = (*s >> KIND_BITS, *s & ((1 << KIND_BITS) - 1));
            !(i == index && (k == KIND_CTL || k == KIND_DATA))
        });
        if let Some(fdb) = self.fdb.as_mut() {
            fdb.forget_port(ep.port);
        }
        let (frames, bytes) = ep.queue.clear();
        if frames > 0 {
            self.queued.frames -= frames;
            self.queued.bytes -= bytes;
            ep.counters.drops.receiver_gone += frames as u64;
            let id = ep.id;
            self.capture_pending.retain(|&(e, _)| e != id);
        }
        self.closed_totals.add(&ep.counters);
        self.ports_closed += 1;
        let vlan = self.vlan;
        self.push_event(SwitchEvent::PortClosed {
            vlan,
            port: ep.port,
            endpoint: ep.id,
            description: ep.description,
            reason,
            counters: ep.counters,
        });
    }
}
