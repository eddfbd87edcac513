/* The common records as JSON documents, in C: a fast path of amphora.jsonpickle.

   transcode(data) -> (class_name, json_text) or None
   transcode_many(records) -> [(class_name, json_text) or None, ...]

   The same mapping as amphora/jsonpickle/, for the records most applications write:
   dicts with string keys, lists, tuples, strings, bytes, numbers, persistent references,
   sets, datetimes, dates, Decimals, instances made by NEWOBJ or REDUCE, and BTrees
   buckets and trees. Whatever else a record holds (a dict with other keys, structures
   shared through the memo, text that SQL JSON cannot store, protocol 0 opcodes, a
   corrupt pickle...) gives None, and the caller uses the Python transcoder, which knows
   every case. So this file never has to be right about a rare case: it only has to
   recognise it. Tests compare both on generated data.

   Like the Python transcoder, it never imports, looks up or calls a class: it reads
   opcodes into a tree of nodes (kept in an arena, freed per record), then writes the
   tree as JSON text. That core touches no Python object, so transcode_many runs it
   without the GIL (other threads go on meanwhile), except for records holding a float,
   whose repr is Python's: those are done after, with the GIL.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <setjmp.h>

/* -- the arena ------------------------------------------------------------------------ */

typedef struct Block { struct Block *next; size_t used, size; char data[]; } Block;

/* What one transcoding needs besides its input: the arena of its nodes and the buffer of
   its text, kept from record to record. ``with_gil``: floats may be written (Python's
   float repr needs the GIL; without it a record holding one is left for later). */
typedef struct {
    Block *arena;
    char *out;
    Py_ssize_t out_cap;
    int with_gil;
} Ctx;

static void *arena_take(Ctx *ctx, size_t size, jmp_buf *fail)
{
    size = (size + 15) & ~(size_t)15;
    Block *arena = ctx->arena;
    if (arena == NULL || arena->used + size > arena->size) {
        size_t want = size > 65536 ? size : 65536;
        Block *block = (Block *)PyMem_RawMalloc(sizeof(Block) + want);
        if (block == NULL)
            longjmp(*fail, 2);
        block->next = arena;
        block->used = 0;
        block->size = want;
        ctx->arena = arena = block;
    }
    void *found = arena->data + arena->used;
    arena->used += size;
    return found;
}

static void arena_reset(Ctx *ctx)
{
    /* keep one block of the usual size for the next record */
    while (ctx->arena != NULL && (ctx->arena->next != NULL || ctx->arena->size > 65536)) {
        Block *next = ctx->arena->next;
        PyMem_RawFree(ctx->arena);
        ctx->arena = next;
    }
    if (ctx->arena != NULL)
        ctx->arena->used = 0;
}

static void ctx_free(Ctx *ctx)
{
    while (ctx->arena != NULL) {
        Block *next = ctx->arena->next;
        PyMem_RawFree(ctx->arena);
        ctx->arena = next;
    }
    PyMem_RawFree(ctx->out);
    ctx->out = NULL;
    ctx->out_cap = 0;
}

/* -- nodes ---------------------------------------------------------------------------- */

enum {
    K_NONE, K_TRUE, K_FALSE, K_INT, K_FLOAT, K_STR, K_BYTES, K_GLOBAL, K_LIST, K_TUPLE,
    K_DICT, K_SET, K_FROZENSET, K_REF, K_TAGGED, K_INSTANCE
};

typedef struct Node Node;
struct Node {
    int kind;
    int fold;               /* K_TAGGED: the "fold": 1 of a datetime or time */
    long long i;            /* K_INT */
    unsigned long long oid; /* K_REF */
    double f;               /* K_FLOAT */
    const char *s;          /* K_STR, K_BYTES, K_GLOBAL (the name), K_TAGGED (the text) */
    Py_ssize_t len;
    const char *tag;        /* K_TAGGED: "@datetime"... */
    Node **items;           /* containers; K_DICT: key, value, key, value...;
                               K_INSTANCE: its args */
    Py_ssize_t n, cap;
    Node *klass;            /* K_REF: the class global (or NULL); K_INSTANCE: its class */
    Node *state;            /* K_INSTANCE: what BUILD gave it (or NULL) */
};

typedef struct {
    const unsigned char *data;
    Py_ssize_t size, pos;
    Node **stack;
    Py_ssize_t depth, stack_cap;
    Py_ssize_t *marks;
    Py_ssize_t nmarks, marks_cap;
    Node **memo;
    Py_ssize_t memo_cap, memo_count;
    Py_ssize_t nodes;       /* made so far */
    Ctx *ctx;
    int reused;             /* the Python transcoder would check the document's size */
    jmp_buf fail;           /* longjmp(fail, 1): not for the fast path; 2: no memory */
} Reader;

#define GIVE_UP(r) longjmp((r)->fail, 1)
#define arena_alloc(r, size) arena_take((r)->ctx, (size), &(r)->fail)

static Node *new_node(Reader *r, int kind)
{
    Node *node = (Node *)arena_alloc(r, sizeof(Node));
    memset(node, 0, sizeof(Node));
    node->kind = kind;
    r->nodes++;
    return node;
}

static void add_item(Reader *r, Node *container, Node *item)
{
    if (container->n == container->cap) {
        Py_ssize_t cap = container->cap ? container->cap * 2 : 8;
        Node **items = (Node **)arena_alloc(r, sizeof(Node *) * cap);
        if (container->n)
            memcpy(items, container->items, sizeof(Node *) * container->n);
        container->items = items;
        container->cap = cap;
    }
    container->items[container->n++] = item;
}

static void push(Reader *r, Node *node)
{
    if (r->depth == r->stack_cap) {
        Py_ssize_t cap = r->stack_cap * 2;
        Node **stack = (Node **)arena_alloc(r, sizeof(Node *) * cap);
        memcpy(stack, r->stack, sizeof(Node *) * r->depth);
        r->stack = stack;
        r->stack_cap = cap;
    }
    r->stack[r->depth++] = node;
}

