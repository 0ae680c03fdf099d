/*
 * The native pass: see codec_core.h. The rules it mirrors, and why each
 * detail is as it is, are those of the Python reference (the protobuf
 * runtime's upb decoder, aep.events.validation, orjson, aep.ingest.responses).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "codec_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* upb's default nesting limit (messages and groups below the request). */
#define DEPTH_LIMIT 100

/* Never a NULL pointer in a span: memcmp/memcpy of zero bytes need a valid one. */
static const uint8_t EMPTY[1] = {0};

/* -- buffers ------------------------------------------------------------------ */

static int buf_grow(aep_buf *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) return AEP_ERR_NOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) cap *= 2;
    if (b->resize) return b->resize(b, cap) ? AEP_ERR_NOMEM : AEP_OK;
    uint8_t *data = realloc(b->data, cap);
    if (!data) return AEP_ERR_NOMEM;
    b->data = data;
    b->cap = cap;
    return AEP_OK;
}

static inline int buf_reserve(aep_buf *b, size_t extra) {
    if (b->cap - b->len >= extra) return AEP_OK;
    return buf_grow(b, extra);
}

static int buf_put(aep_buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n)) return AEP_ERR_NOMEM;
    if (n) memcpy(b->data + b->len, src, n);
    b->len += n;
    return AEP_OK;
}

/* Unchecked writes: the caller reserved the room. */
static inline void put_byte(aep_buf *b, uint8_t c) { b->data[b->len++] = c; }

static inline void put_raw(aep_buf *b, const void *src, size_t n) {
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

#define PUT_LITERAL(b, s) put_raw((b), (s), sizeof(s) - 1)

static size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v > 0x7f) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline void put_varint(aep_buf *b, uint64_t v) {
    while (v > 0x7f) {
        put_byte(b, (uint8_t)(v & 0x7f) | 0x80);
        v >>= 7;
    }
    put_byte(b, (uint8_t)v);
}

static size_t write_varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    while (v > 0x7f) {
        out[n++] = (uint8_t)(v & 0x7f) | 0x80;
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

void aep_output_init(aep_output *out) { memset(out, 0, sizeof *out); }

void aep_output_free(aep_output *out) {
    if (!out->lines.resize) free(out->lines.data); /* else its owner's */
    free(out->line_ends);
    free(out->types.data);
    free(out->results.data);
    free(out->merged.data);
    free(out->event.attributes);
    memset(out, 0, sizeof *out);
}

void aep_output_trim(aep_output *out, size_t keep) {
    aep_buf *buffers[] = {&out->lines, &out->types, &out->results, &out->merged};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) {
        if (buffers[i]->cap > keep && !buffers[i]->resize) {
            free(buffers[i]->data);
            buffers[i]->data = NULL;
            buffers[i]->len = buffers[i]->cap = 0;
        }
    }
    if (out->line_ends_cap * sizeof *out->line_ends > keep) {
        free(out->line_ends);
        out->line_ends = NULL;
        out->line_ends_cap = out->line_count = 0;
    }
}

static void output_reset(aep_output *out) {
    out->ack_mode = 0;
    out->sequence = 0;
    out->has_event = 0;
    out->count = out->accepted = out->rejected = 0;
    memset(out->received_by_type, 0, sizeof out->received_by_type);
    out->lines.len = 0;
    out->line_count = 0;
    out->types.len = 0;
    out->results.len = 0;
    out->merged.len = 0;
    out->head_len = 0;
}

/* -- the wire format, as upb reads it ------------------------------------------ */

/*
 * upb checks the bytes of a string (and of a skipped field) against the end
 * of the whole buffer, not of the message holding it: such a field may run
 * past its message's end, is read (a string's UTF-8 checked), and only then
 * is the overrun an error. `end` is the message's end, `limit` the buffer's.
 */
typedef struct {
    const uint8_t *p, *end, *limit;
} reader;

/* At most 10 bytes; what a tenth byte holds past bit 63 is ignored. */
static int read_varint(reader *r, uint64_t *out) {
    if (r->p < r->limit && *r->p < 0x80) { /* most varints here: one byte */
        *out = *r->p++;
        return AEP_OK;
    }
    uint64_t value = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->limit) return AEP_ERR_WIRE;
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *out = value;
            return AEP_OK;
        }
    }
    return AEP_ERR_WIRE;
}

