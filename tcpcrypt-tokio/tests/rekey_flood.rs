//! A peer that rekeys faster than it reads (RFC 8548 3.8 obliges an answer
//! to every rekey frame) meets back-pressure, never unbounded memory; and
//! once it reads, every rekey is answered and the data behind them
//! arrives. Alone in its test binary: it measures the process's memory.

mod net;

use std::time::{Duration, Instant};

use net::*;
use tcpcrypt_tokio::TcpcryptListener;
use tcpcrypt_tokio::proto::FrameOpener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const FRAMES: u64 = 1_000_000;
const BATCH: u64 = 1000;

/// The resident set of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_empty_rekey_frames_without_reading_leave_memory_bounded() {
    let mut listener = TcpcryptListener::bind("127.0.0.1:0", &default_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    // The server's application reads and never writes: every byte it sends
    // is a rekey answer.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        // Answers still owed go out before the FINp frame.
        s.shutdown().await?;
        Ok::<_, std::io::Error>(got)
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (session, early) = raw_client(&mut tcp).await;
    assert!(early.is_empty());
    let (mut sealer, opener) = (session.sealer, session.opener);
    let (mut from_server, mut to_server) = tcp.into_split();

    let baseline = rss();
    let mut peak = baseline;
    let (mut sent, mut stalled) = (0u64, false);
    let mut batch = Vec::new();
    // Bytes of `batch` written: a stalled write leaves the rest for later.
    let mut pos = 0;
    'flood: while sent < FRAMES {
        batch.clear();
        for _ in 0..BATCH {
            // A hostile sender: one empty rekey after another, as if each
            // had been answered (RFC 8548 3.8 forbids it; nothing stops a
            // peer from doing it).
            sealer.observe_peer_generation(sealer.generation());
            sealer.initiate_rekey().unwrap();
            sealer.seal(&[], false, &mut batch).unwrap();
        }
        sent += BATCH;
        pos = 0;
        while pos < batch.len() {
            match timeout(Duration::from_secs(2), to_server.write(&batch[pos..])).await {
                Ok(n) => pos += n.unwrap(),
                Err(_) => {
                    stalled = true;
                    break 'flood;
                }
            }
        }
        peak = peak.max(rss());
    }
    peak = peak.max(rss());
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{sent} rekey frames sent before {}; memory grew by {} KiB",
        if stalled {
            "the server stopped reading"
        } else {
            "the end"
        },
        growth / 1024
    );
    // Answers held for a peer that does not read would be 20 bytes each:
    // 20 MB for a million. The server's buffers for one connection are
    // about 1.3 MiB at most.
    assert!(stalled, "the server kept reading a peer that does not read");
    assert!(
        growth < 8 << 20,
        "memory grew by {} KiB while the peer did not read",
        growth / 1024
    );

    // Now the peer reads: every rekey is answered, and the data behind
    // the flood arrives.
    let reader = tokio::spawn(async move {
        let mut opener: FrameOpener = opener;
        let mut buf = vec![0u8; 1 << 20];
        let (mut start, mut end) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(Instant::now() < deadline, "answers stopped coming");
            while let Some(f) = opener.open_in_place(&mut buf[start..end]).unwrap() {
                // Rekey answers, then the FINp frame.
                assert!(f.data.is_empty() && (f.rekeyed || f.fin), "{f:?}");
                start += f.frame_len;
            }
            if opener.generation() >= FRAMES {
                break;
            }
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
            let n = from_server.read(&mut buf[end..]).await.unwrap();
            assert!(
                n > 0,
                "the server closed after {} answers",
                opener.generation()
            );
            end += n;
        }
        opener.generation()
    });
    to_server.write_all(&batch[pos..]).await.unwrap();
    while sent < FRAMES {
        batch.clear();
        for _ in 0..BATCH {
            sealer.observe_peer_generation(sealer.generation());
            sealer.initiate_rekey().unwrap();
            sealer.seal(&[], false, &mut batch).unwrap();
        }
        if let Err(e) = to_server.write_all(&batch).await {
            panic!("{e}; server: {:?}", server.await);
        }
        sent += BATCH;
    }
    batch.clear();
    sealer.seal(b"after the flood", true, &mut batch).unwrap();
    to_server.write_all(&batch).await.unwrap();
    let answered = timeout(Duration::from_secs(300), reader)
        .await
        .expect("every rekey answered in time");
    let answered = answered.unwrap_or_else(|e| panic!("{e}; server: {:?}", server.is_finished()));
    assert_eq!(answered, FRAMES, "one answer per rekey frame");
    let got = timeout(LIMIT, server).await.unwrap().unwrap().unwrap();
    assert_eq!(got, b"after the flood");
}
