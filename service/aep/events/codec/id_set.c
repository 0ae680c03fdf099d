/*
 * IdSet: the file store's set of recent event ids, keyed on the bytes each id
 * is stored as, and never rebuilding itself while its size holds steady.
 *
 * Keys. An event's key is its id as it appears in its stored line: the JSON
 * string's contents, escapes included, read straight out of the JSON Lines
 * the store writes (each line starts with {"event_id":" -- see json_lines.py).
 * Escaping is a function (orjson's, which the native codec reproduces), so
 * two ids are equal exactly when their escaped forms are. A str given to the
 * str methods is escaped the same way (aep_json_string) and meets the same
 * key. So the file store dedupes a batch without one Python object per event:
 * no str per id from the codec, none to hash, none to free when it ages out.
 * A line that does not start with an event_id string (a hand-made file) is
 * keyed on the whole line, a kind of key no id meets.
 *
 * Table. Linear probing with backward-shift deletion: a removal moves the
 * entries after it back instead of leaving a marker, so the table holds only
 * live entries and grows (doubling) only when they outgrow half of it, which
 * a bounded set stops doing once it reached its bound. (A CPython set under
 * the store's churn -- a batch in, the oldest batch out -- rebuilds its whole
 * table every so often: for 500,000 ids a stall of several milliseconds every
 * ~125,000 events.) An entry is 24 bytes: 32 bits of hash, the size, and the
 * key if it has up to INLINE_KEY bytes -- a UUID in canonical text (every
 * server id, and most clients') is kept as its 16 bytes -- or else a pointer
 * to a copy. Hashes are CPython's
 * keyed hash of bytes (SipHash, seeded per process), so clients choosing ids
 * cannot aim them at one chain.
 *
 *   IdSet(expected=0)        room for `expected` ids without growing
 *   len(s), id in s
 *   s.update(ids), s.difference_update(ids), s.isdisjoint(ids) -> bool
 *   s.add_if_new(ids) -> bool  all of them if none is in s and none repeats, else none
 *   s.claim_lines(parts) -> bytes | None
 *       add_if_new for the events of JSON Lines (a list of bytes-likes, each
 *       whole lines); on success the added keys as a pack, for discard_pack
 *   s.fresh_lines(parts) -> list[bool]
 *       per event: neither in s nor an earlier event's id (s is left as it was)
 *   s.add_ids(ids) -> bytes  update(ids), returning their keys as a pack
 *   s.discard_pack(pack)     remove every key of a pack (claim_lines', add_ids')
 *   s.clear()
 *   ids_of_lines(lines) -> list[str]   (module function) each line's event_id
 *
 * Every method reads all its keys first: an id that is not an exact str
 * (TypeError) or a malformed pack (ValueError) changes nothing. Keys are
 * looked up after all of them were read and hashed, each one's slot having
 * been fetched from memory when its hash was known. Nothing here runs Python
 * code while the table is being changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

#include "codec_core.h"
#include "id_set.h"


#define INLINE_KEY 16
/* size: 0 marks an empty slot; else the stored key's length + 1, with LINE_KEY
 * set for a whole-line key and UUID_KEY for an id that is a UUID in canonical
 * text (36 lowercase hex digits and dashes), stored as its 16 bytes. */
#define LINE_KEY 0x80000000u
#define UUID_KEY 0x40000000u
#define KEY_KINDS (LINE_KEY | UUID_KEY)
#define MAX_KEY_LENGTH 0x3ffffffeu
#define UUID_TEXT_LENGTH 36

/* 24 bytes: 1,048,576 slots (the default 500,000 ids) take 24 MiB. */
typedef struct {
    uint32_t hash; /* the low 32 bits of the key's hash: its home slot and a filter */
    uint32_t size;
    uint8_t key[INLINE_KEY]; /* the stored key, or (longer) a pointer to its PyMem copy */
} IdSetEntry;

typedef struct {
    PyObject_HEAD IdSetEntry *table;
    size_t mask; /* table size - 1; the size is a power of two, at most 2**32 */
    size_t used;
    size_t long_key_bytes; /* held in copies of keys longer than INLINE_KEY */
} IdSetObject;

/* A key being looked up: its stored bytes (in the caller's buffers, or for a
 * UUID in `packed`) and its hash. */