/* At most 5 bytes, below 2^32; field 0 and wire types 6 and 7 do not exist. */
static inline int read_tag(reader *r, uint32_t *field, int *wire_type) {
    if (r->p < r->limit && *r->p < 0x80) { /* fields 1-15: a one-byte tag */
        uint8_t byte = *r->p++;
        *field = byte >> 3;
        *wire_type = byte & 7;
        return *field == 0 || *wire_type > 5 ? AEP_ERR_WIRE : AEP_OK;
    }
    uint64_t value = 0;
    for (int i = 0; i < 5; i++) {
        if (r->p >= r->limit) return AEP_ERR_WIRE;
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            if (value > UINT32_MAX) return AEP_ERR_WIRE;
            *field = (uint32_t)(value >> 3);
            *wire_type = (int)(value & 7);
            if (*field == 0 || *wire_type > 5) return AEP_ERR_WIRE;
            return AEP_OK;
        }
    }
    return AEP_ERR_WIRE;
}

/* A length prefix: at most 5 bytes (this upb build's limit) and within the message. */
static int read_length(reader *r, size_t *len) {
    if (r->p < r->limit && *r->p < 0x80) { /* under 128 bytes: a one-byte prefix */
        size_t value = *r->p++;
        if (value > (size_t)(r->limit - r->p)) return AEP_ERR_WIRE;
        *len = value;
        return AEP_OK;
    }
    uint64_t value = 0;
    for (int i = 0; i < 5; i++) {
        if (r->p >= r->limit) return AEP_ERR_WIRE;
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            if (value > (uint64_t)(r->limit - r->p)) return AEP_ERR_WIRE;
            *len = (size_t)value;
            return AEP_OK;
        }
    }
    return AEP_ERR_WIRE;
}

static int skip_field(reader *r, uint32_t field, int wire_type, int depth);

/* An unknown group: every field inside is framed correctly, and it ends with its own number. */
static int skip_group(reader *r, uint32_t field, int depth) {
    if (depth < 0) return AEP_ERR_WIRE;
    while (r->p < r->end) {
        uint32_t inner;
        int wire_type, rc;
        if ((rc = read_tag(r, &inner, &wire_type))) return rc;
        if (wire_type == 4) return inner == field && r->p <= r->end ? AEP_OK : AEP_ERR_WIRE;
        if ((rc = skip_field(r, inner, wire_type, depth))) return rc;
    }
    return AEP_ERR_WIRE; /* the message ends inside the group */
}

/* An unknown field, or a known one with another wire type (upb: unknown). */
static int skip_field(reader *r, uint32_t field, int wire_type, int depth) {
    uint64_t ignored;
    size_t len;
    int rc;
    switch (wire_type) {
    case 0:
        return read_varint(r, &ignored);
    case 1:
        if (r->limit - r->p < 8) return AEP_ERR_WIRE;
        r->p += 8;
        return AEP_OK;
    case 2:
        if ((rc = read_length(r, &len))) return rc;
        r->p += len;
        return AEP_OK;
    case 3:
        return skip_group(r, field, depth - 1);
    case 5:
        if (r->limit - r->p < 4) return AEP_ERR_WIRE;
        r->p += 4;
        return AEP_OK;
    default: /* 4: an end-group where no group is open */
        return AEP_ERR_WIRE;
    }
}

/* Strict UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF); NUL is fine. */
static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

static int read_string(reader *r, aep_span *out) {
    size_t len;
    int rc;
    if ((rc = read_length(r, &len))) return rc;
    if (!utf8_valid(r->p, len)) return AEP_ERR_UTF8;
    out->ptr = len ? r->p : EMPTY;
    out->len = len;
    r->p += len;
    return AEP_OK;
}

/* A message field, unlike a string, must end within the message holding it;
 * its length prefix may have been read from past that end (upb reads it from
 * the buffer), and then there is no room at all, not end - p wrapped around. */
static int read_submessage(reader *r, reader *sub) {
    size_t len;
    int rc;
    if ((rc = read_length(r, &len))) return rc;
    if (r->p > r->end || len > (size_t)(r->end - r->p)) return AEP_ERR_WIRE;
    sub->p = r->p;
    sub->end = r->p + len;
    sub->limit = r->limit;
    r->p += len;
    return AEP_OK;
}

/* google.protobuf.Timestamp: a repeated occurrence merges field by field. */
static int parse_timestamp(reader r, aep_event *event, int depth) {
    if (depth < 0) return AEP_ERR_WIRE;
    while (r.p < r.end) {
        uint32_t field;
        int wire_type, rc;
        uint64_t value;
        if ((rc = read_tag(&r, &field, &wire_type))) return rc;
        if (field == 1 && wire_type == 0) {
            if ((rc = read_varint(&r, &value))) return rc;
            event->seconds = (int64_t)value;
        } else if (field == 2 && wire_type == 0) {
            if ((rc = read_varint(&r, &value))) return rc;
            event->nanos = (int32_t)(uint32_t)value;
        } else if ((rc = skip_field(&r, field, wire_type, depth))) {
            return rc;
        }
    }
    return r.p > r.end ? AEP_ERR_WIRE : AEP_OK;
}

