//! A TCP proxy that the fault tests put between the relay and a server, to make the path **stop answering
//! without closing**. Frozen, it forwards nothing either way and keeps every socket open: no FIN, no RST,
//! and the proxy's kernel still acknowledges what arrives and answers TCP keepalive probes, as a hung
//! middlebox or a stopped proxy process would. Only an application-level bound notices that.
//!
//! [`Proxy::thaw`] forwards again on every connection. [`Proxy::thaw_new_only`] models a middlebox that
//! lost its state while frozen (a NAT or firewall restarted): the connections from before stay silent for
//! good, and only new ones pass.
//!
//! [`Proxy::cut_carrying`] closes any connection whose client sends given bytes, before they reach the
//! server: to the client, a statement that got no answer because its server process died of it.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

/// Whether the path forwards, and which connections it forwards for.
#[derive(Clone, Copy, Debug)]
struct State {
    /// Nothing passes.
    frozen: bool,
    /// Connections accepted in an earlier epoch never pass again ([`Proxy::thaw_new_only`]).
    epoch: u64,
    /// A connection whose client sends these bytes is closed instead ([`Proxy::cut_carrying`]).
    cut: Option<&'static [u8]>,
}

/// A running proxy; dropping it closes every connection it holds.
pub struct Proxy {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a loopback port of its own, forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await
            .unwrap_or_else(|e| panic!("resolve {target}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("{target} resolves to nothing"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, watching) = watch::channel(State { frozen: false, epoch: 0, cut: None });
        let task = tokio::spawn(accept(listener, target, watching));
        Proxy { addr, state, task }
    }

    /// Stops forwarding, both ways, on every connection, and holds new ones unanswered.
    pub fn freeze(&self) {
        self.state.send_modify(|s| s.frozen = true);
    }

    /// Forwards again, on the connections from before too.
    pub fn thaw(&self) {
        self.state.send_modify(|s| s.frozen = false);
    }

    /// Forwards again on new connections only: those accepted before stay frozen until the proxy is dropped.
    pub fn thaw_new_only(&self) {
        self.state.send_modify(|s| {
            s.frozen = false;
            s.epoch += 1;
        });
    }

    /// From now on closes every connection whose client sends `marker`, before it reaches the server.
    pub fn cut_carrying(&self, marker: &'static [u8]) {
        self.state.send_modify(|s| s.cut = Some(marker));
    }

    /// A proxy in front of the test PostgreSQL server ([`crate::server`]).
    pub async fn to_test_server() -> Proxy {
        let (host, port) = crate::server_address();
        Proxy::start(&format!("{host}:{port}")).await
    }

    /// The connection string of database `db` through this proxy: the test server's user and options with
    /// the proxy's host and port (libpq takes a second `host` as a fallback, not a replacement, so the
    /// server's own are left out).
    pub fn database(&self, db: &str) -> String {
        let server = crate::server();
        let own: Vec<&str> =
            server.split_whitespace().filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port=")).collect();
        format!("{} {} dbname={db}", own.join(" "), self.libpq())
    }

    /// `host=127.0.0.1 port=…`, for a libpq-style connection string.
    pub fn libpq(&self) -> String {
        format!("host=127.0.0.1 port={}", self.addr.port())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection's pumps.
        self.task.abort();
    }
}

/// Accepts connections until the proxy is dropped.
async fn accept(listener: TcpListener, target: SocketAddr, state: watch::Receiver<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let epoch = state.borrow().epoch;
                connections.spawn(forward(client, target, state.clone(), epoch));
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// One connection: waits until the path passes, connects to the target, and pumps both ways.
async fn forward(client: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>, epoch: u64) {
    if !passable(&mut state, epoch).await {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else { return };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, state.clone(), epoch, true);
    let down = pump(server_read, client_write, state, epoch, false);
    // Either side's end ends both (a half-closed PostgreSQL or Redis connection is a closed one).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Copies `from` to `to`, pausing (neither reading nor writing) while the path is frozen for `epoch`; on
/// the client's side (`from_client`), ends when the bytes to cut on pass.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    epoch: u64,
    from_client: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    // The end of what came before, so a marker split between two reads is seen too.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        if !passable(&mut state, epoch).await {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let cut = state.borrow().cut;
        if let Some(marker) = cut.filter(|_| from_client) {
            tail.extend_from_slice(&buffer[..n]);
            if tail.windows(marker.len()).any(|w| w == marker) {
                return;
            }
            let keep = tail.len().saturating_sub(marker.len());
            tail.drain(..keep);
        }
        // What was read before a freeze is held until the thaw, not delivered during it.
        if !passable(&mut state, epoch).await || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until the path passes for a connection of `epoch`; `false` when it never will again (the proxy
/// is gone). A connection of an earlier epoch waits forever: its peers see a silent path, never a close.
async fn passable(state: &mut watch::Receiver<State>, epoch: u64) -> bool {
    state.wait_for(|s| !s.frozen && s.epoch == epoch).await.is_ok()
}
