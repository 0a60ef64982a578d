//! User-space middleboxes for the interop suite: a relay that passes
//! connections on to a target and misbehaves as some boxes on real paths
//! do.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the box does to each connection.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Passes everything as it comes.
    Pass,
    /// Passes the first 4 KiB of each direction one byte at a time, with
    /// random short delays (the handshake, resegmented).
    OneByte,
    /// Closes (FIN) a connection whose first byte is not a letter: a filter
    /// that lets only text protocols by.
    TextOnlyFin,
    /// The same, with a reset.
    TextOnlyRst,
    /// The same, by discarding: the connection stays open, nothing passes.
    TextOnlyDiscard,
    /// Removes the 8-byte in-band hello marker from the start of each
    /// direction (the option and the rest pass).
    StripMarker,
    /// Flips one bit of the client's byte at this offset, in a connection
    /// that starts with a hello (a box that mangles what it does not know;
    /// plain connections pass untouched, as they would through it).
    Flip(usize),
    /// Closes both sides once the client has sent this many bytes, in a
    /// connection that starts with a hello.
    Truncate(usize),
    /// Resets both sides once the server has sent this many bytes, in a
    /// connection whose client started with a hello.
    ResetAfter(usize),
}

impl Behaviour {
    /// Whether the box misbehaves only on connections that start with a
    /// hello.
    fn targets_hellos(self) -> bool {
        matches!(
            self,
            Behaviour::Flip(_) | Behaviour::Truncate(_) | Behaviour::ResetAfter(_)
        )
    }
}

impl std::str::FromStr for Behaviour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = match s.split_once(':') {
            Some((name, n)) => (name, n.parse::<usize>().map_err(|e| e.to_string())?),
            None => (s, 0),
        };
        Ok(match name {
            "pass" => Behaviour::Pass,
            "one-byte" => Behaviour::OneByte,
            "text-only-fin" => Behaviour::TextOnlyFin,
            "text-only-rst" => Behaviour::TextOnlyRst,
            "text-only-discard" => Behaviour::TextOnlyDiscard,
            "strip-marker" => Behaviour::StripMarker,
            "flip" => Behaviour::Flip(n),
            "truncate" => Behaviour::Truncate(n),
            "reset-after" => Behaviour::ResetAfter(n),
            _ => return Err(format!("unknown behaviour {s}")),
        })
    }
}

/// The 8-byte marker's first five bytes; the kind and CR LF follow.
const MARKER_START: &[u8] = b"\xE5ENO\x01";

/// Relays connections to `target` until killed.
pub async fn run(
    listen: SocketAddr,
    target: SocketAddr,
    behaviour: Behaviour,
) -> std::io::Result<()> {
    let l = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = l.accept().await?;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), relay(client, target, behaviour))
                .await;
        });
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    behaviour: Behaviour,
) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    let n = client.peek(&mut first).await?;
    let text = n == 1 && first[0].is_ascii_alphabetic();
    // A box that targets hellos lets other connections by untouched.
    let hello = n == 1 && first[0] == MARKER_START[0];
    let behaviour = if behaviour.targets_hellos() && !hello {
        Behaviour::Pass
    } else {
        behaviour
    };
    match behaviour {
        Behaviour::TextOnlyFin if !text => return Ok(()),
        Behaviour::TextOnlyRst if !text => {
            client.set_zero_linger()?;
            return Ok(());
        }
        Behaviour::TextOnlyDiscard if !text => {
            let mut sink = [0u8; 4096];
            while client.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        _ => {}
    }
    let server = TcpStream::connect(target).await?;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, behaviour, true));
    let down = tokio::spawn(pump(sr, cw, behaviour, false));
    let _ = up.await;
    let _ = down.await;
    Ok(())
}

/// Carries one direction, misbehaving as told.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    behaviour: Behaviour,
    upstream: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    let mut head = Vec::new();
    // Strip-marker: the first bytes are gathered until they tell.
    let mut gathering = matches!(behaviour, Behaviour::StripMarker);
    let mut seed = if upstream { 7u64 } else { 11 };
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            if !head.is_empty() {
                to.write_all(&head).await?;
            }
            return to.shutdown().await;
        }
        let mut chunk = buf[..n].to_vec();
        match behaviour {
            Behaviour::Flip(at) if upstream && (total..total + n).contains(&at) => {
                chunk[at - total] ^= 0x01;
            }
            Behaviour::Truncate(at) if upstream && total + n >= at => {
                to.write_all(&chunk[..at - total]).await?;
                let _ = to.shutdown().await;
                return Ok(());
            }
            Behaviour::ResetAfter(at) if !upstream && total + n >= at => {
                to.write_all(&chunk[..at - total]).await?;
                // Both sides reset: the reader's socket is the same as the
                // writer's on each end.
                let _ = to.as_ref().set_zero_linger();
                let _ = from.as_ref().set_zero_linger();
                return Ok(());
            }
            _ if gathering => {
                // Drop the first eight bytes if they are a marker.
                head.extend_from_slice(&chunk);
                total += n;
                if head.len() < 8 {
                    continue;
                }
                gathering = false;
                let rest = if head.starts_with(MARKER_START) {
                    head.split_off(8)
                } else {
                    std::mem::take(&mut head)
                };
                head.clear();
                to.write_all(&rest).await?;
                continue;
            }
            Behaviour::OneByte if total < 4096 => {
                for b in &chunk {
                    to.write_all(std::slice::from_ref(b)).await?;
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(seed % 3)).await;
                    }
                }
                total += n;
                continue;
            }
            _ => {}
        }
        total += n;
        to.write_all(&chunk).await?;
    }
}