/* One attributes entry; an entry holding any other field is not part of the map. */
static int parse_attribute(reader r, aep_event *event, int depth) {
    if (depth < 0) return AEP_ERR_WIRE;
    aep_span key = {EMPTY, 0}, value = {EMPTY, 0};
    int other = 0;
    while (r.p < r.end) {
        uint32_t field;
        int wire_type, rc;
        if ((rc = read_tag(&r, &field, &wire_type))) return rc;
        if (field == 1 && wire_type == 2) {
            if ((rc = read_string(&r, &key))) return rc;
        } else if (field == 2 && wire_type == 2) {
            if ((rc = read_string(&r, &value))) return rc;
        } else {
            if ((rc = skip_field(&r, field, wire_type, depth))) return rc;
            other = 1;
        }
    }
    if (r.p > r.end) return AEP_ERR_WIRE;
    if (other) return AEP_OK;
    if (event->attribute_count == event->attribute_capacity) {
        size_t cap = event->attribute_capacity ? event->attribute_capacity * 2 : 16;
        aep_attribute *grown = realloc(event->attributes, cap * sizeof *grown);
        if (!grown) return AEP_ERR_NOMEM;
        event->attributes = grown;
        event->attribute_capacity = cap;
    }
    aep_attribute *entry = &event->attributes[event->attribute_count];
    entry->key = key;
    entry->value = value;
    entry->order = event->attribute_count++;
    return AEP_OK;
}

static const int TEXT_FIELD_OF_NUMBER[12] = {
    -1, AEP_EVENT_ID, AEP_USER_ID, AEP_AD_ID, -1, -1,
    AEP_CAMPAIGN_ID, AEP_CREATIVE_ID, AEP_PLACEMENT_ID, AEP_PUBLISHER_ID, -1, AEP_CURRENCY,
};

static void event_clear(aep_event *event) {
    for (int i = 0; i < AEP_TEXT_FIELDS; i++) {
        event->text[i].ptr = EMPTY;
        event->text[i].len = 0;
    }
    event->event_type = 0;
    event->has_timestamp = 0;
    event->seconds = 0;
    event->nanos = 0;
    event->price_micros = 0;
    event->attribute_count = 0;
}

/* adevents.v1.AdEvent; parsing into an event already filled merges (last value wins). */
static int parse_event(reader r, aep_event *event, int depth) {
    if (depth < 0) return AEP_ERR_WIRE;
    while (r.p < r.end) {
        uint32_t field;
        int wire_type, rc;
        uint64_t value;
        reader sub;
        if ((rc = read_tag(&r, &field, &wire_type))) return rc;
        if (wire_type == 2 && field < 12 && TEXT_FIELD_OF_NUMBER[field] >= 0) {
            if ((rc = read_string(&r, &event->text[TEXT_FIELD_OF_NUMBER[field]]))) return rc;
        } else if (field == 4 && wire_type == 0) {
            if ((rc = read_varint(&r, &value))) return rc;
            event->event_type = (int32_t)(uint32_t)value;
        } else if (field == 5 && wire_type == 2) {
            if ((rc = read_submessage(&r, &sub))) return rc;
            event->has_timestamp = 1;
            if ((rc = parse_timestamp(sub, event, depth - 1))) return rc;
        } else if (field == 10 && wire_type == 0) {
            if ((rc = read_varint(&r, &value))) return rc;
            event->price_micros = (int64_t)value;
        } else if (field == 12 && wire_type == 2) {
            if ((rc = read_submessage(&r, &sub))) return rc;
            if ((rc = parse_attribute(sub, event, depth - 1))) return rc;
        } else if ((rc = skip_field(&r, field, wire_type, depth))) {
            return rc;
        }
    }
    return r.p > r.end ? AEP_ERR_WIRE : AEP_OK;
}

/* -- the rules (aep.events.validation.EventValidator.accept_all) ------------------- */

static int span_compare(const aep_span *a, const aep_span *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->ptr, b->ptr, n);
    if (c) return c;
    return (a->len > b->len) - (a->len < b->len);
}

