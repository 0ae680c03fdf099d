/*
 * libFuzzer harness over the native pass's C entry point (codec_core.c),
 * built with AddressSanitizer and UBSan by tests/unit/test_codec_sanitizers.py:
 *
 *   clang -fsanitize=fuzzer,address,undefined fuzz_codec.c codec_core.c
 *
 * The first byte picks the request kind; the rest is the request. Besides
 * the sanitizers' checks, every answer must be consistent with itself: one
 * result per event, one line per accepted event ending where line_ends says,
 * the response a well-framed sequence of fields. The output buffers are
 * reused from run to run, as the CPython binding reuses them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec_core.h"

static const aep_limits LIMITS = {
    .max_id_length = 6,
    .max_attributes = 3,
    .max_attribute_key_length = 3,
    .max_attribute_value_length = 4,
    .max_event_age = 100.0,
    .max_clock_skew = 10.0,
    .max_batch_events = 12,
};
/* Timestamps near this are cheap for the fuzzer to find: seconds 900 .. 1010. */
static const double NOW = 1000.25;
static const char RECEIVED_AT[] = "1970-01-01T00:16:40.250000Z";

static int rejected(void *ctx, size_t index, aep_span event_id, const uint8_t *event,
                    size_t event_len, const uint8_t **reason, size_t *reason_len) {
    (void)ctx;
    (void)index;
    if (event_id.len && !event_id.ptr) __builtin_trap();
    if (event_len && !event) __builtin_trap();
    static const uint8_t text[] = "rejected";
    *reason = text;
    *reason_len = sizeof text - 1;
    return 0;
}

static int accepted(void *ctx, const aep_event *event, int event_type, const char *event_id,
                    size_t event_id_len, const char *timestamp, size_t timestamp_len) {
    (void)ctx;
    if (event_type < 1 || event_type > 3 || !event_id_len || !timestamp_len) __builtin_trap();
    /* attributes: distinct keys in strictly increasing byte order */
    for (size_t i = 1; i < event->attribute_count; i++) {
        aep_span a = event->attributes[i - 1].key, b = event->attributes[i].key;
        size_t n = a.len < b.len ? a.len : b.len;
        int c = memcmp(a.ptr, b.ptr, n);
        if (c > 0 || (c == 0 && a.len >= b.len)) __builtin_trap();
    }
    (void)event_id;
    (void)timestamp;
    return 0;
}

static const uint8_t *skip_varint(const uint8_t *p, const uint8_t *end, uint64_t *value) {
    uint64_t v = 0;
    for (int shift = 0; p < end && shift < 64; shift += 7) {
        uint8_t byte = *p++;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = v;
            return p;
        }
    }
    __builtin_trap();
}

/* The response: varint and length-delimited fields only, each complete. */
static size_t check_response(const aep_output *out, uint8_t results_key) {
    size_t results = 0;
    const uint8_t *p = out->head, *end = out->head + out->head_len;
    uint64_t value;
    while (p < end) {
        if ((*p & 7) != 0) __builtin_trap();
        p = skip_varint(p + 1, end, &value);
    }
    if (!out->results.len) return 0;
    p = out->results.data;
    end = p + out->results.len;
    while (p < end) {
        if (*p != results_key) __builtin_trap();
        p = skip_varint(p + 1, end, &value);
        if (value > (uint64_t)(end - p)) __builtin_trap();
        p += value;
        results++;
    }
    return results;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static aep_ids ids;
    static aep_output out;
    static int ready;
    if (!ready) {
        aep_ids_init(&ids);
        aep_output_init(&out);
        ready = 1;
    }
    if (size < 1) return 0;
    int kind = data[0] % 3;
    aep_callbacks callbacks = {NULL, rejected, accepted};
    /* A copy of exactly the request's size, so reading one byte past it is caught. */
    uint8_t *request = malloc(size - 1 ? size - 1 : 1);
    if (!request) return 0;
    memcpy(request, data + 1, size - 1);
    int rc = aep_decode(&LIMITS, &ids, &callbacks, kind, request, size - 1, NOW, RECEIVED_AT,
                        sizeof RECEIVED_AT - 1, &out);
    free(request);
    if (rc != AEP_OK) {
        if (rc != AEP_ERR_WIRE && rc != AEP_ERR_UTF8) __builtin_trap();
        return 0;
    }
    if (out.line_count != out.accepted || out.types.len != out.accepted) __builtin_trap();
    uint64_t start = 0;
    for (size_t i = 0; i < out.line_count; i++) {
        uint64_t line_end = out.line_ends[i];
        if (line_end <= start || line_end > out.lines.len) __builtin_trap();
        if (out.lines.data[line_end - 1] != '\n' || out.lines.data[start] != '{') __builtin_trap();
        if (memchr(out.lines.data + start, '\n', line_end - start - 1)) __builtin_trap();
        start = line_end;
    }
    if (start != out.lines.len) __builtin_trap();
    if (kind == AEP_KIND_SINGLE) {
        if (out.count != (size_t)out.has_event || out.results.len || out.head_len) __builtin_trap();
        if (out.accepted + out.rejected != out.count) __builtin_trap();
    } else if ((int64_t)out.count > LIMITS.max_batch_events) {
        if (out.accepted || out.rejected || out.results.len || out.head_len) __builtin_trap();
    } else {
        if (out.accepted + out.rejected != out.count) __builtin_trap();
        if (check_response(&out, kind == AEP_KIND_STREAM ? 0x22 : 0x1a) != out.count)
            __builtin_trap();
    }
    return 0;
}
