/* A visitor's co-visitation pairs (spark_jobs.learn.visitor_pairs) and
   where they went next (learn.next_pairs_by_steps), compiled.

   visitor_pairs(remembered, ordered, window_ms, limit, landmark_ms, scale)
       The dict of pair -> weight learn.visitor_pairs makes, for its
       remembered items ((str, int, float) tuples) and its new interactions
       already in event-time order (tuples whose first three fields are the
       product id, the time and the weight), with ``scale`` the half-life in
       milliseconds as Python computes it (half_life * 1000.0). None where
       this loop leaves the work to Python's: an argument of another shape or
       type (a weight that is neither a float nor an int a double holds
       exactly; a time, landmark, window or limit that is not an int within
       2**61, so that no difference of two overflows), a negative limit, a
       half-life of 0, a weight faded past a double's range (math.pow raises
       there).

   It does the same double operations in the same order as the Python loop
   (no fused multiply-add: the build passes -ffp-contract=off), takes each
   item's ``limit`` nearest candidates as heapq.nsmallest does (by distance
   in time, then their place: each candidate's place is its own, so no
   further field decides), and fills the dict in the same order, so both
   give the same dict. tests/test_pairs.py holds the two equal.

   next_pairs(remembered, ordered, window_ms, steps, landmark_ms, scale)
       The list of dicts learn.next_pairs_by_steps makes, for the new
       interactions in its order (time, order, id, event id; their fifth
       field their order), ``steps`` a tuple of ints from 0 to 1000 and
       ``scale`` next_half_life * 1000.0; None as above. Each item's latest
       items are ordered as heapq.nlargest orders them (time, then order,
       then id: no two the same), the weights taken as Python's max and min
       take them (each id's looked up in a table, as Python's dicts). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>

typedef struct {
    PyObject *id; /* borrowed from the arguments, which outlive the call */
    long long ts;
    double weight;
} Item;

typedef struct {
    long long distance;
    Py_ssize_t place; /* a remembered item's index, or -1 - a new one's offset */
    const Item *item;
} Candidate;

static int
by_distance_then_place(const void *a, const void *b)
{
    const Candidate *x = a, *y = b;
    if (x->distance != y->distance)
        return x->distance < y->distance ? -1 : 1;
    if (x->place != y->place)
        return x->place < y->place ? -1 : 1;
    return 0;
}

/* times, orders, the landmark and the window at most this far from 0: any
   difference of two of them fits in a long long */
#define MAX_TS (1LL << 61)

/* An exact int within MAX_TS: 1, or 0 where the loop is Python's. */
static int
as_bounded(PyObject *value, long long *out)
{
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || n > MAX_TS || n < -MAX_TS)
        return 0;
    *out = n;
    return 1;
}

/* A weight as a double: 1 when it is a float or an int a double holds exactly. */
static int
as_weight(PyObject *value, double *out)
{
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 1;
    }
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || n > (1LL << 53) || n < -(1LL << 53))
            return 0;
        *out = (double)n;
        return 1;
    }
    return 0;
}

/* Items of a list of tuples (the first three fields read; ``exact``: the
   tuples must have exactly three): 1, or 0 where the loop is Python's. */
static int
read_items(PyObject *list, Item *items, int exact)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(list, i);
        if (!PyTuple_Check(entry))
            return 0;
        Py_ssize_t size = PyTuple_GET_SIZE(entry);
        if (exact ? size != 3 : size < 3)
            return 0;
        PyObject *id = PyTuple_GET_ITEM(entry, 0);
        PyObject *ts = PyTuple_GET_ITEM(entry, 1);
        long long t;
        if (!PyUnicode_CheckExact(id) || !as_bounded(ts, &t))
            return 0;
        if (!as_weight(PyTuple_GET_ITEM(entry, 2), &items[i].weight))
            return 0;
        items[i].id = id;
        items[i].ts = t;
    }
    return 1;
}

/* pairs[(a, b)] = pairs.get((a, b), 0.0) + value; 0 on an error. */
static int
add(PyObject *pairs, PyObject *a, PyObject *b, double value)
{
    PyObject *key = PyTuple_Pack(2, a, b);
    if (key == NULL)
        return 0;
    PyObject *known = PyDict_GetItemWithError(pairs, key);
    double sum = value;
    if (known != NULL) {
        sum = PyFloat_AsDouble(known) + value;
        if (sum == -1.0 && PyErr_Occurred()) {
            Py_DECREF(key);
            return 0;
        }
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return 0;
    }
    else {
        sum = 0.0 + value;
    }
    PyObject *number = PyFloat_FromDouble(sum);
    int failed = number == NULL || PyDict_SetItem(pairs, key, number) < 0;
    Py_XDECREF(number);
    Py_DECREF(key);
    return !failed;
}

