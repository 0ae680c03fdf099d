/*
 * CPython binding of the native pass (codec_core.c): aep.events.codec._native.
 *
 *   Codec(max_id_length, max_attributes, max_attribute_key_length,
 *         max_attribute_value_length, max_event_age, max_clock_skew,
 *         max_batch_events, reason, records)
 *   Codec.decode(kind, data, now, received_at) -> tuple (see DECODE_DOC)
 *   WireError: the request is not valid protobuf (message as upb words it)
 *   IdSet: the file store's set of recent ids (id_set.c)
 *
 * `reason(event_bytes, now) -> str` names what is wrong with a rejected
 * event: the Python rules' own wording (aep.events.validation), asked only
 * for the rare rejected event. With `records` true every accepted event also
 * gets its stored form as a dict, for the pipeline that takes dicts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "codec_core.h"
#include "id_set.h"

#ifndef AEP_SOURCE_SHA256
#define AEP_SOURCE_SHA256 "unknown"
#endif

/* Scratch kept between requests: a typical request's lines and results fit. */
#define KEEP_BYTES (4u << 20)

static PyObject *WireError;
static PyObject *KEY_EVENT_ID, *KEY_USER_ID, *KEY_AD_ID, *KEY_EVENT_TYPE, *KEY_TIMESTAMP,
    *KEY_RECEIVED_AT, *KEY_CAMPAIGN_ID, *KEY_CREATIVE_ID, *KEY_PLACEMENT_ID, *KEY_PUBLISHER_ID,
    *KEY_PRICE_MICROS, *KEY_CURRENCY, *KEY_ATTRIBUTES;
static PyObject *TYPE_NAME[4];

typedef struct {
    PyObject_HEAD
    aep_limits limits;
    aep_ids ids;
    aep_output out;
    size_t lines_per_16_wire_bytes; /* lines_resize's estimate, from the last request */
    PyObject *reason;
    int records;
    int busy;
} CodecObject;

/* What the callbacks of one decode() fill. */
typedef struct {
    CodecObject *codec;
    PyObject *now;
    PyObject *received_at;
    PyObject *records;   /* list or NULL */
    PyObject *rejected;  /* list of (index, event_id, reason) */
    PyObject *reason;    /* the last reason, kept alive while its bytes are read */
} decode_context;

static PyObject *text(aep_span s) {
    return PyUnicode_DecodeUTF8((const char *)s.ptr, (Py_ssize_t)s.len, "strict");
}

static int on_rejected(void *ctx_, size_t index, aep_span event_id, const uint8_t *event,
                       size_t event_len, const uint8_t **reason, size_t *reason_len) {
    decode_context *ctx = ctx_;
    PyObject *wire = PyBytes_FromStringAndSize((const char *)event, (Py_ssize_t)event_len);
    if (!wire) return -1;
    PyObject *said = PyObject_CallFunctionObjArgs(ctx->codec->reason, wire, ctx->now, NULL);
    Py_DECREF(wire);
    if (!said) return -1;
    if (!PyUnicode_Check(said)) {
        PyErr_SetString(PyExc_TypeError, "reason() must return a str");
        Py_DECREF(said);
        return -1;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(said, &size);
    PyObject *id = utf8 ? text(event_id) : NULL;
    PyObject *entry = id ? Py_BuildValue("(nNO)", (Py_ssize_t)index, id, said) : NULL;
    if (!entry || PyList_Append(ctx->rejected, entry)) {
        Py_XDECREF(entry);
        Py_DECREF(said);
        return -1;
    }
    Py_DECREF(entry);
    Py_XSETREF(ctx->reason, said);
    *reason = (const uint8_t *)utf8;
    *reason_len = (size_t)size;
    return 0;
}

static int set_text(PyObject *record, PyObject *key, aep_span value) {
    PyObject *item = text(value);
    if (!item) return -1;
    int rc = PyDict_SetItem(record, key, item);
    Py_DECREF(item);
    return rc;
}

static int set_owned(PyObject *record, PyObject *key, PyObject *item) {
    if (!item) return -1;
    int rc = PyDict_SetItem(record, key, item);
    Py_DECREF(item);
    return rc;
}

/* An id as str: ASCII (every server id) copied straight in, else decoded. */
static PyObject *ascii_text(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] >= 0x80) return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "strict");
    PyObject *text = PyUnicode_New((Py_ssize_t)len, 127);
    if (text) memcpy(PyUnicode_DATA(text), s, len);
    return text;
}

