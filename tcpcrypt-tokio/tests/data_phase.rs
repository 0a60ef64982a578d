//! The data phase against peers that push its edges: empty writes, rekeys
//! a split stream must answer without a write, and the reset that every
//! protocol error ends with (RFC 8548 3.3), in the handshake and after it,
//! for whole and split streams.

mod net;

use std::io::ErrorKind;
use std::time::Duration;

use net::*;
use tcpcrypt_tokio::proto::init::INIT2_MAGIC;
use tcpcrypt_tokio::proto::{HandshakeConfig, OsRandom, ServerHandshake};
use tcpcrypt_tokio::{Error, TcpcryptAcceptor, TcpcryptListener, TcpcryptStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

#[tokio::test]
async fn an_empty_write_writes_nothing_and_the_stream_goes_on() {
    let (addr, _, _server) = tcpcrypt_echo(default_config()).await;
    let mut s = TcpcryptStream::connect(addr, &default_config())
        .await
        .unwrap();
    assert!(s.is_encrypted());
    assert_eq!(s.write(b"").await.unwrap(), 0);
    s.write_all(b"after nothing").await.unwrap();
    s.shutdown().await.unwrap();
    let mut echo = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, b"after nothing");
}

#[tokio::test]
async fn a_split_read_half_answers_a_rekey_without_a_write() {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &default_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        // The application only reads; its write half stays idle.
        let (mut r, w) = s.into_split();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        drop(w);
        got
    });
    let mut c = TcpcryptStream::connect(addr, &default_config())
        .await
        .unwrap();
    c.rekey().unwrap();
    c.flush().await.unwrap();
    // The answer is an empty frame: reading takes it in without data.
    let mut buf = [0u8; 16];
    for _ in 0..50 {
        if c.generations() == Some((1, 1)) {
            break;
        }
        let _ = timeout(Duration::from_millis(100), c.read(&mut buf)).await;
    }
    assert_eq!(
        c.generations(),
        Some((1, 1)),
        "the server's read half answered the rekey at once"
    );
    c.write_all(b"then data").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(timeout(LIMIT, server).await.unwrap().unwrap(), b"then data");
}

/// A server whose application reads until an error, then tries to write,
/// over the whole stream or its split halves; a raw client that sends a
/// tampered frame. Returns the server's read and write errors and how the
/// client saw the connection end.
async fn tamper_with(split: bool) -> (std::io::Error, std::io::Error, std::io::Result<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = TcpcryptAcceptor::new(default_config())
            .accept_tcp(tcp)
            .await
            .unwrap();
        let mut got = Vec::new();
        if !split {
            let read = s.read_to_end(&mut got).await.unwrap_err();
            let write = s.write_all(b"after the error").await.unwrap_err();
            return (read, write);
        }
        let (mut r, mut w) = s.into_split();
        let read = r.read_to_end(&mut got).await.unwrap_err();
        let write = w.write_all(b"after the error").await.unwrap_err();
        // The write half goes first: it must not send a FIN.
        drop(w);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(r);
        (read, write)
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (mut session, _) = raw_client(&mut tcp).await;
    let mut wire = Vec::new();
    session.sealer.seal(b"tampered", false, &mut wire).unwrap();
    wire[6] ^= 1;
    tcp.write_all(&wire).await.unwrap();
    let (read, write) = timeout(LIMIT, server).await.unwrap().unwrap();
    (read, write, read_until_closed(&mut tcp).await)
}

#[tokio::test]
async fn a_whole_stream_resets_the_connection_after_tampering() {
    let (read, write, end) = tamper_with(false).await;
    assert_eq!(read.kind(), ErrorKind::InvalidData, "{read:?}");
    assert_eq!(write.kind(), ErrorKind::ConnectionAborted, "{write:?}");
    assert!(
        matches!(
            tcpcrypt_tokio::Error::from_io(&write),
            Some(tcpcrypt_tokio::Error::Aborted)
        ),
        "{write:?}"
    );
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn a_split_read_half_resets_the_connection_after_tampering() {
    let (read, write, end) = tamper_with(true).await;
    assert_eq!(read.kind(), ErrorKind::InvalidData, "{read:?}");
    assert_eq!(write.kind(), ErrorKind::ConnectionAborted, "{write:?}");
    assert!(
        matches!(
            tcpcrypt_tokio::Error::from_io(&write),
            Some(tcpcrypt_tokio::Error::Aborted)
        ),
        "{write:?}"
    );
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "a reset, with no FIN before it"
    );
}