static PyObject *
visitor_pairs(PyObject *self, PyObject *args)
{
    PyObject *remembered_list, *ordered_list, *window_arg, *limit_arg, *landmark_arg;
    long long window, landmark, limit_value;
    double scale;
    if (!PyArg_ParseTuple(args, "O!O!OOOd", &PyList_Type, &remembered_list, &PyList_Type,
                          &ordered_list, &window_arg, &limit_arg, &landmark_arg, &scale))
        return NULL;
    if (!as_bounded(window_arg, &window) || !as_bounded(limit_arg, &limit_value) ||
        !as_bounded(landmark_arg, &landmark) || limit_value < 0 || !isfinite(scale) ||
        scale == 0.0)
        Py_RETURN_NONE;
    Py_ssize_t limit = (Py_ssize_t)(limit_value < PY_SSIZE_T_MAX / 2 ? limit_value : PY_SSIZE_T_MAX / 2);
    Py_ssize_t n_remembered = PyList_GET_SIZE(remembered_list);
    Py_ssize_t n_new = PyList_GET_SIZE(ordered_list);
    Item *remembered = PyMem_Malloc(sizeof(Item) * (size_t)(n_remembered + 1));
    Item *ordered = PyMem_Malloc(sizeof(Item) * (size_t)(n_new + 1));
    Candidate *candidates =
        PyMem_Malloc(sizeof(Candidate) * (size_t)(n_remembered + (limit < n_new ? limit : n_new) + 1));
    PyObject *pairs = NULL;
    if (remembered == NULL || ordered == NULL || candidates == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (!read_items(remembered_list, remembered, 1) || !read_items(ordered_list, ordered, 0))
        goto python;
    pairs = PyDict_New();
    if (pairs == NULL)
        goto done;
    for (Py_ssize_t index = 0; index < n_new; index++) {
        const Item *item = &ordered[index];
        Py_ssize_t found = 0;
        for (Py_ssize_t place = 0; place < n_remembered; place++) {
            const Item *other = &remembered[place];
            long long distance = llabs(other->ts - item->ts);
            if (distance > window || PyUnicode_Compare(other->id, item->id) == 0)
                continue;
            candidates[found++] = (Candidate){distance, place, other};
        }
        /* the new items before this one, nearest first: at most limit matter */
        Py_ssize_t start = index - limit > 0 ? index - limit : 0;
        for (Py_ssize_t j = start; j < index; j++) {
            const Item *other = &ordered[j];
            long long distance = item->ts - other->ts;
            if (distance > window || PyUnicode_Compare(other->id, item->id) == 0)
                continue;
            candidates[found++] = (Candidate){distance, -(j - start) - 1, other};
        }
        qsort(candidates, (size_t)found, sizeof(Candidate), by_distance_then_place);
        Py_ssize_t taken = found < limit ? found : limit;
        for (Py_ssize_t k = 0; k < taken; k++) {
            const Item *other = candidates[k].item;
            /* min(item.weight, weight) * decay(landmark, max(item.ts, ts), half_life) */
            double lighter = other->weight < item->weight ? other->weight : item->weight;
            long long later = other->ts > item->ts ? other->ts : item->ts;
            double fade = pow(2.0, (double)(-(landmark - later)) / scale);
            if (!isfinite(fade))
                goto python; /* math.pow raises OverflowError there: Python's loop says so */
            double value = lighter * fade;
            if (!add(pairs, item->id, other->id, value) || !add(pairs, other->id, item->id, value)) {
                Py_CLEAR(pairs);
                goto done;
            }
        }
    }
    goto done;
python:
    Py_XDECREF(pairs);
    pairs = Py_None;
    Py_INCREF(pairs);
done:
    PyMem_Free(remembered);
    PyMem_Free(ordered);
    PyMem_Free(candidates);
    return pairs;
}

/* An item before the one being learnt (next_pairs): its latest time and
   when it came (a new event's order, or -1 - a remembered item's place). */
typedef struct {
    PyObject *id;
    Py_hash_t hash;
    long long ts;
    long long order;
} Before;

static Py_ssize_t
find_before(const Before *found, Py_ssize_t n, PyObject *id, Py_hash_t hash)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (found[i].hash == hash && PyUnicode_Compare(found[i].id, id) == 0)
            return i;
    return -1;
}