static Node *pop(Reader *r)
{
    if (r->depth <= (r->nmarks ? r->marks[r->nmarks - 1] : 0))
        GIVE_UP(r);
    return r->stack[--r->depth];
}

static Node *top(Reader *r)
{
    if (r->depth <= (r->nmarks ? r->marks[r->nmarks - 1] : 0))
        GIVE_UP(r);
    return r->stack[r->depth - 1];
}

static Py_ssize_t pop_mark(Reader *r)
{
    if (r->nmarks == 0)
        GIVE_UP(r);
    return r->marks[--r->nmarks];
}

/* What SETITEMS and the like add to: the value below their items. */
static Node *below(Reader *r, Py_ssize_t start)
{
    if (start < 1 + (r->nmarks ? r->marks[r->nmarks - 1] : 0))
        GIVE_UP(r);
    return r->stack[start - 1];
}

static void memo_put(Reader *r, Py_ssize_t key, Node *node)
{
    if (key < 0 || key > (1 << 20))
        GIVE_UP(r);
    if (key >= r->memo_cap) {
        Py_ssize_t cap = r->memo_cap;
        while (cap <= key)
            cap *= 2;
        Node **memo = (Node **)arena_alloc(r, sizeof(Node *) * cap);
        memcpy(memo, r->memo, sizeof(Node *) * r->memo_cap);
        memset(memo + r->memo_cap, 0, sizeof(Node *) * (cap - r->memo_cap));
        r->memo = memo;
        r->memo_cap = cap;
    }
    if (r->memo[key] == NULL)
        r->memo_count++;
    r->memo[key] = node;
}

static Node *memo_get(Reader *r, Py_ssize_t key, int long_get)
{
    if (key < 0 || key >= r->memo_cap || r->memo[key] == NULL)
        GIVE_UP(r);
    Node *node = r->memo[key];
    switch (node->kind) {
    case K_LIST: case K_TUPLE: case K_DICT: case K_SET: case K_FROZENSET: case K_INSTANCE:
        GIVE_UP(r);  /* shared containers (and cycles): the Python transcoder's case */
    case K_REF: case K_TAGGED:
        r->reused = 1;  /* dicts in the Python transcoder */
    }
    if (long_get)
        r->reused = 1;
    return node;
}

/* -- reading opcodes ------------------------------------------------------------------ */

static const unsigned char *take(Reader *r, Py_ssize_t count)
{
    if (count < 0 || r->size - r->pos < count)
        GIVE_UP(r);
    const unsigned char *at = r->data + r->pos;
    r->pos += count;
    return at;
}

static unsigned long long little(const unsigned char *at, int width)
{
    unsigned long long value = 0;
    for (int k = width - 1; k >= 0; k--)
        value = (value << 8) | at[k];
    return value;
}

/* The 8-byte size argument of BINUNICODE8 and BINBYTES8. */
static Py_ssize_t size8(Reader *r)
{
    unsigned long long size = little(take(r, 8), 8);
    if (size > (unsigned long long)PY_SSIZE_T_MAX)
        GIVE_UP(r);
    return (Py_ssize_t)size;
}