typedef struct {
    const uint8_t *ptr;
    uint32_t hash;
    uint32_t size;
    uint8_t packed[16];
} Key;

#define MIN_SLOTS 8

static const uint8_t ID_PREFIX[] = "{\"event_id\":\"";
#define ID_PREFIX_LENGTH (sizeof ID_PREFIX - 1)

static inline size_t key_length(uint32_t size) { return (size_t)(size & ~KEY_KINDS) - 1; }

static inline const uint8_t *key_bytes(const Key *key) {
    return (key->size & UUID_KEY) ? key->packed : key->ptr;
}

static inline const uint8_t *entry_key(const IdSetEntry *entry) {
    if (key_length(entry->size) <= INLINE_KEY) return entry->key;
    const uint8_t *copy;
    memcpy(&copy, entry->key, sizeof copy);
    return copy;
}

/* Each byte's hex value + 1; 0 for what is not a lowercase hex digit (only the
 * canonical text is packed: an uppercase UUID is another id). */
static const uint8_t HEX_PLUS_ONE[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,
    ['6'] = 7,  ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12,
    ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/* Where the 32 hex digits of a UUID's canonical text are. */
static const uint8_t UUID_DIGITS[32] = {0,  1,  2,  3,  4,  5,  6,  7,  9,  10, 11,
                                        12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25,
                                        26, 27, 28, 29, 30, 31, 32, 33, 34, 35};

/* Packs a UUID's canonical text into its 16 bytes; 0 if `text` is not one. */
static int pack_uuid(const uint8_t *text, size_t length, uint8_t out[16]) {
    if (length != UUID_TEXT_LENGTH || text[8] != '-' || text[13] != '-' || text[18] != '-' ||
        text[23] != '-')
        return 0;
    unsigned missing = 0; /* nonzero once a digit is not one */
    for (size_t n = 0; n < 16; n++) {
        unsigned high = HEX_PLUS_ONE[text[UUID_DIGITS[2 * n]]];
        unsigned low = HEX_PLUS_ONE[text[UUID_DIGITS[2 * n + 1]]];
        missing |= (high == 0) | (low == 0);
        out[n] = (uint8_t)((high - 1) << 4 | ((low - 1) & 0xf));
    }
    return !missing;
}

static uint32_t hash_key(const uint8_t *ptr, size_t length, uint32_t size) {
#if PY_VERSION_HEX >= 0x030E0000
    uint64_t hash = (uint64_t)Py_HashBuffer(ptr, (Py_ssize_t)length);
#else
    uint64_t hash = (uint64_t)_Py_HashBytes(ptr, (Py_ssize_t)length);
#endif
    if (size & LINE_KEY) hash ^= 0x9e3779b97f4a7c15ULL;
    if (size & UUID_KEY) hash ^= 0x7f4a7c159e3779b9ULL;
    return (uint32_t)hash;
}

/* A key already in its stored form (a pack's): `stored` stays valid meanwhile. */
static inline void set_stored_key(Key *key, const uint8_t *stored, size_t length, uint32_t kind) {
    if (kind & UUID_KEY) {
        memcpy(key->packed, stored, sizeof key->packed);
        key->ptr = NULL;
    } else {
        key->ptr = stored;
    }
    key->size = (uint32_t)(length + 1) | kind;
    key->hash = hash_key(stored, length, key->size);
}

/* An id's key (`kind` 0: its escaped text) or a whole line's (LINE_KEY). */
static inline void set_key(Key *key, const uint8_t *text, size_t length, uint32_t kind) {
    if (!kind && pack_uuid(text, length, key->packed)) {
        key->ptr = NULL;
        key->size = (uint32_t)(sizeof key->packed + 1) | UUID_KEY;
        key->hash = hash_key(key->packed, sizeof key->packed, key->size);
        return;
    }
    set_stored_key(key, text, length, kind);
}

/* The slot holding `key`, or the empty slot where it would go. */
static IdSetEntry *find_slot(IdSetObject *self, const Key *key) {
    size_t index = (size_t)key->hash & self->mask;
    size_t length = key_length(key->size);
    const uint8_t *bytes = key_bytes(key);
    for (;;) {
        IdSetEntry *entry = &self->table[index];
        if (!entry->size) return entry;
        if (entry->hash == key->hash && entry->size == key->size &&
            memcmp(entry_key(entry), bytes, length) == 0)
            return entry;
        index = (index + 1) & self->mask;
    }
}

/* Fetches the cache lines of the slot where a key of that hash starts looking
 * and of the slot after it (a removal looks at that one; an entry may span
 * two lines). Macros, not functions: GCC takes a function that
 * only prefetches for one without effects and drops its calls. */
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH_HOME(self, hash)                                                          \
    do {                                                                                   \
        const IdSetEntry *home_ = &(self)->table[(size_t)(hash) & (self)->mask];           \
        __builtin_prefetch(home_);                                                         \
        __builtin_prefetch((const char *)home_ + sizeof *home_ - 1);                       \
        __builtin_prefetch((const char *)home_ + 2 * sizeof *home_ - 1);                   \
    } while (0)
#else
#define PREFETCH_HOME(self, hash) ((void)(self), (void)(hash))
#endif

/* How many keys ahead of the one being looked up its slot is fetched from
 * memory. At the file store's 500,000 ids the table is tens of MB: without it
 * every lookup waits for its own cache miss, one after the other. */
#define LOOKAHEAD 16

/* Before key i of `keys` (count of them): fetch the slot of key i + LOOKAHEAD
 * (at i = 0, those of the first LOOKAHEAD keys too). */
#define FETCH_AHEAD(self, keys, count, i)                                                  \
    do {                                                                                   \
        if ((i) == 0) {                                                                    \
            for (size_t ahead_ = 0; ahead_ < LOOKAHEAD && ahead_ < (count); ahead_++)      \
                PREFETCH_HOME(self, (keys)[ahead_].hash);                                  \
        }                                                                                  \
        if ((i) + LOOKAHEAD < (count)) PREFETCH_HOME(self, (keys)[(i) + LOOKAHEAD].hash); \
    } while (0)

static size_t slots_for(size_t count) {
    size_t slots = MIN_SLOTS;
    while (slots / 2 < count) {
        if (slots > ((size_t)PY_SSIZE_T_MAX / sizeof(IdSetEntry)) / 2) return 0;
        if (slots >= ((size_t)1 << 31)) return 0; /* 32-bit hashes address the slots */
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
        if (!old[i].size) continue;
        size_t index = (size_t)old[i].hash & self->mask;
        while (table[index].size) index = (index + 1) & self->mask;
        table[index] = old[i]; /* a long key's copy moves with its pointer */
    }
    PyMem_Free(old);
    return 0;
}

/* Puts the key into `entry`, the empty slot find_slot gave for it (found again
 * after growing the table); -1 only when out of memory. */
static int add_at(IdSetObject *self, IdSetEntry *entry, const Key *key) {
    if ((self->used + 1) > (self->mask + 1) / 2) {
        size_t slots = slots_for(self->used + 1);
        if (!slots) {
            PyErr_NoMemory();
            return -1;
        }
        if (resize(self, slots)) return -1;
        entry = find_slot(self, key);
    }
    size_t length = key_length(key->size);
    if (length <= INLINE_KEY) {
        memcpy(entry->key, key_bytes(key), length);
    } else {
        uint8_t *copy = PyMem_Malloc(length);
        if (!copy) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(copy, key_bytes(key), length);
        memcpy(entry->key, &copy, sizeof copy);
        self->long_key_bytes += length;
    }
    entry->hash = key->hash;
    entry->size = key->size;
    self->used++;
    return 0;
}

static void free_key(IdSetObject *self, IdSetEntry *entry) {
    size_t length = key_length(entry->size);
    if (length > INLINE_KEY) {
        PyMem_Free((void *)entry_key(entry));
        self->long_key_bytes -= length;
    }
}

/* Removes the key if it is in the table. */
static void discard_key(IdSetObject *self, const Key *key) {
    IdSetEntry *entry = find_slot(self, key);
    if (!entry->size) return;
    free_key(self, entry);
    size_t hole = (size_t)(entry - self->table);
    size_t index = hole;
    /* Backward shift: an entry after the hole whose home slot is not in the
     * cyclic range (hole, index] moves into the hole, which moves to it. */
    for (;;) {
        index = (index + 1) & self->mask;
        IdSetEntry *next = &self->table[index];
        if (!next->size) break;
        size_t home = (size_t)next->hash & self->mask;
        int stays = hole <= index ? (hole < home && home <= index) : (hole < home || home <= index);
        if (!stays) {
            self->table[hole] = *next;
            hole = index;
        }
    }
    memset(&self->table[hole], 0, sizeof(IdSetEntry));
    self->used--;
}

/* -- reading keys ------------------------------------------------------------------- */

/* The keys of one call, and what holds their bytes until it ends. */
typedef struct {
    Key *keys;
    size_t count, capacity;
    uint8_t *escaped; /* the escaped forms of str ids */
    Py_buffer *views; /* the parts of JSON Lines */
    size_t view_count;
    PyObject *sequence;
} KeyList;

static void keys_free(KeyList *list) {
    for (size_t i = 0; i < list->view_count; i++) PyBuffer_Release(&list->views[i]);
    PyMem_Free(list->views);
    PyMem_Free(list->keys);
    PyMem_Free(list->escaped);
    Py_XDECREF(list->sequence);
    memset(list, 0, sizeof *list);
}

static Key *next_key(KeyList *list) {
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 64;
        Key *keys = PyMem_Realloc(list->keys, capacity * sizeof(Key));
        if (!keys) {
            PyErr_NoMemory();
            return NULL;
        }
        list->keys = keys;
        list->capacity = capacity;
    }
    return &list->keys[list->count++];
}