/* Latest first: by (time, order), then id, as nlargest's key (kv[1], kv[0]). */
static int
latest_first(const void *a, const void *b)
{
    const Before *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts > y->ts ? -1 : 1;
    if (x->order != y->order)
        return x->order > y->order ? -1 : 1;
    return -PyUnicode_Compare(x->id, y->id);
}

/* Each id's remembered weight (the last of it in ``remembered``, as a dict
   comprehension keeps) and the largest of its new events' so far (0.0 for
   none, as both dicts' get(id, 0.0)): an open-addressing table by id. */
typedef struct {
    PyObject *id;
    Py_hash_t hash;
    double remembered;
    double learnt;
} Weights;

static Weights *
weights_of(Weights *table, size_t mask, PyObject *id, Py_hash_t hash)
{
    size_t i = (size_t)hash & mask;
    for (;;) {
        Weights *w = &table[i];
        if (w->id == NULL) {
            *w = (Weights){id, hash, 0.0, 0.0};
            return w;
        }
        if (w->hash == hash && PyUnicode_Compare(w->id, id) == 0)
            return w;
        i = (i + 1) & mask;
    }
}

static PyObject *
next_pairs(PyObject *self, PyObject *args)
{
    PyObject *remembered_list, *ordered_list, *steps_tuple, *window_arg, *landmark_arg;
    long long window, landmark;
    double scale;
    if (!PyArg_ParseTuple(args, "O!O!OO!Od", &PyList_Type, &remembered_list, &PyList_Type,
                          &ordered_list, &window_arg, &PyTuple_Type, &steps_tuple, &landmark_arg,
                          &scale))
        return NULL;
    Py_ssize_t n_steps = PyTuple_GET_SIZE(steps_tuple);
    if (n_steps == 0 || !as_bounded(window_arg, &window) || !as_bounded(landmark_arg, &landmark) ||
        !isfinite(scale) || scale == 0.0)
        Py_RETURN_NONE;
    Py_ssize_t steps[8];
    Py_ssize_t deepest = 0;
    if (n_steps > 8)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n_steps; i++) {
        PyObject *k = PyTuple_GET_ITEM(steps_tuple, i);
        if (!PyLong_CheckExact(k))
            Py_RETURN_NONE;
        steps[i] = PyLong_AsSsize_t(k);
        if (steps[i] < 0 || steps[i] > 1000) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        if (steps[i] > deepest)
            deepest = steps[i];
    }
    Py_ssize_t n_remembered = PyList_GET_SIZE(remembered_list);
    Py_ssize_t n_new = PyList_GET_SIZE(ordered_list);
    Item *remembered = PyMem_Malloc(sizeof(Item) * (size_t)(n_remembered + 1));
    Item *ordered = PyMem_Malloc(sizeof(Item) * (size_t)(n_new + 1));
    Py_hash_t *remembered_hash = PyMem_Malloc(sizeof(Py_hash_t) * (size_t)(n_remembered + 1));
    Py_hash_t *ordered_hash = PyMem_Malloc(sizeof(Py_hash_t) * (size_t)(n_new + 1));
    long long *order = PyMem_Malloc(sizeof(long long) * (size_t)(n_new + 1));
    Before *before = PyMem_Malloc(sizeof(Before) * (size_t)(n_remembered + deepest + 1));
    size_t capacity = 8;
    while (capacity < 2 * (size_t)(n_remembered + n_new))
        capacity <<= 1;
    Weights *weights = PyMem_Calloc(capacity, sizeof(Weights));
    PyObject *learnt = NULL;
    if (remembered == NULL || ordered == NULL || remembered_hash == NULL || ordered_hash == NULL ||
        order == NULL || before == NULL || weights == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (!read_items(remembered_list, remembered, 1) || !read_items(ordered_list, ordered, 0))
        goto python;
    for (Py_ssize_t i = 0; i < n_new; i++) {
        /* Interaction.order, the fifth field */
        PyObject *entry = PyList_GET_ITEM(ordered_list, i);
        if (PyTuple_GET_SIZE(entry) < 5 || !as_bounded(PyTuple_GET_ITEM(entry, 4), &order[i]))
            goto python;
        if ((ordered_hash[i] = PyObject_Hash(ordered[i].id)) == -1)
            goto done;
    }
    for (Py_ssize_t i = 0; i < n_remembered; i++) {
        if ((remembered_hash[i] = PyObject_Hash(remembered[i].id)) == -1)
            goto done;
        weights_of(weights, capacity - 1, remembered[i].id, remembered_hash[i])->remembered =
            remembered[i].weight;
    }
    learnt = PyList_New(n_steps);
    if (learnt == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n_steps; i++) {
        PyObject *pairs = PyDict_New();
        if (pairs == NULL)
            goto failed;
        PyList_SET_ITEM(learnt, i, pairs);
    }
    for (Py_ssize_t index = 0; index < n_new; index++) {
        const Item *item = &ordered[index];
        Py_hash_t hash = ordered_hash[index];
        Py_ssize_t n_before = 0;
        for (Py_ssize_t place = 0; place < n_remembered; place++) {
            const Item *other = &remembered[place];
            long long gap = item->ts - other->ts;
            if (gap < 0 || gap > window)
                continue;
            Py_hash_t other_hash = remembered_hash[place];
            if (other_hash == hash && PyUnicode_Compare(other->id, item->id) == 0)
                continue;
            /* before[product_id] = (ts, -1 - place): the last place wins */
            Py_ssize_t at = find_before(before, n_before, other->id, other_hash);
            if (at < 0)
                at = n_before++;
            before[at] = (Before){other->id, other_hash, other->ts, -1 - (long long)place};
        }
        /* the new events before it, latest first, until ``deepest`` products */
        Py_ssize_t walked = 0;
        PyObject *walked_ids[1001];
        Py_hash_t walked_hashes[1001];
        for (Py_ssize_t j = index - 1; j >= 0; j--) {
            const Item *other = &ordered[j];
            if (item->ts - other->ts > window || walked == deepest)
                break;
            Py_hash_t other_hash = ordered_hash[j];
            if (other_hash == hash && PyUnicode_Compare(other->id, item->id) == 0)
                continue;
            int seen = 0;
            for (Py_ssize_t w = 0; w < walked && !seen; w++)
                seen = walked_hashes[w] == other_hash &&
                       PyUnicode_Compare(walked_ids[w], other->id) == 0;
            if (seen)
                continue;
            walked_ids[walked] = other->id;
            walked_hashes[walked++] = other_hash;
            /* before[id] = max(before.get(id, (ts, order)), (ts, order)) */
            Py_ssize_t at = find_before(before, n_before, other->id, other_hash);
            if (at < 0) {
                before[n_before++] = (Before){other->id, other_hash, other->ts, order[j]};
            }
            else if (other->ts > before[at].ts ||
                     (other->ts == before[at].ts && order[j] > before[at].order)) {
                before[at].ts = other->ts;
                before[at].order = order[j];
            }
        }
        qsort(before, (size_t)n_before, sizeof(Before), latest_first);
        if (PyErr_Occurred())
            goto failed;
        double fade = pow(2.0, (double)(-(landmark - item->ts)) / scale);
        if (!isfinite(fade))
            goto overflow;
        for (Py_ssize_t s = 0; s < n_steps; s++) {
            PyObject *pairs = PyList_GET_ITEM(learnt, s);
            Py_ssize_t k = steps[s] < n_before ? steps[s] : n_before;
            if (k > deepest)
                k = deepest;
            for (Py_ssize_t b = 0; b < k; b++) {
                PyObject *id = before[b].id;
                const Weights *w = weights_of(weights, capacity - 1, id, before[b].hash);
                /* max(remembered's, new's), then min(item.weight, that) */
                double weight = w->learnt > w->remembered ? w->learnt : w->remembered;
                double lighter = weight < item->weight ? weight : item->weight;
                if (!add(pairs, id, item->id, lighter * fade))
                    goto failed;
            }
        }
        /* new_weight[id] = max(new_weight.get(id, 0.0), item.weight) */
        Weights *w = weights_of(weights, capacity - 1, item->id, hash);
        if (item->weight > w->learnt)
            w->learnt = item->weight;
    }
    goto done;
overflow: /* math.pow raises OverflowError there: Python's loop says so */
python:
    Py_XDECREF(learnt);
    learnt = Py_None;
    Py_INCREF(learnt);
    goto done;
failed:
    Py_CLEAR(learnt);
done:
    PyMem_Free(remembered);
    PyMem_Free(ordered);
    PyMem_Free(remembered_hash);
    PyMem_Free(ordered_hash);
    PyMem_Free(order);
    PyMem_Free(before);
    PyMem_Free(weights);
    return learnt;
}

static PyMethodDef methods[] = {
    {"visitor_pairs", visitor_pairs, METH_VARARGS,
     "learn.visitor_pairs' loop over ordered new interactions (None: left to Python)."},
    {"next_pairs", next_pairs, METH_VARARGS,
     "learn.next_pairs_by_steps' loop over ordered new interactions (None: left to Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pairs", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__pairs(void)
{
    return PyModule_Create(&module);
}