static PyObject *attribute_dict(const aep_event *event) {
    PyObject *attributes = PyDict_New();
    if (!attributes) return NULL;
    for (size_t i = 0; i < event->attribute_count; i++) {
        PyObject *key = text(event->attributes[i].key);
        PyObject *value = key ? text(event->attributes[i].value) : NULL;
        int rc = value ? PyDict_SetItem(attributes, key, value) : -1;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (rc) {
            Py_DECREF(attributes);
            return NULL;
        }
    }
    return attributes;
}

static int on_accepted(void *ctx_, const aep_event *event, int event_type, const char *event_id,
                       size_t event_id_len, const char *timestamp, size_t timestamp_len) {
    decode_context *ctx = ctx_;
    /* Without records nothing per event is a Python object: the ids stay in
     * the lines (EventBlock reads them from there if a store asks). */
    if (!ctx->records) return 0;
    PyObject *id = ascii_text(event_id, event_id_len);
    if (!id) return -1;
    PyObject *record = PyDict_New();
    if (!record) {
        Py_DECREF(id);
        return -1;
    }
    const aep_span *t = event->text;
    int failed = set_owned(record, KEY_EVENT_ID, id) || set_text(record, KEY_USER_ID, t[AEP_USER_ID]) ||
                 set_text(record, KEY_AD_ID, t[AEP_AD_ID]) ||
                 PyDict_SetItem(record, KEY_EVENT_TYPE, TYPE_NAME[event_type]) ||
                 set_owned(record, KEY_TIMESTAMP,
                           PyUnicode_FromStringAndSize(timestamp, (Py_ssize_t)timestamp_len)) ||
                 PyDict_SetItem(record, KEY_RECEIVED_AT, ctx->received_at) ||
                 set_text(record, KEY_CAMPAIGN_ID, t[AEP_CAMPAIGN_ID]) ||
                 set_text(record, KEY_CREATIVE_ID, t[AEP_CREATIVE_ID]) ||
                 set_text(record, KEY_PLACEMENT_ID, t[AEP_PLACEMENT_ID]) ||
                 set_text(record, KEY_PUBLISHER_ID, t[AEP_PUBLISHER_ID]) ||
                 set_owned(record, KEY_PRICE_MICROS, PyLong_FromLongLong(event->price_micros)) ||
                 set_text(record, KEY_CURRENCY, t[AEP_CURRENCY]) ||
                 set_owned(record, KEY_ATTRIBUTES, attribute_dict(event)) ||
                 PyList_Append(ctx->records, record);
    Py_DECREF(record);
    return failed ? -1 : 0;
}

static int Codec_init(CodecObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"max_id_length",
                            "max_attributes",
                            "max_attribute_key_length",
                            "max_attribute_value_length",
                            "max_event_age",
                            "max_clock_skew",
                            "max_batch_events",
                            "reason",
                            "records",
                            NULL};
    long long max_id, max_attributes, max_key, max_value, max_events;
    double max_age, max_skew;
    PyObject *reason;
    int records = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLLddLO|p", names, &max_id, &max_attributes,
                                     &max_key, &max_value, &max_age, &max_skew, &max_events,
                                     &reason, &records))
        return -1;
    if (!PyCallable_Check(reason)) {
        PyErr_SetString(PyExc_TypeError, "reason must be callable");
        return -1;
    }
    self->limits.max_id_length = max_id;
    self->limits.max_attributes = max_attributes;
    self->limits.max_attribute_key_length = max_key;
    self->limits.max_attribute_value_length = max_value;
    self->limits.max_event_age = max_age;
    self->limits.max_clock_skew = max_skew;
    self->limits.max_batch_events = max_events;
    Py_INCREF(reason);
    Py_XSETREF(self->reason, reason);
    self->records = records;
    aep_ids_init(&self->ids);
    return 0;
}

