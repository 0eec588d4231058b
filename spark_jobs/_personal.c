/* A visitor's personal list (spark_jobs.learn.personal_list), compiled.

   personal(recent, similar, length, recency_decay, seen)
       The list of {"product_id", "score"} dicts learn.personal_list makes of
       the same arguments, or None where this loop leaves the work to
       Python's: an argument of another type than the job passes (recent as
       (str, int, float) items, similar as a dict of (str, float) lists, seen
       a set of str, the recency decay a float or the int 1 or 0, with an
       int decay not both an int weight and an int best score), a score
       that is not a finite number (Python's sort and errors decide those), a
       negative length.

   It does the same double operations in the same order as the Python loop
   (each candidate's sum in the order of the visitor's items, no fused
   multiply-add: the build passes -ffp-contract=off), orders the best by
   score, then id, as Python's sort does, and rounds each score to the value
   float.__round__ gives (round6), so both give the same list.
   tests/test_personal.py holds the two equal. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

/* A candidate: its id (borrowed from the arguments, which outlive the call),
   its id's hash, its score so far. */
typedef struct {
    PyObject *id;
    Py_hash_t hash;
    double score;
    int live;
} Entry;

/* An open-addressing table of candidates by id; capacity a power of two. */
typedef struct {
    Entry *entries;
    size_t mask;
} Table;

/* The entry of ``id`` (made, with score 0, where there is none). */
static Entry *
find(Table *table, PyObject *id, Py_hash_t hash)
{
    size_t i = (size_t)hash & table->mask;
    for (;;) {
        Entry *e = &table->entries[i];
        if (e->id == NULL) {
            e->id = id;
            e->hash = hash;
            e->score = 0.0;
            e->live = 1;
            return e;
        }
        if (e->id == id || (e->hash == hash && PyUnicode_Compare(e->id, id) == 0))
            return e;
        i = (i + 1) & table->mask;
    }
}

/* A number the job passes (an exact float or int) as a double; -1 when it is
   something else, or an int too large for a double. */
static int
number(PyObject *obj, double *out)
{
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    if (PyLong_CheckExact(obj)) {
        *out = PyLong_AsDouble(obj);
        if (*out == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return 0;
    }
    return -1;
}

/* An item of two or three fields, as a tuple or list; NULL otherwise. */
static PyObject **
fields(PyObject *item, Py_ssize_t count)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == count)
        return &PyTuple_GET_ITEM(item, 0);
    if (PyList_CheckExact(item) && PyList_GET_SIZE(item) == count)
        return PySequence_Fast_ITEMS(item);
    return NULL;
}

/* learn._highest_first: the higher score first, then the smaller id. */
static int
highest_first(const void *a, const void *b)
{
    const Entry *x = *(Entry *const *)a, *y = *(Entry *const *)b;
    if (x->score > y->score)
        return -1;
    if (x->score < y->score)
        return 1;
    return PyUnicode_Compare(x->id, y->id);
}

/* The step's factor and the visitor's item's similar list, checked. */
typedef struct {
    PyObject *neighbours; /* a list or tuple of (id, score) */
    double factor;
} Step;

static PyObject *round_name, *six, *product_id_key, *score_key;

/* round(x, 6) for a finite x, as a new float. y = x * 1e6 is within |y| * 2**-53
   of the exact x * 10**6, so where y is farther than that from halfway between
   two integers, its nearest integer r is the exact value's too, and r / 1e6
   (both exact, the division correctly rounded) is the double nearest to
   r * 10**-6: what float.__round__ gives. Nearer halfway, float.__round__
   itself is asked. */
static PyObject *
round6(double x)
{
    double y = x * 1e6;
    if (fabs(y) < 4503599627370496.0) { /* 2**52: y - r below is exact */
        double r = nearbyint(y);
        if (0.5 - fabs(y - r) > fabs(y) * 2.220446049250313e-16)
            return PyFloat_FromDouble(r / 1e6);
    }
    PyObject *number = PyFloat_FromDouble(x);
    if (number == NULL)
        return NULL;
    PyObject *rounded = PyObject_CallMethodObjArgs(number, round_name, six, NULL);
    Py_DECREF(number);
    return rounded;
}