static int key_too_long(size_t length) {
    if (length <= MAX_KEY_LENGTH) return 0;
    PyErr_SetString(PyExc_ValueError, "IdSet: an id or line longer than 2 GiB");
    return 1;
}

/* `items` as a list or tuple (held by the list until keys_free): its items and
 * their count; -1 on error. (An empty list's items may be NULL.) */
static int sequence_items(KeyList *list, PyObject *items, const char *message, PyObject ***out,
                          Py_ssize_t *count) {
    list->sequence = PySequence_Fast(items, message);
    if (!list->sequence) return -1;
    *count = PySequence_Fast_GET_SIZE(list->sequence);
    *out = PySequence_Fast_ITEMS(list->sequence);
    return 0;
}

/* The keys of str ids (each escaped as its stored form writes it). */
static int keys_of_ids(IdSetObject *Py_UNUSED(self), PyObject *items, KeyList *list) {
    Py_ssize_t count;
    PyObject **ids;
    if (sequence_items(list, items, "IdSet: expected an iterable of str", &ids, &count)) return -1;
    size_t room = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyUnicode_CheckExact(ids[i])) {
            PyErr_Format(PyExc_TypeError, "IdSet holds str, not %.100s", Py_TYPE(ids[i])->tp_name);
            return -1;
        }
        Py_ssize_t length;
        if (!PyUnicode_AsUTF8AndSize(ids[i], &length)) return -1;
        if ((size_t)length > (PY_SSIZE_T_MAX - room) / 6 - 2) return PyErr_NoMemory(), -1;
        room += 6 * (size_t)length + 2;
    }
    list->escaped = PyMem_Malloc(room ? room : 1);
    if (!list->escaped) return PyErr_NoMemory(), -1;
    aep_buf buffer = {list->escaped, 0, room, NULL, NULL};
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length;
        const char *utf8 = PyUnicode_AsUTF8AndSize(ids[i], &length);
        size_t start = buffer.len;
        aep_json_string(&buffer, (aep_span){(const uint8_t *)utf8, (size_t)length});
        size_t escaped = buffer.len - start - 2; /* without its quotes */
        if (key_too_long(escaped)) return -1;
        Key *key = next_key(list);
        if (!key) return -1;
        set_key(key, list->escaped + start + 1, escaped, 0);
    }
    return 0;
}