#[tokio::test]
async fn a_handshake_error_on_the_accepting_side_resets_the_connection() {
    let listener = TcpcryptListener::bind("127.0.0.1:0", &default_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    // A hello and an Init1 whose length is out of bounds.
    let mut hs = tcpcrypt_tokio::proto::ClientHandshake::new(
        std::sync::Arc::new(HandshakeConfig::default()),
        None,
        Box::new(OsRandom),
    )
    .unwrap();
    let mut flight = Vec::new();
    hs.write_to(&mut flight);
    let at = flight
        .windows(4)
        .position(|w| w == tcpcrypt_tokio::proto::init::INIT1_MAGIC)
        .unwrap();
    flight[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&flight).await.unwrap();
    let end = read_until_closed(&mut tcp).await;
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "an abort, not a graceful close"
    );
    drop(listener);
}

#[tokio::test]
async fn a_handshake_error_on_the_connecting_side_resets_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A server whose Init2 has a bad magic number.
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut hs = ServerHandshake::new(
            std::sync::Arc::new(HandshakeConfig::default()),
            None,
            Box::new(OsRandom),
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        while !out.windows(4).any(|w| w == INIT2_MAGIC) {
            let n = timeout(LIMIT, tcp.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0);
            hs.read(&buf[..n]).unwrap();
            hs.write_to(&mut out);
        }
        let at = out.windows(4).position(|w| w == INIT2_MAGIC).unwrap();
        out[at] ^= 0xff;
        tcp.write_all(&out).await.unwrap();
        read_until_closed(&mut tcp).await
    });
    let err = TcpcryptStream::connect(addr, &default_config())
        .await
        .unwrap_err();
    assert!(
        matches!(Error::from_io(&err), Some(Error::Protocol(_))),
        "{err:?}"
    );
    let end = timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(end.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn local_misuse_is_invalid_input_and_leaves_the_connection_working() {
    let (addr, _, _server) = tcpcrypt_echo(default_config()).await;
    let mut s = TcpcryptStream::connect(addr, &default_config())
        .await
        .unwrap();
    s.write_all(b"echo me").await.unwrap();
    s.rekey().unwrap();
    // A second rekey while the first is unsent or unanswered.
    let twice = s.rekey().unwrap_err();
    assert_eq!(twice.kind(), ErrorKind::InvalidInput, "{twice:?}");
    s.shutdown().await.unwrap();
    // Writing after our FINp: the caller's mistake, not the peer's.
    let late = s.write_all(b"too late").await.unwrap_err();
    assert_eq!(late.kind(), ErrorKind::InvalidInput, "{late:?}");
    assert!(matches!(
        Error::from_io(&late),
        Some(Error::Protocol(p)) if p.class() == tcpcrypt_tokio::proto::ErrorClass::LocalMisuse
    ));
    // Nothing was aborted: the echo and the peer's FINp still arrive.
    let mut echo = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, b"echo me");
}

/// Reads and opens every frame from a raw peer's socket until the FINp
/// frame; returns the data.
async fn read_frames(
    io: &mut (impl AsyncReadExt + Unpin),
    opener: &mut tcpcrypt_tokio::proto::FrameOpener,
) -> Vec<u8> {
    let (mut buf, mut data) = (vec![0u8; 1 << 20], Vec::new());
    let (mut start, mut end) = (0, 0);
    loop {
        while let Some(f) = opener.open_in_place(&mut buf[start..end]).unwrap() {
            data.extend_from_slice(&buf[start + f.data.start..start + f.data.end]);
            start += f.frame_len;
            if f.fin {
                return data;
            }
        }
        buf.copy_within(start..end, 0);
        (start, end) = (0, end - start);
        let n = timeout(LIMIT, io.read(&mut buf[end..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream ended before its FINp frame");
        end += n;
    }
}

/// CPU time this process has used (user and system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // Clock ticks of 10 ms.
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// A server that sends 8 MiB to a peer that does not read yet, and reads
/// at the same time, with its reader and writer in two tasks: sharing the
/// whole stream (`tokio::io::split`) or as the stream's own split halves.
/// The peer sends an empty rekey (a liveness probe) while the server's
/// sending side is full, then its last data, FINp and FIN, and only then
/// reads. Returns what the server read, and the CPU the process spent
/// while the peer was not reading.
async fn rekey_while_the_send_buffer_is_full(
    own_halves: bool,
) -> (std::io::Result<Vec<u8>>, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const BULK: usize = 8 << 20;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let s = TcpcryptAcceptor::new(default_config())
            .accept_tcp(tcp)
            .await
            .unwrap();
        let bulk = pattern(BULK, 9);
        let mut got = Vec::new();
        let (read, written) = if own_halves {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&bulk).await?;
                w.shutdown().await
            });
            let read = r.read_to_end(&mut got).await.map(|_| got);
            (read, writer.await.unwrap())
        } else {
            let (mut r, mut w) = tokio::io::split(s);
            let writer = tokio::spawn(async move {
                w.write_all(&bulk).await?;
                w.shutdown().await
            });
            let read = r.read_to_end(&mut got).await.map(|_| got);
            (read, writer.await.unwrap())
        };
        written.unwrap();
        read
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (session, early) = raw_client(&mut tcp).await;
    let (mut sealer, mut opener) = (session.sealer, session.opener);
    // Until the server's sending side is full and its writer waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut wire = Vec::new();
    sealer.initiate_rekey().unwrap();
    sealer.seal(&[], false, &mut wire).unwrap();
    sealer.seal(b"last words", true, &mut wire).unwrap();
    tcp.write_all(&wire).await.unwrap();
    tcp.shutdown().await.unwrap();
    // The server holds its reading until it can answer the rekey: it must
    // wait without spinning (two halves waking each other take a core).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cpu_before = cpu_time();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let held_cpu = cpu_time().saturating_sub(cpu_before);
    // Now the peer reads: the bulk, the answer to its rekey, FINp.
    let mut stream = early;
    timeout(LIMIT, tcp.read_to_end(&mut stream))
        .await
        .expect("the server sends everything")
        .unwrap();
    let data = read_frames(&mut &stream[..], &mut opener).await;
    assert!(data == pattern(BULK, 9), "the bulk, intact");
    assert!(opener.generation() >= 1, "the rekey was answered");
    (timeout(LIMIT, server).await.unwrap().unwrap(), held_cpu)
}

