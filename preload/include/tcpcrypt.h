/*
 * tcpcrypt.h: what libtcpcrypt.so offers programs that want to know about
 * the encryption of their TCP connections (for example to bind a login to
 * the session ID).
 *
 * Two ways to ask, for a socket the library relays:
 *
 *  1. The calls below, found with dlsym() or by linking against
 *     libtcpcrypt.so.
 *  2. getsockopt(fd, IPPROTO_TCP, option, buf, &len) with the TCP_ENO_* and
 *     TCP_CRYPT_* options below, named after draft-ietf-tcpinc-api. The
 *     values are this library's own (no kernel defines them); the kernel
 *     answers ENOPROTOOPT for them when the library is not loaded.
 *
 * Errors (errno): ENOTCONN while the tcpcrypt handshake is still running;
 * EINVAL when the connection is not encrypted (the peer does not speak
 * tcpcrypt, the socket is not a relayed TCP socket, or the buffer is too
 * small). A session ID is never reported empty or zero.
 */
#ifndef TCPCRYPT_H
#define TCPCRYPT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Length of a tcpcrypt session ID: the negotiated TEP byte and 32 bytes. */
#define TCPCRYPT_SESSION_ID_LEN 33

/* getsockopt(IPPROTO_TCP, ...) options, all read-only. */
#define TCP_ENO_SESSID      0x54430001 /* bytes: the session ID (33) */
#define TCP_ENO_NEGTEP      0x54430002 /* int: negotiated TEP byte as B sent it (v bit included) */
#define TCP_ENO_ROLE        0x54430003 /* int: 0 = A (connected), 1 = B (accepted) */
#define TCP_ENO_SELF_NAME   0x54430004 /* bytes: role byte, then the session ID (34) */
#define TCP_ENO_PEER_NAME   0x54430005 /* bytes: the peer's role byte, then the session ID (34) */
#define TCP_ENO_TRANSCRIPT  0x54430006 /* bytes: A's ENO option, then B's */
#define TCP_ENO_PEER_GOPT   0x54430007 /* int: the peer's global suboption */
#define TCP_CRYPT_CONF      0x54430008 /* int: the AEAD identifier (1 AES-128-GCM, 2 AES-256-GCM, 0x10 ChaCha20-Poly1305) */

/* Copies the session ID of `fd` into `buf` (up to `len` bytes) and returns
 * its length (33), or -1 with errno set. */
int tcpcrypt_session_id(int fd, unsigned char *buf, size_t len);

/* 1 if `fd` is encrypted, 0 if it is plain or not relayed, -1 with errno
 * ENOTCONN while the handshake runs. */
int tcpcrypt_is_encrypted(int fd);

#ifdef __cplusplus
}
#endif

#endif /* TCPCRYPT_H */
