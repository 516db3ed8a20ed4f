/* The WSGI bridge (PEP 3333). The reactor runs on a thread of its own and never takes the GIL;
 * app calls run on Python threads that wait on a work queue. Requests go to them through that
 * queue; what they answer (response parts, wanting more body) comes back through a mailbox
 * (uv_async), so every stream op runs on the reactor's thread. How the threads hand off is
 * described in the README (WSGI). */
#ifndef PH_WSGI_H
#define PH_WSGI_H

#include "bridge.h"
#include "workq.h"

/* Registers the WSGI types (WSGIServer, its input and file wrapper types) on the module; 0 or -1
 * with an exception. */
int ph_wsgi_init_types(PyObject *module, ph_state_t *st);

#endif
