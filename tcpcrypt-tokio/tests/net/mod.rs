//! Helpers for the socket tests: servers of every kind on loopback, and
//! relays that resegment, tamper with, truncate or record the bytes between
//! two endpoints. Every loop is bounded in time.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpcrypt_tokio::{Config, Policy, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const LIMIT: Duration = Duration::from_secs(20);

pub fn config(
    f: impl FnOnce(tcpcrypt_tokio::ConfigBuilder) -> tcpcrypt_tokio::ConfigBuilder,
) -> Arc<Config> {
    Arc::new(f(Config::builder()).build().unwrap())
}

pub fn default_config() -> Arc<Config> {
    config(|b| b)
}

pub fn mandatory() -> Arc<Config> {
    config(|b| b.policy(Policy::Mandatory))
}

/// A deterministic pseudo-random byte stream with a checksum.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tcpcrypt echo server: echoes each connection until its EOF, then
/// half-closes. Returns its address and a counter of connections served.
pub async fn tcpcrypt_echo(
    config: Arc<Config>,
) -> (SocketAddr, Arc<Mutex<Vec<bool>>>, JoinHandle<()>) {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen2.lock().unwrap().push(s.is_encrypted());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen, task)
}

/// What a plain test server does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Plain {
    /// Echo until EOF.
    Echo,
    /// Send a banner first, then echo.
    Banner,
    /// Read and never answer.
    Silent,
    /// Close at once.
    Close,
    /// Reset at once.
    Reset,
}

/// A plain TCP server of the given kind. Counts connections.
pub async fn plain_server(kind: Plain) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let count2 = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                match kind {
                    Plain::Close => drop(s),
                    Plain::Reset => {
                        #[allow(deprecated)]
                        let _ = s.set_linger(Some(Duration::ZERO));
                        drop(s);
                    }
                    Plain::Silent => {
                        let mut buf = [0u8; 1024];
                        let _ = tokio::time::timeout(LIMIT, async {
                            while s.read(&mut buf).await.unwrap_or(0) > 0 {}
                        })
                        .await;
                    }
                    Plain::Echo | Plain::Banner => {
                        if let Plain::Banner = kind {
                            let _ = s.write_all(b"220 plain banner\r\n").await;
                        }
                        let mut buf = [0u8; 4096];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, count, task)
}

/// How a relay passes bytes on.
#[derive(Clone, Copy, Debug)]
pub enum Relay {
    /// As they come.
    Pass,
    /// One byte per write, with TCP_NODELAY.
    OneByte,
    /// Random piece sizes.
    RandomSplit(u64),
    /// Collects up to this many bytes before writing them in one go.
    Coalesce(usize),
    /// Flips one bit at this offset of the client-to-server stream.
    FlipClientBit(usize),
    /// Flips one bit at this offset of the server-to-client stream.
    FlipServerBit(usize),
    /// Drops the last `n` bytes the client sent just before closing (bytes
    /// followed by a pause are passed on), then closes.
    DropClientTail(usize),
}

/// Recorded bytes of each direction.
#[derive(Default)]
pub struct Recording {
    pub to_server: Vec<u8>,
    pub to_client: Vec<u8>,
}

