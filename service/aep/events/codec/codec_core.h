/*
 * The native pass over one AdEventService request, in plain C (no Python):
 * the CPython binding (_native.c) and the fuzz harness (tests/fuzz) both
 * drive it.
 *
 * One call walks the protobuf wire format of a SendAdEventRequest,
 * SendAdEventBatchRequest or StreamAdEventsRequest exactly as upb decodes it,
 * checks every event with the service's rules (aep.events.validation), gives
 * an event without an id a UUIDv7, writes the JSON Lines of the valid events
 * (byte for byte what orjson writes for their stored forms) and the
 * per-event results of the response (without its ack_mode, which the caller
 * chooses). The Python reference (aep/events/codec/reference.py) is the
 * specification; differential tests hold the two to the same bytes.
 */
#ifndef AEP_CODEC_CORE_H
#define AEP_CODEC_CORE_H

#include <stddef.h>
#include <stdint.h>

enum aep_kind { AEP_KIND_SINGLE = 0, AEP_KIND_BATCH = 1, AEP_KIND_STREAM = 2 };

enum aep_status {
    AEP_OK = 0,
    AEP_ERR_WIRE = 1,     /* upb: "Wire format was corrupt" */
    AEP_ERR_UTF8 = 2,     /* upb: "String field had bad UTF-8" */
    AEP_ERR_NOMEM = 3,
    AEP_ERR_CALLBACK = 4, /* a callback failed (its error stays set by the caller) */
    AEP_ERR_TIME = 5,     /* a valid event's timestamp does not fit the C library's time */
};

/* The number of EventType values counted per request (0 .. AEP_TYPE_SLOTS-1). */
#define AEP_TYPE_SLOTS 4

typedef struct {
    const uint8_t *ptr;
    size_t len;
} aep_span;

typedef struct {
    aep_span key, value;
    size_t order; /* position on the wire: a repeated key keeps its last value */
} aep_attribute;

/* The string fields of an AdEvent, in the stored form's order. */
enum aep_text_field {
    AEP_EVENT_ID, AEP_USER_ID, AEP_AD_ID,
    AEP_CAMPAIGN_ID, AEP_CREATIVE_ID, AEP_PLACEMENT_ID, AEP_PUBLISHER_ID,
    AEP_CURRENCY, AEP_TEXT_FIELDS
};

typedef struct {
    aep_span text[AEP_TEXT_FIELDS];
    int32_t event_type;
    int has_timestamp;
    int64_t seconds;
    int32_t nanos;
    int64_t price_micros;
    /* Entries on the wire; after aep_event_finish_attributes, distinct keys in
     * byte order (the code point order of Python's sorted()). */
    aep_attribute *attributes;
    size_t attribute_count, attribute_capacity;
} aep_event;

typedef struct {
    int64_t max_id_length;
    int64_t max_attributes;
    int64_t max_attribute_key_length;
    int64_t max_attribute_value_length;
    double max_event_age;
    double max_clock_skew;
    int64_t max_batch_events; /* past it the events are only walked, not checked */
} aep_limits;

typedef struct aep_buf {
    uint8_t *data;
    size_t len, cap;
    /* NULL: data is malloc'd (realloc grows it). Else it grows the buffer to at
     * least `cap` bytes, keeping the first `len`, and returns 0 (the owner's
     * memory: the extension builds a request's lines in the bytes object it
     * returns, so they are not copied again). */
    int (*resize)(struct aep_buf *b, size_t cap);
    void *owner;
} aep_buf;

/* UUIDv7 generator state (RFC 9562 method 3, as aep.events.ids). */
typedef struct {
    int64_t last_ms;
    unsigned __int128 last_random;
    uint8_t pool[640];
    size_t pool_left;
} aep_ids;

typedef struct {
    void *ctx;
    /* A rejected event: its index, its event_id, its bytes on the wire (the
     * occurrences concatenated for SendAdEventRequest, which merges them).
     * Sets *reason to UTF-8 bytes that stay valid until the next call. */
    int (*rejected)(void *ctx, size_t index, aep_span event_id, const uint8_t *event,
                    size_t event_len, const uint8_t **reason, size_t *reason_len);
    /* An accepted event, after its line was written: its stored id and timestamp. */
    int (*accepted)(void *ctx, const aep_event *event, int event_type, const char *event_id,
                    size_t event_id_len, const char *timestamp, size_t timestamp_len);
} aep_callbacks;

typedef struct {
    /* request fields */
    int32_t ack_mode;
    uint64_t sequence;
    int has_event;
    size_t count; /* events in the request (SendAdEventRequest: 1 when present) */
    size_t accepted;
    size_t rejected;
    uint64_t received_by_type[AEP_TYPE_SLOTS];
    /* JSON Lines of the accepted events; line i ends at line_ends[i] */
    aep_buf lines;
    uint64_t *line_ends;
    size_t line_count, line_ends_cap;
    aep_buf types; /* the EventType of each accepted event, one byte each */
    /* the response without ack_mode: head (sequence, counts), then results */
    uint8_t head[48];
    size_t head_len;
    aep_buf results;
    /* scratch */
    aep_buf merged; /* SendAdEventRequest: the event's occurrences concatenated */
    aep_event event;
    char prefix[40];
    size_t prefix_len;
    int64_t prefix_seconds;
    int prefix_valid;
} aep_output;

/* Appends `s` as orjson writes a str of that UTF-8, quotes included. Unchecked:
 * the caller reserved 6 * s.len + 2 bytes after b->len. */
void aep_json_string(aep_buf *b, aep_span s);
void aep_output_init(aep_output *out);
void aep_output_free(aep_output *out);
/* Frees the buffers grown past `keep` bytes (one huge request keeps no memory). */
void aep_output_trim(aep_output *out, size_t keep);
void aep_ids_init(aep_ids *ids);

/* Makes one UUIDv7 (36 characters, no terminator). 0 on success. */
int aep_ids_next(aep_ids *ids, char out[36]);
/* The next id as if the clock read `now_ms` (milliseconds since the epoch). */
int aep_ids_next_at(aep_ids *ids, int64_t now_ms, char out[36]);
/* CLOCK_REALTIME in milliseconds since the epoch. */
int64_t aep_clock_ms(void);

/*
 * Decodes, checks and encodes one request. `received_at` is the stored
 * form's received_at (RFC 3339), `now` the clock the window is checked
 * against. Returns an aep_status; on anything but AEP_OK the outputs are
 * meaningless.
 */
int aep_decode(const aep_limits *limits, aep_ids *ids, const aep_callbacks *callbacks, int kind,
               const uint8_t *data, size_t len, double now, const char *received_at,
               size_t received_at_len, aep_output *out);

#endif