/// Held by the tests that measure this process's CPU and by those that
/// load it: one at a time.
static CPU_MEASURED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_while_the_send_buffer_is_full_then_a_clean_close_is_read_whole() {
    let _alone = CPU_MEASURED.lock().await;
    for own_halves in [false, true] {
        let (read, held_cpu) = rekey_while_the_send_buffer_is_full(own_halves).await;
        eprintln!("{held_cpu:?} of CPU while held (own halves: {own_halves})");
        assert_eq!(
            read.unwrap(),
            b"last words",
            "a clean end, not a truncation (own halves: {own_halves})"
        );
        assert!(
            held_cpu < Duration::from_millis(400),
            "{held_cpu:?} of CPU in 600 ms of waiting (own halves: {own_halves})"
        );
    }
}

/// Bulk both ways at once, each end reading and writing from tasks of its
/// own, after one end rekeyed: every byte arrives, in order, both ways.
/// (A reader that wrote the writer's bytes while it had no answer of its
/// own to send took the socket's wake-up from the writer waiting for it;
/// woken in its place, it did not pass it on, and the writer waited for
/// good. It stopped about one run in two.)
async fn full_duplex_after_a_rekey(own_halves: bool) {
    const EACH_WAY: usize = 8 << 20;
    async fn pump(mut w: impl AsyncWriteExt + Unpin, seed: u64) -> std::io::Result<()> {
        let data = pattern(EACH_WAY, seed);
        for chunk in data.chunks(1 << 20) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await
    }
    async fn drain(mut r: impl AsyncReadExt + Unpin) -> std::io::Result<Vec<u8>> {
        let mut got = Vec::with_capacity(EACH_WAY);
        r.read_to_end(&mut got).await?;
        Ok(got)
    }
    let config = default_config();
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &config)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (read, write) = if own_halves {
            let (r, w) = s.into_split();
            (tokio::spawn(drain(r)), tokio::spawn(pump(w, 1)))
        } else {
            let (r, w) = tokio::io::split(s);
            (tokio::spawn(drain(r)), tokio::spawn(pump(w, 1)))
        };
        write.await.unwrap().unwrap();
        read.await.unwrap().unwrap()
    });
    let mut client = TcpcryptStream::connect(addr, &config).await.unwrap();
    client.rekey().unwrap();
    let (read, write) = if own_halves {
        let (r, w) = client.into_split();
        (tokio::spawn(drain(r)), tokio::spawn(pump(w, 2)))
    } else {
        let (r, w) = tokio::io::split(client);
        (tokio::spawn(drain(r)), tokio::spawn(pump(w, 2)))
    };
    let both = async {
        write.await.unwrap().unwrap();
        let at_client = read.await.unwrap().unwrap();
        (at_client, server.await.unwrap())
    };
    let (at_client, at_server) = timeout(LIMIT, both)
        .await
        .unwrap_or_else(|_| panic!("stalled (own halves: {own_halves})"));
    assert!(at_client == pattern(EACH_WAY, 1), "server to client, whole");
    assert!(at_server == pattern(EACH_WAY, 2), "client to server, whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_bulk_after_a_rekey_never_stalls() {
    let _alone = CPU_MEASURED.lock().await;
    for _ in 0..3 {
        for own_halves in [false, true] {
            full_duplex_after_a_rekey(own_halves).await;
        }
    }
}
