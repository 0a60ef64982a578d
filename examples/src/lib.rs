//! Shared code of the example programs: a password login bound to the
//! tcpcrypt session ID.
//!
//! The login runs SPAKE2 (a password-authenticated key exchange: the
//! password never crosses the wire, and an eavesdropper cannot test
//! guesses offline) with the session ID in its identity, then each side
//! proves it holds the resulting key with a MAC over its role and the
//! session ID. A man in the middle who terminates two tcpcrypt sessions has
//! a different session ID on each leg, so the proofs fail even if it relays
//! every login message faithfully: it would need the password.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;
use tcpcrypt_tokio::{Role, SessionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest login message accepted from the peer.
const MAX_MESSAGE: usize = 256;

/// Why a login did not succeed.
#[derive(Debug)]
pub enum LoginError {
    /// The stream is plain: there is no session ID to bind to.
    NotEncrypted,
    /// Wrong password, or a man in the middle.
    Rejected,
    /// The peer broke the login protocol or the connection failed.
    Io(std::io::Error),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::NotEncrypted => {
                f.write_str("the connection is not encrypted: no session ID to bind the login to")
            }
            LoginError::Rejected => f.write_str(
                "login rejected: wrong password, or a man in the middle (the session IDs differ)",
            ),
            LoginError::Io(e) => write!(f, "login failed: {e}"),
        }
    }
}

impl std::error::Error for LoginError {}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        LoginError::Io(e)
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(&(msg.len() as u16).to_be_bytes()).await?;
    s.write_all(msg).await?;
    s.flush().await
}

async fn recv<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "login message too long",
        ));
    }
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await?;
    Ok(msg)
}

/// The proof a side sends: a MAC, under the PAKE key, of its role and the
/// session ID (the tcpinc API draft's "self name").
fn proof(key: &[u8], role: Role, session: &SessionInfo) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"tcpcrypt-login-proof");
    mac.update(&[role.as_u8()]);
    mac.update(session.session_id.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Runs the login on an encrypted stream whose session is `session`. Both
/// sides call it, with the same password; it succeeds only if the password
/// matches and both see the same session ID.
pub async fn login<S>(
    stream: &mut S,
    session: Option<&SessionInfo>,
    password: &[u8],
) -> Result<(), LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = session.ok_or(LoginError::NotEncrypted)?;
    let identity = [&b"tcpcrypt-login:"[..], session.session_id.as_bytes()].concat();
    let (pake, outbound) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(password),
        &Identity::new(&identity),
    );
    send(stream, &outbound).await?;
    let inbound = recv(stream).await?;
    let key = pake.finish(&inbound).map_err(|_| LoginError::Rejected)?;
    send(stream, &proof(&key, session.role, session)).await?;
    let theirs = recv(stream).await?;
    let expected = proof(&key, session.role.peer(), session);
    if bool::from(theirs.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(LoginError::Rejected)
    }
}

/// Prints a session in one line, as the examples show it.
pub fn describe(s: Option<&SessionInfo>) -> String {
    match s {
        Some(s) => format!(
            "encrypted: role {}, TEP 0x{:02x}, {}, session ID {}",
            s.role, s.tep_byte, s.aead, s.session_id
        ),
        None => "not encrypted".to_string(),
    }
}