/* The lines of a request are written straight into the bytes object returned for
 * them (aep_buf.resize): at 1,000-event requests a copy into a new bytes was a
 * third of the bytes copied per event. `owner` is that bytes, or NULL. */

/* The buffer empty again (for the next request); returns the bytes it held, if any. */
static PyObject *detach_lines(aep_buf *b) {
    PyObject *bytes = b->owner;
    b->owner = NULL;
    b->data = NULL;
    b->len = b->cap = 0;
    return bytes;
}

static int lines_resize(aep_buf *b, size_t cap) {
    if (cap > (size_t)PY_SSIZE_T_MAX) return -1;
    PyObject *bytes = b->owner;
    if (!bytes) {
        bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
        if (!bytes) return -1;
    } else if (_PyBytes_Resize(&bytes, (Py_ssize_t)cap)) { /* frees it on failure */
        detach_lines(b);
        return -1;
    }
    b->owner = bytes;
    b->data = (uint8_t *)PyBytes_AS_STRING(bytes);
    b->cap = cap;
    return 0;
}

/* The lines bytes, cut to their length. */
static PyObject *take_lines(aep_buf *b) {
    size_t len = b->len;
    PyObject *bytes = detach_lines(b);
    if (!bytes) return PyBytes_FromStringAndSize("", 0);
    if (_PyBytes_Resize(&bytes, (Py_ssize_t)len)) return NULL;
    return bytes;
}

static void drop_lines(aep_buf *b) { Py_XDECREF(detach_lines(b)); }

static PyObject *Codec_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    CodecObject *self = (CodecObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    aep_output_init(&self->out);
    self->out.lines.resize = lines_resize;
    self->lines_per_16_wire_bytes = 96; /* 6 bytes of lines a wire byte, as the benchmark's */
    aep_ids_init(&self->ids);
    return (PyObject *)self;
}