/* The line starting at *at (up to its newline, or to `end` for a last line
 * without one), its length in *length; *at moves past it. */
static inline const uint8_t *next_line(const uint8_t **at, const uint8_t *end, size_t *length) {
    const uint8_t *line = *at;
    const uint8_t *newline = memchr(line, '\n', (size_t)(end - line));
    *length = (size_t)((newline ? newline : end) - line);
    *at = newline ? newline + 1 : end;
    return line;
}

/* Where the event_id string a line starts with ends (its closing quote: one
 * not escaped by an odd run of backslashes); NULL if the line does not start
 * with one. */
static const uint8_t *id_end(const uint8_t *line, size_t length) {
    if (length <= ID_PREFIX_LENGTH || memcmp(line, ID_PREFIX, ID_PREFIX_LENGTH) != 0) return NULL;
    const uint8_t *start = line + ID_PREFIX_LENGTH, *end = line + length, *quote = start;
    while ((quote = memchr(quote, '"', (size_t)(end - quote))) != NULL) {
        size_t backslashes = 0;
        while ((size_t)(quote - start) > backslashes && quote[-1 - (ptrdiff_t)backslashes] == '\\')
            backslashes++;
        if (!(backslashes & 1)) return quote;
        quote++;
    }
    return NULL;
}

