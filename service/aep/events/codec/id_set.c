/*
 * IdSet: a set of str that never rebuilds itself while its size holds steady.
 *
 * The file store keeps the ids of the last dedupe_max_ids events it wrote
 * (aep.storage.file.RecentIds): a batch's ids in, the oldest batch's ids out.
 * A CPython set under that churn fills with deleted-entry markers and, when
 * they reach its fill limit, rebuilds its whole table in one go: for 500,000
 * ids a stall of the event loop of several milliseconds every ~125,000 events.
 * This table uses linear probing with backward-shift deletion: a removal
 * moves the entries after it back instead of leaving a marker, so the table
 * holds only live entries and grows (doubling) only when they outgrow half
 * of it, which a bounded set stops doing once it reached its bound.
 *
 * It holds exact str only (TypeError otherwise) and compares them by their
 * code points, as set does; hashes are the str's own (cached in the object).
 * Nothing here runs Python code while the table is being changed: hashing and
 * comparing exact str cannot call back.
 *
 *   IdSet(expected=0)      room for `expected` ids without growing
 *   len(s), id in s
 *   s.isdisjoint(ids) -> bool, s.update(ids), s.difference_update(ids), s.clear()
 *   s.add_if_new(ids) -> bool   all of them if none is in s and none repeats, else none
 *
 * Unlike set's, the methods taking many ids check them all first: one that is
 * not a str raises TypeError before any is looked up, and the set is left as
 * it was. They look the ids up in order, each one's slot fetched from memory
 * a few ids ahead (see each()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "id_set.h"

typedef struct {
    Py_hash_t hash;
    PyObject *key; /* NULL: empty slot */
} IdSetEntry;

typedef struct {
    PyObject_HEAD IdSetEntry *table;
    size_t mask; /* table size - 1; the size is a power of two */
    size_t used;
} IdSetObject;

#define MIN_SLOTS 8

static int same_str(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    Py_ssize_t length = PyUnicode_GET_LENGTH(a);
    int kind = PyUnicode_KIND(a);
    /* Canonical (compact) str: equal text has the same kind and length. */
    return length == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b) &&
           memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)length * (size_t)kind) == 0;
}

/* The slot holding `key`, or the empty slot where it would go. */
static IdSetEntry *find_slot(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    size_t index = (size_t)hash & self->mask;
    for (;;) {
        IdSetEntry *entry = &self->table[index];
        if (entry->key == NULL || (entry->hash == hash && same_str(entry->key, key))) return entry;
        index = (index + 1) & self->mask;
    }
}

static size_t slots_for(size_t count) {
    size_t slots = MIN_SLOTS;
    while (slots / 2 < count) {
        if (slots > ((size_t)PY_SSIZE_T_MAX / sizeof(IdSetEntry)) / 2) return 0;
        slots *= 2;
    }
    return slots;
}

static int resize(IdSetObject *self, size_t slots) {
    IdSetEntry *table = PyMem_Calloc(slots, sizeof(IdSetEntry));
    if (!table) {
        PyErr_NoMemory();
        return -1;
    }
    IdSetEntry *old = self->table;
    size_t old_slots = old ? self->mask + 1 : 0;
    self->table = table;
    self->mask = slots - 1;
    for (size_t i = 0; i < old_slots; i++) {
        if (old[i].key) *find_slot(self, old[i].key, old[i].hash) = old[i];
    }
    PyMem_Free(old);
    return 0;
}