static int attribute_compare(const void *left, const void *right) {
    const aep_attribute *a = left, *b = right;
    int c = span_compare(&a->key, &b->key);
    if (c) return c;
    return (a->order > b->order) - (a->order < b->order);
}

/* Distinct keys in byte order (= code point order), each with its last value. */
static void finish_attributes(aep_event *event) {
    size_t n = event->attribute_count;
    if (n < 2) return;
    if (n <= 8) { /* the usual few: an insertion sort, no qsort call */
        aep_attribute *a = event->attributes;
        for (size_t i = 1; i < n; i++) {
            aep_attribute item = a[i];
            size_t j = i;
            while (j && attribute_compare(&a[j - 1], &item) > 0) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = item;
        }
    } else {
        qsort(event->attributes, n, sizeof *event->attributes, attribute_compare);
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && span_compare(&event->attributes[i].key, &event->attributes[i + 1].key) == 0)
            continue; /* a later entry has this key */
        event->attributes[kept++] = event->attributes[i];
    }
    event->attribute_count = kept;
}

/* Whether a string has more than `limit` characters (code points). */
static int longer_than(aep_span s, int64_t limit) {
    if ((int64_t)s.len <= limit) return 0;
    int64_t chars = 0;
    for (size_t i = 0; i < s.len; i++) chars += (s.ptr[i] & 0xc0) != 0x80;
    return chars > limit;
}

static int event_ok(const aep_limits *limits, const aep_event *event, double oldest, double newest) {
    const aep_span *text = event->text;
    if (!text[AEP_USER_ID].len || !text[AEP_AD_ID].len) return 0;
    if (event->event_type < 1 || event->event_type > 3) return 0;
    double when = (double)event->seconds + (double)event->nanos * 1e-9;
    if (!(oldest <= when && when <= newest)) return 0;
    int64_t max_id = limits->max_id_length;
    if (longer_than(text[AEP_USER_ID], max_id) || longer_than(text[AEP_AD_ID], max_id) ||
        longer_than(text[AEP_EVENT_ID], max_id) || longer_than(text[AEP_CAMPAIGN_ID], max_id) ||
        longer_than(text[AEP_CREATIVE_ID], max_id) || longer_than(text[AEP_PLACEMENT_ID], max_id) ||
        longer_than(text[AEP_PUBLISHER_ID], max_id))
        return 0;
    aep_span currency = text[AEP_CURRENCY];
    if (event->price_micros || currency.len) {
        if (event->price_micros < 0 || currency.len != 3) return 0;
        for (int i = 0; i < 3; i++)
            if (currency.ptr[i] < 'A' || currency.ptr[i] > 'Z') return 0;
    }
    if (event->attribute_count) {
        if ((int64_t)event->attribute_count > limits->max_attributes) return 0;
        for (size_t i = 0; i < event->attribute_count; i++) {
            const aep_attribute *entry = &event->attributes[i];
            if (!entry->key.len || longer_than(entry->key, limits->max_attribute_key_length) ||
                longer_than(entry->value, limits->max_attribute_value_length))
                return 0;
        }
    }
    return 1;
}

/* -- server ids ---------------------------------------------------------------------- */

#define RANDOM_BITS 74
#define RANDOM_MASK ((((unsigned __int128)1) << RANDOM_BITS) - 1)
#define POOL_DRAWS 64

void aep_ids_init(aep_ids *ids) {
    ids->last_ms = -1;
    ids->last_random = 0;
    ids->pool_left = 0;
}