/* Strict UTF-8 without U+0000 (what Python's str.decode() accepts, minus NUL). */
static int plain_utf8(const unsigned char *s, Py_ssize_t len)
{
    Py_ssize_t k = 0;
    while (k < len) {
        unsigned char c = s[k];
        if (c < 0x80) {
            if (c == 0)
                return 0;
            k++;
            continue;
        }
        int more;
        unsigned int cp;
        if (c >= 0xC2 && c <= 0xDF) { more = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { more = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { more = 3; cp = c & 0x07; }
        else return 0;
        if (len - k <= more)
            return 0;
        for (int m = 1; m <= more; m++) {
            unsigned char next = s[k + m];
            if ((next & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (next & 0x3F);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)))
                || (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        k += more + 1;
    }
    return 1;
}

static Node *text(Reader *r, Py_ssize_t size)
{
    const unsigned char *at = take(r, size);
    if (!plain_utf8(at, size))
        GIVE_UP(r);  /* U+0000 or lone surrogates: the @str form */
    Node *node = new_node(r, K_STR);
    node->s = (const char *)at;
    node->len = size;
    return node;
}

static Node *raw_bytes(Reader *r, Py_ssize_t size)
{
    Node *node = new_node(r, K_BYTES);
    node->s = (const char *)take(r, size);
    node->len = size;
    return node;
}

static int same(const char *s, Py_ssize_t len, const char *literal)
{
    return (Py_ssize_t)strlen(literal) == len && memcmp(s, literal, len) == 0;
}

static Node *global(Reader *r, const char *module, Py_ssize_t mlen, const char *name,
                    Py_ssize_t nlen)
{
    if (!plain_utf8((const unsigned char *)module, mlen)
            || !plain_utf8((const unsigned char *)name, nlen))
        GIVE_UP(r);
    if (same(module, mlen, "__builtin__")) {
        module = "builtins";
        mlen = 8;
    }
    else if (same(module, mlen, "copy_reg")) {
        module = "copyreg";
        mlen = 7;
    }
    char *full = (char *)arena_alloc(r, mlen + nlen + 1);
    memcpy(full, module, mlen);
    full[mlen] = '.';
    memcpy(full + mlen + 1, name, nlen);
    Node *node = new_node(r, K_GLOBAL);
    node->s = full;
    node->len = mlen + 1 + nlen;
    return node;
}

static Node *global_opcode(Reader *r)
{
    const unsigned char *start = r->data + r->pos;
    const unsigned char *end = r->data + r->size;
    const unsigned char *first = memchr(start, '\n', end - start);
    if (first == NULL)
        GIVE_UP(r);
    const unsigned char *second = memchr(first + 1, '\n', end - first - 1);
    if (second == NULL)
        GIVE_UP(r);
    r->pos = second + 1 - r->data;
    return global(r, (const char *)start, first - start, (const char *)first + 1,
                  second - first - 1);
}

static Node *items_of(Reader *r, int kind, Py_ssize_t start)
{
    Node *node = new_node(r, kind);
    for (Py_ssize_t k = start; k < r->depth; k++)
        add_item(r, node, r->stack[k]);
    r->depth = start;
    return node;
}

static void set_items(Reader *r, Node *target, Py_ssize_t start)
{
    if (target->kind != K_DICT || (r->depth - start) % 2)
        GIVE_UP(r);
    for (Py_ssize_t k = start; k < r->depth; k += 2) {
        if (r->stack[k]->kind != K_STR)
            GIVE_UP(r);  /* the @dict form */
        add_item(r, target, r->stack[k]);
        add_item(r, target, r->stack[k + 1]);
    }
    r->depth = start;
}

static void append_items(Reader *r, Node *target, Py_ssize_t start, int kind)
{
    if (target->kind != kind)
        GIVE_UP(r);
    for (Py_ssize_t k = start; k < r->depth; k++)
        add_item(r, target, r->stack[k]);
    r->depth = start;
}

/* A REDUCE: datetime, date, time, Decimal, set and frozenset become their forms; other
   calls of a named class become instances. */
static const int days_in_month[] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

static int valid_date(int year, int month, int day)
{
    if (year < 1 || year > 9999 || month < 1 || month > 12 || day < 1)
        return 0;
    int days = days_in_month[month];
    if (month == 2 && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
        days = 29;
    return day <= days;
}

static Node *tagged(Reader *r, const char *tag, const char *value, int fold)
{
    Node *node = new_node(r, K_TAGGED);
    Py_ssize_t len = strlen(value);
    char *copy = (char *)arena_alloc(r, len + 1);
    memcpy(copy, value, len + 1);
    node->tag = tag;
    node->s = copy;
    node->len = len;
    node->fold = fold;
    return node;
}

static int clock_text(char *out, const unsigned char *raw, int hour)
{
    int minute = raw[0], second = raw[1];
    long micro = ((long)raw[2] << 16) | (raw[3] << 8) | raw[4];
    if (hour > 23 || minute > 59 || second > 59 || micro > 999999)
        return -1;
    if (micro)
        return sprintf(out, "%02d:%02d:%02d.%06ld", hour, minute, second, micro);
    return sprintf(out, "%02d:%02d:%02d", hour, minute, second);
}

static Node *reduce(Reader *r, Node *func, Node *args)
{
    if (func->kind != K_GLOBAL || args->kind != K_TUPLE)
        GIVE_UP(r);
    const char *name = func->s;
    Py_ssize_t len = func->len;
    char out[64];
    int is_datetime = same(name, len, "datetime.datetime");
    int is_date = same(name, len, "datetime.date");
    int is_time = same(name, len, "datetime.time");
    if (is_datetime || is_date || is_time) {
        /* without a tzinfo argument only: zones are the Python transcoder's */
        if (args->n != 1 || args->items[0]->kind != K_BYTES)
            GIVE_UP(r);
        const unsigned char *raw = (const unsigned char *)args->items[0]->s;
        Py_ssize_t size = args->items[0]->len;
        if (is_time) {
            if (size != 6 || clock_text(out, raw + 1, raw[0] & 0x7F) < 0)
                GIVE_UP(r);
            return tagged(r, "@time", out, raw[0] >> 7);
        }
        if (size != (is_date ? 4 : 10))
            GIVE_UP(r);
        int year = (raw[0] << 8) | raw[1], month = raw[2] & 0x7F;
        if (!valid_date(year, is_date ? raw[2] : month, raw[3]))
            GIVE_UP(r);
        if (is_date) {
            sprintf(out, "%04d-%02d-%02d", year, raw[2], raw[3]);
            return tagged(r, "@date", out, 0);
        }
        int head = sprintf(out, "%04d-%02d-%02dT", year, month, raw[3]);
        if (clock_text(out + head, raw + 5, raw[4]) < 0)
            GIVE_UP(r);
        return tagged(r, "@datetime", out, raw[2] >> 7);
    }
    if (same(name, len, "decimal.Decimal")) {
        if (args->n != 1 || args->items[0]->kind != K_STR)
            GIVE_UP(r);
        Node *node = tagged(r, "@decimal", "", 0);
        node->s = args->items[0]->s;
        node->len = args->items[0]->len;
        return node;
    }
    if (same(name, len, "builtins.set") || same(name, len, "builtins.frozenset")) {
        Node *node = new_node(r, name[9] == 's' ? K_SET : K_FROZENSET);
        if (args->n == 1 && args->items[0]->kind == K_LIST) {
            node->items = args->items[0]->items;
            node->n = node->cap = args->items[0]->n;  /* appending copies */
            return node;
        }
        if (args->n == 0)
            return node;
        GIVE_UP(r);
    }
    /* The Python transcoder knows these other calls of the pickle machinery. */
    if (same(name, len, "builtins.bytes") || same(name, len, "_codecs.encode")
            || same(name, len, "builtins.getattr") || same(name, len, "copyreg._reconstructor")
            || same(name, len, "copyreg.__newobj__") || same(name, len, "datetime.timedelta"))
        GIVE_UP(r);
    Node *node = new_node(r, K_INSTANCE);
    node->klass = func;
    node->items = args->items;
    node->n = node->cap = args->n;
    return node;
}

static Node *run(Reader *r)
{
    if (r->pos < r->size && r->data[r->pos] == 0x80)
        r->pos += 2;
    for (;;) {
        if (r->pos >= r->size)
            GIVE_UP(r);
        unsigned char op = r->data[r->pos++];
        Node *value, *other;
        Py_ssize_t start;
        switch (op) {
        case 'X':  /* BINUNICODE */
            push(r, text(r, (Py_ssize_t)little(take(r, 4), 4)));
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            push(r, text(r, *take(r, 1)));
            break;
        case 0x8d: /* BINUNICODE8 */
            push(r, text(r, size8(r)));
            break;
        case 'q':  /* BINPUT */
            memo_put(r, *take(r, 1), top(r));
            break;
        case 'r':  /* LONG_BINPUT */
            memo_put(r, (Py_ssize_t)little(take(r, 4), 4), top(r));
            break;
        case 0x94: /* MEMOIZE */
            memo_put(r, r->memo_count, top(r));
            break;
        case 'h':  /* BINGET */
            push(r, memo_get(r, *take(r, 1), 0));
            break;
        case 'j':  /* LONG_BINGET */
            push(r, memo_get(r, (Py_ssize_t)little(take(r, 4), 4), 1));
            break;
        case 'K':  /* BININT1 */
            value = new_node(r, K_INT);
            value->i = *take(r, 1);
            push(r, value);
            break;
        case 'M':  /* BININT2 */
            value = new_node(r, K_INT);
            value->i = (long long)little(take(r, 2), 2);
            push(r, value);
            break;
        case 'J':  /* BININT */
            value = new_node(r, K_INT);
            value->i = (int32_t)(uint32_t)little(take(r, 4), 4);
            push(r, value);
            break;
        case 0x8a: { /* LONG1 */
            int width = *take(r, 1);
            if (width > 8)
                GIVE_UP(r);
            const unsigned char *at = take(r, width);
            value = new_node(r, K_INT);
            if (width) {
                unsigned long long bits = little(at, width);
                if (width < 8 && (at[width - 1] & 0x80))
                    bits |= ~0ULL << (8 * width);  /* sign extension */
                value->i = (long long)bits;
            }
            push(r, value);
            break;
        }
        case 'G': { /* BINFLOAT */
            const unsigned char *at = take(r, 8);
            unsigned long long bits = 0;
            for (int k = 0; k < 8; k++)
                bits = (bits << 8) | at[k];
            value = new_node(r, K_FLOAT);
            memcpy(&value->f, &bits, 8);
            push(r, value);
            break;
        }
        case 'N':
            push(r, new_node(r, K_NONE));
            break;
        case 0x88:
            push(r, new_node(r, K_TRUE));
            break;
        case 0x89:
            push(r, new_node(r, K_FALSE));
            break;
        case 'C':  /* SHORT_BINBYTES */
            push(r, raw_bytes(r, *take(r, 1)));
            break;
        case 'B':  /* BINBYTES */
            push(r, raw_bytes(r, (Py_ssize_t)little(take(r, 4), 4)));
            break;
        case 0x8e: /* BINBYTES8 */
            push(r, raw_bytes(r, size8(r)));
            break;
        case '}':  /* EMPTY_DICT */
            push(r, new_node(r, K_DICT));
            break;
        case ']':  /* EMPTY_LIST */
            push(r, new_node(r, K_LIST));
            break;
        case ')':  /* EMPTY_TUPLE */
            push(r, new_node(r, K_TUPLE));
            break;
        case 0x8f: /* EMPTY_SET */
            push(r, new_node(r, K_SET));
            break;
        case '(':  /* MARK */
            if (r->nmarks == r->marks_cap) {
                Py_ssize_t cap = r->marks_cap * 2;
                Py_ssize_t *marks = (Py_ssize_t *)arena_alloc(r, sizeof(Py_ssize_t) * cap);
                memcpy(marks, r->marks, sizeof(Py_ssize_t) * r->nmarks);
                r->marks = marks;
                r->marks_cap = cap;
            }
            r->marks[r->nmarks++] = r->depth;
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            int count = op - 0x84;
            start = r->depth - count;
            if (start < (r->nmarks ? r->marks[r->nmarks - 1] : 0))
                GIVE_UP(r);
            push(r, items_of(r, K_TUPLE, start));
            break;
        }
        case 't':  /* TUPLE */
            start = pop_mark(r);
            push(r, items_of(r, K_TUPLE, start));
            break;
        case 'l':  /* LIST */
            start = pop_mark(r);
            push(r, items_of(r, K_LIST, start));
            break;
        case 0x91: /* FROZENSET */
            start = pop_mark(r);
            push(r, items_of(r, K_FROZENSET, start));
            break;
        case 'd':  /* DICT */
            start = pop_mark(r);
            value = new_node(r, K_DICT);
            set_items(r, value, start);
            push(r, value);
            break;
        case 's':  /* SETITEM */
            start = r->depth - 2;
            set_items(r, below(r, start), start);
            break;
        case 'u':  /* SETITEMS */
            start = pop_mark(r);
            set_items(r, below(r, start), start);
            break;
        case 'a':  /* APPEND */
            start = r->depth - 1;
            append_items(r, below(r, start), start, K_LIST);
            break;
        case 'e':  /* APPENDS */
            start = pop_mark(r);
            append_items(r, below(r, start), start, K_LIST);
            break;
        case 0x90: /* ADDITEMS */
            start = pop_mark(r);
            append_items(r, below(r, start), start, K_SET);
            break;
        case 'c':  /* GLOBAL */
            push(r, global_opcode(r));
            break;
        case 0x93: /* STACK_GLOBAL */
            other = pop(r);
            value = pop(r);
            if (value->kind != K_STR || other->kind != K_STR)
                GIVE_UP(r);
            push(r, global(r, value->s, value->len, other->s, other->len));
            break;
        case 'Q':  /* BINPERSID */
            value = pop(r);
            other = new_node(r, K_REF);
            if (value->kind == K_TUPLE && value->n == 2 && value->items[0]->kind == K_BYTES
                    && value->items[0]->len == 8 && value->items[1]->kind == K_GLOBAL) {
                other->klass = value->items[1];
                value = value->items[0];
            }
            else if (value->kind != K_BYTES || value->len != 8)
                GIVE_UP(r);
            for (int k = 0; k < 8; k++)
                other->oid = (other->oid << 8) | (unsigned char)value->s[k];
            push(r, other);
            break;
        case 'R':  /* REDUCE */
            other = pop(r);
            value = pop(r);
            push(r, reduce(r, value, other));
            break;
        case 0x81: /* NEWOBJ */
            other = pop(r);
            value = pop(r);
            if (value->kind != K_GLOBAL || other->kind != K_TUPLE)
                GIVE_UP(r);
            {
                Node *instance = new_node(r, K_INSTANCE);
                instance->klass = value;
                instance->items = other->items;
                instance->n = instance->cap = other->n;
                push(r, instance);
            }
            break;
        case 'b':  /* BUILD */
            other = pop(r);
            value = top(r);
            if (value->kind != K_INSTANCE)
                GIVE_UP(r);
            value->state = other;
            break;
        case 0x95: /* FRAME */
            take(r, 8);
            break;
        case '.':  /* STOP */
            if (r->depth != 1 || r->nmarks)
                GIVE_UP(r);
            r->depth = 0;
            return r->stack[0];
        default:
            GIVE_UP(r);  /* protocol 0 opcodes, POP, DUP, EXT, buffers, corrupt data */
        }
    }
}

/* -- documents ------------------------------------------------------------------------ */

/* A (dict or None, dict) state as one dict (the __dict__ and __slots__ form). */
static Node *object_state(Reader *r, Node *state)
{
    if (state->kind != K_TUPLE || state->n != 2)
        return state;
    Node *first = state->items[0], *slots = state->items[1];
    if (slots->kind != K_DICT || (first->kind != K_NONE && first->kind != K_DICT))
        return state;
    Node *merged = new_node(r, K_DICT);
    if (first->kind == K_DICT)
        for (Py_ssize_t k = 0; k < first->n; k++)
            add_item(r, merged, first->items[k]);
    for (Py_ssize_t k = 0; k < slots->n; k++)
        add_item(r, merged, slots->items[k]);
    return merged;
}

/* A flattened BTrees record: a dict whose keys are markup ("@items"...), written as is. */
typedef struct { const char *key; Node *value; } Field;

typedef struct {
    Field fields[3];
    int nfields;
} Flat;

static Node *pairs(Reader *r, Node *flat)
{
    Node *list = new_node(r, K_LIST);
    for (Py_ssize_t k = 0; k < flat->n; k += 2) {
        Node *pair = new_node(r, K_LIST);
        add_item(r, pair, flat->items[k]);
        add_item(r, pair, flat->items[k + 1]);
        add_item(r, list, pair);
    }
    return list;
}

static int bucket(Reader *r, Node *state, const char *tag, Flat *out)
{
    if (state->kind != K_TUPLE || (state->n != 1 && state->n != 2))
        return 0;
    Node *flat = state->items[0];
    if (flat->kind != K_TUPLE)
        return 0;
    if (tag[1] == 'i') {
        if (flat->n % 2)
            return 0;
        out->fields[0].value = pairs(r, flat);
    }
    else {
        Node *keys = new_node(r, K_LIST);
        keys->items = flat->items;
        keys->n = keys->cap = flat->n;
        out->fields[0].value = keys;
    }
    out->fields[0].key = tag;
    out->nfields = 1;
    if (state->n == 2) {
        out->fields[1].key = "next";
        out->fields[1].value = state->items[1];
        out->nfields = 2;
    }
    return 1;
}

static int tree(Reader *r, Node *state, const char *tag, Flat *out)
{
    if (state->kind == K_NONE) {
        out->fields[0].key = tag;
        out->fields[0].value = new_node(r, K_LIST);
        out->nfields = 1;
        return 1;
    }
    if (state->kind != K_TUPLE || (state->n != 1 && state->n != 2))
        return 0;
    Node *children = state->items[0];
    if (children->kind != K_TUPLE)
        return 0;
    if (state->n == 1) {
        if (children->n != 1)
            return 0;
        return bucket(r, children->items[0], tag, out);
    }
    Node *refs = new_node(r, K_LIST), *keys = new_node(r, K_LIST);
    for (Py_ssize_t k = 0; k < children->n; k++)
        add_item(r, k % 2 ? keys : refs, children->items[k]);
    out->fields[0].key = "@children";
    out->fields[0].value = refs;
    out->fields[1].key = "keys";
    out->fields[1].value = keys;
    out->fields[2].key = "first";
    out->fields[2].value = state->items[1];
    out->nfields = 3;
    return 1;
}

static int ends_with(const char *s, Py_ssize_t len, const char *suffix)
{
    Py_ssize_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

static int btree(Reader *r, const char *name, Py_ssize_t len, Node *state, Flat *out)
{
    const char *dot = name + len;
    while (dot > name && dot[-1] != '.')
        dot--;
    Py_ssize_t short_len = name + len - dot;
    if (ends_with(dot, short_len, "Bucket"))
        return bucket(r, state, "@items", out);
    if (ends_with(dot, short_len, "TreeSet"))
        return tree(r, state, "@keys", out);
    if (ends_with(dot, short_len, "BTree"))
        return tree(r, state, "@items", out);
    if (ends_with(dot, short_len, "Set"))
        return bucket(r, state, "@keys", out);
    return 0;
}

/* -- writing JSON --------------------------------------------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    Reader *r;
    unsigned char seen;     /* the bits of every string byte written: 0x80, not ASCII */
} Out;

static void reserve(Out *o, Py_ssize_t more)
{
    if (o->len + more <= o->cap)
        return;
    Py_ssize_t cap = o->cap ? o->cap * 2 : 4096;
    while (cap < o->len + more)
        cap *= 2;
    char *buf = (char *)PyMem_RawRealloc(o->buf, cap);
    if (buf == NULL)
        longjmp(o->r->fail, 2);
    o->buf = o->r->ctx->out = buf;
    o->cap = o->r->ctx->out_cap = cap;
}

static void put(Out *o, const char *s, Py_ssize_t len)
{
    reserve(o, len);
    memcpy(o->buf + o->len, s, len);
    o->len += len;
}

#define PUT_LITERAL(o, s) put((o), (s), sizeof(s) - 1)

static void put_char(Out *o, char c)
{
    reserve(o, 1);
    o->buf[o->len++] = c;
}

static const char hexdigits[] = "0123456789abcdef";

/* A JSON string, escaped as json.dumps(ensure_ascii=False) does; ``prefix`` ("@" for an
   escaped key, else "") goes inside the quotes. */
static void put_string(Out *o, const char *prefix, const char *s, Py_ssize_t len)
{
    Py_ssize_t plen = strlen(prefix);
    reserve(o, len + plen + 2);
    o->buf[o->len++] = '"';
    memcpy(o->buf + o->len, prefix, plen);
    o->len += plen;
    Py_ssize_t run = 0;
    unsigned char seen = 0;
    for (Py_ssize_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        seen |= c;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(o, s + run, k - run);
        run = k + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        int n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hexdigits[c >> 4]; esc[5] = hexdigits[c & 15];
            n = 6;
        }
        put(o, esc, n);
    }
    put(o, s + run, len - run);
    put_char(o, '"');
    o->seen |= seen;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char b64_pairs[4096 * 2];  /* the two characters of every 12 bits */

static void put_base64(Out *o, const unsigned char *s, Py_ssize_t len)
{
    reserve(o, (len + 2) / 3 * 4 + 2);
    char *at = o->buf + o->len;
    *at++ = '"';
    Py_ssize_t k = 0;
    for (; k + 2 < len; k += 3) {
        unsigned int v = (s[k] << 16) | (s[k + 1] << 8) | s[k + 2];
        memcpy(at, b64_pairs + (v >> 12) * 2, 2);
        memcpy(at + 2, b64_pairs + (v & 0xFFF) * 2, 2);
        at += 4;
    }
    if (k < len) {
        unsigned int v = s[k] << 16;
        if (k + 1 < len)
            v |= s[k + 1] << 8;
        *at++ = b64[v >> 18];
        *at++ = b64[(v >> 12) & 63];
        *at++ = k + 1 < len ? b64[(v >> 6) & 63] : '=';
        *at++ = '=';
    }
    *at++ = '"';
    o->len = at - o->buf;
}

static void put_unsigned(Out *o, unsigned long long value, int negative)
{
    char digits[24];
    char *at = digits + sizeof digits;
    do {
        *--at = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    if (negative)
        *--at = '-';
    put(o, at, digits + sizeof digits - at);
}

static void put_int(Out *o, long long value)
{
    if (value < 0)
        put_unsigned(o, 0ULL - (unsigned long long)value, 1);
    else
        put_unsigned(o, (unsigned long long)value, 0);
}

static void put_node(Out *o, Node *node, int depth);

static void put_items(Out *o, Node **items, Py_ssize_t n, int depth)
{
    put_char(o, '[');
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k)
            put_char(o, ',');
        put_node(o, items[k], depth + 1);
    }
    put_char(o, ']');
}

static int key_order(const void *a, const void *b)
{
    const Node *x = *(Node *const *)a, *y = *(Node *const *)b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->s, y->s, x->len);
}

/* Whether a dict holds a key twice (Python keeps the first place and the last value:
   that is the Python transcoder's case). */
static int repeats_a_key(Out *o, Node *dict)
{
    Py_ssize_t count = dict->n / 2;
    if (count < 2)
        return 0;
    if (count <= 16) {
        for (Py_ssize_t a = 0; a < dict->n; a += 2)
            for (Py_ssize_t b = a + 2; b < dict->n; b += 2)
                if (dict->items[a]->len == dict->items[b]->len
                        && memcmp(dict->items[a]->s, dict->items[b]->s,
                                  dict->items[a]->len) == 0)
                    return 1;
        return 0;
    }
    Node **keys = (Node **)arena_alloc(o->r, sizeof(Node *) * count);
    for (Py_ssize_t k = 0; k < count; k++)
        keys[k] = dict->items[2 * k];
    qsort(keys, count, sizeof(Node *), key_order);
    for (Py_ssize_t k = 1; k < count; k++)
        if (key_order(&keys[k - 1], &keys[k]) == 0)
            return 1;
    return 0;
}

static void put_dict(Out *o, Node *dict, int depth)
{
    if (repeats_a_key(o, dict))
        GIVE_UP(o->r);
    put_char(o, '{');
    for (Py_ssize_t k = 0; k < dict->n; k += 2) {
        Node *key = dict->items[k];
        if (k)
            put_char(o, ',');
        put_string(o, key->len && key->s[0] == '@' ? "@" : "", key->s, key->len);
        put_char(o, ':');
        put_node(o, dict->items[k + 1], depth + 1);
    }
    put_char(o, '}');
}

static void put_tag(Out *o, const char *tag)
{
    put_char(o, '{');
    put_string(o, "", tag, strlen(tag));
    put_char(o, ':');
}

static void put_node(Out *o, Node *node, int depth)
{
    if (depth > 100)
        GIVE_UP(o->r);  /* the Python transcoder's limits */
    switch (node->kind) {
    case K_NONE:
        PUT_LITERAL(o, "null");
        break;
    case K_TRUE:
        PUT_LITERAL(o, "true");
        break;
    case K_FALSE:
        PUT_LITERAL(o, "false");
        break;
    case K_INT:
        put_int(o, node->i);
        break;
    case K_FLOAT:
        if (node->f != node->f)
            PUT_LITERAL(o, "{\"@float\":\"nan\"}");
        else if (node->f - node->f != 0 && node->f > 0)
            PUT_LITERAL(o, "{\"@float\":\"inf\"}");
        else if (node->f - node->f != 0)
            PUT_LITERAL(o, "{\"@float\":\"-inf\"}");
        else if (!o->r->ctx->with_gil)
            longjmp(o->r->fail, 3);  /* Python's float repr needs the GIL: done later */
        else {
            char *repr = PyOS_double_to_string(node->f, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (repr == NULL)
                longjmp(o->r->fail, 2);
            put(o, repr, strlen(repr));
            PyMem_Free(repr);
        }
        break;
    case K_STR:
        put_string(o, "", node->s, node->len);
        break;
    case K_BYTES:
        PUT_LITERAL(o, "{\"@bytes\":");
        put_base64(o, (const unsigned char *)node->s, node->len);
        put_char(o, '}');
        break;
    case K_GLOBAL:
        PUT_LITERAL(o, "{\"@global\":");
        put_string(o, "", node->s, node->len);
        put_char(o, '}');
        break;
    case K_LIST:
        put_items(o, node->items, node->n, depth);
        break;
    case K_TUPLE:
        PUT_LITERAL(o, "{\"@tuple\":");
        put_items(o, node->items, node->n, depth + 1);
        put_char(o, '}');
        break;
    case K_SET:
    case K_FROZENSET:
        put_tag(o, node->kind == K_SET ? "@set" : "@frozenset");
        put_items(o, node->items, node->n, depth + 1);
        put_char(o, '}');
        break;
    case K_DICT:
        put_dict(o, node, depth);
        break;
    case K_REF:
        PUT_LITERAL(o, "{\"@ref\":");
        put_unsigned(o, node->oid, 0);
        if (node->klass != NULL) {
            PUT_LITERAL(o, ",\"class\":");
            put_string(o, "", node->klass->s, node->klass->len);
        }
        put_char(o, '}');
        break;
    case K_TAGGED:
        put_tag(o, node->tag);
        put_string(o, "", node->s, node->len);
        if (node->fold)
            PUT_LITERAL(o, ",\"fold\":1");
        put_char(o, '}');
        break;
    case K_INSTANCE:
        PUT_LITERAL(o, "{\"@class\":");
        put_string(o, "", node->klass->s, node->klass->len);
        if (node->n) {
            PUT_LITERAL(o, ",\"args\":");
            put_items(o, node->items, node->n, depth + 1);
        }
        if (node->state != NULL) {
            PUT_LITERAL(o, ",\"state\":");
            put_node(o, object_state(o->r, node->state), depth + 1);
        }
        put_char(o, '}');
        break;
    default:
        GIVE_UP(o->r);
    }
}

/* -- records -------------------------------------------------------------------------- */

/* The class name in a record's class metadata: a global, or (global, anything). */
static Node *class_of(Reader *r, Node *meta)
{
    if (meta->kind == K_GLOBAL)
        return meta;
    if (meta->kind == K_TUPLE && meta->n == 2 && meta->items[0]->kind == K_GLOBAL)
        return meta->items[0];
    GIVE_UP(r);
    return NULL;
}

/* The class name as a str: the last one again when it is the same (a commit's records
   are mostly of a few classes). With the GIL. */
static PyObject *last_class = NULL;

static PyObject *class_name(const char *s, Py_ssize_t len)
{
    if (last_class != NULL && PyUnicode_GET_LENGTH(last_class) == len
            && PyUnicode_IS_ASCII(last_class)
            && memcmp(PyUnicode_DATA(last_class), s, len) == 0) {
        Py_INCREF(last_class);
        return last_class;
    }
    PyObject *name = PyUnicode_DecodeUTF8(s, len, "strict");
    if (name != NULL) {
        Py_XSETREF(last_class, name);
        Py_INCREF(name);
    }
    return name;
}

/* JSON text as a str (made directly when it is ASCII). With the GIL. */
static PyObject *text_of(const char *s, Py_ssize_t len, int ascii)
{
    if (!ascii)
        return PyUnicode_DecodeUTF8(s, len, "strict");
    PyObject *text = PyUnicode_New(len, 127);
    if (text != NULL)
        memcpy(PyUnicode_DATA(text), s, len);
    return text;
}

/* What transcoding a record gave: DONE (the JSON text, then the class name, in ctx->out),
   GAVE_UP (not for the fast path), NO_MEMORY, or FLOAT (a float met without the GIL). */
enum { DONE, GAVE_UP, NO_MEMORY, FLOAT };

typedef struct {
    int status;
    Py_ssize_t text_len, class_len;
    int ascii;
} Found;

/* The core: no Python object is touched, so that it can run without the GIL (then
   ``ctx->with_gil`` is 0). */
static Found transcode_record(Ctx *ctx, const unsigned char *data, Py_ssize_t size)
{
    Reader r;
    Node *stack[64];
    Py_ssize_t marks[32];
    Node *memo[64];
    Found found = {DONE, 0, 0, 0};
    memset(memo, 0, sizeof memo);
    r.data = data;
    r.size = size;
    r.pos = 0;
    r.stack = stack;
    r.depth = 0;
    r.stack_cap = 64;
    r.marks = marks;
    r.nmarks = 0;
    r.marks_cap = 32;
    r.memo = memo;
    r.memo_cap = 64;
    r.memo_count = 0;
    r.nodes = 0;
    r.reused = 0;
    r.ctx = ctx;
    Out o = {ctx->out, 0, ctx->out_cap, &r, 0};
    switch (setjmp(r.fail)) {
    case 0:
        break;
    case 1:
        arena_reset(ctx);
        found.status = GAVE_UP;
        return found;
    case 3:
        arena_reset(ctx);
        found.status = FLOAT;
        return found;
    default:
        arena_reset(ctx);
        found.status = NO_MEMORY;
        return found;
    }
    Node *klass = class_of(&r, run(&r));
    Node *state = run(&r);
    if (r.pos != r.size)
        GIVE_UP(&r);  /* what follows the second pickle: the Python transcoder's case */
    if (r.reused && r.nodes > 200000)
        GIVE_UP(&r);  /* it may be "too large" (a million JSON values, counted its way) */
    Flat flat = {0};
    if (klass->len > 7 && memcmp(klass->s, "BTrees.", 7) == 0
            && btree(&r, klass->s, klass->len, state, &flat)) {
        put_char(&o, '{');
        for (int k = 0; k < flat.nfields; k++) {
            if (k)
                put_char(&o, ',');
            put_string(&o, "", flat.fields[k].key, strlen(flat.fields[k].key));
            put_char(&o, ':');
            put_node(&o, flat.fields[k].value, 1);
        }
        put_char(&o, '}');
    }
    else
        put_node(&o, object_state(&r, state), 0);
    found.text_len = o.len;
    found.class_len = klass->len;
    found.ascii = !(o.seen & 0x80);
    put(&o, klass->s, klass->len);  /* after the text */
    arena_reset(ctx);
    return found;
}

/* Transcoding with the GIL held, one record at a time. */
static Ctx gil_ctx = {NULL, NULL, 0, 1};

/* (class_name, json_text), or Py_None when the record is not for the fast path; NULL
   with an exception set when out of memory. With the GIL. */
static PyObject *transcode_buffer(const unsigned char *data, Py_ssize_t size)
{
    Found found = transcode_record(&gil_ctx, data, size);
    if (found.status == NO_MEMORY)
        return PyErr_NoMemory();
    if (found.status != DONE)
        Py_RETURN_NONE;
    PyObject *name = class_name(gil_ctx.out + found.text_len, found.class_len);
    PyObject *document = name ? text_of(gil_ctx.out, found.text_len, found.ascii) : NULL;
    if (gil_ctx.out_cap > (1 << 20))
        ctx_free(&gil_ctx);  /* a big record's buffer is not kept */
    if (document == NULL) {
        Py_XDECREF(name);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, name, document);
    Py_DECREF(name);
    Py_DECREF(document);
    return pair;
}

static PyObject *transcode(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *found = transcode_buffer((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return found;
}

/* Many records: transcoded without the GIL (other threads run meanwhile: a commit writes
   its records while its documents are made), then made into str with it. Records holding
   a float are done after, with the GIL. */
static PyObject *transcode_many(PyObject *module, PyObject *arg)
{
    PyObject *records = PySequence_Fast(arg, "transcode_many() takes a sequence of records");
    if (records == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(records), got = 0;
    PyObject *results = NULL;
    Py_buffer *views = PyMem_Calloc(n ? n : 1, sizeof(Py_buffer));
    Found *found = PyMem_Calloc(n ? n : 1, sizeof(Found));
    Py_ssize_t *at = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    Ctx ctx = {NULL, NULL, 0, 0};
    char *all = NULL;  /* the text and class name of every record, one after another */
    Py_ssize_t used = 0, cap = 0;
    if (views == NULL || found == NULL || at == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++)
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(records, got), &views[got],
                               PyBUF_SIMPLE) < 0)
            goto done;
    int no_memory = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n && !no_memory; k++) {
        found[k] = transcode_record(&ctx, views[k].buf, views[k].len);
        if (found[k].status != DONE)
            continue;
        Py_ssize_t size = found[k].text_len + found[k].class_len;
        if (used + size > cap) {
            Py_ssize_t want = cap ? cap : 65536;
            while (want < used + size)
                want *= 2;
            char *grown = PyMem_RawRealloc(all, want);
            if (grown == NULL) {
                no_memory = 1;
                break;
            }
            all = grown;
            cap = want;
        }
        memcpy(all + used, ctx.out, size);
        at[k] = used;
        used += size;
    }
    Py_END_ALLOW_THREADS
    if (no_memory) {
        PyErr_NoMemory();
        goto done;
    }
    results = PyList_New(n);
    for (Py_ssize_t k = 0; results != NULL && k < n; k++) {
        PyObject *item = NULL;
        if (found[k].status == DONE) {
            PyObject *name = class_name(all + at[k] + found[k].text_len, found[k].class_len);
            PyObject *text = name ? text_of(all + at[k], found[k].text_len, found[k].ascii)
                                  : NULL;
            if (text != NULL)
                item = PyTuple_Pack(2, name, text);
            Py_XDECREF(name);
            Py_XDECREF(text);
        }
        else if (found[k].status == FLOAT)
            item = transcode_buffer(views[k].buf, views[k].len);
        else if (found[k].status == NO_MEMORY)
            PyErr_NoMemory();
        else
            item = Py_NewRef(Py_None);
        if (item == NULL)
            Py_CLEAR(results);
        else
            PyList_SET_ITEM(results, k, item);
    }
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(found);
    PyMem_Free(at);
    PyMem_RawFree(all);
    ctx_free(&ctx);
    Py_DECREF(records);
    return results;
}

static PyMethodDef methods[] = {
    {"transcode", transcode, METH_O,
     "transcode(record) -> (class_name, json_text), or None for a record that only the "
     "Python transcoder handles."},
    {"transcode_many", transcode_many, METH_O,
     "transcode_many(records) -> [transcode(record) for record in records], made without "
     "the GIL for the records without floats."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "amphora._transcoder",
    "The fast path of amphora.jsonpickle, in C (see amphora/jsonpickle/).", -1, methods
};

PyMODINIT_FUNC PyInit__transcoder(void)
{
    for (int v = 0; v < 4096; v++) {
        b64_pairs[2 * v] = b64[v >> 6];
        b64_pairs[2 * v + 1] = b64[v & 63];
    }
    return PyModule_Create(&module_def);
}