/* Moves the ``k`` first entries in highest_first's order to the front
   (unordered among themselves), 0 < k < count. */
static void
select_first(Entry **entries, size_t count, size_t k)
{
    size_t low = 0, high = count - 1;
    while (low < high) {
        Entry *pivot = entries[low + (high - low) / 2], *swap;
        size_t i = low, j = high;
        while (i <= j) {
            while (highest_first(&entries[i], &pivot) < 0)
                i++;
            while (highest_first(&entries[j], &pivot) > 0)
                j--;
            if (i <= j) {
                swap = entries[i], entries[i] = entries[j], entries[j] = swap;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (k <= j)
            high = j;
        else if (k >= i)
            low = i;
        else
            return;
    }
}

static PyObject *
personal(PyObject *self, PyObject *args)
{
    PyObject *recent, *similar, *length_obj, *decay_obj, *seen;
    if (!PyArg_ParseTuple(args, "OOOOO", &recent, &similar, &length_obj, &decay_obj, &seen))
        return NULL;
    if (!(PyList_CheckExact(recent) || PyTuple_CheckExact(recent)) || !PyDict_CheckExact(similar) ||
        !(PySet_CheckExact(seen) || PyFrozenSet_CheckExact(seen)) ||
        !PyLong_CheckExact(length_obj))
        Py_RETURN_NONE;
    /* a float, or the int 1 or 0 (``recency_decay: 1`` in the settings):
       1**step and 0**step are pow(1.0, step) and pow(0.0, step), exactly */
    double decay;
    int whole_decay = !PyFloat_CheckExact(decay_obj);
    if (!whole_decay) {
        decay = PyFloat_AS_DOUBLE(decay_obj);
    } else {
        long whole = PyLong_CheckExact(decay_obj) ? PyLong_AsLong(decay_obj) : -1;
        if (whole != 0 && whole != 1) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        decay = (double)whole;
    }
    Py_ssize_t length = PyLong_AsSsize_t(length_obj);
    if (length < 0) { /* (or too large) */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_ssize_t items = PySequence_Fast_GET_SIZE(recent);
    PyObject **recent_items = PySequence_Fast_ITEMS(recent);
    Step *steps = PyMem_Malloc((size_t)(items ? items : 1) * sizeof(Step));
    if (steps == NULL)
        return PyErr_NoMemory();
    Table table = {NULL, 0};
    Entry **ranked = NULL;
    PyObject *result = NULL;
    int python = 0; /* the work is left to Python's loop */
    size_t pairs = 0;
    /* each item's list and factor, as personal_list's loop takes them */
    for (Py_ssize_t step = 0; step < items && !python; step++) {
        steps[step].neighbours = NULL;
        PyObject **item = fields(recent_items[step], 3);
        double weight;
        if (item == NULL || !PyUnicode_CheckExact(item[0]) || number(item[2], &weight) < 0) {
            python = 1;
            break;
        }
        PyObject *neighbours = PyDict_GetItemWithError(similar, item[0]);
        if (neighbours == NULL) {
            if (PyErr_Occurred())
                goto done;
            continue;
        }
        if (!(PyList_CheckExact(neighbours) || PyTuple_CheckExact(neighbours))) {
            python = 1;
            break;
        }
        Py_ssize_t count = PySequence_Fast_GET_SIZE(neighbours);
        if (count == 0)
            continue;
        PyObject **first = fields(PySequence_Fast_ITEMS(neighbours)[0], 2);
        double best;
        if (first == NULL || number(first[1], &best) < 0) {
            python = 1;
            break;
        }
        if (best <= 0)
            continue;
        if (whole_decay && PyLong_CheckExact(item[2]) && PyLong_CheckExact(first[1])) {
            /* an int weight times an int power stays an int, and Python
               divides two ints with one rounding, not two */
            python = 1;
            break;
        }
        /* weight * recency_decay**step / best, as Python evaluates it */
        double factor = weight * pow(decay, (double)step) / best;
        if (!isfinite(factor)) {
            python = 1;
            break;
        }
        steps[step].neighbours = neighbours;
        steps[step].factor = factor;
        pairs += (size_t)count;
    }
    if (python)
        goto done;
    size_t capacity = 8;
    while (capacity < 2 * pairs + 1)
        capacity <<= 1;
    table.entries = PyMem_Calloc(capacity, sizeof(Entry));
    ranked = PyMem_Malloc((pairs ? pairs : 1) * sizeof(Entry *));
    if (table.entries == NULL || ranked == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    table.mask = capacity - 1;
    size_t found = 0;
    for (Py_ssize_t step = 0; step < items && !python; step++) {
        PyObject *neighbours = steps[step].neighbours;
        if (neighbours == NULL)
            continue;
        double factor = steps[step].factor;
        Py_ssize_t count = PySequence_Fast_GET_SIZE(neighbours);
        PyObject **pair = PySequence_Fast_ITEMS(neighbours);
        for (Py_ssize_t k = 0; k < count; k++) {
            PyObject **other = fields(pair[k], 2);
            double score;
            if (other == NULL || !PyUnicode_CheckExact(other[0]) || number(other[1], &score) < 0) {
                python = 1;
                break;
            }
            Py_hash_t hash = PyObject_Hash(other[0]);
            if (hash == -1)
                goto done;
            Entry *e = find(&table, other[0], hash);
            e->score = e->score + factor * score;
        }
    }
    if (python)
        goto done;
    /* what the visitor has seen, taken out (a set of str: iterating it runs
       no Python code) */
    PyObject *iterator = PyObject_GetIter(seen), *id;
    if (iterator == NULL)
        goto done;
    while ((id = PyIter_Next(iterator)) != NULL) {
        Py_DECREF(id); /* the set holds it */
        Py_hash_t hash = PyUnicode_CheckExact(id) ? PyObject_Hash(id) : -1;
        if (hash == -1) {
            python = 1;
            break;
        }
        size_t i = (size_t)hash & table.mask;
        for (;;) {
            Entry *e = &table.entries[i];
            if (e->id == NULL)
                break;
            if (e->id == id || (e->hash == hash && PyUnicode_Compare(e->id, id) == 0)) {
                e->live = 0;
                break;
            }
            i = (i + 1) & table.mask;
        }
    }
    Py_DECREF(iterator);
    if (python || PyErr_Occurred())
        goto done;
    for (size_t i = 0; i < capacity; i++) {
        Entry *e = &table.entries[i];
        if (e->id == NULL || !e->live)
            continue;
        if (!isfinite(e->score)) {
            python = 1;
            goto done;
        }
        ranked[found++] = e;
    }
    /* learn.best: every score is a number, so the order is total (ids are
       unique): the first ``length`` of that order, sorted */
    size_t kept = found < (size_t)length ? found : (size_t)length;
    if (kept > 0 && kept < found)
        select_first(ranked, found, kept);
    qsort(ranked, kept, sizeof(Entry *), highest_first);
    result = PyList_New((Py_ssize_t)kept);
    for (size_t j = 0; result != NULL && j < kept; j++) {
        PyObject *rounded = round6(ranked[j]->score);
        PyObject *entry = rounded ? PyDict_New() : NULL;
        if (entry == NULL || PyDict_SetItem(entry, product_id_key, ranked[j]->id) < 0 ||
            PyDict_SetItem(entry, score_key, rounded) < 0) {
            Py_XDECREF(rounded);
            Py_XDECREF(entry);
            Py_CLEAR(result);
            break;
        }
        Py_DECREF(rounded);
        PyList_SET_ITEM(result, (Py_ssize_t)j, entry);
    }
done:
    PyMem_Free(steps);
    PyMem_Free(table.entries);
    PyMem_Free(ranked);
    if (python && !PyErr_Occurred()) {
        Py_XDECREF(result);
        Py_RETURN_NONE;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"personal", personal, METH_VARARGS,
     "personal(recent, similar, length, recency_decay, seen) -> the list, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_personal", "A visitor's personal list, compiled.", -1, methods,
};

PyMODINIT_FUNC
PyInit__personal(void)
{
    round_name = PyUnicode_InternFromString("__round__");
    six = PyLong_FromLong(6);
    product_id_key = PyUnicode_InternFromString("product_id");
    score_key = PyUnicode_InternFromString("score");
    if (round_name == NULL || six == NULL || product_id_key == NULL || score_key == NULL)
        return NULL;
    return PyModule_Create(&module);
}