/* A line's key: the contents of its event_id string when the line starts with
 * one, else the whole line (without its newline). */
static int line_key(KeyList *list, const uint8_t *line, size_t length) {
    if (key_too_long(length)) return -1;
    Key *key = next_key(list);
    if (!key) return -1;
    const uint8_t *quote = id_end(line, length);
    if (quote)
        set_key(key, line + ID_PREFIX_LENGTH, (size_t)(quote - line) - ID_PREFIX_LENGTH, 0);
    else
        set_key(key, line, length, LINE_KEY);
    return 0;
}

/* The keys of the events of JSON Lines: a list or tuple of bytes-likes. */
static int keys_of_lines(IdSetObject *Py_UNUSED(self), PyObject *parts, KeyList *list) {
    Py_ssize_t count;
    PyObject **items;
    if (sequence_items(list, parts, "IdSet: expected a list of bytes of JSON Lines", &items, &count))
        return -1;
    list->views = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_buffer));
    if (!list->views) return PyErr_NoMemory(), -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(items[i], &list->views[i], PyBUF_SIMPLE)) return -1;
        list->view_count++;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *at = list->views[i].buf, *end = at + list->views[i].len;
        while (at < end) {
            size_t length;
            const uint8_t *line = next_line(&at, end, &length);
            if (line_key(list, line, length)) return -1;
        }
    }
    return 0;
}

/* A pack: for each key its size (uint32, native order) and its bytes. */
static int keys_of_pack(IdSetObject *Py_UNUSED(self), PyObject *pack, KeyList *list) {
    if (!PyBytes_CheckExact(pack)) {
        PyErr_Format(PyExc_TypeError, "IdSet: a pack is bytes, not %.100s", Py_TYPE(pack)->tp_name);
        return -1;
    }
    const uint8_t *at = (const uint8_t *)PyBytes_AS_STRING(pack);
    const uint8_t *end = at + PyBytes_GET_SIZE(pack);
    while (at < end) {
        uint32_t size;
        if ((size_t)(end - at) < sizeof size) goto malformed;
        memcpy(&size, at, sizeof size);
        at += sizeof size;
        if ((size & ~KEY_KINDS) == 0 || (size & KEY_KINDS) == KEY_KINDS) goto malformed;
        size_t length = key_length(size);
        if ((size_t)(end - at) < length) goto malformed;
        if ((size & UUID_KEY) && length != 16) goto malformed;
        Key *key = next_key(list);
        if (!key) return -1;
        set_stored_key(key, at, length, size & KEY_KINDS);
        at += length;
    }
    list->sequence = Py_NewRef(pack);
    return 0;
malformed:
    PyErr_SetString(PyExc_ValueError, "IdSet: not a pack of keys (see claim_lines)");
    return -1;
}

static PyObject *pack_of(const KeyList *list) {
    size_t size = 0;
    for (size_t i = 0; i < list->count; i++) size += sizeof(uint32_t) + key_length(list->keys[i].size);
    PyObject *pack = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (!pack) return NULL;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(pack);
    for (size_t i = 0; i < list->count; i++) {
        const Key *key = &list->keys[i];
        memcpy(out, &key->size, sizeof key->size);
        out += sizeof key->size;
        memcpy(out, key_bytes(key), key_length(key->size));
        out += key_length(key->size);
    }
    return pack;
}