/// A relay on loopback in front of `target`. Returns its address and what
/// it recorded.
pub async fn relay(target: SocketAddr, mode: Relay) -> (SocketAddr, Arc<Mutex<Recording>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Arc::new(Mutex::new(Recording::default()));
    let rec2 = rec.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let rec = rec2.clone();
            tokio::spawn(pump(cr, sw, mode, true, rec.clone()));
            tokio::spawn(pump(sr, cw, mode, false, rec));
        }
    });
    (addr, rec)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Relay,
    to_server: bool,
    rec: Arc<Mutex<Recording>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let mut rng = match mode {
        Relay::RandomSplit(seed) => seed | 1,
        _ => 1,
    };
    let mut held = Vec::new();
    loop {
        // Held bytes are released by a pause: a coalescing relay holds them
        // only while more keep coming, like Nagle's algorithm, and a
        // tail-dropping relay drops only what the peer sent just before
        // closing.
        let holds = matches!(mode, Relay::Coalesce(_))
            || (to_server && matches!(mode, Relay::DropClientTail(_)));
        let wait = if held.is_empty() || !holds {
            LIMIT
        } else {
            Duration::from_millis(20)
        };
        let n = match tokio::time::timeout(wait, from.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Err(_) if wait < LIMIT => {
                if to.write_all(&held).await.is_err() {
                    return;
                }
                held.clear();
                continue;
            }
            _ => 0,
        };
        if n == 0 {
            // DropClientTail: the held tail is dropped, not delivered.
            let drop_tail = to_server && matches!(mode, Relay::DropClientTail(_));
            if !held.is_empty() && !drop_tail {
                let _ = to.write_all(&held).await;
            }
            let _ = to.shutdown().await;
            return;
        }
        let chunk = &mut buf[..n];
        match mode {
            Relay::FlipClientBit(at) if to_server && (total..total + n).contains(&at) => {
                chunk[at - total] ^= 0x10
            }
            Relay::FlipServerBit(at) if !to_server && (total..total + n).contains(&at) => {
                chunk[at - total] ^= 0x10
            }
            _ => {}
        }
        {
            let mut r = rec.lock().unwrap();
            if to_server {
                r.to_server.extend_from_slice(chunk)
            } else {
                r.to_client.extend_from_slice(chunk)
            }
        }
        total += n;
        let ok = match mode {
            Relay::OneByte => {
                let mut ok = true;
                for b in chunk.iter() {
                    ok &= to.write_all(&[*b]).await.is_ok();
                }
                ok
            }
            Relay::RandomSplit(_) => {
                let mut ok = true;
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let k = (1 + (rng % 3000) as usize).min(rest.len());
                    ok &= to.write_all(&rest[..k]).await.is_ok();
                    rest = &rest[k..];
                    if rng % 4 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ok
            }
            Relay::Coalesce(limit) => {
                held.extend_from_slice(chunk);
                if held.len() >= limit {
                    let ok = to.write_all(&held).await.is_ok();
                    held.clear();
                    ok
                } else {
                    true
                }
            }
            Relay::DropClientTail(k) if to_server => {
                // Pass everything but the last k bytes seen so far.
                held.extend_from_slice(chunk);
                let pass = held.len().saturating_sub(k);
                let ok = to.write_all(&held[..pass]).await.is_ok();
                held.drain(..pass);
                ok
            }
            _ => to.write_all(chunk).await.is_ok(),
        };
        if !ok {
            return;
        }
    }
}

/// Sends `data` over an established stream and reads the echo back,
/// writing and reading concurrently.
pub async fn echo_roundtrip(
    stream: TcpcryptStream<TcpStream>,
    data: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(10_000) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await?;
    writer.await.unwrap()?;
    Ok(got)
}

/// A hand-driven tcpcrypt client over `io`: the core's handshake, no
/// stream around it, so that a test can then send whatever frames it
/// likes, as a hostile peer would. Returns the session and the bytes that
/// followed the handshake.
pub async fn raw_client<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut IO,
) -> (tcpcrypt_tokio::proto::Session, Vec<u8>) {
    use tcpcrypt_tokio::proto::{ClientHandshake, ClientOutcome, HandshakeConfig, OsRandom};
    let mut hs = ClientHandshake::new(
        Arc::new(HandshakeConfig::default()),
        None,
        Box::new(OsRandom),
    )
    .unwrap();
    let mut out = Vec::new();
    hs.write_to(&mut out);
    io.write_all(&out).await.unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(LIMIT, io.read(&mut buf))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(n > 0, "the server closed during the handshake");
        let used = hs.read(&buf[..n]).unwrap();
        let mut more = Vec::new();
        hs.write_to(&mut more);
        io.write_all(&more).await.unwrap();
        match hs.outcome() {
            Some(ClientOutcome::Encrypted(s)) => return (*s, buf[used..n].to_vec()),
            Some(other) => panic!("not encrypted: {other:?}"),
            None => {}
        }
    }
}

/// Reads until the peer closes: `Ok` with what arrived at a clean end
/// (FIN), the error at a reset.
pub async fn read_until_closed(io: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, io.read_to_end(&mut got))
        .await
        .expect("the peer closes in time")?;
    Ok(got)
}