static int check_key(PyObject *key, Py_hash_t *hash) {
    if (!PyUnicode_CheckExact(key)) {
        PyErr_Format(PyExc_TypeError, "IdSet holds str, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    if (PyUnicode_READY(key) < 0) return -1;
    *hash = PyObject_Hash(key);
    return *hash == -1 && PyErr_Occurred() ? -1 : 0;
}

static int add_at(IdSetObject *self, IdSetEntry *entry, PyObject *key, Py_hash_t hash);

/* Adds a checked str (see check_key) of that hash; -1 only when out of memory. */
static int add_key(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    IdSetEntry *entry = find_slot(self, key, hash);
    if (entry->key) return 0;
    return add_at(self, entry, key, hash);
}

/* Puts the key into `entry`, the empty slot find_slot gave for it (found again
 * after growing the table); -1 only when out of memory. */
static int add_at(IdSetObject *self, IdSetEntry *entry, PyObject *key, Py_hash_t hash) {
    if ((self->used + 1) > (self->mask + 1) / 2) {
        size_t slots = slots_for(self->used + 1);
        if (!slots) {
            PyErr_NoMemory();
            return -1;
        }
        if (resize(self, slots)) return -1;
        entry = find_slot(self, key, hash);
    }
    Py_INCREF(key);
    entry->key = key;
    entry->hash = hash;
    self->used++;
    return 0;
}

/* Removes a checked str of that hash if it is in the table. */
static void discard_key(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    IdSetEntry *entry = find_slot(self, key, hash);
    if (!entry->key) return;
    PyObject *removed = entry->key;
    size_t hole = (size_t)(entry - self->table);
    size_t index = hole;
    /* Backward shift: an entry after the hole whose home slot is not in the
     * cyclic range (hole, index] moves into the hole, which moves to it. */
    for (;;) {
        index = (index + 1) & self->mask;
        IdSetEntry *next = &self->table[index];
        if (!next->key) break;
        size_t home = (size_t)next->hash & self->mask;
        int stays = hole <= index ? (hole < home && home <= index) : (hole < home || home <= index);
        if (!stays) {
            self->table[hole] = *next;
            hole = index;
        }
    }
    self->table[hole].key = NULL;
    self->table[hole].hash = 0;
    self->used--;
    Py_DECREF(removed); /* a str: its deallocation runs no Python code */
}

static int contains_key(IdSetObject *self, PyObject *key) {
    Py_hash_t hash;
    if (check_key(key, &hash)) return -1;
    return find_slot(self, key, hash)->key != NULL;
}

static PyObject *IdSet_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"expected", NULL};
    Py_ssize_t expected = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|n:IdSet", keywords, &expected)) return NULL;
    if (expected < 0) {
        PyErr_SetString(PyExc_ValueError, "IdSet: expected must be >= 0");
        return NULL;
    }
    size_t slots = slots_for((size_t)expected);
    if (!slots) return PyErr_NoMemory();
    IdSetObject *self = (IdSetObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->table = NULL;
    self->used = 0;
    if (resize(self, slots)) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void clear_table(IdSetObject *self) {
    if (!self->table) return;
    for (size_t i = 0; i <= self->mask; i++) {
        PyObject *key = self->table[i].key;
        self->table[i].key = NULL;
        Py_XDECREF(key);
    }
    self->used = 0;
}

static void IdSet_dealloc(IdSetObject *self) {
    clear_table(self);
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* How many keys ahead of the one being looked up its slot is fetched from
 * memory. At the file store's 500,000 ids the table is tens of MB: without it
 * every lookup waits for its own cache miss, one after the other. */
#define LOOKAHEAD 16

static inline void prefetch_home(const IdSetObject *self, Py_hash_t hash) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(&self->table[(size_t)hash & self->mask]);
#else
    (void)self;
    (void)hash;
#endif
}

typedef int (*key_op)(IdSetObject *, PyObject *, Py_hash_t);

/* op on every key of `sequence` (a list or tuple), in order, each key's slot
 * fetched LOOKAHEAD keys ahead. Every key is checked to be a str first, so a
 * bad one changes nothing. op returns -1 (exception set), 0 (go on) or 1
 * (stop: the answer is known). Returns -1, 0, or 1 if op stopped; *stopped_at
 * (if given) is the index of the key op last ran on. */
static int each_of(IdSetObject *self, PyObject *sequence, key_op op, Py_ssize_t *stopped_at) {
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    PyObject **keys = PySequence_Fast_ITEMS(sequence);
    Py_hash_t ahead[LOOKAHEAD];
    for (Py_ssize_t i = 0; i < count; i++) {
        if (check_key(keys[i], &ahead[0])) return -1;
    }
    for (Py_ssize_t i = 0; i < count && i < LOOKAHEAD; i++) {
        ahead[i] = PyObject_Hash(keys[i]); /* an exact, ready str: cannot fail */
        prefetch_home(self, ahead[i]);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_hash_t hash = ahead[i % LOOKAHEAD];
        if (i + LOOKAHEAD < count) {
            Py_hash_t next = PyObject_Hash(keys[i + LOOKAHEAD]);
            ahead[i % LOOKAHEAD] = next;
            prefetch_home(self, next);
        }
        int result = op(self, keys[i], hash);
        if (result) {
            if (stopped_at) *stopped_at = i;
            return result;
        }
    }
    return 0;
}

static int each(IdSetObject *self, PyObject *items, key_op op) {
    PyObject *sequence = PySequence_Fast(items, "IdSet: expected an iterable of str");
    if (!sequence) return -1;
    int result = each_of(self, sequence, op, NULL);
    Py_DECREF(sequence);
    return result;
}

static int add_op(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    return add_key(self, key, hash);
}

static int discard_op(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    discard_key(self, key, hash);
    return 0;
}

static int found_op(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    return find_slot(self, key, hash)->key != NULL;
}

/* Adds a key that is not in the table yet; 1 if it is (recent, or earlier in
 * the same call). */
static int add_new_op(IdSetObject *self, PyObject *key, Py_hash_t hash) {
    IdSetEntry *entry = find_slot(self, key, hash);
    if (entry->key) return 1;
    return add_at(self, entry, key, hash);
}

/* add_if_new(ids) -> bool: adds every id if none is in the set and none
 * repeats, in one pass; otherwise (or on an error) adds none. */
static PyObject *IdSet_add_if_new(IdSetObject *self, PyObject *items) {
    PyObject *sequence = PySequence_Fast(items, "IdSet: expected an iterable of str");
    if (!sequence) return NULL;
    Py_ssize_t stopped_at = 0;
    int result = each_of(self, sequence, add_new_op, &stopped_at);
    if (result != 0 && stopped_at > 0) {
        /* keys 0 .. stopped_at - 1 went in, each once: take them out again */
        PyObject **keys = PySequence_Fast_ITEMS(sequence);
        for (Py_ssize_t i = 0; i < stopped_at; i++) {
            discard_key(self, keys[i], PyObject_Hash(keys[i]));
        }
    }
    Py_DECREF(sequence);
    if (result < 0) return NULL;
    return PyBool_FromLong(result == 0);
}

static PyObject *IdSet_update(IdSetObject *self, PyObject *items) {
    if (each(self, items, add_op) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *IdSet_difference_update(IdSetObject *self, PyObject *items) {
    if (each(self, items, discard_op) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *IdSet_isdisjoint(IdSetObject *self, PyObject *items) {
    int found = each(self, items, found_op);
    if (found < 0) return NULL;
    return PyBool_FromLong(!found);
}

static PyObject *IdSet_clear(IdSetObject *self, PyObject *Py_UNUSED(ignored)) {
    clear_table(self);
    Py_RETURN_NONE;
}

static PyObject *IdSet_sizeof(IdSetObject *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(sizeof(IdSetObject) + (self->mask + 1) * sizeof(IdSetEntry));
}

static Py_ssize_t IdSet_length(IdSetObject *self) { return (Py_ssize_t)self->used; }

static int IdSet_contains(IdSetObject *self, PyObject *key) { return contains_key(self, key); }

static PySequenceMethods IdSet_as_sequence = {
    .sq_length = (lenfunc)IdSet_length,
    .sq_contains = (objobjproc)IdSet_contains,
};

static PyMethodDef IdSet_methods[] = {
    {"update", (PyCFunction)IdSet_update, METH_O, "update(ids): add every id."},
    {"difference_update", (PyCFunction)IdSet_difference_update, METH_O,
     "difference_update(ids): remove every id that is in the set."},
    {"add_if_new", (PyCFunction)IdSet_add_if_new, METH_O,
     "add_if_new(ids) -> bool: add every id if none is in the set and none repeats; "
     "else add none."},
    {"isdisjoint", (PyCFunction)IdSet_isdisjoint, METH_O,
     "isdisjoint(ids) -> bool: no id is in the set."},
    {"clear", (PyCFunction)IdSet_clear, METH_NOARGS, "clear(): remove every id."},
    {"__sizeof__", (PyCFunction)IdSet_sizeof, METH_NOARGS, "The table's size in bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IdSetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aep.events.codec._native.IdSet",
    .tp_basicsize = sizeof(IdSetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A set of str that never rebuilds while its size holds steady (see id_set.c).",
    .tp_new = IdSet_new,
    .tp_dealloc = (destructor)IdSet_dealloc,
    .tp_as_sequence = &IdSet_as_sequence,
    .tp_methods = IdSet_methods,
    .tp_hash = PyObject_HashNotImplemented,
};

int aep_add_id_set_type(PyObject *module) {
    if (PyType_Ready(&IdSetType) < 0) return -1;
    return PyModule_AddObjectRef(module, "IdSet", (PyObject *)&IdSetType);
}