static int fill_pool(aep_ids *ids) {
    size_t got = 0;
    while (got < sizeof ids->pool) {
        ssize_t n = getrandom(ids->pool + got, sizeof ids->pool - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        got += (size_t)n;
    }
    if (got < sizeof ids->pool) { /* no getrandom(2): the device the Python runtime also falls back to */
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0) return -1;
        while (got < sizeof ids->pool) {
            ssize_t n = read(fd, ids->pool + got, sizeof ids->pool - got);
            if (n <= 0) {
                if (n < 0 && errno == EINTR) continue;
                close(fd);
                return -1;
            }
            got += (size_t)n;
        }
        close(fd);
    }
    ids->pool_left = POOL_DRAWS;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

int64_t aep_clock_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int aep_ids_next(aep_ids *ids, char out[36]) { return aep_ids_next_at(ids, aep_clock_ms(), out); }

int aep_ids_next_at(aep_ids *ids, int64_t now_ms, char out[36]) {
    if (now_ms > ids->last_ms) {
        if (!ids->pool_left && fill_pool(ids)) return -1;
        const uint8_t *draw = ids->pool + 10 * (--ids->pool_left);
        unsigned __int128 fresh = 0;
        for (int i = 0; i < 10; i++) fresh = (fresh << 8) | draw[i];
        ids->last_ms = now_ms;
        /* headroom, so increments inside one millisecond never overflow */
        ids->last_random = fresh & (RANDOM_MASK >> 1);
    } else {
        ids->last_random += 1;
        if (ids->last_random > RANDOM_MASK) {
            ids->last_ms += 1;
            ids->last_random = 0;
        }
    }
    uint64_t ms = (uint64_t)ids->last_ms;
    unsigned __int128 random = ids->last_random;
    uint32_t rand_a = (uint32_t)(random >> 62);
    uint64_t low = (2ULL << 62) | (uint64_t)(random & ((((unsigned __int128)1) << 62) - 1));
    /* the 16 bytes: 48 bits of milliseconds, version 7 and 12 bits, variant and 62 bits */
    uint8_t bytes[16];
    for (int i = 0; i < 6; i++) bytes[i] = (uint8_t)(ms >> (40 - 8 * i));
    bytes[6] = (uint8_t)(0x70 | ((rand_a >> 8) & 0xf));
    bytes[7] = (uint8_t)rand_a;
    for (int i = 0; i < 8; i++) bytes[8 + i] = (uint8_t)(low >> (56 - 8 * i));
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = HEX[bytes[i] >> 4];
        *o++ = HEX[bytes[i] & 0xf];
    }
    return 0;
}

/* -- the stored form as orjson writes it -------------------------------------------- */

/* orjson's escapes: the two-character ones it knows, else \u00XX for control
 * characters. Unchecked: the caller reserved 6 * s.len + 2 bytes. */
/* Whether orjson escapes this byte: a control character, '"' or '\\'. */
static inline int escaped_byte(uint8_t c) { return c < 0x20 || c == '"' || c == '\\'; }

static void json_string(aep_buf *b, aep_span s) {
    uint8_t *d = b->data + b->len;
    *d++ = '"';
    const uint8_t *p = s.ptr, *end = s.ptr + s.len;
    for (;;) {
        /* eight bytes at a time while none is a control character, '"' or '\\':
         * copied as one word (the room is reserved), no memcpy call per run */
        while (end - p >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
            uint64_t quote = word ^ (ones * '"'), backslash = word ^ (ones * '\\');
            uint64_t special = ((word - ones * 0x20) & ~word) | ((quote - ones) & ~quote) |
                               ((backslash - ones) & ~backslash);
            if (special & highs) break;
            memcpy(d, &word, 8);
            d += 8;
            p += 8;
        }
        while (p < end && !escaped_byte(*p)) *d++ = *p++;
        if (p == end) break;
        uint8_t c = *p++; /* a control character, '"' or '\\' */
        *d++ = '\\';
        switch (c) {
        case '"': *d++ = '"'; break;
        case '\\': *d++ = '\\'; break;
        case '\b': *d++ = 'b'; break;
        case '\t': *d++ = 't'; break;
        case '\n': *d++ = 'n'; break;
        case '\f': *d++ = 'f'; break;
        case '\r': *d++ = 'r'; break;
        default:
            memcpy(d, "u00", 3);
            d += 3;
            *d++ = (uint8_t)HEX[c >> 4];
            *d++ = (uint8_t)HEX[c & 0xf];
        }
    }
    *d++ = '"';
    b->len = (size_t)(d - b->data);
}

void aep_json_string(aep_buf *b, aep_span s) { json_string(b, s); }

/* Whether `s` is written as it is between quotes (no byte orjson escapes). */
static int json_plain_ok(aep_span s) {
    for (size_t i = 0; i < s.len; i++)
        if (escaped_byte(s.ptr[i])) return 0;
    return 1;
}

/* A string known to need no escapes (made here, or checked once a request). */
static inline void json_plain(aep_buf *b, aep_span s) {
    uint8_t *d = b->data + b->len;
    *d++ = '"';
    memcpy(d, s.ptr, s.len);
    d += s.len;
    *d++ = '"';
    b->len = (size_t)(d - b->data);
}

/* A key and its string value; `plain`: the value needs no escapes (json_plain). */
#define KEY_AS(b, literal, value, plain)                                    \
    do {                                                                    \
        PUT_LITERAL((b), literal);                                          \
        if (plain)                                                          \
            json_plain((b), (value));                                       \
        else                                                                \
            json_string((b), (value));                                      \
    } while (0)

#define KEY(b, literal, value) KEY_AS((b), literal, (value), 0)