static void Codec_dealloc(CodecObject *self) {
    drop_lines(&self->out.lines);
    aep_output_free(&self->out);
    Py_XDECREF(self->reason);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(DECODE_DOC,
             "decode(kind, data, now, received_at) -> (count, has_event, ack_mode, sequence,\n"
             "    received_by_type, records, rejected, response, lines, line_ends,\n"
             "    event_types)\n\n"
             "kind: 0 SendAdEventRequest, 1 SendAdEventBatchRequest, 2 StreamAdEventsRequest.\n"
             "response: the serialised response without its ack_mode (batch and stream).\n"
             "line_ends: native-endian uint64 offsets, where each line of `lines` ends.\n"
             "event_types: one byte per accepted event, its EventType number.");

static PyObject *Codec_decode(CodecObject *self, PyObject *args) {
    int kind;
    Py_buffer data;
    PyObject *now, *received_at;
    if (!PyArg_ParseTuple(args, "iy*OU", &kind, &data, &now, &received_at)) return NULL;
    PyObject *result = NULL;
    decode_context ctx = {self, now, received_at, NULL, NULL, NULL};
    int owns_lines = 0;
    double now_value = PyFloat_AsDouble(now);
    Py_ssize_t received_len;
    const char *received = PyUnicode_AsUTF8AndSize(received_at, &received_len);
    if ((now_value == -1.0 && PyErr_Occurred()) || !received) goto done;
    if (kind < AEP_KIND_SINGLE || kind > AEP_KIND_STREAM) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0, 1 or 2");
        goto done;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Codec.decode is not reentrant");
        goto done;
    }
    ctx.rejected = PyList_New(0);
    ctx.records = self->records ? PyList_New(0) : NULL;
    if (!ctx.rejected || (self->records && !ctx.records)) goto done;
    aep_callbacks callbacks = {&ctx, on_rejected, on_accepted};
    /* room for the lines up front, from the last request's bytes of lines per
     * byte on the wire: growing it later copies them (a realloc) */
    aep_buf *lines = &self->out.lines;
    size_t estimate = (size_t)data.len / 16 * self->lines_per_16_wire_bytes + 1024;
    owns_lines = 1; /* from here on this call's (not a reentrant call's, refused above) */
    if (lines_resize(lines, estimate)) goto done;
    self->busy = 1;
    int rc = aep_decode(&self->limits, &self->ids, &callbacks, kind, data.buf, (size_t)data.len,
                        now_value, received, (size_t)received_len, &self->out);
    self->busy = 0;
    aep_output *out = &self->out;
    if (rc == AEP_OK && data.len >= 1024) { /* the next estimate: 1/16 more than this one's */
        size_t ratio = out->lines.len / ((size_t)data.len / 16) + 1;
        ratio += ratio / 16;
        /* between 1 and 16 bytes of lines a wire byte: past that it grows as it goes */
        self->lines_per_16_wire_bytes = ratio < 16 ? 16 : ratio > 256 ? 256 : ratio;
    }
    switch (rc) {
    case AEP_OK:
        break;
    case AEP_ERR_WIRE:
        PyErr_SetString(WireError, "Wire format was corrupt");
        goto done;
    case AEP_ERR_UTF8:
        PyErr_SetString(WireError, "String field had bad UTF-8");
        goto done;
    case AEP_ERR_NOMEM:
        PyErr_NoMemory();
        goto done;
    case AEP_ERR_TIME:
        PyErr_SetString(PyExc_OverflowError, "timestamp out of range for platform time_t");
        goto done;
    default: /* a callback's exception is set */
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "codec callback failed");
        goto done;
    }
    PyObject *response = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(out->head_len + out->results.len));
    if (!response) goto done;
    char *bytes = PyBytes_AS_STRING(response);
    memcpy(bytes, out->head, out->head_len);
    if (out->results.len) memcpy(bytes + out->head_len, out->results.data, out->results.len);
    const uint64_t *by_type = out->received_by_type;
    result = Py_BuildValue(
        "(nOiK(KKKK)OONNNN)", (Py_ssize_t)out->count, out->has_event ? Py_True : Py_False,
        (int)out->ack_mode, (unsigned long long)out->sequence, (unsigned long long)by_type[0],
        (unsigned long long)by_type[1], (unsigned long long)by_type[2],
        (unsigned long long)by_type[3], ctx.records ? ctx.records : Py_None, ctx.rejected,
        response,
        take_lines(&out->lines),
        PyBytes_FromStringAndSize(out->line_count ? (const char *)out->line_ends : "",
                                  (Py_ssize_t)(out->line_count * sizeof *out->line_ends)),
        PyBytes_FromStringAndSize(out->types.len ? (const char *)out->types.data : "",
                                  (Py_ssize_t)out->types.len));
    /* the scratch buffers stay for the next request, up to a size */
    aep_output_trim(out, KEEP_BYTES);
done:
    if (owns_lines) drop_lines(&self->out.lines); /* what take_lines did not take: an error's */
    PyBuffer_Release(&data);
    Py_XDECREF(ctx.records);
    Py_XDECREF(ctx.rejected);
    Py_XDECREF(ctx.reason);
    return result;
}