/* -- operations on the keys of one call ---------------------------------------------- */

/* Adds every key if none is in the table and none repeats: 1; else adds none:
 * 0; -1 when out of memory (none added). */
static int add_all_if_new(IdSetObject *self, const KeyList *list) {
    size_t i;
    int result = 1;
    for (i = 0; i < list->count; i++) {
        FETCH_AHEAD(self, list->keys, list->count, i);
        IdSetEntry *entry = find_slot(self, &list->keys[i]);
        if (entry->size) {
            result = 0;
            break;
        }
        if (add_at(self, entry, &list->keys[i])) {
            result = -1;
            break;
        }
    }
    if (result != 1) {
        /* keys 0 .. i - 1 went in, each once: take them out again */
        for (size_t j = 0; j < i; j++) discard_key(self, &list->keys[j]);
    }
    return result;
}

static int add_all(IdSetObject *self, const KeyList *list) {
    for (size_t i = 0; i < list->count; i++) {
        FETCH_AHEAD(self, list->keys, list->count, i);
        IdSetEntry *entry = find_slot(self, &list->keys[i]);
        if (!entry->size && add_at(self, entry, &list->keys[i])) return -1;
    }
    return 0;
}

static void discard_all(IdSetObject *self, const KeyList *list) {
    for (size_t i = 0; i < list->count; i++) {
        FETCH_AHEAD(self, list->keys, list->count, i);
        discard_key(self, &list->keys[i]);
    }
}

static int any_found(IdSetObject *self, const KeyList *list) {
    for (size_t i = 0; i < list->count; i++) {
        FETCH_AHEAD(self, list->keys, list->count, i);
        if (find_slot(self, &list->keys[i])->size) return 1;
    }
    return 0;
}

/* Per key: neither in the table nor an earlier key of the list. Each fresh key
 * goes in while the list is read (so a later copy of it is found) and all of
 * them come out again. */
static PyObject *fresh_mask(IdSetObject *self, const KeyList *list) {
    PyObject *mask = PyList_New((Py_ssize_t)list->count);
    if (!mask) return NULL;
    size_t *added = PyMem_Malloc((list->count ? list->count : 1) * sizeof(size_t));
    if (!added) {
        Py_DECREF(mask);
        return PyErr_NoMemory();
    }
    size_t added_count = 0;
    int failed = 0;
    for (size_t i = 0; i < list->count; i++) {
        FETCH_AHEAD(self, list->keys, list->count, i);
        IdSetEntry *entry = find_slot(self, &list->keys[i]);
        int fresh = !entry->size;
        if (fresh) {
            if (add_at(self, entry, &list->keys[i])) {
                failed = 1;
                break;
            }
            added[added_count++] = i;
        }
        PyList_SET_ITEM(mask, (Py_ssize_t)i, Py_NewRef(fresh ? Py_True : Py_False));
    }
    for (size_t j = 0; j < added_count; j++) discard_key(self, &list->keys[added[j]]);
    PyMem_Free(added);
    if (failed) Py_CLEAR(mask);
    return mask;
}

/* -- the type ------------------------------------------------------------------------ */

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
    self->long_key_bytes = 0;
    if (resize(self, slots)) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void clear_table(IdSetObject *self) {
    if (!self->table) return;
    for (size_t i = 0; i <= self->mask; i++) {
        if (self->table[i].size) free_key(self, &self->table[i]);
    }
    memset(self->table, 0, (self->mask + 1) * sizeof(IdSetEntry));
    self->used = 0;
}

