//! The session ID as an HTTP request header, for `tcpcrypt proxy --mode
//! server --http-header`.
//!
//! Every HTTP/1.x request from the client gets the header, and any copy of
//! it the client sent is removed, so a backend can trust what it reads: a
//! client cannot claim another connection's session ID. That needs the
//! requests' framing (Content-Length, chunked), and for upgrades (WebSocket,
//! CONNECT) the backend's answer: the proxy stops rewriting only once the
//! backend has switched protocols. Requests whose framing is ambiguous
//! (Content-Length and Transfer-Encoding together, conflicting lengths, a
//! length or chunk size that is not plain digits) are refused, as request
//! smuggling defences do: the connection is closed. The header's name is
//! removed from chunked trailers too, where a backend that merges
//! trailers into the head would find it.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// Longest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 8 * 1024;

/// What the response side needs to know about each request, in order.
enum Pending {
    /// An ordinary request; `head_method` when the response has no body.
    Request { head_method: bool },
    /// A request asking to leave HTTP: the response side says whether the
    /// backend agreed.
    Upgrade {
        connect: bool,
        agreed: oneshot::Sender<bool>,
    },
}

/// How a message's body is delimited.
#[derive(Debug, PartialEq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    UntilEof,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one line (ending in LF) of at most `limit` bytes, appending it to
/// `out`; returns its length, 0 at end of stream.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    out: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let start = out.len();
    let n = (&mut *r).take(limit as u64).read_until(b'\n', out).await?;
    if n > 0 && out.last() != Some(&b'\n') {
        return Err(if n >= limit {
            bad("line too long")
        } else {
            io::ErrorKind::UnexpectedEof.into()
        });
    }
    debug_assert_eq!(out.len() - start, n);
    Ok(n)
}

/// Reads a message head up to its empty line (skipping empty lines before
/// it). `None` at a clean end of stream before any byte.
async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = read_line(r, &mut head, MAX_HEAD - before).await?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear(); // an empty line before the start line
                continue;
            }
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD {
            return Err(bad("message head too long"));
        }
    }
}

/// A number written only in digits of `radix` (no sign, no space, as
/// RFC 9112 writes lengths and chunk sizes), `None` otherwise or when too
/// large.
fn digits(text: &str, radix: u32) -> Option<u64> {
    let all = !text.is_empty() && text.chars().all(|c| c.is_digit(radix));
    all.then(|| u64::from_str_radix(text, radix).ok()).flatten()
}

/// Room for every field of `head`: at most one per line.
fn fields_for<'b>(head: &[u8]) -> Vec<httparse::Header<'b>> {
    vec![httparse::EMPTY_HEADER; head.iter().filter(|&&b| b == b'\n').count()]
}

/// Whether a field name is `name`, or what a gateway that maps `-` to `_`
/// (CGI, WSGI) would take for it.
fn same_field(field: &[u8], name: &str) -> bool {
    let norm = |b: &u8| match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    };
    field.len() == name.len() && field.iter().map(norm).eq(name.as_bytes().iter().map(norm))
}

/// A token character (RFC 9110 5.6.2), as field names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a trailer line names the field `name`; an error for a line
/// that is no field (an obs-fold continuation, a name that is not a
/// token, space before the colon).
fn trailer_names(line: &[u8], name: &str) -> io::Result<bool> {
    let field = line.split(|&b| b == b':').next().unwrap_or_default();
    if !line.contains(&b':') || field.is_empty() || !field.iter().all(|&b| is_tchar(b)) {
        return Err(bad("malformed trailer field"));
    }
    Ok(same_field(field, name))
}

/// A line without its ending (CRLF, or a bare LF), `None` when it has none
/// or holds a control byte other than HTAB (a bare CR among them: a
/// backend that ends lines there would frame the body otherwise).
fn line_text(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let ctl = |b: &u8| (b.is_ascii_control() && *b != b'\t') || *b == 0x7f;
    (!line.iter().any(ctl)).then_some(line)
}

