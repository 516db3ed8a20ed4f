/* HTTP/1.1 on a connection (RFC 9112), parsed by llhttp: requests become streams, one at a time
 * in order (pipelined requests wait in the read buffer), responses are framed and serialised
 * into the connection's writes. Malformed input gets its status and a close. */
#ifndef PH_H1_H
#define PH_H1_H

#include "conn.h"
#include "stream.h"

/* Attaches HTTP/1.1 to a freshly started connection. 0 or PH_ENOMEM. */
int ph_h1_attach(ph_conn_t *conn);

#endif