/* Tests: put the id generator in a given state, and draw one id. */
static PyObject *Codec_set_id_state(CodecObject *self, PyObject *args) {
    long long ms;
    PyObject *random;
    if (!PyArg_ParseTuple(args, "LO!", &ms, &PyLong_Type, &random)) return NULL;
    unsigned long long high, low;
    PyObject *shift = PyLong_FromLong(64);
    PyObject *high_obj = shift ? PyNumber_Rshift(random, shift) : NULL;
    Py_XDECREF(shift);
    if (!high_obj) return NULL;
    high = PyLong_AsUnsignedLongLong(high_obj);
    Py_DECREF(high_obj);
    low = PyLong_AsUnsignedLongLongMask(random);
    if (PyErr_Occurred()) return NULL;
    self->ids.last_ms = ms;
    self->ids.last_random = ((unsigned __int128)high << 64) | low;
    Py_RETURN_NONE;
}

static PyObject *Codec_next_id(CodecObject *self, PyObject *unused) {
    char id[36];
    if (aep_ids_next(&self->ids, id)) return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromStringAndSize(id, sizeof id);
}

static PyMethodDef Codec_methods[] = {
    {"decode", (PyCFunction)Codec_decode, METH_VARARGS, DECODE_DOC},
    {"_set_id_state", (PyCFunction)Codec_set_id_state, METH_VARARGS,
     "_set_id_state(last_ms, last_random): tests only."},
    {"_next_id", (PyCFunction)Codec_next_id, METH_NOARGS, "_next_id() -> str: tests only."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aep.events.codec._native.Codec",
    .tp_basicsize = sizeof(CodecObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The native pass over AdEventService requests (see codec_core.h).",
    .tp_new = Codec_new,
    .tp_init = (initproc)Codec_init,
    .tp_dealloc = (destructor)Codec_dealloc,
    .tp_methods = Codec_methods,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, .m_name = "aep.events.codec._native",
    .m_doc = "The native codec of AdEventService requests.", .m_size = -1,
};

static int intern(PyObject **slot, const char *value) {
    *slot = PyUnicode_InternFromString(value);
    return *slot ? 0 : -1;
}

PyMODINIT_FUNC PyInit__native(void) {
    if (intern(&KEY_EVENT_ID, "event_id") || intern(&KEY_USER_ID, "user_id") ||
        intern(&KEY_AD_ID, "ad_id") || intern(&KEY_EVENT_TYPE, "event_type") ||
        intern(&KEY_TIMESTAMP, "timestamp") || intern(&KEY_RECEIVED_AT, "received_at") ||
        intern(&KEY_CAMPAIGN_ID, "campaign_id") || intern(&KEY_CREATIVE_ID, "creative_id") ||
        intern(&KEY_PLACEMENT_ID, "placement_id") || intern(&KEY_PUBLISHER_ID, "publisher_id") ||
        intern(&KEY_PRICE_MICROS, "price_micros") || intern(&KEY_CURRENCY, "currency") ||
        intern(&KEY_ATTRIBUTES, "attributes") ||
        intern(&TYPE_NAME[0], "EVENT_TYPE_UNSPECIFIED") ||
        intern(&TYPE_NAME[1], "EVENT_TYPE_IMPRESSION") ||
        intern(&TYPE_NAME[2], "EVENT_TYPE_CLICK") ||
        intern(&TYPE_NAME[3], "EVENT_TYPE_CONVERSION"))
        return NULL;
    if (PyType_Ready(&CodecType) < 0) return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (!module) return NULL;
    WireError = PyErr_NewExceptionWithDoc(
        "aep.events.codec._native.WireError",
        "The request is not valid protobuf; the message is upb's.", PyExc_ValueError, NULL);
    if (!WireError || PyModule_AddObjectRef(module, "WireError", WireError) ||
        PyModule_AddObjectRef(module, "Codec", (PyObject *)&CodecType) ||
        PyModule_AddStringConstant(module, "SOURCE_SHA256", AEP_SOURCE_SHA256) ||
        PyModule_AddIntConstant(module, "TYPE_SLOTS", AEP_TYPE_SLOTS) ||
        aep_add_id_set_type(module)) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
