//! The TCP link: frames over a non-blocking TCP connection, plain or inside TLS 1.3.
//!
//! Framing needs no length prefix of its own: every frame starts with a fixed header that
//! holds its payload length ([`crate::wire::decode_header`]), which is checked (magic, limits)
//! before a byte of the payload is waited for, so a peer cannot make the link reserve more
//! than [`crate::wire::MAX_PAYLOAD`] plus one read buffer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::link::{Link, LinkError};
use crate::wire;

/// Bytes a link queues for sending before [`Link::send`] says "full".
pub const SEND_QUEUE_LIMIT: usize = 8 << 20;
/// Bytes read from the socket per system call.
const READ_CHUNK: usize = 256 << 10;
/// Received bytes buffered before the link stops reading the socket (TCP's window then
/// closes: backpressure reaches the sender).
const RECV_BUFFER_LIMIT: usize = 8 << 20;

/// How a [`StreamLink`] secures its connection.
#[derive(Debug)]
pub enum Security {
    /// No TLS: bytes travel in the clear and the peer is not authenticated. For benchmarks
    /// and networks that are trusted end to end.
    Plain,
    /// TLS 1.3; after the handshake the peer's certificate is checked against `allow`.
    Tls {
        /// The client or server side of the TLS session.
        conn: Box<rustls::Connection>,
        /// Peer names this bridge accepts.
        allow: Arc<Vec<String>>,
    },
}

/// A [`Link`] over a non-blocking TCP connection (see the module docs).
#[derive(Debug)]
pub struct StreamLink {
    socket: TcpStream,
    /// Still connecting (non-blocking `connect` in progress).
    connecting: bool,
    security: Security,
    /// Frames queued for sending (plaintext), from `out_start`.
    out: Vec<u8>,
    out_start: usize,
    /// Received plaintext, from `in_start`.
    input: Vec<u8>,
    in_start: usize,
    peer_name: Option<String>,
    peer_addr: Option<SocketAddr>,
}

impl StreamLink {
    /// Starts connecting to `addr` without blocking; the connection completes in
    /// [`Link::poll`].
    ///
    /// # Errors
    ///
    /// [`LinkError::Io`] when the socket cannot be made or the connect fails at once.
    pub fn dial(addr: SocketAddr, security: Security) -> Result<Self, LinkError> {
        let io = |op| move |source| LinkError::Io { op, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(io("socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(io("set_nonblocking"))?;
        socket.set_tcp_nodelay(true).map_err(io("set_nodelay"))?;
        let connecting = match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => false,
            Err(e)
                if e.raw_os_error() == Some(libc::EINPROGRESS)
                    || e.kind() == io::ErrorKind::WouldBlock =>
            {
                true
            }
            Err(e) => return Err(io("connect")(e)),
        };
        Ok(Self::new(socket.into(), connecting, security, Some(addr)))
    }

    /// Wraps an accepted connection.
    ///
    /// # Errors
    ///
    /// [`LinkError::Io`] when the socket cannot be made non-blocking.
    pub fn accepted(socket: TcpStream, security: Security) -> Result<Self, LinkError> {
        let io = |op| move |source| LinkError::Io { op, source };
        socket
            .set_nonblocking(true)
            .map_err(io("set_nonblocking"))?;
        socket.set_nodelay(true).map_err(io("set_nodelay"))?;
        let addr = socket.peer_addr().ok();
        Ok(Self::new(socket, false, security, addr))
    }

    fn new(
        socket: TcpStream,
        connecting: bool,
        security: Security,
        peer_addr: Option<SocketAddr>,
    ) -> Self {
        StreamLink {
            socket,
            connecting,
            security,
            out: Vec::new(),
            out_start: 0,
            input: Vec::new(),
            in_start: 0,
            peer_name: None,
            peer_addr,
        }
    }

    /// The peer's socket address, when known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// Sets the name a plaintext peer claims (from its hello); TLS links learn it from the
    /// certificate and ignore this.
    pub fn set_claimed_name(&mut self, name: &str) {
        if matches!(self.security, Security::Plain) {
            self.peer_name = Some(name.to_owned());
        }
    }

    fn finish_connect(&mut self) -> Result<bool, LinkError> {
        if !self.connecting {
            return Ok(true);
        }
        if let Some(e) = self.socket.take_error().map_err(|source| LinkError::Io {
            op: "connect",
            source,
        })? {
            return Err(LinkError::Io {
                op: "connect",
                source: e,
            });
        }
        match self.socket.peer_addr() {
            Ok(_) => {
                self.connecting = false;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(source) => Err(LinkError::Io {
                op: "connect",
                source,
            }),
        }
    }

    /// Plain: socket <-> buffers. Returns whether bytes moved.
    fn pump_plain(&mut self) -> Result<bool, LinkError> {
        let mut moved = false;
        while self.out_start < self.out.len() {
            match self.socket.write(&self.out[self.out_start..]) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => {
                    self.out_start += n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("send", e)),
            }
        }
        compact(&mut self.out, &mut self.out_start);
        while self.input.len() - self.in_start < RECV_BUFFER_LIMIT {
            let len = self.input.len();
            self.input.resize(len + READ_CHUNK, 0);
            let read = self.socket.read(&mut self.input[len..]);
            match read {
                Ok(0) => {
                    self.input.truncate(len);
                    return Err(LinkError::Closed);
                }
                Ok(n) => {
                    self.input.truncate(len + n);
                    moved = true;
                    if n < READ_CHUNK {
                        break;
                    }
                }
                Err(e) => {
                    self.input.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(io_err("recv", e)),
                    }
                }
            }
        }
        Ok(moved)
    }

    /// TLS: plaintext buffers <-> rustls <-> socket.
    fn pump_tls(&mut self) -> Result<bool, LinkError> {
        let Security::Tls { conn, allow } = &mut self.security else {
            unreachable!("pump_tls on a plain link")
        };
        let mut moved = false;
        // Plaintext into the session, once the handshake is done (rustls would buffer it
        // before, but the peer is not authorized yet).
        if !conn.is_handshaking() && self.out_start < self.out.len() {
            let n = conn
                .writer()
                .write(&self.out[self.out_start..])
                .map_err(|e| io_err("tls write", e))?;
            self.out_start += n;
            moved |= n > 0;
            compact(&mut self.out, &mut self.out_start);
        }
        while conn.wants_write() {
            match conn.write_tls(&mut self.socket) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("send", e)),
            }
        }
        while self.input.len() - self.in_start < RECV_BUFFER_LIMIT && conn.wants_read() {
            match conn.read_tls(&mut self.socket) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => {
                    moved = true;
                    let state = conn
                        .process_new_packets()
                        .map_err(|e| LinkError::Tls(e.to_string()))?;
                    if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 {
                        return Err(LinkError::Closed);
                    }
                    let want = state.plaintext_bytes_to_read();
                    if want > 0 {
                        let len = self.input.len();
                        self.input.resize(len + want, 0);
                        let n = conn
                            .reader()
                            .read(&mut self.input[len..])
                            .map_err(|e| io_err("tls read", e))?;
                        self.input.truncate(len + n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("recv", e)),
            }
        }
        if self.peer_name.is_none() && !conn.is_handshaking() {
            let name = crate::tls::authorize(conn, allow)
                .map_err(|e| LinkError::NotAllowed(e.to_string()))?;
            self.peer_name = Some(name);
            moved = true;
        }
        // Anything the handshake left to send (the client's last flight).
        while conn.wants_write() {
            match conn.write_tls(&mut self.socket) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("send", e)),
            }
        }
        Ok(moved)
    }
}