/// The size of a chunk-size line's text: `chunk-size [ BWS ";"
/// chunk-ext ]`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    match line.split_once(';') {
        Some((size, _ext)) => digits(size.trim_end_matches([' ', '\t']), 16),
        None => digits(line, 16),
    }
}

/// The body framing named by a head's fields.
fn framing(headers: &[httparse::Header<'_>]) -> io::Result<Body> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| bad("bad Content-Length"))?;
            for part in text.split(',') {
                let n = digits(part.trim(), 10).ok_or_else(|| bad("bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting Content-Length"));
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let text = std::str::from_utf8(h.value).map_err(|_| bad("bad Transfer-Encoding"))?;
            let last = text.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        }
    }
    match (chunked, length) {
        (Some(_), Some(_)) => Err(bad("both Content-Length and Transfer-Encoding")),
        (Some(true), None) => Ok(Body::Chunked),
        (Some(false), None) => Ok(Body::UntilEof),
        (None, Some(n)) => Ok(Body::Length(n)),
        (None, None) => Ok(Body::None),
    }
}

/// Copies a body delimited as `body` from `r` to `w`, without the trailer
/// field `strip` when there is one.
async fn forward_body<R, W>(
    r: &mut BufReader<R>,
    w: &mut W,
    body: Body,
    strip: Option<&str>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match body {
        Body::None => Ok(()),
        Body::Length(n) => copy_exactly(r, w, n).await,
        Body::UntilEof => tokio::io::copy_buf(r, w).await.map(drop),
        // A request's framing goes on in CRLF lines of its own (what a
        // backend reads is what this proxy parsed); a response's is passed
        // as it came.
        Body::Chunked => loop {
            let mut line = Vec::new();
            if read_line(r, &mut line, MAX_LINE).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let text = line_text(&line).ok_or_else(|| bad("bad chunk line"))?;
            let size = chunk_size(text).ok_or_else(|| bad("bad chunk size"))?;
            write_line(w, &line, text, strip.is_some()).await?;
            if size == 0 {
                // Trailer fields, up to an empty line.
                loop {
                    line.clear();
                    if read_line(r, &mut line, MAX_LINE).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let text = line_text(&line).ok_or_else(|| bad("bad trailer line"))?;
                    if !text.is_empty()
                        && let Some(name) = strip
                        && trailer_names(text, name)?
                    {
                        continue;
                    }
                    write_line(w, &line, text, strip.is_some()).await?;
                    if text.is_empty() {
                        return Ok(());
                    }
                }
            }
            copy_exactly(r, w, size).await?;
            line.clear();
            read_line(r, &mut line, MAX_LINE).await?;
            if line != b"\r\n" && line != b"\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            write_line(w, &line, b"", strip.is_some()).await?;
        },
    }
}

/// Writes a framing line: as it came, or as `text` and CRLF.
async fn write_line<W: AsyncWrite + Unpin>(
    w: &mut W,
    line: &[u8],
    text: &[u8],
    rebuilt: bool,
) -> io::Result<()> {
    if rebuilt {
        w.write_all(text).await?;
        w.write_all(b"\r\n").await
    } else {
        w.write_all(line).await
    }
}

