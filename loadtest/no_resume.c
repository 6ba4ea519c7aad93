/* LD_PRELOAD shim for wrk: every new connection makes a full TLS handshake.
 *
 * wrk keeps one OpenSSL SSL object per connection slot and calls SSL_clear() on it before
 * reconnecting; SSL_clear() keeps the last session, so the next handshake resumes it (a PSK
 * handshake in TLS 1.3: no certificate, no signature). compare.sh's tls13-new scenario wants
 * the server's full handshake for every request, so this drops the session first.
 *
 *   cc -shared -fPIC -O2 -o no_resume.so loadtest/no_resume.c -ldl
 *   LD_PRELOAD=./no_resume.so wrk ... https://...
 *
 * Declared here rather than taken from <openssl/ssl.h>, so no OpenSSL headers are needed;
 * wrk has libssl loaded when the symbols are resolved.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);

int SSL_clear(SSL *s) {
  static int (*real_clear)(SSL *);
  if (real_clear == NULL) {
    real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
  }
  SSL_set_session(s, NULL);
  return real_clear(s);
}