fn io_err(op: &'static str, source: io::Error) -> LinkError {
    match source.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => LinkError::Closed,
        _ => LinkError::Io { op, source },
    }
}

/// Drops the consumed front of a buffer once it is most of it (amortized O(1) per byte).
fn compact(buf: &mut Vec<u8>, start: &mut usize) {
    if *start == buf.len() {
        buf.clear();
        *start = 0;
    } else if *start > (64 << 10) && *start * 2 > buf.len() {
        buf.drain(..*start);
        *start = 0;
    }
}

impl Link for StreamLink {
    fn send(&mut self, frame: &[u8]) -> Result<bool, LinkError> {
        if self.queued() > 0 && self.queued() + frame.len() > SEND_QUEUE_LIMIT {
            return Ok(false);
        }
        self.out.extend_from_slice(frame);
        Ok(true)
    }

    fn send_with(
        &mut self,
        len: usize,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> Result<bool, LinkError> {
        if self.queued() > 0 && self.queued() + len > SEND_QUEUE_LIMIT {
            return Ok(false);
        }
        encode(&mut self.out);
        Ok(true)
    }

    fn poll(&mut self) -> Result<bool, LinkError> {
        if !self.finish_connect()? {
            return Ok(false);
        }
        match self.security {
            Security::Plain => self.pump_plain(),
            Security::Tls { .. } => self.pump_tls(),
        }
    }

    fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool, LinkError> {
        let have = &self.input[self.in_start..];
        if have.len() < wire::HEADER_LEN {
            return Ok(false);
        }
        let header = wire::decode_header(have)?;
        let len = wire::frame_len(&header);
        if have.len() < len {
            return Ok(false);
        }
        out.clear();
        out.extend_from_slice(&have[..len]);
        self.in_start += len;
        compact(&mut self.input, &mut self.in_start);
        Ok(true)
    }

    fn queued(&self) -> usize {
        self.out.len() - self.out_start
    }

    fn is_established(&self) -> bool {
        !self.connecting
            && match &self.security {
                Security::Plain => true,
                Security::Tls { .. } => self.peer_name.is_some(),
            }
    }

    fn peer_name(&self) -> Option<&str> {
        self.peer_name.as_deref()
    }

    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.socket.as_fd())
    }
}