async fn copy_exactly<R, W>(r: &mut BufReader<R>, w: &mut W, n: u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy_buf(&mut (&mut *r).take(n), w).await?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The request head rebuilt: `name` removed wherever the client put it,
/// then added with `value` when there is one.
fn rewrite(req: &httparse::Request<'_, '_>, name: &str, value: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(format!(" HTTP/1.{}\r\n", req.version.unwrap_or(1)).as_bytes());
    for h in req.headers.iter() {
        if same_field(h.name.as_bytes(), name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = value {
        out.extend_from_slice(format!("{name}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Client to backend: requests with the header set.
async fn requests<R, W>(
    client: R,
    mut backend: W,
    name: &str,
    value: Option<&str>,
    pending: mpsc::Sender<Pending>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut client = BufReader::with_capacity(64 * 1024, client);
    loop {
        let Some(head) = read_head(&mut client).await? else {
            return backend.shutdown().await;
        };
        let mut fields = fields_for(&head);
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(bad("malformed HTTP request")),
        }
        let body = match framing(req.headers)? {
            Body::UntilEof => return Err(bad("request body without a length")),
            b => b,
        };
        let connect = req.method == Some("CONNECT");
        let upgrade = connect
            || req
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
        let rewritten = rewrite(&req, name, value);
        // Queued before the request leaves, so that its response always
        // finds it.
        let agreed = if upgrade {
            let (tx, rx) = oneshot::channel();
            let _ = pending
                .send(Pending::Upgrade {
                    connect,
                    agreed: tx,
                })
                .await;
            Some(rx)
        } else {
            let _ = pending
                .send(Pending::Request {
                    head_method: req.method == Some("HEAD"),
                })
                .await;
            None
        };
        backend.write_all(&rewritten).await?;
        forward_body(&mut client, &mut backend, body, Some(name)).await?;
        backend.flush().await?;
        if let Some(agreed) = agreed {
            if agreed.await.unwrap_or(false) {
                // The backend left HTTP: the rest is not requests.
                tokio::io::copy_buf(&mut client, &mut backend).await?;
                return backend.shutdown().await;
            }
        }
    }
}

/// Backend to client: responses unchanged, watched for their framing and
/// for the answer to an upgrade.
async fn responses<R, W>(
    backend: R,
    mut client: W,
    mut pending: mpsc::Receiver<Pending>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut backend = BufReader::with_capacity(64 * 1024, backend);
    loop {
        let Some(head) = read_head(&mut backend).await? else {
            return client.shutdown().await;
        };
        let mut fields = fields_for(&head);
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(bad("malformed HTTP response from the backend")),
        }
        let code = resp.code.unwrap_or(0);
        client.write_all(&head).await?;
        if (100..200).contains(&code) && code != 101 {
            continue; // interim: the final response follows
        }
        // A response with no request pending (a timeout notice before
        // closing) is taken as an ordinary one.
        let (no_body, switched) = match pending.try_recv() {
            Ok(Pending::Request { head_method }) => (head_method, false),
            Ok(Pending::Upgrade { connect, agreed }) => {
                let switched = if connect {
                    (200..300).contains(&code)
                } else {
                    code == 101
                };
                let _ = agreed.send(switched);
                (false, switched)
            }
            Err(_) => (false, false),
        };
        if switched {
            tokio::io::copy_buf(&mut backend, &mut client).await?;
            return client.shutdown().await;
        }
        let body = if no_body || code == 204 || code == 304 {
            Body::None
        } else {
            match framing(resp.headers)? {
                Body::None => Body::UntilEof,
                b => b,
            }
        };
        let until_eof = body == Body::UntilEof;
        forward_body(&mut backend, &mut client, body, None).await?;
        client.flush().await?;
        if until_eof {
            return client.shutdown().await;
        }
    }
}

/// Carries one HTTP/1.x connection between a client and a backend, setting
/// the header `name` to `value` (or removing it when `value` is `None`: a
/// plain client) on every request.
pub async fn carry<CR, CW, BR, BW>(
    (client_r, client_w): (CR, CW),
    (backend_r, backend_w): (BR, BW),
    name: &str,
    value: Option<&str>,
) -> io::Result<()>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::try_join!(
        requests(client_r, backend_w, name, value, tx),
        responses(backend_r, client_w, rx)
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const NAME: &str = "Tcpcrypt-Session-Id";

    /// Runs `carry` with `requests` from the client and `responses` from
    /// the backend: what the backend received, what the client received,
    /// and how it ended.
    async fn run(requests: &[u8], responses: &[u8]) -> (Vec<u8>, Vec<u8>, io::Result<()>) {
        let (client, mut client_end) = duplex(1 << 20);
        let (backend, mut backend_end) = duplex(1 << 20);
        client_end.write_all(requests).await.unwrap();
        client_end.shutdown().await.unwrap();
        backend_end.write_all(responses).await.unwrap();
        backend_end.shutdown().await.unwrap();
        let result = carry(
            tokio::io::split(client),
            tokio::io::split(backend),
            NAME,
            Some("abc"),
        )
        .await;
        let (mut to_backend, mut to_client) = (Vec::new(), Vec::new());
        backend_end.read_to_end(&mut to_backend).await.unwrap();
        client_end.read_to_end(&mut to_client).await.unwrap();
        (to_backend, to_client, result)
    }

    #[tokio::test]
    async fn every_pipelined_request_gets_the_header_and_forgeries_go() {
        let reqs = b"GET /1 HTTP/1.1\r\nHost: h\r\nTCPCRYPT-SESSION-ID: forged\r\ntcpcrypt_session_id: forged\r\n\r\n\
            POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n3;ext=1\r\nGET\r\n0\r\nTrailer: t\r\n\r\n\
            \r\nGET /3 HTTP/1.0\r\n\r\n";
        let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA\
            HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nB\r\n0\r\n\r\n\
            HTTP/1.0 200 OK\r\n\r\nuntil the end";
        let (to_backend, to_client, result) = run(reqs, resps).await;
        result.unwrap();
        let expected = b"GET /1 HTTP/1.1\r\nHost: h\r\nTcpcrypt-Session-Id: abc\r\n\r\n\
            POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTcpcrypt-Session-Id: abc\r\n\r\n\
            5\r\nhello\r\n3;ext=1\r\nGET\r\n0\r\nTrailer: t\r\n\r\n\
            GET /3 HTTP/1.0\r\nTcpcrypt-Session-Id: abc\r\n\r\n";
        assert_eq!(
            String::from_utf8_lossy(&to_backend),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(to_client, resps, "responses pass unchanged");
    }

    #[tokio::test]
    async fn a_body_that_looks_like_a_request_is_not_rewritten() {
        let body = b"GET /x HTTP/1.1\r\nTcpcrypt-Session-Id: forged\r\n\r\n";
        let mut reqs =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        reqs.extend_from_slice(body);
        let (to_backend, _, result) = run(&reqs, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        result.unwrap();
        assert!(to_backend.ends_with(body), "the body is carried as it is");
        assert_eq!(
            String::from_utf8_lossy(&to_backend)
                .matches("Tcpcrypt-Session-Id: abc")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn after_an_accepted_upgrade_bytes_pass_unchanged() {
        let reqs = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
            GET /not-http HTTP/1.1\r\nTcpcrypt-Session-Id: forged\r\n\r\n";
        let resps = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nframes";
        let (to_backend, to_client, result) = run(reqs, resps).await;
        result.unwrap();
        assert!(
            to_backend.ends_with(b"GET /not-http HTTP/1.1\r\nTcpcrypt-Session-Id: forged\r\n\r\n")
        );
        assert_eq!(to_client, resps);
    }

    #[tokio::test]
    async fn after_a_declined_upgrade_requests_are_still_rewritten() {
        let reqs = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
            GET /next HTTP/1.1\r\nTcpcrypt-Session-Id: forged\r\n\r\n";
        let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (to_backend, _, result) = run(reqs, resps).await;
        result.unwrap();
        let text = String::from_utf8_lossy(&to_backend);
        assert!(!text.contains("forged"), "{text}");
        assert_eq!(text.matches("Tcpcrypt-Session-Id: abc").count(), 2);
    }

    #[tokio::test]
    async fn a_forged_header_in_a_chunked_trailer_goes_too() {
        let reqs = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: Tcpcrypt-Session-Id\r\n\r\n\
            5\r\nhello\r\n0\r\nX-Sum: 1\r\ntcpcrypt-session-id: forged\r\nTcpcrypt_Session_Id: forged\r\n\r\n";
        let (to_backend, _, result) = run(reqs, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        result.unwrap();
        let text = String::from_utf8_lossy(&to_backend);
        assert!(!text.contains("forged"), "{text}");
        assert!(text.ends_with("0\r\nX-Sum: 1\r\n\r\n"), "{text}");
        // A trailer line that is no field is refused, not passed on.
        for trailer in [
            &b" folded: forged\r\n"[..],
            b"Tcpcrypt-Session-Id : forged\r\n",
            b"Tcpcrypt-Session-Id\x0b: forged\r\n",
        ] {
            let mut reqs = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
            reqs.extend_from_slice(trailer);
            reqs.extend_from_slice(b"\r\n");
            let (to_backend, _, result) = run(&reqs, b"").await;
            assert!(result.is_err());
            assert!(!String::from_utf8_lossy(&to_backend).contains("forged"));
        }
    }

    #[tokio::test]
    async fn heads_with_hundreds_of_fields_pass() {
        let cookies: String = (0..300)
            .map(|i| format!("Set-Cookie: c{i}=v\r\n"))
            .collect();
        let resp = format!("HTTP/1.1 200 OK\r\n{cookies}Content-Length: 2\r\n\r\nok");
        let fields: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        let (to_backend, to_client, result) = run(req.as_bytes(), resp.as_bytes()).await;
        result.unwrap();
        assert_eq!(to_client, resp.as_bytes(), "the response passes unchanged");
        assert!(
            String::from_utf8_lossy(&to_backend).contains("X-F299: v\r\nTcpcrypt-Session-Id: abc")
        );
    }

    #[tokio::test]
    async fn whitespace_before_a_chunk_extension_is_allowed() {
        // BWS (RFC 9112 7.1.1); a sign or a leading space is refused
        // (`ambiguous_or_malformed_requests_are_refused`).
        let ok = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 ;x=y\r\na\r\n0\r\n\r\n";
        let (_, _, result) = run(ok, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        result.unwrap();
        // Bare LF line ends are taken, and go on to the backend as CRLF.
        let lf = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 ;x=y\na\n0\nX-Sum: 1\n\n";
        let (to_backend, _, result) = run(lf, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        result.unwrap();
        let text = String::from_utf8_lossy(&to_backend);
        assert!(
            text.ends_with("\r\n\r\n1 ;x=y\r\na\r\n0\r\nX-Sum: 1\r\n\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn ambiguous_or_malformed_requests_are_refused() {
        for bad_request in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;x\r\r\na\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;x\0y\r\na\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            // Lengths and chunk sizes are digits only.
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: 0x1\r\n\r\na",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\na\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 1\r\na\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\na\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\r\na\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n", // cut short
        ] {
            let (to_backend, _, result) = run(bad_request, b"").await;
            assert!(result.is_err(), "{}", String::from_utf8_lossy(bad_request));
            assert!(
                !String::from_utf8_lossy(&to_backend).contains("Content-Length: 1"),
                "nothing ambiguous forwarded"
            );
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let (to_backend, _, result) = run(huge.as_bytes(), b"").await;
        assert!(result.is_err());
        assert!(to_backend.is_empty());
    }

    /// Requests built from pieces that a client controls, some of them
    /// broken: heads with and without the header, bodies of every framing,
    /// stray bytes.
    fn request_piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec()),
            Just(b"GET / HTTP/1.1\r\nTcpcrypt-Session-Id: forged\r\n\r\n".to_vec()),
            "[a-z]{0,20}".prop_map(|b| format!(
                "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
            .into_bytes()),
            "[a-z]{1,20}".prop_map(|b| format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                b.len()
            )
            .into_bytes()),
            Just(b"\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a client sends, the proxy ends (no panic, no hang), and
        /// no request reaches the backend with a header value the client
        /// chose.
        #[test]
        fn any_client_bytes_end_cleanly_and_never_carry_a_forged_header(
            pieces in proptest::collection::vec(request_piece(), 0..6)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let requests = pieces.concat();
            let (to_backend, _, _) = rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    run(&requests, b"HTTP/1.1 204 No Content\r\n\r\n"),
                )
                .await
                .expect("the proxy ends")
            });
            let text = String::from_utf8_lossy(&to_backend).to_ascii_lowercase();
            for (i, _) in text.match_indices("tcpcrypt-session-id:") {
                let value = text[i + 20..].trim_start();
                proptest::prop_assert!(value.starts_with("abc"), "{}", text);
            }
        }
    }
}
