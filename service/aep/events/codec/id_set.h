/* IdSet (id_set.c): the file store's set of recent ids, in aep.events.codec._native. */
#ifndef AEP_ID_SET_H
#define AEP_ID_SET_H

#include <Python.h>

/* Adds the IdSet type to the module; 0, or -1 with an exception set. */
int aep_add_id_set_type(PyObject *module);

#endif
