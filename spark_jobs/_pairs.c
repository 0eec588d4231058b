/* A visitor's co-visitation pairs (spark_jobs.learn.visitor_pairs), compiled.

   visitor_pairs(remembered, ordered, window_ms, limit, landmark_ms, scale)
       The dict of pair -> weight learn.visitor_pairs makes, for its
       remembered items ((str, int, float) tuples) and its new interactions
       already in event-time order (tuples whose first three fields are the
       product id, the time and the weight), with ``scale`` the half-life in
       milliseconds as Python computes it (half_life * 1000.0). None where
       this loop leaves the work to Python's: an argument of another shape or
       type (a time that is not an int of at most 2**62, a weight that is
       neither a float nor an int a double holds exactly), a negative limit,
       a half-life of 0, a weight faded past a double's range (math.pow
       raises there).

   It does the same double operations in the same order as the Python loop
   (no fused multiply-add: the build passes -ffp-contract=off), takes each
   item's ``limit`` nearest candidates as heapq.nsmallest does (by distance
   in time, then their place: each candidate's place is its own, so no
   further field decides), and fills the dict in the same order, so both
   give the same dict. tests/test_pairs.py holds the two equal. */

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

#define MAX_TS (1LL << 62)

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
        if (!PyUnicode_CheckExact(id) || !PyLong_CheckExact(ts))
            return 0;
        int overflow = 0;
        long long t = PyLong_AsLongLongAndOverflow(ts, &overflow);
        if (overflow || t > MAX_TS || t < -MAX_TS)
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
    PyObject *remembered_list, *ordered_list;
    long long window, landmark;
    Py_ssize_t limit;
    double scale;
    if (!PyArg_ParseTuple(args, "O!O!LnLd", &PyList_Type, &remembered_list, &PyList_Type,
                          &ordered_list, &window, &limit, &landmark, &scale))
        return NULL;
    if (limit < 0 || landmark > MAX_TS || landmark < -MAX_TS || !isfinite(scale) || scale == 0.0)
        Py_RETURN_NONE;
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
    if (!read_items(remembered_list, remembered, 1) || !read_items(ordered_list, ordered, 0)) {
        pairs = Py_None;
        Py_INCREF(pairs);
        goto done;
    }
    pairs = PyDict_New();
    if (pairs == NULL)
        goto done;
    for (Py_ssize_t index = 0; index < n_new; index++) {
        const Item *item = &ordered[index];
        Py_ssize_t found = 0;
        for (Py_ssize_t place = 0; place < n_remembered; place++) {
            const Item *other = &remembered[place];
            long long distance = llabs(other->ts - item->ts);
            if (distance > window)
                continue;
            int same = PyUnicode_Compare(other->id, item->id) == 0;
            if (same)
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
            if (!isfinite(fade)) {
                /* math.pow raises OverflowError there: Python's loop says so */
                Py_DECREF(pairs);
                pairs = Py_None;
                Py_INCREF(pairs);
                goto done;
            }
            double value = lighter * fade;
            if (!add(pairs, item->id, other->id, value) || !add(pairs, other->id, item->id, value)) {
                Py_CLEAR(pairs);
                goto done;
            }
        }
    }
done:
    PyMem_Free(remembered);
    PyMem_Free(ordered);
    PyMem_Free(candidates);
    return pairs;
}

static PyMethodDef methods[] = {
    {"visitor_pairs", visitor_pairs, METH_VARARGS,
     "learn.visitor_pairs' loop over ordered new interactions (None: left to Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pairs", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__pairs(void)
{
    return PyModule_Create(&module);
}