static void IdSet_dealloc(IdSetObject *self) {
    clear_table(self);
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

typedef int (*key_reader)(IdSetObject *, PyObject *, KeyList *);

static PyObject *IdSet_update(IdSetObject *self, PyObject *ids) {
    KeyList list = {0};
    int rc = keys_of_ids(self, ids, &list) ? -1 : add_all(self, &list);
    keys_free(&list);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

static PyObject *discard_keys_of(IdSetObject *self, PyObject *source, key_reader read) {
    KeyList list = {0};
    int rc = read(self, source, &list);
    if (!rc) discard_all(self, &list);
    keys_free(&list);
    if (rc) return NULL;
    Py_RETURN_NONE;
}

static PyObject *IdSet_difference_update(IdSetObject *self, PyObject *ids) {
    return discard_keys_of(self, ids, keys_of_ids);
}

static PyObject *IdSet_discard_pack(IdSetObject *self, PyObject *pack) {
    return discard_keys_of(self, pack, keys_of_pack);
}

static PyObject *IdSet_isdisjoint(IdSetObject *self, PyObject *ids) {
    KeyList list = {0};
    int found = keys_of_ids(self, ids, &list) ? -1 : any_found(self, &list);
    keys_free(&list);
    if (found < 0) return NULL;
    return PyBool_FromLong(!found);
}

static PyObject *IdSet_add_if_new(IdSetObject *self, PyObject *ids) {
    KeyList list = {0};
    int added = keys_of_ids(self, ids, &list) ? -1 : add_all_if_new(self, &list);
    keys_free(&list);
    if (added < 0) return NULL;
    return PyBool_FromLong(added);
}

static PyObject *IdSet_claim_lines(IdSetObject *self, PyObject *parts) {
    KeyList list = {0};
    PyObject *result = NULL;
    if (keys_of_lines(self, parts, &list)) goto done;
    /* the pack first: once the keys are in, nothing may fail */
    PyObject *pack = pack_of(&list);
    if (!pack) goto done;
    int added = add_all_if_new(self, &list);
    if (added == 1) {
        result = pack;
    } else {
        Py_DECREF(pack);
        if (added == 0) result = Py_NewRef(Py_None);
    }
done:
    keys_free(&list);
    return result;
}

static PyObject *IdSet_add_ids(IdSetObject *self, PyObject *ids) {
    KeyList list = {0};
    PyObject *pack = keys_of_ids(self, ids, &list) ? NULL : pack_of(&list);
    if (pack && add_all(self, &list)) Py_CLEAR(pack);
    keys_free(&list);
    return pack;
}

static PyObject *IdSet_fresh_lines(IdSetObject *self, PyObject *parts) {
    KeyList list = {0};
    PyObject *mask = keys_of_lines(self, parts, &list) ? NULL : fresh_mask(self, &list);
    keys_free(&list);
    return mask;
}

static PyObject *IdSet_clear(IdSetObject *self, PyObject *Py_UNUSED(ignored)) {
    clear_table(self);
    Py_RETURN_NONE;
}

static PyObject *IdSet_sizeof(IdSetObject *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(sizeof(IdSetObject) + (self->mask + 1) * sizeof(IdSetEntry) +
                             self->long_key_bytes);
}

static Py_ssize_t IdSet_length(IdSetObject *self) { return (Py_ssize_t)self->used; }

static int IdSet_contains(IdSetObject *self, PyObject *id) {
    PyObject *one = PyTuple_Pack(1, id);
    if (!one) return -1;
    KeyList list = {0};
    int found = keys_of_ids(self, one, &list) ? -1 : any_found(self, &list);
    keys_free(&list);
    Py_DECREF(one);
    return found;
}

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
    {"claim_lines", (PyCFunction)IdSet_claim_lines, METH_O,
     "claim_lines(parts) -> bytes | None: add_if_new for the event_ids of JSON Lines (a list "
     "of bytes-likes); the added keys as a pack for discard_pack, or None if none was added."},
    {"fresh_lines", (PyCFunction)IdSet_fresh_lines, METH_O,
     "fresh_lines(parts) -> list[bool]: per event of the JSON Lines, whether its id is neither "
     "in the set nor an earlier event's."},
    {"add_ids", (PyCFunction)IdSet_add_ids, METH_O,
     "add_ids(ids) -> bytes: update(ids), returning their keys as a pack for discard_pack."},
    {"discard_pack", (PyCFunction)IdSet_discard_pack, METH_O,
     "discard_pack(pack): remove every key of a pack claim_lines or add_ids returned."},
    {"clear", (PyCFunction)IdSet_clear, METH_NOARGS, "clear(): remove every id."},
    {"__sizeof__", (PyCFunction)IdSet_sizeof, METH_NOARGS, "The table's size in bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IdSetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aep.events.codec._native.IdSet",
    .tp_basicsize = sizeof(IdSetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The file store's set of recent ids, keyed on their stored bytes (see id_set.c).",
    .tp_new = IdSet_new,
    .tp_dealloc = (destructor)IdSet_dealloc,
    .tp_as_sequence = &IdSet_as_sequence,
    .tp_methods = IdSet_methods,
    .tp_hash = PyObject_HashNotImplemented,
};

/* -- ids_of_lines ---------------------------------------------------------------------- */

static int hex4(const uint8_t *p, unsigned *out) {
    unsigned value = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        unsigned digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if (c >= 'a' && c <= 'f')
            digit = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            digit = c - 'A' + 10;
        else
            return -1;
        value = value << 4 | digit;
    }
    *out = value;
    return 0;
}

static uint8_t *put_utf8(uint8_t *out, unsigned cp) {
    if (cp < 0x80) {
        *out++ = (uint8_t)cp;
    } else if (cp < 0x800) {
        *out++ = (uint8_t)(0xc0 | cp >> 6);
        *out++ = (uint8_t)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *out++ = (uint8_t)(0xe0 | cp >> 12);
        *out++ = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        *out++ = (uint8_t)(0x80 | (cp & 0x3f));
    } else {
        *out++ = (uint8_t)(0xf0 | cp >> 18);
        *out++ = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
        *out++ = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        *out++ = (uint8_t)(0x80 | (cp & 0x3f));
    }
    return out;
}

/* The str a JSON string's contents (escapes included) stand for. */
static PyObject *unescaped(const uint8_t *s, size_t length) {
    if (!memchr(s, '\\', length)) return PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)length, "strict");
    uint8_t *text = PyMem_Malloc(length), *out = text; /* escapes only shrink */
    if (!text) return PyErr_NoMemory();
    const uint8_t *p = s, *end = s + length;
    while (p < end) {
        if (*p != '\\') {
            *out++ = *p++;
            continue;
        }
        if (end - p < 2) goto bad;
        uint8_t c = p[1];
        p += 2;
        switch (c) {
        case '"': case '\\': case '/': *out++ = c; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            unsigned cp, low;
            if (end - p < 4 || hex4(p, &cp)) goto bad;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &low) || low < 0xdc00 ||
                    low >= 0xe000)
                    goto bad;
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                goto bad;
            }
            out = put_utf8(out, cp);
            break;
        }
        default: goto bad;
        }
    }
    PyObject *result = PyUnicode_DecodeUTF8((const char *)text, (Py_ssize_t)(out - text), "strict");
    PyMem_Free(text);
    return result;