#define LITERAL_SPAN(s) {(const uint8_t *)(s), sizeof(s) - 1}
static const aep_span TYPE_NAMES[4] = {
    LITERAL_SPAN("EVENT_TYPE_UNSPECIFIED"),
    LITERAL_SPAN("EVENT_TYPE_IMPRESSION"),
    LITERAL_SPAN("EVENT_TYPE_CLICK"),
    LITERAL_SPAN("EVENT_TYPE_CONVERSION"),
};

/* `2026-11-26T19:00:00.123456Z`: time.gmtime + strftime, then nanos // 1000 as :06d. */
static int format_timestamp(aep_output *out, int64_t seconds, int32_t nanos, char *dst,
                            size_t *len) {
    if (!out->prefix_valid || out->prefix_seconds != seconds) {
        time_t t = (time_t)seconds;
        struct tm parts;
        if (!gmtime_r(&t, &parts)) return AEP_ERR_TIME;
        if (!strftime(out->prefix, sizeof out->prefix, "%Y-%m-%dT%H:%M:%S", &parts))
            return AEP_ERR_TIME;
        out->prefix_len = strlen(out->prefix);
        out->prefix_seconds = seconds;
        out->prefix_valid = 1;
    }
    int32_t micros = nanos / 1000;
    if (nanos % 1000 != 0 && nanos < 0) micros -= 1; /* Python's floor division */
    size_t n = out->prefix_len;
    memcpy(dst, out->prefix, n);
    dst[n++] = '.';
    /* :06d: at least six characters, a minus sign counting as one */
    uint32_t magnitude = micros < 0 ? (uint32_t)(-(int64_t)micros) : (uint32_t)micros;
    int width = 6;
    if (micros < 0) {
        dst[n++] = '-';
        width = 5;
    }
    char digits[12];
    int count = 0;
    do {
        digits[count++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    for (int pad = count; pad < width; pad++) dst[n++] = '0';
    while (count) dst[n++] = digits[--count];
    dst[n++] = 'Z';
    *len = n;
    return AEP_OK;
}

/* `server_id`: event_id was made here (plain hex); `received_at_plain`: it needs no
 * escapes (json_plain_ok, once a request). The timestamp and type name never do. */
static int write_line(aep_output *out, const aep_event *event, aep_span event_id, int server_id,
                      const char *timestamp, size_t timestamp_len, aep_span received_at,
                      int received_at_plain) {
    aep_buf *b = &out->lines;
    const aep_span *text = event->text;
    aep_span type_name = TYPE_NAMES[event->event_type];
    aep_span stamp = {(const uint8_t *)timestamp, timestamp_len};
    /* Room for the whole line at once: every string escaped at worst (6 bytes
     * a byte), the keys and punctuation (under 256 bytes), a price. */
    size_t escaped = event_id.len + type_name.len + stamp.len + received_at.len;
    for (int i = AEP_USER_ID; i < AEP_TEXT_FIELDS; i++) escaped += text[i].len;
    size_t bound = 256 + 24 + 6 * escaped;
    for (size_t i = 0; i < event->attribute_count; i++)
        bound += 6 * (event->attributes[i].key.len + event->attributes[i].value.len) + 8;
    if (buf_reserve(b, bound)) return AEP_ERR_NOMEM;
    KEY_AS(b, "{\"event_id\":", event_id, server_id);
    KEY(b, ",\"user_id\":", text[AEP_USER_ID]);
    KEY(b, ",\"ad_id\":", text[AEP_AD_ID]);
    KEY_AS(b, ",\"event_type\":", type_name, 1);
    KEY_AS(b, ",\"timestamp\":", stamp, 1);
    KEY_AS(b, ",\"received_at\":", received_at, received_at_plain);
    KEY(b, ",\"campaign_id\":", text[AEP_CAMPAIGN_ID]);
    KEY(b, ",\"creative_id\":", text[AEP_CREATIVE_ID]);
    KEY(b, ",\"placement_id\":", text[AEP_PLACEMENT_ID]);
    KEY(b, ",\"publisher_id\":", text[AEP_PUBLISHER_ID]);
    /* price_micros of a valid event is not negative (the rules say so) */
    char digits[24];
    int count = 0;
    uint64_t price = (uint64_t)event->price_micros;
    do {
        digits[count++] = (char)('0' + price % 10);
        price /= 10;
    } while (price);
    PUT_LITERAL(b, ",\"price_micros\":");
    while (count) put_byte(b, (uint8_t)digits[--count]);
    KEY(b, ",\"currency\":", text[AEP_CURRENCY]);
    PUT_LITERAL(b, ",\"attributes\":{");
    for (size_t i = 0; i < event->attribute_count; i++) {
        if (i) put_byte(b, ',');
        json_string(b, event->attributes[i].key);
        put_byte(b, ':');
        json_string(b, event->attributes[i].value);
    }
    PUT_LITERAL(b, "}}\n");
    if (out->line_count == out->line_ends_cap) {
        size_t cap = out->line_ends_cap ? out->line_ends_cap * 2 : 64;
        uint64_t *grown = realloc(out->line_ends, cap * sizeof *grown);
        if (!grown) return AEP_ERR_NOMEM;
        out->line_ends = grown;
        out->line_ends_cap = cap;
    }
    out->line_ends[out->line_count++] = b->len;
    return AEP_OK;
}

/* -- the response (aep.ingest.responses, protobuf's own serialisation) --------------- */

#define STATUS_ACCEPTED 1
#define STATUS_REJECTED 2

static int write_result(aep_output *out, uint8_t results_key, size_t index, aep_span event_id,
                        int status, const uint8_t *reason, size_t reason_len) {
    size_t body = 2; /* status */
    if (index) body += 1 + varint_size(index);
    if (event_id.len) body += 1 + varint_size(event_id.len) + event_id.len;
    if (reason_len) body += 1 + varint_size(reason_len) + reason_len;
    aep_buf *b = &out->results;
    if (buf_reserve(b, 1 + 10 + body)) return AEP_ERR_NOMEM;
    put_byte(b, results_key);
    put_varint(b, body);
    if (index) {
        put_byte(b, 0x08);
        put_varint(b, index);
    }
    if (event_id.len) {
        put_byte(b, 0x12);
        put_varint(b, event_id.len);
        put_raw(b, event_id.ptr, event_id.len);
    }
    put_byte(b, 0x18);
    put_byte(b, (uint8_t)status);
    if (reason_len) {
        put_byte(b, 0x22);
        put_varint(b, reason_len);
        put_raw(b, reason, reason_len);
    }
    return AEP_OK;
}

/* -- one request ---------------------------------------------------------------------- */

typedef struct {
    const aep_limits *limits;
    aep_ids *ids;
    const aep_callbacks *callbacks;
    aep_output *out;
    double oldest, newest;
    aep_span received_at;
    int received_at_plain;
    int64_t clock_ms; /* read once per request, when its first server id is drawn; -1 before */
    uint8_t results_key;
} pass;

static int process_event(pass *ps, aep_event *event, size_t index, const uint8_t *wire,
                         size_t wire_len) {
    aep_output *out = ps->out;
    if (event->event_type >= 0 && event->event_type < AEP_TYPE_SLOTS)
        out->received_by_type[event->event_type]++;
    finish_attributes(event);
    aep_span client_id = event->text[AEP_EVENT_ID];
    int rc;
    if (!event_ok(ps->limits, event, ps->oldest, ps->newest)) {
        const uint8_t *reason = EMPTY;
        size_t reason_len = 0;
        if (ps->callbacks && ps->callbacks->rejected &&
            ps->callbacks->rejected(ps->callbacks->ctx, index, client_id, wire, wire_len, &reason,
                                    &reason_len))
            return AEP_ERR_CALLBACK;
        out->rejected++;
        return write_result(out, ps->results_key, index, client_id, STATUS_REJECTED, reason,
                            reason_len);
    }
    char server_id[36];
    aep_span event_id = client_id;
    if (!client_id.len) {
        /* One clock read per request: its ids share the millisecond and count up
         * in it (monotonic as ever); a read per id cost 30 ns of a 1.5 us event. */
        if (ps->clock_ms < 0) ps->clock_ms = aep_clock_ms();
        if (aep_ids_next_at(ps->ids, ps->clock_ms, server_id)) return AEP_ERR_NOMEM;
        event_id.ptr = (const uint8_t *)server_id;
        event_id.len = sizeof server_id;
    }
    char timestamp[64];
    size_t timestamp_len;
    if ((rc = format_timestamp(out, event->seconds, event->nanos, timestamp, &timestamp_len)))
        return rc;
    if ((rc = write_line(out, event, event_id, !client_id.len, timestamp, timestamp_len,
                         ps->received_at, ps->received_at_plain)))
        return rc;
    uint8_t type = (uint8_t)event->event_type;
    if (buf_put(&out->types, &type, 1)) return AEP_ERR_NOMEM;
    out->accepted++;
    if ((rc = write_result(out, ps->results_key, index, event_id, STATUS_ACCEPTED, EMPTY, 0)))
        return rc;
    if (ps->callbacks && ps->callbacks->accepted &&
        ps->callbacks->accepted(ps->callbacks->ctx, event, event->event_type,
                                (const char *)event_id.ptr, event_id.len, timestamp, timestamp_len))
        return AEP_ERR_CALLBACK;
    return AEP_OK;
}

static void write_head(aep_output *out, int kind) {
    uint8_t *h = out->head;
    size_t n = 0;
    uint8_t accepted_key = 0x08, rejected_key = 0x10;
    if (kind == AEP_KIND_STREAM) {
        if (out->sequence) {
            h[n++] = 0x08;
            n += write_varint(h + n, out->sequence);
        }
        accepted_key = 0x10;
        rejected_key = 0x18;
    }
    size_t rejected = out->count - out->accepted;
    if (out->accepted) {
        h[n++] = accepted_key;
        n += write_varint(h + n, (uint32_t)out->accepted);
    }
    if (rejected) {
        h[n++] = rejected_key;
        n += write_varint(h + n, (uint32_t)rejected);
    }
    out->head_len = n;
}

int aep_decode(const aep_limits *limits, aep_ids *ids, const aep_callbacks *callbacks, int kind,
               const uint8_t *data, size_t len, double now, const char *received_at,
               size_t received_at_len, aep_output *out) {
    output_reset(out);
    pass ps = {
        .limits = limits,
        .ids = ids,
        .callbacks = callbacks,
        .out = out,
        .oldest = now - limits->max_event_age,
        .newest = now + limits->max_clock_skew,
        .received_at = {received_at_len ? (const uint8_t *)received_at : EMPTY, received_at_len},
        .clock_ms = -1,
        .results_key = kind == AEP_KIND_STREAM ? 0x22 : 0x1a,
    };
    ps.received_at_plain = json_plain_ok(ps.received_at);
    const uint32_t events_field = kind == AEP_KIND_STREAM ? 2 : 1;
    const uint32_t ack_field = kind == AEP_KIND_STREAM ? 3 : 2;
    aep_event *event = &out->event;
    event_clear(event);
    const uint8_t *start = len ? data : EMPTY;
    reader r = {start, start + len, start + len};
    while (r.p < r.end) {
        uint32_t field;
        int wire_type, rc;
        uint64_t value;
        reader sub;
        if ((rc = read_tag(&r, &field, &wire_type))) return rc;
        if (field == events_field && wire_type == 2) {
            if ((rc = read_submessage(&r, &sub))) return rc;
            if (kind == AEP_KIND_SINGLE) {
                /* SendAdEventRequest.event is one message: occurrences merge. */
                out->has_event = 1;
                if ((rc = parse_event(sub, event, DEPTH_LIMIT - 1))) return rc;
                if (buf_put(&out->merged, sub.p, (size_t)(sub.end - sub.p))) return AEP_ERR_NOMEM;
                continue;
            }
            event_clear(event);
            if ((rc = parse_event(sub, event, DEPTH_LIMIT - 1))) return rc;
            size_t index = out->count++;
            if ((int64_t)index < limits->max_batch_events) {
                if ((rc = process_event(&ps, event, index, sub.p, (size_t)(sub.end - sub.p))))
                    return rc;
            } else if (event->event_type >= 0 && event->event_type < AEP_TYPE_SLOTS) {
                out->received_by_type[event->event_type]++;
            }
        } else if (field == ack_field && wire_type == 0) {
            if ((rc = read_varint(&r, &value))) return rc;
            out->ack_mode = (int32_t)(uint32_t)value;
        } else if (kind == AEP_KIND_STREAM && field == 1 && wire_type == 0) {
            if ((rc = read_varint(&r, &value))) return rc;
            out->sequence = value;
        } else if ((rc = skip_field(&r, field, wire_type, DEPTH_LIMIT))) {
            return rc;
        }
    }
    if (kind == AEP_KIND_SINGLE && out->has_event) {
        out->count = 1;
        int rc = process_event(&ps, event, 0, out->merged.len ? out->merged.data : EMPTY,
                               out->merged.len);
        if (rc) return rc;
        out->results.len = 0; /* SendAdEventResponse is the caller's to build */
        return AEP_OK;
    }
    if ((int64_t)out->count > limits->max_batch_events) {
        /* refused for its length: what was done of it is not an answer */
        out->accepted = out->rejected = 0;
        out->lines.len = out->line_count = out->types.len = out->results.len = 0;
        return AEP_OK;
    }
    write_head(out, kind);
    return AEP_OK;
}