bad:
    PyMem_Free(text);
    PyErr_SetString(PyExc_ValueError, "ids_of_lines: an event_id with a malformed escape");
    return NULL;
}

static PyObject *ids_of_lines(PyObject *Py_UNUSED(module), PyObject *lines) {
    Py_buffer view;
    if (PyObject_GetBuffer(lines, &view, PyBUF_SIMPLE)) return NULL;
    PyObject *ids = PyList_New(0);
    const uint8_t *at = view.buf, *end = at + view.len;
    while (ids && at < end) {
        size_t length;
        const uint8_t *line = next_line(&at, end, &length);
        const uint8_t *quote = id_end(line, length);
        PyObject *id =
            quote ? unescaped(line + ID_PREFIX_LENGTH, (size_t)(quote - line) - ID_PREFIX_LENGTH) : NULL;
        if (!quote)
            PyErr_SetString(PyExc_ValueError,
                            "ids_of_lines: a line that does not start with an event_id string");
        if (!id || PyList_Append(ids, id)) Py_CLEAR(ids);
        Py_XDECREF(id);
    }
    PyBuffer_Release(&view);
    return ids;
}

static PyMethodDef module_functions[] = {
    {"ids_of_lines", ids_of_lines, METH_O,
     "ids_of_lines(lines) -> list[str]: each JSON line's event_id (the first key of the stored "
     "form); ValueError for a line that does not start with one."},
    {NULL, NULL, 0, NULL},
};

int aep_add_id_set_type(PyObject *module) {
    if (PyType_Ready(&IdSetType) < 0) return -1;
    if (PyModule_AddFunctions(module, module_functions) < 0) return -1;
    return PyModule_AddObjectRef(module, "IdSet", (PyObject *)&IdSetType);
}
